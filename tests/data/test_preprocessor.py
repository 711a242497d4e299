"""The Preprocessor: imputation, scaling, encoding, target encoding and its JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import RobustScaler

from danlu.config import PrepareConfig
from danlu.data import Preprocessor, load_source
from danlu.errors import DataError, NotFittedError

from .conftest import MULTILABEL, WINE_LABELS


def _fit(frame: pd.DataFrame, target: str = "label", task: str = "classification", **prep):
    return Preprocessor(PrepareConfig(**prep), target=target, task=task).fit(frame)


def test_unfitted_use_raises_not_fitted(mixed_frame: pd.DataFrame) -> None:
    pre = Preprocessor(target="label", task="classification")
    for use in (
        lambda: pre.transform(mixed_frame),
        lambda: pre.schema_,
        lambda: pre.to_dict(),
        lambda: pre.encode_target(mixed_frame["label"]),
        lambda: pre.decode_target([0]),
    ):
        with pytest.raises(NotFittedError, match="not fitted"):
            use()


def test_transform_layout_and_encodings(mixed_frame: pd.DataFrame) -> None:
    pre = _fit(mixed_frame)
    x = pre.transform(mixed_frame)
    schema = pre.schema_
    assert x.dtype == np.float32 and x.shape == (60, schema.input_dim) == (60, 7)
    names = list(schema.encoded_names)
    onehot = x[:, names.index("colour=blue") : names.index("colour=red") + 1]
    assert np.array_equal(onehot.sum(axis=1), np.ones(60))
    assert np.array_equal(x[:, names.index("member")], (mixed_frame["member"] == "yes").to_numpy())
    assert np.array_equal(x[:, names.index("flag")], mixed_frame["flag"].to_numpy())
    income = x[:, names.index("income")]
    assert abs(income.mean()) < 1e-5 and income.std() == pytest.approx(1.0, abs=1e-5)


def test_unseen_category_onehot_is_all_zeros(mixed_frame: pd.DataFrame) -> None:
    pre = _fit(mixed_frame)
    row = mixed_frame.iloc[:1].assign(colour="purple")
    names = list(pre.schema_.encoded_names)
    x = pre.transform(row)
    assert x[0, names.index("colour=blue") : names.index("colour=red") + 1].tolist() == [0, 0, 0]


def test_unseen_category_ordinal_is_k(mixed_frame: pd.DataFrame) -> None:
    pre = _fit(mixed_frame, encode="ordinal")
    names = list(pre.schema_.encoded_names)
    rows = mixed_frame.iloc[:2].assign(colour=["purple", "red"])
    codes = pre.transform(rows)[:, names.index("colour")]
    assert codes.tolist() == [3.0, 2.0]  # blue=0, green=1, red=2, unseen=3


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("mean", 2.5), ("median", 2.0), ("most_frequent", 1.0), ("constant", -7.0)],
)
def test_numeric_missing_strategies(strategy: str, expected: float) -> None:
    frame = pd.DataFrame({"x": [1.0, 1.0, 3.0, 5.0, np.nan], "c": ["a", "a", "b", None, "b"]})
    frame["label"] = [0, 1, 0, 1, 0]
    pre = _fit(frame, missing=strategy, fill_value=-7, scale="none")
    assert pre.fill_["x"] == pytest.approx(expected)
    assert pre.transform(frame)[4, 0] == pytest.approx(expected)
    # categorical columns use the most frequent value whatever the numeric strategy
    # (ties go to the smallest), except with 'constant'
    assert pre.fill_["c"] == ("-7" if strategy == "constant" else "a")


def test_constant_fill_adds_a_category_for_categorical_columns() -> None:
    frame = pd.DataFrame({"c": ["a", None, "b"], "label": [0, 1, 0]})
    pre = _fit(frame, missing="constant", fill_value="unknown")
    assert pre.schema_.features[0].categories == ("a", "b", "unknown")
    assert pre.transform(pd.DataFrame({"c": [None]})).tolist() == [[0.0, 0.0, 1.0]]


def test_missing_value_with_drop_strategy_is_a_data_error_at_transform() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "label": [0, 1, 0]})
    pre = _fit(frame, missing="drop")
    with pytest.raises(DataError, match=r"Column 'x' has 1 missing value\(s\), the first at row 2"):
        pre.transform(pd.DataFrame({"x": [4.0, np.nan]}))


def test_missing_input_column_is_named(mixed_frame: pd.DataFrame) -> None:
    pre = _fit(mixed_frame)
    with pytest.raises(DataError, match="'income'"):
        pre.transform(mixed_frame.drop(columns=["income"]))


def test_non_numeric_value_in_numeric_column_is_named(mixed_frame: pd.DataFrame) -> None:
    pre = _fit(mixed_frame)
    bad = mixed_frame.astype({"age": object})
    bad.loc[3, "age"] = "old"
    with pytest.raises(DataError, match="'age'.*'old' at row 4"):
        pre.transform(bad)


def _gappy(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with an unseen category and a missing value in every kind of column."""
    frame = frame.astype({"member": object, "flag": object, "colour": object})
    frame.loc[1, "colour"] = "purple"  # unseen
    frame.loc[2, ["age", "colour", "member", "flag", "income"]] = [np.nan, None, None, None, np.nan]
    return frame


@pytest.mark.parametrize("encode", ["onehot", "ordinal"])
def test_transform_columns_is_transforms_replay_without_a_frame(
    mixed_frame: pd.DataFrame, encode: str
) -> None:
    pre = _fit(mixed_frame, encode=encode)
    frame = _gappy(mixed_frame.iloc[:10].drop(columns="label"))
    expected = pre.transform(frame)
    read = {f.name: pre.read_column(frame[f.name], f.kind) for f in pre.schema_.features}
    np.testing.assert_array_equal(pre.transform_columns(read), expected)
    # raw JSON-like values: lists with None, numbers as categories, 0/1 and true/false
    raw = {name: frame[name].tolist() for name in ("age", "colour", "income")}
    raw["member"] = [None if v is None else v == "yes" for v in frame["member"]]
    raw["flag"] = [None if v is None else int(v) for v in frame["flag"]]
    raw["age"] = [None if v != v else v for v in raw["age"]]
    np.testing.assert_array_equal(pre.transform_columns(raw), expected)


def test_categorical_numbers_encode_as_their_string() -> None:
    frame = pd.DataFrame({"c": ["3", "4", "3.5"], "label": [0, 1, 0]})
    pre = _fit(frame)
    a = pre.transform_columns({"c": [3, 3.0, "3", 3.5, np.float64(4.0)]})
    assert a.tolist() == [[1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]


def test_transform_matrix_matches_transform_for_numeric_and_boolean_rows() -> None:
    frame = pd.DataFrame(
        {"x": [1.0, 2.0, np.nan, 4.0], "b": [True, False, True, True], "label": [0, 1, 0, 1]}
    )
    pre = _fit(frame)
    rows = pd.DataFrame({"x": [np.nan, 3.0], "b": [0.0, 1.0]})
    matrix = rows.to_numpy(dtype=np.float64)
    np.testing.assert_array_equal(pre.transform_matrix(matrix), pre.transform(rows))
    with pytest.raises(DataError, match="transform_columns"):
        _fit(pd.DataFrame({"c": ["a", "b"], "label": [0, 1]})).transform_matrix(matrix)
    huge = np.array([[1e300, 1.0], [-1e300, 0.0]])  # beyond float32: ±inf, without a warning
    assert np.isinf(pre.transform_matrix(huge)[:, 0]).all()
    columns = {"x": huge[:, 0], "b": huge[:, 1]}
    np.testing.assert_array_equal(pre.transform_columns(columns), pre.transform_matrix(huge))


def test_transform_columns_names_what_is_wrong(mixed_frame: pd.DataFrame) -> None:
    pre = _fit(mixed_frame)
    columns = {name: mixed_frame[name].iloc[:3].tolist() for name in pre.schema_.feature_names}
    with pytest.raises(DataError, match="'member' holds a value that is not a number"):
        pre.transform_columns(columns)  # "yes": read it with read_column first
    columns["member"] = [1.0, 0.0, 1.0]
    with pytest.raises(DataError, match="'income'"):
        pre.transform_columns({k: v for k, v in columns.items() if k != "income"})
    with pytest.raises(DataError, match="differ in length"):
        pre.transform_columns({**columns, "age": [1.0]})
    with pytest.raises(DataError, match="'age' holds a value that is not a number"):
        pre.transform_columns({**columns, "age": [1.0, "old", 2.0]})
    strict = _fit(mixed_frame, missing="drop")
    with pytest.raises(
        DataError, match=r"Column 'colour' has 1 missing value\(s\), the first at row 2"
    ):
        strict.transform_columns({**columns, "colour": ["red", None, "blue"]})


def test_column_with_no_values_cannot_be_filled() -> None:
    frame = pd.DataFrame({"x": [np.nan, np.nan], "y": [1.0, 2.0], "label": [0, 1]})
    with pytest.raises(DataError, match="'x' has no values.*ignore"):
        _fit(frame)


@pytest.mark.parametrize("method", ["standard", "minmax", "robust", "none"])
def test_scalers_replay_as_center_and_scale(method: str) -> None:
    frame = load_source("builtin:diabetes").frame
    pre = _fit(frame, target="target", task="regression", scale=method)
    x = pre.transform(frame)
    raw = frame.drop(columns="target").to_numpy()
    if method == "standard":
        np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-5)
    elif method == "minmax":
        np.testing.assert_allclose([x.min(axis=0), x.max(axis=0)], [[0] * 10, [1] * 10], atol=1e-6)
    elif method == "robust":
        np.testing.assert_allclose(x, RobustScaler().fit_transform(raw), rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_allclose(x, raw, rtol=1e-6)


def test_zero_spread_column_scales_by_one() -> None:
    frame = pd.DataFrame({"x": [5.0, 5.0, 5.0], "label": [0, 1, 0]})
    pre = _fit(frame, scale="minmax")
    assert pre.scale_["x"] == 1.0 and pre.transform(frame)[:, 0].tolist() == [0.0, 0.0, 0.0]


def test_classification_target_encoding(mixed_frame: pd.DataFrame) -> None:
    pre = _fit(mixed_frame)
    codes = pre.encode_target(mixed_frame["label"])
    assert codes.dtype == np.int64 and codes[:3].tolist() == [0, 1, 2]
    assert pre.decode_target(codes).tolist() == mixed_frame["label"].tolist()
    with pytest.raises(DataError, match="'bird'.*'cat', 'dog', 'fish'"):
        pre.encode_target(pd.Series(["cat", "bird"]))
    with pytest.raises(DataError, match="0..2"):
        pre.decode_target([3])


def test_known_classes_from_constructor_cover_labels_missing_in_train() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0], "label": ["a", "b"]})
    pre = Preprocessor(target="label", task="classification", classes=["a", "b", "c"]).fit(frame)
    assert pre.schema_.classes == ("a", "b", "c")
    assert pre.encode_target(["c"]).tolist() == [2]


def test_regression_target_is_standardized_on_fit_rows() -> None:
    frame = load_source("builtin:diabetes").frame
    pre = _fit(frame, target="target", task="regression")
    y = pre.encode_target(frame["target"])
    assert y.dtype == np.float32
    assert pre.schema_.target_mean == pytest.approx(frame["target"].mean())
    assert abs(float(y.mean())) < 1e-5 and float(y.std()) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(pre.decode_target(y), frame["target"], rtol=1e-5)


def test_json_round_trip_gives_identical_transforms(mixed_frame: pd.DataFrame) -> None:
    frame = mixed_frame.copy()
    frame.loc[[2, 5], "age"] = np.nan
    frame.loc[7, "colour"] = None
    pre = _fit(frame, missing="median", scale="robust")
    again = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    probe = frame.assign(colour=["purple"] + frame["colour"].tolist()[1:])
    assert np.array_equal(again.transform(probe), pre.transform(probe))
    assert again.schema_ == pre.schema_
    codes = pre.encode_target(frame["label"])
    assert np.array_equal(again.encode_target(frame["label"]), codes)
    assert again.decode_target(codes).tolist() == frame["label"].tolist()


def test_json_round_trip_regression_and_int_classes() -> None:
    frame = load_source("builtin:wine").frame
    for task in ("classification", "regression"):
        pre = _fit(frame, target="target", task=task)
        again = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
        assert np.array_equal(again.transform(frame), pre.transform(frame))
        assert np.array_equal(
            again.encode_target(frame["target"]), pre.encode_target(frame["target"])
        )


def test_from_dict_rejects_foreign_or_broken_dicts(mixed_frame: pd.DataFrame) -> None:
    with pytest.raises(DataError, match="not a saved danlu preprocessor"):
        Preprocessor.from_dict({"mean": 1})
    broken = _fit(mixed_frame).to_dict()
    del broken["center"]
    with pytest.raises(DataError, match="malformed"):
        Preprocessor.from_dict(broken)


def test_label_set_preprocessor_round_trips_without_knowing_the_task(
    wine_tags: pd.DataFrame,
) -> None:
    pre = Preprocessor(target="tags", task=MULTILABEL).fit(wine_tags)
    assert (pre.task, pre.target_kind, pre.schema_.classes) == (
        "multilabel",
        "label_sets",
        WINE_LABELS,
    )
    y = pre.encode_target(wine_tags["tags"])
    assert y.dtype == np.float32 and y.shape == (178, 3)
    saved = json.loads(json.dumps(pre.to_dict()))
    assert saved["target_kind"] == saved["schema"]["target_kind"] == "label_sets"
    again = Preprocessor.from_dict(saved)  # a name the data layer has never heard of
    assert (again.task, again.target_kind) == ("multilabel", "label_sets")
    assert again.schema_ == pre.schema_
    assert np.array_equal(again.transform(wine_tags), pre.transform(wine_tags))
    assert np.array_equal(again.encode_target(wine_tags["tags"]), y)
    assert again.decode_target(y).tolist() == [tuple(sorted(t)) for t in wine_tags["tags"]]
    with pytest.raises(DataError, match="'sweet'.*not among the known labels"):
        again.encode_target(["dark|sweet"])


def test_preprocessors_saved_before_target_kinds_still_load() -> None:
    frame = load_source("builtin:wine").frame
    for task, kind in (("classification", "classes"), ("regression", "values")):
        saved = json.loads(json.dumps(_fit(frame, target="target", task=task).to_dict()))
        del saved["target_kind"], saved["schema"]["target_kind"]
        again = Preprocessor.from_dict(saved)
        assert again.target_kind == again.schema_.target_kind == kind
        assert np.array_equal(
            again.encode_target(frame["target"]),
            _fit(frame, target="target", task=task).encode_target(frame["target"]),
        )
