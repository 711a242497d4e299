"""``model: {type: auto}``: train every candidate, keep the best on validation, ship it.

Each candidate (``model.candidates``, default the MLP and LightGBM trees) is trained by the same
prepare → train plan as any run, on the data this run already prepared, as a child run
(``stage: auto-candidate``) with its own curves and metrics. The winner is the best on the
validation split's headline metric (accuracy, R² ...) at the candidate's kept epoch; the test
split plays no part in the choice. The run then holds the winner's model files — its model card
names the winner's type — so evaluation, registration, export and serving see that model.
Every candidate's validation and test figures and its training time are recorded on the run
(``model_selection.json``, metrics ``candidate<i>_*``) and in the trust report.
"""

from __future__ import annotations

import copy
import json
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from danlu.errors import ConfigError
from danlu.logging import get_logger

if TYPE_CHECKING:
    from danlu.train._run import Result
    from danlu.train._runner import Context

__all__ = ["ChosenModel", "select_model"]

log = get_logger(__name__)


class ChosenModel:
    """The winning candidate, trained: the train stage's view of a trainer after ``fit``."""

    def __init__(self, result: Result, selection: dict[str, Any]) -> None:
        self.model = result.model
        self.history_ = result.history
        self.best_epoch = result.best_epoch
        self.epoch = len(result.history)
        self.selection = selection

    @torch.inference_mode()
    def predict_outputs(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        self.model.eval()
        x_t = torch.as_tensor(x)
        parts = [self.model(x_t[i : i + 8192]).float() for i in range(0, len(x_t), 8192)]
        return torch.cat(parts) if parts else torch.empty(0)


def _validation_score(result: Result, metric: str) -> float | None:
    """The candidate's validation ``metric`` at the epoch whose weights it kept."""
    if not result.history:
        return None
    row = result.history[max(result.best_epoch, 1) - 1]
    value = row.get(metric)
    return float(value) if value is not None else None


def select_model(ctx: Context) -> ChosenModel:
    """Train each candidate of ``ctx.recipe.model`` as a child run; make the best the run's model.

    Sets ``ctx.model``, ``ctx.task``, ``ctx.options`` and ``ctx.model_type`` to the winner's and
    logs each candidate's figures on the run. Returns the winner as a trained trainer.
    """
    assert ctx.task is not None and ctx.data is not None and ctx.tracker is not None
    if ctx.recipe.task == "forecasting":  # chosen by a rolling-origin backtest
        from danlu.train._backtest import select_forecaster

        return select_forecaster(ctx)
    if len(ctx.data.y_val) == 0:
        raise ConfigError(
            "model.type auto chooses on the validation split, which is empty: set "
            "data.split.val above 0 (e.g. 0.1)."
        )
    task = ctx.task
    metric = f"val_{task.headline}"
    candidates: list[tuple[str, Any]] = list(getattr(ctx.model, "candidates", []))
    rows: list[dict[str, Any]] = []
    results: list[Result] = []
    for i, (kind, options) in enumerate(candidates):
        log.info("model selection: training candidate %d (%s)", i + 1, kind)
        started = time.perf_counter()
        block, result = train_candidate(ctx, i, kind, options, f"{i + 1}-{kind}")
        seconds = time.perf_counter() - started
        results.append(result)
        rows.append(
            {
                "candidate": i + 1,
                "type": kind,
                "options": block,
                "run_id": result.run_id,
                "validation": _validation_score(result, metric),
                "test": result.metrics.get(task.headline),
                "best_epoch": result.best_epoch,
                "seconds": round(seconds, 3),
            }
        )
    scored = [(r["validation"], i) for i, r in enumerate(rows) if r["validation"] is not None]
    if not scored:
        raise ConfigError(f"No candidate recorded {metric}; model.type auto cannot choose.")
    sign = 1.0 if task.headline_mode == "max" else -1.0
    winner = max(scored, key=lambda s: (sign * s[0], -s[1]))[1]  # ties: the earlier candidate
    selection = {
        "metric": metric,
        "mode": task.headline_mode,
        "winner": winner + 1,
        "winner_type": rows[winner]["type"],
        "candidates": rows,
    }
    _record(ctx, selection)
    chosen = results[winner]
    ctx.model, ctx.task = chosen.model, chosen.task
    ctx.options, ctx.model_type = candidates[winner][1], rows[winner]["type"]
    log.info(
        "model selection: candidate %d (%s) wins on %s = %.4g",
        winner + 1,
        rows[winner]["type"],
        metric,
        rows[winner]["validation"],
    )
    return ChosenModel(chosen, selection)


def train_candidate(
    ctx: Context, index: int, kind: str, options: Any, suffix: str
) -> tuple[dict[str, Any], Result]:
    """Train candidate ``index`` (model ``kind`` with ``options``) on the run's prepared data
    as a child run named ``<run>-<suffix>``; its model block as the recipe gives it, and the
    result. The candidate's recipe is the run's without evaluate, register and tune."""
    from danlu.train._run import run_training

    recipe = copy.deepcopy(ctx.resolved)
    block = options.model_dump(mode="json") if hasattr(options, "model_dump") else options
    recipe["model"] = {**dict(block or {}), "type": kind}
    for key in ("evaluate", "register", "tune"):
        recipe.pop(key, None)
    result = run_training(
        recipe,
        store=ctx.store,
        stage="auto-candidate",
        parent_id=ctx.run_id,
        prepared=ctx.data,
        callbacks=ctx.callbacks,
        run_name=f"{ctx.run_name or ctx.recipe.name}-{suffix}",
        tags={"auto.candidate": str(index + 1)},
    )
    return block, result


def _record(ctx: Context, selection: dict[str, Any]) -> None:
    """Each candidate's figures as run metrics, the whole comparison as an artifact."""
    assert ctx.tracker is not None
    values: dict[str, float] = {}
    for row in selection["candidates"]:
        prefix = f"candidate{row['candidate']}"
        for key in ("validation", "test", "seconds"):
            if row[key] is not None:
                values[f"{prefix}_{key}"] = float(row[key])
    values["candidate_winner"] = float(selection["winner"])
    ctx.tracker.log_metrics(values, step=0)
    ctx.store.set_tags(ctx.run_id, {"model.chosen": str(selection["winner_type"])})
    ctx.log_artifact("model_selection.json", json.dumps(selection, indent=1))
