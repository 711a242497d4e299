"""Baselines: scikit-learn models fitted on the same training split with the same preprocessing,
scored on the same rows, so the report shows at once whether the model earns its keep."""

from __future__ import annotations

import time
import warnings
from typing import Any

from danlu.evaluate._bootstrap import bootstrap_ci
from danlu.evaluate._context import EvalData, Section
from danlu.evaluate._metrics import add_proportion_intervals
from danlu.evaluate._plots import figure, svg
from danlu.logging import get_logger

__all__ = ["baselines_section", "fit_baselines"]

log = get_logger(__name__)


def fit_baselines(data: EvalData, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Fit each of the task's baselines on ``data``'s training split; name → {outputs, seconds}.

    Example:
        >>> # fit_baselines(data)["HistGradientBoosting"]["outputs"].shape  # (n_test, K)
    """
    task = data.task
    target = task.baseline_target(data.y_train)
    fitted = {}
    for name, estimator in task.baselines(seed).items():
        start = time.perf_counter()
        with warnings.catch_warnings():  # a linear model that stops at max_iter still informs
            warnings.simplefilter("ignore")
            estimator.fit(data.x_train, target)
            outputs = task.baseline_outputs(estimator, data.x, data.schema)
        fitted[name] = {"outputs": outputs, "seconds": time.perf_counter() - start}
    return fitted


def baselines_section(data: EvalData, seed: int = 0) -> Section:
    """The model next to a dummy, a linear model and HistGradientBoosting on the same split.

    Example:
        >>> # baselines_section(data).data["rows"][0]  # {"model": "danlu model", "accuracy": ...}
    """
    import numpy as np

    section = Section("baselines", "Baselines")
    if len(data.x_train) == 0 or len(data.y) == 0:
        reason = "no training rows" if len(data.x_train) == 0 else "no evaluation rows"
        section.data["skipped"] = reason
        section.notes.append(f"Baselines skipped: {reason}.")
        return section
    task = data.task
    shown = task.report_metrics or (task.headline,)
    headline = task.headline
    model_metrics = data.task.metrics(data.test_outputs, data.y, data.schema)
    rows: list[dict[str, Any]] = [
        {"model": "danlu model", **{m: model_metrics.get(m) for m in shown}, "seconds": None}
    ]
    fitted = fit_baselines(data, seed)
    for name, fit in fitted.items():
        metrics = data.task.metrics(fit["outputs"], data.y, data.schema)
        rows.append(
            {"model": name, **{m: metrics.get(m) for m in shown}, "seconds": fit["seconds"]}
        )
    for row in rows:  # on the same test rows: the uncertainty of each comparison
        add_proportion_intervals(row, shown, len(data.y))
    section.data.update({"metric": headline, "columns": list(shown), "rows": rows})

    best = max(rows[1:], key=lambda r: r[headline] if r[headline] is not None else -np.inf)
    gain = rows[0][headline] - best[headline]
    # paired bootstrap of the per-row difference to the strongest baseline
    diff = task.row_scores(data.test_outputs, data.y, data.schema) - task.row_scores(
        fitted[best["model"]]["outputs"], data.y, data.schema
    )
    try:
        ci = bootstrap_ci(lambda d: float(d.mean()), diff, resamples=1000, seed=seed)
        paired = {"low": ci.low, "high": ci.high}
    except ValueError:
        paired = None
    section.data["strongest"] = {"model": best["model"], "difference": gain, "paired": paired}
    amount = f"{100 * abs(gain):.1f} points" if task.headline_percent else f"{abs(gain):.3f}"
    verb = "beats" if gain > 0 else "trails" if gain < 0 else "ties with"
    label = task.headline_label or headline
    section.summary = f"{verb} {best['model']} by {amount} of {label}"
    if paired is not None:
        significant = paired["low"] > 0 or paired["high"] < 0
        section.notes.append(
            f"Paired bootstrap of the per-row difference to {best['model']} "
            f"({task.row_score_label}): 95% interval "
            f"[{paired['low']:.4f}, {paired['high']:.4f}] — "
            + ("a real difference." if significant else "not distinguishable from noise.")
        )
        if not significant:
            section.summary += " (within noise)"
    if gain < 0 and (paired is None or paired["high"] < 0):  # behind, and not by chance
        section.flags.append(
            f"{best['model']} scores {label} {best[headline]:.4f} against the model's "
            f"{rows[0][headline]:.4f}: the model does not earn its keep on this data."
        )
    section.notes.append(
        "Baselines use the model's training split and preprocessing (scikit-learn defaults)."
    )

    fig, ax = figure(5.2, 0.5 + 0.45 * len(rows))
    names = [r["model"] for r in rows][::-1]
    scores = [r[headline] for r in rows][::-1]
    colours = ["#999999"] * (len(rows) - 1) + ["#1f77b4"]
    ax.barh(names, scores, color=colours)
    for i, score in enumerate(scores):
        ax.text(score, i, f" {score:.3f}", va="center", fontsize=8)
    ax.set(xlabel=label)
    section.figures[f"{label} of the model and the baselines"] = svg(fig)
    return section
