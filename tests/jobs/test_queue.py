"""``JobQueue`` on SQLite and PostgreSQL: order, quotas, leases, retries, cancel, preemption."""

from __future__ import annotations

import dataclasses
import time

import pytest

from danlu.errors import ConfigError, DanluError, NotFoundError
from danlu.jobs import JobQueue, Outcome, Resources, SlotPool

from .conftest import QueueDb


def _submit(queue: JobQueue, name: str, **kwargs: object):  # noqa: ANN202
    return queue.submit(recipe=f"name: {name}\n", recipe_path=f"{name}.yaml", name=name, **kwargs)


def _drain(queue: JobQueue, pool: SlotPool) -> list[str]:
    """Claim and finish jobs one by one; the names in the order they were claimed."""
    order = []
    for _ in range(20):
        job = queue.claim("agent-1", pool, lease_s=30)
        if job is None:
            break
        order.append(job.name)
        assert queue.finish(job, Outcome("exited", exit_code=0)).status == "succeeded"
        pool.release(job.slot)
    return order


def test_priority_first_then_first_come_first_served(queue_db: QueueDb) -> None:
    queue = queue_db.queue()
    for name, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1)]:
        _submit(queue, name, priority=priority)
        time.sleep(0.002)
    pool = SlotPool(cpu_ids=[0], memory_gb=1.0)
    assert _drain(queue, pool) == ["b", "d", "a", "c", "e"]


def test_a_waiting_job_is_not_overtaken_by_lower_priority_ones(queue_db: QueueDb) -> None:
    queue = queue_db.queue()
    big = _submit(queue, "big", priority=5, resources=Resources(cpus=2))
    _submit(queue, "small", priority=0)
    pool = SlotPool(cpu_ids=[0, 1], memory_gb=1.0)
    held = pool.place(dataclasses.replace(queue.get(big.id), resources=Resources(cpus=1)))
    assert held is not None  # one CPU is busy: "small" would fit, "big" would not
    assert queue.claim("agent-1", pool) is None  # "big" fits the agent, so it holds the line
    pool.release(held)
    assert queue.claim("agent-1", pool).name == "big"
    assert queue.claim("agent-1", pool) is None  # both CPUs are "big"'s


def test_quota_limits_a_projects_running_jobs(queue_db: QueueDb) -> None:
    queue = queue_db.queue()
    queue.set_quota("vision", 1)
    for name, project in [("v1", "vision"), ("v2", "vision"), ("t1", "text")]:
        _submit(queue, name, project=project)
        time.sleep(0.002)
    pool = SlotPool(cpu_ids=[0, 1, 2], memory_gb=1.0)
    first = queue.claim("agent-1", pool)
    second = queue.claim("agent-1", pool)
    assert (first.name, second.name) == ("v1", "t1")  # v2 waits for the vision quota
    assert queue.claim("agent-1", pool) is None
    queue.finish(first, Outcome("exited", exit_code=0))
    pool.release(first.slot)
    assert queue.claim("agent-1", pool).name == "v2"
    assert queue.quotas() == {"vision": 1}
    queue.set_quota("vision", None)
    assert queue.quotas() == {}
    later = _submit(queue, "v3", project="vision")
    queue.set_quota("vision", 0)  # paused: an idle agent does not wait for it
    assert not queue.has_work_for("agent-1", pool)  # (what runs is agent-1's own)
    queue.set_quota("vision", 5)
    assert queue.has_work_for("agent-1", pool)
    assert queue.has_work_for("agent-2", pool)  # agent-1's jobs may come back to the queue
    queue.set_quota("vision", 0)
    assert queue.claim("agent-1", pool) is None and queue.get(later.id).status == "queued"


def test_a_crash_is_retried_after_a_growing_backoff_a_recipe_error_never(
    queue_db: QueueDb,
) -> None:
    queue = queue_db.queue(backoff_s=0.3)
    crash = _submit(queue, "crash", max_attempts=2)
    pool = SlotPool(cpu_ids=[0], memory_gb=1.0)
    job = queue.claim("agent-1", pool)
    after = queue.finish(job, Outcome("exited", exit_code=-9, error="killed by signal 9"))
    pool.release(job.slot)
    assert after.status == "queued" and after.attempts == 1
    assert after.not_before >= time.time() + 0.1  # backing off
    assert queue.claim("agent-1", pool) is None
    time.sleep(0.35)
    job = queue.claim("agent-1", pool)
    assert job.id == crash.id and job.attempts == 2
    final = queue.finish(job, Outcome("exited", exit_code=1, error="exit status 1"))
    pool.release(job.slot)
    assert final.status == "failed" and "gave up after 2 attempts" in final.error

    config = _submit(queue, "bad-recipe", max_attempts=3)
    job = queue.claim("agent-1", pool)
    assert job.id == config.id
    final = queue.finish(job, Outcome("exited", exit_code=3, error="DataError: no such file"))
    assert final.status == "failed" and final.attempts == 1 and "no such file" in final.error


def test_cancel_and_retry(queue_db: QueueDb) -> None:
    queue = queue_db.queue()
    queued = _submit(queue, "queued")
    assert queue.cancel(queued.id).status == "cancelled"
    assert queue.retry(queued.id).status == "queued"
    pool = SlotPool(cpu_ids=[0], memory_gb=1.0)
    running = queue.claim("agent-1", pool)
    asked = queue.cancel(running.id)
    assert asked.status == "running" and asked.cancel_requested
    assert queue.heartbeat(running).cancel
    done = queue.finish(running, Outcome("cancelled", exit_code=-15))
    assert done.status == "cancelled"
    finished = _submit(queue, "finished")
    job = queue.claim("agent-1", pool.__class__(cpu_ids=[1], memory_gb=1.0))
    assert job.id == finished.id
    queue.finish(job, Outcome("exited", exit_code=0))
    with pytest.raises(
        DanluError, match=rf"Job {finished.id} already succeeded .* nothing to cancel"
    ):
        queue.cancel(finished.id)
    with pytest.raises(DanluError, match="only a failed or cancelled job can be retried"):
        queue.retry(finished.id)
    with pytest.raises(NotFoundError, match="danlu jobs ls"):
        queue.get("0123456789ab")


def test_an_expired_lease_requeues_the_job_and_its_old_holder_is_refused(
    queue_db: QueueDb,
) -> None:
    queue = queue_db.queue()
    submitted = _submit(queue, "a")
    pool = SlotPool(cpu_ids=[0], memory_gb=1.0)
    old = queue.claim("dead-agent", pool, lease_s=0.2)
    assert queue.heartbeat(old, lease_s=0.2, run_ids=["run-1"]).held
    assert queue.requeue_expired() == []  # not expired yet
    time.sleep(0.3)
    assert queue.requeue_expired() == [submitted.id]
    requeued = queue.get(submitted.id)
    assert requeued.status == "queued" and requeued.run_ids == ("run-1",)
    assert "lost its executor" in requeued.error
    new = queue.claim("agent-2", SlotPool(cpu_ids=[0], memory_gb=1.0))
    assert new.attempts == 2 and new.lease_token != old.lease_token
    assert not queue.heartbeat(old).held  # the old holder learns it lost the job
    assert queue.finish(old, Outcome("exited", exit_code=0)) is None
    assert queue.get(submitted.id).status == "running"


def test_preemption_asks_the_lowest_priority_preemptible_job(queue_db: QueueDb) -> None:
    queue = queue_db.queue()
    pool = SlotPool(cpu_ids=[0, 1], memory_gb=1.0)
    keep = _submit(queue, "keep", priority=1)  # not preemptible
    low = _submit(queue, "low", priority=0, preemptible=True)
    a, b = queue.claim("agent-1", pool), queue.claim("agent-1", pool)
    assert {a.id, b.id} == {keep.id, low.id}
    assert queue.preempt_for("agent-1", pool) == []  # nothing waits
    urgent = _submit(queue, "urgent", priority=9)
    assert queue.preempt_for("agent-1", pool, min_wait_s=60) == []  # another agent may take it
    assert queue.preempt_for("agent-1", pool) == [low.id]
    assert queue.preempt_for("agent-1", pool) == []  # one request at a time
    victim = a if a.id == low.id else b
    assert queue.peek(victim).preempt and queue.heartbeat(victim).preempt
    after = queue.finish(victim, Outcome("preempted", exit_code=75, run_ids=("run-low",)))
    assert (after.status, after.attempts, after.preemptions) == ("queued", 0, 1)
    pool.release(victim.slot)
    assert queue.claim("agent-1", pool).id == urgent.id  # before the preempted job
    # a waiting job of lower priority than every running one preempts nothing
    _submit(queue, "later", priority=-5)
    assert queue.preempt_for("agent-1", pool) == []


def test_submit_refuses_a_job_larger_than_any_slot(queue_db: QueueDb) -> None:
    queue = queue_db.queue()
    with pytest.raises(
        ConfigError, match=r"asks for 64 GPUs .* largest slot has \d+ .*this machine"
    ):
        _submit(queue, "huge", resources=Resources(cpus=1, gpus=64))
    queue.register_agent(
        name="gpu-box", cpus=16, gpus=[0, 1], memory_gb=64.0, slots=4, timeout_s=30, host="h1"
    )
    queue.register_agent(name="cpu-box", cpus=64, memory_gb=256.0, slots=8, timeout_s=30)
    with pytest.raises(
        ConfigError, match=r"asks for 4 GPUs but the largest slot has 2 .*'gpu-box' on h1"
    ):
        _submit(queue, "four-gpus", resources=Resources(cpus=1, gpus=4))
    with pytest.raises(ConfigError, match="no single slot has all of it"):
        _submit(queue, "both", resources=Resources(cpus=32, gpus=2))
    ok = _submit(queue, "fits", resources=Resources(cpus=8, gpus=2, memory_gb=32))
    assert ok.status == "queued"
    with pytest.raises(ConfigError, match="project name"):
        _submit(queue, "x", project="../etc")
