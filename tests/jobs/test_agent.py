"""``danlu agent`` with real processes: jobs survive a stopped agent (preempted, requeued) and
``kill -9`` of their agent (requeued when the lease expires, resumed from the checkpoint, never
twice at once), two agents racing for a job do not both win, crashes are retried and data
errors are not, the CLI validates at submit, and preemption ends with exact metrics."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import QueueDb, wait_agent, wait_until, wine_recipe


def _submit(db: QueueDb, recipe: Path, **kwargs: object):  # noqa: ANN202
    import yaml

    return db.queue().submit(
        recipe=recipe.read_text(),
        recipe_path=str(recipe),
        name=yaml.safe_load(recipe.read_text())["name"],
        workdir=str(recipe.parent),
        **kwargs,
    )


def _runs_of(db: QueueDb, job_id: str) -> list:  # noqa: ANN202
    return db.store().search_runs(f"tags.job = '{job_id}'")


def _epochs(db: QueueDb, run_id: str) -> list[int]:
    return [p.step for p in db.store().metric_history(run_id, "train_loss")]


def _running_with_epochs(db: QueueDb, job_id: str, epochs: int) -> str | None:
    runs = _runs_of(db, job_id)
    return runs[0].id if runs and len(_epochs(db, runs[0].id)) >= epochs else None


def _child_pids(db: QueueDb, job_id: str) -> list[int]:
    log = db.queue().log_path(job_id)
    return [int(p) for p in re.findall(r"started pid (\d+)", log.read_text())]


def _dead(pid: int) -> bool:
    """Gone, or a zombie nobody reaped yet (it runs no more)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _sigterm_pending(pid: int) -> bool:
    """A SIGTERM waits for the (stopped) process: its pending-signal masks hold the bit."""
    with open(f"/proc/{pid}/status") as handle:
        masks = [
            int(line.split()[1], 16) for line in handle if line.startswith(("SigPnd:", "ShdPnd:"))
        ]
    return any(mask & (1 << (signal.SIGTERM - 1)) for mask in masks)


def test_stopped_and_killed_agents_lose_no_job_and_run_none_twice(
    sqlite_db: QueueDb, tmp_path: Path
) -> None:
    """SIGTERM to an agent preempts its job (requeued); kill -9 of the next one leaves the job
    to its lease, which expires, and a third agent resumes it; the queued jobs run once each."""
    db = sqlite_db
    long = _submit(db, wine_recipe(tmp_path, epochs=12, batch_size=1), priority=1)
    short = [_submit(db, wine_recipe(tmp_path, epochs=2)) for _ in range(2)]
    first = db.agent("--slots", "1", "--lease", "5")
    run_id = wait_until(lambda: _running_with_epochs(db, long.id, 2))
    # the attempt is frozen while its agent reacts, so however loaded the machine, it cannot
    # finish before the agent tells it to stop; it wakes to the agent's SIGTERM
    [pid] = _child_pids(db, long.id)
    os.kill(pid, signal.SIGSTOP)
    first.send_signal(signal.SIGTERM)  # a clean stop: the running job is preempted
    wait_until(lambda: _sigterm_pending(pid), timeout=60, every=0.05)
    os.kill(pid, signal.SIGCONT)
    output, _ = first.communicate(timeout=60)
    assert first.returncode == 0 and "preempting 1 running job" in output, output
    stopped = db.queue().get(long.id)
    assert (stopped.status, stopped.preemptions, stopped.attempts) == ("queued", 1, 0), output
    assert stopped.lease_owner is None and stopped.run_ids == (run_id,)

    second = db.agent("--slots", "1", "--lease", "5", "--exit-when-idle")
    wait_until(lambda: len(_child_pids(db, long.id)) == 2 and len(_epochs(db, run_id)) >= 4)
    pid = _child_pids(db, long.id)[-1]
    second.send_signal(signal.SIGKILL)
    second.communicate(timeout=30)
    # the attempt's process dies with its agent (PR_SET_PDEATHSIG): never two at once
    wait_until(lambda: _dead(pid), timeout=5, every=0.02)
    assert db.queue().get(long.id).status == "running"  # until its lease expires
    killed_at = time.time()

    third = db.agent("--slots", "1", "--lease", "5", "--exit-when-idle")
    output = wait_agent(third)
    queue = db.queue()
    job = queue.get(long.id)
    assert job.status == "succeeded", (job, output)
    assert job.attempts == 2 and job.preemptions == 1 and job.run_ids == (run_id,)
    assert job.started_at >= killed_at + 3.0  # only after the lease ran out
    assert _epochs(db, run_id) == list(range(1, 13))  # every epoch once, none lost
    log = queue.log_path(long.id).read_text()
    assert log.count(f"resuming run {run_id}") == 2
    assert log.count("epoch 1/12") == 1  # each later attempt went on from the checkpoint
    for other in short:  # each queued job ran exactly once
        done = queue.get(other.id)
        assert done.status == "succeeded" and done.attempts == 1 and len(done.run_ids) == 1
    assert len(db.store().search_runs()) == 3


def test_two_agents_racing_for_one_job_one_wins(queue_db: QueueDb, tmp_path: Path) -> None:
    job = _submit(queue_db, wine_recipe(tmp_path, epochs=2))
    agents = [queue_db.agent("--lease", "5", "--exit-when-idle") for _ in range(2)]
    outputs = [wait_agent(a) for a in agents]
    done = queue_db.queue().get(job.id)
    assert done.status == "succeeded" and done.attempts == 1, outputs
    assert sum(f"job {job.id} (wine-mlp) attempt 1 started" in o for o in outputs) == 1
    assert [r.id for r in _runs_of(queue_db, job.id)] == list(done.run_ids)
    assert len(done.run_ids) == 1


def test_a_crash_is_retried_from_the_checkpoint_a_data_error_is_not(
    sqlite_db: QueueDb, tmp_path: Path
) -> None:
    db = sqlite_db
    crash = _submit(db, wine_recipe(tmp_path, epochs=12, batch_size=1), max_attempts=3)
    broken = wine_recipe(tmp_path, epochs=1)
    broken.write_text(broken.read_text().replace("builtin:wine", "no_such_file.csv"))
    data_error = _submit(db, broken, max_attempts=3)
    agent = db.agent("--slots", "2", "--lease", "5", "--retry-backoff", "0.5", "--exit-when-idle")
    run_id = wait_until(lambda: _running_with_epochs(db, crash.id, 2))
    [pid] = _child_pids(db, crash.id)
    os.kill(pid, signal.SIGKILL)  # the training process crashes; its agent lives on
    wait_agent(agent)
    queue = db.queue()
    job = queue.get(crash.id)
    assert job.status == "succeeded" and job.attempts == 2 and job.run_ids == (run_id,)
    log = queue.log_path(crash.id).read_text()
    assert "exit status -9 -> job queued" in log and f"resuming run {run_id}" in log
    assert _epochs(db, run_id) == list(range(1, 13))
    failed = queue.get(data_error.id)
    assert failed.status == "failed" and failed.attempts == 1 and failed.exit_code == 3
    assert "no_such_file.csv" in failed.error


def test_the_cli_submits_follows_and_refuses(
    sqlite_db: QueueDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.cli._runner import danlu

    db = sqlite_db
    monkeypatch.setenv("DANLU_HOME", str(db.home))
    monkeypatch.setenv("DANLU_DB_URL", db.url)
    recipe = wine_recipe(tmp_path, epochs=2)
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text().replace("epochs: 2", "epochz: 2"))
    refused = danlu("submit", str(bad))
    assert refused.code == 2
    assert re.search(r"bad\.yaml:\d+: train\.epochz: unknown key", refused.stderr)  # its line
    too_big = danlu("submit", str(recipe), "--gpus", "64")
    assert too_big.code == 2 and "the largest slot has 0" in too_big.stderr
    assert "No jobs" in danlu("jobs", "ls").stdout  # nothing was queued

    queued = danlu("submit", str(recipe), "--priority", "3", "--project", "p1", "--json")
    assert queued.code == 0, queued.stderr
    job = json.loads(queued.stdout)
    assert job["estimate"]["total"] > 0 and job["memory_gb"] > 0  # the pre-flight estimate
    follow = subprocess.Popen(
        [sys.executable, "-m", "danlu", "jobs", "logs", job["id"], "-f", "--timeout", "120"],
        env=db.env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    db.procs.append(follow)
    wait_agent(db.agent("--exit-when-idle"))
    followed, _ = follow.communicate(timeout=60)
    assert "epoch 2/2" in followed and "-> job succeeded" in followed

    shown = json.loads(danlu("jobs", "show", job["id"], "--json").stdout)
    assert (shown["status"], shown["priority"], shown["project"]) == ("succeeded", 3, "p1")
    [run_id] = shown["run_ids"]
    run = db.store().get_run(run_id)
    assert run.tags["job"] == job["id"] and run.status == "finished"
    assert "job.log" in {a.name for a in db.store().list_artifacts(run_id)}
    listed = danlu("jobs", "ls").stdout
    assert job["id"] in listed and "succeeded" in listed
    cancel = danlu("jobs", "cancel", job["id"])
    assert cancel.code == 1
    assert f"Job {job['id']} already succeeded" in cancel.stderr
    assert "nothing to cancel" in cancel.stderr


def test_a_high_priority_job_preempts_and_the_preempted_one_finishes_exactly(
    sqlite_db: QueueDb, tmp_path: Path
) -> None:
    db = sqlite_db
    # long enough (about 10 s alone) that a loaded machine cannot finish it before the agent
    # sees the high-priority job
    recipe = wine_recipe(tmp_path, epochs=50, batch_size=1)
    # the same recipe, uninterrupted, in a store of its own (beside the agent: 1 CPU each)
    reference = QueueDb("sqlite", f"sqlite:///{tmp_path / 'ref.db'}", tmp_path / "ref")
    uninterrupted = subprocess.Popen(
        [sys.executable, "-m", "danlu", "run", str(recipe), "--threads", "1", "--quiet"],
        env=reference.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    db.procs.append(uninterrupted)
    low = _submit(db, recipe, preemptible=True)
    agent = db.agent("--cpus", "1", "--slots", "1", "--lease", "5", "--exit-when-idle")
    run_id = wait_until(lambda: _running_with_epochs(db, low.id, 1))
    high = _submit(db, wine_recipe(tmp_path, epochs=1), priority=5)
    output = wait_agent(agent)
    queue = db.queue()
    low_done, high_done = queue.get(low.id), queue.get(high.id)
    assert (low_done.status, high_done.status) == ("succeeded", "succeeded"), output
    assert low_done.preemptions == 1 and low_done.attempts == 1, output
    assert low_done.run_ids == (run_id,)
    assert high_done.ended_at < low_done.ended_at  # it ran while the low one waited
    log = queue.log_path(low.id).read_text()
    assert f"resuming run {run_id}" in log, log

    # the very same numbers as the uninterrupted run
    ran, _ = uninterrupted.communicate(timeout=120)
    assert uninterrupted.returncode == 0, ran
    [ref] = reference.store().search_runs()
    got = db.store().get_run(run_id)
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert [p.value for p in db.store().metric_history(run_id, key)] == [
            p.value for p in reference.store().metric_history(ref.id, key)
        ], key
    tests = {k: v for k, v in got.metrics.items() if k.startswith("test_")}
    assert tests and tests == {k: v for k, v in ref.metrics.items() if k.startswith("test_")}
    for store in reference.stores:
        store.close()


def test_a_stopped_agent_counts_only_the_attempts_still_running(sqlite_db: QueueDb) -> None:
    """An attempt that ended just before the stop (its thread gone, not yet reaped) is neither
    counted nor stopped again: only live attempts are preempted (a race seen in CI)."""
    import threading

    from danlu.jobs import SlotPool
    from danlu.jobs._agent import Agent, _Running

    lines: list[str] = []
    agent = Agent(
        sqlite_db.queue(), pool=SlotPool(cpu_ids=[0], memory_gb=1.0), on_event=lines.append
    )
    ended = threading.Thread(target=lambda: None)
    ended.start()
    ended.join()
    agent._running["ended-job"] = _Running(job=None, thread=ended, stop=threading.Event())  # type: ignore[arg-type]
    agent.stop()
    report = agent.run()
    assert report.agent_id and not any("preempting" in line for line in lines), lines
    assert agent._running == {} and lines[-1] == f"agent {report.agent_id} stopped"
