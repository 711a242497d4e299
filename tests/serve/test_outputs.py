"""What a served model answers, whatever its task: every output of the signature, as JSON, with
a response schema built from the signature — proved with a task this file registers itself."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from danlu.serve import ServeSettings
from danlu.serve._openapi import predict_response_schema
from danlu.serve._outputs import json_rows, response_classes, response_outputs, row_schema
from danlu.tasks import TASKS, RegressionTask
from tests.serve.conftest import running_server

TASK = "test_serve_interval"  # registered by the `registry` fixture, removed after
INTERVAL = {
    "type": "float",
    "shape": [2],
    "json_schema": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
}


class IntervalRegressionTask(RegressionTask):
    """Regression that also answers an interval of one target standard deviation either side of
    each prediction: a task with an output the server has never heard of."""

    name = TASK

    def predict(self, outputs: Any, schema: Any, temperature: float = 1.0) -> dict[str, Any]:
        decoded = super().predict(outputs, schema, temperature)
        spread = schema.target_std or 1.0
        value = decoded["prediction"]
        decoded["interval"] = np.stack([value - spread, value + spread], axis=1)  # (n, 2)
        return decoded

    def output_signature(self, schema: Any) -> dict[str, Any]:
        return {**super().output_signature(schema), "interval": INTERVAL}


# ---- the pieces ------------------------------------------------------------------------------


def test_json_rows_turn_numpy_and_object_arrays_into_json_values() -> None:
    labels = np.empty(2, dtype=object)
    labels[0], labels[1] = [np.str_("b"), "a"], []  # a multi-label prediction per row
    assert json_rows(labels) == [["b", "a"], []]
    assert json_rows(np.asarray(["x", np.int64(3)], dtype=object)) == ["x", 3]
    assert json_rows(np.float32([[0.25, 0.75]])) == [[0.25, 0.75]]
    assert json_rows(np.asarray([1.5, 2.5])) == [1.5, 2.5]
    assert all(type(v) is float for v in json_rows(np.asarray([1.5, 2.5])))
    json.dumps(json_rows(labels))


def test_signatures_without_json_schema_get_one_from_the_type() -> None:
    old = {  # a classification version registered before outputs carried json_schema
        "outputs": {
            "prediction": {"type": "label", "classes": ["a", "b"]},
            "probabilities": {"type": "float", "shape": [2]},
        }
    }
    assert response_outputs(old) == {
        "prediction": {"enum": ["a", "b"]},
        "probabilities": {
            "type": "array",
            "items": {"type": "number"},
            "minItems": 2,
            "maxItems": 2,
        },
    }
    assert row_schema({"type": "labels", "classes": ["x"]}) == {
        "type": "array",
        "items": {"enum": ["x"]},
    }
    assert row_schema({"type": "float"}) == {"type": "number"} and row_schema({"type": "?"}) == {}
    assert response_outputs({}) == {"prediction": {}}  # no outputs at all: any prediction
    assert response_classes(old) == ["a", "b"]  # probabilities' columns, named
    assert response_classes({"outputs": {"prediction": {"type": "float"}}}) is None
    assert predict_response_schema(old)["properties"]["classes"]["items"] == {"enum": ["a", "b"]}
    schema = predict_response_schema({"outputs": {"prediction": INTERVAL, "x": {"type": "float"}}})
    assert schema["required"] == ["model", "version", "ref", "predictions", "x"]
    nullable = {**INTERVAL["json_schema"], "items": {"type": ["number", "null"]}}
    assert schema["properties"]["predictions"]["items"] == nullable  # NaN is answered as null


# ---- a task of this file's own, served for real ------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A home with ``interval:1``, trained with the interval task (exported to ONNX too)."""
    from danlu import pipeline
    from danlu.store import SqlStore

    TASKS.register(TASK)(IntervalRegressionTask)
    try:
        home = tmp_path_factory.mktemp("interval")
        recipe = {
            "name": "interval",
            "data": {"source": "builtin:diabetes"},
            "task": TASK,
            "model": {"type": "mlp", "hidden": [8]},
            "train": {"epochs": 1, "checkpoint": {"every": 0}},
            "register": {"name": "interval"},
        }
        store = SqlStore(home=home)
        pipeline.run(recipe, store=store, home=home)
        assert store.get_model_version("interval").signature["outputs"]["interval"] == INTERVAL
        store.close()
        yield home
    finally:
        del TASKS._entries[TASK]


CHECKS = (  # schemathesis' checks of an answer against the spec
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)


def answer_checks() -> list[Any]:
    from schemathesis.checks import CHECKS as ALL
    from schemathesis.checks import load_all_checks

    load_all_checks()
    checks = [check for check in ALL.get_all() if check.__name__ in CHECKS]
    assert len(checks) == len(CHECKS)
    return checks


def spec_operation(url: str, label: str) -> Any:
    """The operation ``label`` of the spec a live server publishes (schemathesis)."""
    import schemathesis

    operation = schemathesis.openapi.from_url(f"{url}/openapi.json", timeout=30)
    found = operation.find_operation_by_label(label)
    assert found is not None, label
    return found


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_a_task_with_its_own_output_is_answered_and_described(registry: Path, runtime) -> None:
    from hypothesis import HealthCheck, given, settings

    from danlu.export import load_model
    from danlu.serve._server import build_app
    from danlu.store import SqlStore

    checks = answer_checks()
    serve = ServeSettings(models=("interval",), runtime=runtime, poll_seconds=0, max_rows=16)
    app = build_app(serve, lambda: SqlStore(home=registry))
    predictor = load_model("interval", store=SqlStore(home=registry))
    names = [f.name for f in predictor.schema.features]
    rows = [dict.fromkeys(names, 0.01), dict.fromkeys(names, -0.03)]
    expected = predictor.predict(rows)
    with running_server(app, serve) as (_, url), httpx.Client(base_url=url, timeout=30) as http:
        info = http.get("/v1/models/interval").json()
        assert info["runtime"] == runtime and info["task"] == TASK
        answer = http.post("/v1/models/interval/predict", json={"rows": rows})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {"model", "version", "ref", "predictions", "interval"}
        np.testing.assert_allclose(body["predictions"], expected["prediction"], atol=1e-4)
        np.testing.assert_allclose(body["interval"], expected["interval"], atol=1e-4)
        spec = http.get("/openapi.json").json()
        operation = spec["paths"]["/v1/models/interval/predict"]["post"]
        ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        response = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
        items = response["properties"]["interval"]["items"]
        assert items == {**INTERVAL["json_schema"], "items": {"type": ["number", "null"]}}
        assert {"predictions", "interval"} <= set(response["required"])

        predict = spec_operation(url, "POST /v1/models/interval/predict")
        case = predict.Case(body={"rows": rows}, media_type="application/json")
        case.call_and_validate(checks=checks, timeout=30)  # the answer above, against the spec

        @given(case=predict.as_strategy())
        @settings(
            max_examples=8,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def generated(case: Any) -> None:
            case.call_and_validate(checks=checks, timeout=30)

        generated()


@pytest.fixture(scope="module")
def multilabel_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with ``tags:1``, a multi-label model (thresholds fitted on validation)."""
    import pandas as pd

    from danlu import pipeline
    from danlu.store import SqlStore

    home = tmp_path_factory.mktemp("multilabel")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    tags = [
        "|".join(t for t, on in (("a", r[0] > 0), ("b", r[1] > 0), ("c", r[0] + r[2] > 1)) if on)
        for r in x
    ]
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(4)]).assign(tags=tags)
    frame.to_csv(home / "tags.csv", index=False)
    recipe = {
        "name": "tags",
        "data": {"source": str(home / "tags.csv"), "target": "tags"},
        "task": "multilabel",
        "model": {"type": "mlp", "hidden": [16]},
        "train": {"epochs": 3, "checkpoint": {"every": 0}},
        "register": {"name": "tags"},
    }
    store = SqlStore(home=home)
    pipeline.run(recipe, store=store, home=home)
    store.close()
    return home


def test_a_multilabel_model_answers_label_lists_and_scores(multilabel_home: Path) -> None:
    from danlu.export import load_model
    from danlu.serve._server import build_app
    from danlu.store import SqlStore

    serve = ServeSettings(models=("tags",), poll_seconds=0)
    app = build_app(serve, lambda: SqlStore(home=multilabel_home))
    predictor = load_model("tags", store=SqlStore(home=multilabel_home))
    rows = [
        {f"x{i}": v for i, v in enumerate(r)}
        for r in ((2, 2, 2, 0), (-2, -2, -2, 0), (2, -1, 0, 1))
    ]
    expected = predictor.predict(rows)  # thresholds from decoding.json applied
    with running_server(app, serve) as (_, url), httpx.Client(base_url=url, timeout=30) as http:
        answer = http.post("/v1/models/tags/predict", json={"rows": rows})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {"model", "version", "ref", "predictions", "scores", "classes"}
        assert body["classes"] == ["a", "b", "c"]  # the label each score column stands for
        assert body["predictions"] == [list(p) for p in expected["prediction"]]
        assert body["predictions"][0] and body["predictions"][1] == []
        np.testing.assert_allclose(body["scores"], expected["scores"], atol=1e-4)
        spec = http.get("/openapi.json").json()
        response = spec["components"]["schemas"]["tags_PredictResponse"]
        items = response["properties"]["predictions"]["items"]
        assert items["type"] == "array" and items["items"] == {"enum": ["a", "b", "c"]}
        assert response["properties"]["scores"]["items"]["maxItems"] == 3
        assert response["properties"]["classes"]["items"] == {"enum": ["a", "b", "c"]}
        predict = spec_operation(url, "POST /v1/models/tags/predict")
        case = predict.Case(body={"rows": rows}, media_type="application/json")
        case.call_and_validate(checks=answer_checks(), timeout=30)
