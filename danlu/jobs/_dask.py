"""``danlu agent --dask tcp://HOST:8786``: the job queue's executor for a Dask distributed cluster.

Where a job runs is Dask's decision; what ran, and how it ended, is danlu's record.

- **Claims.** The executor claims jobs from the store with :meth:`JobQueue.claim` (the same
  leases, priorities, quotas and preemption as ``danlu agent``) while the cluster has room: the
  room is the workers' resources (``dask worker --resources "CPU=8,GPU=1"``, read from the
  scheduler) less what the jobs running on this cluster hold, counted from the store. A job
  no worker can hold is refused at submit: the executor registers what the workers offer in
  the ``agents`` table, one row per worker shape (``danlu submit`` checks against them and
  names the largest).
- **Tasks.** Each claimed job becomes one Dask task with ``resources={"CPU": cpus, "GPU":
  gpus}``, fire-and-forget: it runs even if the executor goes away. The task, on a worker,
  opens the same store (the executor's database URL and artifact folder travel with it) and
  runs :func:`~danlu.jobs.run_job`: a ``danlu run`` subprocess that renews the lease, polls
  cancel and preempt requests and records the outcome.
- **Exactly one runner per attempt.** Dask runs a task again when its worker dies or drops off
  the network (it cannot know the task's side effects). So the task first *takes the lease
  over*: it swaps the claim's token for one of its own in a single conditional update. A second
  run of the same task finds the token gone and returns without running anything; the job
  comes back through the lease instead: the first runner's child dies with its worker
  (``PR_SET_PDEATHSIG``) or is killed when its renewal fails, the lease expires,
  :meth:`JobQueue.requeue_expired` queues the job again, and the next attempt resumes the run
  from its last checkpoint.
- **Restarts.** Nothing lives only in the executor. A new executor leaves alone the jobs whose
  tasks still renew their leases (they finish and record themselves), counts them as busy, and
  requeues those whose lease lapsed. Until a task has taken its lease over, the executor that
  claimed the job renews it (the task may wait in Dask's queue for a while).

Example:
    >>> # DaskExecutor(JobQueue(SqlStore()), "tcp://scheduler:8786").run()
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from danlu.errors import ConfigError, DanluError, MissingExtraError
from danlu.jobs._agent import AgentReport
from danlu.jobs._entities import Job, Outcome, Resources, Slot
from danlu.jobs._queue import JobQueue
from danlu.logging import get_logger

__all__ = [
    "TASK_PREFIX",
    "ClusterResources",
    "DaskExecutor",
    "WorkerResources",
    "run_on_worker",
    "task_resources",
]

log = get_logger(__name__)

#: Dask task keys of jobs: ``danlu-job-<job id>-<attempt>-<claim>``
TASK_PREFIX = "danlu-job"
_JOBS_LIMIT = 100_000  # running jobs read at once (far more than any cluster holds)


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise MissingExtraError.for_package("distributed", "cluster") from None
    return distributed


# -- the cluster's resources ------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerResources:
    """One Dask worker as the executor sees it: its declared ``CPU``/``GPU`` resources, its
    memory (the ``MEMORY`` resource in GB, else its memory limit) and its threads (tasks at
    once)."""

    address: str
    cpus: int
    gpus: int
    memory_gb: float
    threads: int
    name: str = ""

    @property
    def offer(self) -> Resources:
        return Resources(self.cpus, self.gpus, self.memory_gb)


@dataclass(frozen=True)
class ClusterResources:
    """The workers that can run jobs (those declaring a ``CPU`` resource), and the rest."""

    address: str
    workers: tuple[WorkerResources, ...]
    ignored: tuple[str, ...] = ()  # workers without a CPU resource
    memory_resource: bool = False  # the workers declare MEMORY: jobs ask for it too

    @classmethod
    def from_scheduler_info(cls, info: dict[str, Any]) -> ClusterResources:
        """Read ``Client.scheduler_info()``: each worker's ``resources``, ``memory_limit`` and
        ``nthreads``.

        Example:
            >>> info = {"address": "tcp://s:8786", "workers": {"tcp://w:1": {
            ...     "resources": {"CPU": 8, "GPU": 1}, "memory_limit": 32e9, "nthreads": 8}}}
            >>> ClusterResources.from_scheduler_info(info).largest
            Resources(cpus=8, gpus=1, memory_gb=32.0)
        """
        workers, ignored = [], []
        memory_resource = False
        for address, w in sorted(info.get("workers", {}).items()):
            res = w.get("resources") or {}
            if "CPU" not in res:
                ignored.append(address)
                continue
            if "MEMORY" in res:
                memory_resource = True
                memory = float(res["MEMORY"])
            else:
                memory = float(w.get("memory_limit") or 0) / 1e9
            workers.append(
                WorkerResources(
                    address=address,
                    cpus=int(math.floor(float(res["CPU"]) + 1e-9)),
                    gpus=int(math.floor(float(res.get("GPU", 0)) + 1e-9)),
                    memory_gb=round(memory, 1),
                    threads=int(w.get("nthreads") or 1),
                    name=str(w.get("name", address)),
                )
            )
        return cls(str(info.get("address", "")), tuple(workers), tuple(ignored), memory_resource)

    @property
    def largest(self) -> Resources:
        """The most each of CPUs, GPUs and memory one worker has."""
        if not self.workers:
            return Resources(0, 0, 0.0)
        return Resources(
            max(w.cpus for w in self.workers),
            max(w.gpus for w in self.workers),
            max(w.memory_gb for w in self.workers),
        )

    @property
    def total(self) -> Resources:
        return Resources(
            sum(w.cpus for w in self.workers),
            sum(w.gpus for w in self.workers),
            sum(w.memory_gb for w in self.workers),
        )

    @property
    def threads(self) -> int:
        """Tasks the workers run at once, all together."""
        return sum(w.threads for w in self.workers)

    def fits(self, need: Resources) -> bool:
        """Whether one worker could ever hold ``need``."""
        return any(w.offer.covers(need) for w in self.workers)

    def shapes(self) -> list[tuple[Resources, list[WorkerResources]]]:
        """The workers grouped by what they offer, leaving out offers another one covers: a
        job fits some worker exactly when it fits one of these (a CPU node and a GPU node are
        two shapes; the cluster is not one slot of the most CPUs and the most GPUs).

        Example:
            >>> info = {"workers": {
            ...     "tcp://a:1": {"resources": {"CPU": 8, "GPU": 1}, "memory_limit": 32e9},
            ...     "tcp://b:1": {"resources": {"CPU": 32}, "memory_limit": 64e9},
            ...     "tcp://c:1": {"resources": {"CPU": 4}, "memory_limit": 8e9}}}
            >>> [offer for offer, _ in ClusterResources.from_scheduler_info(info).shapes()]
            [Resources(cpus=32, gpus=0, memory_gb=64.0), Resources(cpus=8, gpus=1, memory_gb=32.0)]
        """
        groups: dict[Resources, list[WorkerResources]] = {}
        for worker in self.workers:
            groups.setdefault(worker.offer, []).append(worker)
        kept = [
            (offer, members)
            for offer, members in groups.items()
            if not any(other != offer and other.covers(offer) for other in groups)
        ]
        return sorted(kept, key=lambda k: (-k[0].cpus, -k[0].gpus, -k[0].memory_gb))

    def describe(self) -> str:
        total = self.total
        shapes = "; ".join(
            f"{len(members)} x {offer.describe()}" for offer, members in self.shapes()
        )
        return (
            f"{len(self.workers)} worker(s), {total.cpus} CPUs and {total.gpus} GPUs in all "
            f"({shapes})"
        )


def task_resources(need: Resources, *, memory: bool = False) -> dict[str, float]:
    """The Dask resources a job's task asks for (a GPU or memory request only when non-zero:
    a worker that declares no GPU cannot serve even ``GPU=0``).

    Example:
        >>> task_resources(Resources(cpus=2, gpus=1))
        {'CPU': 2, 'GPU': 1}
    """
    wanted: dict[str, float] = {"CPU": need.cpus}
    if need.gpus:
        wanted["GPU"] = need.gpus
    if memory and need.memory_gb > 0:
        wanted["MEMORY"] = need.memory_gb
    return wanted


class _ClusterPlacer:
    """The cluster's free room for :meth:`JobQueue.claim`: its total less what running jobs hold.

    Dask picks the worker, so the room is counted over the whole cluster (plus: the job must fit
    one worker, and no more tasks than the workers' threads). When the room is split between
    workers a task may wait in Dask's queue; the executor renews its lease meanwhile."""

    def __init__(self, cluster: ClusterResources, held: Sequence[Resources]) -> None:
        self.cluster = cluster
        total = cluster.total
        self._cpus = total.cpus - sum(r.cpus for r in held)
        self._gpus = total.gpus - sum(r.gpus for r in held)
        self._memory = total.memory_gb - sum(r.memory_gb for r in held)
        self._tasks = cluster.threads - len(held)
        self._lock = threading.Lock()

    def fits(self, job: Job) -> bool:
        return self.cluster.fits(job.resources)

    def _room(self, need: Resources, releasing: Sequence[Slot]) -> bool:
        free = Resources(
            self._cpus + sum(s.threads for s in releasing),
            self._gpus + sum(len(s.gpus) for s in releasing),
            self._memory + sum(s.memory_gb for s in releasing),
        )
        tasks = self._tasks + len(releasing)
        return tasks >= 1 and free.covers(need) and self.cluster.fits(need)

    def can_place(self, job: Job, releasing: Sequence[Slot] = ()) -> bool:
        with self._lock:
            return self._room(job.resources, releasing)

    def place(self, job: Job) -> Slot | None:
        need = job.resources
        with self._lock:
            if not self._room(need, ()):
                return None
            self._cpus -= need.cpus
            self._gpus -= need.gpus
            self._memory -= need.memory_gb
            self._tasks -= 1
        # CPUs are not pinned on a worker (threads only); GPUs are chosen on the worker
        return Slot(cpus=(), gpus=(), memory_gb=need.memory_gb, threads=need.cpus)

    def release(self, slot: Slot) -> None:
        with self._lock:
            self._cpus += slot.threads
            self._gpus += len(slot.gpus)
            self._memory += slot.memory_gb
            self._tasks += 1


# -- on the worker ------------------------------------------------------------------------------------
_queues: dict[tuple[str, str], JobQueue] = {}
_queues_lock = threading.Lock()


def _worker_queue(db_url: str, home: str) -> JobQueue:
    """The job queue of the executor's store, opened once per worker process."""
    with _queues_lock:
        queue = _queues.get((db_url, home))
        if queue is None:
            from danlu.store import SqlStore

            queue = JobQueue(SqlStore(db_url, home=home))
            _queues[(db_url, home)] = queue
        return queue


class _WorkerGpus:
    """Which of a worker's GPUs its running tasks hold. Dask's ``GPU`` resource only counts
    them; the device ids come from the worker's ``CUDA_VISIBLE_DEVICES`` (else 0..GPU-1)."""

    def __init__(self) -> None:
        self._held: set[int] = set()
        self._lock = threading.Lock()

    @staticmethod
    def devices(count: int) -> list[int]:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None and visible.strip():
            with contextlib.suppress(ValueError):
                return [int(d) for d in visible.split(",")]
        return list(range(count))

    def take(self, need: int, declared: int) -> tuple[int, ...]:
        if need <= 0:
            return ()
        with self._lock:
            free = [d for d in self.devices(declared) if d not in self._held]
            if len(free) < need:
                raise ConfigError(
                    f"This Dask worker declares GPU={declared} but only {len(free)} of its "
                    f"devices are free ({len(self._held)} held): start it with --resources "
                    f"GPU=N where N is the number of devices it sees (CUDA_VISIBLE_DEVICES)."
                )
            chosen = tuple(free[:need])
            self._held.update(chosen)
            return chosen

    def give_back(self, gpus: Sequence[int]) -> None:
        with self._lock:
            self._held.difference_update(gpus)


_gpus = _WorkerGpus()


def _worker_address() -> tuple[str, int]:
    """This worker's address and declared GPU count (outside a worker: ``local``, 0)."""
    try:
        worker = _distributed().get_worker()
    except ValueError:
        return "local", 0
    return str(worker.address), int(worker.state.total_resources.get("GPU", 0))


def run_on_worker(task: dict[str, Any]) -> dict[str, Any]:
    """The Dask task of one claimed job: take its lease over, then :func:`run_job` it.

    ``task`` holds plain values only (``db_url``, ``home``, ``job_id``, ``token``,
    ``agent_id``, ``lease_s``, ``cancel_grace_s``, ``preempt_grace_s``). Returns what happened:
    ``{"ran": False, ...}`` when another run of this task (or another attempt) owns the job,
    else the attempt's outcome (``reason``, ``exit_code``, ``run_ids``, ``error``, ``status``).
    """
    from danlu.jobs._execute import run_job

    address, declared_gpus = _worker_address()
    queue = _worker_queue(task["db_url"], task["home"])
    job = queue.get(task["job_id"])
    summary: dict[str, Any] = {"job_id": job.id, "worker": address, "ran": False}
    if job.status != "running" or job.lease_token != task["token"]:
        return summary  # not ours any more: nothing to run
    gpus = _gpus.take(job.resources.gpus, declared_gpus)
    try:
        slot = Slot(
            cpus=(),
            gpus=gpus,
            memory_gb=job.resources.memory_gb,
            threads=max(job.resources.cpus, 1),
        )
        mine = queue.take_over(job, task["token"], slot, lease_s=float(task["lease_s"]))
        if mine is None:
            return summary
        outcome = run_job(
            queue,
            mine,
            slot,
            task["agent_id"],
            lease_s=float(task["lease_s"]),
            cancel_grace_s=float(task["cancel_grace_s"]),
            preempt_grace_s=float(task["preempt_grace_s"]),
        )
    finally:
        _gpus.give_back(gpus)
    return summary | {
        "ran": True,
        "attempt": mine.attempts,
        "reason": outcome.reason,
        "exit_code": outcome.exit_code,
        "run_ids": list(outcome.run_ids),
        "error": outcome.error,
        "status": outcome.status,
    }


def _portable_url(queue: JobQueue) -> str:
    """The store's database URL as a worker must open it: a SQLite file by absolute path."""
    url = queue.store.engine.url
    if url.drivername.startswith("sqlite") and url.database and url.database != ":memory:":
        url = url.set(database=str(os.path.abspath(url.database)))
    return str(url.render_as_string(hide_password=False))


# -- the executor ---------------------------------------------------------------------------------------
@dataclass
class _Task:
    job: Job  # as claimed: its token is the claim's until the task takes the lease over
    future: Any
    taken_over: bool = False


@dataclass
class _Seen:
    """What the executor last read of the cluster, and its rows in the ``agents`` table: one
    per worker shape, the first one the executor's own (its claims carry that id)."""

    cluster: ClusterResources | None = None
    agent_ids: list[str] = field(default_factory=list)
    shapes: list[Resources] = field(default_factory=list)
    missing_cpu_warned: set[str] = field(default_factory=set)

    @property
    def agent_id(self) -> str:
        return self.agent_ids[0] if self.agent_ids else ""


class DaskExecutor:
    """Hands queued jobs to a Dask cluster as tasks with worker resources, until stopped (or
    idle, with ``exit_when_idle``).

    Args:
        queue: the job queue. Its database must be reachable from every worker (PostgreSQL
            for a cluster; a SQLite file works where the workers share its filesystem) and its
            artifact folder (``DANLU_HOME``) must be the same path on every worker.
        address: the scheduler, ``tcp://HOST:8786`` (or a ``distributed.Client`` via ``client``).
        poll_s: seconds between two looks at the queue and the cluster.
        lease_s: the lease of each job; a job whose task is silent this long is requeued.
        exit_when_idle: return once no job of this cluster runs and none could come.
        connect_timeout_s: how long to wait for the scheduler and for a first worker.
        on_event: called with a line per claim and per ended attempt (the CLI prints them).
        client: an open ``distributed.Client`` to use instead of connecting to ``address``
            (it is not closed at the end).

    Stopping the executor (:meth:`stop`) leaves the running tasks alone: they finish on the
    cluster and record themselves; a new executor picks up from the store.

    Example:
        >>> # DaskExecutor(JobQueue(SqlStore()), "tcp://127.0.0.1:8786", exit_when_idle=True).run()
    """

    def __init__(
        self,
        queue: JobQueue,
        address: str | None = None,
        *,
        poll_s: float = 1.0,
        lease_s: float = 30.0,
        exit_when_idle: bool = False,
        cancel_grace_s: float = 10.0,
        preempt_grace_s: float = 120.0,
        connect_timeout_s: float = 30.0,
        on_event: Callable[[str], None] | None = None,
        client: Any = None,
    ) -> None:
        if address is None and client is None:
            raise ConfigError("A Dask executor needs the scheduler's address (tcp://HOST:8786).")
        self.queue = queue
        self.address = address
        self.poll_s = poll_s
        self.lease_s = lease_s
        self.exit_when_idle = exit_when_idle
        self.cancel_grace_s = cancel_grace_s
        self.preempt_grace_s = preempt_grace_s
        self.connect_timeout_s = connect_timeout_s
        self.on_event = on_event
        self._client = client
        self._own_client = client is None
        self._stopping = threading.Event()
        self._tasks: dict[str, _Task] = {}  # by Dask key
        self._seen = _Seen()
        self.report = AgentReport()

    def stop(self) -> None:
        """Stop claiming and return (safe from a signal handler); running tasks carry on."""
        self._stopping.set()

    def _say(self, line: str) -> None:
        log.info("%s", line)
        if self.on_event is not None:
            self.on_event(line)

    # -- connection -----------------------------------------------------------------------------
    def _connect(self) -> Any:
        if self._client is not None:
            return self._client
        distributed = _distributed()
        try:
            self._client = distributed.Client(
                self.address, timeout=self.connect_timeout_s, set_as_default=False
            )
        except (OSError, TimeoutError) as exc:
            raise DanluError(
                f"Cannot reach the Dask scheduler at {self.address} ({exc}). Start it with "
                "`dask scheduler` and pass its address: danlu agent --dask tcp://HOST:8786."
            ) from None
        return self._client

    def _read_cluster(self, client: Any, *, wait: bool) -> ClusterResources:
        deadline = time.monotonic() + (self.connect_timeout_s if wait else 0.0)
        while True:
            cluster = ClusterResources.from_scheduler_info(client.scheduler_info())
            if cluster.workers or time.monotonic() >= deadline or self._stopping.is_set():
                break
            self._stopping.wait(min(self.poll_s, 0.5))
        for address in set(cluster.ignored) - self._seen.missing_cpu_warned:
            self._seen.missing_cpu_warned.add(address)
            log.warning(
                "Dask worker %s declares no CPU resource: it gets no danlu jobs. Start it with "
                '`dask worker %s --resources "CPU=8"` (its CPUs, and GPU=N for its GPUs).',
                address,
                cluster.address or self.address,
            )
        if wait and not cluster.workers:
            raise DanluError(
                f"The Dask cluster at {cluster.address or self.address} has no worker that "
                f"declares a CPU resource (after {self.connect_timeout_s:g} s). Start workers "
                f'with: dask worker {cluster.address or self.address} --resources "CPU=8,GPU=1"'
                " --nthreads 8 (each job's task asks for its --cpus and --gpus)."
            )
        return cluster

    def _register(self, cluster: ClusterResources) -> str:
        """Register what the cluster's workers offer in the ``agents`` table, one row per
        worker shape (what ``danlu submit`` checks a job against, naming the largest); again
        whenever the shapes change (workers join and leave). Returns the executor's agent id."""
        shapes = cluster.shapes()
        offers = [offer for offer, _ in shapes]
        # a cluster scaled to zero for a while (adaptive) keeps its slots: submit still works
        if self._seen.agent_ids and (self._seen.shapes == offers or not offers):
            for agent_id in self._seen.agent_ids:
                self.queue.agent_heartbeat(agent_id)
            return self._seen.agent_id
        self._deregister()
        total = cluster.total
        whole = (
            f"the cluster: {len(cluster.workers)} worker(s), {total.cpus} CPUs, "
            f"{total.gpus} GPUs in all"
        )
        for offer, members in shapes:
            like = f" and {len(members) - 1} like it" if len(members) > 1 else ""
            info = self.queue.register_agent(
                name=f"Dask worker {members[0].name}{like}; {whole}",
                kind="dask",
                cpus=offer.cpus,
                gpus=range(offer.gpus),
                memory_gb=offer.memory_gb,
                slots=sum(w.threads for w in members),
                timeout_s=max(self.lease_s, 3 * self.poll_s),
                host=cluster.address,
            )
            self._seen.agent_ids.append(info.id)
        self._seen.shapes = offers
        self.report.agent_id = self._seen.agent_id
        self._say(f"dask executor {self._seen.agent_id} on {cluster.address}: {cluster.describe()}")
        return self._seen.agent_id

    def _deregister(self) -> None:
        for agent_id in self._seen.agent_ids:
            with contextlib.suppress(DanluError):
                self.queue.deregister_agent(agent_id)
        self._seen.agent_ids, self._seen.shapes = [], []

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> AgentReport:
        """Connect, register, hand out jobs until stopped (or idle), deregister."""
        client = self._connect()
        try:
            cluster = self._read_cluster(client, wait=True)
            self._seen.cluster = cluster
            self._register(cluster)
            while not self._stopping.is_set():
                try:
                    if self._tick(client):
                        break
                except DanluError as exc:  # a busy or unreachable database: try again later
                    log.warning("dask executor: %s", exc)
                except (OSError, TimeoutError) as exc:  # the scheduler is out of reach
                    log.warning("dask executor: the scheduler did not answer: %s", exc)
                self._stopping.wait(self.poll_s)
        finally:
            self._shutdown(client)
        return self.report

    def _cluster_agents(self, address: str) -> set[str]:
        return {a.id for a in self.queue.agents() if a.kind == "dask" and a.host == address}

    def _held(self, address: str) -> list[Resources]:
        """What the jobs running on this cluster hold (any executor of it, past or present)."""
        ours = self._cluster_agents(address)
        running = self.queue.list_jobs(status="running", limit=_JOBS_LIMIT)
        return [j.resources for j in running if j.agent_id in ours]

    def _tick(self, client: Any) -> bool:
        """One look at the cluster and the queue. True when the executor should exit (idle)."""
        cluster = self._read_cluster(client, wait=False)
        self._seen.cluster = cluster
        agent_id = self._register(cluster)  # and renews its heartbeat
        self.queue.requeue_expired()
        self._collect()
        self._renew_claims()
        placer = _ClusterPlacer(cluster, self._held(cluster.address))
        while not self._stopping.is_set():
            job = self.queue.claim(agent_id, placer, lease_s=self.lease_s)
            if job is None:
                break
            self._hand_out(client, agent_id, job, cluster)
        self.queue.preempt_for(agent_id, placer)
        if self.exit_when_idle and not self._tasks:
            mine = [
                j
                for j in self.queue.list_jobs(status="running", limit=_JOBS_LIMIT)
                if j.agent_id == agent_id
            ]
            return not mine and not self.queue.has_work_for(agent_id, placer)
        return False

    def _hand_out(self, client: Any, agent_id: str, job: Job, cluster: ClusterResources) -> None:
        distributed = _distributed()
        assert job.lease_token is not None, "a claimed job holds a lease"
        key = f"{TASK_PREFIX}-{job.id}-{job.attempts}-{job.lease_token[:8]}"
        task = {
            "db_url": _portable_url(self.queue),
            "home": str(self.queue.store.home.resolve()),
            "job_id": job.id,
            "token": job.lease_token,
            "agent_id": agent_id,
            "lease_s": self.lease_s,
            "cancel_grace_s": self.cancel_grace_s,
            "preempt_grace_s": self.preempt_grace_s,
        }
        resources = task_resources(job.resources, memory=cluster.memory_resource)
        future = client.submit(
            run_on_worker, task, key=key, resources=resources, pure=False, retries=0
        )
        distributed.fire_and_forget(future)  # it runs even if this executor goes away
        self._tasks[key] = _Task(job, future)
        self._say(
            f"job {job.id} ({job.name}) attempt {job.attempts} handed to Dask as {key} "
            f"(resources {resources})"
        )

    def _renew_claims(self) -> None:
        """Renew the claims whose task has not taken the lease over yet; act on a cancel or
        preempt request that comes before the task starts."""
        for t in list(self._tasks.values()):
            if t.taken_over:
                continue
            signal = self.queue.heartbeat(t.job, lease_s=self.lease_s)
            if not signal.held:
                t.taken_over = True  # the task holds it now (or the job moved on)
                continue
            if signal.cancel or signal.preempt:
                reason = "cancelled" if signal.cancel else "preempted"
                t.future.cancel(force=True)
                if self.queue.finish(t.job, Outcome(reason)) is not None:
                    self._say(f"job {t.job.id}: {reason} before its task started")

    def _collect(self) -> None:
        """Take in the tasks that ended."""
        for key, t in list(self._tasks.items()):
            if not t.future.done():
                continue
            del self._tasks[key]
            if t.future.cancelled():
                continue
            try:
                result = t.future.result(timeout=5)
            except Exception as exc:  # the task itself failed on the worker
                self._task_failed(t, exc)
                continue
            if not result.get("ran"):  # Dask ran it again (its worker died) or too late
                self._say(
                    f"job {t.job.id}: its task ran on {result['worker']} after the claim had "
                    "moved on (a worker died, or the lease lapsed): it ran nothing"
                )
                continue
            outcome = Outcome(
                result["reason"],
                exit_code=result["exit_code"],
                run_ids=tuple(result["run_ids"]),
                error=result["error"],
                status=result["status"],
            )
            self.report.attempts.append((t.job.id, outcome))
            self._say(
                f"job {t.job.id} attempt {result['attempt']} ended on {result['worker']}: "
                f"{outcome.reason}, exit status {outcome.exit_code} -> "
                f"{outcome.status or 'lease lost'}"
            )

    def _task_failed(self, t: _Task, exc: BaseException) -> None:
        """A task that raised instead of running its job (the worker cannot import danlu, reach
        the database, ...). A claim it never took over fails the attempt with that error; one it
        took over ends through its lease."""
        error = (
            f"its Dask task failed: {type(exc).__name__}: {exc} (every worker needs the same "
            "danlu installed, the database's URL reachable and DANLU_HOME at the same path)"
        )
        log.error("job %s: %s", t.job.id, error)
        final = self.queue.finish(t.job, Outcome("not_started", error=error))
        if final is not None:
            self.report.attempts.append(
                (t.job.id, Outcome("not_started", error=error, status=final.status))
            )
            self._say(f"job {t.job.id}: {error} -> {final.status}")

    def _shutdown(self, client: Any) -> None:
        """Leave: claims no task took over go back to the queue; running tasks carry on."""
        for t in self._tasks.values():
            if t.taken_over:
                continue
            with contextlib.suppress(Exception):
                t.future.cancel(force=True)
            with contextlib.suppress(DanluError):
                self.queue.finish(t.job, Outcome("preempted"))
        if self._seen.agent_ids:
            agent_id = self._seen.agent_id
            self._deregister()
            self._say(f"dask executor {agent_id} stopped")
        if self._own_client:
            with contextlib.suppress(Exception):
                client.close(timeout=5)
