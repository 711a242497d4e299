"""Train / validation / test splits and k-fold indices, on scikit-learn's splitters.

Stratification keeps class proportions in every split. It is used only when asked and possible:
a class with too few rows cannot be spread over the splits, so the split falls back to a plain
shuffle and logs a warning naming the class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from danlu.errors import DataError
from danlu.logging import get_logger

__all__ = ["kfold_indices", "split_indices"]

logger = get_logger(__name__)

_EMPTY = np.empty(0, dtype=np.int64)


def _rare_classes(y: np.ndarray, min_count: int) -> list[str]:
    """Classes of ``y`` with fewer than ``min_count`` rows, as ``'label' (n rows)`` strings."""
    labels, counts = np.unique(y, return_counts=True)
    pairs = zip(labels, counts, strict=True)
    rare = [f"'{lab}' ({n} row{'s' if n != 1 else ''})" for lab, n in pairs if n < min_count]
    return rare if len(rare) <= 10 else [*rare[:10], f"and {len(rare) - 10} more"]


def _count(fraction: float, n: int) -> int:
    """Rows for a split of ``fraction`` of ``n`` rows, rounded up like ``train_test_split``."""
    return int(np.ceil(fraction * n - 1e-9)) if fraction > 0 else 0


def _hold_out(
    idx: np.ndarray, y: np.ndarray, n_hold: int, stratify: bool, seed: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (kept, held out) with ``n_hold`` rows held out."""
    if n_hold <= 0:
        return idx, _EMPTY
    if n_hold >= len(idx):
        raise DataError(
            f"Cannot hold out {n_hold} of {len(idx)} rows for the {what} split: no rows would be "
            "left for training. Use more data or smaller split fractions in data.split."
        )
    labels = y[idx]
    strat: np.ndarray | None = None
    if stratify:
        rare = _rare_classes(labels, 2)
        n_classes = len(np.unique(labels))
        if rare:
            logger.warning(
                "Cannot stratify the %s split: class %s has too few rows (at least 2 are needed). "
                "Falling back to a plain shuffled split.",
                what,
                ", ".join(rare),
            )
        elif n_hold < n_classes or len(idx) - n_hold < n_classes:
            logger.warning(
                "Cannot stratify the %s split: %d held-out and %d kept rows cannot each hold all "
                "%d classes. Falling back to a plain shuffled split.",
                what,
                n_hold,
                len(idx) - n_hold,
                n_classes,
            )
        else:
            strat = labels
    kept, held = train_test_split(idx, test_size=n_hold, stratify=strat, random_state=seed)
    return np.asarray(kept, dtype=np.int64), np.asarray(held, dtype=np.int64)


def split_indices(
    y: Sequence[object] | np.ndarray,
    *,
    test: float,
    val: float,
    stratify: bool,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split row positions ``0..n-1`` into train, validation and test indices.

    ``test`` and ``val`` are fractions of *all* rows; either may be 0 (an empty array). Each
    returned array is sorted, int64, and the three are disjoint and cover every row.

    Args:
        y: the target of every row (used only to stratify).
        test: fraction of rows for the test split.
        val: fraction of rows for the validation split.
        stratify: keep class proportions in each split when every class has enough rows.
        seed: the same seed gives the same split.

    Raises:
        DataError: the fractions are out of range or leave no training rows.

    Example:
        >>> tr, va, te = split_indices([0, 1] * 10, test=0.2, val=0.1, stratify=True, seed=0)
        >>> len(tr), len(va), len(te)
        (14, 2, 4)
    """
    y = np.asarray(y)
    n = len(y)
    if not (0 <= test < 1 and 0 <= val < 1 and test + val < 1):
        raise DataError(
            f"Split fractions must satisfy 0 <= test, val and test + val < 1; got test={test}, "
            f"val={val}. Lower them in data.split."
        )
    if n == 0:
        raise DataError("Cannot split an empty data set: there are no rows left to split.")
    all_rows = np.arange(n, dtype=np.int64)
    rest, test_idx = _hold_out(all_rows, y, _count(test, n), stratify, seed, "test")
    train_idx, val_idx = _hold_out(rest, y, _count(val, n), stratify, seed, "validation")
    return np.sort(train_idx), np.sort(val_idx), np.sort(test_idx)


def kfold_indices(
    y: Sequence[object] | np.ndarray, k: int, *, stratify: bool, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` shuffled (train, held-out) index pairs for cross-validation.

    Uses ``StratifiedKFold`` when ``stratify`` and every class has at least ``k`` rows, otherwise
    ``KFold`` (with a warning naming the rare classes).

    Raises:
        DataError: ``k`` < 2 or more folds than rows.

    Example:
        >>> folds = kfold_indices([0, 1] * 5, 5, stratify=True, seed=0)
        >>> len(folds), len(folds[0][1])
        (5, 2)
    """
    y = np.asarray(y)
    if k < 2:
        raise DataError(f"Cross-validation needs at least 2 folds; got k={k}.")
    if k > len(y):
        raise DataError(
            f"Cannot make {k} folds from {len(y)} rows: each fold needs at least one row. "
            "Use fewer folds."
        )
    splitter: KFold | StratifiedKFold = KFold(n_splits=k, shuffle=True, random_state=seed)
    if stratify:
        rare = _rare_classes(y, k)
        if rare:
            logger.warning(
                "Cannot stratify %d folds: class %s has fewer than %d rows. "
                "Falling back to plain shuffled folds.",
                k,
                ", ".join(rare),
                k,
            )
        else:
            splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    rows = np.zeros((len(y), 1))  # scikit-learn's splitters only read the number of rows of X
    return [
        (np.asarray(tr, dtype=np.int64), np.asarray(te, dtype=np.int64))
        for tr, te in splitter.split(rows, y)
    ]
