"""A sequence model (model.type: cnn1d) takes each row as one array: {"series": [[...]]} over a
real uvicorn server on 127.0.0.1, an (n, C, L) array in danlu.load_model(...).predict and in
the client, and a third request form in the OpenAPI spec; wrong shapes are 4xx naming the field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from danlu.errors import DataError
from tests.serve.conftest import running_server

pytestmark = pytest.mark.filterwarnings("error")


def _recipe(name: str, source: str) -> dict[str, Any]:
    return {
        "name": name,
        "data": {"source": source, "split": {"by": "column", "column": "split", "val": 0.2}},
        "task": "classification",
        "model": {"type": "cnn1d", "channels": [4], "kernel_sizes": [3]},
        "train": {"epochs": 1, "batch_size": 16, "checkpoint": {"every": 0}},
        "register": {"name": name, "alias": "production"},
    }


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gunpoint (1 series × 150 steps) and motions (6 series × 100 steps), registered."""
    from danlu.pipeline import run
    from danlu.store import SqlStore

    home = tmp_path_factory.mktemp("sequence-home")
    store = SqlStore(home=home)
    try:
        run(_recipe("gunpoint", "builtin:gunpoint"), store=store, home=home)
        run(_recipe("motions", "builtin:basic_motions"), store=store, home=home)
    finally:
        store.close()
    return home


def _test_rows(source: str, n: int) -> Any:
    from danlu.data import load_source

    frame = load_source(source).frame
    return frame[frame["split"] == "test"].drop(columns=["split", "target"]).head(n)


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[httpx.Client]:
    from danlu.serve._server import build_app
    from danlu.serve._types import ServeSettings
    from danlu.store import SqlStore

    settings = ServeSettings(
        models=("gunpoint@production", "motions@production"), poll_seconds=0, max_wait_ms=1.0
    )
    app = build_app(settings, lambda: SqlStore(home=home))
    with running_server(app, settings) as (_, url), httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/readyz").status_code == 200
        yield http


def _predict(http: httpx.Client, model: str, body: Any) -> httpx.Response:
    return http.post(f"/v1/models/{model}/predict", json=body)


def test_a_series_row_answers_what_the_flat_row_and_load_model_answer(
    server: httpx.Client, home: Path
) -> None:
    from danlu.export import load_model
    from danlu.store import SqlStore

    rows = _test_rows("builtin:gunpoint", 4)
    values = rows.to_numpy(dtype=np.float64)  # (4, 150)
    flat = _predict(server, "gunpoint", {"rows": rows.to_dict(orient="records")})
    plain = _predict(server, "gunpoint", {"rows": [{"series": list(v)} for v in values]})
    nested = _predict(server, "gunpoint", {"rows": [{"series": [list(v)]} for v in values]})
    for answer in (flat, plain, nested):
        assert answer.status_code == 200, answer.text
    assert plain.json()["probabilities"] == flat.json()["probabilities"]
    assert nested.json()["probabilities"] == flat.json()["probabilities"]
    # a missing step is null, as in the flat form: filled where training learned a fill
    gap: list[float | None] = [float(v) for v in values[0]]
    gap[3] = None
    flat_gap = {**rows.iloc[0].to_dict(), "t3": None}
    by_series = _predict(server, "gunpoint", {"rows": [{"series": gap}]})
    by_name = _predict(server, "gunpoint", {"rows": [flat_gap]})
    nullable = server.get("/v1/models/gunpoint").json()["signature"]["inputs"][3]["nullable"]
    assert by_series.status_code == by_name.status_code == (200 if nullable else 422)
    if nullable:
        assert by_series.json()["probabilities"] == by_name.json()["probabilities"]
    else:
        assert by_series.json()["error"]["field"] == "rows[0].series[3]"

    store = SqlStore(home=home)
    try:
        predictor = load_model("gunpoint@production", store=store)
    finally:
        store.close()
    assert predictor.sequence_shape == (1, 150)
    expected = predictor.predict(rows)["probabilities"]
    for data in (values[:, None, :], values, [{"series": v.tolist()} for v in values]):
        got = predictor.predict(data)["probabilities"]
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(flat.json()["probabilities"], expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(DataError, match=r"shape \(rows, 1, 150\).*got \(4, 1, 149\)"):
        predictor.predict(values[:, None, :149])
    with pytest.raises(DataError, match=r"rows\[1\].series: expected 1 series"):
        predictor.predict([{"series": v.tolist()} for v in (values[0], values[1][:10])])


def test_several_channels_through_the_client_and_their_errors(server: httpx.Client) -> None:
    from danlu.serve import Client
    from danlu.serve._client import InvalidRequestError

    rows = _test_rows("builtin:basic_motions", 3)
    cube = rows.to_numpy(dtype=np.float64).reshape(3, 6, 100)  # dimension by dimension
    flat = _predict(server, "motions", {"rows": rows.to_dict(orient="records")})
    assert flat.status_code == 200, flat.text
    with Client(str(server.base_url)) as client:
        answer = client.predict("motions", cube)
        assert answer["probabilities"] == flat.json()["probabilities"]
        with pytest.raises(InvalidRequestError) as wrong:
            client.predict("motions", cube[:, :5])
        assert wrong.value.status == 422 and wrong.value.field == "rows[0].series"
        assert "holds 5 series" in str(wrong.value) and "6 series (channels)" in str(wrong.value)

    series = cube[0].tolist()
    cases = {
        "rows[0].series[2]": [*series[:2], series[2][:99], *series[3:]],  # a step short
        "rows[0].series[4][7]": [*series[:4], [*series[4][:7], "x", *series[4][8:]], series[5]],
        "rows[0].series": series[0],  # one plain list where six are needed
    }
    for field, value in cases.items():
        response = _predict(server, "motions", {"rows": [{"series": value}]})
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["field"] == field, error
    assert (
        "holds 99 values"
        in _predict(server, "motions", {"rows": [{"series": cases["rows[0].series[2]"]}]}).json()[
            "error"
        ]["message"]
    )
    mixed = {"rows": [{"series": series}, rows.iloc[0].to_dict()]}
    assert _predict(server, "motions", mixed).json()["error"]["field"] == "rows[1]"
    partial = rows.iloc[0].to_dict()
    partial.pop("d3_t5")
    missing = _predict(server, "motions", {"rows": [partial]}).json()["error"]
    assert missing["field"] == "rows[0].d3_t5" and '"series"' in missing["message"]


def test_the_spec_declares_the_series_form(server: httpx.Client) -> None:
    spec = server.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    body = spec["paths"]["/v1/models/motions/predict"]["post"]["requestBody"]
    forms = body["content"]["application/json"]["schema"]["oneOf"]
    assert {"$ref": "#/components/schemas/motions_SeriesRequest"} in forms
    row = schemas["motions_SeriesRow"]
    assert row["required"] == ["series"] and row["additionalProperties"] is False
    channels = row["properties"]["series"]
    assert (channels["minItems"], channels["maxItems"]) == (6, 6)
    assert (channels["items"]["minItems"], channels["items"]["maxItems"]) == (100, 100)
    one = schemas["gunpoint_SeriesRow"]["properties"]["series"]["anyOf"]
    assert [branch["minItems"] for branch in one] == [150, 1]  # [...150] or [[...150]]
    info = server.get("/v1/models/motions").json()["signature"]
    assert info["sequence"] == {"field": "series", "channels": 6, "length": 100}
