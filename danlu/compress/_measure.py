"""Measuring a model where it will run: the headline test metric (with its bootstrap interval and
the paired interval of its drop against the model it compresses), the size of the file that
serves it, and the median latency at batch 1 and throughput at batch 64 on ONNX Runtime and on
torch (one thread each, as ``danlu serve`` runs by default).

The same function measures the fp32 reference and every variant, in the same process, one
after the other, so their ratios are fair on a shared, noisy machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from danlu.logging import get_logger

if TYPE_CHECKING:
    import torch

    from danlu.data import FeatureSchema
    from danlu.tasks import Task

__all__ = ["Measurement", "measure", "onnx_runner", "torch_runner"]

log = get_logger(__name__)

LATENCY_BATCH = 1
THROUGHPUT_BATCH = 64

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class Measurement:
    """What one model measured (None: not measured on that runtime).

    Attributes:
        metric: the task's headline metric; ``value`` on the test split, ``low``/``high`` its
            bootstrap interval.
        drop: how much worse than the reference (positive: worse; in the metric's units), with
            ``drop_low``/``drop_high`` its paired bootstrap interval (the same resampled rows
            for both models).
        agreement: the share of test rows whose prediction equals the reference's.
        size_bytes: the file that serves it (``model.onnx`` on ONNX Runtime, the safetensors
            weights on torch).
        parameters: the network's parameters (nonzero ones in ``nonzero_parameters``).
        onnx_latency_ms / torch_latency_ms: median time of one row (batch 1).
        onnx_rows_per_s / torch_rows_per_s: median throughput at batch 64.
    """

    metric: str
    value: float
    low: float | None = None
    high: float | None = None
    drop: float = 0.0
    drop_low: float | None = None
    drop_high: float | None = None
    agreement: float = 1.0
    size_bytes: int | None = None
    parameters: int | None = None
    nonzero_parameters: int | None = None
    onnx_latency_ms: float | None = None
    onnx_rows_per_s: float | None = None
    torch_latency_ms: float | None = None
    torch_rows_per_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def latency_ms(self, runtime: str) -> float | None:
        return self.onnx_latency_ms if runtime == "onnx" else self.torch_latency_ms

    def rows_per_s(self, runtime: str) -> float | None:
        return self.onnx_rows_per_s if runtime == "onnx" else self.torch_rows_per_s


def onnx_runner(onnx_bytes: bytes, threads: int = 1) -> Runner:
    """Raw outputs of an ONNX graph on ONNX Runtime (CPU, ``threads`` intra-op threads)."""
    from danlu.export._onnx import onnx_outputs

    return onnx_outputs(onnx_bytes, threads)


def torch_runner(model: torch.nn.Module, threads: int = 1) -> Runner:
    """Raw outputs of a torch model in eval mode under ``inference_mode`` (``threads``)."""
    import torch

    model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            return (
                model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).float().numpy()
            )

    return run


def outputs_of(run: Runner, x: np.ndarray, chunk: int = 256) -> np.ndarray:
    """``run`` over ``x`` in chunks (bounded memory for text models)."""
    parts = [run(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)


def timed(run: Runner, x: np.ndarray, batch: int, repeats: int) -> float:
    """Median seconds of ``run`` on a batch of ``batch`` rows taken from ``x`` (tiled when
    ``x`` has fewer), after two warm-up calls."""
    rows = np.resize(x, (batch, *x.shape[1:])).astype(np.float32) if len(x) < batch else x[:batch]
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    for _ in range(2):
        run(rows)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(rows)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _headline(task: Task, schema: FeatureSchema) -> Callable[[np.ndarray, np.ndarray], float]:
    def metric(outputs: np.ndarray, y: np.ndarray) -> float:
        return task.metric(task.headline, outputs, y, schema)

    return metric


def _predictions(task: Task, schema: FeatureSchema, outputs: np.ndarray) -> np.ndarray:
    predicted = task.predict(outputs, schema)["prediction"]
    return np.asarray(predicted).reshape(len(outputs), -1)


def measure(
    task: Task,
    schema: FeatureSchema,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    onnx: Runner | None,
    torch: Runner | None,
    serving: str,
    reference: np.ndarray | None = None,
    size_bytes: int | None = None,
    parameters: tuple[int, int] | None = None,
    repeats: int = 20,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[Measurement, np.ndarray]:
    """Measure one model; returns the measurement and its raw test outputs.

    Args:
        onnx / torch: the model on each runtime (None: it does not run there).
        serving: the runtime whose outputs are evaluated (``onnx`` or ``torch``).
        reference: the raw test outputs of the model it compresses (the drop and agreement are
            against them); None for the reference itself.
        parameters: (all, nonzero) parameter counts.
    """
    from danlu.evaluate import bootstrap_ci

    run = onnx if serving == "onnx" else torch
    if run is None:
        raise ValueError(f"the model has no {serving} runtime to evaluate")
    outputs = outputs_of(run, x_test)
    metric = _headline(task, schema)
    sign = -1.0 if task.headline_mode == "min" else 1.0  # drop > 0: worse
    result = Measurement(metric=task.headline, value=metric(outputs, y_test))
    if resamples >= 10 and len(y_test) >= 2:
        with np.errstate(all="ignore"):
            interval = bootstrap_ci(metric, outputs, y_test, resamples=resamples, seed=seed)
        result.low, result.high = interval.low, interval.high
    if reference is not None:
        base = metric(reference, y_test)
        result.drop = sign * (base - result.value)
        result.agreement = float(
            np.mean(
                np.all(
                    _predictions(task, schema, outputs) == _predictions(task, schema, reference),
                    axis=1,
                )
            )
        )
        if resamples >= 10 and len(y_test) >= 2:

            def drop(out: np.ndarray, ref: np.ndarray, y: np.ndarray) -> float:
                return sign * (metric(ref, y) - metric(out, y))

            with np.errstate(all="ignore"):
                paired = bootstrap_ci(
                    drop, outputs, reference, y_test, resamples=resamples, seed=seed
                )
            result.drop_low, result.drop_high = paired.low, paired.high
    result.size_bytes = size_bytes
    if parameters is not None:
        result.parameters, result.nonzero_parameters = parameters
    for name, runner in (("onnx", onnx), ("torch", torch)):
        if runner is None:
            continue
        try:
            latency = timed(runner, x_test, LATENCY_BATCH, repeats)
            batch = timed(runner, x_test, THROUGHPUT_BATCH, repeats)
        except Exception as exc:  # a runtime that cannot time this model is left unmeasured
            log.warning("Timing on %s failed: %s", name, exc)
            continue
        setattr(result, f"{name}_latency_ms", 1000 * latency)
        setattr(result, f"{name}_rows_per_s", THROUGHPUT_BATCH / batch)
    return result, outputs


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all, nonzero) parameters; a torch-quantized Linear counts its int8 weight and bias."""
    import torch

    total = nonzero = 0
    seen: set[int] = set()
    for tensor in list(model.parameters()) + _packed_weights(model):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        values = tensor.int_repr() if tensor.is_quantized else tensor.detach()
        total += values.numel()
        nonzero += int(torch.count_nonzero(values)) if not tensor.is_quantized else values.numel()
    return total, nonzero


def _packed_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """The weights and biases inside torch's dynamically quantized Linear layers."""
    found: list[torch.Tensor] = []
    for module in model.modules():
        weight: Any = getattr(module, "weight", None)
        if callable(weight) and hasattr(module, "_packed_params"):
            found.append(weight())
            bias: Any = getattr(module, "bias", None)
            if callable(bias) and (value := bias()) is not None:
                found.append(value)
    return found
