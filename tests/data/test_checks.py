from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from danlu.config import ChecksConfig, DataConfig
from danlu.data import check_data, find_violations, prepare_data
from danlu.errors import DataCheckError, DataError

Write = Callable[[pd.DataFrame, str], str]


@pytest.fixture
def people() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [1, 2, 3, 3, 5, 6],
            "age": [34, -2, 51, 140, np.nan, np.nan],
            "country": ["fr", "de", "fr", "xx", "de", "fr"],
            "member": ["yes", "no", "maybe", "yes", "no", "yes"],
            "label": [0, 1, 0, 1, 0, 1],
        }
    )


def test_checks_that_pass_return_none(people: pd.DataFrame) -> None:
    checks = ChecksConfig(
        min_rows=6,
        columns={
            "age": {"type": "numeric", "min": -5, "max": 200, "max_missing": 0.5},
            "country": {"type": "categorical", "allowed": ["fr", "de", "xx"]},
            "label": {"type": "integer", "allowed": [0, 1]},
            "optional": {"present": False, "type": "numeric"},
        },
    )
    assert check_data(people, checks, "people.csv") is None
    assert find_violations(people, checks) == []


def test_every_violation_is_listed_in_one_error(people: pd.DataFrame) -> None:
    checks = ChecksConfig(
        min_rows=10,
        columns={
            "id": {"unique": True},
            "age": {"min": 0, "max": 120, "max_missing": 0.1},
            "country": {"allowed": ["fr", "de"]},
            "member": {"type": "boolean"},
            "income": {"type": "numeric"},
        },
    )
    with pytest.raises(DataCheckError) as caught:
        check_data(people, checks, "people.csv")
    error = caught.value
    assert isinstance(error, DataError) and error.exit_code == 3
    message = str(error)
    assert "'people.csv'" in message and "8 violations" in message
    found = [(v.column, v.check) for v in error.violations]
    assert found == [
        (None, "min_rows"),
        ("id", "unique"),
        ("age", "max_missing"),
        ("age", "min"),
        ("age", "max"),
        ("country", "allowed"),
        ("member", "type"),
        ("income", "present"),
    ]
    lines = message.splitlines()[1:]
    assert len(lines) == 8
    # each line: the column, the check, what was expected, what was found, and a fix
    assert (
        "column 'age', min: expected every value >= 0; found 1 value below 0 (first at row 2; e.g. -2.0)"
        in message
    )
    assert (
        "column 'age', max: expected every value <= 120; found 1 value above 120 (first at row 4; e.g. 140.0)"
        in message
    )
    assert "2 of 6 missing (33.3%; first at row 5)" in message
    assert "column 'id', unique" in message and "first at row 4; e.g. 3" in message
    assert "'xx'" in message and "data.checks.columns.country.allowed" in message
    assert "column 'member', type: expected boolean" in message and "'maybe'" in message
    assert "  - data, min_rows: expected at least 10 rows; found 6 rows." in message
    assert "column 'income', present" in message and "present: false" in message
    assert all("data.checks." in line for line in lines)  # the fix names the key to change


@pytest.mark.parametrize(
    ("values", "kind", "bad"),
    [
        (["1", "2", "x"], "numeric", "'x'"),
        ([1.0, 2.5, 3.0], "integer", "2.5"),
        ([0.5, 1.25, 2.0], "categorical", "0.5"),
        ([True, "no", "sometimes"], "boolean", "'sometimes'"),
        (["a", 3, "b"], "string", "3"),
    ],
)
def test_type_checks(values: list[object], kind: str, bad: str) -> None:
    frame = pd.DataFrame({"c": pd.Series(values, dtype=object)})
    [violation] = find_violations(frame, ChecksConfig(columns={"c": {"type": kind}}))
    assert violation.check == "type" and bad in violation.found


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        ([1.5, 2.0, None], "numeric"),
        ([1.0, 2.0, None], "integer"),
        (["a", "b", None], "categorical"),
        ([1, 2, 3], "categorical"),
        (["yes", "no", None], "boolean"),
        (["a", "b", None], "string"),
    ],
)
def test_type_checks_pass(values: list[object], kind: str) -> None:
    frame = pd.DataFrame({"c": values})
    assert find_violations(frame, ChecksConfig(columns={"c": {"type": kind}})) == []


def test_a_misspelt_column_gets_a_suggestion() -> None:
    frame = pd.DataFrame({"income": [1.0]})
    [violation] = find_violations(frame, ChecksConfig(columns={"incom": {}}))
    assert violation.check == "present" and "Did you mean 'income'" in violation.fix


def test_prepare_data_checks_before_anything_else(write: Write) -> None:
    frame = pd.DataFrame({"x": np.arange(40.0), "y": np.arange(40) % 2})
    frame.loc[3, "x"] = -1.0
    path = write(frame, "rows.csv")
    checks = {"min_rows": 50, "columns": {"x": {"min": 0}, "y": {"allowed": [0, 1]}}}
    with pytest.raises(DataCheckError) as caught:
        prepare_data(DataConfig(source=path, target="y", checks=checks), "classification")
    assert [v.check for v in caught.value.violations] == ["min_rows", "min"]
    assert "first at row 4" in str(caught.value)
    ok = {"min_rows": 10, "columns": {"y": {"allowed": [0, 1]}}}
    prepared = prepare_data(DataConfig(source=path, target="y", checks=ok), "classification")
    assert prepared.report["rows_loaded"] == 40


def test_a_failing_check_leaves_no_run_in_the_store(tmp_path, write: Write) -> None:
    import danlu
    from danlu.store import SqlStore

    path = write(pd.DataFrame({"x": np.arange(40.0), "y": np.arange(40) % 2}), "rows.csv")
    recipe = {
        "name": "checked",
        "data": {"source": path, "target": "y", "checks": {"columns": {"x": {"max": 10}}}},
        "task": "classification",
        "model": {"type": "mlp", "hidden": [4]},
        "train": {"epochs": 1},
    }
    home = tmp_path / "store"
    with pytest.raises(DataCheckError, match="column 'x', max"):
        danlu.run(recipe, home=home)
    assert SqlStore(home=home).search_runs() == []
    recipe["data"]["checks"] = {"columns": {"x": {"max": 100}}}
    result = danlu.run(recipe, home=home)
    artifacts = {p.name for p in result.run_dir.iterdir()}
    assert {"data_quality.json", "data_quality.html"} <= artifacts
    assert [r.id for r in SqlStore(home=home).search_runs()] == [result.run_id]
