"""The OpenAPI operations of /forecast, /recommend and /generate, built from a signature alone:
covariates named and sized, quantile levels as keys, a recommender's k bounded by its catalogue
(and by MAX_K for a version registered before the signature said its size), and no operation
for a task without such a route. The live servers' routes are checked against the same spec in
test_forecast.py, test_recommend.py and test_generate.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from danlu.serve._openapi_tasks import task_operation
from danlu.serve._recommend import MAX_K
from tests.serve.conftest import route_validators


def _spec(signature: dict[str, Any], name: str = "m") -> tuple[dict[str, Any], str]:
    schemas: dict[str, Any] = {}
    model = SimpleNamespace(signature=signature, ref=f"{name}:1")
    made = task_operation(name, model, schemas, generate_max_tokens=100)  # type: ignore[arg-type]
    assert made is not None
    path, operation = made
    return {"paths": {path: {"post": operation}}, "components": {"schemas": schemas}}, path


FORECASTER = {
    "task": "forecasting",
    "forecast": {
        "lags": 3,
        "horizon": 2,
        "observed": ["temp"],
        "known": ["promo"],
        "quantiles": [0.1, 0.5, 0.9],
        "transform": "none",
    },
    "outputs": {"prediction": {}, "lower": {}, "upper": {}, "quantiles": {}},
}


def test_a_forecasters_covariates_and_quantiles_are_in_its_spec() -> None:
    spec, path = _spec(FORECASTER)
    request, answer = route_validators(spec, path)
    good = {"history": [1, 2, 3, 4], "covariates": {"temp": [1, 2, 3], "promo": [0, 1]}}
    request.validate(good)
    for bad in (
        {"history": [1, 2]},  # fewer than the lags
        {"history": [1, 2, 3]},  # the covariates missing
        {**good, "covariates": {"temp": [1, 2, 3]}},  # promo missing
        {**good, "covariates": {**good["covariates"], "promo": [0, 1, 1]}},  # past the horizon
        {**good, "covariates": {**good["covariates"], "wind": [1, 2, 3]}},
        {**good, "history": [1, 2, float("inf")]},
    ):
        assert not request.is_valid(bad), bad
    step = {"step": 1, "time": None, "mean": 2.0, "lower": 1.0, "upper": None,
            "quantiles": {"0.1": 1.0, "0.5": 2.0, "0.9": 3.0}}  # fmt: skip
    done = {"model": "m", "version": 1, "ref": "m:1", "horizon": 2, "forecast": [step, step]}
    answer.validate(done)
    assert not answer.is_valid({**done, "forecast": [step]})  # one step short of the horizon
    assert not answer.is_valid({**done, "forecast": [{**step, "quantiles": {"0.1": "x"}}] * 2})


def test_a_forecaster_without_covariates_takes_none() -> None:
    signature = {**FORECASTER, "forecast": {"lags": 2, "horizon": 1}, "outputs": {}}
    spec, path = _spec(signature)
    request, _ = route_validators(spec, path)
    for body in ({"history": [1, 2]}, {"history": [1, 2], "covariates": {}},
                 {"history": [1, 2], "covariates": None}):  # fmt: skip
        request.validate(body)
    assert not request.is_valid({"history": [1, 2], "covariates": {"temp": [1, 2]}})


def test_a_recommenders_k_stops_at_its_catalogue_or_at_max_k() -> None:
    spec, path = _spec({"task": "recommendation", "recommend": {"k": 5, "catalogue": 40}})
    request, _ = route_validators(spec, path)
    assert request.is_valid({"user": 3, "k": 40}) and not request.is_valid({"user": 3, "k": 41})
    assert not request.is_valid({"user": " "}) and not request.is_valid({"user": True})
    older, path = _spec({"task": "recommendation"})  # registered before "recommend" was signed
    request, _ = route_validators(older, path)
    assert request.is_valid({"user": "u", "k": MAX_K}) and not request.is_valid({"k": 1})


def test_tasks_without_such_a_route_get_no_operation() -> None:
    for signature in (
        {"task": "classification"},
        {"task": "language_model"},  # a version without its generate contract
        {"task": "forecasting"},
    ):
        model = SimpleNamespace(signature=signature, ref="m:1")
        assert task_operation("m", model, {}, generate_max_tokens=10) is None  # type: ignore[arg-type]
