"""The metrics section: every test metric, the headline ones with confidence intervals (Wilson
for a proportion of rows such as accuracy, the percentile bootstrap for the others), per-class
results, the confusion matrix, ROC / PR curves, and residual plots for regression.

The metrics the train stage reports (``Task.metrics``: accuracy, log-loss ...) are taken from the
task, so ``danlu run``'s table and the report show the same numbers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from danlu.evaluate._bootstrap import bootstrap_ci, wilson_interval
from danlu.evaluate._context import EvalData, Section
from danlu.evaluate._plots import figure, svg

if TYPE_CHECKING:
    import numpy as np

__all__ = ["classification_metrics", "metrics_section", "regression_metrics"]

#: metrics given a confidence interval, in the order the report shows them
CLASSIFICATION_CI = ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "pr_auc")
REGRESSION_CI = ("mae", "rmse", "r2", "mape")
#: metrics that are a proportion of the evaluated rows: their interval is Wilson's, not a bootstrap
PROPORTIONS = frozenset({"accuracy", "subset_accuracy"})
_MAX_CURVES = 10  # one ROC / PR curve per class, up to this many classes


def _accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float((y == pred).mean())


def _balanced_accuracy(k: int) -> Callable[[np.ndarray, np.ndarray], float]:
    import numpy as np

    def metric(y: np.ndarray, pred: np.ndarray) -> float:
        support = np.bincount(y, minlength=k)
        hits = np.bincount(y[y == pred], minlength=k)
        present = support > 0
        return float((hits[present] / support[present]).mean())

    return metric


def _f1_macro(k: int) -> Callable[[np.ndarray, np.ndarray], float]:
    import numpy as np

    def metric(y: np.ndarray, pred: np.ndarray) -> float:
        tp = np.bincount(y[y == pred], minlength=k).astype(float)
        predicted = np.bincount(pred, minlength=k)
        actual = np.bincount(y, minlength=k)
        denominator = predicted + actual
        f1 = np.divide(2 * tp, denominator, out=np.zeros(k), where=denominator > 0)
        return float(f1.mean())  # scikit-learn's macro F1 with zero_division=0

    return metric


def _auc_per_class(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC-AUC of every class from ranks (Mann-Whitney U, ties averaged): the
    value scikit-learn's ``roc_auc_score`` gives, fast enough for a thousand resamples."""
    import numpy as np
    from scipy.stats import rankdata

    k = proba.shape[1]
    positive = y[:, None] == np.arange(k)  # (n, K)
    n_pos = positive.sum(axis=0)
    n_neg = len(y) - n_pos
    if (n_pos == 0).any() or (n_neg == 0).any():
        raise ValueError("a class is missing from the rows, so its ROC-AUC is undefined")
    ranks = rankdata(proba, axis=0)  # (n, K)
    u = (ranks * positive).sum(axis=0) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def _roc_auc(k: int) -> Callable[[np.ndarray, np.ndarray], float]:
    def metric(y: np.ndarray, proba: np.ndarray) -> float:
        auc = _auc_per_class(y, proba)
        return float(auc[1] if k == 2 else auc.mean())  # binary: the positive class's curve

    return metric


def _average_precision(truth: np.ndarray, score: np.ndarray) -> float:
    """scikit-learn's ``average_precision_score``: Σ (R_n − R_{n−1}) P_n over the distinct
    score thresholds, highest first."""
    import numpy as np

    order = np.argsort(-score, kind="mergesort")
    score, truth = score[order], truth[order]
    last = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]  # end of each threshold block
    tps = np.cumsum(truth)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _pr_auc(k: int) -> Callable[[np.ndarray, np.ndarray], float]:
    import numpy as np

    def metric(y: np.ndarray, proba: np.ndarray) -> float:
        classes = [1] if k == 2 else range(k)
        values = []
        for c in classes:
            truth = (y == c).astype(np.float64)
            if not truth.any():
                raise ValueError("a class is missing from the rows, so its PR-AUC is undefined")
            values.append(_average_precision(truth, proba[:, c]))
        return float(np.mean(values))

    return metric


def classification_metrics(proba: np.ndarray, y: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Every classification metric of the report from probabilities (n, K) and class indices,
    but the log-loss, which the task computes (``Task.metrics``, one definition for the train
    stage and the report).

    Example:
        >>> import numpy as np
        >>> m = classification_metrics(np.array([[.9, .1], [.2, .8], [.6, .4]]), np.array([0, 1, 1]),
        ...                            ["no", "yes"])
        >>> round(m["accuracy"], 3), m["per_class"][1]["recall"]
        (0.667, 0.5)
    """
    import numpy as np
    from sklearn import metrics as skm

    k = proba.shape[1]
    pred = proba.argmax(axis=1)
    labels = list(range(k))
    result: dict[str, Any] = {
        "accuracy": _accuracy(y, pred),
        "balanced_accuracy": _balanced_accuracy(k)(y, pred),
    }
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(
            y, pred, labels=labels, average=average, zero_division=0
        )
        result.update({f"precision_{average}": float(p), f"recall_{average}": float(r)})
        result[f"f1_{average}"] = float(f)
    if len(np.unique(y)) == k:  # the areas need every class among the rows
        result["roc_auc"] = _roc_auc(k)(y, proba)
        result["pr_auc"] = _pr_auc(k)(y, proba)
    p, r, f, support = skm.precision_recall_fscore_support(
        y, pred, labels=labels, average=None, zero_division=0
    )
    result["per_class"] = [
        {
            "class": classes[i],
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(support[i]),
        }
        for i in labels
    ]
    result["confusion_matrix"] = skm.confusion_matrix(y, pred, labels=labels).tolist()
    return result


def regression_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, R² and MAPE in the target's units.

    Example:
        >>> import numpy as np
        >>> regression_metrics(np.array([1.0, 2.0]), np.array([1.0, 3.0]))["mae"]
        0.5
    """
    import numpy as np
    from sklearn import metrics as skm

    return {
        "mae": float(np.abs(pred - true).mean()),
        "rmse": float(np.sqrt(((pred - true) ** 2).mean())),
        "r2": float(skm.r2_score(true, pred)) if len(true) > 1 else float("nan"),
        "mape": float(skm.mean_absolute_percentage_error(true, pred)),
    }


def _intervals(
    metrics: dict[str, Callable[..., float]],
    arrays: Mapping[str, tuple[np.ndarray, ...]],
    resamples: int,
    confidence: float,
    values: Mapping[str, Any],
    n: int,
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Each metric's interval: Wilson's for a proportion of the ``n`` rows, else a bootstrap."""
    intervals, notes = {}, []
    for name, metric in metrics.items():
        try:
            if name in PROPORTIONS and isinstance(values.get(name), float):
                ci = wilson_interval(round(values[name] * n), n, confidence)
            else:
                ci = bootstrap_ci(metric, *arrays[name], resamples=resamples, confidence=confidence)
        except ValueError as exc:
            notes.append(f"No confidence interval for {name}: {exc}")
            continue
        intervals[name] = {
            "value": ci.value,
            "low": ci.low,
            "high": ci.high,
            "std": ci.std,
            "method": ci.method,
            "confidence": ci.confidence,
        }
    return intervals, notes


def _interval_notes(
    intervals: dict[str, dict[str, Any]], level: str, n: int, resamples: int
) -> str:
    wilson = [name for name, ci in intervals.items() if ci["method"] == "wilson"]
    text = ""
    if wilson:
        text = (
            f"The {level} interval of {' and '.join(n.replace('_', ' ') for n in wilson)} (a "
            f"proportion of the {n} rows) is the Wilson score interval: unlike a bootstrap it "
            "does not collapse when every row, or none, is right. "
        )
    if len(wilson) < len(intervals):
        text += (
            f"{'The other' if wilson else 'The'} intervals are {level} percentile-bootstrap "
            f"intervals over {resamples} resamples of the {n} evaluation rows. "
        )
    return text + (
        "They show the uncertainty due to the finite test set, not to training randomness."
    )


def _headline_summary(
    data: EvalData, values: dict[str, Any], interval: dict[str, Any] | None, confidence: float
) -> str:
    """The section's summary, interval included: ``98.6% test accuracy, 95% CI [92.2%, 99.7%]
    (69 rows)`` (a proportion's interval is asymmetric near 1, so it is not written ± half)."""
    n = len(data.y)
    headline = "accuracy" if data.classification else data.task.headline
    value = values.get(headline, float("nan"))
    if data.classification or (headline in PROPORTIONS and data.task.headline_percent):
        label = "test accuracy" if data.classification else data.task.headline_label or headline
        ci = ""
        if interval is not None:
            level = f"{round(100 * confidence)}% CI"
            ci = f", {level} [{_pct(interval['low'])}, {_pct(interval['high'])}]"
        return f"{_pct(value)} {label}{ci} ({n} rows)"
    if data.task.target_kind == "values" and data.y.ndim == 1:  # regression
        margin = f" ± {(interval['high'] - interval['low']) / 2:.3f}" if interval else ""
        return f"R² {value:.3f}{margin}, MAE {values['mae']:.4g} ({n} test rows)"
    # one row (a forecast's single test window) resamples to itself: no interval to show
    half = (interval["high"] - interval["low"]) / 2 if interval and n > 1 else None
    return f"{data.task.describe(value, half)} ({n} test {'row' if n == 1 else 'rows'})"


def _confusion_figure(matrix: list[list[int]], classes: list[str]) -> str:
    import numpy as np

    counts = np.asarray(matrix)
    size = min(1.6 + 0.45 * len(classes), 8.0)
    fig, ax = figure(size + 0.8, size)
    image = ax.imshow(counts, cmap="Blues")
    ax.set(
        xlabel="predicted", ylabel="true", xticks=range(len(classes)), yticks=range(len(classes))
    )
    ax.set_xticklabels(classes, rotation=45 if len(classes) > 4 else 0, ha="right")
    ax.set_yticklabels(classes)
    if len(classes) <= 15:
        threshold = counts.max() / 2 if counts.size else 0
        for (i, j), value in np.ndenumerate(counts):
            colour = "white" if value > threshold else "black"
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8, color=colour)
    fig.colorbar(image, ax=ax, fraction=0.046)
    return svg(fig)


def _curves_figure(proba: np.ndarray, y: np.ndarray, classes: list[str], kind: str) -> str:
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    k = proba.shape[1]
    shown = [1] if k == 2 else list(range(min(k, _MAX_CURVES)))
    fig, ax = figure(4.6, 3.6)
    for c in shown:
        truth = (y == c).astype(int)
        if kind == "roc":
            fpr, tpr, _ = roc_curve(truth, proba[:, c])
            ax.plot(fpr, tpr, lw=1.2, label=f"{classes[c]} (AUC {auc(fpr, tpr):.3f})")
        else:
            precision, recall, _ = precision_recall_curve(truth, proba[:, c])
            ax.plot(recall, precision, lw=1.2, label=f"{classes[c]}")
    if kind == "roc":
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
        ax.set(xlabel="false positive rate", ylabel="true positive rate")
    else:
        ax.set(xlabel="recall", ylabel="precision")
    ax.set(xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "lower left")
    return svg(fig)


def _residual_figure(pred: np.ndarray, true: np.ndarray, target: str) -> str:
    fig, (left, right) = figure(8.4, 3.4, ncols=2)
    left.scatter(true, pred, s=8, alpha=0.6)
    low, high = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    left.plot([low, high], [low, high], ls="--", color="grey", lw=0.8)
    left.set(xlabel=f"true {target}", ylabel="predicted", title="predicted vs true")
    right.scatter(pred, true - pred, s=8, alpha=0.6)
    right.axhline(0, ls="--", color="grey", lw=0.8)
    right.set(xlabel="predicted", ylabel="residual (true − predicted)", title="residuals")
    return svg(fig)


def _task_values(data: EvalData) -> dict[str, float]:
    """The task's test metrics (``Task.metrics``): the numbers the train stage reported, so the
    CLI's table and the report agree (log-loss is computed there and only there)."""
    values = data.task.metrics(data.test_outputs, data.y, data.schema)
    return {name: value for name, value in values.items() if isinstance(value, float)}


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def metrics_section(data: EvalData, resamples: int = 1000, confidence: float = 0.95) -> Section:
    """All test metrics; the headline ones with a confidence interval (Wilson for accuracy, a
    percentile bootstrap for the others).

    Example:
        >>> # section = metrics_section(EvalData.from_prepared(model, task, prepared))
    """
    import numpy as np

    section = Section("metrics", "Metrics")
    n = len(data.y)
    section.data["rows"] = n
    if n == 0:
        section.data["skipped"] = "the evaluation data has no rows"
        section.notes.append("The evaluation data has no rows: no metrics.")
        return section
    level = f"{round(100 * confidence)}%"
    if data.classification:
        classes = [str(c) for c in data.schema.classes or ()]
        k = len(classes)
        proba = data.probabilities(data.test_outputs)
        y = data.y.astype(np.int64)
        pred = proba.argmax(axis=1)
        values = {**classification_metrics(proba, y, classes), **_task_values(data)}
        candidates: dict[str, Callable[..., float]] = {
            "accuracy": _accuracy,
            "balanced_accuracy": _balanced_accuracy(k),
            "f1_macro": _f1_macro(k),
            "roc_auc": _roc_auc(k),
            "pr_auc": _pr_auc(k),
        }
        arrays = {
            "accuracy": (y, pred),
            "balanced_accuracy": (y, pred),
            "f1_macro": (y, pred),
            "roc_auc": (y, proba),
            "pr_auc": (y, proba),
        }
        chosen = {m: f for m, f in candidates.items() if m in values}
        section.figures["Confusion matrix"] = _confusion_figure(values["confusion_matrix"], classes)
        if "roc_auc" in values:
            section.figures["ROC curves"] = _curves_figure(proba, y, classes, "roc")
            section.figures["Precision-recall curves"] = _curves_figure(proba, y, classes, "pr")
        else:
            section.notes.append(
                "ROC-AUC and PR-AUC need every class among the evaluation rows; some are absent."
            )
        headline = "accuracy"
    elif data.task.target_kind != "values" or data.y.ndim > 1:  # e.g. forecasts (n, horizon):
        # any other kind of task: its own metrics
        values, chosen, arrays, headline = _task_metrics(data)
    else:
        true = data.task.predict(data.y.astype(np.float64).reshape(-1, 1) * 1.0, data.schema)[
            "prediction"
        ]  # standardized targets back to the target's units
        pred = data.task.predict(data.test_outputs, data.schema)["prediction"]
        values = {**regression_metrics(pred, true), **_task_values(data)}
        chosen = {
            "mae": lambda t, p: float(np.abs(p - t).mean()),
            "rmse": lambda t, p: float(np.sqrt(((p - t) ** 2).mean())),
            "r2": lambda t, p: float(
                1 - ((t - p) ** 2).sum() / max(((t - t.mean()) ** 2).sum(), 1e-12)
            ),
            "mape": lambda t, p: float(
                (np.abs(p - t) / np.maximum(np.abs(t), np.finfo(float).eps)).mean()
            ),
        }
        arrays = {m: (true, pred) for m in chosen}
        section.figures["Predicted vs true, and residuals"] = _residual_figure(
            pred, true, data.schema.target
        )
        headline = "r2"
    section.data["values"] = {k: v for k, v in values.items() if isinstance(v, float)}
    for key in ("per_class", "confusion_matrix"):
        if key in values:
            section.data[key] = values[key]
    if resamples:
        intervals, notes = _intervals(chosen, arrays, resamples, confidence, values, n)
        section.data["intervals"] = intervals
        section.data["bootstrap"] = {"resamples": resamples, "confidence": confidence}
        section.notes.extend(notes)
        section.notes.append(_interval_notes(intervals, level, n, resamples))
    interval = section.data.get("intervals", {}).get(headline)
    section.summary = _headline_summary(data, values, interval, confidence)
    return section


def _task_metrics(
    data: EvalData,
) -> tuple[dict[str, Any], dict[str, Callable[..., float]], dict[str, tuple[Any, ...]], str]:
    """The task's own metrics, and a bootstrap of each metric its baselines table shows.

    Returns (values, metric functions of (outputs, y), their arrays, the headline).
    """
    task, schema = data.task, data.schema
    values = task.metrics(data.test_outputs, data.y, schema)

    def metric(name: str) -> Callable[..., float]:
        return lambda outputs, y: float(task.metric(name, outputs, y, schema))

    names = [m for m in task.report_metrics or (task.headline,) if isinstance(values.get(m), float)]
    chosen = {name: metric(name) for name in names}
    arrays = {name: (data.test_outputs, data.y) for name in names}
    return values, chosen, arrays, task.headline


def add_proportion_intervals(row: dict[str, Any], names: Iterable[str], n: int) -> None:
    """Add to ``row`` each proportion metric's Wilson 95% interval as ``<metric>_ci`` =
    ``[low, high]``, for a value measured on ``n`` rows (a baseline, a group of rows).

    Example:
        >>> row = {"accuracy": 0.75}
        >>> add_proportion_intervals(row, ["accuracy"], 8)
        >>> [round(v, 3) for v in row["accuracy_ci"]]
        [0.409, 0.929]
    """
    for name in names:
        value = row.get(name)
        if name in PROPORTIONS and isinstance(value, float) and n > 0:
            ci = wilson_interval(round(value * n), n)
            row[f"{name}_ci"] = [ci.low, ci.high]
