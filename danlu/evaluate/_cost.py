"""The cost section: what the model weighs, how fast it answers, and what it cost to train.

Latency is the median of single-row calls (what one request waits); throughput is rows per second
in batches. Both are measured here, on this machine, so they compare models only when measured
on the same machine. Training time and energy come from the run (see ``danlu.train._energy``).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from danlu.evaluate._context import EvalData, Section

if TYPE_CHECKING:
    import numpy as np
    import torch

    from danlu.config import CostConfig

__all__ = ["cost_section"]

_WARMUP = 5  # untimed calls first: lazy initialisation, allocator and cache warm-up
_BUDGET_SECONDS = 3.0  # per measurement; stop early (after _MIN_CALLS) once it is spent
_MIN_CALLS = 3
_METHODS = {"estimate": "estimate", "rapl": "RAPL counters", "nvml": "NVML"}


def cost_section(data: EvalData, config: CostConfig) -> Section:
    """Parameters, file sizes, latency, throughput, inference energy and training cost.

    Args:
        data: the model and its evaluation rows (rows are only fed to the model, for timing).
        config: the ``evaluate.cost`` block (throughput batch size, timed calls, CPU TDP).

    Example:
        >>> from danlu.config import CostConfig
        >>> # data = EvalData.from_prepared(model, task, prepared)
        >>> # section = cost_section(data, CostConfig(repeats=20))
        >>> # section.data["latency_ms"]["batch_1"]["median"]  -> 0.21
    """
    import numpy as np
    import torch

    from danlu.train._energy import watts_per_core

    model = data.model.eval()
    notes: list[str] = []
    parameters = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if not parameters and hasattr(model, "n_trees"):  # a tree ensemble: its size is its trees
        notes.append(
            f"A tree ensemble: {model.n_trees} trees of depth ≤ {model.depth}, held as tables "
            f"(no trained parameters); {sum(b.numel() for b in model.buffers()):,} numbers."
        )

    sizes = {name: int(size) for name, size in data.files.items()}
    if not sizes:
        sizes = {"model.safetensors": _safetensors_size(model)}
        notes.append(
            "No stored model files were given: the size is that of the weights serialised as "
            "safetensors in memory."
        )

    rows = np.asarray(data.x, dtype=np.float32)
    if len(rows) == 0:  # nothing to evaluate on, but zeros of the right shape time the same
        rows = np.zeros((1, *rows.shape[1:]), dtype=np.float32)
        notes.append("There are no evaluation rows: the model was timed on rows of zeros.")
    device = torch.device(data.device)

    singles = itertools.cycle(
        [torch.as_tensor(rows[i : i + 1], device=device) for i in range(min(len(rows), 64))]
    )

    def one_row() -> None:
        model(next(singles))  # (1, input_dim) → (1, output_dim)

    latency, latency_cpu = _time_calls(one_row, config.repeats, device)
    batch = torch.as_tensor(np.resize(rows, (config.batch, *rows.shape[1:])), device=device)
    throughput, _ = _time_calls(lambda: model(batch), config.repeats, device)

    median_ms = float(np.median(latency)) * 1000
    p90_ms = float(np.percentile(latency, 90)) * 1000
    batch_seconds = max(float(np.median(throughput)), 1e-9)  # a clock tick, never zero
    for name, times in (("latency", latency), ("throughput", throughput)):
        if len(times) < config.repeats:
            notes.append(
                f"The {name} measurement stopped after {len(times)} of {config.repeats} calls: "
                f"it had used its {_BUDGET_SECONDS:g} s budget."
            )

    watts, source = watts_per_core(config.tdp_watts)
    joules_per_1000 = float(np.mean(latency_cpu)) * 1000 * watts
    rule = f"{watts:.3g} W per core" + ("" if source == "default" else f" ({source})")
    inference_energy = {
        "joules_per_1000": joules_per_1000,
        "wh_per_1000": joules_per_1000 / 3600,
        "method": "estimate",
        "detail": f"CPU time of single-row calls × {rule}"
        + ("; GPU energy not included" if device.type == "cuda" else ""),
    }

    training = _training(data.run_metrics, data.run_tags)
    if training is None:
        notes.append("Training time and energy were not recorded for this run.")
    threads = torch.get_num_threads()
    notes.append(
        f"Latency: {len(latency)} single-row calls after {_WARMUP} warm-up calls; throughput: "
        f"{len(throughput)} calls of {config.batch} rows; on {data.device} with {threads} "
        f"thread{'s' if threads != 1 else ''}. Timings hold for this machine only."
    )

    size = sizes.get("model.safetensors", next(iter(sizes.values())))
    summary = (
        (
            f"{model.n_trees} trees"
            if hasattr(model, "n_trees")
            else f"{_count(parameters)} parameters"
        )
        + f", {_bytes(size)}, {_number(median_ms)} ms per row"
        + (f", {_training_phrase(training)}" if training else "")
    )
    return Section(
        key="cost",
        title="Cost",
        data={
            "parameters": parameters,
            "trainable": trainable,
            "size_bytes": sizes,
            "latency_ms": {"batch_1": {"median": median_ms, "p90": p90_ms}},
            "latency_calls": len(latency),
            "throughput": {
                "batch": config.batch,
                "rows_per_second": config.batch / batch_seconds,
                "batch_ms": batch_seconds * 1000,
                "calls": len(throughput),
            },
            "inference_energy": inference_energy,
            "training": training,
            "device": data.device,
            "threads": threads,
        },
        summary=summary,
        notes=notes,
    )


def _safetensors_size(model: torch.nn.Module) -> int:
    """Bytes of the weights saved as danlu saves them (safetensors of the state dict)."""
    from safetensors.torch import save

    weights = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return len(save(weights))


def _time_calls(
    call: Callable[[], Any], repeats: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Seconds and CPU seconds of each of ``repeats`` timed calls (fewer once over budget)."""
    import numpy as np
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    walls: list[float] = []
    cpus: list[float] = []
    with torch.inference_mode():
        for _ in range(_WARMUP):
            call()
        sync()
        started = time.perf_counter()
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            call()
            sync()  # CUDA calls return before the GPU is done
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
            if len(walls) >= _MIN_CALLS and time.perf_counter() - started > _BUDGET_SECONDS:
                break
    return np.array(walls), np.array(cpus)


def _training(metrics: dict[str, float], tags: dict[str, str]) -> dict[str, Any] | None:
    """The run's training time and energy, or None when it recorded neither."""
    if "train_seconds" not in metrics and "energy_joules" not in metrics:
        return None
    joules = metrics.get("energy_joules")
    return {
        "seconds": metrics.get("train_seconds"),
        "cpu_seconds": metrics.get("train_cpu_seconds"),
        "energy_joules": joules,
        "energy_wh": None if joules is None else joules / 3600,
        "method": tags.get("energy_method"),
        "detail": tags.get("energy_detail"),
    }


def _number(x: float, digits: int = 2) -> str:
    """``digits`` significant digits, whole numbers from there on: 0.21, 3.4, 47, 190."""
    if x >= 10 ** (digits - 1):
        return f"{x:.0f}"
    return f"{float(f'{x:.{digits}g}'):g}" if x > 0 else "0"


def _count(n: float) -> str:
    """47k, 1.3M: parameter counts as people say them."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return _number(n / scale) + suffix
    return f"{n:.0f}"


def _bytes(n: float) -> str:
    """850 B, 190 KB, 1.3 MB (decimal units)."""
    for scale, suffix in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if n >= scale:
            return f"{_number(n / scale)} {suffix}"
    return f"{n:.0f} B"


def _training_phrase(training: dict[str, Any]) -> str:
    """``12.3 Wh to train (estimate)`` (joules below one watt-hour), else the training time."""
    joules = training.get("energy_joules")
    if joules is None or not math.isfinite(joules):
        return f"{_duration(training.get('seconds') or 0.0)} to train"
    if joules >= 3.6e6:
        amount = f"{_number(joules / 3.6e6, 3)} kWh"
    elif joules >= 3600:
        amount = f"{_number(joules / 3600, 3)} Wh"
    else:
        amount = f"{_number(joules, 3)} J"
    method = training.get("method")
    return f"{amount} to train" + (f" ({_METHODS.get(method, method)})" if method else "")


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{_number(seconds / 3600)} h"
    if seconds >= 60:
        return f"{_number(seconds / 60)} min"
    return f"{_number(seconds)} s"
