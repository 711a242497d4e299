"""A served model version: request validation (every bad input), encoding, prediction, drift."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from danlu import pipeline
from danlu.data import drift_reference
from danlu.export import load_model
from danlu.serve._model import ServedModel
from danlu.serve._runtime import TorchRuntime
from danlu.serve._types import RequestError, ServeSettings
from danlu.store import SqlStore, Store

SETTINGS = ServeSettings(models=("mixed",), runtime="torch", max_wait_ms=1.0, drift_window=500)
ROW = {"age": 30.0, "colour": "red", "member": True, "income": 41_000.5}


def _requests(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Feature rows as a frame and as the JSON rows a client sends (booleans as true/false)."""
    frame = frame.drop(columns="label")
    frame["member"] = frame["member"] == "yes"
    return frame, json.loads(frame.to_json(orient="records"))


def _frame(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, n).astype(float),
            "colour": rng.choice(["red", "green", "blue"], n),
            "member": rng.choice(["yes", "no"], n),
            "income": rng.normal(50_000, 8_000, n),
            "label": np.array(["cat", "dog", "fish"])[np.arange(n) % 3],
        }
    )
    frame.loc[[3, 7], "age"] = np.nan  # so a fill value is learned
    return frame


def _recipe(csv: Path, name: str, missing: str = "median") -> dict[str, Any]:
    return {
        "name": name,
        "data": {"source": str(csv), "target": "label", "prepare": {"missing": missing}},
        "task": "classification",
        "model": {"type": "mlp", "hidden": [8]},
        "train": {"epochs": 1, "checkpoint": {"every": 0}},
        "register": {"name": name},
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """``mixed`` (median fill, with a drift reference), ``strict`` (missing: drop), ``diabetes``."""
    home = tmp_path_factory.mktemp("model")
    store = SqlStore(home=home)
    csv = home / "mixed.csv"
    _frame().to_csv(csv, index=False)
    pipeline.run(_recipe(csv, "mixed"), store=store, home=home)
    pipeline.run(_recipe(csv, "strict", missing="drop"), store=store, home=home)
    diabetes = {
        "name": "d",
        "data": {"source": "builtin:diabetes"},
        "task": "regression",
        "model": {"type": "mlp", "hidden": [8]},
        "train": {"epochs": 1, "checkpoint": {"every": 0}},
        "register": {"name": "diabetes"},
    }
    pipeline.run(diabetes, store=store, home=home)
    pre = load_model("mixed", store=store).preprocessor
    reference = drift_reference(pre.transform(_frame()), pre.schema_)
    store.attach_model_files("mixed", 1, {"drift_reference.json": json.dumps(reference).encode()})
    return store


def _load(store: Store, name: str) -> ServedModel:
    """A model for parse tests only (its batcher's loop is gone after asyncio.run)."""
    return asyncio.run(ServedModel.load(store, store.get_model_version(name), SETTINGS))


@pytest.fixture(scope="module")
def mixed(store) -> ServedModel:
    return _load(store, "mixed")


def _error(model: ServedModel, payload: Any, max_rows: int = 100) -> RequestError:
    with pytest.raises(RequestError) as info:
        model.parse(payload, max_rows)
    return info.value


def _row(**change: Any) -> dict[str, Any]:
    row = dict(ROW)
    for key, value in change.items():
        if value is ...:
            del row[key]
        else:
            row[key] = value
    return row


# ---- the payload's shape -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ([ROW], "body"),
        ("rows", "body"),
        (None, "body"),
        ({}, "body"),
        ({"rows": [ROW], "columns": {}}, "body"),
        ({"rows": [ROW], "extra": 1}, "extra"),
        ({"instances": [ROW]}, "instances"),
        ({"rows": ROW}, "rows"),
        ({"rows": "a,b"}, "rows"),
        ({"columns": [ROW]}, "columns"),
    ],
)
def test_a_malformed_payload_names_the_top_level_key(mixed, payload, field) -> None:
    error = _error(mixed, payload)
    assert (error.field, error.status) == (field, 422)


def test_an_empty_batch_is_422_and_an_oversized_one_413(mixed) -> None:
    error = _error(mixed, {"rows": []})
    assert (error.field, error.status) == ("rows", 422) and str(error).startswith("rows: empty")
    error = _error(mixed, {"rows": [ROW] * 11}, max_rows=10)
    assert (error.field, error.status) == ("rows", 413) and "at most 10" in error.message
    error = _error(mixed, {"columns": {k: [v] * 11 for k, v in ROW.items()}}, max_rows=10)
    assert (error.field, error.status) == ("columns", 413)
    error = _error(mixed, {"columns": {k: [] for k in ROW}})
    assert (error.field, error.status) == ("columns", 422)
    mixed.parse({"rows": [ROW] * 10}, max_rows=10)  # exactly the maximum is fine


# ---- rows ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "field", "says"),
    [
        ([ROW, ["a"]], "rows[1]", "object"),
        ([ROW, "x"], "rows[1]", "object"),
        ([ROW, _row(age=...)], "rows[1].age", "missing"),
        ([_row(income=...)], "rows[0].income", "missing"),
        ([_row(height=1.8)], "rows[0].height", "age, colour, member, income"),
        ([_row(age="abc")], "rows[0].age", "number"),
        ([_row(age="31")], "rows[0].age", "number"),
        ([_row(age=True)], "rows[0].age", "number"),
        ([_row(age=[1])], "rows[0].age", "number"),
        ([_row(age={"v": 1})], "rows[0].age", "number"),
        ([_row(age=float("nan"))], "rows[0].age", "finite"),
        ([_row(age=float("inf"))], "rows[0].age", "finite"),
        ([_row(age=-math.inf)], "rows[0].age", "finite"),
        ([_row(age=10**400)], "rows[0].age", "finite"),
        ([_row(member="yes")], "rows[0].member", "true or false"),
        ([_row(member=2)], "rows[0].member", "true or false"),
        ([_row(member=None, colour=True)], "rows[0].colour", "category"),
        ([_row(colour=[1])], "rows[0].colour", "category"),
        ([_row(colour=float("nan"))], "rows[0].colour", "category"),
    ],
)
def test_bad_rows_name_the_field(mixed, rows, field, says) -> None:
    error = _error(mixed, {"rows": rows})
    assert (error.field, error.status) == (field, 422)
    assert says in error.message


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"rows": [{"age": NaN, "colour": "red", "member": true, "income": 1}]}', "rows[0].age"),
        (
            '{"rows": [{"age": 1, "colour": "red", "member": true, "income": Infinity}]}',
            "rows[0].income",
        ),
        ('{"rows": [{"age": 1e309, "colour": "red", "member": true, "income": 1}]}', "rows[0].age"),
        (
            '{"rows": [{"age": -1e309, "colour": "red", "member": true, "income": 1}]}',
            "rows[0].age",
        ),
    ],
)
def test_non_finite_json_numbers_are_refused(mixed, body, field) -> None:
    error = _error(mixed, json.loads(body))
    assert (error.field, error.status) == (field, 422)


def test_null_is_filled_only_where_a_fill_value_was_learned(mixed, store) -> None:
    pre = mixed.preprocessor
    x = mixed.parse({"rows": [_row(age=None, colour=None, member=None)]}, 10)
    frame = pd.DataFrame([_row(age=np.nan, colour=None, member=None)])
    np.testing.assert_array_equal(x, pre.transform(frame))
    strict = _load(store, "strict")
    error = _error(strict, {"rows": [_row(age=None)]})
    assert (error.field, error.status) == ("rows[0].age", 422) and "fill" in error.message
    strict.parse({"rows": [ROW]}, 10)


# ---- columns -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "field"),
    [
        ({"age": [1.0, 2.0], "colour": ["red"], "member": [True], "income": [1.0]}, "columns"),
        ({"age": 1.0, "colour": ["red"], "member": [True], "income": [1.0]}, "columns.age"),
        ({"colour": ["red"], "member": [True], "income": [1.0]}, "columns.age"),
        (
            {"age": [1.0], "colour": ["red"], "member": [True], "income": [1.0], "x": [1]},
            "columns.x",
        ),
        (
            {"age": [1.0, "a"], "colour": ["red"] * 2, "member": [True] * 2, "income": [1.0] * 2},
            "columns.age[1]",
        ),
        ({"age": [1.0], "colour": ["red"], "member": ["no"], "income": [1.0]}, "columns.member[0]"),
    ],
)
def test_bad_columns_name_the_field(mixed, columns, field) -> None:
    error = _error(mixed, {"columns": columns})
    assert (error.field, error.status) == (field, 422)


# ---- good input ----------------------------------------------------------------------------


def test_rows_and_columns_encode_like_the_preprocessor(mixed) -> None:
    frame = _frame(50, seed=3)
    frame.loc[5, "colour"] = "purple"  # unseen: all zeros
    frame.loc[6, "age"] = np.nan
    frame, rows = _requests(frame)
    rows[7]["member"], frame.loc[7, "member"] = 1, True  # 0 / 1 for booleans
    rows[8]["age"], frame.loc[8, "age"] = 44, 44.0  # ints for numbers
    columns = {name: [row[name] for row in rows] for name in ROW}
    x_rows = mixed.parse({"rows": rows}, 100)
    x_cols = mixed.parse({"columns": columns}, 100)
    assert x_rows.dtype == np.float32 and x_rows.shape == (50, mixed.input_dim)
    np.testing.assert_array_equal(x_rows, x_cols)
    np.testing.assert_array_equal(x_rows, mixed.preprocessor.transform(frame))
    assert not x_rows[5, 1:4].any()


def test_the_server_training_stream_and_preprocessor_encode_alike(mixed) -> None:
    """One encoding of values, three callers: the server's parse, ``Preprocessor.transform`` and
    the streaming reader give identical matrices — numbers, categories (unseen too), booleans and
    missing values of every kind."""
    import pyarrow as pa

    from danlu.data._stream import TrainStream

    pre = mixed.preprocessor
    frame, rows = _requests(_frame(12, seed=4))
    frame = frame.astype({"colour": object, "member": object})
    frame.loc[1, "colour"] = rows[1]["colour"] = "purple"  # unseen
    for name in ROW:  # a missing value in every column, each in its own row
        row = 2 + list(ROW).index(name)
        frame.loc[row, name] = np.nan if name in ("age", "income") else None
        rows[row][name] = None
    columns = {name: [row[name] for row in rows] for name in ROW}
    stream = TrainStream(
        None,  # type: ignore[arg-type]  # the layout is only read by batches()
        pre,
        rows={},
        class_counts=None,
        test=0.2,
        val=0.1,
        seed=0,
        chunk_rows=100,
        shuffle_buffer=100,
        drop_missing=False,
    )
    batch = pa.RecordBatch.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    expected = pre.transform(frame)
    assert np.isnan(expected).sum() == 0 and not expected[1, 1:4].any()
    np.testing.assert_array_equal(mixed.parse({"rows": rows}, 100), expected)
    np.testing.assert_array_equal(mixed.parse({"columns": columns}, 100), expected)
    np.testing.assert_array_equal(stream._encode(batch), expected)


def test_categorical_numbers_are_read_as_their_string(mixed) -> None:
    a = mixed.parse({"rows": [_row(colour=3)]}, 1)
    b = mixed.parse({"rows": [_row(colour="3")]}, 1)
    c = mixed.parse({"rows": [_row(colour=3.0)]}, 1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


# ---- predictions ---------------------------------------------------------------------------


def test_predictions_match_the_torch_predictor_and_are_json_native(store) -> None:
    frame, rows = _requests(_frame(20, seed=5))
    expected = load_model("mixed", store=store).predict(frame)

    async def main() -> list[dict[str, Any]]:
        model = await ServedModel.load(store, store.get_model_version("mixed"), SETTINGS)
        x = model.parse({"rows": rows}, 100)
        out = await asyncio.gather(model.predict(x[:5]), model.predict(x[5:]))
        assert model.queue_depth() == 0
        drift = model.drift()
        await model.close()
        assert drift["window"] == 20 and drift["reference"] is True
        assert [f["feature"] for f in drift["features"]] == list(ROW)
        return list(out)

    out = asyncio.run(main())
    predictions = out[0]["predictions"] + out[1]["predictions"]
    probabilities = out[0]["probabilities"] + out[1]["probabilities"]
    json.dumps(out)
    assert all(type(p) is str for p in predictions)
    assert predictions == list(expected["prediction"])
    np.testing.assert_allclose(probabilities, expected["probabilities"], atol=1e-6)


def test_the_temperature_divides_the_logits(store) -> None:
    mv = store.get_model_version("mixed")
    predictor = load_model("mixed", store=store)
    predictor.temperature = 2.5  # the bundle's decode applies it, on either runtime
    frame, rows = _requests(_frame(8, seed=6))

    async def main() -> dict[str, list[Any]]:
        model = ServedModel(mv, TorchRuntime(predictor), predictor, SETTINGS)
        model.warm_up()
        model._batcher.start()
        out = await model.predict(model.parse({"rows": rows}, 10))
        await model.close()
        return out

    expected = predictor.predict(frame)
    np.testing.assert_allclose(
        asyncio.run(main())["probabilities"], expected["probabilities"], atol=1e-6
    )


def test_regression_predictions_are_floats(store) -> None:
    mv = store.get_model_version("diabetes")
    predictor = load_model("diabetes", store=store)
    names = [f["name"] for f in mv.signature["inputs"]]
    rows = [dict.fromkeys(names, 0.01), dict.fromkeys(names, -0.02)]

    async def main() -> dict[str, list[Any]]:
        model = await ServedModel.load(store, mv, SETTINGS)
        assert model.runtime_name == "torch" and model.ref == "diabetes:1"
        drift = model.drift()  # training saved its reference: too few rows seen to judge yet
        assert drift["reference"] is True and drift["window"] == 0
        assert {f["status"] for f in drift["features"]} == {"insufficient data"}
        out = await model.predict(model.parse({"rows": rows}, 10))
        await model.close()
        return out

    out = asyncio.run(main())
    assert set(out) == {"predictions"} and all(type(p) is float for p in out["predictions"])
    np.testing.assert_allclose(out["predictions"], predictor.predict(rows)["prediction"], rtol=1e-5)
