"""Train / validation / test splits and k-fold indices."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from danlu.data import kfold_indices, load_source, split_indices, time_split_indices
from danlu.data._split import row_groups
from danlu.errors import DataError


@pytest.fixture(scope="module")
def imbalanced() -> np.ndarray:
    """1000 labels, 10% of class 1."""
    return np.array([0] * 900 + [1] * 100)


def test_sizes_are_fractions_of_all_rows_and_splits_partition(imbalanced: np.ndarray) -> None:
    train, val, test = split_indices(imbalanced, test=0.2, val=0.1, stratify=False, seed=0)
    assert (len(train), len(val), len(test)) == (700, 100, 200)
    together = np.concatenate([train, val, test])
    assert np.array_equal(np.sort(together), np.arange(1000))
    assert all(a.dtype == np.int64 for a in (train, val, test))


def test_stratified_split_keeps_class_proportions(imbalanced: np.ndarray) -> None:
    train, val, test = split_indices(imbalanced, test=0.2, val=0.1, stratify=True, seed=3)
    assert imbalanced[test].mean() == pytest.approx(0.1)
    assert imbalanced[val].mean() == pytest.approx(0.1)
    assert imbalanced[train].mean() == pytest.approx(0.1)


def test_real_data_stratified_per_class() -> None:
    y = load_source("builtin:wine").frame["target"].to_numpy()
    _, _, test = split_indices(y, test=0.25, val=0.0, stratify=True, seed=0)
    overall = np.bincount(y) / len(y)
    assert np.abs(np.bincount(y[test]) / len(test) - overall).max() < 0.03


def test_same_seed_same_split_different_seed_different(imbalanced: np.ndarray) -> None:
    a = split_indices(imbalanced, test=0.2, val=0.1, stratify=True, seed=7)
    b = split_indices(imbalanced, test=0.2, val=0.1, stratify=True, seed=7)
    c = split_indices(imbalanced, test=0.2, val=0.1, stratify=True, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[2], c[2])


def test_zero_val_and_zero_test_give_empty_arrays(imbalanced: np.ndarray) -> None:
    train, val, test = split_indices(imbalanced, test=0.2, val=0.0, stratify=True, seed=0)
    assert len(val) == 0 and val.dtype == np.int64 and len(train) == 800
    train, val, test = split_indices(imbalanced, test=0.0, val=0.0, stratify=False, seed=0)
    assert len(train) == 1000 and len(test) == 0


def test_rare_class_falls_back_with_a_warning_naming_it(caplog: pytest.LogCaptureFixture) -> None:
    y = np.array(["a"] * 20 + ["b"] * 20 + ["lonely"])
    with caplog.at_level(logging.WARNING, logger="danlu"):
        train, val, test = split_indices(y, test=0.2, val=0.1, stratify=True, seed=0)
    assert "'lonely' (1 row)" in caplog.text
    assert len(train) + len(val) + len(test) == 41


def test_bad_fractions_are_data_errors() -> None:
    with pytest.raises(DataError, match="test="):
        split_indices(np.zeros(10), test=0.6, val=0.5, stratify=False, seed=0)
    with pytest.raises(DataError, match="no rows would be left"):
        split_indices(np.zeros(2), test=0.5, val=0.4, stratify=False, seed=0)


def test_kfold_holds_out_every_row_once(imbalanced: np.ndarray) -> None:
    folds = kfold_indices(imbalanced, 5, stratify=True, seed=0)
    assert len(folds) == 5
    held = np.concatenate([te for _, te in folds])
    assert np.array_equal(np.sort(held), np.arange(1000))
    for train, test in folds:
        assert not set(train) & set(test)
        assert imbalanced[test].mean() == pytest.approx(0.1)


def test_kfold_seed_changes_folds(imbalanced: np.ndarray) -> None:
    a = kfold_indices(imbalanced, 3, stratify=False, seed=0)
    b = kfold_indices(imbalanced, 3, stratify=False, seed=0)
    c = kfold_indices(imbalanced, 3, stratify=False, seed=1)
    assert np.array_equal(a[0][1], b[0][1]) and not np.array_equal(a[0][1], c[0][1])


def test_kfold_rare_class_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    y = np.array([0] * 10 + [1] * 2)
    with caplog.at_level(logging.WARNING, logger="danlu"):
        folds = kfold_indices(y, 3, stratify=True, seed=0)
    assert "'1' (2 rows)" in caplog.text and len(folds) == 3


def test_kfold_bad_k_is_a_data_error() -> None:
    with pytest.raises(DataError, match="at least 2 folds"):
        kfold_indices(np.zeros(10), 1, stratify=False, seed=0)
    with pytest.raises(DataError, match="5 folds from 3 rows"):
        kfold_indices(np.zeros(3), 5, stratify=False, seed=0)


# -- groups: identical rows and data.split.group stay in one split -------------------------------
def _crossing(groups: np.ndarray, *splits: np.ndarray) -> int:
    """Groups found in more than one of ``splits``."""
    seen = [set(groups[s].tolist()) for s in splits]
    return sum(len(a & b) for i, a in enumerate(seen) for b in seen[i + 1 :])


@pytest.mark.parametrize("stratify", [True, False])
def test_groups_stay_whole_and_stratification_holds_over_groups(stratify: bool) -> None:
    raw = load_source("builtin:titanic")  # 1309 passengers, hundreds sharing every value
    y = raw.frame[raw.target].to_numpy()
    groups = row_groups(raw.frame)
    assert groups.max() + 1 < 800  # many identical rows
    train, val, test = split_indices(y, test=0.2, val=0.1, stratify=stratify, seed=0, groups=groups)
    assert np.array_equal(np.sort(np.concatenate([train, val, test])), np.arange(1309))
    assert _crossing(groups, train, val, test) == 0
    assert abs(len(test) - 262) <= 15 and abs(len(val) - 131) <= 15
    if stratify:
        share = (y == "survived").mean()
        for part in (train, val, test):
            assert abs((y[part] == "survived").mean() - share) < 0.02


def test_groups_that_cannot_fill_the_splits_raise_or_fall_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    y = np.array([0, 1] * 10)
    groups = np.array([0] * 19 + [1])  # one group holds 19 of 20 rows
    with pytest.raises(DataError, match="without splitting a group"):
        split_indices(y, test=0.2, val=0.1, stratify=False, seed=0, groups=groups)
    with caplog.at_level(logging.WARNING, logger="danlu"):
        train, val, test = split_indices(
            y, test=0.2, val=0.1, stratify=False, seed=0, groups=groups, strict_groups=False
        )
    assert (len(train), len(val), len(test)) == (14, 2, 4)  # row by row, as without groups
    assert "split one by one" in caplog.text


def test_row_groups_number_identical_rows_alike() -> None:
    import pandas as pd

    frame = pd.DataFrame({"a": [1, 2, 1, 2, 3], "b": ["x", "y", "x", "z", "x"]})
    assert row_groups(frame).tolist() == [0, 1, 0, 2, 3]
    lists = pd.DataFrame({"a": [[1, 2], [1, 2], [3]]})  # unhashable cells hash as text
    assert row_groups(lists).tolist() == [0, 0, 1]


def test_kfold_holds_each_group_out_whole() -> None:
    raw = load_source("builtin:titanic")
    y = raw.frame[raw.target].to_numpy()
    groups = row_groups(raw.frame)
    folds = kfold_indices(y, 5, stratify=True, seed=0, groups=groups)
    held = np.concatenate([te for _, te in folds])
    assert np.array_equal(np.sort(held), np.arange(1309))
    for train, held_out in folds:
        assert _crossing(groups, train, held_out) == 0


# -- time -----------------------------------------------------------------------------------------
def test_time_split_trains_on_the_past_and_tests_on_the_future() -> None:
    order = np.random.default_rng(0).permutation(100).astype(float)
    train, val, test = time_split_indices(order, test=0.2, val=0.1)
    assert (len(train), len(val), len(test)) == (70, 10, 20)
    assert order[train].max() < order[val].min() and order[val].max() < order[test].min()


def test_time_split_keeps_equal_times_in_one_split() -> None:
    order = np.array([1, 1, 2, 2, 2, 3, 3, 3, 3, 4])  # a cut at 8/10 would split time 3
    train, val, test = time_split_indices(order, test=0.2, val=0.0)
    assert set(order[train]) & set(order[test]) == set()
    assert order[test].min() == 3 and len(val) == 0


def test_group_ids_take_mixed_values_and_make_missing_values_groups_of_their_own() -> None:
    from danlu.data._split import group_ids

    assert group_ids(["b", 1, "b", None, float("nan"), 1]).tolist() == [0, 1, 0, 2, 3, 1]
    y = np.array([0, 1] * 10)
    mixed = ["a", 2, "b", 3] * 5  # types that numpy cannot sort together
    train, val, test = split_indices(y, test=0.25, val=0.0, stratify=False, seed=0, groups=mixed)
    assert {mixed[i] for i in train}.isdisjoint({mixed[i] for i in test})
