"""Dates, junk numbers and many categories round-trip: train → register → ``load_model`` → a real
``danlu serve`` process, the same predictions everywhere (issue 15, "Column kinds users have").

The served model takes the date as the training data wrote it (``31/12/2023 18:00``) or as ISO
8601, a junk price string as a missing price, an unseen ticket as a share of 0; its OpenAPI
document describes the date as a string with format date-time.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

import danlu
from tests.serve.conftest import start_server


def _table(n: int = 160) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    when = pd.Timestamp("2023-01-01") + pd.to_timedelta(rng.integers(0, 600, n) * 6, unit="h")
    price: list[object] = [f"{v:.2f}" for v in rng.normal(50, 10, n)]
    price[4], price[40] = "?", "12,5"  # junk: read as missing
    words = np.array(["red", "fox", "jumps", "over", "the", "lazy", "dog", "again"])
    notes = [" ".join(rng.choice(words, 5)) + f" #{i}" for i in range(n)]
    weekend = pd.Series(when).dt.day_of_week.to_numpy() >= 5
    return pd.DataFrame(
        {
            "when": when.strftime("%d/%m/%Y %H:%M"),
            "price": price,
            "ticket": [f"T{i}" for i in rng.integers(0, 70, n)],
            "note": notes,  # free text: ignored
            "y": np.where(weekend ^ (rng.random(n) < 0.1), "weekend", "weekday"),
        }
    )


def test_dates_junk_numbers_and_many_categories_round_trip_to_a_real_server(tmp_path: Path):
    table = _table()
    source = tmp_path / "bookings.csv"
    table.to_csv(source, index=False)
    recipe = {
        "name": "bookings",
        "data": {"source": str(source), "target": "y", "prepare": {"max_categories": 40}},
        "task": "classification",
        "model": {"type": "mlp", "hidden": [8]},
        "train": {"epochs": 2, "checkpoint": {"every": 0}},
        "register": {"name": "bookings", "alias": "production"},
    }
    home = tmp_path / "home"
    result = danlu.run(recipe, home=home)
    from danlu.store import SqlStore

    store = SqlStore(home=home)
    try:
        model = danlu.load_model("bookings@production", store=store)
    finally:
        store.close()
    inputs = {i["name"]: i for i in model.signature["inputs"]}
    assert set(inputs) == {"when", "price", "ticket"}  # the free-text note is not an input
    assert inputs["when"]["format"] == "date-time" and inputs["price"]["errors"] == "nan"
    assert inputs["ticket"]["encoding"] == "frequency"

    rows = table.drop(columns=["y", "note"]).iloc[:12].copy()
    rows.loc[rows.index[0], "ticket"] = "T-unseen"
    expected = result.predict(rows)
    loaded = model.predict(rows)
    assert list(loaded["prediction"]) == list(expected["prediction"])
    np.testing.assert_allclose(loaded["probabilities"], expected["probabilities"], rtol=1e-6)

    # danlu predict (batch, streamed from the CSV): the same predictions, junk and dates alike
    from danlu.export._batch import predict_file

    batch_in = tmp_path / "new.csv"
    rows.to_csv(batch_in, index=False)
    store = SqlStore(home=home)
    try:
        predict_file("bookings@production", batch_in, tmp_path / "out.csv", proba=True, store=store)
    finally:
        store.close()
    batch = pd.read_csv(tmp_path / "out.csv")
    assert list(batch["prediction"]) == list(expected["prediction"])
    np.testing.assert_allclose(
        batch[["proba_weekday", "proba_weekend"]], expected["probabilities"], rtol=1e-5, atol=1e-6
    )

    body = json.loads(rows.to_json(orient="records"))
    iso = dict(body[1], when=pd.to_datetime(body[1]["when"], dayfirst=True).isoformat() + "Z")
    with (
        start_server(home, "bookings@production", log_dir=tmp_path) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        served = http.post("/v1/models/bookings/predict", json={"rows": body})
        assert served.status_code == 200, served.text
        answer = served.json()
        assert answer["predictions"] == list(expected["prediction"])
        np.testing.assert_allclose(
            answer["probabilities"], expected["probabilities"], rtol=1e-5, atol=1e-6
        )
        same = http.post("/v1/models/bookings/predict", json={"rows": [iso]}).json()
        assert same["probabilities"][0] == pytest.approx(answer["probabilities"][1], abs=1e-6)
        bad = http.post("/v1/models/bookings/predict", json={"rows": [dict(body[1], when="soon")]})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "rows[0].when"
        spec = http.get("/openapi.json").json()["components"]["schemas"]
        row = next(v for k, v in spec.items() if k.endswith("_Row"))
        when = row["properties"]["when"]
        assert {"type": "string", "format": "date-time"} in when.get("anyOf", [when])


def test_the_request_parser_reads_dates_and_junk_numbers_as_the_preprocessor_does():
    from danlu.config import PrepareConfig
    from danlu.data import Preprocessor
    from danlu.serve._parse import RequestParser
    from danlu.serve._types import RequestError

    table = _table().drop(columns="note")
    kinds = {"price": {"kind": "numeric", "errors": "nan"}}
    pre = Preprocessor(target="y", task="classification", overrides=kinds).fit(table)
    parser = RequestParser(pre, "bookings:1")
    rows = json.loads(table.drop(columns="y").head(6).to_json(orient="records"))
    np.testing.assert_array_equal(parser.parse({"rows": rows}, 10), pre.transform(table.head(6)))
    strict = Preprocessor(PrepareConfig(missing="drop"), target="y", task="classification",
                          overrides=kinds).fit(table.dropna().drop(index=[4, 40]))  # fmt: skip
    with pytest.raises(RequestError, match="reads as missing.*learned no fill value") as caught:
        RequestParser(strict, "bookings:2").parse({"rows": [dict(rows[0], price="?")]}, 10)
    assert caught.value.field == "rows[0].price"
