"""One training run of a recipe: prepare data → build task and model → train → test metrics.

Every check that can fail on bad input runs before anything is written, so a bad recipe or bad
data leaves no run behind. Everything the run produces is recorded in the store: the resolved
recipe and its hash, the data fingerprint, code version, packages and host, params, metrics per
epoch, test metrics, artifacts (weights, preprocessing, summary, checkpoint).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from danlu.config import (
    ConfigIssue,
    Recipe,
    load_recipe,
    raise_issues,
    recipe_to_dict,
    recipe_to_yaml,
)
from danlu.errors import ConfigError
from danlu.logging import get_logger
from danlu.types import StrPath

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

    from danlu.data import FeatureSchema, PreparedData, Preprocessor
    from danlu.store import ModelVersion, Store, Tracker
    from danlu.tasks import Task
    from danlu.train._callbacks import Callback

__all__ = ["Result", "check_recipe", "register_run", "run_training"]

log = get_logger(__name__)

_RESUMABLE_KEYS = {"train.epochs"}  # keys a resumed run may change
_OPTIONAL_MODEL_FILES = ("calibration.json", "drift_reference.json", "report.html", "report.json")


@dataclass
class Result:
    """What ``danlu.run`` returns: the run's id and folder, its metrics and the trained model."""

    run_id: str
    run_dir: Path
    recipe: Recipe
    metrics: dict[str, float]
    details: dict[str, Any]
    history: list[dict[str, float]]
    best_epoch: int
    model: torch.nn.Module
    task: Task
    schema: FeatureSchema
    preprocessor: Preprocessor
    data_fingerprint: str
    data_report: dict[str, Any] = field(default_factory=dict)
    registered: ModelVersion | None = None
    report: Any = None  # the trust report (danlu.evaluate.Report) when the recipe has evaluate:
    temperature: float = 1.0  # temperature scaling fitted by the evaluation, else 1

    def predict(self, rows: pd.DataFrame | Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """Predict raw rows (a DataFrame or dict rows) with the saved preprocessing.

        Example:
            >>> # result.predict(frame.head())["prediction"]
        """
        import pandas as pd
        import torch

        frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
        x = torch.as_tensor(self.preprocessor.transform(frame))
        self.model.eval()
        with torch.inference_mode():
            outputs = self.model(x).float().numpy()
        if self.task.name == "classification":
            outputs = outputs / self.temperature
        return self.task.predict(outputs, self.schema)


def check_recipe(recipe: Recipe) -> Any:
    """Checks that need more than the schema: the model's own options, monitors, task fit.

    Returns the validated model options. Raises one ConfigError listing every problem.
    """
    from danlu.models import check_model_config
    from danlu.tasks import get_task

    task = get_task(recipe.task)
    options, issues = check_model_config(recipe.model)
    train = recipe.train
    if train.early_stopping and train.early_stopping.monitor not in task.monitorable():
        from danlu.registry import did_you_mean

        valid = task.monitorable()
        issues.append(
            ConfigIssue(
                ("train", "early_stopping", "monitor"),
                f"the {recipe.task} task does not record this metric",
                train.early_stopping.monitor,
                (
                    did_you_mean(train.early_stopping.monitor, valid)
                    + f" Choose one of {', '.join(valid)}."
                ).strip(),
            )
        )
    if train.class_weight is not None and recipe.task != "classification":
        issues.append(
            ConfigIssue(
                ("train", "class_weight"),
                "class weights apply to classification only",
                train.class_weight,
                "Remove train.class_weight.",
            )
        )
    imbalance = recipe.data.imbalance.method
    if imbalance != "none" and recipe.task != "classification":
        issues.append(
            ConfigIssue(
                ("data", "imbalance", "method"),
                "class imbalance methods apply to classification only",
                imbalance,
                "Remove data.imbalance (a regression target has no classes to balance).",
            )
        )
    elif imbalance == "class_weight" and train.class_weight is not None:
        issues.append(
            ConfigIssue(
                ("data", "imbalance", "method"),
                "class weights are given twice, here and in train.class_weight",
                imbalance,
                "Keep one: remove train.class_weight, or set data.imbalance to none.",
            )
        )
    if train.loss.name == "focal" and recipe.task != "classification":
        issues.append(
            ConfigIssue(
                ("train", "loss", "name"),
                "the focal loss applies to classification only",
                train.loss.name,
                "Remove train.loss (regression trains with MSE).",
            )
        )
    raise_issues(issues, recipe._source)
    return options


def _diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    from danlu.store import flatten_params

    a, b = flatten_params(old), flatten_params(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in _RESUMABLE_KEYS)


def _recipe_hash(resolved: Mapping[str, Any]) -> str:
    """sha256 of the resolved recipe, ignoring keys that do not change the model (name, register)."""
    relevant = {k: v for k, v in resolved.items() if k not in {"name", "register"}}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def _resume_id(resume: StrPath) -> str:
    """A run id, or a path to a run's artifact folder (whose name is the id)."""
    text = str(resume).rstrip("/")
    return Path(text).name if "/" in text else text


def _save_outputs(
    tracker: Tracker, recipe: Recipe, options: Any, model: torch.nn.Module, data: PreparedData
) -> None:
    from safetensors.torch import save as st_save

    weights = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    tracker.log_artifact("model.safetensors", st_save(weights))
    spec = (
        options.model_dump(mode="json") if hasattr(options, "model_dump") else dict(options or {})
    )
    model_card = {
        "type": recipe.model.type,
        "options": spec,
        "task": recipe.task,
        "schema": data.schema.to_dict(),
    }
    tracker.log_artifact("model.json", json.dumps(model_card, indent=1))
    if len(data.x_train):  # the training distribution a server compares its inputs with (PSI)
        from danlu.data import drift_reference

        reference = drift_reference(data.x_train, data.schema)
        tracker.log_artifact("drift_reference.json", json.dumps(reference))


def _signature(schema: dict[str, Any], task: str) -> dict[str, Any]:
    """The model's input/output contract, from its feature schema."""
    inputs = [
        {
            "name": f["name"],
            "kind": f["kind"],
            **({"categories": list(f["categories"])} if f.get("categories") else {}),
        }
        for f in schema["features"]
    ]
    if task == "classification":
        outputs: dict[str, Any] = {
            "prediction": {"type": "label", "classes": list(schema["classes"])},
            "probabilities": {"type": "float", "shape": [len(schema["classes"])]},
        }
    else:
        outputs = {"prediction": {"type": "float", "target": schema["target"]}}
    return {"task": task, "inputs": inputs, "outputs": outputs}


def register_run(
    store: Store, run_id: str, name: str, alias: str | None = None, actor: str | None = None
) -> ModelVersion:
    """Register a finished run's model as the next version of ``name`` (and point ``alias`` at it).

    The version keeps its own copy of the weights (safetensors), the model card and the
    preprocessing (JSON), so it survives the deletion of the run.

    Example:
        >>> # mv = register_run(SqlStore(), result.run_id, "digits", alias="staging")
    """
    from danlu.errors import StoreError
    from danlu.store import current_actor

    actor = actor or current_actor()
    run = store.get_run(run_id)
    if run.status != "finished":
        raise StoreError(f"Run '{run_id}' is {run.status}; only a finished run can be registered.")
    files: dict[str, bytes] = {}
    for file in ("model.safetensors", "model.json", "preprocessing.json"):
        path = store.artifact_path(run_id, file)
        if not path.is_file():
            raise StoreError(
                f"Run '{run_id}' has no '{file}' artifact, so it cannot be registered."
            )
        files[file] = path.read_bytes()
    for file in _OPTIONAL_MODEL_FILES:  # temperature scaling and the trust report travel along
        path = store.artifact_path(run_id, file)
        if path.is_file():
            files[file] = path.read_bytes()
    card = json.loads(files["model.json"])
    metrics = {k: v for k, v in run.metrics.items() if k.startswith("test_")}
    version = store.create_model_version(
        name,
        run_id=run_id,
        files=files,
        signature=_signature(card["schema"], card["task"]),
        metrics=metrics,
        tags={"recipe": run.name, "model.type": str(card["type"])},
        actor=actor,
    )
    if alias is not None:
        store.set_alias(name, alias, version.version, actor=actor)
        version = store.get_model_version(name, version.version)
    return version


def run_training(
    recipe: StrPath | Mapping[str, Any] | Recipe,
    *,
    overrides: Iterable[str] = (),
    callbacks: Sequence[Callback] = (),
    home: StrPath | None = None,
    resume: StrPath | None = None,
    store: Store | None = None,
    stage: str = "train",
    parent_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    prepared: PreparedData | None = None,
    run_name: str | None = None,
    register_model: bool = True,
) -> Result:
    """Train a recipe, record the run in the store, and return the model with its metrics.

    Args:
        recipe: a YAML path, a mapping or a :class:`~danlu.config.Recipe`.
        overrides: ``key.path=value`` strings applied on top of the recipe.
        callbacks: extra engine callbacks (progress bars, user hooks).
        home: where the store lives (default ``$DANLU_HOME`` or ``./.danlu``).
        resume: a run id (or its artifact folder) to continue from its last checkpoint.
        store: an open store to use instead of opening one from ``home``.
        stage: the run's stage in the store (``tune-trial`` for a tuning trial).
        parent_id: the run this one belongs to (a tuning trial's study run).
        tags: extra tags for the run.
        prepared: data already prepared from this recipe's ``data`` block and task (tuning
            reuses it across trials whose space does not touch ``data``).
        run_name: the run's name (default the recipe's name, which is also its experiment).
        register_model: register the model as the recipe's ``register`` block says (the
            pipeline turns it off to register after the evaluation, with the report).

    Example:
        >>> from danlu.train import run_training
        >>> result = run_training("examples/wine_mlp.yaml", overrides=["train.epochs=2"])  # doctest: +SKIP
        >>> result.metrics["accuracy"]  # doctest: +SKIP
    """
    from danlu.data import prepare_data, quality_html
    from danlu.models import MODELS
    from danlu.store import SqlStore, StoreTracker, git_state, host_name, package_versions
    from danlu.tasks import get_task
    from danlu.train._callbacks import Pruned
    from danlu.train._checkpoint import load_checkpoint
    from danlu.train._energy import EnergyMeter, EnergyReading
    from danlu.train._loop import Trainer, resolve_device, seed_everything

    recipe = load_recipe(recipe, overrides)
    options = check_recipe(recipe)
    data = prepared if prepared is not None else prepare_data(recipe.data, recipe.task)
    task = get_task(recipe.task)
    seed_everything(recipe.train.seed)  # model initialisation depends on it
    model = MODELS.get(recipe.model.type).builder(options, data.schema, task)
    resolved = recipe_to_dict(recipe)
    store = store or SqlStore(home=home)

    if resume is not None:
        run_id = _resume_id(resume)
        previous = store.get_run(run_id)
        changed = _diff(previous.recipe or {}, resolved)
        if changed:
            raise ConfigError(
                f"Cannot resume run {run_id}: the recipe differs from the one it was started with at {', '.join(changed)}. Only train.epochs may change on resume."
            )
        if previous.data_fingerprint != data.raw_fingerprint:
            raise ConfigError(
                f"Cannot resume run {run_id}: the data changed since it started (fingerprint {data.raw_fingerprint[:12]} ≠ {str(previous.data_fingerprint)[:12]})."
            )
        tracker = StoreTracker(store, run_id)
        tracker.set_status("running")
    else:
        commit, dirty = git_state()
        run_record = store.create_run(
            experiment=recipe.name,
            name=run_name or recipe.name,
            stage=stage,
            parent_id=parent_id,
            recipe=resolved,
            recipe_hash=_recipe_hash(resolved),
            data_fingerprint=data.raw_fingerprint,
            git_commit=commit,
            git_dirty=dirty,
            packages=package_versions(),
            host=host_name(),
            tags={"task": recipe.task, "model.type": recipe.model.type, **(tags or {})},
        )
        tracker = StoreTracker(store, run_record.id)

    checkpoint = tracker.artifact_path("checkpoint.safetensors")
    trainer = Trainer(
        recipe.train,
        callbacks=callbacks,
        tracker=tracker,
        checkpoint_path=checkpoint if recipe.train.checkpoint.every else None,
    )
    resuming = resume is not None and checkpoint.exists()
    try:  # from here on, any failure marks the run failed (and stops its heartbeat)
        if resume is None:
            tracker.log_params(resolved)
            tracker.log_artifact("recipe.yaml", recipe_to_yaml(recipe))
            tracker.log_artifact(
                "preprocessing.json", json.dumps(data.preprocessor.to_dict(), indent=1)
            )
            tracker.log_artifact("data_report.json", json.dumps(data.report, indent=1))
            if data.quality:
                tracker.log_artifact("data_quality.json", json.dumps(data.quality, indent=1))
                tracker.log_artifact("data_quality.html", quality_html(data.quality, page=True))
        else:  # points logged after the checkpoint will be logged again
            tracker.log_params({"train": {"epochs": recipe.train.epochs}})
            store.delete_metrics_after(
                tracker.run_id, load_checkpoint(checkpoint)["epoch"] if resuming else 0
            )
        meter = EnergyMeter(device=str(resolve_device(recipe.train.device))).start()
        try:
            trainer.fit(model, task, data, resume=resuming)
        finally:  # an interrupted session's time and energy count too (a resume adds to them)
            reading = meter.stop()
            if resume is not None:
                previous_reading = EnergyReading.from_run(previous.metrics, previous.tags)
                reading = previous_reading.add(reading) if previous_reading else reading
            tracker.log_metrics(reading.to_metrics(), step=trainer.epoch)
            store.set_tags(tracker.run_id, reading.to_tags())
        if data.stream is None:
            test_outputs, y_test = trainer.predict_outputs(data.x_test).numpy(), data.y_test
        else:  # streamed test rows: only the model's outputs and the targets are kept
            outputs, targets = trainer.stream_outputs(data.stream, "test")
            test_outputs, y_test = outputs.numpy(), targets.numpy()
        all_metrics = task.metrics(test_outputs, y_test, data.schema) if len(y_test) else {}
        metrics = {k: v for k, v in all_metrics.items() if isinstance(v, float)}
        details = {k: v for k, v in all_metrics.items() if not isinstance(v, float)}
        tracker.log_metrics({f"test_{k}": v for k, v in metrics.items()}, step=trainer.epoch)
        tracker.log_metrics(
            {"best_epoch": trainer.best_epoch, "epochs_run": trainer.epoch}, step=trainer.epoch
        )
        _save_outputs(tracker, recipe, options, trainer.model, data)
        summary = {
            "run_id": tracker.run_id,
            "recipe": recipe.name,
            "task": recipe.task,
            "test": metrics,
            **details,
            "best_epoch": trainer.best_epoch,
            "epochs_run": trainer.epoch,
            "final": trainer.history_[-1] if trainer.history_ else {},
            "data_fingerprint": data.raw_fingerprint,
            "prepared_fingerprint": data.fingerprint,
        }
        tracker.log_artifact("summary.json", json.dumps(summary, indent=1))
        if checkpoint.exists():
            tracker.record_artifact("checkpoint.safetensors")
    except KeyboardInterrupt:
        tracker.set_status("interrupted", error="interrupted by the user")
        raise
    except Pruned as exc:
        tracker.set_status("pruned", error=str(exc) or None)
        raise
    except BaseException as exc:
        tracker.set_status("failed", error=str(exc) or type(exc).__name__)
        raise
    tracker.set_status("finished")
    registered = None
    if recipe.register is not None and register_model:
        registered = register_run(
            store, tracker.run_id, recipe.register.name, recipe.register.alias
        )
    return Result(
        registered=registered,
        run_id=tracker.run_id,
        run_dir=store.artifact_path(tracker.run_id, "summary.json").parent,
        recipe=recipe,
        metrics=metrics,
        details=details,
        history=trainer.history_,
        best_epoch=trainer.best_epoch,
        model=trainer.model,
        task=task,
        schema=data.schema,
        preprocessor=data.preprocessor,
        data_fingerprint=data.raw_fingerprint,
        data_report=data.report,
    )
