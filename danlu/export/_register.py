"""Register a run's model, then export it: the one step every way of registering goes through
(``danlu run``'s register stage, ``danlu tune``'s winner, ``danlu models register``).

The version keeps its own copy of the run's files (safetensors weights, model card,
preprocessing, and the calibration, fitted decoding, drift reference and trust report when the
run has them), so it survives the deletion of the run. A LoRA or frozen-base transformer's
weights are its adapter and head only; the store keeps its pretrained base once per sha256
(``store.store_base``), and every version on that base refers to it by the hash in its card. Its signature comes from the task
(:meth:`danlu.tasks.Task.signature`). The ONNX export and its parity check follow; they never fail
the registration: a failed check is recorded on the version (``export.json``, never served).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from danlu.errors import DanluError, StoreError
from danlu.logging import get_logger
from danlu.store._crypt import read_bytes

if TYPE_CHECKING:
    import numpy as np

    from danlu.data import FeatureSchema
    from danlu.store import ModelVersion, Store
    from danlu.tasks import Task

__all__ = ["register_model"]

log = get_logger(__name__)

_MODEL_FILES = ("model.safetensors", "model.json", "preprocessing.json")
_OPTIONAL_FILES = (
    "calibration.json",
    "decoding.json",
    "drift_reference.json",
    "lightgbm_model.txt",  # trees: the library's own model (text / JSON), for exact TreeSHAP
    "xgboost_model.json",
    "report.html",
    "report.json",
)


def register_model(
    store: Store,
    run_id: str,
    name: str,
    alias: str | None = None,
    *,
    actor: str | None = None,
    schema: FeatureSchema | None = None,
    task: Task | None = None,
    sample: np.ndarray | None = None,
    export: bool = True,
) -> ModelVersion:
    """Register a finished run's model as the next version of ``name``, then export it to ONNX.

    Args:
        store: the store holding the run.
        run_id: a finished run.
        name: the model's name; ``alias`` (e.g. ``staging``) is pointed at the new version.
        actor: who registers, for the audit log (default: the current user).
        schema: the model's feature schema, when the caller has it in memory (else it is read
            from the run's ``model.json``).
        task: the model's task, likewise.
        sample: preprocessed rows for the parity check (default: the run's test rows, prepared
            again from its recipe).
        export: export to ONNX after registering (``False`` leaves the version unexported).

    Returns:
        The new version, with the files the export added.

    Raises:
        StoreError: the run is not finished or lacks the model's files.

    Example:
        >>> # mv = register_model(SqlStore(), result.run_id, "digits", alias="staging")
    """
    from danlu.store import current_actor

    actor = actor or current_actor()
    run = store.get_run(run_id)
    if run.status != "finished":
        raise StoreError(f"Run '{run_id}' is {run.status}; only a finished run can be registered.")
    files = _run_files(store, run_id)
    card = json.loads(files["model.json"])
    _keep_base(store, card, run_id)
    version = store.create_model_version(
        name,
        run_id=run_id,
        files=files,
        signature=_signature(card, schema, task),
        metrics={k: v for k, v in run.metrics.items() if k.startswith("test_")},
        tags={"recipe": run.name, "model.type": str(card["type"]), **_privacy_tags(card)},
        actor=actor,
    )
    if alias is not None:
        store.set_alias(name, alias, version.version, actor=actor)
    if export:
        _export(store, version.ref, sample, actor)
    return store.get_model_version(name, version.version)


def _privacy_tags(card: dict[str, Any]) -> dict[str, str]:
    """A model trained with DP-SGD: the ε it spent and its δ, as version tags."""
    privacy = card.get("privacy")
    if not isinstance(privacy, dict):
        return {}
    return {
        "privacy.epsilon": f"{privacy['epsilon']:.4g}",
        "privacy.delta": f"{privacy['delta']:g}",
    }


def _run_files(store: Store, run_id: str) -> dict[str, bytes]:
    """The run's model files, read once to be copied into the version."""
    files: dict[str, bytes] = {}
    for file in _MODEL_FILES + _OPTIONAL_FILES:
        path = store.artifact_path(run_id, file)
        if path.is_file():
            files[file] = read_bytes(path)
        elif file in _MODEL_FILES:
            raise StoreError(
                f"Run '{run_id}' has no '{file}' artifact, so it cannot be registered."
            )
    return files


def _keep_base(store: Store, card: dict[str, Any], run_id: str) -> None:
    """A model that keeps only its adapter and head (LoRA, frozen base): the store keeps one
    copy of its pretrained base per hash, shared by every version on it (copied only when the
    store has none yet; its hash checked against the model card's, before and after copying)."""
    from danlu.models._base_weights import BASE_CARD_KEY, base_files, base_sha256, resolve_base

    if BASE_CARD_KEY not in card:
        return
    where = f"Run '{run_id}'"
    base = card[BASE_CARD_KEY]
    if isinstance(base, dict) and store.stored_base(str(base.get("sha256"))) is not None:
        return
    directory = resolve_base(card, None, where)  # StoreError when the base changed since
    want = card[BASE_CARD_KEY]["sha256"]

    def check(copy: Any) -> None:
        if (got := base_sha256(copy)) != want:
            raise StoreError(
                f"The copy of base model '{directory}' changed while it was being stored "
                f"(sha256 {got}, expected {want}); register the run again."
            )

    store.store_base(want, base_files(directory), check)


def _signature(
    card: dict[str, Any], schema: FeatureSchema | None, task: Task | None
) -> dict[str, Any]:
    """The request/response contract, from the task (the one source of truth for it)."""
    from danlu.data import FeatureSchema
    from danlu.tasks import get_task

    task = task or get_task(card["task"])
    return task.signature(schema or FeatureSchema.from_dict(card["schema"]))


def _export(store: Store, ref: str, sample: Any, actor: str) -> None:
    """ONNX with its parity check; a failure is logged and recorded, never raised."""
    from danlu.export._onnx import export_version

    try:
        sample = sample if sample is not None and len(sample) else None
        exported = export_version(store, ref, sample=sample, actor=actor)
    except DanluError as exc:  # no [serve] extra, no rows to check on...
        log.warning("Model %s is registered but not exported to ONNX: %s", ref, exc)
        return
    if not exported.ok:
        log.warning("The ONNX export of %s failed its parity check: %s", ref, exported.error)
