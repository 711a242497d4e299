"""An executor's compute, handed out in slots: which CPU ids, GPU ids and memory each job holds."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from danlu.errors import ConfigError
from danlu.jobs._entities import Job, Resources, Slot

__all__ = ["SlotPool"]


class SlotPool:
    """The CPUs, GPUs and memory of one executor, and at most ``max_jobs`` jobs at once.

    A job asking for ``cpus=2, gpus=1`` gets two of the free CPU ids and one free GPU id; the
    pool is what :meth:`danlu.jobs.JobQueue.claim` places jobs with. Thread-safe.

    Example:
        >>> pool = SlotPool(cpu_ids=[0, 1], gpu_ids=[], memory_gb=8.0)
        >>> pool.capacity
        Resources(cpus=2, gpus=0, memory_gb=8.0)
    """

    def __init__(
        self,
        *,
        cpu_ids: Sequence[int],
        gpu_ids: Sequence[int] = (),
        memory_gb: float,
        max_jobs: int | None = None,
    ) -> None:
        if not cpu_ids:
            raise ConfigError("An agent needs at least one CPU (--cpus).")
        if len(set(cpu_ids)) != len(cpu_ids) or len(set(gpu_ids)) != len(gpu_ids):
            raise ConfigError("An agent's CPU and GPU ids must not repeat (--cpus, --gpus).")
        self.cpu_ids = tuple(cpu_ids)
        self.gpu_ids = tuple(gpu_ids)
        self.memory_gb = float(memory_gb)
        self.max_jobs = max_jobs if max_jobs is not None else len(self.cpu_ids)
        if self.max_jobs < 1:
            raise ConfigError(f"An agent runs at least 1 job at once (--slots); got {max_jobs}.")
        self._free_cpus = list(self.cpu_ids)
        self._free_gpus = list(self.gpu_ids)
        self._free_memory = self.memory_gb
        self._held: list[Slot] = []
        self._lock = threading.Lock()

    @property
    def capacity(self) -> Resources:
        return Resources(len(self.cpu_ids), len(self.gpu_ids), self.memory_gb)

    @property
    def busy(self) -> int:
        """Slots held now."""
        with self._lock:
            return len(self._held)

    def fits(self, job: Job) -> bool:
        return self.capacity.covers(job.resources)

    def _room(self, need: Resources, releasing: Sequence[Slot]) -> bool:
        cpus = len(self._free_cpus) + sum(len(s.cpus) for s in releasing)
        gpus = len(self._free_gpus) + sum(len(s.gpus) for s in releasing)
        memory = self._free_memory + sum(s.memory_gb for s in releasing)
        jobs = len(self._held) - len(releasing)
        return jobs < self.max_jobs and Resources(cpus, gpus, memory).covers(need)

    def can_place(self, job: Job, releasing: Sequence[Slot] = ()) -> bool:
        with self._lock:
            return self._room(job.resources, releasing)

    def place(self, job: Job) -> Slot | None:
        need = job.resources
        with self._lock:
            if not self._room(need, ()):
                return None
            cpus = tuple(self._free_cpus[: need.cpus])
            gpus = tuple(self._free_gpus[: need.gpus])
            del self._free_cpus[: need.cpus]
            del self._free_gpus[: need.gpus]
            self._free_memory -= need.memory_gb
            slot = Slot(cpus=cpus, gpus=gpus, memory_gb=need.memory_gb, threads=need.cpus)
            self._held.append(slot)
            return slot

    def release(self, slot: Slot) -> None:
        with self._lock:
            if slot not in self._held:  # released already (release each attempt's slot once:
                return  # a later job may hold an equal one, the same CPUs)
            self._held.remove(slot)
            self._free_cpus = sorted(self._free_cpus + list(slot.cpus))
            self._free_gpus = sorted(self._free_gpus + list(slot.gpus))
            self._free_memory += slot.memory_gb
