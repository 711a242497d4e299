"""The HTTP layer against fakes of the model pool and the store: routes, strict decoding, error
bodies, limits, metrics, readiness, OpenAPI — and one real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import math
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from danlu.errors import NotFoundError, StoreError
from danlu.serve import Canary, QueueFull, RequestError, ServeSettings
from danlu.serve._app import MAX_DEPTH, create_app, decode_body, server_state
from danlu.store._entities import ApiKey
from tests.serve.conftest import running_server

FEATURES = [
    {"name": "alcohol", "kind": "numeric"},
    {"name": "color", "kind": "categorical", "categories": ["red", "white"]},
    {"name": "organic", "kind": "boolean"},
]
ROW = {"alcohol": 13.2, "color": "red", "organic": True}
ADMIN_SECRET = "dl_admin_secret"
PREDICT_SECRET = "dl_predict_secret"


class AppClient:
    """A synchronous client of an ASGI app through httpx's ASGI transport; the app's lifespan
    (pool start and stop) runs on an event loop in a thread, as under uvicorn."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __enter__(self) -> AppClient:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.lifespan = self.app.router.lifespan_context(self.app)
        self._run(self.lifespan.__aenter__())
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        self.http = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._run(self.http.aclose())
            self._run(self.lifespan.__aexit__(None, None, None))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
            self.loop.close()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        return self._run(self.http.request(method, url, **kw))  # type: ignore[no-any-return]

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("POST", url, **kw)

    def put(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("PUT", url, **kw)

    def delete(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("DELETE", url, **kw)


# -- fakes: exactly the members the app may use ----------------------------------------------------
class FakeServed:
    """A served model version (the ``ServedModelLike`` members only)."""

    def __init__(self, name: str = "wine", version: int = 3) -> None:
        self.name = name
        self.version = version
        self.ref = f"{name}:{version}"
        self.signature = {
            "task": "classification",
            "inputs": FEATURES,
            "outputs": {  # as versions registered before json_schema describe them
                "prediction": {"type": "label", "classes": ["a", "b"]},
                "probabilities": {"type": "float", "shape": [2]},
            },
        }
        self.pool: FakePool | None = None  # its on_batch hook hears of every prediction
        self.metrics = {"accuracy": 0.9, "ece": float("nan")}
        self.runtime_name = "onnx"
        self.error: BaseException | None = None  # raised by predict
        self.slow = False  # predict waits until `release` is set
        self.release = threading.Event()
        self.depth = 0
        self.drift_error: Exception | None = None

    def parse(self, payload: Any, max_rows: int) -> np.ndarray:
        columns = payload.get("columns")
        if isinstance(columns, dict):
            names, values = list(columns), list(columns.values())
            payload = {
                "rows": [dict(zip(names, v, strict=True)) for v in zip(*values, strict=True)]
            }
        rows = payload.get("rows")
        if not isinstance(rows, list) or not rows:
            raise RequestError("rows", "must be a non-empty list of objects")
        if len(rows) > max_rows:
            raise RequestError("rows", f"holds {len(rows)} rows; at most {max_rows}", 413)
        out = []
        for i, row in enumerate(rows):
            value = row.get("alcohol") if isinstance(row, dict) else None
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise RequestError(f"rows[{i}].alcohol", "must be a finite number")
            out.append([float(value)])
        return np.asarray(out, dtype=np.float32)

    async def predict(self, x: np.ndarray) -> dict[str, list[Any]]:
        while self.slow and not self.release.is_set():
            await asyncio.sleep(0.005)
        if self.error is not None:
            raise self.error
        if self.pool is not None and self.pool.on_batch is not None:
            self.pool.on_batch(self, len(x), 0.001)  # one micro-batch per request
        return {
            "predictions": ["a"] * len(x),
            "probabilities": np.tile(np.float32([0.75, 0.25]), (len(x), 1)).tolist(),
        }

    def queue_depth(self) -> int:
        return self.depth

    def drift(self) -> dict[str, Any]:
        if self.drift_error is not None:
            raise self.drift_error
        return {
            "window": 10,
            "reference": True,
            "features": [{"feature": "alcohol", "psi": 0.12, "status": "ok"}],
        }


class FakePool:
    """``ModelPoolLike``'s members: start, stop, ready, failed, on_batch, names, route, primary,
    canary, load, reload, unload."""

    def __init__(self, *models: FakeServed, canaries: dict[str, FakeServed] | None = None) -> None:
        self.models = {m.name: m for m in models}
        self.canaries = dict(canaries or {})
        for served in (*models, *self.canaries.values()):
            served.pool = self
        self.on_batch: Any = None
        self.ready = False
        self.stopped = False
        self.to_canary = False  # route() sends the next requests to the canary
        self.reloaded: list[str] = []
        self.load_error: Exception | None = None
        self.failed: list[dict[str, str]] = []

    async def start(self) -> None:
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        self.stopped = True

    def names(self) -> list[str]:
        return list(self.models)

    def primary(self, name: str) -> FakeServed:
        if name not in self.models:
            raise NotFoundError(f"Model '{name}' is not served here.")
        return self.models[name]

    def canary(self, name: str) -> FakeServed | None:
        return self.canaries.get(name)

    def route(self, name: str) -> FakeServed:
        primary = self.primary(name)
        return self.canaries.get(name, primary) if self.to_canary else primary

    async def reload(self, name: str) -> FakeServed:
        self.primary(name)
        if self.load_error is not None:
            raise self.load_error
        self.reloaded.append(name)
        return self.models[name]

    async def load(self, ref: str, name: str | None = None) -> FakeServed:
        if self.load_error is not None:
            raise self.load_error
        model, _, version = ref.partition(":")
        served = FakeServed(model, int(version or 1))
        served.name = name or model
        served.pool = self
        self.models[served.name] = served
        return served

    async def unload(self, name: str) -> None:
        self.primary(name)
        del self.models[name]


class FakeStore:
    """The store's API-key and alias members."""

    def __init__(self, keys: dict[str, ApiKey] | None = None) -> None:
        self.keys = dict(keys or {})
        self.verify_calls = 0
        self.aliases: list[tuple[str, str, int, str]] = []
        self.fail = False

    def verify_api_key(self, secret: str) -> ApiKey | None:
        self.verify_calls += 1
        if self.fail:
            raise StoreError("database at /srv/danlu/danlu.db is locked")
        return self.keys.get(secret)

    def has_api_keys(self, scope: str | None = None) -> bool:
        return any(k.active and scope in (None, k.scope) for k in self.keys.values())

    def set_alias(self, name: str, alias: str, version: int, *, actor: str = "danlu") -> None:
        if name not in ("wine", "other"):
            raise NotFoundError(f"No model named '{name}'.")
        if alias.isdigit():
            raise StoreError(f"Alias '{alias}' would be confused with a version number.")
        self.aliases.append((name, alias, version, actor))

    def close(self) -> None:
        pass


def api_key(name: str, scope: str, revoked: bool = False) -> ApiKey:
    return ApiKey(
        id=name,
        name=name,
        scope=scope,
        prefix="dl_" + name[:5],
        created_at=0.0,
        created_by="test",
        revoked_at=1.0 if revoked else None,
    )


def keyed_store() -> FakeStore:
    return FakeStore(
        {
            ADMIN_SECRET: api_key("ops", "admin"),
            PREDICT_SECRET: api_key("app", "predict"),
            "dl_revoked": api_key("old", "admin", revoked=True),
        }
    )


def make_app(
    pool: FakePool | None = None, store: FakeStore | None = None, **settings: Any
) -> tuple[Any, FakePool, FakeStore]:
    pool = pool or FakePool(FakeServed())
    store = store if store is not None else keyed_store()
    defaults: dict[str, Any] = {
        "models": tuple(pool.names()),
        "max_rows": 8,
        "allowed_hosts": ("testserver",),  # httpx's ASGI transport sends Host: testserver
    }
    app = create_app(pool, lambda: store, ServeSettings(**{**defaults, **settings}))
    return app, pool, store


@pytest.fixture
def served() -> Iterator[tuple[AppClient, FakePool, FakeStore]]:
    app, pool, store = make_app()
    with AppClient(app) as client:
        yield client, pool, store


ADMIN = {"Authorization": f"Bearer {ADMIN_SECRET}"}
PREDICT = {"Authorization": f"Bearer {PREDICT_SECRET}"}


def post(client: AppClient, body: Any, model: str = "wine") -> httpx.Response:
    content = body.encode() if isinstance(body, str) else body
    headers = {"Content-Type": "application/json", **PREDICT}
    return client.post(f"/v1/models/{model}/predict", content=content, headers=headers)


def assert_error(response: httpx.Response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["status"] == status
    assert error["code"] and error["message"]
    if field is not None:
        assert error["field"] == field
    text = response.text
    for leak in ("Traceback", 'File "', "/srv/", "/home/", ".py", "SELECT", "sqlite"):
        assert leak not in text, f"{leak!r} in {text}"
    return error


# -- routes: happy paths ---------------------------------------------------------------------------
def test_predict_answers_with_the_version(served):
    client, _, _ = served
    response = post(client, json.dumps({"rows": [ROW, ROW]}))
    assert response.status_code == 200
    assert response.headers["X-Model-Version"] == "3"
    body = response.json()
    assert body == {
        "model": "wine",
        "version": 3,
        "ref": "wine:3",
        "predictions": ["a", "a"],
        "probabilities": [[0.75, 0.25], [0.75, 0.25]],
        "classes": ["a", "b"],  # what each column of the probabilities stands for
    }


LANE_CASES = [  # (model, body, headers) for POST /v1/models/{model}/predict
    ("wine", json.dumps({"rows": [ROW, ROW]}), PREDICT),
    ("wine", json.dumps({"columns": {k: [v] for k, v in ROW.items()}}), PREDICT),
    ("nope", json.dumps({"rows": [ROW]}), PREDICT),
    ("wine", json.dumps({"rows": [ROW]}), {}),
    ("wine", json.dumps({"rows": [ROW]}), {"Authorization": "Bearer dl_unknown"}),
    ("wine", json.dumps({"rows": [ROW]}), {"Authorization": "Basic abc"}),
    ("wine", json.dumps({"rows": [ROW]}), {"X-API-Key": ADMIN_SECRET}),
    ("wine", "{", PREDICT),
    ("wine", "", PREDICT),
    ("wine", "[1]", PREDICT),
    ("wine", '{"rows": [{"alcohol": NaN}]}', PREDICT),
    ("wine", json.dumps({"rows": [ROW] * 9}), PREDICT),
    ("wine", json.dumps({"rows": [{**ROW, "alcohol": "x"}]}), PREDICT),
    ("wine", "x" * 5000, PREDICT),
    ("wine", json.dumps({"rows": [ROW]}), {**PREDICT, "Content-Length": "12x"}),
    ("wine", json.dumps({"rows": [ROW]}), {**PREDICT, "Host": "evil.example"}),
    ("wine", json.dumps({"rows": [ROW]}), {**PREDICT, "Origin": "http://evil.example"}),
    ("wine", json.dumps({"rows": [ROW]}), {**PREDICT, "Content-Type": "text/plain"}),
    ("wine", '{"rows": [], "rows": [{"alcohol": 1}]}', PREDICT),
    ("wine", '{"rows": [{"alcohol": 1, "alcohol": 2}]}', PREDICT),
]


@pytest.mark.parametrize("case", range(len(LANE_CASES)))
def test_the_predict_fast_lane_answers_as_the_full_stack_does(case):
    """POST /v1/models/{name}/predict skips the middleware stack and the router; what it
    answers — status, headers, body — is what the full app answers."""
    model, body, headers = LANE_CASES[case]
    answers = []
    for lane in (True, False):
        app, _, _ = make_app(max_body_bytes=4096)
        if not lane:
            app._lane = None  # every request through the middlewares and the router
        with AppClient(app) as client:
            headers = {"Content-Type": "application/json", **headers}
            response = client.post(
                f"/v1/models/{model}/predict", content=body.encode(), headers=headers
            )
            text = client.get("/metrics").text
        counted = ("danlu_requests_total", "danlu_errors_total")
        metrics = sorted(line for line in text.splitlines() if line.startswith(counted))
        answers.append((response.status_code, dict(response.headers), response.content, metrics))
    assert answers[0] == answers[1]


def test_the_fast_lane_steps_aside_for_a_middleware_added_later(served):
    app, _, _ = make_app()
    seen = []

    class Spy:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            seen.append(scope["path"])
            await self.inner(scope, receive, send)

    app.add_middleware(Spy)
    with AppClient(app) as client:
        assert post(client, json.dumps({"rows": [ROW]})).status_code == 200
    assert seen == ["/v1/models/wine/predict"]


def test_models_model_and_drift(served):
    client, _, _ = served
    models = client.get("/v1/models", headers=PREDICT).json()["models"]
    assert models == [
        {
            "name": "wine",
            "version": 3,
            "ref": "wine:3",
            "runtime": "onnx",
            "task": "classification",
            "canary": None,
        }
    ]
    info = client.get("/v1/models/wine", headers=PREDICT).json()
    assert info["signature"]["inputs"] == FEATURES
    assert info["metrics"] == {"accuracy": 0.9, "ece": None}  # NaN is not JSON
    assert info["queue_depth"] == 0
    drift = client.get("/v1/models/wine/drift", headers=PREDICT).json()
    assert drift["model"] == "wine" and drift["version"] == 3
    assert drift["features"][0] == {"feature": "alcohol", "psi": 0.12, "status": "ok"}


def test_health_and_readiness(served):
    client, pool, _ = served
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "models": ["wine"]}
    pool.ready = False
    assert assert_error(client.get("/readyz"), 503)["code"] == "not_ready"


def test_readiness_turns_false_when_draining_and_the_pool_stops():
    app, pool, _ = make_app()
    with AppClient(app) as client:
        assert client.get("/readyz").status_code == 200
        server_state(app).begin_drain()
        error = assert_error(client.get("/readyz"), 503)
        assert error["code"] == "shutting_down"
        assert client.get("/healthz").status_code == 200  # still alive
        assert post(client, json.dumps({"rows": [ROW]})).status_code == 200  # still answering
        assert not pool.stopped
    assert pool.stopped


def test_unknown_model_is_404_on_every_model_route(served):
    client, _, _ = served
    assert_error(post(client, json.dumps({"rows": [ROW]}), model="nope"), 404)
    assert_error(client.get("/v1/models/nope", headers=PREDICT), 404)
    assert_error(client.get("/v1/models/nope/drift", headers=PREDICT), 404)


def test_routing_errors_are_json(served):
    client, _, _ = served
    assert_error(client.get("/nowhere"), 404)
    response = client.get("/v1/models/wine/predict", headers=PREDICT)
    assert_error(response, 405)
    assert "POST" in response.headers["allow"]


# -- bad bodies ---------------------------------------------------------------------------------
BAD_BODIES = {
    "invalid utf-8": (b'{"rows": [{"alcohol": "\xff\xfe"}]}', 400, "UTF-8"),
    "empty": (b"", 400, "empty"),
    "malformed": (b'{"rows": [{"alcohol": 1.0,}]}', 400, "line 1 column"),
    "NaN literal": (b'{"rows": [{"alcohol": NaN}]}', 400, "NaN"),
    "Infinity literal": (b'{"rows": [{"alcohol": -Infinity}]}', 400, "Infinity"),
    "nested 40 deep": (b'{"rows": ' + b"[" * 40 + b"]" * 40 + b"}", 400, "deeper"),
    "nested 200000 deep": (b"[" * 200_000, 400, None),
    "not an object": (b"[1, 2, 3]", 422, "object"),
    "a bare string": (b'"rows"', 422, "object"),
}


@pytest.mark.parametrize("case", BAD_BODIES, ids=list(BAD_BODIES))
def test_bad_bodies_are_4xx_naming_the_body(served, case):
    client, _, _ = served
    body, status, words = BAD_BODIES[case]
    error = assert_error(post(client, body), status, "body")
    if words:
        assert words in error["message"]


def test_big_numbers_reach_the_model_as_infinity(served):
    client, _, _ = served
    error = assert_error(post(client, '{"rows": [{"alcohol": 1e309}]}'), 422, "rows[0].alcohol")
    assert "finite" in error["message"]


def test_integers_beyond_any_float_are_refused_naming_the_field(served):
    client, _, _ = served
    number = (
        "-17976931348623157" + "0" * 292 + "1"
    )  # past the schema's bound, 1.7976931348623157e308
    error = assert_error(
        post(client, f'{{"rows": [{{"alcohol": {number}}}]}}'), 422, "rows[0].alcohol"
    )
    assert "finite" in error["message"]


def test_model_request_errors_keep_their_status_and_field(served):
    client, _, _ = served
    assert_error(post(client, '{"rows": [{"alcohol": "abc"}]}'), 422, "rows[0].alcohol")
    assert_error(post(client, '{"rows": []}'), 422, "rows")
    assert_error(post(client, json.dumps({"rows": [ROW] * 9})), 413, "rows")


def test_decode_body_walks_depth_without_recursion():
    deep: Any = 1
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    text = json.dumps({"rows": deep}).encode()
    with pytest.raises(RequestError, match="deeper"):
        decode_body(text)
    shallow = json.dumps({"rows": [{"x": [1] * 100}] * 50}).encode()  # many brackets, shallow
    assert decode_body(shallow)["rows"][0]["x"][0] == 1


def test_body_over_the_cap_is_413():
    app, _, _ = make_app(max_body_bytes=1000)
    with AppClient(app) as small:
        big = json.dumps({"rows": [ROW] * 40})
        assert len(big) > 1000
        assert_error(post(small, big), 413, "body")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: a chunked upload
            for _ in range(40):
                yield json.dumps(ROW).encode()

        error = assert_error(post(small, chunks()), 413, "body")
        assert "1000 bytes" in error["message"]
        assert post(small, json.dumps({"rows": [ROW]})).status_code == 200  # still serving


def test_queue_full_is_503_with_retry_after(served):
    client, pool, _ = served
    pool.models["wine"].error = QueueFull("wine", retry_after=0.2)
    response = post(client, json.dumps({"rows": [ROW]}))
    assert assert_error(response, 503)["code"] == "queue_full"
    assert response.headers["Retry-After"] == "1"


def test_a_slow_model_is_504():
    app, pool, _ = make_app(request_timeout_s=0.05)
    pool.models["wine"].slow = True  # never answers
    with AppClient(app) as client:
        error = assert_error(post(client, json.dumps({"rows": [ROW]})), 504)
        assert error["code"] == "timeout"


def test_unexpected_errors_are_generic_500s_with_a_request_id(served, caplog):
    client, pool, _ = served
    pool.models["wine"].error = RuntimeError("boom at /home/x/danlu/serve/_model.py line 3")
    response = post(client, json.dumps({"rows": [ROW]}))
    error = assert_error(response, 500)
    assert error["request_id"] == response.headers["X-Request-ID"]
    assert "boom" not in response.text
    assert error["request_id"] in caplog.text  # the log has it, with the traceback

    pool.models["wine"].drift_error = RuntimeError("SELECT * FROM api_keys; /srv/danlu/danlu.db")
    error = assert_error(client.get("/v1/models/wine/drift", headers=PREDICT), 500)
    assert "request_id" in error
    assert client.get("/healthz").status_code == 200  # and the server keeps serving


# -- admin -------------------------------------------------------------------------------------
def test_admin_routes_with_an_admin_key(served):
    client, pool, store = served
    response = client.post("/v1/admin/models/wine/reload", headers=ADMIN)
    assert response.status_code == 200 and response.json()["ref"] == "wine:3"
    assert pool.reloaded == ["wine"]

    response = client.post("/v1/admin/models", json={"ref": "other:2"}, headers=ADMIN)
    assert response.status_code == 200 and response.json()["ref"] == "other:2"
    assert post(client, json.dumps({"rows": [ROW]}), model="other").json()["version"] == 2

    response = client.put(
        "/v1/admin/models/wine/alias", json={"alias": "production", "version": 3}, headers=ADMIN
    )
    assert response.status_code == 200
    assert response.json()["serving"]["ref"] == "wine:3"
    assert store.aliases == [("wine", "production", 3, "api-key:ops")]
    assert pool.reloaded == ["wine", "wine"]

    response = client.delete("/v1/admin/models/other", headers=ADMIN)
    assert response.json() == {"model": "other", "unloaded": True}
    assert_error(post(client, json.dumps({"rows": [ROW]}), model="other"), 404)


def test_admin_errors(served):
    client, pool, _ = served
    error = assert_error(client.post("/v1/admin/models", json={"reff": 1}, headers=ADMIN), 422)
    assert error["field"] == "ref"
    assert_error(client.post("/v1/admin/models", content=b"{", headers=ADMIN), 422)
    assert_error(client.post("/v1/admin/models/nope/reload", headers=ADMIN), 404)
    assert_error(client.delete("/v1/admin/models/nope", headers=ADMIN), 404)
    body = {"alias": "production", "version": 1}
    assert_error(client.put("/v1/admin/models/nope/alias", json=body, headers=ADMIN), 404)
    body = {"alias": "7", "version": 1}
    assert_error(client.put("/v1/admin/models/wine/alias", json=body, headers=ADMIN), 422, "alias")
    body = {"alias": "production", "version": 0}
    assert_error(
        client.put("/v1/admin/models/wine/alias", json=body, headers=ADMIN), 422, "version"
    )

    pool.load_error = StoreError(
        "version 4 failed to load from /srv/danlu/models/wine/4/model.onnx"
    )
    error = assert_error(client.post("/v1/admin/models/wine/reload", headers=ADMIN), 409)
    assert "keeps serving" in error["message"] or "still serves" in error["message"]
    assert "<path>" in error["message"]


# -- metrics ------------------------------------------------------------------------------------
def test_metrics_label_versions_so_canaries_are_told_apart():
    pool = FakePool(FakeServed(), canaries={"wine": FakeServed("wine", 4)})
    app, pool, _ = make_app(pool, canaries=(Canary("wine", "wine:4", 0.1),))
    with AppClient(app) as client:
        for to_canary in (False, True, True):
            pool.to_canary = to_canary
            assert post(client, json.dumps({"rows": [ROW]})).status_code == 200
        pool.to_canary = False
        post(client, '{"rows": [{"alcohol": "x"}]}')
        post(client, b"{", model="nope")
        pool.models["wine"].depth = 5
        info = client.get("/v1/models/wine", headers=PREDICT).json()
        assert info["canary"] == {"ref": "wine:4", "version": 4, "share": 0.1}
        text = client.get("/metrics").text

    def value(series: str) -> float:
        line = next(line for line in text.splitlines() if line.startswith(series + " "))
        return float(line.rsplit(" ", 1)[1])

    assert value('danlu_requests_total{code="200",model="wine",version="3"}') == 1
    assert value('danlu_requests_total{code="200",model="wine",version="4"}') == 2
    assert value('danlu_requests_total{code="422",model="wine",version="3"}') == 1
    assert value('danlu_errors_total{code="invalid_input",model="wine"}') == 1
    assert value('danlu_errors_total{code="not_found",model="_unknown"}') == 1
    assert value('danlu_request_seconds_count{model="wine",version="4"}') == 2
    assert value('danlu_batch_rows_count{model="wine",version="3"}') == 1
    assert value('danlu_queue_depth{model="wine"}') == 5
    assert value('danlu_drift_psi{feature="alcohol",model="wine",version="3"}') == 0.12
    assert value('danlu_drift_psi{feature="alcohol",model="wine",version="4"}') == 0.12


def test_each_app_has_its_own_registry():
    first, _, _ = make_app()
    second, _, _ = make_app()
    with AppClient(first) as a, AppClient(second) as b:
        post(a, json.dumps({"rows": [ROW]}))
        assert 'version="3"' in a.get("/metrics").text
        assert "danlu_requests_total{" not in b.get("/metrics").text


# -- OpenAPI -------------------------------------------------------------------------------------
def test_openapi_describes_each_model_body():
    pool = FakePool(FakeServed(), FakeServed("iris-2", 1))
    app, pool, _ = make_app(pool)
    with AppClient(app) as client:
        spec = client.get("/openapi.json").json()
        assert client.get("/docs").status_code == 200
    schemas = spec["components"]["schemas"]
    operation = spec["paths"]["/v1/models/wine/predict"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert [ref["$ref"].rsplit("/", 1)[1] for ref in body["oneOf"]] == [
        "wine_RowsRequest",
        "wine_ColumnsRequest",
    ]
    row = schemas["wine_Row"]
    assert row["additionalProperties"] is False
    assert set(row["required"]) == {"alcohol", "color", "organic"}

    def types(feature: str) -> list[str]:
        return [option["type"] for option in row["properties"][feature]["anyOf"]]

    assert types("alcohol") == ["number", "null"]
    assert types("organic") == ["boolean", "integer", "null"]  # also 0 and 1
    assert types("color") == ["string", "number", "null"]
    assert "red, white" in row["properties"]["color"]["description"]
    rows = schemas["wine_RowsRequest"]["properties"]["rows"]
    assert rows["minItems"] == 1 and rows["maxItems"] == 8
    assert "/v1/models/iris-2/predict" in spec["paths"]
    assert "/v1/models/{name}/predict" not in spec["paths"]
    assert "HTTPValidationError" not in json.dumps(spec)  # every error is ErrorBody
    for path, item in spec["paths"].items():
        for method, op in item.items():
            refs = json.dumps(op.get("responses", {}))
            assert "#/components/schemas/" in refs or path in ("/metrics",), (path, method)
            if path.startswith("/v1/admin"):
                assert {} not in op["security"] and "401" in op["responses"]
    for ref in set(_refs(spec)):
        assert ref.rsplit("/", 1)[1] in schemas, ref


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(value, list):
        for v in value:
            yield from _refs(v)


def test_openapi_follows_loads_and_unloads(served):
    client, _, _ = served
    assert "/v1/models/other/predict" not in client.get("/openapi.json").json()["paths"]
    client.post("/v1/admin/models", json={"ref": "other:2"}, headers=ADMIN)
    assert "/v1/models/other/predict" in client.get("/openapi.json").json()["paths"]
    client.delete("/v1/admin/models/other", headers=ADMIN)
    assert "/v1/models/other/predict" not in client.get("/openapi.json").json()["paths"]


# -- a real server ----------------------------------------------------------------------------------
def test_a_real_server_serves_then_drains_gracefully():
    pool = FakePool(FakeServed())
    store = keyed_store()
    settings = ServeSettings(
        models=("wine",),
        max_body_bytes=2000,
        extra={"header_timeout_s": 0.5, "body_timeout_s": 0.3},
    )
    app = create_app(pool, lambda: store, settings)
    slow: dict[str, Any] = {}
    with running_server(app, settings) as (server, url):
        with httpx.Client(base_url=url, headers=PREDICT, timeout=10) as http:
            assert http.get("/readyz").status_code == 200
            response = http.post("/v1/models/wine/predict", json={"rows": [ROW]})
            assert response.status_code == 200 and response.headers["x-model-version"] == "3"
            assert http.post("/v1/models/wine/predict", content=b"\xff").status_code == 400
            big = json.dumps({"rows": [ROW] * 100})
            assert http.post("/v1/models/wine/predict", content=big).status_code == 413
            assert http.post("/v1/admin/models/wine/reload").status_code == 403
            assert "danlu_requests_total" in http.get("/metrics").text

        # a client that never finishes its headers is disconnected
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            assert raw.recv(100) == b""  # closed by the server

        # a body that does not arrive in time is 408
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(
                b"POST /v1/models/wine/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n"
                + f"Authorization: Bearer {PREDICT_SECRET}\r\n\r\n".encode()
                + b'{"rows": ['
            )
            answer = b""
            while not answer.endswith(b"}}") and (chunk := raw.recv(4096)):
                answer += chunk  # the headers and the body may come in separate segments
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b'"field":"body"' in answer

        # a request in flight when SIGTERM arrives is answered; readiness went false first
        wine = pool.models["wine"]
        wine.slow = True

        def slow_request() -> None:
            with httpx.Client(base_url=url, headers=PREDICT, timeout=20) as http:
                slow["response"] = http.post("/v1/models/wine/predict", json={"rows": [ROW]})

        client_thread = threading.Thread(target=slow_request)
        client_thread.start()
        deadline = time.monotonic() + 10
        while not server.server_state.tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        server.handle_exit(15, None)
        assert server_state(app).draining  # readiness first
        while server.servers[0].is_serving() and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(OSError):  # no longer accepting
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert client_thread.is_alive() and not pool.stopped  # still in flight
        wine.release.set()
        client_thread.join(timeout=20)
    assert slow["response"].status_code == 200
    assert pool.stopped


# -- with the real pool and store --------------------------------------------------------------------
WINE = {
    "name": "w",
    "data": {"source": "builtin:wine"},
    "task": "classification",
    "model": {"type": "mlp", "hidden": [16]},
    "train": {"epochs": 1, "checkpoint": {"every": 0}},
    "register": {"name": "wine", "alias": "production"},
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> tuple[Any, dict[str, str], dict[str, Any]]:
    """wine:1 and wine:2 (production → 1), an admin and a predict key, and a valid row."""
    from danlu import pipeline
    from danlu.store import SqlStore

    home = tmp_path_factory.mktemp("serve-app")
    store = SqlStore(home=home)
    for _ in range(2):
        pipeline.run(WINE, store=store, home=home)
    store.set_alias("wine", "production", 1)
    secrets = {scope: store.create_api_key(scope, name=scope)[1] for scope in ("admin", "predict")}
    row = {f["name"]: 1.0 for f in store.get_model_version("wine", 1).signature["inputs"]}
    store.close()
    return home, secrets, row


def test_the_real_pool_behind_a_real_server(registry):
    from danlu.serve._server import build_app
    from danlu.store import SqlStore

    home, secrets, row = registry
    settings = ServeSettings(models=("wine@production",), poll_seconds=0, max_wait_ms=1.0)
    app = build_app(settings, lambda: SqlStore(home=home))
    predict = {"Authorization": f"Bearer {secrets['predict']}"}
    admin = {"X-API-Key": secrets["admin"]}
    with running_server(app, settings) as (_, url), httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/readyz").status_code == 200
        assert_error(http.post("/v1/models/wine/predict", json={"rows": [row]}), 401)
        answer = http.post("/v1/models/wine/predict", json={"rows": [row, row]}, headers=predict)
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Model-Version"] == "1"
        assert len(answer.json()["predictions"]) == 2 and len(answer.json()["probabilities"]) == 2
        bad = http.post(
            "/v1/models/wine/predict", json={"rows": [{**row, "hue": "x"}]}, headers=predict
        )
        assert_error(bad, 422, "rows[0].hue")
        spec = http.get("/openapi.json").json()
        assert len(spec["components"]["schemas"]["wine_Row"]["properties"]) == len(row)
        assert http.get("/v1/models/wine/drift", headers=predict).status_code == 200
        assert_error(http.post("/v1/admin/models/wine/reload", headers=predict), 403)

        moved = http.put(
            "/v1/admin/models/wine/alias", json={"alias": "production", "version": 2}, headers=admin
        )
        assert moved.status_code == 200, moved.text
        assert moved.json()["serving"]["version"] == 2
        answer = http.post("/v1/models/wine/predict", json={"rows": [row]}, headers=predict)
        assert answer.headers["X-Model-Version"] == "2"
        metrics = http.get("/metrics").text
        assert 'danlu_requests_total{code="200",model="wine",version="1"} 1.0' in metrics
        assert 'danlu_requests_total{code="200",model="wine",version="2"} 1.0' in metrics
        assert 'danlu_batch_rows_count{model="wine",version="1"}' in metrics
    SqlStore(home=home).set_alias("wine", "production", 1)


def test_serve_exits_0_on_sigterm_after_draining(registry):
    import os
    import selectors
    import signal
    import subprocess
    import sys

    home, secrets, row = registry
    code = (
        "from danlu.serve import ServeSettings, serve; from danlu.store import SqlStore\n"
        "serve(ServeSettings(models=('wine@production',), port=0, poll_seconds=0), "
        f"lambda: SqlStore(home={str(home)!r}))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, env=env)
    assert process.stderr is not None
    log = b""
    try:
        selector = selectors.DefaultSelector()
        selector.register(process.stderr, selectors.EVENT_READ)
        deadline, port = time.monotonic() + 60, None
        while port is None and time.monotonic() < deadline and process.poll() is None:
            if selector.select(timeout=1):
                log += os.read(process.stderr.fileno(), 65536)  # unbuffered: select stays true
                found = re.search(rb"http://127\.0\.0\.1:(\d+)", log)
                port = int(found.group(1)) if found else None
        assert port is not None, log.decode()
        headers = {"X-API-Key": secrets["predict"]}
        url = f"http://127.0.0.1:{port}/v1/models/wine/predict"
        assert httpx.post(url, json={"rows": [row]}, headers=headers, timeout=30).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        log += process.stderr.read()
        assert b"Application shutdown complete" in log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        process.stderr.close()


# -- binding and the command line ----------------------------------------------------------------
def test_serve_refuses_a_public_address_without_keys():
    from danlu.errors import ConfigError
    from danlu.serve import serve

    settings = ServeSettings(models=("wine",), host="0.0.0.0")
    with pytest.raises(ConfigError, match="danlu keys create --scope predict"):
        serve(settings, FakeStore)
    with pytest.raises(ConfigError, match="--workers"):
        serve(ServeSettings(models=("wine",), workers=0), FakeStore)


def test_settings_travel_to_workers_as_json():
    from danlu.serve._server import settings_from_json, settings_to_json

    settings = ServeSettings(
        models=("wine@production",), canaries=(Canary("wine", "wine:2", 0.1),), extra={"a": 1}
    )
    assert settings_from_json(settings_to_json(settings)) == settings


def test_canary_and_size_options_are_parsed_strictly():
    from danlu.cli._serve import parse_canary, parse_size
    from danlu.errors import ConfigError

    assert parse_canary("digits:5=10%", ["digits@production"]) == Canary("digits", "digits:5", 0.1)
    assert parse_canary("wine:2=2.5%").share == pytest.approx(0.025)
    for bad in (
        "digits=10%",
        "digits:5",
        "digits:x=10%",
        "digits:5=10",
        "digits:5=0%",
        "digits:5=100%",
    ):
        with pytest.raises(ConfigError, match="digits:5=10%|between"):
            parse_canary(bad)
    with pytest.raises(ConfigError, match="not served"):
        parse_canary("iris:2=10%", ["digits"])
    assert parse_size("1MB") == 1_000_000 and parse_size("64KiB") == 65536
    assert parse_size("2000") == 2000 and parse_size("1.5 kb") == 1500
    for bad in ("lots", "-1MB", "0", "1TB"):
        with pytest.raises(ConfigError, match="--max-body"):
            parse_size(bad)


# -- issue 13: what the attack run found ---------------------------------------------------------
def test_hosts_origins_and_content_types_are_checked_on_every_route(served):
    client, pool, _ = served
    rows = json.dumps({"rows": [ROW]})
    evil_host = {**ADMIN, "Host": "evil.example"}
    assert_error(client.post("/v1/admin/models/wine/reload", headers=evil_host), 400, "Host")
    assert_error(client.get("/v1/models", headers=evil_host), 400, "Host")
    assert_error(client.get("/openapi.json", headers={"Host": "evil.example"}), 400, "Host")
    assert client.get("/healthz", headers={"Host": "10.0.0.1"}).status_code == 200
    cross = {**ADMIN, "Origin": "https://evil.example"}
    assert_error(client.post("/v1/admin/models/wine/reload", headers=cross), 403, "Origin")
    body = {"alias": "production", "version": 3}
    moved = client.put("/v1/admin/models/wine/alias", json=body, headers=cross)
    assert_error(moved, 403, "Origin")
    assert pool.reloaded == []  # nothing happened
    pickled = client.post(
        "/v1/models/wine/predict",
        content=rows,
        headers={**PREDICT, "Content-Type": "application/python-pickle"},
    )
    error = assert_error(pickled, 415, "Content-Type")
    assert error["code"] == "unsupported_media_type" and "application/json" in error["message"]
    form = client.post(
        "/v1/admin/models",
        content=b'{"ref": "other:2"}',
        headers={**ADMIN, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(form, 415, "Content-Type")
    for headers in ({}, {"Content-Type": "application/json; charset=utf-8"}):
        answer = client.post(
            "/v1/models/wine/predict", content=rows, headers={**PREDICT, **headers}
        )
        assert answer.status_code == 200, answer.text
    loaded = client.post("/v1/admin/models", content=b'{"ref": "other:2"}', headers=ADMIN)
    assert loaded.status_code == 200, loaded.text  # no Content-Type: read as JSON


def test_duplicate_keys_are_400_naming_the_key(served):
    client, pool, _ = served
    body = '{"rows": [{"alcohol": 1.0}], "rows": [{"alcohol": 2.0}]}'
    error = assert_error(post(client, body), 400, "rows")
    assert error["code"] == "duplicate_key" and "twice" in error["message"]
    assert_error(post(client, '{"rows": [{"alcohol": 1.0}, {"alcohol": 1.0, "alcohol": 2.0}]}'), 400, "rows[1].alcohol")  # fmt: skip
    columns = '{"columns": {"alcohol": [1.0], "alcohol": [2.0]}}'
    assert_error(post(client, columns), 400, "columns.alcohol")
    # colons inside strings take the slow path, and pass
    assert post(client, '{"rows": [{"alcohol": 1.5, "note": "12:30"}]}').status_code == 200
    admin = client.post(
        "/v1/admin/models", content=b'{"ref": "other:2", "ref": "nosuch"}', headers=ADMIN
    )
    assert_error(admin, 400, "ref")
    assert "other" not in pool.models


def test_a_failed_load_at_the_admin_route_is_409_whatever_the_loader_raised(served):
    from danlu.serve._types import ModelLoadError

    client, pool, _ = served
    try:
        raise NotFoundError("Unknown architecture 'builtins:print': not built in.")
    except NotFoundError as cause:
        pool.load_error = ModelLoadError(
            "Model 'other': version 2 (from 'other:2') failed to load: " + str(cause)
        )
    response = client.post("/v1/admin/models", json={"ref": "other:2"}, headers=ADMIN)
    error = assert_error(response, 409)
    assert error["code"] == "load_failed" and "builtins:print" in error["message"]
    pool.load_error = NotFoundError("No model named 'nosuch'.")  # resolving: still 404
    assert_error(client.post("/v1/admin/models", json={"ref": "nosuch"}, headers=ADMIN), 404)


def test_models_that_failed_at_start_up_are_listed(served):
    client, pool, _ = served
    pool.failed = [
        {"name": "bad", "ref": "bad:2", "role": "model", "error": "Model 'bad' failed to load: "
         "/srv/danlu/models/bad/2/model.safetensors is corrupt"},
    ]  # fmt: skip
    assert client.get("/readyz").json() == {"status": "ready", "models": ["wine"], "failed": ["bad"]}  # fmt: skip
    listed = client.get("/v1/models", headers=PREDICT).json()
    assert [m["name"] for m in listed["models"]] == ["wine"]
    assert listed["failed"][0]["name"] == "bad" and "/srv/" not in listed["failed"][0]["error"]


def test_the_row_limit_is_what_the_body_cap_holds_and_the_413_says_which():
    from danlu.serve._limits import VALUE_BYTES, row_bytes

    per_row = row_bytes([f["name"] for f in FEATURES])
    app, _, _ = make_app(max_rows=100, max_body_bytes=64 + 5 * per_row)
    with AppClient(app) as client:
        spec = client.get("/openapi.json").json()
        rows = spec["components"]["schemas"]["wine_RowsRequest"]["properties"]["rows"]
        assert rows["maxItems"] == 5  # not --max-rows' 100: 5 rows is what the cap holds
        lengths = spec["components"]["schemas"]["wine_Columns"]["oneOf"]
        assert [b["additionalProperties"]["minItems"] for b in lengths] == [1, 2, 3, 4, 5]
        error = assert_error(post(client, json.dumps({"rows": [{"alcohol": 1}] * 6})), 413, "rows")
        assert (
            "--max-body" in error["message"] and f"{VALUE_BYTES} bytes a value" in error["message"]
        )
        assert post(client, json.dumps({"rows": [ROW] * 5})).status_code == 200
    app, _, _ = make_app(max_rows=3)
    with AppClient(app) as client:
        error = assert_error(post(client, json.dumps({"rows": [ROW] * 4})), 413, "rows")
        assert "--max-rows is 3" in error["message"]


def test_openapi_declares_every_status_a_route_answers():
    app, _, _ = make_app()
    with AppClient(app) as client:
        spec = client.get("/openapi.json").json()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            codes = set(operation["responses"])
            if path not in ("/healthz", "/readyz"):
                assert "400" in codes, (path, method)  # a Host not allowed
            if method in ("post", "put", "delete"):
                assert "403" in codes, (path, method)  # a cross-site Origin
            if method in ("post", "put"):
                assert "415" in codes, (path, method)
            if "requestBody" in operation:
                assert {"400", "408", "413"} <= codes, (path, method)
            if "security" in operation:
                assert {"401", "503"} <= codes, (path, method)
    predict = spec["paths"]["/v1/models/wine/predict"]["post"]
    assert {"400", "401", "403", "404", "408", "413", "415", "422", "503", "504"} <= set(predict["responses"])  # fmt: skip
    assert "At most 8 rows" in predict["description"]
