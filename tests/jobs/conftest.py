"""The job queue's tests: a fresh database of each kind (a SQLite file; PostgreSQL when
``DANLU_TEST_PG_URL`` is set, as in the store's tests), tiny recipes and real ``danlu`` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.store.conftest import NO_PG, fresh_pg_database, pg_base_url

WINE = Path(__file__).resolve().parents[2] / "examples" / "wine_mlp.yaml"


@dataclass
class QueueDb:
    """A fresh database and home folder, and the ``danlu`` processes started on them."""

    kind: str
    url: str
    home: Path
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    stores: list[object] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"DANLU_HOME": str(self.home), "DANLU_DB_URL": self.url, "OMP_NUM_THREADS": "1"})
        env.pop("DANLU_JOB_ID", None)
        return env

    def store(self):  # noqa: ANN201 - a fresh SqlStore on this database
        from danlu.store import SqlStore

        store = SqlStore(self.url, home=self.home)
        self.stores.append(store)
        return store

    def queue(self, **kwargs):  # noqa: ANN003, ANN201
        from danlu.jobs import JobQueue

        return JobQueue(self.store(), **kwargs)

    def danlu(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a ``danlu`` command to its end."""
        return subprocess.run(
            [sys.executable, "-m", "danlu", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def agent(self, *args: str) -> subprocess.Popen[str]:
        """Start ``danlu agent`` (short poll and lease) in the background."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "danlu", "agent", "--poll", "0.2", *args],
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.procs.append(proc)
        return proc


def wait_agent(proc: subprocess.Popen[str], timeout: float = 300) -> str:
    """Wait for an agent to exit by itself (``--exit-when-idle``); its output."""
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        raise AssertionError(f"the agent did not exit within {timeout} s:\n{output}") from None
    assert proc.returncode == 0, output
    return output


def wait_until(check, timeout: float = 180, every: float = 0.1):  # noqa: ANN001, ANN201
    """Poll ``check()`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"gave up waiting after {timeout} s")


def wine_recipe(folder: Path, *, epochs: int = 2, **train: object) -> Path:
    """The wine MLP recipe with few epochs and no early stopping (one checkpoint per epoch)."""
    import yaml

    recipe = yaml.safe_load(WINE.read_text())
    recipe["train"].update({"epochs": epochs, **train})
    recipe["train"].pop("early_stopping", None)
    path = folder / f"wine_{epochs}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def queue_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueDb]:
    """A fresh database of each kind; the PostgreSQL one is skipped without DANLU_TEST_PG_URL."""
    home = tmp_path / "home"
    if request.param == "sqlite":
        db = QueueDb("sqlite", f"sqlite:///{tmp_path / 'danlu.db'}", home)
        yield db
        _stop(db)
        return
    base = pg_base_url()
    if base is None:
        pytest.skip(NO_PG)
    with fresh_pg_database(base) as url:
        db = QueueDb("postgresql", url, home)
        yield db
        _stop(db)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[QueueDb]:
    """A fresh SQLite database (the tests of whole processes that need not run twice)."""
    db = QueueDb("sqlite", f"sqlite:///{tmp_path / 'danlu.db'}", tmp_path / "home")
    yield db
    _stop(db)


def _stop(db: QueueDb) -> None:
    """Kill what a failed test left running (the agents; their children die with them)."""
    for proc in db.procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        if proc.stdout is not None and not proc.stdout.closed:  # a process killed and waited
            proc.stdout.close()  # for in the test: its pipe, else a ResourceWarning at some GC
    for store in db.stores:
        store.close()  # type: ignore[attr-defined]
