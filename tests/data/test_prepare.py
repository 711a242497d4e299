"""prepare_data: the order of cleaning, splitting and fitting, and its errors."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from danlu.config import DataConfig, PrepareConfig, SplitConfig
from danlu.data import (
    PreparedData,
    RecipeDataError,
    load_source,
    outlier_rows,
    prepare_data,
    row_accounting,
    split_indices,
)
from danlu.data._prepare import split_rows
from danlu.errors import DataError, NotFoundError

from .conftest import MULTILABEL, WINE_LABELS

SPLIT = SplitConfig(test=0.2, val=0.1, seed=0)


def _labels(n: int) -> np.ndarray:
    return np.arange(n) % 2


def _planned_split(y: np.ndarray, stratify: bool = True):
    """The split prepare_data will make (it depends only on the target, the fractions, the seed)."""
    return split_indices(y, test=SPLIT.test, val=SPLIT.val, stratify=stratify, seed=SPLIT.seed)


def test_builtin_digits_prepares_as_image_data() -> None:
    data = prepare_data(DataConfig(source="builtin:digits"), "classification")
    assert isinstance(data, PreparedData)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.n_features == 64 and data.n_classes == 10
    assert data.schema.image_shape == (1, 8, 8)
    rows = data.report["rows"]
    assert rows["train"] + rows["val"] + rows["test"] == 1797
    assert len(data.x_train) == len(data.y_train) == rows["train"]
    assert sorted(np.unique(data.y_test).tolist()) == list(range(10))  # stratified


def test_regression_targets_are_standardized_floats() -> None:
    data = prepare_data(DataConfig(source="builtin:diabetes"), "regression")
    assert data.y_train.dtype == np.float32 and data.n_classes is None
    assert abs(float(data.y_train.mean())) < 1e-5
    assert data.report["stratified"] is False


def test_no_statistic_of_val_or_test_rows_leaks_into_fitting(write) -> None:
    n = 200
    y = _labels(n)
    train, val, test = _planned_split(y)
    x = np.random.default_rng(0).normal(10, 2, n)
    # distinct values: identical rows would be deduplicated and change the split
    x[val], x[test] = 1e6 + np.arange(len(val)), -1e6 - np.arange(len(test))
    colour = np.where(np.arange(n) % 3 == 0, "red", "blue").astype(object)
    colour[test] = "only_in_test"
    path = write(pd.DataFrame({"x": x, "colour": colour, "target": y}), "rows.csv")

    data = prepare_data(DataConfig(source=path, split=SPLIT), "classification")

    pre = data.preprocessor
    assert pre.center_["x"] == pytest.approx(x[train].mean())
    assert pre.scale_["x"] == pytest.approx(x[train].std())
    assert np.abs(data.x_train[:, 0]).max() < 10 and data.x_test[:, 0].max() < -1e4
    assert pre.schema_.features[1].categories == ("blue", "red")
    assert data.x_test[:, 1:].sum() == 0  # the unseen test category encodes as zeros


def test_regression_target_statistics_come_from_training_rows(write) -> None:
    n = 100
    y = np.random.default_rng(1).normal(5, 1, n)
    train, val, test = _planned_split(y, stratify=False)
    y[test] = 1e6
    path = write(pd.DataFrame({"x": np.arange(n, dtype=float), "target": y}), "rows.parquet")
    data = prepare_data(DataConfig(source=path, split=SPLIT), "regression")
    assert data.schema.target_mean == pytest.approx(y[train].mean())
    assert data.schema.target_std == pytest.approx(y[train].std())


@pytest.mark.parametrize("method", ["zscore", "iqr"])
def test_outliers_are_removed_from_training_rows_only(method: str, write) -> None:
    n = 200
    y = _labels(n)
    train, _, test = _planned_split(y)
    x = np.random.default_rng(2).uniform(0, 1, n)
    x[train[0]], x[test[0]] = 1000.0, 999.0  # distinct: equal rows would share a split
    path = write(pd.DataFrame({"x": x, "target": y}), "rows.csv")
    prepare = PrepareConfig(outliers={"method": method})
    data = prepare_data(DataConfig(source=path, split=SPLIT, prepare=prepare), "classification")
    assert data.report["outliers_removed"] == 1
    assert data.report["rows"] == {"train": len(train) - 1, "val": 20, "test": len(test)}
    assert data.test_frame["x"].max() == 999.0  # the test outlier is still judged
    # the scaler is fitted after the outlier left the training rows
    assert data.preprocessor.center_["x"] == pytest.approx(x[train[1:]].mean())


def test_outlier_rows_skips_constant_and_missing_values() -> None:
    frame = pd.DataFrame({"c": [1.0] * 6, "x": [1.0, 2.0, np.nan, 2.0, 1.0, 50.0]})
    assert outlier_rows(frame, ["c", "x"], "iqr").tolist() == [False] * 5 + [True]
    assert not outlier_rows(frame, ["c"], "zscore").any()


def test_duplicates_are_dropped_before_the_split_only_when_asked(write) -> None:
    rng = np.random.default_rng(3)
    unique = pd.DataFrame(
        {"a": rng.normal(size=50), "b": rng.normal(size=50), "target": _labels(50)}
    )
    path = write(pd.concat([unique] * 4, ignore_index=True), "rows.jsonl")

    def overlap(data: PreparedData) -> int:
        return len(set(map(tuple, data.x_train)) & set(map(tuple, data.x_test)))

    deduped = prepare_data(
        DataConfig(source=path, split=SPLIT, prepare=PrepareConfig(dedupe=True)), "classification"
    )
    assert deduped.report["duplicates_dropped"] == 150 and deduped.report["rows_loaded"] == 200
    assert sum(deduped.report["rows"].values()) == 50
    assert overlap(deduped) == 0
    kept = prepare_data(DataConfig(source=path, split=SPLIT), "classification")  # the default
    assert kept.report["duplicates_dropped"] == 0 and sum(kept.report["rows"].values()) == 200
    assert kept.report["copies_kept_together"] == 150
    assert overlap(kept) == 0  # every copy of a test row is in test too: none is trained on


def test_missing_drop_removes_rows_before_the_split(write) -> None:
    frame = pd.DataFrame({"x": np.arange(40, dtype=float), "target": _labels(40)})
    frame.loc[[3, 8, 21], "x"] = np.nan
    path = write(frame, "rows.csv")
    config = DataConfig(source=path, prepare=PrepareConfig(missing="drop"))
    data = prepare_data(config, "classification")
    assert data.report["missing_dropped"] == 3 and sum(data.report["rows"].values()) == 37
    assert not np.isnan(data.x_train).any()


def test_report_is_json_and_test_frame_replays_to_x_test(mixed_frame: pd.DataFrame, write) -> None:
    frame = mixed_frame.assign(id=np.arange(60))
    path = write(frame, "rows.csv")
    config = DataConfig(source=path, target="label", features={"id": "ignore"})
    data = prepare_data(config, "classification")
    report = json.loads(json.dumps(data.report))
    assert report["rows_loaded"] == 60 and report["ignored"] == ["id"]
    assert "label" not in data.test_frame.columns and "id" in data.test_frame.columns
    assert "id" not in data.schema.feature_names
    assert np.array_equal(data.preprocessor.transform(data.test_frame), data.x_test)
    assert data.schema.classes == ("cat", "dog", "fish")


def test_regression_with_text_target_is_a_data_error(mixed_frame: pd.DataFrame, write) -> None:
    path = write(mixed_frame, "rows.csv")
    with pytest.raises(DataError, match="numeric target.*'label'"):
        prepare_data(DataConfig(source=path, target="label"), "regression")


def test_missing_target_values_are_counted_with_first_row(write) -> None:
    frame = pd.DataFrame({"x": np.arange(10.0), "target": [0, 1, 0, np.nan, 1, 0, np.nan, 1, 0, 1]})
    path = write(frame, "rows.csv")
    with pytest.raises(DataError, match=r"2 missing value\(s\) in 10 rows, the first at row 4"):
        prepare_data(DataConfig(source=path), "classification")


def test_single_class_is_a_data_error(write) -> None:
    path = write(pd.DataFrame({"x": np.arange(10.0), "target": ["a"] * 10}), "rows.csv")
    with pytest.raises(DataError, match="at least two classes.*'a'"):
        prepare_data(DataConfig(source=path), "classification")


def test_continuous_target_for_classification_is_a_data_error() -> None:
    with pytest.raises(DataError, match=r"214 classes in 442 rows.*regression"):
        prepare_data(DataConfig(source="builtin:diabetes"), "classification")


def test_image_shape_mismatch_names_both_numbers() -> None:
    with pytest.raises(DataError, match=r"\[1, 8, 9\] holds 72 values.* 64 feature columns"):
        prepare_data(DataConfig(source="builtin:digits", image_shape=[1, 8, 9]), "classification")


def test_config_image_shape_overrides_the_builtin() -> None:
    data = prepare_data(
        DataConfig(source="builtin:digits", image_shape=[4, 4, 4]), "classification"
    )
    assert data.schema.image_shape == (4, 4, 4)
    data = prepare_data(
        DataConfig(source="builtin:breast_cancer", image_shape=[1, 5, 6]), "classification"
    )
    assert data.schema.image_shape == (1, 5, 6)


def test_unknown_builtin_and_all_ignored_features(write) -> None:
    with pytest.raises(NotFoundError, match="Did you mean 'wine'"):
        prepare_data(DataConfig(source="builtin:wines"), "classification")
    path = write(pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "target": [0, 1, 0, 1]}), "rows.csv")
    with pytest.raises(DataError, match="No feature columns"):
        prepare_data(DataConfig(source=path, features={"x": "ignore"}), "classification")


def test_the_data_layer_does_not_import_torch() -> None:
    code = (
        "import sys; from danlu.config import DataConfig; from danlu.data import prepare_data; "
        "prepare_data(DataConfig(source='builtin:iris'), 'classification'); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- cross-validation folds -----------------------------------------------------------------------


@pytest.mark.parametrize("k", [3, 5])
def test_cv_splits_hold_each_row_out_exactly_once(k: int) -> None:
    from danlu.data import cv_splits

    config = DataConfig(source="builtin:iris")
    folds = cv_splits(config, "classification", k)
    n = 150  # iris, its one exact duplicate kept (in the same fold as its twin)
    assert len(folds) == k
    tests = [te for _, _, te in folds]
    assert sum(len(te) for te in tests) == n
    assert np.array_equal(np.sort(np.concatenate(tests)), np.arange(n))  # disjoint, covering
    for train, val, test in folds:
        assert len(val) > 0 and len(train) > len(test)
        assert not set(train) & set(val) and not set(train) & set(test)
        assert not set(val) & set(test)  # early stopping never sees the held-out fold
        assert len(train) + len(val) + len(test) == n  # every other row is train or val
    # stratified: each class is spread evenly over the held-out folds
    from danlu.data import load_source
    from danlu.data._prepare import split_rows

    rows = split_rows(load_source("builtin:iris"), config, "classification")
    y = rows.frame[rows.target].to_numpy()
    counts = np.array([np.bincount(y[te], minlength=3) for te in tests])  # (k, 3)
    assert (counts.max(axis=0) - counts.min(axis=0) <= 1).all()
    assert folds[0][2].tolist() == cv_splits(config, "classification", k)[0][2].tolist()  # seeded


def test_prepare_data_with_indices_uses_exactly_those_rows() -> None:
    from danlu.data import cv_splits, load_source
    from danlu.data._prepare import split_rows

    config = DataConfig(source="builtin:wine")
    rows = split_rows(load_source("builtin:wine"), config, "classification")
    train, val, test = cv_splits(config, "classification", 4)[1]
    data = prepare_data(config, "classification", indices=(train, val, test))
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (
        len(train),
        len(val),
        len(test),
    )
    expected = rows.frame.iloc[np.sort(test)].drop(columns=[rows.target]).reset_index(drop=True)
    pd.testing.assert_frame_equal(data.test_frame, expected)
    labels = rows.frame[rows.target].to_numpy()
    classes = list(data.schema.classes)
    assert [classes[i] for i in data.y_test] == labels[np.sort(test)].tolist()
    # standard scaling fitted on the fold's training rows only
    assert np.abs(data.x_train.mean(axis=0)).max() < 1e-5
    assert np.abs(data.x_test.mean(axis=0)).max() > 1e-3


def test_streamed_data_has_no_cv_folds() -> None:
    from danlu.data import cv_splits

    config = DataConfig(source="rows.parquet", target="y", stream={})
    with pytest.raises(DataError, match=r"Cross-validation needs the rows in memory.*data\.stream"):
        cv_splits(config, "classification", 3)
    folds = (np.arange(3), np.arange(3, 4), np.arange(4, 6))
    with pytest.raises(DataError, match=r"folds \(indices\) need the rows in memory"):
        prepare_data(config, "classification", indices=folds)


# -- label-set targets (a task the data layer knows only by its target kind) ------------------
def _label_set_sources(wine_tags: pd.DataFrame, write) -> dict[str, DataConfig]:
    """The same label sets four ways: lists (JSON Lines), '|' strings, JSON strings, 0/1 columns."""
    columns = wine_tags.drop(columns=["tags"]).assign(
        **{label: [int(label in t) for t in wine_tags["tags"]] for label in WINE_LABELS}
    )
    return {
        "lists": DataConfig(source=write(wine_tags, "lists.jsonl"), target="tags"),
        "pipes": DataConfig(
            source=write(wine_tags.assign(tags=wine_tags["tags"].map("|".join)), "pipes.csv"),
            target="tags",
        ),
        "json": DataConfig(
            source=write(wine_tags.assign(tags=wine_tags["tags"].map(json.dumps)), "json.csv"),
            target="tags",
        ),
        "columns": DataConfig(source=write(columns, "columns.parquet"), target=list(WINE_LABELS)),
    }


def test_label_sets_prepare_to_multi_hot_the_same_from_every_form(
    wine_tags: pd.DataFrame, write
) -> None:
    prepared = {
        form: prepare_data(config, MULTILABEL)
        for form, config in _label_set_sources(wine_tags, write).items()
    }
    lists = prepared["lists"]
    assert lists.y_train.dtype == np.float32 and lists.y_train.shape == (124, 3)
    assert lists.y_val.shape == (18, 3) and lists.y_test.shape == (36, 3)
    assert lists.n_classes == 3 and lists.n_features == 13
    schema = lists.schema
    assert (schema.task, schema.target_kind, schema.classes) == (
        "multilabel",
        "label_sets",
        WINE_LABELS,
    )
    assert lists.report["stratified"] is False
    assert lists.quality["target"]["target_kind"] == "label_sets"
    for form, data in prepared.items():
        assert data.schema.classes == WINE_LABELS, form
        for split in ("y_train", "y_val", "y_test", "x_train", "x_test"):
            assert np.array_equal(getattr(data, split), getattr(lists, split)), (form, split)
    # the encoded test rows decode to the label sets of the same raw rows
    decoded = lists.preprocessor.decode_target(lists.y_test)
    assert decoded.tolist() == [tuple(sorted(t)) for t in _test_tags(wine_tags, lists)]


def _test_tags(wine_tags: pd.DataFrame, data: PreparedData) -> list[list[str]]:
    """The raw label sets of the test rows, found by their features (wine's rows are unique)."""
    features = wine_tags.drop(columns=["tags"]).to_numpy(dtype=float).round(6)
    by_row = dict(zip(map(tuple, features), wine_tags["tags"], strict=True))
    return [by_row[row] for row in map(tuple, data.test_frame.to_numpy(dtype=float).round(6))]


def test_label_sets_fold_split_and_refuse_class_only_options(
    wine_tags: pd.DataFrame, write, caplog: pytest.LogCaptureFixture
) -> None:
    from danlu.data import cv_splits

    config = _label_set_sources(wine_tags, write)["pipes"]
    folds = cv_splits(config, MULTILABEL, 3)
    assert sorted(np.concatenate([te for _, _, te in folds]).tolist()) == list(range(178))
    fold = prepare_data(config, MULTILABEL, indices=folds[0])
    assert fold.y_test.shape == (len(folds[0][2]), 3)
    with caplog.at_level(logging.WARNING, logger="danlu"):
        prepare_data(config.model_copy(update={"split": SplitConfig(stratify=True)}), MULTILABEL)
    assert "stratify is ignored: stratifying needs a single-label class target" in caplog.text
    for method in ("class_weight", "oversample", "smote"):
        bad = DataConfig.model_validate({**config.model_dump(), "imbalance": method})
        with pytest.raises(DataError, match="single-label class target.*label sets"):
            prepare_data(bad, MULTILABEL)


def test_listed_label_columns_need_a_label_set_task(wine_tags: pd.DataFrame, write) -> None:
    config = _label_set_sources(wine_tags, write)["columns"]
    with pytest.raises(
        DataError, match="lists 3 label columns.*task 'classification' needs one class"
    ):
        prepare_data(config, "classification")
    with pytest.raises(DataError, match="target_kind.*'label_set'"):
        prepare_data(config, SimpleNamespace(name="multilabel", target_kind="label_set"))
    with pytest.raises(DataError, match="classification, regression.*'multilabel'"):
        prepare_data(config, "multilabel")


def test_the_task_object_path_matches_the_task_name_path() -> None:
    config = DataConfig(source="builtin:wine")
    by_name = prepare_data(config, "classification")
    by_object = prepare_data(config, SimpleNamespace(name="tabular", target_kind="classes"))
    assert np.array_equal(by_name.y_train, by_object.y_train)
    assert by_object.schema.task == "tabular" and by_object.schema.target_kind == "classes"
    assert by_name.schema.target_kind == "classes"


# -- no silent row loss: copies kept together, drops counted -------------------------------------
def _row_hashes(frame: pd.DataFrame) -> np.ndarray:
    return pd.util.hash_pandas_object(frame, index=False).to_numpy()


def test_titanic_keeps_every_row_and_no_copy_crosses_the_splits() -> None:
    config = DataConfig(source="builtin:titanic")
    rows = split_rows(load_source("builtin:titanic"), config, "classification")
    assert len(rows.frame) == 1309 and rows.duplicates_dropped == 0
    hashes = _row_hashes(rows.frame)
    seen = [set(hashes[i].tolist()) for i in (rows.train_idx, rows.val_idx, rows.test_idx)]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    data = prepare_data(config, "classification")
    accounting = row_accounting(data.report)
    assert accounting["loaded"] == sum(accounting["used"].values()) == 1309
    assert accounting["copies_kept_together"] > 500
    assert data.quality["split"]["shared_rows"] == 0  # no test row's features seen in training


def test_dedupe_when_asked_drops_and_counts_the_copies() -> None:
    config = DataConfig(source="builtin:titanic", prepare=PrepareConfig(dedupe=True))
    accounting = row_accounting(prepare_data(config, "classification").report)
    assert accounting["dropped"]["duplicates"] == 596
    assert sum(accounting["used"].values()) == 1309 - 596


def test_missing_targets_are_an_error_naming_the_key_or_dropped_and_counted(write) -> None:
    frame = pd.DataFrame({"x": np.arange(40.0), "target": _labels(40).astype(float)})
    frame.loc[[5, 17], "target"] = np.nan
    path = write(frame, "rows.csv")
    with pytest.raises(DataError, match="2 missing value.*data.prepare.missing_target: drop"):
        prepare_data(DataConfig(source=path), "classification")
    config = DataConfig(source=path, prepare=PrepareConfig(missing_target="drop"))
    data = prepare_data(config, "classification")
    assert data.report["target_dropped"] == 2 and sum(data.report["rows"].values()) == 38


def test_split_by_time_trains_on_the_earliest_rows(write) -> None:
    n = 50
    days = pd.date_range("2024-01-01", periods=n, freq="D")
    order = np.random.default_rng(1).permutation(n)
    frame = pd.DataFrame(
        {"when": days[order].strftime("%Y-%m-%d"), "x": np.arange(n, dtype=float),
         "target": _labels(n)}
    )  # fmt: skip
    split = SplitConfig(by="time", column="when", test=0.2, val=0.2)
    data = prepare_data(DataConfig(source=write(frame, "rows.csv"), split=split), "classification")
    assert data.report["rows"] == {"train": 30, "val": 10, "test": 10}
    assert data.report["split_by"] == "time" and data.report["stratified"] is False
    config = DataConfig(source=write(frame, "rows.csv"), split=split)
    rows = split_rows(load_source(config.source), config, "classification")
    when = pd.to_datetime(rows.frame["when"])
    assert when[rows.train_idx].max() < when[rows.val_idx].min()
    assert when[rows.val_idx].max() < when[rows.test_idx].min()


def test_split_by_time_refuses_values_that_are_not_times(write) -> None:
    frame = pd.DataFrame({"when": ["2024-01-01"] * 19 + ["soon"], "target": _labels(20)})
    frame["x"] = 1.0
    split = SplitConfig(by="time", column="when")
    with pytest.raises(RecipeDataError, match="'soon' at row 20") as info:
        prepare_data(DataConfig(source=write(frame, "rows.csv"), split=split), "classification")
    assert info.value.loc == ("data", "split", "column")


def test_split_by_group_keeps_each_group_in_one_split(write) -> None:
    n = 120
    frame = pd.DataFrame(
        {"patient": np.arange(n) // 4, "x": np.random.default_rng(0).normal(size=n),
         "target": _labels(n)}
    )  # fmt: skip
    config = DataConfig(source=write(frame, "rows.csv"), split=SplitConfig(group="patient"))
    rows = split_rows(load_source(config.source), config, "classification")
    patients = [
        set(rows.frame["patient"][i]) for i in (rows.train_idx, rows.val_idx, rows.test_idx)
    ]
    assert all(len(p) for p in patients)
    assert not (patients[0] & patients[1]) and not (patients[0] & patients[2])
    assert not (patients[1] & patients[2]) and rows.split_by == "group"


def test_a_split_column_not_in_the_data_names_the_key(write) -> None:
    frame = pd.DataFrame({"patient": np.arange(20), "target": _labels(20)})
    config = DataConfig(source=write(frame, "rows.csv"), split=SplitConfig(group="patiemt"))
    with pytest.raises(RecipeDataError, match="Did you mean 'patient'") as info:
        prepare_data(config, "classification")
    assert info.value.loc == ("data", "split", "group")


# -- task sanity ----------------------------------------------------------------------------------
def test_classification_of_a_price_is_refused_with_regression_suggested() -> None:
    with pytest.raises(DataError, match="does not look like classes.*use task: regression"):
        prepare_data(DataConfig(source="builtin:diamonds"), "classification")


def test_regression_over_a_few_integer_codes_is_warned(
    write, caplog: pytest.LogCaptureFixture
) -> None:
    frame = pd.DataFrame({"x": np.arange(60.0), "target": np.arange(60) % 3})
    with caplog.at_level(logging.WARNING, logger="danlu"):
        prepare_data(DataConfig(source=write(frame, "rows.csv")), "regression")
    assert "only 3 distinct whole numbers (0, 1, 2)" in caplog.text
    assert "task: classification" in caplog.text


def test_cv_folds_keep_copies_of_a_row_in_one_fold() -> None:
    from danlu.data import cv_splits

    config = DataConfig(source="builtin:titanic")
    rows = split_rows(load_source("builtin:titanic"), config, "classification")
    features = _row_hashes(rows.frame.drop(columns=[rows.target]))
    for train, val, test in cv_splits(config, "classification", 5):
        seen = [set(features[i].tolist()) for i in (train, val, test)]
        assert not (seen[0] & seen[2]) and not (seen[1] & seen[2]) and not (seen[0] & seen[1])
