"""Target kinds: tasks resolved to kinds, label-set cells parsed, each codec's encode and decode."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from danlu.data import TARGET_KINDS, TaskRef, label_set, resolve_task
from danlu.data._target import TargetFit, target_codec
from danlu.errors import DataError

from .conftest import MULTILABEL, WINE_LABELS


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("classification", TaskRef("classification", "classes")),
        ("regression", TaskRef("regression", "values")),
        (MULTILABEL, TaskRef("multilabel", "label_sets")),
        (
            SimpleNamespace(name="forecasting", target_kind="values"),
            TaskRef("forecasting", "values"),
        ),
        (TaskRef("x", "classes"), TaskRef("x", "classes")),
    ],
)
def test_task_names_and_task_objects_resolve_to_a_kind(task, expected: TaskRef) -> None:
    assert resolve_task(task) == expected
    assert expected.target_kind in TARGET_KINDS


def test_unknown_tasks_and_kinds_are_data_errors() -> None:
    with pytest.raises(DataError, match="classification, regression.*'regresion'.*regression"):
        resolve_task("regresion")
    with pytest.raises(DataError, match="'label_set'.*label_sets.*Valid kinds"):
        resolve_task(SimpleNamespace(name="tags", target_kind="label_set"))
    with pytest.raises(DataError, match="'name' and a 'target_kind'"):
        resolve_task(SimpleNamespace(target_kind="classes"))


@pytest.mark.parametrize(
    ("cell", "labels"),
    [
        (["dark", "strong"], ("dark", "strong")),
        (("strong", "dark", "strong"), ("dark", "strong")),  # sorted, repeats collapse
        ({"dark"}, ("dark",)),
        (np.array(["strong", "dark"], dtype=object), ("dark", "strong")),
        ('["strong", "dark"]', ("dark", "strong")),
        ("strong|dark", ("dark", "strong")),
        (" strong | dark |", ("dark", "strong")),  # spaces and empty pieces dropped
        ("dark", ("dark",)),
        ([3, 1], (1, 3)),
        (np.int64(7), (7,)),
        ("", ()),
        ("[]", ()),
        ([], ()),
        (None, ()),
        (float("nan"), ()),
    ],
)
def test_label_set_cells_in_every_accepted_form(cell, labels: tuple) -> None:
    assert label_set(cell) == labels


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ('["dark", ', "not a JSON list"),
        ([["dark"]], "not a label"),
        ('[{"a": 1}]', "not a label"),
        ({"dark": 1}, "not a label"),
        ([None, "dark"], "not a label"),
    ],
)
def test_unreadable_label_set_cells_are_data_errors(cell, message: str) -> None:
    with pytest.raises(DataError, match=message):
        label_set(cell)


def test_a_bad_cell_is_named_with_its_row() -> None:
    column = pd.Series(["dark", "strong|dark", '["x", '], name="tags")
    with pytest.raises(DataError, match="'tags', row 3.*not a JSON list"):
        target_codec("label_sets").normalize(column, "tags")


def test_label_sets_encode_to_multi_hot_and_decode_back(wine_tags: pd.DataFrame) -> None:
    codec = target_codec("label_sets")
    column = codec.normalize(wine_tags["tags"], "tags")
    fitted = codec.fit(column, "tags")
    assert fitted.classes == WINE_LABELS
    y = codec.encode(column, "tags", fitted)
    assert y.dtype == np.float32 and y.shape == (178, 3)
    assert set(np.unique(y)) == {0.0, 1.0}
    # every form of the same sets encodes the same
    as_json = wine_tags["tags"].map(json.dumps)
    as_pipes = wine_tags["tags"].map("|".join)
    for form in (as_json, as_pipes):
        assert np.array_equal(codec.encode(form, "tags", fitted), y)
    assert codec.decode(y, fitted).tolist() == column.tolist()
    assert (y.sum(axis=1) == 0).any()  # rows with no label are all zeros
    assert codec.empty(fitted).shape == (0, 3)


def test_decode_of_label_sets_thresholds_at_one_half() -> None:
    fitted = TargetFit(classes=("a", "b", "c"))
    scores = np.array([[0.9, 0.2, 0.51], [0.1, 0.1, 0.1]])
    assert target_codec("label_sets").decode(scores, fitted).tolist() == [("a", "c"), ()]
    with pytest.raises(DataError, match=r"shape \(rows, 3\).*\(2, 2\)"):
        target_codec("label_sets").decode(scores[:, :2], fitted)


def test_unknown_labels_are_named_with_the_first_row() -> None:
    fitted = TargetFit(classes=("dark", "strong"))
    column = pd.Series(["dark", "strong|sweet", "purple|sweet"])
    with pytest.raises(DataError, match=r"'purple', 'sweet' \(first at row 2\).*'dark', 'strong'"):
        target_codec("label_sets").encode(column, "tags", fitted)


def test_a_label_set_target_needs_one_label_somewhere() -> None:
    codec = target_codec("label_sets")
    with pytest.raises(DataError, match="no label in any of its 3 rows"):
        codec.check(codec.normalize(pd.Series(["", "[]", None]), "tags"), "tags")


def test_lists_in_a_class_target_point_at_label_sets() -> None:
    column = pd.Series([["a"], ["b", "c"]], name="tags")
    with pytest.raises(DataError, match="needs one class per row.*label_sets"):
        target_codec("classes").check(column, "tags")


def test_class_and_value_codecs_keep_their_encodings() -> None:
    classes = target_codec("classes")
    fitted = classes.fit(pd.Series(["b", "a", "b"]), "y")
    assert fitted.classes == ("a", "b")
    assert classes.encode(pd.Series(["b", "a"]), "y", fitted).tolist() == [1, 0]
    assert classes.decode(np.array([1, 0]), fitted).tolist() == ["b", "a"]
    values = target_codec("values")
    fitted = values.fit(pd.Series([1.0, 3.0]), "y")
    assert (fitted.target_mean, fitted.target_std) == (2.0, 1.0)
    assert values.encode(pd.Series([3.0]), "y", fitted).tolist() == [1.0]
    assert values.decode(np.array([1.0]), fitted).tolist() == [3.0]
    with pytest.raises(DataError, match="Unknown target kind 'value'.*'values'"):
        target_codec("value")
