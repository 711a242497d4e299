"""``danlu agent``: the embedded executor. It claims jobs while it has free slots and runs each
attempt with :func:`~danlu.jobs.run_job` in a thread of its own.

Every ``poll_s`` seconds, and as soon as an attempt ends, the agent renews its own heartbeat,
puts jobs whose lease expired back in the queue (another agent died), claims what fits its free
slots, and asks lower-priority preemptible jobs to make room for a waiting one. Stopping it (SIGTERM, Ctrl-C: :meth:`stop`)
preempts its running jobs: each writes its checkpoint and goes back to the queue, none is lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from danlu.errors import DanluError
from danlu.jobs._entities import Job, Outcome
from danlu.jobs._execute import run_job
from danlu.jobs._queue import JobQueue
from danlu.jobs._slots import SlotPool
from danlu.logging import get_logger

__all__ = ["Agent", "AgentReport"]

log = get_logger(__name__)


@dataclass
class AgentReport:
    """What an agent did: each attempt it ran, as ``(job id, outcome)``."""

    agent_id: str = ""
    attempts: list[tuple[str, Outcome]] = field(default_factory=list)


@dataclass
class _Running:
    job: Job
    thread: threading.Thread
    stop: threading.Event


class Agent:
    """Runs queued jobs on this machine's slots until stopped (or idle, with ``exit_when_idle``).

    Args:
        queue: the job queue.
        pool: the CPUs, GPUs and memory it hands out, and how many jobs at once.
        name: shown in ``danlu jobs`` (default: the host name).
        poll_s: seconds between two looks at the queue.
        lease_s: the lease of each claimed job; a job whose agent is silent this long is
            requeued by any other agent.
        exit_when_idle: return once nothing is running here and no job could come here.
        on_event: called with a line for each claim and each ended attempt (the CLI prints it).

    Example:
        >>> # Agent(JobQueue(SqlStore()), pool=SlotPool(cpu_ids=[0, 1], memory_gb=8)).run()
    """

    def __init__(
        self,
        queue: JobQueue,
        *,
        pool: SlotPool,
        name: str | None = None,
        poll_s: float = 1.0,
        lease_s: float = 30.0,
        exit_when_idle: bool = False,
        cancel_grace_s: float = 10.0,
        preempt_grace_s: float = 120.0,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.queue = queue
        self.pool = pool
        self.name = name
        self.poll_s = poll_s
        self.lease_s = lease_s
        self.exit_when_idle = exit_when_idle
        self.cancel_grace_s = cancel_grace_s
        self.preempt_grace_s = preempt_grace_s
        self.on_event = on_event
        self._stopping = threading.Event()
        self._wake = threading.Event()  # an attempt ended: look at the queue now
        self._running: dict[str, _Running] = {}
        self.report = AgentReport()

    def stop(self) -> None:
        """Stop claiming and preempt the running jobs (safe from a signal handler)."""
        self._stopping.set()
        self._wake.set()

    def _say(self, line: str) -> None:
        log.info("%s", line)
        if self.on_event is not None:
            self.on_event(line)

    def run(self) -> AgentReport:
        """Register, run jobs until stopped (or idle), deregister. Returns what it did."""
        from danlu.store import host_name

        capacity = self.pool.capacity
        info = self.queue.register_agent(
            name=self.name or host_name(),
            kind="local",
            cpus=capacity.cpus,
            gpus=self.pool.gpu_ids,
            memory_gb=capacity.memory_gb,
            slots=self.pool.max_jobs,
            timeout_s=max(self.lease_s, 3 * self.poll_s),
        )
        self.report.agent_id = info.id
        self._say(
            f"agent {info.id} ({info.name}) ready: {capacity.describe()}, "
            f"at most {self.pool.max_jobs} job(s) at once"
        )
        try:
            while not self._stopping.is_set():
                try:
                    if self._tick(info.id):
                        break
                except DanluError as exc:  # a busy or unreachable database: try again later
                    log.warning("agent %s: %s", info.id, exc)
                self._wake.wait(self.poll_s)
                self._wake.clear()
        finally:
            self._shutdown(info.id)
        return self.report

    def _tick(self, agent_id: str) -> bool:
        """One look at the queue. True when the agent should exit (idle)."""
        self._reap()
        self.queue.agent_heartbeat(agent_id)
        self.queue.requeue_expired()
        while not self._stopping.is_set():
            job = self.queue.claim(agent_id, self.pool, lease_s=self.lease_s)
            if job is None:
                break
            self._start(agent_id, job)
        # a new job gets one poll, for another agent with free room to claim it, before this
        # one preempts; its own attempts are told at once (not at their next look at the flags)
        for job_id in self.queue.preempt_for(agent_id, self.pool, min_wait_s=max(self.poll_s, 0.5)):
            running = self._running.get(job_id)
            if running is not None:
                running.stop.set()
        if self.exit_when_idle and not self._running:
            return not self.queue.has_work_for(agent_id, self.pool)
        return False

    def _start(self, agent_id: str, job: Job) -> None:
        assert job.slot is not None, "a claimed job holds a slot"
        stop = threading.Event()
        self._say(
            f"job {job.id} ({job.name}) attempt {job.attempts} started: CPUs {list(job.slot.cpus)}"
            + (f", GPUs {list(job.slot.gpus)}" if job.slot.gpus else "")
        )

        freed = threading.Event()

        def free() -> None:  # once the child is gone: its slot serves the next job at once
            if freed.is_set():  # on_exit, then the finally below: release once
                return
            freed.set()
            assert job.slot is not None
            self.pool.release(job.slot)
            self._wake.set()

        def attempt() -> None:
            assert job.slot is not None
            try:
                outcome = run_job(
                    self.queue,
                    job,
                    job.slot,
                    agent_id,
                    lease_s=self.lease_s,
                    stop=stop,
                    cancel_grace_s=self.cancel_grace_s,
                    preempt_grace_s=self.preempt_grace_s,
                    on_exit=free,
                )
                self.report.attempts.append((job.id, outcome))
                self._say(
                    f"job {job.id} attempt {job.attempts} ended: {outcome.reason}, exit status "
                    f"{outcome.exit_code} -> {outcome.status or 'lease lost'}"
                )
            except Exception:  # its lease expires and another attempt picks it up
                log.exception("job %s: the attempt failed in the agent", job.id)
            finally:
                free()

        thread = threading.Thread(target=attempt, name=f"danlu-job-{job.id}", daemon=True)
        self._running[job.id] = _Running(job, thread, stop)
        thread.start()

    def _reap(self) -> None:
        for job_id in [j for j, r in self._running.items() if not r.thread.is_alive()]:
            del self._running[job_id]

    def _shutdown(self, agent_id: str) -> None:
        """Preempt what still runs here (each attempt checkpoints and is requeued), then leave."""
        self._reap()  # an attempt that ended since the last look is not running any more
        if self._running:
            self._say(f"stopping: preempting {len(self._running)} running job(s)")
        for running in self._running.values():
            running.stop.set()
        deadline = time.monotonic() + self.preempt_grace_s + 30
        for running in self._running.values():
            running.thread.join(timeout=max(deadline - time.monotonic(), 0.1))
        self._reap()
        try:
            self.queue.deregister_agent(agent_id)
        except DanluError as exc:
            log.warning("agent %s: could not deregister: %s", agent_id, exc)
        self._say(f"agent {agent_id} stopped")
