"""``danlu predict MODEL FILE``: raw rows without a target in, predictions with class names out,
streamed in chunks; bad input refused before anything is predicted, with no traceback."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest

from tests.cli._runner import danlu

SPECIES = ("setosa", "versicolor", "virginica")


class Home(NamedTuple):
    path: Path
    run_id: str
    rows: pd.DataFrame  # raw rows: id, the features, no target
    csv: Path  # the same rows as a CSV, with the species column too


def _iris() -> pd.DataFrame:
    """Iris with its species names, an id, and a categorical column made from petal length."""
    from danlu.data import load_source

    frame = load_source("builtin:iris").frame
    frame["species"] = [SPECIES[i] for i in frame.pop("target")]
    frame["petal size"] = np.where(frame["petal length (cm)"] > 4.0, "large", "small")
    frame.insert(0, "id", [f"p{i:03d}" for i in range(len(frame))])
    return frame


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    from danlu.pipeline import run
    from danlu.store import SqlStore

    folder = tmp_path_factory.mktemp("cli-predict")
    frame = _iris()
    train = folder / "iris.csv"
    frame.to_csv(train, index=False)
    home = folder / "home"
    store = SqlStore(home=home)
    result = run(
        {
            "name": "iris",
            "data": {"source": str(train), "target": "species", "features": {"id": "ignore"}},
            "task": "classification",
            "model": {"type": "mlp", "hidden": [16]},
            "train": {"epochs": 40, "checkpoint": {"every": 0}},
            "register": {"name": "iris", "alias": "staging"},
        },
        store=store,
    )
    store.close()
    yield Home(home, result.run_id, frame.drop(columns=["species"]), train)


@pytest.fixture
def home(trained: Home, monkeypatch: pytest.MonkeyPatch) -> Iterator[Home]:
    monkeypatch.setenv("DANLU_HOME", str(trained.path))
    yield trained


def _expected(home: Home) -> dict[str, np.ndarray]:
    import danlu

    return danlu.load_model("iris@staging").predict(home.rows)


def test_predicts_raw_rows_with_class_names_and_probabilities(home: Home, tmp_path: Path) -> None:
    rows = tmp_path / "new.csv"
    home.rows.to_csv(rows, index=False)  # no species column
    out = tmp_path / "scored.csv"
    outcome = danlu("predict", "iris@staging", str(rows), "--out", str(out), "--proba", "-k", "id")
    assert outcome.code == 0, outcome.stderr
    assert "150 rows" in outcome.stderr and "onnx" in outcome.stderr
    scored = pd.read_csv(out)
    proba = [f"proba_{s}" for s in SPECIES]
    assert list(scored.columns) == ["id", "prediction", *proba]
    assert scored["id"].tolist() == home.rows["id"].tolist()
    assert set(scored["prediction"]) <= set(SPECIES)
    np.testing.assert_allclose(scored[proba].sum(axis=1), 1.0, atol=1e-9)
    # the prediction is the most probable class, and both agree with the Python predictor
    assert (
        scored[proba].to_numpy().argmax(axis=1) == [SPECIES.index(p) for p in scored["prediction"]]
    ).all()
    expected = _expected(home)
    assert scored["prediction"].tolist() == list(expected["prediction"])
    np.testing.assert_allclose(scored[proba].to_numpy(), expected["probabilities"], atol=1e-5)


def test_a_target_column_is_ignored_or_kept(home: Home, tmp_path: Path) -> None:
    out = tmp_path / "with_target.csv"
    outcome = danlu("predict", "iris@staging", str(home.csv), "-o", str(out), "-k", "species")
    assert outcome.code == 0, outcome.stderr
    scored = pd.read_csv(out)
    assert list(scored.columns) == ["species", "prediction"]
    assert scored["prediction"].tolist() == list(_expected(home)["prediction"])
    assert (scored["species"] == scored["prediction"]).mean() > 0.5  # a trained model


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_parquet_and_jsonl_in_and_out(home: Home, tmp_path: Path, fmt: str) -> None:
    source = tmp_path / f"new.{fmt}"
    if fmt == "parquet":
        home.rows.to_parquet(source)
    else:
        home.rows.to_json(source, orient="records", lines=True)
    out = tmp_path / f"scored.{fmt}"
    outcome = danlu("predict", "iris@staging", str(source), "-o", str(out), "--proba", "-k", "id")
    assert outcome.code == 0, outcome.stderr
    scored = pd.read_parquet(out) if fmt == "parquet" else pd.read_json(out, lines=True)
    assert scored["prediction"].tolist() == list(_expected(home)["prediction"])
    assert scored["id"].tolist() == home.rows["id"].tolist()
    np.testing.assert_allclose(scored[[f"proba_{s}" for s in SPECIES]].sum(axis=1), 1.0)


def test_stdout_and_a_run_id(home: Home, tmp_path: Path) -> None:
    rows = tmp_path / "new.csv"
    home.rows.head(20).to_csv(rows, index=False)
    outcome = danlu("predict", home.run_id, str(rows), "--format", "jsonl", "-q")
    assert outcome.code == 0, outcome.stderr
    lines = [json.loads(line) for line in outcome.stdout.splitlines()]
    assert [line["prediction"] for line in lines] == list(_expected(home)["prediction"][:20])
    refused = danlu("predict", "iris@staging", str(rows), "--format", "parquet")
    assert refused.code != 0 and "--out" in refused.stderr


def test_a_missing_column_is_named_without_a_traceback(home: Home, tmp_path: Path) -> None:
    rows = tmp_path / "short.csv"
    home.rows.drop(columns=["petal width (cm)"]).to_csv(rows, index=False)
    out = tmp_path / "never.csv"
    outcome = danlu("predict", "iris@staging", str(rows), "-o", str(out))
    assert outcome.code == 3, outcome.stderr  # a DataError
    assert "'petal width (cm)'" in outcome.stderr and "Add them" in outcome.stderr
    assert "Traceback" not in outcome.stderr + outcome.stdout
    assert not out.exists()


def test_wrong_values_are_named_with_row_numbers_and_nothing_is_written(
    home: Home, tmp_path: Path
) -> None:
    bad = home.rows.astype({"sepal length (cm)": object, "petal size": object})
    bad.loc[120, "sepal length (cm)"] = "n/a?"
    bad.loc[130, "sepal length (cm)"] = "5,1"
    rows = tmp_path / "bad.csv"
    bad.to_csv(rows, index=False)
    out = tmp_path / "scored.csv"
    out.write_text("old\n")
    outcome = danlu("predict", "iris@staging", str(rows), "-o", str(out), "--chunk-rows", "16")
    assert outcome.code == 3, outcome.stderr
    text = outcome.stderr
    assert "'sepal length (cm)'" in text and "row 121 'n/a?'" in text, text
    assert "Traceback" not in text
    assert out.read_text() == "old\n"  # the old file stays; no temp file is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "scored.csv"]


def test_chunked_reading_gives_the_one_shot_output(home: Home, tmp_path: Path) -> None:
    frame = pd.concat([home.rows] * 3, ignore_index=True)  # 450 rows
    frame.loc[5, "petal size"] = None  # a missing category takes the learned fill
    frame.loc[7, "sepal width (cm)"] = None
    outputs = {}
    for fmt in ("csv", "parquet", "jsonl"):
        source = tmp_path / f"rows.{fmt}"
        if fmt == "csv":
            frame.to_csv(source, index=False)
        elif fmt == "parquet":
            frame.to_parquet(source)
        else:
            frame.to_json(source, orient="records", lines=True)
        for chunk in ("7", "100000"):
            out = tmp_path / f"out-{chunk}.csv"
            outcome = danlu(
                "predict",
                "iris@staging",
                str(source),
                "-o",
                str(out),
                "--proba",
                "-k",
                "id",
                "--chunk-rows",
                chunk,
            )
            assert outcome.code == 0, outcome.stderr
            outputs[fmt, chunk] = out.read_bytes()
        assert outputs[fmt, "7"] == outputs[fmt, "100000"], fmt
    # every input format gives the same predictions
    base = pd.read_csv(io.BytesIO(outputs["csv", "7"]))
    assert len(base) == 450
    for fmt in ("parquet", "jsonl"):
        pd.testing.assert_frame_equal(pd.read_csv(io.BytesIO(outputs[fmt, "7"])), base)


def test_proba_on_a_model_without_classes_is_refused(tmp_path: Path, monkeypatch) -> None:
    from danlu.pipeline import run

    home = tmp_path / "home"
    monkeypatch.setenv("DANLU_HOME", str(home))
    run(
        {
            "name": "dia",
            "data": {"source": "builtin:diabetes"},
            "task": "regression",
            "model": {"type": "mlp", "hidden": [4]},
            "train": {"epochs": 1, "checkpoint": {"every": 0}},
            "register": {"name": "dia"},
        }
    )
    from danlu.data import load_source

    rows = tmp_path / "dia.csv"
    load_source("builtin:diabetes").frame.head(30).to_csv(rows, index=False)
    outcome = danlu("predict", "dia", str(rows), "--proba")
    assert outcome.code == 2 and "--proba" in outcome.stderr, outcome.stderr
    plain = danlu("predict", "dia", str(rows), "-q")
    assert plain.code == 0, plain.stderr
    values = pd.read_csv(io.StringIO(plain.stdout))["prediction"]
    assert len(values) == 30 and values.dtype == float


def test_unseen_categories_are_counted_and_the_python_api_says_what_it_did(
    home: Home, tmp_path: Path
) -> None:
    from danlu.export import predict_file

    frame = home.rows.copy()
    frame.loc[:9, "petal size"] = "huge"  # never seen in training: encoded as unknown
    rows = tmp_path / "rows.parquet"
    frame.to_parquet(rows)
    outcome = danlu("predict", "iris@staging", str(rows), "-o", str(tmp_path / "o.csv"))
    assert outcome.code == 0, outcome.stderr
    assert "'petal size': 10 row(s) hold a category the model never saw" in outcome.stderr
    result = predict_file("iris@staging", rows, tmp_path / "o.jsonl", keep=["id"], chunk_rows=64)
    assert (result.rows, result.chunks, result.runtime) == (150, 3, "onnx")
    assert result.columns == ["id", "prediction"] and result.unseen == {"petal size": 10}
    assert result.out == str(tmp_path / "o.jsonl") and result.format == "jsonl"


def test_semicolon_latin1_and_tsv_files(home: Home, tmp_path: Path) -> None:
    expected = list(_expected(home)["prediction"])
    frame = home.rows.assign(note="crème brûlée")  # an extra column, in Latin-1
    semicolons = tmp_path / "rows.csv"
    frame.to_csv(semicolons, sep=";", index=False, encoding="latin-1")
    tabs = tmp_path / "rows.tsv"
    frame.to_csv(tabs, sep="\t", index=False)
    for args in ([str(semicolons), "--sep", ";", "--encoding", "latin-1"], [str(tabs)]):
        outcome = danlu("predict", "iris@staging", *args, "-q", "-k", "note")
        assert outcome.code == 0, outcome.stderr
        scored = pd.read_csv(io.StringIO(outcome.stdout))
        assert scored["prediction"].tolist() == expected
        assert set(scored["note"]) == {"crème brûlée"}
    wrong = danlu("predict", "iris@staging", str(semicolons))  # not UTF-8
    assert wrong.code == 3 and "--encoding latin-1" in wrong.stderr, wrong.stderr
    home.rows.to_csv(semicolons, sep=";", index=False)
    wrong = danlu("predict", "iris@staging", str(semicolons))  # one column, ';' in its name
    assert wrong.code == 3 and "--sep ';'" in wrong.stderr, wrong.stderr
