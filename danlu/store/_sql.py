"""The SQLAlchemy store: one implementation for SQLite (embedded default) and PostgreSQL.

SQLite runs in WAL mode with a busy timeout, and every write transaction starts with
``BEGIN IMMEDIATE``: a writer queues for the lock up front instead of failing half-way with
"database is locked" when two transactions try to upgrade a read lock at once.

This module holds the connection, transactions and runs (params, metrics, tags); the registry
(``_registry.py``), artifacts (``_artifacts.py``) and API keys (``_keys.py``) are mixins, and run
search builds its SQL in ``_search.py``.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from danlu.errors import NotFoundError, StoreError
from danlu.store import _tables as t
from danlu.store._artifacts import SqlArtifactsMixin
from danlu.store._connection import SqlConnection
from danlu.store._deployments import SqlDeploymentsMixin
from danlu.store._entities import (
    RUN_STATUSES,
    MetricPoint,
    Run,
)
from danlu.store._keys import SqlApiKeysMixin
from danlu.store._migrate import upgrade
from danlu.store._names import (
    folder_to_delete,
    validate_run_id,
)
from danlu.store._registry import SqlRegistryMixin
from danlu.store._search import filter_runs, order_runs
from danlu.store._users import SqlUsersMixin
from danlu.store.base import Store
from danlu.types import StrPath

__all__ = ["SqlStore", "danlu_home", "default_db_url"]


def danlu_home() -> Path:
    """``$DANLU_HOME`` or ``./.danlu``."""
    return Path(os.environ.get("DANLU_HOME", ".danlu"))


def default_db_url(home: Path | None = None) -> str:
    """``$DANLU_DB_URL``, or a SQLite file in the home folder."""
    url = os.environ.get("DANLU_DB_URL")
    if url:
        return url
    return f"sqlite:///{(home or danlu_home()) / 'danlu.db'}"


def _normalise_url(url: str) -> str:
    if url.startswith(("postgresql://", "postgres://")):  # prefer psycopg 3 over psycopg2
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _check_length(what: str, value: str, limit: int) -> str:
    """Refuse a key or name the database would reject or cut (the same limit on every backend)."""
    if len(value) > limit:
        raise StoreError(f"The {what} {value[:40]!r}... is longer than {limit} characters.")
    return value


def _params_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _float(value: float | None) -> float | None:
    return (
        None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
    )


_WAL_TRIES = 40  # about 16 s of waiting in all (below)


def set_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode=WAL`` on a new connection, tried again when it answers "database
    is locked". While other processes open a fresh database at the same moment (and convert it
    to WAL), the pragma can fail at once instead of waiting out the busy timeout (2 opens in
    240 without this, 0 with it: ``bench/sqlite_open_race.py``). Other errors are raised at once.

    Example:
        >>> import sqlite3
        >>> conn = sqlite3.connect(":memory:")
        >>> set_wal(conn.cursor())  # an in-memory database stays in "memory" mode
    """
    import sqlite3

    for attempt in range(1, _WAL_TRIES + 1):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == _WAL_TRIES:
                raise
            time.sleep(0.02 * attempt)


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=60000")
        set_wal(cursor)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable in WAL mode except on power loss
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("danlu_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


class SqlStore(
    SqlRegistryMixin,
    SqlApiKeysMixin,
    SqlUsersMixin,
    SqlArtifactsMixin,
    SqlDeploymentsMixin,
    SqlConnection,
    Store,
):
    """Tracking database + artifact folder + model registry.

    Args:
        url: SQLAlchemy URL (``sqlite:///path.db`` or ``postgresql://user:pw@host/db``);
            default ``$DANLU_DB_URL`` or ``$DANLU_HOME/danlu.db``.
        home: folder of artifacts and registered models (default ``$DANLU_HOME`` or ``.danlu``).
        heartbeat_timeout: seconds without a heartbeat after which a running run is
            ``interrupted`` (default ``$DANLU_HEARTBEAT_TIMEOUT`` or 120).

    Example:
        >>> import tempfile
        >>> store = SqlStore(home=tempfile.mkdtemp())
        >>> run = store.create_run(experiment="demo", name="first")
        >>> store.get_run(run.id).status
        'running'
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        home: StrPath | None = None,
        heartbeat_timeout: float | None = None,
    ) -> None:
        self.home = Path(home) if home is not None else danlu_home()
        self.url = _normalise_url(url or default_db_url(self.home))
        self.heartbeat_timeout = (
            heartbeat_timeout
            if heartbeat_timeout is not None
            else float(os.environ.get("DANLU_HEARTBEAT_TIMEOUT", "120"))
        )
        self.artifact_root = self.home / "artifacts"
        self.model_root = self.home / "models"
        try:
            if self.url.startswith("sqlite"):
                db_file = self.url.split("///", 1)[1] if "///" in self.url else ""
                lock = None
                if db_file and db_file != ":memory:":
                    Path(db_file).parent.mkdir(parents=True, exist_ok=True)
                    lock = Path(db_file + ".migrate-lock")
                self.engine = _sqlite_engine(self.url)
            else:
                self.engine = create_engine(self.url, pool_pre_ping=True)
                lock = None
            upgrade(self.engine, lock_file=lock)
        except (OperationalError, DBAPIError) as exc:
            raise StoreError(
                f"Cannot open the danlu database at {self._safe_url()}: {exc.orig}. Check DANLU_DB_URL and that the server is running."
            ) from None
        except ModuleNotFoundError as exc:
            raise StoreError(
                f"The database driver '{exc.name}' is not installed; for PostgreSQL run: pip install 'danlu[postgres]'."
            ) from None

    def close(self) -> None:
        """Close the store's database connections (it may be used again: they reopen)."""
        self.engine.dispose()

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _safe_url(self) -> str:
        return (
            self.engine.url.render_as_string(hide_password=True)
            if hasattr(self, "engine")
            else self.url.split("@")[-1]
        )

    # -- runs ----------------------------------------------------------------------------------
    def _experiment_id(self, conn: Connection, name: str) -> int:
        found = conn.execute(
            select(t.experiments.c.id).where(t.experiments.c.name == name)
        ).scalar()
        if found is not None:
            return int(found)
        try:
            with conn.begin_nested():
                return int(
                    conn.execute(
                        insert(t.experiments).values(name=name, created_at=time.time())
                    ).inserted_primary_key[0]  # type: ignore[index]
                )
        except IntegrityError:  # created by another process in between
            return int(
                conn.execute(
                    select(t.experiments.c.id).where(t.experiments.c.name == name)
                ).scalar_one()
            )

    def create_run(
        self,
        *,
        experiment: str,
        name: str,
        stage: str = "train",
        parent_id: str | None = None,
        recipe: Mapping[str, Any] | None = None,
        recipe_hash: str | None = None,
        data_fingerprint: str | None = None,
        git_commit: str | None = None,
        git_dirty: bool | None = None,
        packages: Mapping[str, str] | None = None,
        host: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Run:
        _check_length("experiment name", experiment, 200)
        _check_length("run name", name, 200)
        _check_length("stage", stage, 50)
        for key in tags or {}:
            _check_length("tag key", key, 250)
        now = time.time()
        run_id = f"{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(5)}"
        with self._write() as conn:
            if parent_id is not None:
                validate_run_id(parent_id)
                if (
                    conn.execute(select(t.runs.c.id).where(t.runs.c.id == parent_id)).first()
                    is None
                ):
                    raise NotFoundError(f"Parent run '{parent_id}' does not exist.")
            conn.execute(
                insert(t.runs).values(
                    id=run_id,
                    experiment_id=self._experiment_id(conn, experiment),
                    name=name,
                    stage=stage,
                    status="running",
                    parent_id=parent_id,
                    created_at=now,
                    started_at=now,
                    heartbeat_at=now,
                    recipe=json.dumps(recipe) if recipe is not None else None,
                    recipe_hash=recipe_hash,
                    data_fingerprint=data_fingerprint,
                    git_commit=git_commit,
                    git_dirty=git_dirty,
                    packages=json.dumps(dict(packages or {})),
                    host=host,
                )
            )
            if tags:
                conn.execute(
                    insert(t.tags),
                    [{"run_id": run_id, "key": k, "value": str(v)} for k, v in tags.items()],
                )
        return self.get_run(run_id)

    def _expire_stale(self) -> None:
        cutoff = time.time() - self.heartbeat_timeout
        stale = (t.runs.c.status == "running") & (t.runs.c.heartbeat_at < cutoff)
        with self._read() as conn:
            if conn.execute(select(t.runs.c.id).where(stale).limit(1)).first() is None:
                return
        with self._write() as conn:
            conn.execute(
                update(t.runs)
                .where(stale)
                .values(
                    status="interrupted",
                    ended_at=t.runs.c.heartbeat_at,
                    error="no heartbeat: the process stopped without finishing",
                )
            )

    def _details(self, conn: Connection, ids: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
        out: dict[str, dict[str, dict[str, Any]]] = {
            i: {"params": {}, "metrics": {}, "tags": {}} for i in ids
        }
        for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
            for row in conn.execute(select(t.params).where(t.params.c.run_id.in_(chunk))):
                out[row.run_id]["params"][row.key] = row.value
            for row in conn.execute(
                select(t.latest_metrics).where(t.latest_metrics.c.run_id.in_(chunk))
            ):
                out[row.run_id]["metrics"][row.key] = math.nan if row.value is None else row.value
            for row in conn.execute(select(t.tags).where(t.tags.c.run_id.in_(chunk))):
                out[row.run_id]["tags"][row.key] = row.value
        return out

    @staticmethod
    def _run(row: Any, details: dict[str, dict[str, Any]]) -> Run:
        return Run(
            id=row.id,
            experiment=row.experiment,
            name=row.name,
            stage=row.stage,
            status=row.status,
            created_at=row.created_at,
            parent_id=row.parent_id,
            started_at=row.started_at,
            ended_at=row.ended_at,
            heartbeat_at=row.heartbeat_at,
            recipe=json.loads(row.recipe) if row.recipe else None,
            recipe_hash=row.recipe_hash,
            data_fingerprint=row.data_fingerprint,
            git_commit=row.git_commit,
            git_dirty=row.git_dirty,
            packages=json.loads(row.packages or "{}"),
            host=row.host,
            error=row.error,
            **details,
        )

    def _runs_query(self) -> Any:
        return select(t.runs, t.experiments.c.name.label("experiment")).join(
            t.experiments, t.experiments.c.id == t.runs.c.experiment_id
        )

    def get_run(self, run_id: str) -> Run:
        validate_run_id(run_id)
        self._expire_stale()
        with self._read() as conn:
            row = conn.execute(self._runs_query().where(t.runs.c.id == run_id)).first()
            if row is None:
                raise NotFoundError(
                    f"Run '{run_id}' does not exist. List runs with `danlu runs ls`."
                )
            return self._run(row, self._details(conn, [run_id])[run_id])

    def set_status(
        self,
        run_id: str,
        status: str,
        *,
        error: str | None = None,
        data_fingerprint: str | None = None,
    ) -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}; got {status!r}")
        now = time.time()
        values: dict[str, Any] = {
            "status": status,
            "heartbeat_at": now,
            "error": error,
            "ended_at": None if status == "running" else now,
        }
        if data_fingerprint is not None:
            values["data_fingerprint"] = data_fingerprint
        with self._write() as conn:
            self._require_run(conn, run_id)
            conn.execute(update(t.runs).where(t.runs.c.id == run_id).values(**values))

    def heartbeat(self, run_id: str) -> None:
        with self._write() as conn:
            conn.execute(
                update(t.runs)
                .where((t.runs.c.id == run_id) & (t.runs.c.status == "running"))
                .values(heartbeat_at=time.time())
            )

    def search_runs(
        self,
        filter: str | None = None,
        *,
        order_by: Sequence[str] = (),
        limit: int = 100,
        offset: int = 0,
    ) -> list[Run]:
        query = order_runs(filter_runs(self._runs_query(), filter), order_by)
        query = (
            query.order_by(t.runs.c.created_at.desc(), t.runs.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        self._expire_stale()
        with self._read() as conn:
            rows = conn.execute(query).all()
            details = self._details(conn, [r.id for r in rows])
        return [self._run(r, details[r.id]) for r in rows]

    def delete_run(self, run_id: str) -> None:
        folder = folder_to_delete(f"run {run_id}", self.artifact_root, validate_run_id(run_id))
        with self._write() as conn:
            self._require_run(conn, run_id)
            conn.execute(delete(t.runs).where(t.runs.c.id == run_id))
        # rows first: a row never points at a missing file
        shutil.rmtree(folder, ignore_errors=True)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        rows = [
            {
                "run_id": run_id,
                "key": _check_length("param key", str(k), 250),
                "value": _params_value(v),
            }
            for k, v in params.items()
        ]
        with self._write() as conn:
            self._require_run(conn, run_id)
            if rows:
                conn.execute(
                    delete(t.params).where(
                        t.params.c.run_id == run_id, t.params.c.key.in_([r["key"] for r in rows])
                    )
                )
                conn.execute(insert(t.params), rows)

    def log_metrics(self, run_id: str, points: Sequence[MetricPoint]) -> None:
        if not points:
            return
        for key in {p.key for p in points}:
            _check_length("metric key", key, 250)
        now = time.time()
        rows = [
            {
                "run_id": run_id,
                "key": p.key,
                "value": _float(p.value),
                "step": p.step,
                "epoch": p.epoch,
                "time": p.time or now,
            }
            for p in points
        ]
        latest: dict[Any, dict[str, Any]] = {}
        for row in rows:  # last point of the highest step wins, per key
            if row["key"] not in latest or row["step"] >= latest[row["key"]]["step"]:
                latest[row["key"]] = row
        with self._write() as conn:
            self._require_run(conn, run_id)
            conn.execute(insert(t.metrics), rows)
            self._upsert_latest(conn, list(latest.values()))
            conn.execute(
                update(t.runs)
                .where((t.runs.c.id == run_id) & (t.runs.c.status == "running"))
                .values(heartbeat_at=now)
            )

    def _upsert_latest(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        values = [
            {
                "run_id": r["run_id"],
                "key": r["key"],
                "value": r["value"],
                "step": r["step"],
                "time": r["time"],
            }
            for r in rows
        ]
        from sqlalchemy.dialects import postgresql, sqlite

        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        stmt: Any = dialect.insert(t.latest_metrics).values(values)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["run_id", "key"],
                set_={
                    "value": stmt.excluded.value,
                    "step": stmt.excluded.step,
                    "time": stmt.excluded.time,
                },
                where=t.latest_metrics.c.step <= stmt.excluded.step,
            )
        )

    def metric_history(self, run_id: str, key: str | None = None) -> list[MetricPoint]:
        query = select(t.metrics).where(t.metrics.c.run_id == run_id)
        if key is not None:
            query = query.where(t.metrics.c.key == key)
        with self._read() as conn:
            self._require_run(conn, run_id)
            rows = conn.execute(
                query.order_by(t.metrics.c.key, t.metrics.c.step, t.metrics.c.id)
            ).all()
        return [
            MetricPoint(r.key, math.nan if r.value is None else r.value, r.step, r.epoch, r.time)
            for r in rows
        ]

    def delete_metrics_after(self, run_id: str, step: int) -> None:
        with self._write() as conn:
            self._require_run(conn, run_id)
            conn.execute(
                delete(t.metrics).where(t.metrics.c.run_id == run_id, t.metrics.c.step > step)
            )
            conn.execute(delete(t.latest_metrics).where(t.latest_metrics.c.run_id == run_id))
            rows = conn.execute(
                select(t.metrics)
                .where(t.metrics.c.run_id == run_id)
                .order_by(t.metrics.c.step, t.metrics.c.id)
            ).all()
            latest = {r.key: r._asdict() for r in rows}  # highest step wins; ties: logged last
            if latest:
                self._upsert_latest(conn, list(latest.values()))

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        for key in tags:
            _check_length("tag key", key, 250)
        with self._write() as conn:
            self._require_run(conn, run_id)
            if tags:
                conn.execute(
                    delete(t.tags).where(t.tags.c.run_id == run_id, t.tags.c.key.in_(list(tags)))
                )
                conn.execute(
                    insert(t.tags),
                    [{"run_id": run_id, "key": k, "value": str(v)} for k, v in tags.items()],
                )
