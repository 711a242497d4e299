"""The store under stress and attack, on SQLite and (with DANLU_TEST_PG_URL) PostgreSQL:
concurrent writers on a fresh database, hostile names and filters, a full or read-only disk,
a run process killed with SIGKILL, concurrent model registrations."""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from danlu.errors import ConfigError, NotFoundError, StoreError
from danlu.store import MetricPoint, SqlStore
from danlu.store import _tables as t
from danlu.store._migrate import HEAD

from ._workers import heartbeat_worker, log_metrics_worker
from .conftest import Database

SPAWN = multiprocessing.get_context("spawn")


def _open(db: Database, **kwargs: Any) -> SqlStore:
    return SqlStore(db.url, home=db.home, **kwargs)


@pytest.fixture
def store(fresh_db: Database) -> Iterator[SqlStore]:
    """A store on the fresh database, closed even when the test fails (an unclosed
    PostgreSQL connection is a ResourceWarning, and warnings are errors)."""
    with _open(fresh_db) as opened:
        yield opened


def _row_counts(store: SqlStore) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {
            name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for name, table in t.metadata.tables.items()
        }


# -- concurrent writers -------------------------------------------------------------------------
WORKERS, POINTS, BATCH = 4, 10_000, 100


def test_concurrent_writers_on_a_fresh_database(
    fresh_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    start, results = SPAWN.Barrier(WORKERS), SPAWN.Queue()
    workers = [
        SPAWN.Process(
            target=log_metrics_worker,
            args=(fresh_db.url, str(fresh_db.home), start, results, POINTS, BATCH),
        )
        for _ in range(WORKERS)
    ]
    for worker in workers:
        worker.start()
    reports: list[tuple[str, Any, Any]] = []
    deadline = time.monotonic() + 120
    try:  # stop waiting as soon as a worker has died without reporting
        while len(reports) < WORKERS and time.monotonic() < deadline:
            try:
                reports.append(results.get(timeout=0.5))
            except queue.Empty:
                if all(w.exitcode is not None for w in workers) and results.empty():
                    break
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
                worker.join()
    failures = [report for status, report, _ in reports if status == "error"]
    assert failures == []  # the workers' tracebacks: "database is locked" would show here
    assert [w.exitcode for w in workers] == [0] * WORKERS
    assert len(reports) == WORKERS
    assert [warnings for _, _, warnings in reports] == [[]] * WORKERS  # not even a retry
    runs = sorted(run_id for _, run_id, _ in reports)
    with _open(fresh_db) as store:
        with store.engine.connect() as conn:
            counts: dict[str, int] = dict(
                conn.execute(
                    select(t.metrics.c.run_id, func.count(func.distinct(t.metrics.c.step)))
                    .group_by(t.metrics.c.run_id)
                    .order_by(t.metrics.c.run_id)
                ).all()
            )
            assert counts == dict.fromkeys(runs, POINTS)  # every point, none twice
            assert conn.execute(select(func.count()).select_from(t.metrics)).scalar() == (
                WORKERS * POINTS
            )
            assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [(HEAD,)]
            assert conn.execute(select(func.count()).select_from(t.experiments)).scalar() == 1
        for run_id in runs:
            assert store.get_run(run_id).metrics == {"loss": 1.0 / POINTS}


# -- hostile names ------------------------------------------------------------------------------
def _tree(root: Path, skip: Path) -> set[tuple[str, str]]:
    found = set()
    for path in root.rglob("*"):
        if path == skip or skip in path.parents:
            continue
        kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
        found.add((str(path.relative_to(root)), kind))
    return found


def _unsafe_names(outside: Path) -> list[str]:
    return [
        "..",
        "../x",
        "%2e%2e%2f",
        "%2e%2e%2fx",
        "%252e%252e%252fx",
        "..\\",
        "..\\x",
        "a\\..\\..\\x",
        str(outside / "pwned"),
        "/etc/passwd",
        "a/../../b",
        "a/./b",
        "a//b",
        "~/x",
        "C:x",
        ".hidden",
        "a\x00b",
        "a\nb",
        "x" * 300,
        "",
    ]


def test_unsafe_names_are_refused(store: SqlStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    run = store.create_run(experiment="e", name="r").id
    store.log_artifact(run, "ok.txt", b"ok")
    store.create_model_version("m", run_id=run, files={"w.bin": b"w"}, signature={}, metrics={})
    db_folder = tmp_path / "db"
    before = _tree(tmp_path, db_folder)
    audit = store.audit_log()
    refused: list[tuple[str, str]] = []

    def refuse(what: str, call: Any, *args: Any, error: type[Exception] = StoreError) -> None:
        with pytest.raises(error):
            call(*args)
        refused.append((what, repr(args)))

    for bad in _unsafe_names(outside):
        refuse("artifact_path", store.artifact_path, run, bad)
        refuse("log_artifact", store.log_artifact, run, bad, b"pwned")
        refuse("record_artifact", store.record_artifact, run, bad)
        by_run: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
            (store.get_run, ()),
            (store.artifact_path, ("a.txt",)),
            (store.log_artifact, ("a.txt", b"pwned")),
            (store.log_metrics, ([MetricPoint("m", 1.0)],)),
            (store.log_params, ({"a": 1},)),
            (store.set_tags, ({"a": "b"},)),
            (store.set_status, ("finished",)),
            (store.metric_history, ()),
            (store.list_artifacts, ()),
            (store.delete_run, ()),
        ]
        for call, args in by_run:
            refuse("run id", call, bad, *args)
        refuse("parent", lambda b: store.create_run(experiment="e", name="c", parent_id=b), bad)
        by_model: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
            (store.get_model_version, ()),
            (store.model_version_path, (1, "w.bin")),
            (store.set_alias, ("prod", 1)),
            (store.delete_model, ()),
            (store.list_model_versions, ()),
        ]
        for call, args in by_model:
            refuse("model name", call, bad, *args)
        refuse(
            "create_model_version",
            lambda b: store.create_model_version(
                b, run_id=None, files={"w.bin": b"pwned"}, signature={}, metrics={}
            ),
            bad,
        )
        refuse(
            "model file",
            lambda b: store.create_model_version(
                "m", run_id=None, files={b: b"pwned"}, signature={}, metrics={}
            ),
            bad,
        )
        refuse("model file path", store.model_version_path, "m", 1, bad)
        refuse("alias", store.set_alias, "m", bad, 1)
    # Well-formed names of things that do not exist are NotFoundError, not StoreError.
    refuse("unknown run", store.get_run, "20200101-000000-abcdef", error=NotFoundError)
    refuse("unknown run", store.log_artifact, "nope", "a.txt", b"x", error=NotFoundError)
    refuse("unknown model", store.get_model_version, "nope", error=NotFoundError)
    assert len(refused) == 23 * len(_unsafe_names(outside)) + 3
    assert _tree(tmp_path, db_folder) == before  # nothing created, inside the store or out
    assert list(outside.iterdir()) == []
    assert [a.name for a in store.list_artifacts(run)] == ["ok.txt"]
    assert [v.version for v in store.list_model_versions("m")] == [1]
    assert store.audit_log() == audit


def test_symlinks_are_not_followed(store: SqlStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target.txt").write_bytes(b"precious")
    run = store.create_run(experiment="e", name="r").id
    store.log_artifact(run, "ok.txt", b"ok")
    folder = store.artifact_path(run, "ok.txt").parent
    (folder / "link").symlink_to(outside, target_is_directory=True)
    (folder / "evil.txt").symlink_to(outside / "target.txt")
    for name in ("link/pwned.txt", "link/target.txt", "evil.txt"):
        with pytest.raises(StoreError, match="symbolic link"):
            store.log_artifact(run, name, b"pwned")
        with pytest.raises(StoreError, match="symbolic link"):
            store.record_artifact(run, name)  # never hash (or list) a file outside the store
    # A run folder or a model folder that is itself a link.
    other = store.create_run(experiment="e", name="other").id
    store.artifact_path(other, "a").parent.symlink_to(outside, target_is_directory=True)
    with pytest.raises(StoreError, match="symbolic link"):
        store.log_artifact(other, "pwned.txt", b"pwned")
    model_root = store.model_version_path("m", 1, "w.bin").parent.parent
    model_root.parent.mkdir(parents=True, exist_ok=True)
    model_root.symlink_to(outside, target_is_directory=True)
    with pytest.raises(StoreError, match="symbolic link"):
        store.create_model_version(
            "m", run_id=None, files={"w.bin": b"pwned"}, signature={}, metrics={}
        )
    assert store.list_models() == [] and store.audit_log() == []
    assert [a.name for a in store.list_artifacts(run)] == ["ok.txt"]
    assert store.list_artifacts(other) == []
    store.delete_run(run)  # removes the links, never what they point at
    assert not folder.exists()
    assert sorted(p.name for p in outside.iterdir()) == ["target.txt"]
    assert (outside / "target.txt").read_bytes() == b"precious"


# -- hostile filters ----------------------------------------------------------------------------
INJECTIONS = [
    "1=1 or",
    "'; drop table runs; --",
    "name = 'x' or 1=1",
    "params.a = 'x'' or ''1''=''1'",
    "params.a = 'x' --",
    "name = '' or '1'='1'",
    'name = "x" or "1"="1"',
    "status = 'running') or (1=1",
    "tags.t = 'x' union select * from runs",
    "metrics.m > 0; delete from metrics",
    "params.a like '%' or 1=1",
    "tags.t like '%'' or 1=1 --'",
    "params.a';drop table params;-- = 'x'",
    "name = 'x'/**/or/**/1=1",
]
HARMLESS = [  # valid filters whose values look like SQL: they match nothing
    "name = '; drop table runs; --'",
    "params.a = ' or 1=1 --'",
    'experiment = \'e" or "1"="1\'',
]


def test_sql_in_filters_is_inert(store: SqlStore) -> None:
    runs = []
    for i in range(3):
        run = store.create_run(experiment="e", name=f"r{i}", tags={"t": "x"}).id
        store.log_params(run, {"a": "x"})
        store.log_metrics(run, [MetricPoint("m", float(i), 1)])
        runs.append(run)
    counts = _row_counts(store)
    for text_ in INJECTIONS:
        try:
            found = store.search_runs(text_)
        except (ConfigError, StoreError):
            continue
        assert found == [], text_
    for text_ in HARMLESS:
        assert store.search_runs(text_) == [], text_
    for order in (["metrics.m; drop table runs"], ["name desc, id"], ["(select 1)"], ["1"]):
        with pytest.raises((ConfigError, StoreError)):
            store.search_runs(order_by=order)
    assert _row_counts(store) == counts
    assert sorted(r.id for r in store.search_runs()) == sorted(runs)


# -- a full or read-only disk --------------------------------------------------------------------
def _no_space(monkeypatch: pytest.MonkeyPatch) -> None:
    def replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", replace)


def test_read_only_artifact_folder(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> None:
    run = store.create_run(experiment="e", name="r").id
    store.log_artifact(run, "model.bin", b"old")
    before = store.list_artifacts(run)
    folder = store.artifact_path(run, "model.bin").parent
    folder.chmod(0o555)
    try:
        try:  # root ignores the mode: simulate a full disk instead
            (folder / "probe").write_bytes(b"")
            (folder / "probe").unlink()
            _no_space(monkeypatch)
            reason = "No space left on device"
        except PermissionError:
            reason = "Permission denied"
        with pytest.raises(StoreError, match=f"Cannot write .*model.bin.*{reason}"):
            store.log_artifact(run, "model.bin", b"new")
        with pytest.raises(StoreError, match=reason):
            store.log_artifact(run, "fresh.bin", b"new")
    finally:
        folder.chmod(0o755)
        monkeypatch.undo()
    assert store.artifact_path(run, "model.bin").read_bytes() == b"old"
    assert store.list_artifacts(run) == before  # no row for fresh.bin, model.bin's row intact
    assert sorted(p.name for p in folder.iterdir()) == ["model.bin"]  # no temp files


def test_full_disk_during_registration(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.create_model_version("m", run_id=None, files={"w.bin": b"v1"}, signature={}, metrics={})
    audit = store.audit_log()
    _no_space(monkeypatch)
    with pytest.raises(StoreError, match="No space left on device"):
        store.create_model_version(
            "m", run_id=None, files={"w.bin": b"v2"}, signature={}, metrics={}
        )
    with pytest.raises(StoreError, match="No space left on device"):
        store.create_model_version(
            "new", run_id=None, files={"w.bin": b"v1"}, signature={}, metrics={}
        )
    monkeypatch.undo()
    assert [(m.name, m.latest_version) for m in store.list_models()] == [("m", 1)]
    assert store.audit_log() == audit
    model_folder = store.model_version_path("m", 1, "w.bin").parent.parent
    assert sorted(p.name for p in model_folder.iterdir()) == ["1"]  # no staging folders left
    new_folder = store.model_version_path("new", 1, "w.bin").parent.parent
    assert [p for p in new_folder.rglob("*")] == []  # at most an empty folder is left
    assert store.model_version_path("m", 1, "w.bin").read_bytes() == b"v1"


# -- a killed run ---------------------------------------------------------------------------------
def test_killed_run_reads_as_interrupted(fresh_db: Database) -> None:
    with _open(fresh_db, heartbeat_timeout=1.0) as store:  # migrates before the child starts
        _kill_and_watch(fresh_db, store)


def _kill_and_watch(fresh_db: Database, store: SqlStore) -> None:
    results = SPAWN.Queue()
    child = SPAWN.Process(target=heartbeat_worker, args=(fresh_db.url, str(fresh_db.home), results))
    child.start()
    try:
        run = results.get(timeout=60)
        deadline = time.monotonic() + 30
        while len(store.metric_history(run)) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.get_run(run).status == "running"
    finally:
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join(timeout=30)
    killed_at = time.time()
    assert child.exitcode == -signal.SIGKILL
    logged = len(store.metric_history(run))
    assert logged >= 10
    time.sleep(1.3)
    got = store.get_run(run)
    assert got.status == "interrupted"
    assert got.error is not None and "heartbeat" in got.error
    assert got.ended_at is not None and got.ended_at <= killed_at
    assert len(store.metric_history(run)) == logged  # what was committed stays
    # The database is not left locked by the dead writer.
    after = store.create_run(experiment="e", name="after").id
    store.log_metrics(after, [MetricPoint("m", 1.0)])
    assert store.get_run(after).metrics == {"m": 1.0}


# -- concurrent registrations -------------------------------------------------------------------
@pytest.mark.parametrize(
    "fresh_db",
    [
        "sqlite",
        "postgresql",
    ],
    indirect=True,
)
def test_concurrent_registrations_keep_their_files(fresh_db: Database, store: SqlStore) -> None:
    store.create_model_version("m", run_id=None, files={"w.bin": b"0"}, signature={}, metrics={})
    threads, per_thread = 6, 3
    start = threading.Barrier(threads)
    errors: list[str] = []

    def register(i: int) -> None:
        with _open(fresh_db) as mine:
            start.wait(timeout=30)
            for j in range(per_thread):
                try:
                    mine.create_model_version(
                        "m",
                        run_id=None,
                        files={"w.bin": f"{i}-{j}".encode() * 100, "card.md": b"card"},
                        signature={},
                        metrics={},
                        tags={"who": f"{i}-{j}"},
                    )
                except Exception as exc:  # collected: an exception in a thread is easy to lose
                    errors.append(repr(exc))

    workers = [threading.Thread(target=register, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert errors == []
    versions = store.list_model_versions("m")
    assert [v.version for v in versions] == list(range(1, threads * per_thread + 2))
    for v in versions[1:]:
        weights = store.model_version_path("m", v.version, "w.bin")
        assert weights.is_file() and weights.read_bytes() == v.tags["who"].encode() * 100


# -- opening a fresh database from many processes -------------------------------------------------
class _LockedCursor:
    """A cursor whose first ``locked`` pragmas fail as SQLite's can while another process
    converts a fresh database to WAL."""

    def __init__(self, locked: int, message: str = "database is locked") -> None:
        self.locked, self.message, self.calls = locked, message, 0

    def execute(self, sql: str) -> None:
        import sqlite3

        self.calls += 1
        if self.calls <= self.locked:
            raise sqlite3.OperationalError(self.message)


def test_the_wal_pragma_is_tried_again_while_the_database_is_locked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sqlite3

    from danlu.store import _sql

    monkeypatch.setattr(_sql.time, "sleep", lambda seconds: None)
    cursor = _LockedCursor(locked=3)
    _sql.set_wal(cursor)
    assert cursor.calls == 4  # three refusals, then the pragma ran
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _sql.set_wal(_LockedCursor(locked=10_000))  # bounded: gives up in the end
    other = _LockedCursor(locked=1, message="disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        _sql.set_wal(other)  # any other error is raised at once
    assert other.calls == 1
