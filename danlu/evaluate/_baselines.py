"""Baselines: scikit-learn models fitted on the same training split with the same preprocessing,
scored on the same rows, so the report shows at once whether the neural model earns its keep."""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any

from danlu.evaluate._bootstrap import bootstrap_ci
from danlu.evaluate._context import EvalData, Section
from danlu.evaluate._plots import figure, svg
from danlu.logging import get_logger

if TYPE_CHECKING:
    import numpy as np

__all__ = ["baselines_section", "fit_baselines"]

log = get_logger(__name__)

_SHOWN = {
    "classification": ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "log_loss"),
    "regression": ("r2", "mae", "rmse"),
}


def _estimators(classification: bool, seed: int) -> dict[str, Any]:
    from sklearn.dummy import DummyClassifier, DummyRegressor
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LinearRegression, LogisticRegression

    if classification:
        return {
            "most frequent (dummy)": DummyClassifier(strategy="most_frequent"),
            "logistic regression": LogisticRegression(max_iter=1000),
            "HistGradientBoosting": HistGradientBoostingClassifier(random_state=seed),
        }
    return {
        "mean (dummy)": DummyRegressor(strategy="mean"),
        "linear regression": LinearRegression(),
        "HistGradientBoosting": HistGradientBoostingRegressor(random_state=seed),
    }


def _outputs(estimator: Any, x: np.ndarray, k: int | None) -> np.ndarray:
    """The estimator's predictions shaped like the model's raw outputs (log-probabilities over
    all K classes, or standardized values (n, 1)), so the task's metrics apply unchanged."""
    import numpy as np

    if k is None:
        return estimator.predict(x).reshape(-1, 1)
    proba = np.full((len(x), k), 1e-12)
    proba[:, estimator.classes_.astype(int)] = estimator.predict_proba(x)  # absent classes: ~0
    return np.log(np.clip(proba, 1e-12, 1.0))


def fit_baselines(data: EvalData, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Fit each baseline on ``data``'s training split; name → {outputs, seconds}.

    Example:
        >>> # fit_baselines(data)["HistGradientBoosting"]["outputs"].shape  # (n_test, K)
    """
    k = len(data.schema.classes or ()) if data.classification else None
    fitted = {}
    for name, estimator in _estimators(data.classification, seed).items():
        start = time.perf_counter()
        with warnings.catch_warnings():  # a linear model that stops at max_iter still informs
            warnings.simplefilter("ignore")
            estimator.fit(data.x_train, data.y_train)
            outputs = _outputs(estimator, data.x, k)
        fitted[name] = {"outputs": outputs, "seconds": time.perf_counter() - start}
    return fitted


def _headline_rows(data: EvalData, outputs: np.ndarray) -> np.ndarray:
    """Per-row scores whose mean is the headline difference: correctness (classification) or
    negative squared error in standardized units (regression)."""

    if data.classification:
        return (outputs.argmax(axis=1) == data.y).astype(float)
    return -((outputs.reshape(-1) - data.y) ** 2)


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
    shown = _SHOWN[data.task.name]
    headline = data.task.headline
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
    section.data.update({"metric": headline, "columns": list(shown), "rows": rows})

    best = max(rows[1:], key=lambda r: r[headline] if r[headline] is not None else -np.inf)
    gain = rows[0][headline] - best[headline]
    # paired bootstrap of the per-row difference to the strongest baseline
    diff = _headline_rows(data, data.test_outputs) - _headline_rows(
        data, fitted[best["model"]]["outputs"]
    )
    try:
        ci = bootstrap_ci(lambda d: float(d.mean()), diff, resamples=1000, seed=seed)
        paired = {"low": ci.low, "high": ci.high}
    except ValueError:
        paired = None
    section.data["strongest"] = {"model": best["model"], "difference": gain, "paired": paired}
    unit = "points" if data.classification else ""
    amount = f"{100 * abs(gain):.1f} {unit}" if data.classification else f"{abs(gain):.3f}"
    verb = "beats" if gain > 0 else "trails" if gain < 0 else "ties with"
    label = "accuracy" if data.classification else "R²"
    section.summary = f"{verb} {best['model']} by {amount.strip()} of {label}"
    if paired is not None:
        significant = paired["low"] > 0 or paired["high"] < 0
        section.notes.append(
            f"Paired bootstrap of the per-row difference to {best['model']} "
            f"({'correctness' if data.classification else 'squared error'}): 95% interval "
            f"[{paired['low']:.4f}, {paired['high']:.4f}] — "
            + ("a real difference." if significant else "not distinguishable from noise.")
        )
        if not significant:
            section.summary += " (within noise)"
    if gain < 0 and (paired is None or paired["high"] < 0):  # behind, and not by chance
        section.flags.append(
            f"{best['model']} scores {label} {best[headline]:.4f} against the model's "
            f"{rows[0][headline]:.4f}: the neural model does not earn its keep on this data."
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
