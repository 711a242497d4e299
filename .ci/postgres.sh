#!/usr/bin/env bash
# Install (if needed) and start a PostgreSQL server on 127.0.0.1:5432 with a `danlu` superuser and a
# `danlu_test` database, for the store's tests. Prints the URL to use as DANLU_TEST_PG_URL -- the only
# thing written to stdout, so `url=$(.ci/postgres.sh)` works. Safe to run again: every step checks
# first. Needs root (it installs packages and acts as the `postgres` user).
set -euo pipefail
say() { echo "postgres.sh: $*" >&2; }

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    say "installing PostgreSQL from the Debian archive"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | grep -q "^$version main "; then
    say "creating cluster $version/main"
    pg_createcluster "$version" main >&2
fi
conf="/etc/postgresql/$version/main/postgresql.conf"
if ! grep -q "^listen_addresses = '127.0.0.1'" "$conf"; then
    sed -i "s/^#\?listen_addresses.*/listen_addresses = '127.0.0.1'/" "$conf"
    pg_ctlcluster "$version" main status >/dev/null 2>&1 && pg_ctlcluster "$version" main restart >&2
fi
if ! pg_ctlcluster "$version" main status >/dev/null 2>&1; then
    say "starting cluster $version/main"
    pg_ctlcluster "$version" main start >&2
fi
port=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')
for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p "$port" && break
    sleep 0.5
done
pg_isready -q -h 127.0.0.1 -p "$port" || { say "the server on 127.0.0.1:$port did not come up"; exit 1; }

as_postgres() { su postgres -c "$1" </dev/null; }
as_postgres "psql -p $port -q -tAc \"SELECT 1 FROM pg_roles WHERE rolname='danlu'\"" | grep -q 1 \
    || as_postgres "psql -p $port -q -c \"CREATE ROLE danlu LOGIN SUPERUSER PASSWORD 'danlu'\"" >&2
as_postgres "psql -p $port -q -tAc \"SELECT 1 FROM pg_database WHERE datname='danlu_test'\"" | grep -q 1 \
    || as_postgres "createdb -p $port -O danlu danlu_test" >&2
echo "postgresql+psycopg://danlu:danlu@127.0.0.1:$port/danlu_test"
