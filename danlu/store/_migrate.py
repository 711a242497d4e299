"""Schema migrations with Alembic, run once even when many processes start together.

Every process that opens the store checks the schema revision; only when it is behind does it
take a lock (an advisory lock on PostgreSQL, a file lock beside the SQLite file) and upgrade. A
process that waited for the lock re-checks and finds the work already done.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, inspect, text

__all__ = ["HEAD", "current_revision", "upgrade"]

HEAD = "0005"  # the newest file in migrations/versions/
_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_PG_LOCK_KEY = 0x64616E6C75  # "danlu"


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        return row[0] if row else None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_alembic(engine: Engine) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    with engine.connect().execution_options(danlu_write=True) as conn:
        if engine.dialect.name == "postgresql":
            with conn.begin():
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        else:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            if conn.in_transaction():
                conn.commit()


def upgrade(engine: Engine, *, lock_file: Path | None = None) -> bool:
    """Bring the schema to the head revision. Returns True when this call migrated."""
    if current_revision(engine) == HEAD:
        return False
    lock = _file_lock(lock_file) if lock_file is not None else contextlib.nullcontext()
    with lock:
        if current_revision(engine) == HEAD:  # another process did it while we waited
            return False
        _run_alembic(engine)
    return True
