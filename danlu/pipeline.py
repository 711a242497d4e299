"""Runs a recipe's stages in order: prepare data → train → test metrics
(``danlu.train.run_training``) → the trust report when the recipe has ``evaluate:``
(``danlu.evaluate``) → register. ``danlu tune`` searches the recipe's ``tune:`` block
(``danlu.tune``). Each later stage (compression, export) chains on here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from danlu.config import Recipe
from danlu.types import StrPath

if TYPE_CHECKING:
    from danlu.store import Store
    from danlu.train._callbacks import Callback
    from danlu.train._run import Result, check_recipe, register_run

__all__ = [
    "Result",
    "check_recipe",
    "export_registered",
    "recipe_json_schema",
    "register_run",
    "run",
]


def __getattr__(name: str) -> Any:
    """``Result``, ``check_recipe`` and ``register_run`` live in ``danlu.train`` (loaded lazily:
    importing this module must not import torch)."""
    if name in {"Result", "check_recipe", "register_run"}:
        from danlu.train import _run

        return getattr(_run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run(
    recipe: StrPath | Mapping[str, Any] | Recipe,
    *,
    overrides: Iterable[str] = (),
    callbacks: Sequence[Callback] = (),
    home: StrPath | None = None,
    resume: StrPath | None = None,
    store: Store | None = None,
    on_section: Callable[[str], None] | None = None,
) -> Result:
    """Run a recipe end to end: train, make the trust report (``evaluate:``), register.

    The report (``report.html``, ``report.json``) is stored with the run and, when the recipe
    registers the model, with the new version; a temperature fitted by
    ``evaluate.calibration.temperature`` is saved with the model (``calibration.json``).
    Arguments are those of :func:`danlu.train.run_training`; ``on_section`` is called with each
    report section's key as it starts.

    Example:
        >>> import danlu
        >>> result = danlu.run("examples/breast_cancer_mlp.yaml")  # doctest: +SKIP
        >>> result.report.summary  # doctest: +SKIP
    """
    from danlu.config import load_recipe
    from danlu.store import SqlStore
    from danlu.train._run import check_recipe, register_run, run_training

    recipe = load_recipe(recipe, overrides)
    if recipe.evaluate is None:
        store = store or SqlStore(home=home)
        result = run_training(recipe, callbacks=callbacks, resume=resume, store=store)
        if result.registered is not None:
            export_registered(store, result.registered.ref)
        return result

    from danlu.data import prepare_data
    from danlu.errors import ConfigError
    from danlu.evaluate import EvalData, build_report, check_fairness_group, save_report

    check_recipe(recipe)
    if recipe.data.stream is not None:
        raise ConfigError(
            "evaluate: needs the test rows in memory, and data.stream reads them in chunks. "
            "Remove the evaluate block and run `danlu evaluate RUN --data FILE` on a sample."
        )
    prepared = prepare_data(recipe.data, recipe.task)
    check_fairness_group(recipe.evaluate, prepared.test_frame)  # before any training
    store = store or SqlStore(home=home)
    result = run_training(
        recipe,
        callbacks=callbacks,
        resume=resume,
        store=store,
        prepared=prepared,
        register_model=False,
    )
    run_record = store.get_run(result.run_id)
    weights = store.artifact_path(result.run_id, "model.safetensors")
    data = EvalData.from_prepared(
        result.model,
        result.task,
        prepared,
        files={"model.safetensors": weights.stat().st_size},
        run_metrics=dict(run_record.metrics),
        run_tags=dict(run_record.tags),
    )
    subject = {
        "run_id": result.run_id,
        "run_name": run_record.name,
        "recipe": recipe.name,
        "task": recipe.task,
        "model_type": recipe.model.type,
        "data": f"test split of {recipe.data.source}",
        "rows": len(prepared.y_test),
    }
    report = build_report(
        data,
        recipe.evaluate,
        subject=subject,
        recipe=recipe,
        store=store,
        run_id=result.run_id,
        on_section=on_section,
        callbacks=callbacks,
    )
    save_report(
        store,
        report,
        run_id=result.run_id,
        temperature=data.temperature if data.temperature != 1.0 else None,
    )
    _log_report_metrics(store, result.run_id, report)
    result.report, result.temperature = report, data.temperature
    if recipe.register is not None:
        result.registered = register_run(
            store, result.run_id, recipe.register.name, recipe.register.alias
        )
        export_registered(store, result.registered.ref, prepared.x_test[:256])
    return result


def export_registered(store: Store, ref: str, sample: Any = None) -> Any:
    """Export a newly registered version to ONNX with its parity check (``danlu export``).

    Registration never fails because of the export: a failed parity check is recorded on the
    version (``export.json``, never served) and logged; without the ``[serve]`` extra the export
    is skipped with a warning. Returns the :class:`~danlu.export.ExportResult`, or None.
    """
    from danlu.errors import DanluError
    from danlu.export import export_version
    from danlu.logging import get_logger

    log = get_logger(__name__)
    try:
        sample = sample if sample is not None and len(sample) else None
        exported = export_version(store, ref, sample=sample)
    except DanluError as exc:
        log.warning("Model %s is registered but not exported to ONNX: %s", ref, exc)
        return None
    if not exported.ok:
        log.warning("The ONNX export of %s failed its parity check: %s", ref, exported.error)
    return exported


def _log_report_metrics(store: Store, run_id: str, report: Any) -> None:
    """A few report figures as run metrics, so `danlu runs ls` can compare them."""
    from danlu.store import MetricPoint

    values: dict[str, float] = {}
    calibration = report.section("calibration")
    if calibration is not None and calibration.data.get("ece") is not None:
        values["ece"] = float(calibration.data["ece"])
    cv = report.section("cross_validation")
    if cv is not None:
        for name, stats in cv.data.get("metrics", {}).items():
            values[f"cv_{name}_mean"], values[f"cv_{name}_std"] = stats["mean"], stats["std"]
    if values:
        store.log_metrics(run_id, [MetricPoint(k, v) for k, v in values.items()])


def recipe_json_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe, with each registered model's options under ``model``."""
    from danlu.models import MODELS

    schema = Recipe.model_json_schema()
    variants = []
    for entry in MODELS:
        if entry.spec is None:
            continue
        spec = entry.spec.model_json_schema()
        spec["properties"] = {"type": {"const": entry.name}, **spec.get("properties", {})}
        spec["required"] = ["type", *spec.get("required", [])]
        spec.pop("title", None)
        variants.append(spec)
    variants.append(
        {
            "type": "object",
            "properties": {"type": {"type": "string", "pattern": r"^[\w.]+:\w+$"}},
            "required": ["type"],
            "description": "A user model: package.module:function.",
        }
    )
    schema["$defs"]["ModelConfig"] = {
        "description": schema["$defs"]["ModelConfig"].get("description", ""),
        "anyOf": variants,
    }
    return schema
