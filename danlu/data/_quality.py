"""The data quality report: what a dataset holds and what in it needs attention before training.

:func:`quality_report` describes the rows (size, duplicates), every column (kind, missing values,
distinct values, ranges, outliers, top categories, constant columns), the target (class balance,
per-label frequency for label sets, or distribution), leakage suspects (a feature that copies or perfectly predicts the target, test rows
that also appear in training) and the shift of each feature between the train and test splits
(PSI and the Kolmogorov-Smirnov test). It ends with ``warnings``: one sentence per problem.

Everything is plain JSON types, so the report is logged with every run (``data_quality.json``) and
embedded in reports (:func:`quality_html`). It is vectorised: digits (1,797 x 65) takes a few
hundredths of a second.
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from danlu.data._schema import category_str, infer_kinds
from danlu.data._target import TaskLike, TaskRef, resolve_task, target_codec
from danlu.data._values import preview

__all__ = ["PSI_THRESHOLD", "quality_html", "quality_report"]

PSI_THRESHOLD = 0.2  # PSI above this: the feature's distribution moved between train and test
NEAR_CONSTANT = 0.99  # one value in at least this share of rows
MISSING_WARN = 0.2  # warn when a column misses more than this share of values
OUTLIER_WARN = 0.02  # warn when more than this share of a column's values are z-score outliers
IMBALANCE_WARN = 3.0  # warn when the largest class has this many times the rows of the smallest
RARE_LABEL_ROWS = 5  # label sets: warn about a label held by fewer rows than this
LEAK_MIN_ROWS = 30  # below this, "perfectly predicts" is too often luck to warn about
LEAK_ROWS_PER_VALUE = 10  # a value -> target mapping counts only with this many rows per value
PSI_BINS = 10
SHIFT_PVALUE = 0.01  # ... and only when that is unlikely to be the noise of small samples
TOP_CATEGORIES = 5
_EPS = 1e-4  # PSI smoothing: an empty bin counts as this share, so the logarithm stays finite


def _num(value: Any, digits: int = 6) -> float | None:
    """A finite float rounded to ``digits`` significant digits, or None (NaN, infinite)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def _pct(count: int | float, total: int) -> float:
    return round(100.0 * float(count) / total, 2) if total else 0.0


def _numbers(column: pd.Series) -> np.ndarray:
    """float64 values with NaN for missing (and for anything that is not a number)."""
    if pd.api.types.is_bool_dtype(column.dtype):
        return column.astype("float64").to_numpy(dtype="float64", na_value=np.nan)
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    return np.where(np.isinf(values), np.nan, values)


def _labels(column: pd.Series) -> np.ndarray:
    """Values as strings (``3.0`` and ``3`` alike), None for missing: comparable across types."""
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    names = np.array([category_str(u) for u in uniques] + [None], dtype=object)
    return names[codes]  # code -1 (missing) picks the trailing None


def _codes(values: np.ndarray | pd.Series) -> np.ndarray:
    """Integer codes of the values, -1 for missing."""
    return pd.factorize(pd.Series(values), use_na_sentinel=True)[0]


def _deterministic(x: np.ndarray, y: np.ndarray) -> bool:
    """Every value of code array ``x`` (>= 0) goes with one value of code array ``y``."""
    keep = (x >= 0) & (y >= 0)
    x, y = x[keep].astype(np.int64), y[keep].astype(np.int64)
    if x.size == 0:
        return False
    pairs = np.unique(x * (int(y.max()) + 1) + y)
    return pairs.size == np.unique(x).size


def _safe_duplicates(frame: pd.DataFrame) -> np.ndarray | None:
    try:
        return frame.duplicated().to_numpy()
    except TypeError:  # unhashable cells (lists read from JSON Lines)
        return None


def _row_hashes(frame: pd.DataFrame) -> np.ndarray | None:
    try:
        return pd.util.hash_pandas_object(frame, index=False).to_numpy()
    except TypeError:
        return None


# -- per column ---------------------------------------------------------------------------------
def _numeric_stats(values: np.ndarray) -> dict[str, Any]:
    present = values[~np.isnan(values)]
    if present.size == 0:
        return {"min": None, "max": None, "mean": None, "std": None, "outliers": None}
    mean, std = float(present.mean()), float(present.std())
    q1, q3 = np.percentile(present, [25, 75])
    spread = float(q3 - q1)
    zscore = int((np.abs(present - mean) > 3.0 * std).sum()) if std > 0 else 0
    iqr = (
        int(((present < q1 - 1.5 * spread) | (present > q3 + 1.5 * spread)).sum()) if spread else 0
    )
    return {
        "min": _num(present.min()),
        "max": _num(present.max()),
        "mean": _num(mean),
        "std": _num(std),
        "outliers": {"zscore": zscore, "iqr": iqr},
    }


def _is_id_like(column: pd.Series, values: np.ndarray | None, distinct: int, rows: int) -> bool:
    """Every row holds its own integer or text value: an id, not a measurement."""
    if rows < 20 or distinct < rows:
        return False
    if values is None:  # categorical / text
        return True
    present = values[~np.isnan(values)]
    return bool(present.size == rows and np.all(present == np.floor(present)))


def _column(
    name: str,
    column: pd.Series,
    kind: str,
    is_feature: bool,
    values: np.ndarray | None,
) -> dict[str, Any]:
    rows = len(column)
    missing = int(column.isna().sum())
    counts = column.value_counts(dropna=False)
    distinct = int(column.nunique(dropna=True))
    top_share = float(counts.iloc[0]) / rows if rows and len(counts) else 0.0
    info: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "feature": is_feature,
        "dtype": str(column.dtype),
        "missing": missing,
        "missing_percent": _pct(missing, rows),
        "distinct": distinct,
        "top_share": round(top_share, 4),
        "constant": len(counts) <= 1,
        "near_constant": len(counts) > 1 and top_share >= NEAR_CONSTANT,
        "id_like": _is_id_like(column, values, distinct, rows),
    }
    if values is not None:
        info.update(_numeric_stats(values))
    else:
        top = counts[counts.index.notna()].head(TOP_CATEGORIES)
        info["top"] = [
            {"value": category_str(v), "count": int(c), "percent": _pct(int(c), rows)}
            for v, c in top.items()
        ]
    info["shift"] = None
    info["flags"] = []
    return info


# -- target -------------------------------------------------------------------------------------
def _label_sets_target(column: pd.Series, info: dict[str, Any]) -> dict[str, Any]:
    """Per-label frequency of a label-set target (cells are tuples), and rows with no label."""
    rows = len(column)
    sizes = np.fromiter((len(labels) for labels in column), np.int64, rows)
    counts = pd.Series([str(label) for labels in column for label in labels]).value_counts()
    counts = counts.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
    info["labels"] = [
        {"label": str(k), "count": int(c), "percent": _pct(int(c), rows)} for k, c in counts.items()
    ]
    no_label = int((sizes == 0).sum())
    info["no_label_rows"] = no_label
    info["no_label_percent"] = _pct(no_label, rows)
    info["labels_per_row"] = _num(sizes.mean(), 4) if rows else None
    return info


def _target(column: pd.Series, task: TaskRef) -> dict[str, Any]:
    rows = len(column)
    info: dict[str, Any] = {
        "name": str(column.name),
        "task": task.name,
        "target_kind": task.target_kind,
        "missing": int(column.isna().sum()),
    }
    if task.target_kind == "label_sets":
        return _label_sets_target(column, info)
    if task.target_kind == "classes":
        counts = pd.Series(_labels(column)).value_counts(dropna=True)
        info["classes"] = [
            {"label": str(k), "count": int(c), "percent": _pct(int(c), rows)}
            for k, c in counts.items()
        ]
        info["imbalance_ratio"] = (
            _num(counts.iloc[0] / counts.iloc[-1], 4) if len(counts) and counts.iloc[-1] else None
        )
        return info
    values = _numbers(column)
    present = values[~np.isnan(values)]
    if present.size == 0:
        return info
    series = pd.Series(present)
    q1, median, q3 = np.percentile(present, [25, 50, 75])
    info.update(
        {
            "min": _num(present.min()),
            "max": _num(present.max()),
            "mean": _num(present.mean()),
            "std": _num(present.std()),
            "q1": _num(q1),
            "median": _num(median),
            "q3": _num(q3),
            "skew": _num(series.skew(), 4) if present.size > 2 else None,
        }
    )
    return info


# -- leakage ------------------------------------------------------------------------------------
#: Rows used for the estimated statistics (leakage tests, PSI/KS shift) of larger data: a seeded
#: sample estimates them well; counts, duplicates, min/max and distinct values stay exact.
STAT_SAMPLE = 200_000


def _sample(rows: np.ndarray, size: int = STAT_SAMPLE, seed: int = 0) -> np.ndarray:
    """``rows`` itself when small enough, else a seeded sorted sample of ``size`` of them."""
    if len(rows) <= size:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size, replace=False))


def _threshold_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """Best accuracy of one cut ``x <= t`` between two classes (``y`` is 0/1), either way round."""
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    cum = np.cumsum(ys)
    cuts = np.flatnonzero(xs[1:] != xs[:-1])  # cut after position i, never between ties
    if cuts.size == 0:
        return 0.0
    n, ones = len(xs), cum[-1]
    left = cuts + 1
    # left side predicted 0, right side predicted 1: correct = left zeros + right ones
    accuracy = ((left - cum[cuts]) + (ones - cum[cuts])) / n
    return float(np.max(np.maximum(accuracy, 1.0 - accuracy)))


def _orders_classes(x: np.ndarray, y: np.ndarray) -> bool:
    """Sorted by ``x``, every class of code array ``y`` forms one block and no tie mixes classes."""
    if not _deterministic(_codes(x), y):
        return False
    ys = y[np.argsort(x, kind="stable")]
    return int((ys[1:] != ys[:-1]).sum()) == np.unique(y).size - 1


def _leak_reason(
    info: Mapping[str, Any],
    column: pd.Series,
    values: np.ndarray | None,
    target: pd.Series,
    target_codes: np.ndarray,
    kind: str,
) -> str | None:
    """Why a feature gives the target away, or None (``kind``: the target kind)."""
    rows = len(column)
    if info["constant"] or rows < 2:
        return None
    if kind == "values":
        y = _numbers(target)
        if values is not None:
            both = ~np.isnan(values) & ~np.isnan(y)
            if both.all() and np.array_equal(values, y):
                return "it is identical to the target"
            if rows >= LEAK_MIN_ROWS and not info["id_like"] and both.sum() >= LEAK_MIN_ROWS:
                with np.errstate(invalid="ignore", divide="ignore"):
                    r = np.corrcoef(values[both], y[both])[0, 1]
                if np.isfinite(r) and abs(r) >= 0.999:
                    return f"it predicts the target almost exactly (correlation {r:.4f})"
    elif info["missing"] == 0 and info["distinct"] == np.unique(target_codes).size:
        if np.array_equal(_labels(column), _labels(target)):
            return "it is identical to the target"
    if rows < LEAK_MIN_ROWS or info["id_like"]:
        return None
    distinct = int(info["distinct"])
    if 2 <= distinct and rows / distinct >= LEAK_ROWS_PER_VALUE:
        codes = _codes(values) if values is not None else _codes(_labels(column))
        if _deterministic(codes, target_codes):
            return (
                f"each of its {distinct} values maps to a single target value "
                f"({rows / distinct:.0f} rows per value on average)"
            )
    if kind == "classes" and values is not None:
        present = ~np.isnan(values) & (target_codes >= 0)
        if present.sum() < LEAK_MIN_ROWS:
            return None
        x, y = values[present], target_codes[present]
        n_classes = np.unique(y).size
        if n_classes == 2:
            accuracy = _threshold_accuracy(x, (y == y.max()).astype(np.int64))
            if accuracy >= 0.99:
                return f"a single threshold on it separates the classes ({accuracy:.1%} accuracy)"
        elif n_classes > 2 and _orders_classes(x, y):
            return "thresholds on it alone separate every class perfectly"
    return None


# -- shift --------------------------------------------------------------------------------------
def _psi(expected: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """Population stability index of bin counts ``actual`` against ``expected``, and its p-value.

    Counts are smoothed by half a row per bin (an empty bin must not make the logarithm infinite
    nor dominate the sum). PSI is the symmetric Kullback-Leibler divergence, so under "no shift"
    ``PSI / (1/n1 + 1/n2)`` is roughly chi-square with ``bins - 1`` degrees of freedom: the p-value
    tells a real shift from the noise of small samples.
    """
    from scipy.stats import chi2

    n1, n2 = float(expected.sum()), float(actual.sum())
    p = (expected + 0.5) / (n1 + 0.5 * len(expected))
    q = (actual + 0.5) / (n2 + 0.5 * len(actual))
    psi = float(np.sum((q - p) * np.log(q / p)))
    dof = max(len(expected) - 1, 1)
    return psi, float(chi2.sf(psi / (1.0 / n1 + 1.0 / n2), dof))


def _shift(psi: float, pvalue: float, ks: Any = None) -> dict[str, Any]:
    return {
        "psi": _num(psi, 4),
        "psi_pvalue": _num(pvalue, 4),
        "ks": None if ks is None else _num(ks.statistic, 4),
        "ks_pvalue": None if ks is None else _num(ks.pvalue, 4),
        # a shift must be large (PSI) and more than the noise of the sample sizes (both tests)
        "shifted": psi > PSI_THRESHOLD
        and pvalue < SHIFT_PVALUE
        and (ks is None or ks.pvalue < SHIFT_PVALUE),
    }


def _numeric_shift(train: np.ndarray, test: np.ndarray) -> dict[str, Any] | None:
    from scipy.stats import ks_2samp

    train, test = train[~np.isnan(train)], test[~np.isnan(test)]
    if train.size == 0 or test.size == 0:
        return None
    # at least 20 rows of the smaller split per bin, 2 to 10 bins
    bins = int(np.clip(min(train.size, test.size) // 20, 2, PSI_BINS))
    if len(np.unique(train)) > bins:
        # inner quantile edges of train: equally filled bins
        edges = np.unique(np.quantile(train, np.linspace(0, 1, bins + 1)[1:-1]))
        n = len(edges) + 1
        expected = np.bincount(np.searchsorted(edges, train, side="right"), minlength=n)
        actual = np.bincount(np.searchsorted(edges, test, side="right"), minlength=n)
        psi, pvalue = _psi(expected, actual)
    else:  # few distinct values: each value is its own bin
        psi, pvalue = _categorical_psi(train.astype(str), test.astype(str))
    with warnings.catch_warnings():  # "exact calculation unsuccessful, switching to asymp"
        warnings.simplefilter("ignore", RuntimeWarning)
        ks = ks_2samp(train, test, method="asymp")
    return _shift(psi, pvalue, ks)


def _categorical_psi(train: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    train_counts = pd.Series(train).value_counts()
    test_counts = pd.Series(test).value_counts()
    categories = train_counts.index.union(test_counts.index)
    expected = train_counts.reindex(categories, fill_value=0).to_numpy(dtype="float64")
    actual = test_counts.reindex(categories, fill_value=0).to_numpy(dtype="float64")
    return _psi(expected, actual)


def _categorical_shift(train: np.ndarray, test: np.ndarray) -> dict[str, Any] | None:
    train = train[pd.notna(train)].astype(str)
    test = test[pd.notna(test)].astype(str)
    if train.size == 0 or test.size == 0:
        return None
    return _shift(*_categorical_psi(train, test))


# -- warnings -----------------------------------------------------------------------------------
def _names(columns: Sequence[Mapping[str, Any]]) -> list[str]:
    return [str(c["name"]) for c in columns]


def _warnings(report: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(notes, alerts): alerts threaten the model's validity (leakage, test rows seen in
    training, train/test shift); notes describe the data (constant columns, outliers ...)."""
    found: list[str] = []
    alerts: list[str] = []
    rows = report["rows"]
    dup = report["duplicates"]
    if dup["rows"]:
        found.append(
            f"{dup['rows']} rows ({dup['percent']}%) are exact duplicates of earlier rows; "
            "data.prepare.dedupe (on by default) drops them before the split."
        )
    columns = report["details"]
    constant = [c for c in columns if c["constant"]]
    if constant:
        found.append(
            f"{len(constant)} column(s) hold a single value and carry no information: "
            f"{preview(_names(constant), 10)}. Set data.features: {{NAME: ignore}} to drop them."
        )
    near = [c for c in columns if c["near_constant"]]
    if near:
        found.append(
            f"{len(near)} column(s) hold one value in at least {NEAR_CONSTANT:.0%} of rows: "
            f"{preview(_names(near), 10)}. They carry little information."
        )
    for c in columns:
        if c["missing"] and c["missing"] > MISSING_WARN * rows:
            found.append(
                f"Column '{c['name']}' misses {c['missing_percent']}% of its values; check the "
                "source, or choose data.prepare.missing deliberately."
            )
        if c["id_like"] and c["feature"]:
            found.append(
                f"Column '{c['name']}' holds a different value in every row and looks like an id; "
                f"set data.features: {{{c['name']}: ignore}} unless it carries signal."
            )
    outlying = [
        c for c in columns if c.get("outliers") and c["outliers"]["zscore"] > OUTLIER_WARN * rows
    ]
    if outlying:
        found.append(
            f"{len(outlying)} column(s) have more than {OUTLIER_WARN:.0%} of values beyond 3 "
            f"standard deviations: {preview(_names(outlying), 10)}. Consider "
            "data.prepare.outliers or scale: robust."
        )
    target = report["target"]
    ratio = target.get("imbalance_ratio")
    if ratio is not None and ratio >= IMBALANCE_WARN:
        classes = target["classes"]
        found.append(
            f"The classes are imbalanced: '{classes[0]['label']}' has {ratio:g}x the rows of "
            f"'{classes[-1]['label']}' ({classes[-1]['count']} rows). Consider data.imbalance "
            "(class_weight, oversample, smote) and per-class metrics."
        )
    rare = [k for k in target.get("labels", []) if k["count"] < RARE_LABEL_ROWS]
    if rare:
        found.append(
            f"{len(rare)} label(s) are held by fewer than {RARE_LABEL_ROWS} rows: "
            f"{preview([k['label'] for k in rare], 10)}. Too few rows to learn or test them; add "
            "rows or merge rare labels."
        )
    skew = target.get("skew")
    if skew is not None and abs(skew) > 2:
        found.append(
            f"The target is strongly skewed (skewness {skew:g}); consider a log transform or a "
            "robust metric."
        )
    for leak in report["leakage"]:
        alerts.append(
            f"Possible target leakage: feature '{leak['column']}' - {leak['reason']}. A feature "
            f"the model will not have at prediction time must be dropped: data.features: "
            f"{{{leak['column']}: ignore}}."
        )
    split = report["split"]
    if split and split["shared_rows"]:
        alerts.append(
            f"{split['shared_rows']} test row(s) ({split['shared_percent']}% of the test split) "
            "have the same features as a training row, so the test score is optimistic. Remove "
            "the copies from the data."
        )
    shifted = [c for c in columns if c["shift"] and c["shift"]["shifted"]]
    if shifted:
        shown = ", ".join(f"'{c['name']}' (PSI {c['shift']['psi']:g})" for c in shifted[:10]) + (
            f" and {len(shifted) - 10} more" if len(shifted) > 10 else ""
        )
        alerts.append(
            f"{len(shifted)} feature(s) are distributed differently in train and test "
            f"(PSI > {PSI_THRESHOLD}): {shown}. Check how rows were collected, or change "
            "data.split.seed."
        )
    return found, alerts


# -- the report ---------------------------------------------------------------------------------
def quality_report(
    frame: pd.DataFrame,
    target: str,
    task: str | TaskLike,
    *,
    train_idx: Sequence[int] | np.ndarray | None = None,
    test_idx: Sequence[int] | np.ndarray | None = None,
    features: Sequence[str] | None = None,
    kinds: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Describe ``frame`` and list what needs attention before training on it.

    Args:
        frame: the rows, target included.
        target: the target column.
        task: ``classification``, ``regression``, or a task object with ``name`` and
            ``target_kind``; the kind decides how the target is described (class balance,
            per-label frequency and rows with no label, or distribution) and checked for leakage.
        train_idx: row positions of the training split (with ``test_idx``: leakage across the
            splits and shift between them).
        test_idx: row positions of the test split.
        features: the columns the model uses (default: every column whose kind is not ignore).
        kinds: column -> kind (default: inferred with ``infer_kinds``).

    Returns:
        Plain JSON types: ``rows``, ``columns``, ``duplicates``, ``details`` (one entry per
        column), ``target``, ``leakage``, ``split`` (None without indices) and ``warnings``.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"x": range(40), "c": [1] * 40, "y": [0, 1] * 20})
        >>> r = quality_report(df, "y", "classification")
        >>> r["rows"], [c["name"] for c in r["details"] if c["constant"]]
        (40, ['c'])
    """
    rows = len(frame)
    ref = resolve_task(task)
    kinds = dict(kinds) if kinds is not None else infer_kinds(frame, target, ref)
    columns = [str(c) for c in frame.columns if str(c) != target]
    if features is None:
        features = [c for c in columns if kinds.get(c, "ignore") != "ignore"]
    feature_set = set(features)

    duplicated = _safe_duplicates(frame)
    n_dup = int(duplicated.sum()) if duplicated is not None else 0
    target_column = target_codec(ref.target_kind).normalize(frame[target], target)
    target_codes = _codes(_labels(target_column))

    split: dict[str, Any] | None = None
    train = test = None
    if train_idx is not None and test_idx is not None:
        train, test = np.asarray(train_idx, dtype=np.int64), np.asarray(test_idx, dtype=np.int64)
        split = {"train": len(train), "test": len(test), "shared_rows": 0, "shared_percent": 0.0}
        hashes = _row_hashes(frame[list(features)]) if features else None
        if hashes is not None and len(test):
            shared = int(np.isin(hashes[test], hashes[train]).sum())
            split.update(shared_rows=shared, shared_percent=_pct(shared, len(test)))

    # Estimates run on a seeded sample of large data (exact below STAT_SAMPLE rows).
    leak_rows = _sample(np.arange(len(frame)))
    sampled = len(leak_rows) < len(frame)
    target_sample = target_column.iloc[leak_rows] if sampled else target_column
    codes_sample = target_codes[leak_rows] if sampled else target_codes
    if train is not None and test is not None:
        shift_train, shift_test = _sample(train, seed=1), _sample(test, seed=2)
    details: list[dict[str, Any]] = []
    leakage: list[dict[str, str]] = []
    for name in columns:
        column = frame[name]
        kind = kinds.get(name, "ignore")
        values = _numbers(column) if kind == "numeric" else None
        info = _column(name, column, kind, name in feature_set, values)
        if name in feature_set:
            reason = _leak_reason(
                info,
                column.iloc[leak_rows] if sampled else column,
                values[leak_rows] if sampled and values is not None else values,
                target_sample,
                codes_sample,
                ref.target_kind,
            )
            if reason is not None:
                leakage.append({"column": name, "reason": reason})
                info["flags"].append("leakage")
            if train is not None and test is not None and len(train) and len(test):
                if values is not None:
                    info["shift"] = _numeric_shift(values[shift_train], values[shift_test])
                else:
                    labels = _labels(column)
                    info["shift"] = _categorical_shift(labels[shift_train], labels[shift_test])
                if info["shift"] and info["shift"]["shifted"]:
                    info["flags"].append("shift")
        for flag in ("constant", "near_constant", "id_like"):
            if info[flag]:
                info["flags"].append(flag.replace("_", "-"))
        if info["missing"] > MISSING_WARN * rows:
            info["flags"].append("missing")
        details.append(info)

    report: dict[str, Any] = {
        "rows": rows,
        # rows behind the leakage and shift estimates (all rows up to STAT_SAMPLE)
        "estimate_rows": len(leak_rows),
        "columns": frame.shape[1],
        "features": len(features),
        "target": _target(target_column, ref),
        "duplicates": {"rows": n_dup, "percent": _pct(n_dup, rows)},
        "details": details,
        "leakage": leakage,
        "split": split,
    }
    notes, alerts = _warnings(report)
    report["warnings"] = [*notes, *alerts]
    report["alerts"] = alerts
    return report


# -- HTML ---------------------------------------------------------------------------------------
_CSS = """
.danlu-quality{font-family:system-ui,-apple-system,sans-serif;font-size:14px;color:#1f2328}
.danlu-quality h2{font-size:1.3em;margin:.6em 0 .3em}
.danlu-quality h3{font-size:1.05em;margin:.9em 0 .3em}
.danlu-quality table{border-collapse:collapse;margin:.3em 0}
.danlu-quality th,.danlu-quality td{border-bottom:1px solid #d0d7de;padding:2px 8px;text-align:left;vertical-align:top}
.danlu-quality th{background:#f6f8fa}
.danlu-quality td.num{text-align:right;font-variant-numeric:tabular-nums}
.danlu-quality .dq-warnings li{color:#9a6700}
.danlu-quality .dq-ok{color:#1a7f37}
.danlu-quality .dq-flag{background:#fff8c5;border:1px solid #d4a72c;border-radius:4px;padding:0 4px;margin-right:3px;font-size:.85em}
.danlu-quality .dq-bar{display:inline-block;height:.8em;background:#54aeff;vertical-align:middle}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _summary(c: Mapping[str, Any]) -> str:
    """Range and mean of a numeric column, or its top categories."""
    if "mean" in c:
        return (
            f"{_fmt(c['min'])} .. {_fmt(c['max'])} (mean {_fmt(c['mean'])}, std {_fmt(c['std'])})"
        )
    return ", ".join(f"{t['value']} ({t['count']})" for t in c.get("top", []))


def _html_columns(details: Sequence[Mapping[str, Any]]) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in ("column", "kind", "missing %", "distinct", "values", "outliers z / IQR",
                  "PSI", "KS (p)", "flags")
    )  # fmt: skip
    body = []
    for c in details:
        outliers = c.get("outliers")
        shift = c.get("shift") or {}
        ks = (
            f"{_fmt(shift.get('ks'))} ({_fmt(shift.get('ks_pvalue'))})"
            if shift.get("ks") is not None
            else "-"
        )
        flags = "".join(f'<span class="dq-flag">{_e(f)}</span>' for f in c["flags"])
        zscore_iqr = f"{outliers['zscore']} / {outliers['iqr']}" if outliers else "-"
        cells = [
            f"<td>{_e(c['name'])}</td>",
            f"<td>{_e(c['kind'])}</td>",
            f'<td class="num">{c["missing_percent"]:g}</td>',
            f'<td class="num">{c["distinct"]}</td>',
            f"<td>{_e(_summary(c))}</td>",
            f'<td class="num">{_e(zscore_iqr)}</td>',
            f'<td class="num">{_e(_fmt(shift.get("psi")))}</td>',
            f'<td class="num">{_e(ks)}</td>',
            f"<td>{flags}</td>",
        ]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="dq-columns"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _html_shares(entries: Sequence[Mapping[str, Any]], what: str) -> str:
    """A table of classes or labels: rows, share, and a bar of the share."""
    rows = "".join(
        f'<tr><td>{_e(k["label"])}</td><td class="num">{k["count"]}</td>'
        f'<td class="num">{k["percent"]:g}%</td>'
        f'<td><span class="dq-bar" style="width:{max(1, round(k["percent"] * 2))}px">'
        "</span></td></tr>"
        for k in entries
    )
    return (
        f'<table class="dq-target"><thead><tr><th>{what}</th><th>rows</th><th>share</th>'
        f"<th></th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _html_target(target: Mapping[str, Any]) -> str:
    if "labels" in target:
        return (
            f"<p>Rows with no label: {target['no_label_rows']} "
            f"({target['no_label_percent']:g}%); labels per row: "
            f"{_e(_fmt(target.get('labels_per_row')))}</p>"
            + _html_shares(target["labels"], "label")
        )
    if "classes" in target:
        ratio = target.get("imbalance_ratio")
        return (
            f"<p>Imbalance ratio (largest / smallest class): {_e(_fmt(ratio))}</p>"
            + _html_shares(target["classes"], "class")
        )
    keys = ("min", "q1", "median", "mean", "q3", "max", "std", "skew")
    head = "".join(f"<th>{k}</th>" for k in keys)
    cells = "".join(f'<td class="num">{_e(_fmt(target.get(k)))}</td>' for k in keys)
    return f'<table class="dq-target"><thead><tr>{head}</tr></thead><tbody><tr>{cells}</tr></tbody></table>'


def quality_html(report: Mapping[str, Any], *, page: bool = False) -> str:
    """The report as an HTML ``<section>`` (scoped CSS, no external assets, all text escaped).

    Args:
        report: :func:`quality_report`'s output.
        page: wrap the section in a complete HTML document (for a standalone file).

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"x": range(40), "y": [0, 1] * 20})
        >>> quality_html(quality_report(df, "y", "classification")).startswith("<section")
        True
    """
    dup = report["duplicates"]
    split = report.get("split")
    overview = (
        f"{report['rows']} rows x {report['columns']} columns ({report.get('features', '?')} "
        f"features), {dup['rows']} duplicate rows ({dup['percent']:g}%)"
    )
    if split:
        overview += (
            f"; train {split['train']} / test {split['test']} rows, {split['shared_rows']} test "
            "rows also in train"
        )
    source = report.get("source")
    title = f"Data quality: {source}" if source else "Data quality"
    warnings_html = (
        '<ul class="dq-warnings">'
        + "".join(f"<li>{_e(w)}</li>" for w in report["warnings"])
        + "</ul>"
        if report["warnings"]
        else '<p class="dq-ok">Nothing needs attention.</p>'
    )
    target = report["target"]
    section = (
        f'<section class="danlu-quality"><style>{_CSS}</style>'
        f'<h2>{_e(title)}</h2><p class="dq-overview">{_e(overview)}</p>'
        f"<h3>Warnings</h3>{warnings_html}"
        f"<h3>Target '{_e(target['name'])}' ({_e(target['task'])})</h3>{_html_target(target)}"
        f"<h3>Columns</h3>{_html_columns(report['details'])}"
        "</section>"
    )
    if not page:
        return section
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"</head><body>{section}</body></html>\n"
    )
