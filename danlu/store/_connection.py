"""What every part of :class:`~danlu.store.SqlStore` shares: the engine's write and read
transactions, the check that a run exists, and the append-only audit log.

The store's concerns live in mixins (runs in ``_sql.py``, the registry, artifacts, API keys); each
subclasses :class:`SqlConnection`, so each type-checks on its own and none repeats these.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.exc import OperationalError

from danlu.errors import NotFoundError, StoreError
from danlu.logging import get_logger
from danlu.store import _tables as t
from danlu.store._names import validate_run_id

__all__ = ["SqlConnection"]

log = get_logger(__name__)


class SqlConnection:
    """Transactions on ``engine`` (set by ``SqlStore.__init__``), the run check, the audit log."""

    engine: Engine

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction. Starting it (``BEGIN IMMEDIATE`` on SQLite) is retried while the
        database is busy beyond the busy timeout; an error inside the body rolls back and, for a
        database error, becomes a StoreError."""
        conn = self._begin_write()
        try:
            yield conn
            conn.commit()
        except OperationalError as exc:
            conn.rollback()
            raise StoreError(f"Database write failed: {exc.orig}") from None
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()

    def _begin_write(self) -> Connection:
        delay = 0.05
        for attempt in range(8):
            conn = self.engine.connect().execution_options(danlu_write=True)
            try:
                conn.begin()
                return conn
            except OperationalError as exc:
                conn.close()
                if "locked" not in str(exc.orig).lower() or attempt == 7:
                    raise StoreError(f"Database write failed: {exc.orig}") from None
                log.warning("database busy, retrying in %.2fs", delay)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def _require_run(self, conn: Connection, run_id: str) -> None:
        validate_run_id(run_id)
        if conn.execute(select(t.runs.c.id).where(t.runs.c.id == run_id)).first() is None:
            raise NotFoundError(f"Run '{run_id}' does not exist.")

    def _audit(
        self,
        conn: Connection,
        actor: str,
        action: str,
        model: str,
        version: int | None,
        **detail: Any,
    ) -> None:
        conn.execute(
            insert(t.audit_log).values(
                time=time.time(),
                actor=actor,
                action=action,
                model=model,
                version=version,
                detail=json.dumps(detail, default=str),
            )
        )
