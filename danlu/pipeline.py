"""Runs a recipe's stages in order: prepare data → build task and model → train → test metrics.

Every check that can fail on bad input runs before anything is written, so a bad recipe or bad
data leaves no run folder behind.
"""

from __future__ import annotations

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
    from danlu.tasks import Task
    from danlu.train import Callback

__all__ = ["Result", "check_recipe", "recipe_json_schema", "run"]

log = get_logger(__name__)

_RESUMABLE_KEYS = {"train.epochs"}  # keys a resumed run may change


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
    raise_issues(issues, recipe._source)
    return options


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


def _diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    from danlu.store import flatten_params

    a, b = flatten_params(old), flatten_params(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in _RESUMABLE_KEYS)


def _save_outputs(
    tracker: Any, recipe: Recipe, options: Any, model: torch.nn.Module, data: PreparedData
) -> None:
    from safetensors.torch import save as st_save

    weights = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    tracker.log_artifact("model.safetensors", st_save(weights))
    spec = (
        options.model_dump(mode="json") if hasattr(options, "model_dump") else dict(options or {})
    )
    tracker.log_artifact(
        "model.json",
        json.dumps(
            {
                "type": recipe.model.type,
                "options": spec,
                "task": recipe.task,
                "schema": data.schema.to_dict(),
            },
            indent=1,
        ),
    )


def run(
    recipe: StrPath | Mapping[str, Any] | Recipe,
    *,
    overrides: Iterable[str] = (),
    callbacks: Sequence[Callback] = (),
    home: StrPath | None = None,
    resume: StrPath | None = None,
) -> Result:
    """Run a recipe end to end and return the trained model with its metrics.

    Args:
        recipe: a YAML path, a mapping or a :class:`~danlu.config.Recipe`.
        overrides: ``key.path=value`` strings applied on top of the recipe.
        callbacks: extra engine callbacks (progress bars, user hooks).
        home: where runs are stored (default ``$DANLU_HOME`` or ``./.danlu``).
        resume: a run folder to continue from its last checkpoint.

    Example:
        >>> import danlu
        >>> result = danlu.run("examples/wine_mlp.yaml", overrides=["train.epochs=2"])  # doctest: +SKIP
        >>> result.metrics["accuracy"]  # doctest: +SKIP
    """
    from danlu.data import prepare_data
    from danlu.models import MODELS
    from danlu.store import RunFolderTracker
    from danlu.tasks import get_task
    from danlu.train import Trainer, seed_everything

    recipe = load_recipe(recipe, overrides)
    options = check_recipe(recipe)
    data = prepare_data(recipe.data, recipe.task)
    task = get_task(recipe.task)
    seed_everything(recipe.train.seed)  # model initialisation depends on it
    model = MODELS.get(recipe.model.type).builder(options, data.schema, task)
    resolved = recipe_to_dict(recipe)

    if resume is not None:
        tracker = RunFolderTracker.open(resume)
        saved = json.loads(tracker.artifact_path("recipe.json").read_text())
        changed = _diff(saved, resolved)
        if changed:
            raise ConfigError(
                f"Cannot resume run {tracker.run_id}: the recipe differs from the one it was started with at {', '.join(changed)}. Only train.epochs may change on resume."
            )
        if tracker.status.get("data_fingerprint") != data.raw_fingerprint:
            raise ConfigError(
                f"Cannot resume run {tracker.run_id}: the data changed since it started (fingerprint {data.raw_fingerprint[:12]} ≠ {str(tracker.status.get('data_fingerprint'))[:12]})."
            )
    else:
        tracker = RunFolderTracker.create(recipe.name, home)
        tracker.log_artifact("recipe.yaml", recipe_to_yaml(recipe))
        tracker.log_artifact("recipe.json", json.dumps(resolved, indent=1))
        tracker.log_params(resolved)
        tracker.log_artifact(
            "preprocessing.json", json.dumps(data.preprocessor.to_dict(), indent=1)
        )
        tracker.log_artifact("data_report.json", json.dumps(data.report, indent=1))
    tracker.set_status(
        "running",
        recipe=recipe.name,
        data_fingerprint=data.raw_fingerprint,
        prepared_fingerprint=data.fingerprint,
    )

    checkpoint = tracker.artifact_path("checkpoint.safetensors")
    trainer = Trainer(
        recipe.train,
        callbacks=callbacks,
        tracker=tracker,
        checkpoint_path=checkpoint if recipe.train.checkpoint.every else None,
    )
    if resume is not None and checkpoint.exists():
        from danlu.train import load_checkpoint

        tracker.truncate_metrics(load_checkpoint(checkpoint)["epoch"])
    try:
        trainer.fit(model, task, data, resume=resume is not None and checkpoint.exists())
    except KeyboardInterrupt:
        tracker.set_status("interrupted", epoch=getattr(trainer, "epoch", 0))
        raise
    except BaseException as exc:
        tracker.set_status("failed", error=str(exc))
        raise

    test_outputs = trainer.predict_outputs(data.x_test).numpy()
    all_metrics = task.metrics(test_outputs, data.y_test, data.schema) if len(data.y_test) else {}
    metrics = {k: v for k, v in all_metrics.items() if isinstance(v, float)}
    details = {k: v for k, v in all_metrics.items() if not isinstance(v, float)}
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
    tracker.set_status("finished", test=metrics, best_epoch=trainer.best_epoch)
    return Result(
        run_id=tracker.run_id,
        run_dir=tracker.run_dir,
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
