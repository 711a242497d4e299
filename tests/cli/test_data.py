from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tests.cli._runner import danlu

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_inspect_a_recipe_uses_its_split() -> None:
    out = danlu("data", "inspect", str(EXAMPLES / "wine_mlp.yaml"), "--set", "data.split.test=0.3")
    assert out.code == 0, out.stderr
    assert "builtin:wine: 178 rows x 14 columns (13 features), classification" in out.stdout
    from danlu.config import load_recipe
    from danlu.data import prepare_data

    recipe = load_recipe(EXAMPLES / "wine_mlp.yaml", ["data.split.test=0.3"])
    rows = prepare_data(recipe.data, recipe.task).report["rows"]  # what training would get
    split = f"split train {rows['train']} / val {rows['val']} / test {rows['test']} (stratified)"
    assert split == "split train 106 / val 18 / test 54 (stratified)" and split in out.stdout
    flat = " ".join(out.stdout.split())
    assert "alcohol" in flat and "imbalance ratio 1.479" in flat


def test_inspect_a_file_infers_the_task_and_shows_warnings(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 120
    price = rng.normal(100, 20, n)
    frame = pd.DataFrame(
        {
            "size": rng.normal(50, 10, n),
            "same": 1,
            "price_copy": price,
            "city": rng.choice(["oslo", "rome"], n),
            "price": price,
        }
    )
    path = tmp_path / "houses.csv"
    frame.to_csv(path, index=False)
    out = danlu("data", "inspect", str(path), "--target", "price")
    assert out.code == 0, out.stderr
    assert "regression on 'price'" in out.stdout
    assert "Possible target leakage: feature 'price_copy'" in out.stdout.replace("\n", " ")
    assert "'same'" in out.stdout and "warning(s)" in out.stdout
    as_class = danlu("data", "inspect", str(path), "--target", "city", "--json")
    assert as_class.code == 0, as_class.stderr
    assert json.loads(as_class.stdout)["task"] == "classification"


def test_inspect_builtin_json_output_and_html(tmp_path: Path) -> None:
    report_path, html_path = tmp_path / "report.json", tmp_path / "report.html"
    out = danlu(
        "data", "inspect", "builtin:iris", "--json", "--output", str(report_path),
        "--html", str(html_path),
    )  # fmt: skip
    assert out.code == 0, out.stderr
    printed = json.loads(out.stdout)
    assert printed == json.loads(report_path.read_text())
    assert printed["source"] == "builtin:iris" and printed["rows"] == 150  # its one duplicate kept
    assert {c["name"] for c in printed["details"]} == {
        "sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)",
    }  # fmt: skip
    page = html_path.read_text()
    assert page.startswith("<!DOCTYPE html>") and '<section class="danlu-quality">' in page
    assert "petal width (cm)" in page


def test_task_override() -> None:
    out = danlu("data", "inspect", "builtin:wine", "--task", "regression", "--json")
    assert out.code == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["task"] == "regression" and "median" in report["target"]


def test_set_task_on_a_file_overrides_inference_and_bad_choices_are_clear() -> None:
    out = danlu("data", "inspect", "builtin:iris", "--set", "task=regression", "--json")
    assert out.code == 0, out.stderr
    assert json.loads(out.stdout)["task"] == "regression"  # inferred would be classification
    bad = danlu("data", "inspect", "builtin:diabetes", "--set", "task=classification")
    assert bad.code == 3 and "does not look like classes" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_recipe_with_failing_checks_is_reported_not_raised(tmp_path: Path) -> None:
    recipe = tmp_path / "checked.yaml"
    text = (
        (EXAMPLES / "wine_mlp.yaml")
        .read_text()
        .replace(
            "  source: builtin:wine\n",
            "  source: builtin:wine\n  checks: {min_rows: 500, columns: {alcohol: {max: 14}}}\n",
        )
    )
    recipe.write_text(text)
    out = danlu("data", "inspect", str(recipe))
    assert out.code == 0, out.stderr
    flat = " ".join(out.stdout.split())
    assert "Data check failed: data, min_rows" in flat
    assert "Data check failed: column 'alcohol', max" in flat


def test_bad_paths_exit_non_zero_without_traceback(tmp_path: Path) -> None:
    missing = danlu("data", "inspect", str(tmp_path / "nope.csv"))
    assert missing.code == 3 and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr + missing.stdout
    unknown = danlu("data", "inspect", "builtin:irsi")
    assert unknown.code == 4 and "Did you mean 'iris'" in unknown.stderr
    no_recipe = danlu("data", "inspect", str(tmp_path / "nope.yaml"))
    assert no_recipe.code != 0 and "Traceback" not in no_recipe.stderr
    unwritable = danlu("data", "inspect", "builtin:iris", "--html", str(tmp_path / "no" / "r.html"))
    assert unwritable.code == 1 and "Cannot write the HTML report" in unwritable.stderr


def test_data_is_listed_in_help() -> None:
    out = danlu("--help")
    assert out.code == 0 and "data" in out.stdout
    sub = danlu("data", "inspect", "--help")
    assert sub.code == 0 and "--html" in sub.stdout
