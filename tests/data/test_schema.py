"""Schema inference, overrides, and the FeatureSchema's JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from danlu.data import Feature, FeatureSchema, infer_schema, load_source
from danlu.errors import DataError

from .conftest import MULTILABEL, WINE_LABELS


def _kinds(schema: FeatureSchema) -> dict[str, str]:
    return {f.name: f.kind for f in schema.features}


def test_kinds_are_inferred_from_values(mixed_frame: pd.DataFrame) -> None:
    frame = mixed_frame.assign(
        zero_one=np.where(mixed_frame["flag"], "1", "0"),
        tf=np.where(mixed_frame["flag"], "TRUE", "false"),
        three=np.array(["yes", "no", "maybe"])[np.arange(60) % 3],
        size=pd.Categorical(np.array(["S", "M"])[np.arange(60) % 2]),
    )
    schema = infer_schema(frame, "label", "classification")
    assert _kinds(schema) == {
        "age": "numeric",
        "colour": "categorical",
        "member": "boolean",
        "flag": "boolean",
        "income": "numeric",
        "zero_one": "boolean",
        "tf": "boolean",
        "three": "categorical",
        "size": "categorical",
    }
    colour = next(f for f in schema.features if f.name == "colour")
    assert colour.categories == ("blue", "green", "red")
    assert schema.classes == ("cat", "dog", "fish") and schema.n_classes == 3


def test_numeric_zero_one_column_stays_numeric() -> None:
    frame = pd.DataFrame({"x": [0, 1, 0, 1], "target": [0, 1, 0, 1]})
    assert _kinds(infer_schema(frame, "target", "classification")) == {"x": "numeric"}


def test_onehot_and_ordinal_encoded_names(mixed_frame: pd.DataFrame) -> None:
    onehot = infer_schema(mixed_frame, "label", "classification")
    assert onehot.encoded_names[:4] == ("age", "colour=blue", "colour=green", "colour=red")
    assert onehot.input_dim == len(onehot.encoded_names) == 7
    ordinal = infer_schema(mixed_frame, "label", "classification", encode="ordinal")
    assert ordinal.encoded_names == ("age", "colour", "member", "flag", "income")
    assert ordinal.input_dim == 5


def test_overrides_win_and_ignore_drops(mixed_frame: pd.DataFrame) -> None:
    schema = infer_schema(
        mixed_frame, "label", "classification", {"age": "categorical", "income": "ignore"}
    )
    kinds = _kinds(schema)
    assert kinds["age"] == "categorical" and "income" not in kinds
    age = next(f for f in schema.features if f.name == "age")
    assert len(age.categories) > 10
    assert all(not c.endswith(".0") for c in age.categories)  # 18.0 is shown as "18"


def test_override_of_unknown_column_suggests_nearest(mixed_frame: pd.DataFrame) -> None:
    with pytest.raises(DataError) as info:
        infer_schema(mixed_frame, "label", "classification", {"colur": "ignore"})
    assert "'colur'" in str(info.value) and "Did you mean 'colour'?" in str(info.value)


def test_override_with_unknown_kind_lists_kinds(mixed_frame: pd.DataFrame) -> None:
    with pytest.raises(DataError, match="numeric, categorical, boolean, datetime, ignore"):
        infer_schema(mixed_frame, "label", "classification", {"age": "number"})


def test_override_of_target_is_refused(mixed_frame: pd.DataFrame) -> None:
    with pytest.raises(DataError, match="target"):
        infer_schema(mixed_frame, "label", "classification", {"label": "categorical"})


def test_absent_target_names_nearest(mixed_frame: pd.DataFrame) -> None:
    with pytest.raises(DataError, match="Did you mean 'label'"):
        infer_schema(mixed_frame, "labels", "classification")


def test_unknown_task_is_a_data_error(mixed_frame: pd.DataFrame) -> None:
    with pytest.raises(DataError, match="regression"):
        infer_schema(mixed_frame, "label", "forecast")


def test_schema_json_round_trip(mixed_frame: pd.DataFrame) -> None:
    schema = infer_schema(mixed_frame, "label", "classification", image_shape=[1, 1, 7])
    again = FeatureSchema.from_dict(json.loads(json.dumps(schema.to_dict())))
    assert again == schema
    assert again.image_shape == (1, 1, 7)


def test_integer_classes_round_trip_as_python_ints() -> None:
    schema = infer_schema(load_source("builtin:wine").frame, "target", "classification")
    assert schema.classes == (0, 1, 2)
    assert all(type(c) is int for c in schema.classes)
    again = FeatureSchema.from_dict(json.loads(json.dumps(schema.to_dict())))
    assert again.classes == (0, 1, 2) and again == schema


def test_regression_schema_has_no_classes() -> None:
    frame = load_source("builtin:diabetes").frame
    schema = infer_schema(frame, "target", "regression")
    assert schema.classes is None and schema.n_classes is None and schema.input_dim == 10


def test_malformed_schema_dict_is_a_data_error() -> None:
    schema = FeatureSchema((Feature("x", "numeric"),), "y", "regression", input_dim=1)
    broken = schema.to_dict()
    del broken["features"]
    with pytest.raises(DataError, match="malformed"):
        FeatureSchema.from_dict(broken)


def test_label_set_schema_round_trips_with_its_target_kind(wine_tags: pd.DataFrame) -> None:
    schema = infer_schema(wine_tags, "tags", MULTILABEL)
    assert (schema.task, schema.target_kind) == ("multilabel", "label_sets")
    assert schema.classes == WINE_LABELS and schema.n_classes == 3
    assert [f.name for f in schema.features] == list(wine_tags.columns[:-1])
    saved = json.loads(json.dumps(schema.to_dict()))
    assert saved["target_kind"] == "label_sets"
    assert FeatureSchema.from_dict(saved) == schema


@pytest.mark.parametrize(
    ("task", "kind"),
    [("classification", "classes"), ("regression", "values"), ("forecasting", "values")],
)
def test_schemas_saved_without_a_target_kind_derive_it(task: str, kind: str) -> None:
    classes = ["a", "b"] if task == "classification" else None
    old = {
        "features": [{"name": "x", "kind": "numeric", "categories": []}],
        "target": "y", "task": task, "classes": classes, "target_mean": None,
        "target_std": None, "image_shape": None, "input_dim": 1, "encoded_names": ["x"],
    }  # fmt: skip
    schema = FeatureSchema.from_dict(old)
    assert schema.target_kind == kind and schema.task == task
    assert FeatureSchema((Feature("x", "numeric"),), "y", task).target_kind == kind


def test_an_unknown_target_kind_is_malformed() -> None:
    saved = FeatureSchema((Feature("x", "numeric"),), "y", "regression").to_dict()
    with pytest.raises(DataError, match="malformed.*target_kind must be one of"):
        FeatureSchema.from_dict({**saved, "target_kind": "sets"})
