"""The compression stage: make every variant the recipe asks for, measure each one (and the fp32
model it compresses) on the test split and on the runtime that will serve it, keep the variants
within ``max_metric_drop``, register them as versions of the model, give the best one by the
recipe's objective an alias, and write the trade-off (a table and two plots) into the run and
the parent's trust report.

The methods (``_quantize``, ``_prune``, ``_distill``, ``_lowrank``) only make variants; every
decision is taken here, for all of them alike.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from danlu.compress._measure import (
    Measurement,
    count_parameters,
    measure,
    onnx_runner,
    torch_runner,
)
from danlu.compress._types import CompressJob, Variant
from danlu.errors import DanluError
from danlu.logging import get_logger
from danlu.store._crypt import read_bytes

if TYPE_CHECKING:
    from danlu.evaluate import Section
    from danlu.store import ModelVersion

__all__ = ["CompressResult", "VariantResult", "compress_model", "compression_section"]

log = get_logger(__name__)

COMPRESSION_FILE = "compression.json"
_PARITY_ROWS = 256
REFERENCE = "fp32"


@dataclass
class VariantResult:
    """One variant with its measurement and what became of it.

    ``status``: ``passed`` (within the gate; registered when a model name is known), ``dropped``
    (measured, outside the gate), ``skipped`` or ``failed`` (not measured; ``reason`` says why).
    """

    variant: Variant
    measurement: Measurement | None = None
    status: str = "failed"
    reason: str | None = None
    version: str | None = None  # NAME:VERSION once registered
    onnx: bytes | None = None  # the graph it is served with (ONNX Runtime variants)
    weights: bytes | None = None

    @property
    def name(self) -> str:
        return self.variant.name

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def row(self) -> dict[str, Any]:
        m = self.measurement.to_dict() if self.measurement else {}
        return {
            "variant": self.name,
            "method": self.variant.method,
            "runtime": self.variant.runtime,
            "status": self.status,
            "version": self.version,
            "reason": self.reason,
            **m,
            "details": self.variant.details,
            "run_id": self.variant.run_id,
        }


@dataclass
class CompressResult:
    """What :func:`compress_model` did."""

    reference: Measurement
    reference_runtime: str
    variants: list[VariantResult] = field(default_factory=list)
    max_metric_drop: float = 0.0
    objective: str = "latency"
    best: str | None = None  # the variant that got the alias
    alias: str | None = None
    model_name: str | None = None
    parent: str | None = None  # NAME:VERSION of the compressed model, or run:<id>

    @property
    def passed(self) -> list[VariantResult]:
        return [v for v in self.variants if v.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "danlu.compression",
            "parent": self.parent,
            "model": self.model_name,
            "max_metric_drop": self.max_metric_drop,
            "objective": self.objective,
            "best": self.best,
            "alias": self.alias,
            "reference": {
                "variant": REFERENCE,
                "runtime": self.reference_runtime,
                **self.reference.to_dict(),
            },
            "variants": [v.row() for v in self.variants],
        }

    @property
    def summary(self) -> str:
        made = [v for v in self.variants if v.measurement is not None]
        if not made:
            return "no compressed variant could be made"
        if not self.passed:
            return (
                f"none of {len(made)} compressed variant(s) stayed within the accuracy gate "
                f"(drop ≤ {self.max_metric_drop:g}); nothing was registered"
            )
        text = f"{len(self.passed)} of {len(made)} compressed variant(s) passed the accuracy gate"
        if self.best is not None:
            best = next(v for v in self.variants if v.name == self.best)
            gain = _gain(self.objective, self.reference, self.reference_runtime, best)
            text += f"; the best by {self.objective} is {self.best} ({gain})"
        else:
            text += f", none better than the fp32 model by {self.objective}"
        return text


def _objective_value(objective: str, m: Measurement, runtime: str) -> float | None:
    if objective == "size":
        return float(m.size_bytes) if m.size_bytes else None
    if objective == "throughput":
        rate = m.rows_per_s(runtime)
        return -rate if rate else None  # smaller is better for every objective value
    return m.latency_ms(runtime)


def _gain(objective: str, reference: Measurement, ref_runtime: str, v: VariantResult) -> str:
    assert v.measurement is not None
    ref = _objective_value(objective, reference, ref_runtime)
    got = _objective_value(objective, v.measurement, v.variant.runtime)
    if not ref or not got:
        return "not measured"
    if objective == "size":
        return f"{got / ref:.2f}× the size"
    return f"{ref / got:.2f}× " + ("faster" if objective == "latency" else "the throughput")


def _methods() -> dict[str, Callable[[CompressJob], list[Variant]]]:
    """The recipe key of each method → its maker (imported when used)."""

    def quantize(job: CompressJob) -> list[Variant]:
        from danlu.compress._quantize import quantize_variants

        return quantize_variants(job)

    def prune(job: CompressJob) -> list[Variant]:
        from danlu.compress._prune import prune_variants

        return prune_variants(job)

    def distill(job: CompressJob) -> list[Variant]:
        from danlu.compress._distill import distill_variants

        return distill_variants(job)

    def low_rank(job: CompressJob) -> list[Variant]:
        from danlu.compress._lowrank import lowrank_variants

        return lowrank_variants(job)

    return {"quantize": quantize, "prune": prune, "distill": distill, "low_rank": low_rank}


def make_variants(job: CompressJob) -> list[Variant]:
    """Every variant the recipe's ``compress:`` block asks for; a method that raises gives one
    failed variant, and the others still run."""
    made: list[Variant] = []
    for key, make in _methods().items():
        if getattr(job.config, key) is None:
            continue
        try:
            made.extend(make(job))
        except DanluError as exc:
            made.append(Variant.failed(key, key, str(exc)))
        except Exception as exc:  # one broken method must not cost the others
            log.exception("Compression method %s failed", key)
            made.append(Variant.failed(key, key, f"{type(exc).__name__}: {exc}"))
    return made


def _sample(job: CompressJob) -> np.ndarray:
    for x in (job.data.x_test, job.data.x_val, job.data.x_train):
        if len(x):
            return np.asarray(x[:_PARITY_ROWS], dtype=np.float32)
    raise DanluError("The data has no rows to export and check the compressed models on.")


def _state_bytes(model: Any, card: dict[str, Any]) -> bytes:
    from safetensors.torch import save as st_save

    from danlu.models._base_weights import stored_state

    return st_save(stored_state(model, str(card.get("type")), card.get("options", {})))


def _prepare(job: CompressJob, variant: Variant, parent_weights: bytes) -> VariantResult:
    """The variant's served files (ONNX graph, weights), its ONNX parity check when it is an
    fp32 network served by ONNX Runtime; a failure marks it failed with the reason."""
    from danlu.export import export_onnx, parity_check

    result = VariantResult(variant, status=variant.status, reason=variant.reason)
    if variant.status != "ok":
        return result
    if variant.model is None:
        result.status, result.reason = "failed", "the method returned no model"
        return result
    if variant.weights is not None:
        result.weights = variant.weights
    elif variant.model is job.model:
        result.weights = parent_weights
    else:
        result.weights = _state_bytes(variant.model, {**job.card, **variant.card})
    if variant.runtime == "onnx":
        if variant.onnx is not None:
            result.onnx = variant.onnx
        else:
            sample = _sample(job)
            try:
                onnx_bytes = export_onnx(variant.model, job.data.schema.input_dim, sample)
                parity = parity_check(variant.model, onnx_bytes, sample)
            except Exception as exc:
                result.status = "failed"
                result.reason = f"its ONNX export failed: {type(exc).__name__}: {exc}"
                return result
            if not parity["passed"]:
                result.status = "failed"
                result.reason = (
                    "its ONNX export disagrees with torch (never served): max |onnx − torch| = "
                    f"{parity['max_abs_diff']:.3g} > {parity['atol']:g} on {parity['rows']} rows, "
                    f"argmax agrees on {100 * parity['argmax_agreement']:.1f}%"
                )
                return result
            result.onnx = onnx_bytes
    result.status = "measured"
    return result


def compress_model(
    job: CompressJob,
    *,
    parent: ModelVersion | None = None,
    model_name: str | None = None,
    actor: str | None = None,
) -> CompressResult:
    """Make, measure, gate and register the variants of ``job.model``.

    Args:
        job: the trained model, its data and the ``compress:`` block.
        parent: the registered version of ``job.model``, when there is one (the variants'
            ``parent`` tag; its trust report gets the compression section).
        model_name: the registered model the passing variants become versions of (None:
            measured and reported, not registered).
        actor: who registers, for the audit log.

    Returns:
        The measurements and what became of each variant; also written to the run as
        ``compression.json`` and into its trust report.
    """
    from danlu.export import export_onnx

    config, data, task = job.config, job.data, job.task
    schema = data.schema
    x_test = np.asarray(data.x_test, dtype=np.float32)
    y_test = np.asarray(data.y_test)
    parent_weights = read_bytes(job.store.artifact_path(job.run_id, "model.safetensors"))
    try:
        reference_onnx: bytes | None = export_onnx(job.model, schema.input_dim, _sample(job))
    except Exception as exc:
        log.warning("The fp32 model cannot be exported to ONNX (%s); measured on torch only.", exc)
        reference_onnx = None
    job.onnx = reference_onnx  # the int8 methods quantize this graph, not a second export
    reference_runtime = "onnx" if reference_onnx is not None else "torch"
    common: dict[str, Any] = {"repeats": config.repeats, "resamples": config.bootstrap}
    reference, reference_outputs = measure(
        task,
        schema,
        x_test,
        y_test,
        onnx=onnx_runner(reference_onnx) if reference_onnx is not None else None,
        torch=torch_runner(job.model),
        serving=reference_runtime,
        size_bytes=len(reference_onnx) if reference_onnx is not None else len(parent_weights),
        parameters=count_parameters(job.model),
        **common,
    )
    result = CompressResult(
        reference=reference,
        reference_runtime=reference_runtime,
        max_metric_drop=config.max_metric_drop,
        objective=config.objective,
        model_name=model_name,
        parent=parent.ref if parent is not None else f"run:{job.run_id}",
    )
    for variant in make_variants(job):
        prepared = _prepare(job, variant, parent_weights)
        result.variants.append(prepared)
        if prepared.status != "measured":
            continue
        assert variant.model is not None
        # an int8 graph is not the torch model beside it (that is the fp32 parent)
        torch_model = variant.model if variant.onnx is None else None
        try:
            prepared.measurement, _ = measure(
                task,
                schema,
                x_test,
                y_test,
                onnx=onnx_runner(prepared.onnx) if prepared.onnx is not None else None,
                torch=torch_runner(torch_model) if torch_model is not None else None,
                serving=variant.runtime,
                reference=reference_outputs,
                size_bytes=len(prepared.onnx)
                if variant.runtime == "onnx" and prepared.onnx is not None
                else len(prepared.weights or b""),
                parameters=count_parameters(torch_model or variant.model),
                **common,
            )
        except Exception as exc:  # ONNX Runtime refusing an int8 graph...
            log.warning("Variant %s cannot be measured: %s", variant.name, exc)
            prepared.status = "failed"
            prepared.reason = f"it cannot be run: {type(exc).__name__}: {exc}"
            continue
        drop = prepared.measurement.drop
        if drop <= config.max_metric_drop + 1e-12:
            prepared.status = "passed"
        else:
            prepared.status = "dropped"
            prepared.reason = (
                f"its {task.headline} drops by {_amount(task, drop)}, more than "
                f"max_metric_drop {config.max_metric_drop:g}"
                + (f" ({_amount(task, config.max_metric_drop)})" if task.headline_percent else "")
            )
    _choose_best(result)
    if model_name is not None:
        for variant_result in result.passed:
            variant_result.version = _register(job, variant_result, result, model_name, actor)
        if result.best is not None and config.alias is not None:
            best = next(v for v in result.variants if v.name == result.best)
            if best.version is not None:
                name, version = best.version.split(":")
                job.store.set_alias(name, config.alias, int(version), actor=actor or "danlu")
                result.alias = config.alias
    _log_summary(result)
    return result


def _amount(task: Any, value: float) -> str:
    if task.headline_percent:
        return f"{100 * value:.2f} points"
    return f"{value:.4g}"


def _choose_best(result: CompressResult) -> None:
    """The passing variant best by the objective, when it beats the fp32 model on it."""
    ref = _objective_value(result.objective, result.reference, result.reference_runtime)
    scored = []
    for v in result.passed:
        assert v.measurement is not None
        value = _objective_value(result.objective, v.measurement, v.variant.runtime)
        if value is not None and (ref is None or value < ref):
            scored.append((value, v.name))
    result.best = min(scored)[1] if scored else None


def _register(
    job: CompressJob,
    variant: VariantResult,
    result: CompressResult,
    name: str,
    actor: str | None,
) -> str | None:
    """The variant as the next version of ``name``: its card, weights, the parent's
    preprocessing (and calibration, for the same network), its ONNX graph or an fp32 export,
    its own report and ``compression.json``. A failure is logged; the others still register."""
    from danlu.store import current_actor

    store, v = job.store, variant.variant
    actor = actor or current_actor()
    card = {**job.card, **v.card}
    child_card = store.artifact_path(v.run_id, "model.json") if v.run_id else None
    if v.method == "distill" and child_card is not None and child_card.is_file():
        card = json.loads(read_bytes(child_card))  # the student's own card (no parent keys)
    card["compression"] = {"variant": v.name, "parent": result.parent}
    files: dict[str, bytes] = {
        "model.json": json.dumps(card, indent=1).encode(),
        "model.safetensors": variant.weights or b"",
        "preprocessing.json": read_bytes(store.artifact_path(job.run_id, "preprocessing.json")),
    }
    optional = ["drift_reference.json"]
    if v.keep_calibration:
        optional += ["calibration.json", "decoding.json"]
    for file in optional:
        path = store.artifact_path(job.run_id, file)
        if path.is_file():
            files[file] = read_bytes(path)
    assert variant.measurement is not None
    report = _variant_report(job, variant, result)
    files["report.json"] = report.to_json().encode()
    files["report.html"] = report.to_html().encode()
    files[COMPRESSION_FILE] = json.dumps(
        {**result.to_dict(), "this": variant.row()}, indent=1, allow_nan=False
    ).encode()
    tags = {
        "compression": v.name,
        "parent": result.parent or "",
        "recipe": job.recipe.name,
        "model.type": str(card.get("type")),
        "runtime": v.runtime,
    }
    headline = variant.measurement.metric
    try:
        from danlu.export._register import _signature

        mv = store.create_model_version(
            name,
            run_id=v.run_id or job.run_id,
            files=files,
            signature=_signature(card, job.data.schema, job.task),
            metrics={f"test_{headline}": variant.measurement.value},
            tags=tags,
            actor=actor,
        )
        _attach_onnx(job, mv, variant, actor)
    except DanluError as exc:
        log.warning("Variant %s passed but could not be registered: %s", v.name, exc)
        variant.reason = f"passed, but not registered: {exc}"
        return None
    log.info("Registered %s as %s (%s).", v.name, mv.ref, v.runtime)
    return mv.ref


def _attach_onnx(job: CompressJob, mv: ModelVersion, variant: VariantResult, actor: str) -> None:
    """``model.onnx`` and ``export.json``: the graph measured (an int8 graph is served as made,
    its agreement with the fp32 model recorded in place of the fp32 parity check), or, for a
    variant served by torch, an export record that says so."""
    import hashlib
    from datetime import UTC, datetime

    from danlu.export._onnx import EXPORT_FILE, ONNX_FILE, _opset

    v, m = variant.variant, variant.measurement
    assert m is not None
    export: dict[str, Any]
    if variant.onnx is None:
        export = {
            "format": "onnx",
            "status": "skipped",
            "runtime": "torch",
            "file": None,
            "compression": v.name,
            "error": f"{v.name} is served by torch (its int8 layers are torch's own)",
            "created_at": datetime.now(UTC).isoformat(),
        }
        job.store.attach_model_files(
            mv.name, mv.version, {EXPORT_FILE: json.dumps(export, indent=2).encode()}, actor=actor
        )
        return
    input_dim = job.data.schema.input_dim
    export = {
        "format": "onnx",
        "status": "ok",
        "file": ONNX_FILE,
        "opset": _opset(variant.onnx),
        "exporter": "danlu compress",
        "compression": v.name,
        "parity": {
            "rows": len(job.data.y_test),
            "agreement_with_fp32": m.agreement,
            "metric_drop": m.drop,
            "checked": "the compressed graph's test metric against the fp32 model's",
        },
        "input": {"name": "input", "dtype": "float32", "shape": [None, input_dim]},
        "output": {"name": "output", "dtype": "float32", "shape": [None, None]},
        "size_bytes": len(variant.onnx),
        "sha256": hashlib.sha256(variant.onnx).hexdigest(),
        "error": None,
        "created_at": datetime.now(UTC).isoformat(),
    }
    job.store.attach_model_files(
        mv.name,
        mv.version,
        {ONNX_FILE: variant.onnx, EXPORT_FILE: json.dumps(export, indent=2).encode()},
        actor=actor,
    )


def _variant_report(job: CompressJob, variant: VariantResult, result: CompressResult) -> Any:
    """A compressed version's own trust report: its test metric with the interval, and the
    compression section (its row against the fp32 model and the other variants)."""
    from danlu.evaluate import Report, Section

    m = variant.measurement
    assert m is not None
    interval = {m.metric: [m.low, m.high]} if m.low is not None else {}
    metrics = Section(
        key="metrics",
        title="Test metrics",
        data={"values": {m.metric: m.value}, "intervals": interval, "rows": len(job.data.y_test)},
        summary=f"{job.task.describe(m.value)} on the test split ({variant.variant.runtime})",
        notes=[
            f"Measured on the runtime that serves it ({variant.variant.runtime}); "
            f"{100 * m.agreement:.1f}% of the test rows get the fp32 model's prediction."
        ],
    )
    section = compression_section(result, job.task)
    subject = {
        "model": variant.variant.name,
        "compression": variant.variant.name,
        "parent": result.parent,
        "run_id": variant.variant.run_id or job.run_id,
        "recipe": job.recipe.name,
        "task": job.task.name,
        "rows": len(job.data.y_test),
    }
    return Report(subject=subject, sections=[metrics, section])


def compression_section(result: CompressResult, task: Any) -> Section:
    """The trade-off: a table of the fp32 model and every variant, and plots of the headline
    metric against latency and against size."""
    from danlu.evaluate import Section

    rows = [
        _table_row(
            REFERENCE, "—", result.reference_runtime, "reference", result.reference, task, None
        )
    ]
    for v in result.variants:
        rows.append(
            _table_row(
                v.name, v.variant.method, v.variant.runtime, v.status, v.measurement, task, v
            )
        )
    notes = [
        f"Gate: a variant passes when its {task.headline} drops by at most "
        f"{result.max_metric_drop:g} against the fp32 model on the same test rows; the interval "
        "of the drop is a paired bootstrap (the same resampled rows for both).",
        "Latency: median of one row (batch 1); throughput: rows/s at batch 64; one thread, "
        "as danlu serve runs by default.",
    ]
    notes += [f"{v.name}: {v.reason}" for v in result.variants if v.reason]
    figures = _figures(result, task)
    return Section(
        key="compression",
        title="Compression",
        data={
            "max_metric_drop": result.max_metric_drop,
            "objective": result.objective,
            "best": result.best,
            "alias": result.alias,
            "variants": rows,
        },
        summary=result.summary,
        notes=notes,
        figures=figures,
    )


def _table_row(
    name: str,
    method: str,
    runtime: str,
    status: str,
    m: Measurement | None,
    task: Any,
    v: VariantResult | None,
) -> dict[str, Any]:
    row: dict[str, Any] = {"variant": name, "method": method, "runtime": runtime, "status": status}
    if m is not None:
        row[task.headline] = round(m.value, 4)
        if m.low is not None:
            row["interval"] = f"[{m.low:.4g}, {m.high:.4g}]"
        if v is not None:
            row["drop"] = round(m.drop, 4)
            row["agreement"] = round(m.agreement, 4)
        row["size_kb"] = round(m.size_bytes / 1024, 1) if m.size_bytes else None
        row["parameters"] = m.parameters
        row["latency_ms"] = _round(m.latency_ms(runtime))
        row["rows_per_s_at_64"] = _round(m.rows_per_s(runtime), 0)
    if v is not None and v.version:
        row["version"] = v.version
    return row


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def _figures(result: CompressResult, task: Any) -> dict[str, str]:
    """Metric vs latency and metric vs size, one point per measured model."""
    from danlu.evaluate._plots import figure, svg

    points = [(REFERENCE, result.reference_runtime, result.reference, "reference")]
    points += [
        (v.name, v.variant.runtime, v.measurement, v.status)
        for v in result.variants
        if v.measurement is not None
    ]
    colours = {"reference": "#1f77b4", "passed": "#2ca02c", "dropped": "#d62728"}
    figures: dict[str, str] = {}
    for caption, x_of, label in (
        (
            f"{task.headline} against latency at batch 1 (ms, the serving runtime)",
            lambda m, rt: m.latency_ms(rt),
            "latency, ms (batch 1)",
        ),
        (
            f"{task.headline} against size on disk (KB)",
            lambda m, rt: (m.size_bytes or 0) / 1024 or None,
            "size, KB",
        ),
    ):
        drawn = [(n, x_of(m, rt), m.value, s) for n, rt, m, s in points if x_of(m, rt)]
        if len(drawn) < 2:
            continue
        fig, ax = figure()
        for name, x, y, status in drawn:
            ax.scatter([x], [y], color=colours.get(status, "#7f7f7f"), zorder=3)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel(label)
        ax.set_ylabel(task.headline)
        ax.grid(alpha=0.3)
        figures[caption] = svg(fig)
    return figures


def _log_summary(result: CompressResult) -> None:
    log.info("Compression: %s.", result.summary)
