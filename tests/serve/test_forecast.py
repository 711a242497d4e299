"""POST /v1/models/{name}/forecast through a real ``danlu serve`` on 127.0.0.1: the example
recipe (examples/airline_forecast.yaml) is run and registered, then served; a history gives the
same forecast the run scored on its test block, and a bad body is a 4xx naming the field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import danlu
from danlu.data._series_sources import load_series_set
from danlu.errors import DataError
from danlu.serve._forecast import read_forecast_request
from danlu.serve._types import RequestError
from tests.serve.conftest import LiveServer, route_validators, start_server

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "airline_forecast.yaml"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Any]]:
    """The example run (8 epochs) registered as airline:1 and served as airline@production."""
    home = tmp_path_factory.mktemp("forecast-home")
    result = danlu.run(EXAMPLE, overrides=["train.epochs=8"], home=home)
    assert result.registered is not None and result.registered.ref == "airline:1"
    log_dir = tmp_path_factory.mktemp("forecast-server")
    with start_server(home, "airline@production", "--poll", "0", log_dir=log_dir) as server:
        yield server, result


def test_a_history_gives_the_forecast_the_run_scored(served: tuple[LiveServer, Any]) -> None:
    server, result = served
    frame = load_series_set("airline")
    history = frame["passengers"].tolist()[:-12]  # everything before the test block
    times = [t.strftime("%Y-%m-%d") for t in frame["month"][:-12]]
    with httpx.Client(base_url=server.url, timeout=30) as http:
        answer = http.post("/v1/models/airline/forecast", json={"history": history, "times": times})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-model-version"] == "1"
    body = answer.json()
    steps = body["forecast"]
    assert body["ref"] == "airline:1" and body["horizon"] == 12 and len(steps) == 12
    assert [s["step"] for s in steps] == list(range(1, 13))
    assert steps[0]["time"].startswith("1960-01-01") and steps[-1]["time"].startswith("1960-12-01")
    mean = np.array([s["mean"] for s in steps])
    truth = frame["passengers"].to_numpy()[-12:]
    # the served window is the run's test window: the same forecast, so the same error
    assert np.mean(np.abs(mean - truth) / truth) == pytest.approx(result.metrics["mape"], rel=1e-4)
    for s in steps:
        assert s["lower"] <= s["mean"] <= s["upper"]
        assert s["quantiles"]["0.5"] == pytest.approx(s["mean"])
        assert s["quantiles"]["0.1"] == pytest.approx(s["lower"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"history": [100.0] * 5}, "history"),  # shorter than the model's 24 lags
        ({"history": [1, "a"] + [100.0] * 30}, "history[1]"),
        ({"history": [100.0] * 30, "covariates": {"x": [1.0]}}, "covariates"),
        ({"history": [100.0] * 30, "times": ["1950-01-01"]}, "times"),
        ({"values": [1.0]}, "values"),
        ({}, "history"),
    ],
)
def test_a_bad_body_names_its_field(
    served: tuple[LiveServer, Any], body: dict[str, Any], field: str
) -> None:
    server, _ = served
    with httpx.Client(base_url=server.url, timeout=30) as http:
        answer = http.post("/v1/models/airline/forecast", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field
    with httpx.Client(base_url=server.url, timeout=30) as http:
        spec = http.get("/openapi.json").json()
    request, _ = route_validators(spec, "/v1/models/airline/forecast")
    # the spec refuses it too, but for times as long as the history (JSON Schema cannot say it)
    assert request.is_valid(body) == (field == "times"), body


def test_the_spec_describes_the_forecasters_request_and_answer(
    served: tuple[LiveServer, Any],
) -> None:
    server, _ = served
    with httpx.Client(base_url=server.url, timeout=30) as http:
        spec = http.get("/openapi.json").json()
        body = {"history": [100.0 + i for i in range(30)], "times": list(range(30))}
        answer = http.post("/v1/models/airline/forecast", json=body)
    assert answer.status_code == 200, answer.text
    request, response = route_validators(spec, "/v1/models/airline/forecast")
    history = spec["components"]["schemas"]["airline_ForecastRequest"]["properties"]["history"]
    assert history["minItems"] == 24  # the model's lags
    request.validate(body)
    response.validate(answer.json())
    assert not response.is_valid({**answer.json(), "forecast": answer.json()["forecast"][:-1]})
    operation = spec["paths"]["/v1/models/airline/forecast"]["post"]
    assert operation["security"] and {"404", "413", "422"} <= set(operation["responses"])
    assert "/v1/models/airline/recommend" not in spec["paths"]


def test_nan_and_unknown_models_are_refused(served: tuple[LiveServer, Any]) -> None:
    server, _ = served
    with httpx.Client(base_url=server.url, timeout=30) as http:
        nan = http.post(
            "/v1/models/airline/forecast",
            content=b'{"history": [1.0, NaN]}',
            headers={"content-type": "application/json"},
        )
        missing = http.post("/v1/models/nope/forecast", json={"history": [1.0]})
        ok = http.post("/v1/models/airline/forecast", json={"history": [100.0] * 24})
    assert ok.status_code == 200
    assert nan.status_code == 400 and "NaN" in nan.json()["error"]["message"]
    assert missing.status_code == 404
    with httpx.Client(base_url=server.url, timeout=30) as http:
        metrics = http.get("/metrics").text
    # forecasts count as requests of their model (answered ones and refused ones)
    assert 'danlu_requests_total{code="200",model="airline",version="1"}' in metrics
    assert 'danlu_errors_total{code="invalid_body",model="airline"}' in metrics


def test_read_forecast_request_checks_each_field() -> None:
    assert read_forecast_request({"history": [1, 2], "times": [1, 2]}) == ([1.0, 2.0], [1, 2], {})
    # JSON Schema's integers (the spec's) include 2.0
    assert read_forecast_request({"history": [1], "times": [2.0]}) == ([1.0], [2], {})
    with pytest.raises(RequestError) as info:
        read_forecast_request({"history": [1], "times": [2.5]})
    assert info.value.field == "times[0]"
    with pytest.raises(RequestError) as info:
        read_forecast_request({"history": [1.0], "covariates": {"t": [float("inf")]}})
    assert info.value.field == "covariates.t[0]"
    with pytest.raises(RequestError) as info:
        read_forecast_request({"history": [True]})
    assert info.value.field == "history[0]"
    with pytest.raises(RequestError) as info:
        read_forecast_request([1.0])
    assert info.value.field == "body"


def test_load_model_forecasts_like_the_server(served: tuple[LiveServer, Any]) -> None:
    from danlu.store import SqlStore

    server, result = served
    history = load_series_set("airline")["passengers"].tolist()[:-12]
    with SqlStore(home=server.home) as store:
        predictor = danlu.load_model("airline@production", store=store)
        got = predictor.forecast(history)
    assert got["prediction"].shape == (12,) and got["quantiles"].shape == (3, 12)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        steps = http.post("/v1/models/airline/forecast", json={"history": history}).json()
    served_mean = [s["mean"] for s in steps["forecast"]]
    np.testing.assert_allclose(got["prediction"], served_mean, rtol=1e-4)  # ONNX vs torch
    assert all(s["time"] is None for s in steps["forecast"])  # no times given: none answered
    with pytest.raises(DataError, match="history: needs at least 24 values"):
        predictor.forecast(history[:3])
