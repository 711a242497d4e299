"""Cross-validation: k folds, each a prepare → train run of the stage runner
(:func:`danlu.train.run_training`) with the same recipe, recorded as a child run of the evaluated
run; the report shows each metric's mean ± std over the folds."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from danlu.evaluate._context import Section
from danlu.evaluate._plots import figure, svg
from danlu.logging import get_logger

if TYPE_CHECKING:
    from danlu.config import Recipe
    from danlu.store import Store
    from danlu.train._callbacks import Callback

__all__ = ["cross_validate"]

log = get_logger(__name__)


def cross_validate(
    recipe: Recipe,
    k: int,
    *,
    store: Store,
    parent_id: str | None,
    callbacks: Sequence[Callback] = (),
    on_fold: Callable[[int, int], None] | None = None,
) -> Section:
    """Train the recipe on ``k`` folds (child runs of ``parent_id``, stage ``cv-fold``).

    Each fold holds one k-th of the rows out as its test split and carves its validation split
    from the rest (``danlu.data.cv_splits``); nothing is registered. ``on_fold(i, k)`` is called
    before fold ``i`` (1-based) starts.

    Example:
        >>> # section = cross_validate(recipe, 5, store=store, parent_id=run_id)
        >>> # section.data["metrics"]["accuracy"]  # {"mean": ..., "std": ..., "folds": [...]}
    """
    import numpy as np

    from danlu.data import cv_splits, prepare_data
    from danlu.models._text_inputs import text_inputs
    from danlu.tasks import get_task
    from danlu.train import run_training

    fold_recipe = recipe.model_copy(update={"register": None, "evaluate": None, "tune": None})
    section = Section("cross_validation", f"Cross-validation ({k} folds)")
    folds: list[dict[str, Any]] = []
    text = text_inputs(recipe.model)  # text columns: inferred alike in the folds and the data
    splits = cv_splits(recipe.data, get_task(recipe.task), k, text_models=text["text_models"])
    for i, indices in enumerate(splits, start=1):
        if on_fold is not None:
            on_fold(i, k)
        data = prepare_data(recipe.data, get_task(recipe.task), indices=indices, **text)
        result = run_training(
            fold_recipe,
            store=store,
            prepared=data,
            stage="cv-fold",
            parent_id=parent_id,
            run_name=f"{recipe.name}-fold-{i}",
            tags={"fold": str(i), "folds": str(k)},
            callbacks=callbacks,
        )
        folds.append(
            {"fold": i, "run_id": result.run_id, "rows": len(indices[2]), **result.metrics}
        )
        log.info("Fold %d/%d: %s", i, k, result.metrics)
    names = [m for m in folds[0] if m not in {"fold", "run_id", "rows"}]
    summary = {}
    for name in names:
        values = np.array([f[name] for f in folds if name in f and math.isfinite(f[name])])
        if len(values):
            summary[name] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "folds": values.tolist(),
            }
    section.data.update({"k": k, "folds": folds, "metrics": summary})
    task = get_task(recipe.task)
    headline = task.headline
    if headline in summary:
        mean, std = summary[headline]["mean"], summary[headline]["std"]
        section.summary = f"{k}-fold {task.describe(mean, std)}"
        fig, ax = figure(4.8, 2.8)
        ax.bar([str(f["fold"]) for f in folds], summary[headline]["folds"], color="#1f77b4")
        ax.axhline(mean, ls="--", color="black", lw=0.8, label=f"mean {mean:.3f}")
        low = min(summary[headline]["folds"])
        ax.set(xlabel="fold", ylabel=headline, ylim=(max(0.0, low - 3 * std - 0.02), None))
        ax.legend(fontsize=8)
        section.figures[f"{headline} per fold"] = svg(fig)
    section.notes.append(
        f"Each fold trains the recipe from scratch on {k - 1}/{k} of the rows (its validation "
        "split carved from them) and is tested on the held-out fold; folds are stratified for "
        "single-label classes. The fold runs are child runs of this run (stage cv-fold)."
    )
    return section
