"""What the job queue hands out: frozen entities, never database rows."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "ACTIVE_STATUSES",
    "EXIT_PREEMPTED",
    "FINAL_STATUSES",
    "JOB_KINDS",
    "JOB_STATUSES",
    "NO_RETRY_EXIT_CODES",
    "AgentInfo",
    "Job",
    "Outcome",
    "Resources",
    "Signal",
    "Slot",
]

JOB_KINDS = ("run", "tune")
#: ``preempted`` is a moment, not a resting state: a preempted job is queued again at once
#: (its ``preemptions`` count says how often)
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "preempted")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")
ACTIVE_STATUSES = ("queued", "running")
#: the exit status of a run that stopped on SIGTERM after writing its checkpoint (EX_TEMPFAIL)
EXIT_PREEMPTED = 75
#: a recipe or data error (ConfigError 2, DataError 3, NotFoundError 4, a missing extra 6)
#: fails the same way every time: never retried
NO_RETRY_EXIT_CODES = frozenset({2, 3, 4, 6})


@dataclass(frozen=True)
class Resources:
    """An amount of compute: what a job asks for, or what an executor offers."""

    cpus: int = 1
    gpus: int = 0
    memory_gb: float = 0.0

    def covers(self, need: Resources) -> bool:
        return (
            self.cpus >= need.cpus
            and self.gpus >= need.gpus
            and self.memory_gb + 1e-9 >= need.memory_gb
        )

    def describe(self) -> str:
        gpus = f"{self.gpus} GPU{'s' if self.gpus != 1 else ''}"
        return f"{self.cpus} CPU{'s' if self.cpus != 1 else ''}, {gpus}, {self.memory_gb:.1f} GB"


@dataclass(frozen=True)
class Slot:
    """The compute one attempt of a job holds: CPU ids (affinity), GPU ids (CUDA_VISIBLE_DEVICES),
    memory in GB. ``cpus`` may be empty where the executor does not pin CPUs (Dask): the thread
    count is then ``threads``."""

    cpus: tuple[int, ...] = ()
    gpus: tuple[int, ...] = ()
    memory_gb: float = 0.0
    threads: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | None) -> Slot | None:
        if not text:
            return None
        data = json.loads(text)
        return cls(
            cpus=tuple(data.get("cpus", ())),
            gpus=tuple(data.get("gpus", ())),
            memory_gb=float(data.get("memory_gb", 0.0)),
            threads=int(data.get("threads", 1)),
        )


@dataclass(frozen=True)
class Job:
    """One queued recipe: what to run, what it needs, and where it stands."""

    id: str
    kind: str
    name: str
    recipe: str
    recipe_path: str
    workdir: str
    overrides: tuple[str, ...]
    project: str
    priority: int
    resources: Resources
    preemptible: bool
    status: str
    attempts: int
    max_attempts: int
    preemptions: int
    not_before: float
    created_at: float
    submitted_by: str
    lease_owner: str | None = None
    lease_token: str | None = None
    lease_expires_at: float | None = None
    agent_id: str | None = None
    slot: Slot | None = None
    run_ids: tuple[str, ...] = ()
    exit_code: int | None = None
    error: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    cancel_requested: bool = False
    preempt_requested: bool = False
    estimate: dict[str, Any] | None = None

    @property
    def last_run(self) -> str | None:
        """The run a new attempt resumes (the latest one an attempt made)."""
        return self.run_ids[-1] if self.run_ids else None

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass(frozen=True)
class AgentInfo:
    """An executor registered in the store: a ``danlu agent`` process, or a Dask cluster."""

    id: str
    host: str
    name: str
    kind: str  # local | dask
    cpus: int
    gpus: tuple[int, ...]
    memory_gb: float
    slots: int
    timeout_s: float
    started_at: float
    heartbeat_at: float
    stopped_at: float | None = None

    @property
    def largest_slot(self) -> Resources:
        return Resources(self.cpus, len(self.gpus), self.memory_gb)

    def live(self, now: float) -> bool:
        return self.stopped_at is None and now - self.heartbeat_at <= self.timeout_s


@dataclass(frozen=True)
class Signal:
    """The answer to a lease heartbeat: whether the lease is still held and what is asked."""

    held: bool
    cancel: bool = False
    preempt: bool = False


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended, as the executor saw it.

    ``reason``: ``exited`` (the child ended by itself), ``cancelled`` (stopped on a cancel
    request), ``preempted`` (stopped on a preempt request or because the executor shut down),
    ``lost`` (the lease was lost: the child was killed and nothing is recorded), ``not_started``
    (the child could not be started).
    """

    reason: str
    exit_code: int | None = None
    run_ids: tuple[str, ...] = ()
    error: str | None = None
    status: str | None = None  # the job's status after the attempt (filled by JobQueue.finish)
