"""``SqlStore`` on SQLite and PostgreSQL: the conformance suite, the migration, SQL-level checks."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, MetaData, create_engine, func, inspect, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from danlu.errors import StoreError
from danlu.store import MetricPoint, SqlStore
from danlu.store import _tables as t
from danlu.store._migrate import HEAD, upgrade
from danlu.testing.store import StoreConformance

from .conftest import NO_PG, Database, fresh_pg_database, pg_base_url, psycopg_url


def _opener(url: str, home: Path) -> Iterator[Callable[..., SqlStore]]:
    stores: list[SqlStore] = []

    def open_store(**kwargs: Any) -> SqlStore:
        store = SqlStore(url, home=home, **kwargs)
        stores.append(store)
        return store

    yield open_store
    for store in stores:
        store.close()  # before the database is dropped


class TestSqliteStore(StoreConformance):
    @pytest.fixture
    def open_store(self, tmp_path: Path) -> Iterator[Callable[..., SqlStore]]:
        yield from _opener(f"sqlite:///{tmp_path / 'db' / 'danlu.db'}", tmp_path / "home")


class TestPostgresStore(StoreConformance):
    @pytest.fixture
    def open_store(self, tmp_path: Path) -> Iterator[Callable[..., SqlStore]]:
        base = pg_base_url()
        if base is None:
            pytest.skip(NO_PG)
        with fresh_pg_database(base) as url:
            yield from _opener(url, tmp_path / "home")


# -- the migration --------------------------------------------------------------------------------
def _foreign_keys(engine: Engine, metadata: MetaData | None = None) -> set[tuple[Any, ...]]:
    """(table, columns, referred table, referred columns, ON DELETE) of every foreign key;
    ``compare_metadata`` does not look at ON DELETE."""
    found = set()
    if metadata is not None:
        for table in metadata.sorted_tables:
            for fk in table.foreign_key_constraints:
                found.add(
                    (
                        table.name,
                        tuple(fk.column_keys),
                        fk.referred_table.name,
                        tuple(e.column.name for e in fk.elements),
                        (fk.ondelete or "").upper() or None,
                    )
                )
        return found
    inspector = inspect(engine)
    for name in inspector.get_table_names():
        for reflected in inspector.get_foreign_keys(name):
            ondelete = reflected.get("options", {}).get("ondelete")
            found.add(
                (
                    name,
                    tuple(reflected["constrained_columns"]),
                    reflected["referred_table"],
                    tuple(reflected["referred_columns"]),
                    ondelete.upper() if ondelete and ondelete.upper() != "NO ACTION" else None,
                )
            )
    return found


def test_migration_matches_the_tables(fresh_db: Database) -> None:
    with SqlStore(fresh_db.url, home=fresh_db.home) as store:
        with store.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), t.metadata) == []
            assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [(HEAD,)]
            # The comparison is not vacuous: a changed table is noticed.
            changed = MetaData()
            for table in t.metadata.sorted_tables:
                table.to_metadata(changed)
            changed.tables["params"].indexes.clear()
            assert compare_metadata(MigrationContext.configure(conn), changed) != []
        assert _foreign_keys(store.engine) == _foreign_keys(store.engine, t.metadata)
        assert set(inspect(store.engine).get_table_names()) == set(t.metadata.tables) | {
            "alembic_version"
        }


def test_reopening_does_not_migrate_again(fresh_db: Database) -> None:
    with SqlStore(fresh_db.url, home=fresh_db.home) as store:
        run = store.create_run(experiment="e", name="r").id
    with SqlStore(fresh_db.url, home=fresh_db.home) as store:
        assert store.get_run(run).name == "r"
        assert upgrade(store.engine) is False  # already at head: nothing to do
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1


def test_delete_run_cascades_to_every_table(fresh_db: Database) -> None:
    with SqlStore(fresh_db.url, home=fresh_db.home) as store:
        runs = [store.create_run(experiment="e", name=n, tags={"t": "v"}).id for n in "ab"]
        for run in runs:
            store.log_params(run, {"p": 1, "q": "x"})
            store.log_metrics(run, [MetricPoint("m", float(s), s) for s in range(5)])
            store.log_artifact(run, "a.txt", b"a")
        store.delete_run(runs[0])
        tables = [t.params, t.metrics, t.latest_metrics, t.tags, t.artifacts]
        with store.engine.connect() as conn:
            for table in tables:
                by_run: dict[str, int] = dict(
                    conn.execute(
                        select(table.c.run_id, func.count()).group_by(table.c.run_id)
                    ).all()
                )
                assert runs[0] not in by_run and by_run.get(runs[1]), table.name


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    with SqlStore(home=tmp_path) as store:
        store.create_run(experiment="e", name="r")
    with sqlite3.connect(tmp_path / "danlu.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_unreachable_server_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="Cannot open the danlu database") as info:
        SqlStore("postgresql://danlu:secret@127.0.0.1:1/nowhere", home=tmp_path)
    assert "secret" not in str(info.value)


def test_lock_error_inside_a_write_is_a_store_error(tmp_path: Path) -> None:
    with SqlStore(home=tmp_path) as store:
        with pytest.raises(StoreError, match="locked"):
            with store._write():
                raise OperationalError(
                    "UPDATE runs", {}, sqlite3.OperationalError("database is locked")
                )


def test_fresh_pg_database_is_dropped() -> None:
    base = pg_base_url()
    if base is None:
        pytest.skip(NO_PG)
    with fresh_pg_database(base) as url:
        name = url.rsplit("/", 1)[1]
    admin = create_engine(psycopg_url(base), poolclass=NullPool)
    try:
        with admin.connect() as conn:
            left = conn.execute(
                text("SELECT count(*) FROM pg_database WHERE datname = :n"), {"n": name}
            ).scalar()
    finally:
        admin.dispose()
    assert left == 0
