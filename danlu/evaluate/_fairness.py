"""Fairness: the model's results per group of one column of the raw data (fairlearn).

The group column may be a feature or any other column of the data (one marked ``ignore`` in
``data.features`` included). Classification reports, per group, accuracy, the selection rate of
the positive class, recall and false-positive rate, and across groups the demographic-parity
difference / ratio and the equalized-odds difference; multi-class models are assessed one class
against the rest, keeping the worst class. Regression reports MAE, RMSE and R² per group. A gap
above the recipe's thresholds becomes a flag of the report.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from danlu.errors import DataError
from danlu.evaluate._context import EvalData, Section
from danlu.evaluate._metrics import add_proportion_intervals
from danlu.registry import did_you_mean

if TYPE_CHECKING:
    import pandas as pd

    from danlu.config import FairnessConfig

__all__ = ["fairness_section"]

#: Groups with fewer test rows than this give figures too noisy to act on.
SMALL_GROUP = 30
MISSING = "missing"
#: A numeric column without ``bins`` and more distinct values than this is probably continuous.
_MANY_GROUPS = 20


def _names(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _number(value: float) -> str:
    return f"{value:.4g}"


def _label(value: Any) -> str:
    """A readable group name: ``2.0`` reads ``2``."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _group_column(
    frame: pd.DataFrame, config: FairnessConfig, target: str, notes: list[str]
) -> tuple[pd.Series, list[str]]:
    """Each row's group name, and the groups in display order (``missing`` last)."""
    import pandas as pd

    column = config.group
    columns = [str(c) for c in frame.columns]
    if column == target and column not in columns:
        raise DataError(
            f"evaluate.fairness.group '{column}' is the target; groups must come from another "
            f"column of the data, e.g. {_names(columns, 5)}."
        )
    if column not in columns:
        raise DataError(
            f"evaluate.fairness.group '{column}' is not a column of the evaluation data."
            f"{did_you_mean(column, columns)} The columns are: {_names(columns)}. Set "
            "evaluate.fairness.group to one of them."
        )
    values = frame[column]
    missing = values.isna().to_numpy()
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    labels = np.empty(len(values), dtype=object)
    if config.bins is not None and numeric and (~missing).any():
        present = values[~missing].astype(float)
        _, edges = pd.qcut(present, q=config.bins, retbins=True, duplicates="drop")
        # [low, high) bins, the last one closed: reads naturally and keeps the maximum in.
        index = np.searchsorted(edges[1:-1], present.to_numpy(), side="right")
        names = [
            f"[{_number(lo)}, {_number(hi)}{']' if i == len(edges) - 2 else ')'}"
            for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True))
        ]
        labels[~missing] = [names[i] for i in index]
        order = [names[i] for i in sorted(set(index.tolist()))]
        notes.append(
            f"'{column}' is cut into {len(names)} quantile bins of the evaluation rows"
            + (
                f" ({config.bins} asked; tied values merged some)"
                if len(names) < config.bins
                else ""
            )
            + "."
        )
    else:
        if config.bins is not None and not numeric:
            notes.append(f"bins is ignored: '{column}' is not numeric, its values are the groups.")
        present_values = values[~missing]
        labels[~missing] = [_label(v) for v in present_values]
        unique = list(pd.unique(present_values))
        try:
            unique = sorted(unique)
        except TypeError:  # mixed types: order by name
            unique = sorted(unique, key=str)
        order = list(dict.fromkeys(_label(v) for v in unique))
        if numeric and len(order) > _MANY_GROUPS:
            notes.append(
                f"'{column}' has {len(order)} distinct values, each its own group; set "
                "evaluate.fairness.bins (e.g. 4) to compare quantile bins instead."
            )
    if missing.any():
        labels[missing] = MISSING
        if MISSING not in order:
            order.append(MISSING)
    if len(order) < 2:
        only = f"the single value '{order[0]}'" if order else "no values"
        raise DataError(
            f"evaluate.fairness.group '{column}' has {only} in the {len(values)} evaluation rows, "
            "so there are no groups to compare. Choose another column for "
            "evaluate.fairness.group, or set evaluate.fairness.bins to cut a numeric column into "
            "quantile bins."
        )
    return pd.Series(labels, name=column), order


def _finite(value: Any) -> float | None:
    """A plain float, or None for NaN / infinity (JSON has neither)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import r2_score

    return float(r2_score(y_true, y_pred)) if len(y_true) >= 2 else math.nan


def _recall_macro(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in this group (absent classes have no recall)."""
    return float(np.mean([(y_pred[y_true == k] == k).mean() for k in np.unique(y_true)]))


def _parity(y_true: np.ndarray, y_pred: np.ndarray, groups: pd.Series) -> dict[str, float | None]:
    """Demographic parity (difference, ratio) and equalized odds (difference) of binary 0/1
    labels where 1 is the positive class."""
    from fairlearn.metrics import (
        demographic_parity_difference,
        demographic_parity_ratio,
        equalized_odds_difference,
    )

    with warnings.catch_warnings():  # a group without a selection makes the ratio 0/0: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return {
            "demographic_parity_difference": _finite(
                demographic_parity_difference(y_true, y_pred, sensitive_features=groups)
            ),
            "demographic_parity_ratio": _finite(
                demographic_parity_ratio(y_true, y_pred, sensitive_features=groups)
            ),
            "equalized_odds_difference": _finite(
                equalized_odds_difference(y_true, y_pred, sensitive_features=groups)
            ),
        }


def _classification(
    data: EvalData, groups: pd.Series, result: dict[str, Any], notes: list[str]
) -> tuple[dict[str, Callable[..., float]], np.ndarray, np.ndarray]:
    """Per-group metric functions and (y_true, y_pred); fills the parity figures in ``result``."""
    from fairlearn.metrics import false_positive_rate, selection_rate, true_positive_rate

    y_true = np.asarray(data.y, dtype=np.int64)
    y_pred = data.test_outputs.argmax(axis=1).astype(np.int64)  # (n,) class indices
    classes = list(data.schema.classes or range(data.test_outputs.shape[1]))
    metrics: dict[str, Callable[..., float]] = {
        "count": lambda t, p: float(len(t)),
        "accuracy": lambda t, p: float((t == p).mean()),
    }
    if len(classes) == 2:
        positive = _label(classes[1])
        metrics.update(
            selection_rate=lambda t, p: float(selection_rate(t, p, pos_label=1)),
            recall=lambda t, p: float(true_positive_rate(t, p, pos_label=1)),
            false_positive_rate=lambda t, p: float(false_positive_rate(t, p, pos_label=1)),
        )
        result.update(_parity(y_true, y_pred, groups), positive_class=positive)
        notes.append(
            f"The positive class is '{positive}': selection rate is the share of rows predicted "
            "as it; recall and false-positive rate are relative to it."
        )
        return metrics, y_true, y_pred

    metrics["recall_macro"] = _recall_macro
    per_class = {
        _label(c): _parity((y_true == k) * 1, (y_pred == k) * 1, groups)
        for k, c in enumerate(classes)
    }
    result["per_class"] = per_class
    worst: dict[str, str] = {}
    for key, pick in (
        ("demographic_parity_difference", max),
        ("demographic_parity_ratio", min),
        ("equalized_odds_difference", max),
    ):
        defined: dict[str, float] = {
            c: value for c, v in per_class.items() if (value := v[key]) is not None
        }
        if defined:
            worst[key] = pick(defined, key=defined.__getitem__)
            result[key] = defined[worst[key]]
        else:
            result[key] = None
    result["worst_class"] = worst
    notes.append(
        f"With {len(classes)} classes, parity is measured for each class against the rest; the "
        "worst class is reported (largest difference, smallest ratio)."
    )
    return metrics, y_true, y_pred


def _regression(
    data: EvalData, result: dict[str, Any]
) -> tuple[dict[str, Callable[..., float]], np.ndarray, np.ndarray]:
    from sklearn.metrics import mean_absolute_error, mean_squared_error

    schema = data.schema
    y_pred = data.task.predict(data.test_outputs, schema)["prediction"]  # original units
    y_true = np.asarray(data.y, dtype=np.float64) * (schema.target_std or 1.0) + (
        schema.target_mean or 0.0
    )
    metrics: dict[str, Callable[..., float]] = {
        "count": lambda t, p: float(len(t)),
        "mae": lambda t, p: float(mean_absolute_error(t, p)),
        "rmse": lambda t, p: float(np.sqrt(mean_squared_error(t, p))),
        "r2": _r2,
    }
    result.update(
        demographic_parity_difference=None,
        demographic_parity_ratio=None,
        equalized_odds_difference=None,
    )
    return metrics, y_true, y_pred


def _by_task(
    data: EvalData, result: dict[str, Any], notes: list[str]
) -> tuple[dict[str, Callable[..., float]], np.ndarray, np.ndarray]:
    """Any other kind of task: each group's figures are the task's own report metrics,
    computed on the group's rows (y_pred holds the model's raw outputs)."""
    task, schema = data.task, data.schema

    def metric(name: str) -> Callable[..., float]:
        return lambda t, p: float(task.metric(name, p, t, schema))

    names = list(dict.fromkeys([task.headline, *task.report_metrics]))
    metrics: dict[str, Callable[..., float]] = {"count": lambda t, p: float(len(t))}
    metrics.update({name: metric(name) for name in names})
    result.update(
        demographic_parity_difference=None,
        demographic_parity_ratio=None,
        equalized_odds_difference=None,
    )
    notes.append(
        f"Parity figures are defined for single-label classes; for the {task.name} task the "
        f"groups are compared on {task.headline_label or task.headline}."
    )
    return metrics, np.asarray(data.y), np.asarray(data.test_outputs)


def _figure(rows: list[dict[str, Any]], headline: str, overall: float | None, column: str) -> str:
    from danlu.evaluate._plots import figure, svg

    fig, ax = figure(max(4.0, 0.6 * len(rows) + 2.0), 3.4)
    names = [str(r["group"]) for r in rows]
    values = [r[headline] if r[headline] is not None else 0.0 for r in rows]
    colors = ["tab:red" if r["count"] < SMALL_GROUP else "tab:blue" for r in rows]
    bars = ax.bar(range(len(rows)), values, color=colors, alpha=0.8)
    for bar, row in zip(bars, rows, strict=True):
        text = f"n={row['count']}" + ("" if row[headline] is not None else "\nundefined")
        ax.annotate(
            text,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    if overall is not None:
        ax.axhline(
            overall, color="grey", linestyle="--", linewidth=1, label=f"all rows {overall:.3f}"
        )
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(
        names, rotation=30 if len(rows) > 4 else 0, ha="right" if len(rows) > 4 else "center"
    )
    ax.set_xlabel(column)
    ax.set_ylabel(headline)
    if any(r["count"] < SMALL_GROUP for r in rows):
        ax.set_title(f"red: groups of fewer than {SMALL_GROUP} rows (unreliable)", fontsize=8)
    if headline == "accuracy":
        ax.set_ylim(0, 1.1)
    else:
        ax.margins(y=0.15)
    return svg(fig)


def fairness_section(data: EvalData, config: FairnessConfig) -> Section:
    """Per-group metrics and parity gaps across the values of one column of the raw data.

    Args:
        data: the model and its evaluation rows (``data.frame`` holds the group column).
        config: the recipe's ``evaluate.fairness`` block.

    Returns:
        Section ``fairness``: ``groups`` (per-group ``count`` and metrics), the parity figures
        (None for regression), ``headline_gap``, ``thresholds`` and ``within_thresholds``; a flag
        for each figure beyond its threshold.

    Raises:
        DataError: the column is absent, or holds a single group in the evaluation rows.

    Example:
        >>> from danlu.config import FairnessConfig
        >>> section = fairness_section(data, FairnessConfig(group="sex"))  # doctest: +SKIP
        >>> section.summary  # doctest: +SKIP
        'fairness within thresholds across sex'
    """
    from fairlearn.metrics import MetricFrame

    column = config.group
    if len(data.frame) != len(data.y):
        raise ValueError(
            f"data.frame has {len(data.frame)} rows but the evaluation rows are {len(data.y)}; "
            "they must be the same rows, in the same order."
        )
    notes: list[str] = []
    groups, order = _group_column(data.frame, config, data.schema.target, notes)
    result: dict[str, Any] = {"group": column}
    if data.classification:
        metrics, y_true, y_pred = _classification(data, groups, result, notes)
    elif data.task.target_kind == "values":
        metrics, y_true, y_pred = _regression(data, result)
    else:
        metrics, y_true, y_pred = _by_task(data, result, notes)
    headline = data.task.headline

    metric_frame = MetricFrame(
        metrics=metrics, y_true=y_true, y_pred=y_pred, sensitive_features=groups
    )
    by_group = metric_frame.by_group
    rows: list[dict[str, Any]] = []
    for name in order:
        values = by_group.loc[name]
        row: dict[str, Any] = {"group": name, "count": int(values["count"])}
        row.update({m: _finite(values[m]) for m in metrics if m != "count"})
        add_proportion_intervals(row, metrics, row["count"])  # small groups: wide intervals
        rows.append(row)
    overall = {m: _finite(v) for m, v in metric_frame.overall.items() if m != "count"}
    scores = [r[headline] for r in rows if r[headline] is not None]
    gap = max(scores) - min(scores) if len(scores) >= 2 else None
    result.update(
        groups=rows,
        overall=overall,
        headline=headline,
        headline_gap=gap,
        thresholds={"difference": config.threshold, "ratio": config.ratio_threshold},
    )

    # Every figure beyond its threshold: (short phrase for the summary, sentence for the flag).
    breaches: list[tuple[str, str]] = []
    worst = result.get("worst_class", {})

    def of_class(key: str) -> str:
        return f" (class '{worst[key]}' against the rest)" if key in worst else ""

    for key, name in (
        ("demographic_parity_difference", "demographic-parity difference"),
        ("equalized_odds_difference", "equalized-odds difference"),
    ):
        value = result[key]
        if value is not None and value > config.threshold:
            breaches.append(
                (
                    f"{name} {value:.2f} > {config.threshold:.2f}",
                    f"The {name} across '{column}' is {value:.3f}{of_class(key)}, above the "
                    f"threshold {config.threshold:.2f}.",
                )
            )
    ratio = result["demographic_parity_ratio"]
    if ratio is not None and ratio < config.ratio_threshold:
        key = "demographic_parity_ratio"
        breaches.append(
            (
                f"demographic-parity ratio {ratio:.2f} < {config.ratio_threshold:.2f}",
                f"The demographic-parity ratio across '{column}' is {ratio:.3f}{of_class(key)}, "
                f"below the threshold {config.ratio_threshold:.2f}.",
            )
        )
    if gap is not None and gap > config.threshold:
        best = max((r for r in rows if r[headline] is not None), key=lambda r: r[headline])
        low = min((r for r in rows if r[headline] is not None), key=lambda r: r[headline])
        breaches.append(
            (
                f"{headline} gap {gap:.2f} > {config.threshold:.2f}",
                f"The {headline} gap across '{column}' is {gap:.3f}, above the threshold "
                f"{config.threshold:.2f}: {best[headline]:.3f} for '{best['group']}' against "
                f"{low[headline]:.3f} for '{low['group']}'.",
            )
        )
    result["within_thresholds"] = not breaches

    small = [f"'{r['group']}' ({r['count']} rows)" for r in rows if r["count"] < SMALL_GROUP]
    if small:
        notes.append(
            f"Groups with fewer than {SMALL_GROUP} evaluation rows give unreliable figures: "
            f"{', '.join(small)}."
        )
    undefined = [r["group"] for r in rows if r[headline] is None]
    if undefined:
        notes.append(
            f"{headline} is undefined for {_names(undefined)} (fewer than 2 rows); the gap "
            "leaves them out."
        )
    notes.append(
        "Per-group figures computed with fairlearn's MetricFrame; differences are between the "
        "best and the worst group."
    )

    section = Section(key="fairness", title="Fairness", data=result, notes=notes)
    section.flags = [sentence for _, sentence in breaches]
    if breaches:
        section.summary = f"fairness: {', '.join(p for p, _ in breaches)} across {column}"
    else:
        section.summary = f"fairness within thresholds across {column}"
    section.figures[f"{headline} per group of '{column}'"] = _figure(
        rows, headline, overall.get(headline), column
    )
    return section
