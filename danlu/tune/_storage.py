"""Where Optuna keeps studies: beside the danlu database, in the form that is safe for it.

- **SQLite** (the embedded default): Optuna's RDB storage is not safe for many processes writing
  one SQLite file (its trial queue can hand the same trial to two workers), so studies go to
  Optuna's *journal* storage, an append-only log file beside ``danlu.db``, its writes serialised
  by an ``flock`` (:class:`FlockJournalLock`) that the kernel drops when a writer dies, however
  it dies. Workers on this machine share it; a worker that dies is noticed by its process id.
- **PostgreSQL**: Optuna's RDB storage in the same database, in its own schema ``optuna`` (both
  projects use Alembic, and their version tables must not meet). Workers on any machine join
  the study there; heartbeats mark a dead worker's trial failed, and it is queued again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from danlu.errors import StoreError

if TYPE_CHECKING:
    import optuna

    from danlu.store import SqlStore

__all__ = [
    "MAX_RETRY",
    "FlockJournalLock",
    "close_storage",
    "heartbeat_interval",
    "journal_path",
    "open_storage",
]

SCHEMA = "optuna"
MAX_RETRY = 3  # times a trial whose worker died is queued again
_PG_LOCK_KEY = 0x64616E6C7554  # "danluT": serialises creating Optuna's tables


def heartbeat_interval() -> int:
    """Seconds between a running trial's heartbeats on PostgreSQL (``DANLU_TUNE_HEARTBEAT``)."""
    return max(1, int(float(os.environ.get("DANLU_TUNE_HEARTBEAT", "20"))))


def journal_path(store: SqlStore) -> Path | None:
    """The journal file for a SQLite store (None for PostgreSQL or an in-memory database)."""
    if not store.url.startswith("sqlite"):
        return None
    db_file = store.url.split("///", 1)[1] if "///" in store.url else ""
    if not db_file or db_file == ":memory:":
        return None
    return Path(db_file).parent / "optuna-journal.log"


class FlockJournalLock:
    """The journal's write lock: an exclusive ``flock`` on ``PATH.flock``, beside the journal.

    Optuna's own lock is a file created with ``O_EXCL``. A writer killed while it holds it (a
    ``kill -9``, or Ctrl-C at the wrong moment) leaves that file behind, and the next process
    waits out its 30-second grace period before it breaks the lock. The kernel drops an
    ``flock`` when its process ends, however it ends, so no lock outlives its holder. Local file
    systems only, as danlu's SQLite database is.

    Optuna's journal storage lets one thread at a time into its backend (a lock of its own), so
    a descriptor still held when :meth:`acquire` is called was left by an interrupted
    :meth:`release` of this object: it is closed first.

    Example:
        >>> # JournalFileBackend(path, lock_obj=FlockJournalLock(path))
    """

    def __init__(self, path: str) -> None:
        self.path = path + ".flock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        import fcntl

        self._close()
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits while another holder writes
            self._fd = fd
        except BaseException:
            self._fd = None
            os.close(fd)
            raise
        return True

    def release(self) -> None:
        self._close()

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the lock


def open_storage(store: SqlStore) -> optuna.storages.BaseStorage:
    """The Optuna storage that lives beside ``store``'s database."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from sqlalchemy import text

    if store.url.startswith("sqlite"):
        path = journal_path(store)
        if path is None:
            raise StoreError(
                "Tuning needs a database on disk (studies are shared between processes); "
                "the store is an in-memory SQLite database. Point DANLU_DB_URL at a file."
            )
        from optuna.storages.journal import JournalFileBackend

        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FlockJournalLock(str(path))
        backend = JournalFileBackend(str(path), lock_obj=lock)  # type: ignore[arg-type]
        return optuna.storages.JournalStorage(backend)
    if store.engine.dialect.name != "postgresql":
        raise StoreError(
            f"Tuning supports SQLite and PostgreSQL stores, not {store.engine.dialect.name}."
        )
    interval = heartbeat_interval()
    with store.engine.connect() as conn:  # one process creates the schema and Optuna's tables
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
        try:
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
            conn.commit()
            storage = optuna.storages.RDBStorage(
                store.url,
                engine_kwargs={
                    "connect_args": {"options": f"-c search_path={SCHEMA}"},
                    "pool_pre_ping": True,
                },
                heartbeat_interval=interval,
                grace_period=2 * interval,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=MAX_RETRY
                ),
            )
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
            conn.commit()
    return storage


def close_storage(storage: optuna.storages.BaseStorage) -> None:
    """Close the database connections an RDB storage holds (a journal file holds none)."""
    storage = getattr(storage, "_backend", storage)  # a study wraps RDB storage in a cache
    engine = getattr(storage, "engine", None)
    if engine is not None:
        remove = getattr(storage, "remove_session", None)
        if remove is not None:
            remove()
        engine.dispose()
