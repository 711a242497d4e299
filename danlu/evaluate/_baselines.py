"""Baselines: scikit-learn models fitted on the same training split with the same preprocessing,
scored on the same rows, so the report shows at once whether the model earns its keep."""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any

from danlu.evaluate._bootstrap import bootstrap_ci
from danlu.evaluate._context import EvalData, Section
from danlu.evaluate._metrics import add_proportion_intervals
from danlu.evaluate._plots import figure, svg
from danlu.evaluate._text_baseline import text_baseline_outputs
from danlu.logging import get_logger

if TYPE_CHECKING:
    import numpy as np

__all__ = ["baselines_section", "fit_baselines"]

log = get_logger(__name__)


def fit_baselines(data: EvalData, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Fit each of the task's baselines on ``data``'s training split; name → {outputs, seconds}.

    With text columns the tabular baselines see the other columns only (token ids are no
    feature a linear model or a tree can use); with no other column only the dummy is fitted.
    The text's own baseline is :func:`~danlu.evaluate._text_baseline.text_baseline_outputs`.

    Example:
        >>> # fit_baselines(data)["HistGradientBoosting"]["outputs"].shape  # (n_test, K)
    """
    from sklearn.dummy import DummyClassifier, DummyRegressor

    task = data.task
    target = task.baseline_target(data.y_train)
    columns = list(data.schema.tabular_positions()) if data.text_columns else None
    x_train, x = data.x_train, data.x
    if columns is not None:
        x_train, x = x_train[:, columns], x[:, columns]  # (n, D_tabular)
    fitted = {}
    for name, estimator in task.baselines(seed).items():
        dummy = isinstance(estimator, DummyClassifier | DummyRegressor)
        if columns is not None and not columns and not dummy:
            continue  # text only: nothing tabular to fit on
        start = time.perf_counter()
        with warnings.catch_warnings():  # a linear model that stops at max_iter still informs
            warnings.simplefilter("ignore")
            if dummy:  # the dummy reads no feature: any width of x will do
                estimator.fit(data.x_train, target)
                outputs = task.baseline_outputs(estimator, data.x, data.schema)
            else:
                estimator.fit(x_train, target)
                outputs = task.baseline_outputs(estimator, x, data.schema)
        fitted[name] = {"outputs": outputs, "seconds": time.perf_counter() - start}
    return fitted


def _paired(
    data: EvalData, outputs: np.ndarray, other: np.ndarray, seed: int
) -> dict[str, float] | None:
    """Percentile bootstrap 95% interval of the mean per-row score difference (model - other)
    on the same test rows; None when it cannot be computed (too few rows)."""
    task = data.task
    diff = task.row_scores(outputs, data.y, data.schema) - task.row_scores(
        other, data.y, data.schema
    )
    try:
        ci = bootstrap_ci(lambda d: float(d.mean()), diff, resamples=1000, seed=seed)
    except ValueError:
        return None
    return {"low": ci.low, "high": ci.high}


def baselines_section(data: EvalData, seed: int = 0) -> Section:
    """The model next to a dummy, a linear model and HistGradientBoosting on the same split;
    with text columns also TF-IDF + a linear model on the raw text, and a sentence saying
    whether the model beats it (``data["text_baseline"]``).

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
    text = text_baseline_outputs(data) if data.text_columns else None
    if isinstance(text, tuple):
        fitted[text[0]] = text[1]
    if not fitted:  # forecasting: its baselines fit whole series (the backtest section)
        section.data.update({"metric": headline, "columns": list(shown), "rows": rows})
        section.data["skipped"] = f"the {task.name} task has no row baselines"
        section.notes.append(
            f"The {task.name} task compares its model with baselines elsewhere in the report "
            "(forecasting: the backtest section), not on these rows."
        )
        return section
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
    paired = _paired(data, data.test_outputs, fitted[best["model"]]["outputs"], seed)
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
        if not significant and gain:  # "beats ... (within noise)" would read as a win
            where = "above" if gain > 0 else "below"
            section.summary = f"{amount} of {label} {where} {best['model']} (within noise)"
        elif not significant:
            section.summary += " (within noise)"
    if gain < 0 and (paired is None or paired["high"] < 0):  # behind, and not by chance
        section.flags.append(
            f"{best['model']} scores {label} {best[headline]:.4f} against the model's "
            f"{rows[0][headline]:.4f}: the model does not earn its keep on this data."
        )
    section.notes.append(
        "Baselines use the model's training split and preprocessing (scikit-learn defaults)."
    )
    if isinstance(text, tuple):
        _text_verdict(section, data, rows, text, seed)
    elif text is not None:
        section.notes.append(f"No text baseline: {text}.")

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


def _text_verdict(
    section: Section,
    data: EvalData,
    rows: list[dict[str, Any]],
    text: tuple[str, dict[str, Any]],
    seed: int,
) -> None:
    """The sentence saying whether the model beats the TF-IDF baseline (from the paired
    interval of the difference), and what that baseline read, in ``section``."""
    task = data.task
    name, fit = text
    headline, label = task.headline, task.headline_label or task.headline
    row = next(r for r in rows if r["model"] == name)
    gain = rows[0][headline] - row[headline]
    paired = _paired(data, data.test_outputs, fit["outputs"], seed)

    def show(value: float) -> str:
        return f"{100 * value:.1f}%" if task.headline_percent else f"{value:.3f}"

    if paired is None:
        verdict = "undecided"
        sentence = (
            f"Against {name} the model scores {label} {show(rows[0][headline])} to "
            f"{show(row[headline])}; too few test rows to tell whether it beats it."
        )
    else:
        verdict = "beats" if paired["low"] > 0 else "trails" if paired["high"] < 0 else "ties"
        lead = {
            "beats": f"The model beats {name}",
            "trails": f"The model does not beat {name}: it trails it",
            "ties": f"The model does not beat {name} beyond noise",
        }[verdict]
        sentence = (
            f"{lead} ({label} {show(rows[0][headline])} against {show(row[headline])}; paired "
            f"95% interval of the per-row difference [{paired['low']:.4f}, "
            f"{paired['high']:.4f}])."
        )
    baseline = fit["fit"]
    section.data["text_baseline"] = {
        "model": name,
        "difference": gain,
        "paired": paired,
        "verdict": verdict,
        "sentence": sentence,
        "C": baseline.c,
        "vocabulary": baseline.vocabulary,
        "text_columns": list(data.text_columns),
    }
    section.notes.insert(0, sentence)
    others = (
        "" if not data.schema.tabular_positions() else " (the table's other columns are left out)"
    )
    section.notes.append(
        f"{name}: TF-IDF of word 1-2-grams (lowercased, sublinear tf, terms in at least 2 "
        f"training texts) of the raw text{others}, fitted on the training rows; C = "
        f"{baseline.c:g}, picked from 1, 10, 100 by validation score"
        + ("" if baseline.validation else " (no validation rows: the default)")
        + ". "
        + (
            "The tabular baselines read the non-text columns only."
            if others
            else "With no column but text, the dummy is the only tabular baseline."
        )
    )
