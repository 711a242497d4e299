"""What this machine offers: the CPUs this process may use, its GPUs, its memory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MachineResources", "machine_resources"]


@dataclass(frozen=True)
class MachineResources:
    cpu_ids: tuple[int, ...]
    gpu_ids: tuple[int, ...]
    memory_gb: float

    @property
    def cpus(self) -> int:
        return len(self.cpu_ids)


def _gpu_ids() -> tuple[int, ...]:
    """CUDA devices as torch numbers them (after ``CUDA_VISIBLE_DEVICES``); none without torch
    or CUDA. ``CUDA_VISIBLE_DEVICES`` is read first so a CPU machine never imports torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return ()
    if not any(Path(p).exists() for p in ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/kfd")):
        return ()  # no GPU driver here: spare the torch import (seconds)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return ()
    if not torch.cuda.is_available():
        return ()
    return tuple(range(torch.cuda.device_count()))


def machine_resources() -> MachineResources:
    """This machine's CPUs (this process's affinity), GPUs and physical memory.

    Example:
        >>> machine_resources().cpus >= 1
        True
    """
    try:
        cpu_ids = tuple(sorted(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        cpu_ids = tuple(range(os.cpu_count() or 1))
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        memory = 0.0
    return MachineResources(cpu_ids, _gpu_ids(), round(memory, 1))
