#!/usr/bin/env bash
# Install (if needed) and start a PostgreSQL server on 127.0.0.1:5432 with a `danlu` superuser and a
# `danlu_test` database, for the store's tests. Prints the URL to use as DANLU_TEST_PG_URL.
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    (apt-get update -qq && apt-get install -y -qq postgresql) >/dev/null
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | grep -q "^$version main"; then
    pg_createcluster "$version" main >/dev/null
fi
sed -i "s/^#\?listen_addresses.*/listen_addresses = '127.0.0.1'/" "/etc/postgresql/$version/main/postgresql.conf"
pg_ctlcluster "$version" main start 2>/dev/null || pg_ctlcluster "$version" main status >/dev/null
for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 && break; sleep 0.5; done
su postgres -c "psql -q -tAc \"SELECT 1 FROM pg_roles WHERE rolname='danlu'\"" | grep -q 1 \
    || su postgres -c "psql -q -c \"CREATE ROLE danlu LOGIN SUPERUSER PASSWORD 'danlu'\""
su postgres -c "psql -q -tAc \"SELECT 1 FROM pg_database WHERE datname='danlu_test'\"" | grep -q 1 \
    || su postgres -c "createdb -O danlu danlu_test"
echo "postgresql+psycopg://danlu:danlu@127.0.0.1:5432/danlu_test"
