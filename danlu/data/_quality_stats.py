"""The statistics behind the data quality report: leakage tests and train/test shift.

Value helpers shared with :mod:`danlu.data._quality` (numbers, labels and codes of a column, JSON
numbers) come first; then the leakage tests (a feature that copies or perfectly predicts the
target) and the shift of a feature between the train and test splits (PSI with its p-value, and
the Kolmogorov-Smirnov test for numbers).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from danlu.data._psi import PSI_MAJOR, psi, psi_pvalue
from danlu.data._schema import category_str

LEAK_MIN_ROWS = 30  # below this, "perfectly predicts" is too often luck to warn about
LEAK_ROWS_PER_VALUE = 10  # a value -> target mapping counts only with this many rows per value
PSI_BINS = 10
SHIFT_PVALUE = 0.01  # a shift counts only when it is unlikely to be the noise of small samples


def num(value: Any, digits: int = 6) -> float | None:
    """A finite float rounded to ``digits`` significant digits, or None (NaN, infinite)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def pct(count: int | float, total: int) -> float:
    return round(100.0 * float(count) / total, 2) if total else 0.0


def as_numbers(column: pd.Series) -> np.ndarray:
    """float64 values with NaN for missing (and for anything that is not a number)."""
    if pd.api.types.is_bool_dtype(column.dtype):
        return column.astype("float64").to_numpy(dtype="float64", na_value=np.nan)
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    return np.where(np.isinf(values), np.nan, values)


def as_labels(column: pd.Series) -> np.ndarray:
    """Values as strings (``3.0`` and ``3`` alike), None for missing: comparable across types."""
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    names = np.array([category_str(u) for u in uniques] + [None], dtype=object)
    return names[codes]  # code -1 (missing) picks the trailing None


def as_codes(values: np.ndarray | pd.Series) -> np.ndarray:
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


# -- leakage ------------------------------------------------------------------------------------
#: Rows used for the estimated statistics (leakage tests, PSI/KS shift) of larger data: a seeded
#: sample estimates them well; counts, duplicates, min/max and distinct values stay exact.
STAT_SAMPLE = 200_000


def sample_rows(rows: np.ndarray, size: int = STAT_SAMPLE, seed: int = 0) -> np.ndarray:
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
    if not _deterministic(as_codes(x), y):
        return False
    ys = y[np.argsort(x, kind="stable")]
    return int((ys[1:] != ys[:-1]).sum()) == np.unique(y).size - 1


def _copy_reason(
    info: Mapping[str, Any],
    column: pd.Series,
    values: np.ndarray | None,
    target: pd.Series,
    target_codes: np.ndarray,
    kind: str,
) -> str | None:
    """The feature is the target itself, or (numbers) predicts it almost exactly."""
    if kind != "values":
        same_shape = info["missing"] == 0 and info["distinct"] == np.unique(target_codes).size
        if same_shape and np.array_equal(as_labels(column), as_labels(target)):
            return "it is identical to the target"
        return None
    if values is None:
        return None
    y = as_numbers(target)
    both = ~np.isnan(values) & ~np.isnan(y)
    if both.all() and np.array_equal(values, y):
        return "it is identical to the target"
    if len(column) < LEAK_MIN_ROWS or info["id_like"] or both.sum() < LEAK_MIN_ROWS:
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.corrcoef(values[both], y[both])[0, 1]
    if np.isfinite(r) and abs(r) >= 0.999:
        return f"it predicts the target almost exactly (correlation {r:.4f})"
    return None


def _mapping_reason(
    info: Mapping[str, Any], column: pd.Series, values: np.ndarray | None, target_codes: np.ndarray
) -> str | None:
    """Each of the feature's (well-populated) values goes with a single target value."""
    rows, distinct = len(column), int(info["distinct"])
    if distinct < 2 or rows / distinct < LEAK_ROWS_PER_VALUE:
        return None
    codes = as_codes(values) if values is not None else as_codes(as_labels(column))
    if not _deterministic(codes, target_codes):
        return None
    return (
        f"each of its {distinct} values maps to a single target value "
        f"({rows / distinct:.0f} rows per value on average)"
    )


def _separation_reason(values: np.ndarray, target_codes: np.ndarray) -> str | None:
    """Thresholds on the (numeric) feature alone separate the classes."""
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


def leak_reason(
    info: Mapping[str, Any],
    column: pd.Series,
    values: np.ndarray | None,
    target: pd.Series,
    target_codes: np.ndarray,
    kind: str,
) -> str | None:
    """Why a feature gives the target away, or None (``kind``: the target kind).

    In order: it copies the target; (enough rows, not an id) each of its values maps to one
    target value; (classes, numbers) thresholds on it separate the classes.
    """
    if info["constant"] or len(column) < 2:
        return None
    reason = _copy_reason(info, column, values, target, target_codes, kind)
    if reason is not None or len(column) < LEAK_MIN_ROWS or info["id_like"]:
        return reason
    reason = _mapping_reason(info, column, values, target_codes)
    if reason is None and kind == "classes" and values is not None:
        reason = _separation_reason(values, target_codes)
    return reason


# -- shift --------------------------------------------------------------------------------------
def _psi(expected: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """PSI of bin counts ``actual`` against ``expected`` and its p-value (noise of the sizes)."""
    value = psi(expected, actual)
    return value, psi_pvalue(value, float(expected.sum()), float(actual.sum()), len(expected))


def _shift(value: float, pvalue: float, ks: Any = None) -> dict[str, Any]:
    return {
        "psi": num(value, 4),
        "psi_pvalue": num(pvalue, 4),
        "ks": None if ks is None else num(ks.statistic, 4),
        "ks_pvalue": None if ks is None else num(ks.pvalue, 4),
        # a shift must be major (PSI) and more than the noise of the sample sizes (both tests)
        "shifted": bool(
            value >= PSI_MAJOR
            and pvalue < SHIFT_PVALUE
            and (ks is None or ks.pvalue < SHIFT_PVALUE)
        ),  # a Python bool: the report is JSON
    }


def numeric_shift(train: np.ndarray, test: np.ndarray) -> dict[str, Any] | None:
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
        value, pvalue = _psi(expected, actual)
    else:  # few distinct values: each value is its own bin
        value, pvalue = _categorical_psi(train.astype(str), test.astype(str))
    with warnings.catch_warnings():  # "exact calculation unsuccessful, switching to asymp"
        warnings.simplefilter("ignore", RuntimeWarning)
        ks = ks_2samp(train, test, method="asymp")
    return _shift(value, pvalue, ks)


def _categorical_psi(train: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    train_counts = pd.Series(train).value_counts()
    test_counts = pd.Series(test).value_counts()
    categories = train_counts.index.union(test_counts.index)
    expected = train_counts.reindex(categories, fill_value=0).to_numpy(dtype="float64")
    actual = test_counts.reindex(categories, fill_value=0).to_numpy(dtype="float64")
    return _psi(expected, actual)


def categorical_shift(train: np.ndarray, test: np.ndarray) -> dict[str, Any] | None:
    train = train[pd.notna(train)].astype(str)
    test = test[pd.notna(test)].astype(str)
    if train.size == 0 or test.size == 0:
        return None
    return _shift(*_categorical_psi(train, test))
