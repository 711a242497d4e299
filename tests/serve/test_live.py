"""Bad input against a real ``danlu serve`` process on 127.0.0.1 (issue 7, "Bad input").

Every bad request gets a 4xx with a JSON body ``{"error": {...}}`` that names the offending field
where there is one, and carries no traceback, file path, SQL or secret; right after it the server
still answers a good request. The servers come from ``conftest.py`` (one keyed server for this
module, and one over a copy of the registry with no keys).
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.serve.conftest import (
    LIVE_OPTIONS,
    LiveRegistry,
    LiveServer,
    assert_no_leak,
    serve_command,
    server_env,
    start_server,
)

WINE = "/v1/models/wine/predict"
JSON = {"Content-Type": "application/json"}
MAX_BODY = 64_000  # --max-body 64KB
MAX_ROWS = 64  # --max-rows 64


# -- helpers ---------------------------------------------------------------------------------------
def assert_rejected(
    response: httpx.Response,
    status: int,
    field: str | None = None,
    *words: str,
    secrets: tuple[Any, ...] = (),
) -> dict[str, Any]:
    """A 4xx JSON error naming ``field`` (when given), whose message holds ``words``."""
    assert response.status_code == status, response.text
    assert 400 <= status < 500
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error = response.json()["error"]
    assert error["status"] == status and isinstance(error["message"], str) and error["message"]
    if field is not None:
        assert error.get("field") == field, error
    for word in words:
        assert word.lower() in error["message"].lower(), error
    assert_no_leak(response.text, *secrets)
    return error  # type: ignore[no-any-return]


def assert_serving(http: httpx.Client, row: dict[str, float]) -> None:
    """The server still answers a good request."""
    response = http.post(WINE, json={"rows": [row]})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 1


def _with(row: dict[str, Any], **change: Any) -> dict[str, Any]:
    return {**row, **change}


def _without(row: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != name}


def _literal(row: dict[str, Any], literal: str) -> bytes:
    """A rows body whose alcohol value is ``literal``, written as is (not valid for json.dumps)."""
    return json.dumps({"rows": [_with(row, alcohol="@")]}).replace('"@"', literal).encode()


def _body(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def _columns(row: dict[str, Any], n: int = 2, **change: Any) -> dict[str, Any]:
    return {"columns": {**{k: [v] * n for k, v in row.items()}, **change}}


# (id, body builder from a valid row, status, field, words in the message)
BodyCase = tuple[str, Callable[[dict[str, Any]], bytes], int, str | None, tuple[str, ...]]
BAD_BODIES: list[BodyCase] = [
    ("malformed-json", lambda r: b'{"rows": [{"alcohol": 1.0,]}', 400, "body", ("JSON",)),
    ("truncated-json", lambda r: b'{"rows": [', 400, "body", ("JSON",)),
    ("invalid-utf8", lambda r: b'{"rows": [{"alcohol": "\xff\xfe"}]}', 400, "body", ("UTF-8",)),
    ("empty-body", lambda r: b"", 400, "body", ("empty",)),
    ("deep-arrays", lambda r: b"[" * 30_000 + b"]" * 30_000, 400, "body", ("deeper",)),
    ("deep-unclosed", lambda r: b'{"rows": ' + b"[" * 60_000, 400, "body", ("deeper",)),
    ("nan", lambda r: _literal(r, "NaN"), 400, "body", ("NaN",)),
    ("infinity", lambda r: _literal(r, "Infinity"), 400, "body", ("Infinity",)),
    ("minus-infinity", lambda r: _literal(r, "-Infinity"), 400, "body", ("-Infinity",)),
    ("1e309", lambda r: _literal(r, "1e309"), 422, "rows[0].alcohol", ("finite",)),
    ("-1e309", lambda r: _literal(r, "-1e309"), 422, "rows[0].alcohol", ("finite",)),
    ("huge-integer", lambda r: _literal(r, "9" * 5000), 400, "body", ("digits",)),
    ("string", lambda r: _body({"rows": [_with(r, alcohol="13.2")]}), 422, "rows[0].alcohol", ("number",)),
    ("boolean", lambda r: _body({"rows": [_with(r, alcohol=True)]}), 422, "rows[0].alcohol", ("number",)),
    ("list-value", lambda r: _body({"rows": [_with(r, hue=[1.0])]}), 422, "rows[0].hue", ("number",)),
    ("missing-feature", lambda r: _body({"rows": [_without(r, "hue")]}), 422, "rows[0].hue", ("missing",)),
    (
        "missing-in-second-row",
        lambda r: _body({"rows": [r, _without(r, "proline")]}),
        422,
        "rows[1].proline",
        ("missing",),
    ),
    ("extra-feature", lambda r: _body({"rows": [_with(r, vintage=1999)]}), 422, "rows[0].vintage", ("not a feature",)),
    ("row-not-object", lambda r: _body({"rows": [r, [1.0, 2.0]]}), 422, "rows[1]", ("object",)),
    ("rows-not-list", lambda r: _body({"rows": r}), 422, "rows", ("list",)),
    ("columns-not-list", lambda r: _body(_columns(r, hue="x")), 422, "columns.hue", ("list",)),
    ("columns-string", lambda r: _body(_columns(r, hue=[1.0, "x"])), 422, "columns.hue[1]", ("number",)),
    ("columns-boolean", lambda r: _body(_columns(r, proline=[True, 1.0])), 422, "columns.proline[0]", ("number",)),
    ("columns-nan-like", lambda r: _body(_columns(r, ash=[1.0, "NaN"])), 422, "columns.ash[1]", ("number",)),
    ("columns-unequal", lambda r: _body(_columns(r, hue=[1.0])), 422, "columns", ("same length",)),
    ("columns-missing", lambda r: _body({"columns": {k: [v] for k, v in _without(r, "hue").items()}}), 422, "columns.hue", ("missing",)),
    ("columns-extra", lambda r: _body(_columns(r, vintage=[1, 2])), 422, "columns.vintage", ("not a feature",)),
    ("empty-batch", lambda r: _body({"rows": []}), 422, "rows", ("empty",)),
    ("empty-columns", lambda r: _body(_columns(r, 0)), 422, "columns", ("empty",)),
    ("over-max-rows", lambda r: _body(_columns(r, MAX_ROWS + 1)), 413, "columns", (f"at most {MAX_ROWS}",)),
    ("not-an-object", lambda r: _body([r]), 422, "body", ("object",)),
    ("rows-and-columns", lambda r: _body({"rows": [r], **_columns(r)}), 422, "body", ("exactly one",)),
    ("unknown-key", lambda r: _body({"data": [r]}), 422, "data", ("not a known key",)),
]  # fmt: skip


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def http(live_server: LiveServer, live_registry: LiveRegistry) -> Iterator[httpx.Client]:
    """A client of the keyed server, sending the predict key."""
    headers = {"Authorization": f"Bearer {live_registry.predict}"}
    with httpx.Client(base_url=live_server.url, headers=headers, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def keyless_server(
    live_registry: LiveRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """wine@production on loopback over a registry with no API keys; a 1 s request timeout (so
    a stalled body is answered 408 quickly)."""
    log_dir = tmp_path_factory.mktemp("keyless-server")
    args = ("wine@production", *LIVE_OPTIONS, "--timeout", "1")
    with start_server(live_registry.keyless_home, *args, log_dir=log_dir) as server:
        yield server


def _secrets(registry: LiveRegistry) -> tuple[Any, ...]:
    return (registry.admin, registry.predict, registry.home, registry.keyless_home)


# -- bad bodies -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "status", "field", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_BODIES],
)
def test_bad_body_is_a_4xx_naming_the_field(
    http: httpx.Client,
    live_registry: LiveRegistry,
    build: Callable[[dict[str, Any]], bytes],
    status: int,
    field: str | None,
    words: tuple[str, ...],
) -> None:
    row = live_registry.row
    body = build(row)
    assert len(body) <= MAX_BODY  # these are about content; the cap has its own test
    response = http.post(WINE, content=body, headers=JSON)
    assert_rejected(response, status, field, *words, secrets=_secrets(live_registry))
    assert_serving(http, row)


def test_body_over_the_cap_is_413_with_or_without_content_length(
    http: httpx.Client, live_registry: LiveRegistry
) -> None:
    row = live_registry.row
    big = _body({"rows": [row] * 300})  # valid JSON, but more bytes than --max-body
    assert len(big) > MAX_BODY
    assert_rejected(http.post(WINE, content=big, headers=JSON), 413, "body", str(MAX_BODY))
    assert_serving(http, row)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap applies as it streams in
        yield b'{"rows": ['
        for _ in range(100):
            yield b" " * 1000
        yield b"]}"

    request = http.build_request("POST", WINE, content=chunks(), headers=JSON)
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    assert_rejected(http.send(request), 413, "body", str(MAX_BODY))
    assert_serving(http, row)

    deep = b"[" * 100_000 + b"]" * 100_000  # very deep nesting is stopped by the cap first
    assert_rejected(http.post(WINE, content=deep, headers=JSON), 413, "body")
    assert_serving(http, row)


def test_a_huge_header_is_refused(http: httpx.Client, live_registry: LiveRegistry) -> None:
    response = http.get("/healthz", headers={"X-Padding": "a" * 100_000})
    assert_rejected(response, 431, "headers", "bytes")
    assert_serving(http, live_registry.row)
    assert http.get("/healthz", headers={"X-Padding": "a" * 8_000}).status_code == 200


def test_get_on_predict_is_a_405_json(http: httpx.Client, live_registry: LiveRegistry) -> None:
    for method in ("GET", "PUT", "DELETE"):
        response = http.request(method, WINE)
        assert_rejected(response, 405, None, "method")
        assert response.json()["error"]["code"] == "method_not_allowed"
        assert response.headers["allow"] == "POST"
    assert_serving(http, live_registry.row)


# -- models, versions and keys -------------------------------------------------------------------
def test_an_unknown_model_is_404(http: httpx.Client, live_registry: LiveRegistry) -> None:
    row = live_registry.row
    for response in (
        http.post("/v1/models/nosuch/predict", json={"rows": [row]}),
        http.get("/v1/models/nosuch"),
        http.get("/v1/models/nosuch/drift"),
    ):
        assert_rejected(response, 404, None, "nosuch", secrets=_secrets(live_registry))
    assert_rejected(http.get("/v1/nothing/here"), 404, None, "route")
    assert_serving(http, row)


def test_admin_load_of_an_unknown_model_version_or_alias_is_404(
    live_server: LiveServer, live_registry: LiveRegistry, http: httpx.Client
) -> None:
    admin = {"Authorization": f"Bearer {live_registry.admin}"}
    secrets = _secrets(live_registry)
    with httpx.Client(base_url=live_server.url, headers=admin, timeout=30) as client:
        for ref, words in (
            ("nosuch", ("nosuch",)),
            ("wine:99", ("version 99",)),
            ("wine@nope", ("alias", "nope")),
        ):
            response = client.post("/v1/admin/models", json={"ref": ref})
            assert_rejected(response, 404, None, *words, secrets=secrets)
        assert_rejected(client.post("/v1/admin/models/nosuch/reload"), 404, None, "nosuch")
        assert_rejected(client.delete("/v1/admin/models/nosuch"), 404, None, "nosuch")
        moved = client.put(
            "/v1/admin/models/wine/alias", json={"alias": "production", "version": 99}
        )
        assert_rejected(moved, 404, None, "version 99", secrets=secrets)
        for bad in ({"ref": "../../etc/passwd"}, {"ref": "wine", "path": "/tmp/x"}, {}):
            assert_rejected(client.post("/v1/admin/models", json=bad), 422, None, secrets=secrets)
        bad_alias = client.put("/v1/admin/models/wine/alias", json={"alias": "prod", "version": 0})
        assert_rejected(bad_alias, 422, "version")
        # nothing moved: wine@production still answers with version 1
        info = client.get("/v1/models/wine").json()
        assert info["version"] == 1 and info["ref"] == "wine:1"
    response = http.post(WINE, json={"rows": [live_registry.row]})
    assert response.status_code == 200 and response.headers["x-model-version"] == "1"


def _admin_routes(http: httpx.Client) -> list[tuple[str, str]]:
    spec = http.get("/openapi.json").json()
    return sorted(
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if path.startswith("/v1/admin")
    )


# harmless bodies: were a route to let a request through, it would answer 404, not act
_ADMIN_BODIES = {"/v1/admin/models": {"ref": "nosuch"}, "/v1/admin/models/{name}/alias": {"alias": "x", "version": 99}}  # fmt: skip


def test_every_admin_route_needs_an_admin_key(
    live_server: LiveServer, live_registry: LiveRegistry, http: httpx.Client
) -> None:
    routes = _admin_routes(http)
    assert routes == [
        ("DELETE", "/v1/admin/models/{name}"),
        ("POST", "/v1/admin/models"),
        ("POST", "/v1/admin/models/{name}/reload"),
        ("PUT", "/v1/admin/models/{name}/alias"),
    ]
    secrets = _secrets(live_registry)
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        for method, path in routes:
            url = path.replace("{name}", "nosuch")
            body = _ADMIN_BODIES.get(path)

            def call(
                headers: dict[str, str], method: str = method, url: str = url, body: Any = body
            ) -> Any:
                return client.request(method, url, json=body, headers=headers)

            missing = call({})
            assert_rejected(missing, 401, "Authorization", "admin", secrets=secrets)
            assert missing.headers["www-authenticate"].startswith("Bearer")
            assert_rejected(call({"Authorization": "Bearer dl_wrong"}), 401, "Authorization")
            assert_rejected(call({"Authorization": "Basic YWRtaW46YWRtaW4="}), 401, "Authorization")
            assert_rejected(call({"X-API-Key": live_registry.admin + "x"}), 401, "X-API-Key")
            assert_rejected(call({"Authorization": "Bearer " + "k" * 10_000}), 401, "Authorization")
            predict_key = call({"Authorization": f"Bearer {live_registry.predict}"})
            assert_rejected(predict_key, 403, "Authorization", "admin", secrets=secrets)
            # with the admin key the request gets through to the route: nosuch is unknown
            admin_key = call({"X-API-Key": live_registry.admin})
            assert admin_key.status_code == 404, (method, url, admin_key.text)
        # the check is central: an admin path no route serves still needs the key
        assert_rejected(client.post("/v1/admin/anything"), 401, "Authorization")
        admin = {"X-API-Key": live_registry.admin}
        assert_rejected(client.post("/v1/admin/anything", headers=admin), 404)
    assert_serving(http, live_registry.row)


def test_predict_needs_a_key_once_keys_exist(
    live_server: LiveServer, live_registry: LiveRegistry, http: httpx.Client
) -> None:
    row = live_registry.row
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        missing = client.post(WINE, json={"rows": [row]})
        assert_rejected(missing, 401, "Authorization", "danlu keys create")
        wrong = client.post(WINE, json={"rows": [row]}, headers={"X-API-Key": "dl_wrong"})
        assert_rejected(wrong, 401, "X-API-Key", "not valid")
        assert_rejected(client.get("/v1/models"), 401, "Authorization")
        for key in (live_registry.predict, live_registry.admin):  # an admin key may predict
            ok = client.post(WINE, json={"rows": [row]}, headers={"X-API-Key": key})
            assert ok.status_code == 200, ok.text
        assert client.get("/healthz").status_code == 200  # public
        assert client.get("/metrics").status_code == 200  # public on loopback
    assert_serving(http, row)


def test_without_keys_loopback_predict_is_open_and_admin_is_closed(
    keyless_server: LiveServer, live_registry: LiveRegistry
) -> None:
    row = live_registry.row
    with httpx.Client(base_url=keyless_server.url, timeout=30) as client:
        response = client.post(WINE, json={"rows": [row]})
        assert response.status_code == 200, response.text
        assert_rejected(client.post("/v1/admin/models/wine/reload"), 401, "Authorization", "admin")
        # a key is checked whenever one is sent, and none is valid here
        sent = client.post(WINE, json={"rows": [row]}, headers={"X-API-Key": live_registry.admin})
        assert_rejected(sent, 401, "X-API-Key", secrets=_secrets(live_registry))
        assert client.post(WINE, json={"rows": [row]}).status_code == 200


def test_without_keys_a_rebound_name_gets_no_predictions(
    keyless_server: LiveServer, live_registry: LiveRegistry
) -> None:
    """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 reaches the
    keyless server, but its requests say Host: evil.example (400); a cross-site post is 403."""
    row = live_registry.row
    with httpx.Client(base_url=keyless_server.url, timeout=30) as client:
        rebound = client.post(WINE, json={"rows": [row]}, headers={"Host": "evil.example:8000"})
        assert_rejected(rebound, 400, "Host", "evil.example")
        assert_rejected(client.get("/v1/models", headers={"Host": "evil.example"}), 400, "Host")
        cross = client.post(WINE, json={"rows": [row]}, headers={"Origin": "http://evil.example"})
        assert_rejected(cross, 403, "Origin")
        assert client.post(WINE, json={"rows": [row]}).status_code == 200


# -- slow clients ----------------------------------------------------------------------------------
def test_a_client_that_stalls_its_body_gets_408(
    keyless_server: LiveServer, live_registry: LiveRegistry
) -> None:
    """Headers, then part of the body, then nothing: 408 once --timeout (1 s) passes (the
    socket's own timeout bounds the wait)."""
    with socket.create_connection(("127.0.0.1", keyless_server.port), timeout=20) as raw:
        raw.sendall(
            b"POST /v1/models/wine/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n"
            b'{"rows": [{"alcohol": 1.0, '
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = raw.recv(4096)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    error = json.loads(body)["error"]
    assert error["status"] == 408 and error["field"] == "body"
    with httpx.Client(base_url=keyless_server.url, timeout=30) as client:
        assert client.post(WINE, json={"rows": [live_registry.row]}).status_code == 200


# -- many at once -----------------------------------------------------------------------------------
def _wine_rows(n: int, seed: int) -> list[dict[str, float]]:
    from danlu.data import load_source

    raw = load_source("builtin:wine")
    frame = raw.frame.drop(columns=[raw.target])
    picked = random.Random(seed).sample(range(len(frame)), n)
    return [{k: float(v) for k, v in frame.iloc[i].items()} for i in picked]


def test_concurrent_good_and_bad_requests_do_not_disturb_each_other(
    live_server: LiveServer, live_registry: LiveRegistry
) -> None:
    """50 good and 50 bad requests in parallel: every good one 200 with the model's own
    predictions, every bad one its 4xx — a malformed request never fails its neighbours."""
    import danlu
    from danlu.store import SqlStore

    rng = random.Random(7)
    pool = _wine_rows(60, seed=7)
    good = [rng.sample(pool, rng.randint(1, 3)) for _ in range(50)]
    bad = [BAD_BODIES[i % len(BAD_BODIES)] for i in range(50)]
    order = [("good", i) for i in range(len(good))] + [("bad", i) for i in range(len(bad))]
    rng.shuffle(order)
    headers = {"Authorization": f"Bearer {live_registry.predict}", **JSON}

    async def one(client: httpx.AsyncClient, kind: str, i: int) -> httpx.Response:
        if kind == "good":
            return await client.post(WINE, content=_body({"rows": good[i]}))
        return await client.post(WINE, content=bad[i][1](live_registry.row))

    async def all_at_once() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(order), max_keepalive_connections=len(order))
        async with httpx.AsyncClient(
            base_url=live_server.url, headers=headers, timeout=30, limits=limits
        ) as client:
            async with asyncio.timeout(60):
                return await asyncio.gather(*(one(client, kind, i) for kind, i in order))

    responses = dict(zip(order, asyncio.run(all_at_once()), strict=True))

    store = SqlStore(home=live_registry.home)
    predictors: dict[str, Any] = {}
    try:
        for i, rows in enumerate(good):
            response = responses[("good", i)]
            assert response.status_code == 200, response.text
            answer = response.json()
            ref = answer["ref"]
            if ref not in predictors:
                predictors[ref] = danlu.load_model(ref, store=store)
            expected = predictors[ref].predict(rows)
            assert answer["predictions"] == np.asarray(expected["prediction"]).tolist()
            np.testing.assert_allclose(
                answer["probabilities"], expected["probabilities"], rtol=0, atol=1e-4
            )
    finally:
        store.close()
    for i, (name, _, status, field, _) in enumerate(bad):
        response = responses[("bad", i)]
        assert response.status_code == status, (name, response.text)
        assert response.json()["error"].get("field") == field, (name, response.text)
    with httpx.Client(base_url=live_server.url, headers=headers, timeout=30) as client:
        assert_serving(client, live_registry.row)


# -- refusing to listen beyond loopback -------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_refuses_a_public_address_without_keys(live_registry: LiveRegistry) -> None:
    port = _free_port()
    command = serve_command("wine@production", "--host", "0.0.0.0", "--port", str(port))
    done = subprocess.run(
        command,
        env=server_env(live_registry.keyless_home),
        capture_output=True,
        timeout=60,
        check=False,
    )
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode != 0, output
    assert "danlu keys create" in output and "0.0.0.0" in output
    assert "Uvicorn running" not in output and "Traceback" not in output
    with pytest.raises(OSError):  # it never listened
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
