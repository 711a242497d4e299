"""Wall time, CPU time and energy of a stretch of work (a training run, a batch of predictions).

Energy comes from the best source this machine offers:

1. ``rapl``: the CPU packages' RAPL counters under ``/sys/class/powercap`` (Intel, and AMD on
   Linux ≥ 5.8). They count the whole package, so other processes on the machine are included.
   Since Linux 5.10 they are readable by root only, so on most machines they are not used.
2. ``nvml``: on a CUDA device with ``pynvml`` installed, the GPU's own energy counter, plus the
   host side from RAPL when readable, else from the CPU-time estimate below.
3. ``estimate``: the process's CPU seconds × watts per logical core, where watts per core is a
   given TDP (or ``$DANLU_CPU_TDP_WATTS``) divided by the logical cores, else 15 W.

CPU time is :func:`time.process_time`: every thread of this process, not child processes
(DataLoader workers).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from danlu.errors import ConfigError, NotFittedError
from danlu.logging import get_logger

__all__ = ["DEFAULT_WATTS_PER_CORE", "TDP_ENV", "EnergyMeter", "EnergyReading", "watts_per_core"]

_log = get_logger(__name__)

DEFAULT_WATTS_PER_CORE = 15.0
TDP_ENV = "DANLU_CPU_TDP_WATTS"
_PACKAGE_ZONE = re.compile(r"intel-rapl:\d+")  # top-level zones; subzones are intel-rapl:N:M
_STRENGTH = {"estimate": 0, "nvml": 1, "rapl": 2}  # how much of the energy is measured
_NO_COUNTER = "estimate: no power counter readable"
_RAPL_DETAIL = "RAPL package counters (include other processes on this machine{})"
_SEP = "; "  # between the details of sessions measured differently (never inside one detail)


def watts_per_core(tdp_watts: float | None = None) -> tuple[float, str]:
    """Watts drawn per busy logical core for CPU-time energy estimates, and where that comes from.

    ``tdp_watts`` / logical cores when given, else ``$DANLU_CPU_TDP_WATTS`` / logical cores when
    set, else 15 W per core.

    Example:
        >>> watts, source = watts_per_core(tdp_watts=os.cpu_count() * 10.0)
        >>> watts
        10.0
    """
    cores = os.cpu_count() or 1
    if tdp_watts is not None:
        if not tdp_watts > 0:
            raise ConfigError(f"tdp_watts must be a number of watts > 0. Got {tdp_watts} instead.")
        return tdp_watts / cores, f"{tdp_watts:g} W TDP / {cores} logical cores"
    text = os.environ.get(TDP_ENV, "").strip()
    if text:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not value > 0:  # also catches NaN
            raise ConfigError(
                f"${TDP_ENV} must be the CPU's TDP in watts, a number > 0. Got {text!r} instead. "
                f"Fix it (e.g. {TDP_ENV}=65) or unset it to assume "
                f"{DEFAULT_WATTS_PER_CORE:g} W per core."
            )
        return value / cores, f"${TDP_ENV}={value:g} W / {cores} logical cores"
    return DEFAULT_WATTS_PER_CORE, "default"


def _estimate_detail(watts: float, source: str, why: str = _NO_COUNTER) -> str:
    rule = f"CPU time × {watts:.3g} W per core"
    return f"{rule} ({why})" if source == "default" else f"{rule} ({source}, {why})"


@dataclass(frozen=True)
class EnergyReading:
    """What an :class:`EnergyMeter` measured.

    Attributes:
        seconds: wall-clock seconds.
        cpu_seconds: CPU seconds of this process (all its threads).
        joules: energy, by ``method``.
        method: ``rapl``, ``nvml`` or ``estimate``.
        detail: one sentence saying how ``joules`` was obtained, for reports.
    """

    seconds: float
    cpu_seconds: float
    joules: float
    method: str
    detail: str

    @property
    def watt_hours(self) -> float:
        return self.joules / 3600.0

    def to_metrics(self) -> dict[str, float]:
        """The run metrics ``train_seconds``, ``train_cpu_seconds`` and ``energy_joules``."""
        return {
            "train_seconds": self.seconds,
            "train_cpu_seconds": self.cpu_seconds,
            "energy_joules": self.joules,
        }

    def to_tags(self) -> dict[str, str]:
        """The run tags ``energy_method`` and ``energy_detail``."""
        return {"energy_method": self.method, "energy_detail": self.detail}

    @classmethod
    def from_run(
        cls, metrics: dict[str, float], tags: dict[str, str] | None = None
    ) -> EnergyReading | None:
        """Rebuild a reading from a run's metrics and tags (None when the run recorded none).

        Example:
            >>> r = EnergyReading(2.0, 1.5, 30.0, "estimate", "CPU time × 15 W per core")
            >>> EnergyReading.from_run(r.to_metrics(), r.to_tags()) == r
            True
        """
        if "energy_joules" not in metrics:
            return None
        tags = tags or {}
        return cls(
            seconds=float(metrics.get("train_seconds", 0.0)),
            cpu_seconds=float(metrics.get("train_cpu_seconds", 0.0)),
            joules=float(metrics["energy_joules"]),
            method=tags.get("energy_method", "estimate"),
            detail=tags.get("energy_detail", "not recorded"),
        )

    def add(self, other: EnergyReading) -> EnergyReading:
        """Combine two sessions (a resumed run): times and energy add up, the method is the
        weaker of the two (``estimate`` if either is an estimate).

        Example:
            >>> a = EnergyReading(10.0, 8.0, 500.0, "rapl", "RAPL package counters")
            >>> b = EnergyReading(5.0, 4.0, 60.0, "estimate", "CPU time × 15 W per core")
            >>> a.add(b).joules, a.add(b).method
            (560.0, 'estimate')
        """
        weaker = min(self.method, other.method, key=lambda m: _STRENGTH.get(m, -1))
        details = list(dict.fromkeys(self.detail.split(_SEP) + other.detail.split(_SEP)))
        return EnergyReading(
            seconds=self.seconds + other.seconds,
            cpu_seconds=self.cpu_seconds + other.cpu_seconds,
            joules=self.joules + other.joules,
            method=weaker,
            detail=_SEP.join(details),
        )


class _Rapl:
    """Sum of the package counters; ``poll`` accumulates deltas, allowing one wrap per poll."""

    def __init__(self, root: Path) -> None:
        zones = sorted(p for p in root.glob("intel-rapl:*") if _PACKAGE_ZONE.fullmatch(p.name))
        zones = [z for z in zones if _zone_name(z) != "psys"]  # psys already holds the packages
        if not zones:
            raise OSError(f"no RAPL package zone under {root}")
        self.ranges = [int((z / "max_energy_range_uj").read_text()) for z in zones]
        self.zones = zones
        self.last = self._read()
        self.microjoules = 0

    def _read(self) -> list[int]:
        return [int((z / "energy_uj").read_text()) for z in self.zones]

    def poll(self) -> None:
        now = self._read()
        for before, after, span in zip(self.last, now, self.ranges, strict=True):
            self.microjoules += after - before if after >= before else after + span - before
        self.last = now


def _zone_name(zone: Path) -> str:
    try:
        return (zone / "name").read_text().strip()
    except OSError:
        return ""


class _Nvml:
    """The GPU's total-energy counter (millijoules, 64 bits: no wrap to handle)."""

    def __init__(self, device: str) -> None:
        import pynvml

        pynvml.nvmlInit()
        self.nvml = pynvml
        self.handle = _nvml_handle(pynvml, device)
        self.start = int(pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def joules(self) -> float:
        now = int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        return (now - self.start) / 1000.0

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:  # shutting down a library that already failed
            pass


def _nvml_handle(pynvml: Any, device: str) -> Any:
    """NVML numbers GPUs physically; CUDA numbers the visible ones (CUDA_VISIBLE_DEVICES)."""
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if ":" not in device and "torch" in sys.modules:
        import torch

        if torch.cuda.is_initialized():
            index = torch.cuda.current_device()
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
    if visible and visible[0] and index < len(visible):
        chosen = visible[index]
        if chosen.isdigit():
            return pynvml.nvmlDeviceGetHandleByIndex(int(chosen))
        return pynvml.nvmlDeviceGetHandleByUUID(chosen)
    return pynvml.nvmlDeviceGetHandleByIndex(index)


class EnergyMeter:
    """Measure wall time, CPU time and energy between ``start()`` and ``stop()``.

    Args:
        tdp_watts: the CPU's TDP, for the CPU-time estimate (default ``$DANLU_CPU_TDP_WATTS``,
            else 15 W per logical core).
        device: where the work runs (``cpu``, ``cuda``, ``cuda:1`` or a ``torch.device``); on
            CUDA the GPU's energy is read through NVML when ``pynvml`` is installed.
        powercap_root: where the RAPL counters live (tests point it at a fake folder).
        poll_seconds: how often a background thread reads the RAPL counters, so that counters
            wrapping more than once during a long run are still counted (0: only at stop).

    Example:
        >>> meter = EnergyMeter().start()
        >>> total = sum(i * i for i in range(10_000))
        >>> reading = meter.stop()
        >>> sorted(reading.to_metrics())
        ['energy_joules', 'train_cpu_seconds', 'train_seconds']
        >>> with EnergyMeter() as meter:
        ...     total = sum(i * i for i in range(10_000))
        >>> meter.reading.method in {"rapl", "nvml", "estimate"}
        True
    """

    def __init__(
        self,
        tdp_watts: float | None = None,
        device: Any = "cpu",
        powercap_root: Path = Path("/sys/class/powercap"),
        poll_seconds: float = 60.0,
    ) -> None:
        self.tdp_watts = tdp_watts
        self.device = str(device)
        self.powercap_root = Path(powercap_root)
        self.poll_seconds = poll_seconds
        self.reading: EnergyReading | None = None
        self._started = False

    def start(self) -> EnergyMeter:
        """Start measuring (from zero again, if already started); returns the meter."""
        if self._started:
            self.stop()
        self._watts, self._watts_source = watts_per_core(self.tdp_watts)
        self._rapl = self._open_rapl()
        self._nvml = self._open_nvml() if self.device.startswith("cuda") else None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self._rapl is not None and self.poll_seconds > 0:
            self._thread = threading.Thread(target=self._poll_loop, name="danlu-rapl", daemon=True)
            self._thread.start()
        self.reading = None
        self._started = True
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        return self

    def read(self) -> EnergyReading:
        """What was measured since ``start()``, without stopping."""
        if not self._started:
            raise NotFittedError(
                "This EnergyMeter has not been started; call meter.start() (or use it in a "
                "`with` block) before reading it."
            )
        seconds = time.perf_counter() - self._wall
        cpu_seconds = time.process_time() - self._cpu
        estimate = cpu_seconds * self._watts
        host_joules, host_detail = estimate, None
        if self._rapl is not None:
            try:
                with self._lock:
                    self._rapl.poll()
                host_joules = self._rapl.microjoules / 1e6
                host_detail = _RAPL_DETAIL.format("")
            except (OSError, ValueError) as exc:
                _log.warning("RAPL counters became unreadable (%s); estimating energy instead", exc)
                self._rapl = None
        if self._nvml is not None:
            try:
                gpu = self._nvml.joules()
            except Exception as exc:  # pynvml raises its own NVMLError family
                _log.warning("NVML energy counter unreadable (%s); GPU energy not counted", exc)
                self._nvml.close()
                self._nvml = None
            else:
                host = host_detail or _estimate_detail(self._watts, self._watts_source, "estimate")
                return EnergyReading(
                    seconds,
                    cpu_seconds,
                    gpu + host_joules,
                    "nvml",
                    f"GPU energy counter (NVML) + host: {host}",
                )
        gpu_note = ", GPU energy not measured" if self.device.startswith("cuda") else ""
        if host_detail is not None:
            detail = _RAPL_DETAIL.format(gpu_note)
            return EnergyReading(seconds, cpu_seconds, host_joules, "rapl", detail)
        detail = _estimate_detail(self._watts, self._watts_source, _NO_COUNTER + gpu_note)
        return EnergyReading(seconds, cpu_seconds, estimate, "estimate", detail)

    def stop(self) -> EnergyReading:
        """Stop measuring; returns the reading (also kept as ``meter.reading``)."""
        reading = self.read()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._nvml is not None:
            self._nvml.close()
        self._started = False
        self.reading = reading
        return reading

    def __enter__(self) -> EnergyMeter:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _open_rapl(self) -> _Rapl | None:
        try:
            return _Rapl(self.powercap_root)
        except (OSError, ValueError) as exc:  # absent, root-only (Linux ≥ 5.10) or malformed
            _log.debug("RAPL counters not usable: %s", exc)
            return None

    def _open_nvml(self) -> _Nvml | None:
        try:
            return _Nvml(self.device)
        except ImportError:
            _log.debug("pynvml is not installed; GPU energy is not measured")
        except Exception as exc:  # NVMLError_NotSupported on older GPUs ...
            _log.debug("NVML energy counter not usable: %s", exc)
        return None

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            rapl = self._rapl
            if rapl is None:
                return
            try:
                with self._lock:
                    rapl.poll()
            except (OSError, ValueError):
                return  # read() notices and falls back
