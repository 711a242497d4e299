"""Train / validation / test splits and k-fold indices, on scikit-learn's splitters.

Stratification keeps class proportions in every split. It is used only when asked and possible:
a class with too few rows cannot be spread over the splits, so the split falls back to a plain
shuffle and logs a warning naming the class.

Groups keep rows together: given a group per row (``data.split.group``, or the hash of each
row's features so that exact duplicates never straddle train and test), every group lands whole
in one split. Groups of many rows are placed first, largest first, each in the split that most needs
its classes; the other groups, in random order, then fill each split's remaining share of their
most frequent class (so stratification holds over groups, as far as mixed groups allow). Split
sizes are then near, not exactly, the fractions.
A time split (:func:`time_split_indices`) orders the rows instead: train is the earliest.
A column split (:func:`column_split_indices`) keeps the split the data names (a benchmark's own).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from danlu.errors import DataError
from danlu.logging import get_logger

__all__ = [
    "RecipeDataError",
    "column_split_indices",
    "group_ids",
    "kfold_indices",
    "row_groups",
    "split_indices",
    "time_split_indices",
]

logger = get_logger(__name__)

_EMPTY = np.empty(0, dtype=np.int64)
_NAMES = ("train", "validation", "test")


class RecipeDataError(DataError):
    """A data error that one recipe key causes and fixes (e.g. a split column not in the data).

    Attributes:
        loc: the recipe key path, e.g. ``("data", "split", "column")``.
        problem: what is wrong, in a few words.
        found: the value the recipe holds.
        fix: how to fix it.
    """

    def __init__(self, loc: tuple[str, ...], problem: str, found: object, fix: str) -> None:
        super().__init__(f"{'.'.join(loc)}: {problem} (found {found!r}). {fix}")
        self.loc, self.problem, self.found, self.fix = loc, problem, found, fix


def group_ids(values: Sequence[object] | np.ndarray | pd.Series) -> np.ndarray:
    """A group id per row (int64, 0..G-1) from any values; a missing value is a group of its own.

    Example:
        >>> group_ids(["b", 1, "b", None, None]).tolist()
        [0, 1, 0, 2, 3]
    """
    codes = pd.factorize(pd.Series(values, dtype=object), use_na_sentinel=True)[0]
    codes = codes.astype(np.int64)
    missing = codes < 0
    if missing.any():
        codes[missing] = codes.max(initial=-1) + 1 + np.arange(int(missing.sum()))
    return codes


def row_groups(frame: pd.DataFrame) -> np.ndarray:
    """A group id per row: rows with equal values in every column share one (int64, 0..G-1).

    Example:
        >>> row_groups(pd.DataFrame({"a": [1, 2, 1], "b": ["x", "y", "x"]})).tolist()
        [0, 1, 0]
    """
    if frame.shape[1] == 0:
        return np.arange(len(frame), dtype=np.int64)
    try:
        hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    except TypeError:  # unhashable cells (lists read from JSON): hash their text
        hashes = pd.util.hash_pandas_object(frame.astype(str), index=False).to_numpy()
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    # number the groups in order of first appearance, so ids do not depend on hash values
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.ravel()]


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
    groups: Sequence[object] | np.ndarray | None = None,
    strict_groups: bool = True,
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
        groups: a group per row; the rows of a group land in one split (see the module doc).
        strict_groups: when the groups cannot fill every split asked for (too few or too
            large), raise (True) or split the rows one by one with a warning (False).

    Raises:
        DataError: the fractions are out of range or leave no training rows, or (strict) the
            groups cannot fill the splits.

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
    if groups is not None:
        ids = group_ids(groups)
        if len(ids) != n:
            raise DataError(f"groups has {len(ids)} entries for {n} rows; give one per row.")
        if ids.max(initial=-1) + 1 < n:  # some group holds several rows
            split = _group_split(y, ids, test=test, val=val, stratify=stratify, seed=seed)
            if split is not None:
                return split
            if strict_groups:
                raise DataError(
                    f"Cannot split {n} rows in {ids.max() + 1} groups into the train / "
                    f"validation / test shares asked (test={test}, val={val}) without splitting a "
                    "group: the groups are too few or too large. Use a column with more groups, "
                    "or smaller data.split fractions."
                )
            logger.warning(
                "Copies of the same row are too many to keep each set of copies in one split "
                "(%d distinct rows of %d); the rows are split one by one, so copies of a test "
                "row may be in training.",
                ids.max() + 1,
                n,
            )
    all_rows = np.arange(n, dtype=np.int64)
    rest, test_idx = _hold_out(all_rows, y, _count(test, n), stratify, seed, "test")
    train_idx, val_idx = _hold_out(rest, y, _count(val, n), stratify, seed, "validation")
    return np.sort(train_idx), np.sort(val_idx), np.sort(test_idx)


def _group_split(
    y: np.ndarray, ids: np.ndarray, *, test: float, val: float, stratify: bool, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Place whole groups in splits (see the module doc); None when a split would be empty."""
    n = len(y)
    n_test, n_val = _count(test, n), _count(val, n)
    quota = np.array([n - n_test - n_val, n_val, n_test], dtype=np.float64)  # rows per split
    cls = np.unique(y, return_inverse=True)[1].ravel() if stratify else np.zeros(n, np.int64)
    k = int(cls.max(initial=0)) + 1
    desired = quota[:, None] * np.bincount(cls, minlength=k)[None, :] / n  # (3, K)
    current = np.zeros((3, k))
    rng = np.random.default_rng(seed)
    sizes = np.bincount(ids)
    by_group = np.argsort(ids, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    # Groups large next to a split's share are placed one by one, largest first.
    one_by_one = np.flatnonzero(sizes > max(1.0, 0.01 * quota[quota > 0].min()))
    one_by_one = one_by_one[rng.permutation(len(one_by_one))]
    one_by_one = one_by_one[np.argsort(-sizes[one_by_one], kind="stable")]
    split_of = np.full(len(sizes), -1, dtype=np.int64)
    for g in one_by_one:
        rows = by_group[starts[g] : starts[g + 1]]
        labels, counts = np.unique(cls[rows], return_counts=True)
        want = desired[:, labels]
        need = np.where(want > 0, (want - current[:, labels]) / np.maximum(want, 1e-12), -1.0)
        score = (need * counts).sum(axis=1) / counts.sum()
        overflow = np.maximum(current.sum(axis=1) + len(rows) - quota, 0) / np.maximum(quota, 1)
        s = int(np.argmax(np.where(quota > 0, score - overflow, -np.inf)))
        current[s, labels] += counts
        split_of[g] = s
    # The other groups, by their most frequent class and in random order, fill each split's
    # remaining share of that class: a group goes where the middle of its rows falls.
    pairs, counts = np.unique(ids * k + cls, return_counts=True)
    first = np.lexsort((-counts, pairs // k))  # per group, its most frequent class first
    top = np.empty(len(sizes), dtype=np.int64)
    top[(pairs // k)[first][::-1]] = (pairs % k)[first][::-1]  # the first of each group wins
    rest = np.flatnonzero(split_of < 0)
    rest = rest[np.lexsort((rng.random(len(rest)), top[rest]))]  # by class, at random within
    bounds = np.searchsorted(top[rest], np.arange(k + 1))
    for c in range(k):
        groups = rest[bounds[c] : bounds[c + 1]]
        if not len(groups):
            continue
        cumulative = np.cumsum(sizes[groups])
        share = np.maximum(desired[:, c] - current[:, c], 0)
        share = share if share.sum() > 0 else quota.copy()
        edges = np.cumsum(share / share.sum() * cumulative[-1])
        middle = cumulative - sizes[groups] / 2
        split_of[groups] = np.minimum(np.searchsorted(edges, middle, side="right"), 2)
    where = split_of[ids]
    splits = tuple(np.flatnonzero(where == s).astype(np.int64) for s in range(3))
    if any(quota[s] > 0 and not len(splits[s]) for s in range(3)):
        return None
    return splits[0], splits[1], splits[2]


def time_split_indices(
    order: np.ndarray, *, test: float, val: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split rows by time: train the earliest, validation the next, test the latest.

    ``order`` holds one sortable number per row (a time as nanoseconds, or any number). Rows
    with the same time stay in one split (the later one) unless that would empty a split.

    Example:
        >>> [s.tolist() for s in time_split_indices(np.array([5, 1, 4, 2, 3]), test=0.2, val=0.2)]
        [[1, 3, 4], [2], [0]]
    """
    n = len(order)
    position = np.argsort(order, kind="stable")
    ordered = np.asarray(order)[position]
    n_test, n_val = _count(test, n), _count(val, n)
    train_end, val_end = n - n_test - n_val, n - n_test
    if train_end <= 0:
        raise DataError(
            f"Cannot hold out {n_test + n_val} of {n} rows for validation and test: no rows would "
            "be left for training. Use more data or smaller split fractions in data.split."
        )

    def back(cut: int, floor: int) -> int:
        """The cut moved back to the first row of its time, unless that reaches ``floor``."""
        if not 0 < cut < n:
            return cut
        first = int(np.searchsorted(ordered, ordered[cut], side="left"))
        return first if first > floor else cut

    val_end = back(val_end, train_end if n_val else 0)  # ties go to the later split
    train_end = val_end if not n_val else back(train_end, 0)
    cuts = [train_end, val_end]
    parts = np.split(position, cuts)
    return tuple(np.sort(p).astype(np.int64) for p in parts)  # type: ignore[return-value]


#: The values of a ``by: column`` split column, after lower-casing, and the split each names.
_COLUMN_SPLITS = {"train": 0, "validation": 1, "val": 1, "valid": 1, "test": 2}


def column_split_indices(
    names: Sequence[object] | np.ndarray | pd.Series,
    y: np.ndarray,
    *,
    val: float,
    stratify: bool,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The split each row's ``names`` value gives: ``train``, ``validation`` (``val``) or ``test``.

    When no row is marked validation, ``val`` of the train rows (rounded up) are held out for it.

    Raises:
        RecipeDataError: a value is none of those, or no row is marked train or test.

    Example:
        >>> names = ["train"] * 4 + ["test"] * 2
        >>> [s.tolist() for s in column_split_indices(names, np.zeros(6), val=0.25,
        ...                                           stratify=False, seed=0)]
        [[0, 1, 3], [2], [4, 5]]
    """
    text = pd.Series(names, dtype=object).astype(str).str.strip().str.lower()
    unknown = sorted(set(text) - set(_COLUMN_SPLITS))
    if unknown:
        raise RecipeDataError(
            ("data", "split", "column"),
            f"values {unknown[:5]} name no split",
            unknown[0],
            "Each row's value must be train, validation (or val) or test.",
        )
    part = text.map(_COLUMN_SPLITS).to_numpy()
    train_idx, val_idx, test_idx = (np.flatnonzero(part == k).astype(np.int64) for k in range(3))
    for idx, name in ((train_idx, "train"), (test_idx, "test")):
        if len(idx) == 0:
            raise RecipeDataError(
                ("data", "split", "column"),
                f"no row is marked {name}",
                sorted(set(text)),
                f"Mark some rows '{name}', or use by: random.",
            )
    if len(val_idx) == 0:
        train_idx, val_idx = _hold_out(
            train_idx, np.asarray(y), _count(val, len(train_idx)), stratify, seed, "validation"
        )
        train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    return train_idx, val_idx, test_idx


def kfold_indices(
    y: Sequence[object] | np.ndarray,
    k: int,
    *,
    stratify: bool,
    seed: int,
    groups: Sequence[object] | np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` shuffled (train, held-out) index pairs for cross-validation.

    Uses ``StratifiedKFold`` when ``stratify`` and every class has at least ``k`` rows, otherwise
    ``KFold`` (with a warning naming the rare classes). With ``groups`` that hold several rows,
    ``StratifiedGroupKFold`` (or ``GroupKFold``): each group is held out whole, in one fold.

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
    if groups is not None:
        ids = group_ids(groups)
        if ids.max(initial=-1) + 1 < len(y):
            return _group_kfold(y, ids, k, stratify=stratify, seed=seed)
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


def _group_kfold(
    y: np.ndarray, ids: np.ndarray, k: int, *, stratify: bool, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """k folds that hold each group out whole (stratified over groups when asked)."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    n_groups = int(ids.max()) + 1
    if k > n_groups:
        raise DataError(
            f"Cannot make {k} folds from {n_groups} groups of rows (copies of a row, or rows "
            "sharing data.split.group, stay in one fold). Use fewer folds."
        )
    splitter: GroupKFold | StratifiedGroupKFold
    if stratify and not _rare_classes(y, k):
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    else:
        splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
    rows = np.zeros((len(y), 1))
    return [
        (np.asarray(tr, dtype=np.int64), np.asarray(te, dtype=np.int64))
        for tr, te in splitter.split(rows, y, ids)
    ]
