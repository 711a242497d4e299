"""The .ts reader, the UCR/UEA built-ins read from sktime's wheel, and ``data.split.by: column``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from danlu.config import load_recipe
from danlu.data import load_source, prepare_data
from danlu.data._split import RecipeDataError, column_split_indices
from danlu.data._ts_format import read_ts, ts_frame
from danlu.errors import DataError

HEADER = "# a comment\n@problemName Toy\n@timeStamps false\n@univariate false\n@dimensions 2\n"
HEADER += "@equalLength true\n@seriesLength 3\n@classLabel true walk run\n@data\n"


def write_ts(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    path = tmp_path / "toy.ts"
    path.write_text(header + body)
    return path


def test_a_multivariate_file_reads_dimension_by_dimension(tmp_path: Path) -> None:
    path = write_ts(tmp_path, "1,2,3:4,5,6:walk\n\n7,?,9:10,11,12:run\n")
    ts = read_ts(path)
    assert ts.problem == "Toy" and ts.shape == (2, 3) and ts.labels == ("walk", "run")
    assert ts.class_labels == ("walk", "run")
    assert ts.values[0].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert np.isnan(ts.values[1, 0, 1])  # '?' is missing
    frame = ts_frame(ts)
    assert list(frame.columns) == ["d0_t0", "d0_t1", "d0_t2", "d1_t0", "d1_t1", "d1_t2", "target"]
    assert frame.iloc[0, :6].tolist() == [1, 2, 3, 4, 5, 6]  # viewed as (2, 3): the series
    assert frame["target"].tolist() == ["walk", "run"]


@pytest.mark.parametrize(
    ("body", "header", "match"),
    [
        ("1,2,3:4,5,6:walk\n1,2:4,5:run\n", HEADER, "equal-length"),
        ("1,2,3:4,5:walk\n", HEADER, "different lengths"),
        ("1,x,3:4,5,6:walk\n", HEADER, "line 10: 'x' is not a number"),
        ("1,2,3:4,5,6:swim\n", HEADER, "swim"),
        ("1,2,3:walk\n", HEADER, "@dimensions 2"),
        ("", HEADER, "no examples"),
        ("", HEADER.replace("@data\n", ""), "no @data"),
        ("1,2,3:4,5,6:walk\n", HEADER.replace("@data\n", ""), "header line before @data"),
        ("1,2,3:walk\n", "@timeStamps true\n@data\n", "timeStamps"),
        ("1,2,3:walk\n", "problem Toy\n@data\n", "header line"),
    ],
    ids=["ragged", "dims-differ", "not-a-number", "undeclared-label", "dimensions", "empty",
         "no-data", "values-before-data", "timestamps", "junk-header"],
)  # fmt: skip
def test_a_malformed_file_is_refused_naming_the_problem(
    tmp_path: Path, body: str, header: str, match: str
) -> None:
    with pytest.raises(DataError, match=match):
        read_ts(write_ts(tmp_path, body, header))


@pytest.mark.parametrize(
    ("name", "rows", "shape", "train", "classes"),
    [
        ("gunpoint", 200, (1, 150), 50, {1, 2}),
        ("italy_power_demand", 1096, (1, 24), 67, {1, 2}),
        ("basic_motions", 80, (6, 100), 40, {"Standing", "Walking", "Running", "Badminton"}),
    ],
)
def test_the_ucr_builtins_keep_shape_labels_and_the_archive_split(
    name: str, rows: int, shape: tuple[int, int], train: int, classes: set[object]
) -> None:
    raw = load_source(f"builtin:{name}")
    assert raw.image_shape == shape
    frame = raw.frame
    assert frame.shape == (rows, shape[0] * shape[1] + 2)
    assert set(frame["target"]) == classes
    assert frame["split"].tolist() == ["train"] * train + ["test"] * (rows - train)
    assert not frame.drop(columns=["split", "target"]).isna().any().any()


def test_split_by_column_keeps_the_archive_test_rows_and_drops_the_column() -> None:
    recipe = load_recipe(
        {
            "name": "gp",
            "data": {"source": "builtin:gunpoint", "split": {"by": "column", "column": "split"}},
            "task": "classification",
            "model": {"type": "cnn1d"},
        }
    )
    prepared = prepare_data(recipe.data, recipe.task)
    assert (len(prepared.x_train), len(prepared.x_val), len(prepared.x_test)) == (45, 5, 150)
    assert prepared.schema.input_dim == 150 and "split" not in prepared.schema.feature_names
    assert prepared.schema.image_shape == (1, 150)


def test_column_split_names_bad_values_and_missing_splits() -> None:
    with pytest.raises(RecipeDataError, match="name no split"):
        column_split_indices(["train", "dev"], np.zeros(2), val=0.0, stratify=False, seed=0)
    with pytest.raises(RecipeDataError, match="no row is marked test"):
        column_split_indices(["train", "val"], np.zeros(2), val=0.0, stratify=False, seed=0)
    train, val, test = column_split_indices(
        ["Train", "validation", "test", "train"], np.zeros(4), val=0.5, stratify=False, seed=0
    )  # marked validation rows are kept as they are
    assert (train.tolist(), val.tolist(), test.tolist()) == ([0, 3], [1], [2])


def test_split_by_column_needs_its_column_and_no_group() -> None:
    from danlu.errors import ConfigError

    base = {"name": "gp", "task": "classification", "model": {"type": "cnn1d"}}
    for split, match in (
        ({"by": "column"}, "by: column needs column"),
        ({"by": "column", "column": "split", "group": "x"}, "cannot be combined"),
        ({"column": "split"}, "column is read only with by: time or by: column"),
    ):
        with pytest.raises(ConfigError, match=match):
            load_recipe({**base, "data": {"source": "builtin:gunpoint", "split": split}})


def test_a_random_split_names_the_split_column_until_it_is_ignored() -> None:
    base = {"name": "gp", "task": "classification", "model": {"type": "cnn1d"}}
    recipe = load_recipe({**base, "data": {"source": "builtin:gunpoint"}})
    with pytest.raises(DataError, match="not numbers: 'split'; mark them 'ignore'"):
        prepare_data(recipe.data, recipe.task)
    data = {"source": "builtin:gunpoint", "features": {"split": "ignore"}}
    prepared = prepare_data(load_recipe({**base, "data": data}).data, "classification")
    assert prepared.schema.input_dim == 150
    assert len(prepared.x_train) + len(prepared.x_val) + len(prepared.x_test) == 200
