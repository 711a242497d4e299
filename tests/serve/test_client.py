"""The Python client: what it sends, and the server's errors as DanluErrors naming the field."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import pandas as pd
import pytest

from danlu.errors import DanluError, NotFoundError
from danlu.serve import (
    AuthError,
    Client,
    InvalidRequestError,
    ModelNotFoundError,
    ServerError,
    ServeSettings,
)
from danlu.serve._app import create_app
from tests.serve.test_app import (
    ADMIN_SECRET,
    PREDICT_SECRET,
    ROW,
    FakePool,
    FakeServed,
    keyed_store,
    running_server,
)


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[str, FakePool]]:
    """A real uvicorn server on 127.0.0.1 serving a fake pool."""
    pool = FakePool(FakeServed())
    store = keyed_store()
    settings = ServeSettings(models=("wine",), max_rows=4)
    app = create_app(pool, lambda: store, settings)
    with running_server(app, settings) as (_, url):
        yield url, pool


def test_predict_rows_columns_and_frames(live):
    url, _ = live
    with Client(url, key=PREDICT_SECRET) as client:
        answer = client.predict("wine", [ROW, ROW])
        assert answer["version"] == 3 and answer["predictions"] == ["a", "a"]
        assert answer["classes"] == ["a", "b"]  # the probabilities' columns, named
        assert client.predict_proba("wine", [ROW]) == [{"a": 0.75, "b": 0.25}]
        assert client.predict("wine", {"rows": [ROW]})["predictions"] == ["a"]
        frame = pd.DataFrame([ROW, ROW, ROW])
        assert client.predict("wine", frame)["predictions"] == ["a", "a", "a"]
        assert client.models()[0]["ref"] == "wine:3"
        assert client.model("wine")["signature"]["task"] == "classification"
        assert client.drift("wine")["features"][0]["feature"] == "alcohol"
        assert client.ready()


def test_server_errors_become_danlu_errors_naming_the_field(live):
    url, _ = live
    with Client(url, key=PREDICT_SECRET) as client:
        with pytest.raises(InvalidRequestError) as caught:
            client.predict("wine", [{**ROW, "alcohol": "abc"}])
        assert caught.value.status == 422 and caught.value.field == "rows[0].alcohol"
        assert "rows[0].alcohol: must be a finite number" in str(caught.value)
        assert isinstance(caught.value, DanluError) and isinstance(caught.value, ValueError)

        with pytest.raises(InvalidRequestError) as caught:
            client.predict("wine", [ROW] * 5)
        assert caught.value.status == 413

        with pytest.raises(ModelNotFoundError) as missing:
            client.predict("nope", [ROW])
        assert isinstance(missing.value, NotFoundError) and missing.value.status == 404

        with pytest.raises(AuthError) as denied:
            client.reload("wine")
        assert denied.value.status == 403 and denied.value.field == "Authorization"

    with Client(url) as anonymous, pytest.raises(AuthError) as caught:
        anonymous.models()  # keys exist: predict needs one
    assert caught.value.status == 401


def test_admin_calls_with_an_admin_key(live):
    url, pool = live
    with Client(url, key=ADMIN_SECRET) as admin:
        assert admin.reload("wine")["ref"] == "wine:3"
        assert admin.load("other:2")["version"] == 2
        assert admin.set_alias("other", "production", 2)["serving"]["ref"] == "other:2"
        assert admin.unload("other") == {"model": "other", "unloaded": True}
    assert "wine" in pool.reloaded


def _mock(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.MockTransport:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(status, content=content, headers=headers)

    transport = httpx.MockTransport(handler)
    transport.seen = seen  # type: ignore[attr-defined]
    return transport


def test_what_the_client_sends():
    transport = _mock(200, {"predictions": [1]})
    client = Client("http://server:9", key="dl_k", transport=transport)
    frame = pd.DataFrame({"a": [1.0, math.nan], "b": ["x", "y"]})
    client.predict("wine", frame)
    client.predict("digits", {"a": [1, 2], "b": [3, 4]})
    (by_frame, by_columns) = transport.seen  # type: ignore[attr-defined]
    assert by_frame.url.path == "/v1/models/wine/predict"
    assert by_frame.headers["Authorization"] == "Bearer dl_k"
    assert json.loads(by_frame.content) == {"columns": {"a": [1.0, None], "b": ["x", "y"]}}
    assert json.loads(by_columns.content) == {"columns": {"a": [1, 2], "b": [3, 4]}}
    with pytest.raises(InvalidRequestError, match="infinities") as caught:
        client.predict("wine", [{"a": math.inf}])
    assert caught.value.field == "rows[0].a"
    with pytest.raises(InvalidRequestError, match="row dicts"):
        client.predict("wine", 42)


def test_error_mapping_without_a_json_body():
    busy = Client(
        "http://server:9",
        transport=_mock(
            503,
            {"error": {"status": 503, "code": "queue_full", "message": "busy"}},
            {"Retry-After": "2"},
        ),
    )
    with pytest.raises(ServerError) as caught:
        busy.predict("wine", [ROW])
    assert caught.value.code == "queue_full" and caught.value.retry_after == 2.0
    proxy = Client("http://server:9", transport=_mock(502, b"<html>bad gateway</html>"))
    with pytest.raises(ServerError, match="bad gateway") as caught:
        proxy.models()
    assert caught.value.status == 502


def test_an_unreachable_server_is_a_server_error():
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Client(f"http://127.0.0.1:{port}", timeout=5) as client:
        with pytest.raises(ServerError, match="Cannot reach") as caught:
            client.models()
        assert caught.value.status == 0
        assert not client.ready()
