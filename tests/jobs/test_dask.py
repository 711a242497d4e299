"""The Dask executor (``danlu agent --dask``) on a real ``distributed.LocalCluster``: two worker
processes on 127.0.0.1 with ``CPU=1`` each, a real SQLite store, real ``danlu run`` jobs."""

from __future__ import annotations

import itertools
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from danlu.errors import ConfigError, DanluError
from danlu.jobs import AgentReport, JobQueue, Outcome, Resources, Slot, SlotPool
from danlu.jobs._dask import (
    ClusterResources,
    DaskExecutor,
    _WorkerGpus,
    task_resources,
)

from .conftest import QueueDb, wait_until, wine_recipe

distributed = pytest.importorskip("distributed")

LEASE_S = 5.0  # renewed every third of it; an overloaded machine renews slowly
POLL_S = 0.2


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """Two worker processes, one thread and ``CPU=1`` each; no dashboard; loopback only."""
    local = distributed.LocalCluster(
        n_workers=2,
        processes=True,
        threads_per_worker=1,
        resources={"CPU": 1},
        host="127.0.0.1",
        dashboard_address=None,  # no dashboard; its health/metrics routes on a free port
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        silence_logs=logging.ERROR,
    )
    client = distributed.Client(local, set_as_default=False)
    yield client
    client.close()
    local.close()


@pytest.fixture
def client(cluster: Any) -> Any:
    cluster.wait_for_workers(2, timeout=60)  # a test may have killed one (its nanny restarts it)
    return cluster


class Running:
    """An executor running in a thread of the test, stopped (bounded) at the end."""

    def __init__(self, executor: DaskExecutor) -> None:
        self.executor = executor
        self.report: AgentReport | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.report = self.executor.run()
        except BaseException as exc:  # re-raised in the test's thread
            self.error = exc

    def wait(self, timeout: float = 240) -> AgentReport:
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.executor.stop()
            self.thread.join(30)
            raise AssertionError(f"the executor did not finish within {timeout} s")
        if self.error is not None:
            raise self.error
        assert self.report is not None
        return self.report


def _executor(queue: JobQueue, client: Any, events: list[str], **kwargs: Any) -> Running:
    settings: dict[str, Any] = {
        "poll_s": POLL_S,
        "lease_s": LEASE_S,
        "exit_when_idle": True,
        "cancel_grace_s": 5.0,
        "preempt_grace_s": 10.0,
        "on_event": events.append,
        "client": client,
    }
    return Running(DaskExecutor(queue, **(settings | kwargs)))


def _submit(queue: JobQueue, recipe: Path, *overrides: str, cpus: int = 1, gpus: int = 0):  # noqa: ANN202
    return queue.submit(
        recipe=recipe.read_text(),
        recipe_path=str(recipe),
        name=recipe.stem,
        overrides=list(overrides),
        resources=Resources(cpus=cpus, gpus=gpus),
        workdir=str(recipe.parent),
    )


def _epochs(queue: JobQueue, job_id: str) -> int:
    """Epochs the job's latest run has logged so far."""
    runs = queue.store.search_runs(f"tags.job = '{job_id}'")
    return len(queue.store.metric_history(runs[0].id, "train_loss")) if runs else 0


def _worker_of(client: Any, job_id: str) -> str | None:
    for address, keys in client.processing().items():
        if any(str(k).startswith(f"danlu-job-{job_id}-") for k in keys):
            return str(address)
    return None


def test_cluster_resources_and_task_requests() -> None:
    info = {
        "address": "tcp://s:8786",
        "workers": {
            "tcp://a:1": {"resources": {"CPU": 8, "GPU": 2}, "memory_limit": 64e9, "nthreads": 8},
            "tcp://b:1": {"resources": {"CPU": 16}, "memory_limit": 32e9, "nthreads": 4},
            "tcp://c:1": {"resources": {}, "memory_limit": 8e9, "nthreads": 2},
        },
    }
    cluster = ClusterResources.from_scheduler_info(info)
    assert cluster.ignored == ("tcp://c:1",)  # no CPU resource: it gets no jobs
    assert cluster.largest == Resources(16, 2, 64.0)
    assert cluster.total == Resources(24, 2, 96.0) and cluster.threads == 12
    assert cluster.fits(Resources(8, 2, 10.0))
    assert not cluster.fits(Resources(16, 1, 10.0))  # the 16-CPU worker has no GPU
    # registered as two slots (not one with 16 CPUs and 2 GPUs): a job asking for both is refused
    assert [offer for offer, _ in cluster.shapes()] == [
        Resources(16, 0, 32.0),
        Resources(8, 2, 64.0),
    ]
    assert task_resources(Resources(2, 0, 4.0)) == {"CPU": 2}
    assert task_resources(Resources(2, 1, 4.0), memory=True) == {"CPU": 2, "GPU": 1, "MEMORY": 4.0}


def test_gpu_ids_on_a_worker_are_handed_out_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dask counts a worker's GPUs; the task picks free device ids among the visible ones."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    gpus = _WorkerGpus()
    assert gpus.take(0, 2) == ()
    first, second = gpus.take(1, 2), gpus.take(1, 2)
    assert {first, second} == {(2,), (3,)}
    with pytest.raises(ConfigError, match="GPU=2 but only 0 of its devices are free"):
        gpus.take(1, 2)
    gpus.give_back(first)
    assert gpus.take(1, 2) == first
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert _WorkerGpus().take(2, 2) == (0, 1)  # no CUDA_VISIBLE_DEVICES: 0..GPU-1


def test_a_task_takes_its_claim_over_once(queue_db: QueueDb) -> None:
    """The swap that makes a second run of a Dask task (its worker died) run nothing, on
    SQLite and PostgreSQL."""
    queue = queue_db.queue()
    job = queue.submit(recipe="name: x\n", recipe_path="x.yaml", name="x")
    claimed = queue.claim("executor", SlotPool(cpu_ids=[0], memory_gb=1.0), lease_s=30)
    assert claimed is not None and claimed.id == job.id and claimed.lease_token
    slot = Slot(cpus=(), gpus=(), memory_gb=0.0, threads=1)
    mine = queue.take_over(claimed, claimed.lease_token, slot)
    assert mine is not None and mine.lease_token != claimed.lease_token
    assert mine.status == "running" and mine.attempts == 1 and mine.slot == slot
    assert queue.take_over(claimed, claimed.lease_token, slot) is None  # a second run
    assert not queue.heartbeat(claimed, lease_s=30).held  # the executor sees it taken over
    assert queue.heartbeat(mine, lease_s=30).held
    assert queue.finish(mine, Outcome("exited", exit_code=0)).status == "succeeded"
    assert queue.take_over(mine, mine.lease_token, slot) is None  # nothing to take


def test_jobs_run_once_each_where_dask_puts_them(
    client: Any, sqlite_db: QueueDb, tmp_path: Path
) -> None:
    queue = sqlite_db.queue()
    recipe = wine_recipe(tmp_path, epochs=2)
    jobs = [_submit(queue, recipe, f"train.seed={seed}") for seed in range(3)]
    events: list[str] = []
    report = _executor(queue, client, events).wait()

    done = [queue.get(j.id) for j in jobs]
    assert [j.status for j in done] == ["succeeded"] * 3
    assert [j.attempts for j in done] == [1] * 3
    assert all(len(j.run_ids) == 1 for j in done)
    assert len({j.run_ids[0] for j in done}) == 3
    assert sorted(job_id for job_id, _ in report.attempts) == sorted(j.id for j in jobs)
    for job in done:  # the run trained with its own override and logged its test metrics
        run = queue.store.get_run(job.run_ids[0])
        assert run.status == "finished"
        assert str(run.params["train.seed"]) == job.overrides[0].split("=")[1]
        assert "test_accuracy" in run.metrics

    # the executor claimed no more than the cluster holds (2 CPUs): at most 2 jobs held a claim
    # at once, from claim to recorded outcome
    edges = sorted([(j.started_at, 1) for j in done] + [(j.ended_at, -1) for j in done])
    assert max(itertools.accumulate(step for _, step in edges)) == 2
    # Dask placed them: both workers ran jobs, never two at once on a CPU=1 worker
    placed: dict[str, list[tuple[float, float]]] = {}
    for line in events:
        found = re.search(r"job (\w+) attempt 1 ended on (\S+):", line)
        if found:
            job = queue.get(found.group(1))
            placed.setdefault(found.group(2), []).append((job.started_at, job.ended_at))
    assert len(placed) == 2 and sum(len(v) for v in placed.values()) == 3
    for spans in placed.values():
        spans.sort()
        assert all(
            a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False)
        )


def test_a_job_no_worker_can_hold_is_refused_at_submit(
    client: Any, sqlite_db: QueueDb, tmp_path: Path
) -> None:
    queue = sqlite_db.queue()
    running = _executor(queue, client, [], exit_when_idle=False)
    agent = wait_until(lambda: next(iter(queue.agents(live=True)), None), timeout=60)
    try:
        assert (agent.kind, agent.cpus, agent.gpus, agent.slots) == ("dask", 1, (), 2)
        assert agent.host == client.scheduler_info()["address"]
        with pytest.raises(ConfigError) as refused:
            _submit(queue, wine_recipe(tmp_path), cpus=2)
        message = str(refused.value)
        assert "asks for 2 CPUs but the largest slot has 1 (dask agent" in message
        assert "dask agent" in message and agent.host in message
        with pytest.raises(ConfigError, match=r"asks for 1 GPUs but the largest slot has 0"):
            _submit(queue, wine_recipe(tmp_path), gpus=1)
        assert queue.list_jobs() == []  # nothing was queued
    finally:
        running.executor.stop()
        running.wait(30)
    assert queue.agents(live=True) == []  # it deregistered


def test_a_killed_workers_job_comes_back_through_its_lease_and_finishes_once(
    client: Any, sqlite_db: QueueDb, tmp_path: Path
) -> None:
    queue = sqlite_db.queue()
    job = _submit(queue, wine_recipe(tmp_path, epochs=80))
    events: list[str] = []
    running = _executor(queue, client, events)

    wait_until(lambda: _epochs(queue, job.id) >= 3, timeout=180)
    address = wait_until(lambda: _worker_of(client, job.id), timeout=10)
    pid = client.run(os.getpid, workers=[address])[address]
    os.kill(pid, signal.SIGKILL)  # the worker dies mid-training; its nanny starts a new one
    report = running.wait(240)

    done = queue.get(job.id)
    assert done.status == "succeeded"
    assert done.attempts == 2  # the lease lapsed, the job was queued again and ran again
    assert "lost its executor" not in (done.error or "")
    assert len(done.run_ids) == 1  # the second attempt resumed the first one's run
    run = queue.store.get_run(done.run_ids[0])
    assert run.status == "finished"
    steps = [p.step for p in queue.store.metric_history(run.id, "train_loss")]
    assert steps == sorted(set(steps)) and len(steps) == 80  # each epoch logged once
    # Dask ran the dead worker's task again elsewhere: it found its claim gone and ran nothing
    assert [(job_id, o.status) for job_id, o in report.attempts] == [(job.id, "succeeded")]
    assert any(
        f"job {job.id}: its task ran on" in line and "ran nothing" in line for line in events
    )
    log_text = queue.log_path(job.id).read_text()
    assert log_text.count("attempt 1 on agent") == 1
    assert log_text.count("attempt 2 on agent") == 1 and "resuming run" in log_text


def test_cancel_reaches_the_task_through_the_store(
    client: Any, sqlite_db: QueueDb, tmp_path: Path
) -> None:
    queue = sqlite_db.queue()
    job = _submit(queue, wine_recipe(tmp_path, epochs=2000))
    running = _executor(queue, client, [])
    wait_until(lambda: _epochs(queue, job.id) >= 1, timeout=180)
    queue.cancel(job.id)
    report = running.wait(180)

    done = queue.get(job.id)
    assert done.status == "cancelled" and done.attempts == 1
    assert [(job_id, o.reason) for job_id, o in report.attempts] == [(job.id, "cancelled")]
    run = queue.store.get_run(done.run_ids[0])
    assert run.status != "finished"
    assert _epochs(queue, job.id) < 2000


def _executor_process(db: QueueDb, address: str) -> subprocess.Popen[str]:
    """``danlu agent --dask`` in a process of its own (to be killed)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "danlu", "agent", "--dask", address]
        + ["--poll", str(POLL_S), "--lease", str(LEASE_S)],
        env=db.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    db.procs.append(proc)
    return proc


def test_a_restarted_executor_leaves_live_tasks_alone_and_requeues_lapsed_leases(
    client: Any, sqlite_db: QueueDb, tmp_path: Path
) -> None:
    queue = sqlite_db.queue()
    first = _executor_process(sqlite_db, client.scheduler_info()["address"])
    recipe = wine_recipe(tmp_path, epochs=60)
    live = _submit(queue, recipe, "train.seed=1")
    wait_until(lambda: _epochs(queue, live.id) >= 1, timeout=180)
    # a second job claimed by an executor that died before handing it out: its lease lapses
    lapsed = _submit(queue, recipe, "train.seed=2")
    gone = queue.claim("gone-executor", SlotPool(cpu_ids=[0], memory_gb=1.0), lease_s=0.5)
    assert gone is not None and gone.id == lapsed.id

    first.send_signal(signal.SIGKILL)  # the executor dies; its task runs on
    output, _ = first.communicate(timeout=30)
    assert f"job {live.id} (wine_60) attempt 1 handed to Dask as danlu-job-{live.id}-1-" in output
    report = _executor(queue, client, []).wait(240)

    done = queue.get(live.id)
    assert done.status == "succeeded" and done.attempts == 1  # left alone, never requeued
    assert "attempt 2" not in queue.log_path(live.id).read_text()
    again = queue.get(lapsed.id)
    assert again.status == "succeeded" and again.attempts == 2  # requeued once, ran once
    # the new executor ran only the lapsed job; the live one recorded itself
    assert [job_id for job_id, _ in report.attempts] == [lapsed.id]


def test_an_unreachable_scheduler_is_a_clear_error(sqlite_db: QueueDb) -> None:
    executor = DaskExecutor(sqlite_db.queue(), "tcp://127.0.0.1:9", connect_timeout_s=1)
    with pytest.raises(DanluError, match=r"Cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        executor.run()
    assert sqlite_db.queue().agents() == []  # nothing registered
