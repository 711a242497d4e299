"""Fresh databases for the store's tests: a SQLite file in a temp folder, or, when
``DANLU_TEST_PG_URL`` is set (``.ci/postgres.sh`` prints it), a new PostgreSQL database per test."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import URL, create_engine, make_url, text
from sqlalchemy.pool import NullPool

pytest.register_assert_rewrite("danlu.testing.store")  # readable failures from the suite

PG_ENV = "DANLU_TEST_PG_URL"
NO_PG = f"PostgreSQL tests need {PG_ENV} (run .ci/postgres.sh, which prints the URL)"


def pg_base_url() -> str | None:
    return os.environ.get(PG_ENV) or None


def psycopg_url(base_url: str) -> URL:
    """``base_url`` with the psycopg 3 driver (``postgresql://`` would pick psycopg2)."""
    url = make_url(base_url)
    return url.set(drivername="postgresql+psycopg") if "+" not in url.drivername else url


@contextlib.contextmanager
def fresh_pg_database(base_url: str) -> Iterator[str]:
    """Create ``danlu_t_<random>`` with an AUTOCOMMIT connection to the database of
    ``base_url``, yield its URL, drop it (``WITH (FORCE)``: even if a killed process left a
    connection behind)."""
    url = psycopg_url(base_url)
    name = f"danlu_t_{secrets.token_hex(6)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@dataclass(frozen=True)
class Database:
    """A fresh, empty database (nothing has opened it yet) and a home folder beside it."""

    kind: str  # "sqlite" | "postgresql"
    url: str
    home: Path


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh database of each kind; the PostgreSQL one is skipped without DANLU_TEST_PG_URL."""
    home = tmp_path / "home"
    if request.param == "sqlite":
        (tmp_path / "db").mkdir()
        yield Database("sqlite", f"sqlite:///{tmp_path / 'db' / 'danlu.db'}", home)
        return
    base = pg_base_url()
    if base is None:
        pytest.skip(NO_PG)
    with fresh_pg_database(base) as url:
        yield Database("postgresql", url, home)
