"""``danlu serve`` as a real process on 127.0.0.1, as issue 13's attack run found it: what it
serves when a version is broken or two versions share a name, what its default limits let
through, and which Host, Origin and Content-Type it answers.

The registry is a copy of the session's (wine:1 = production, wine:2, digits:1, an admin and a
predict key) with two broken versions added: wine:3, whose weights are not safetensors, and
wine:4, whose model.json names ``builtins:print`` as its architecture.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serve.conftest import (
    _RECIPES,
    LiveRegistry,
    LiveServer,
    assert_no_leak,
    serve_command,
    server_env,
    start_server,
)

DIGITS = [f"pixel_{i}_{j}" for i in range(8) for j in range(8)]
FAILED_TO_LOAD = "failed to load"


@pytest.fixture(scope="module")
def broken_home(live_registry: LiveRegistry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from danlu import pipeline
    from danlu.store import SqlStore

    home = tmp_path_factory.mktemp("serve-broken") / "home"
    shutil.copytree(live_registry.home, home)
    store = SqlStore(home=home)
    try:
        for _ in range(2):  # wine:3 and wine:4
            pipeline.run(_RECIPES["wine"], store=store, home=home)
        store.set_alias("wine", "production", 1)
        store.model_version_path("wine", 3, "model.safetensors").write_bytes(b"not safetensors")
        card_path = store.model_version_path("wine", 4, "model.json")
        card = json.loads(card_path.read_text())
        card["type"] = "builtins:print"
        card_path.write_text(json.dumps(card))
    finally:
        store.close()
    return home


@pytest.fixture(scope="module")
def server(broken_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Four models named on the command line, one of them broken, with the default limits."""
    args = (
        "wine@production",
        "wine-v2=wine:2",
        "broken=wine:3",
        "digits@production",
        "--allowed-hosts",
        "models.example.com",
        "--poll",
        "0",
    )
    with start_server(broken_home, *args, log_dir=tmp_path_factory.mktemp("serve-broken")) as live:
        yield live


@pytest.fixture(scope="module")
def http(server: LiveServer, live_registry: LiveRegistry) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {live_registry.admin}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
        yield client


def _error(response: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["status"] == status and error["message"]
    if field is not None:
        assert error.get("field") == field, error
    assert_no_leak(response.text)
    return error  # type: ignore[no-any-return]


def _run(home: Path, *args: str) -> tuple[int, str]:
    done = subprocess.run(
        serve_command(*args, "--host", "127.0.0.1", "--port", "0", "--poll", "0"),
        env=server_env(home),
        capture_output=True,
        timeout=120,
        check=False,
    )
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


# -- (f) two versions of one model ---------------------------------------------------------------
def test_two_versions_of_one_model_serve_under_two_names(
    http: httpx.Client, live_registry: LiveRegistry
) -> None:
    rows = {"rows": [live_registry.row]}
    first = http.post("/v1/models/wine/predict", json=rows)
    second = http.post("/v1/models/wine-v2/predict", json=rows)
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert first.json()["ref"] == "wine:1" and second.json()["ref"] == "wine:2"
    assert second.json()["model"] == "wine-v2" and second.headers["x-model-version"] == "2"
    served = {m["name"]: m["ref"] for m in http.get("/v1/models").json()["models"]}
    assert served == {"wine": "wine:1", "wine-v2": "wine:2", "digits": "digits:1"}
    metrics = http.get("/metrics").text
    assert 'danlu_requests_total{code="200",model="wine-v2",version="2"}' in metrics


def test_two_versions_under_one_name_are_refused_with_the_way_to_name_them(
    broken_home: Path,
) -> None:
    code, output = _run(broken_home, "wine:1", "wine:2")
    assert code != 0, output
    assert "would both be served as 'wine'" in output and "NAME=MODEL" in output, output
    assert "wine-2=wine:2" in output and "Traceback" not in output


# -- (g) a version that fails to load -------------------------------------------------------------
def test_a_model_that_fails_to_load_is_listed_and_the_others_serve(
    server: LiveServer, http: httpx.Client, live_registry: LiveRegistry
) -> None:
    ready = http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["models"] == ["digits", "wine", "wine-v2"]
    assert ready.json()["failed"] == ["broken"]
    failed = http.get("/v1/models").json()["failed"]
    assert [(f["name"], f["ref"], f["role"]) for f in failed] == [("broken", "wine:3", "model")]
    assert "version 3" in failed[0]["error"] and FAILED_TO_LOAD in failed[0]["error"]
    assert_no_leak(json.dumps(failed))
    error = _error(http.post("/v1/models/broken/predict", json={"rows": [live_registry.row]}), 404)
    assert FAILED_TO_LOAD in error["message"] and "start-up" in error["message"]
    log = server.log()
    assert "Model 'broken': version 3 (from 'wine:3') failed to load" in log
    assert "Traceback" not in log
    assert http.post("/v1/models/wine/predict", json={"rows": [live_registry.row]}).is_success


def test_the_only_model_failing_to_load_stops_the_server_with_a_clear_message(
    broken_home: Path,
) -> None:
    code, output = _run(broken_home, "wine:3")
    assert code != 0, output
    assert "Model 'wine': version 3 (from 'wine:3') failed to load" in output, output
    assert "safetensors" in output
    assert "Traceback" not in output and "Uvicorn running" not in output


# -- (a) a failed load through the admin route -----------------------------------------------------
def test_a_failed_admin_load_is_a_409_saying_why(
    http: httpx.Client, live_registry: LiveRegistry
) -> None:
    for body in ({"ref": "wine:4", "name": "wine-four"}, {"ref": "wine:4"}, {"ref": "wine:3"}):
        error = _error(http.post("/v1/admin/models", json=body), 409)
        assert error["code"] == "load_failed"
        assert "version" in error["message"] and FAILED_TO_LOAD in error["message"], error
    error = _error(http.post("/v1/admin/models", json={"ref": "wine:4", "name": "w4"}), 409)
    assert "builtins:print" in error["message"], error  # the loader's reason, not a 404 or 500
    served = {m["name"]: m["ref"] for m in http.get("/v1/models").json()["models"]}
    assert served["wine"] == "wine:1" and "wine-four" not in served and "w4" not in served
    _error(http.post("/v1/admin/models", json={"ref": "wine:99"}), 404)  # unknown: still 404


# -- (h) the default limits are reachable ------------------------------------------------------------
def test_the_default_limits_let_a_request_reach_max_rows(http: httpx.Client) -> None:
    """Without --max-body the cap is sized for --max-rows (1024) rows of the widest model:
    digits' 64 features, each a float at full precision, fit; one row more is a 413 naming the
    row limit, not the byte cap."""
    rng = random.Random(0)

    def rows(n: int) -> list[dict[str, float]]:
        return [{f: rng.random() * 16 for f in DIGITS} for _ in range(n)]

    body = json.dumps({"rows": rows(1024)}).encode()
    assert len(body) > 1_000_000  # more than the old default cap
    answer = http.post("/v1/models/digits/predict", content=body, headers=_JSON)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["predictions"]) == 1024
    over = http.post("/v1/models/digits/predict", json={"rows": rows(1025)})
    error = _error(over, 413, "rows")
    assert "at most 1024" in error["message"] and "--max-rows" in error["message"]
    spec = http.get("/openapi.json").json()
    assert spec["components"]["schemas"]["digits_RowsRequest"]["properties"]["rows"]["maxItems"] == 1024  # fmt: skip


# -- (b) Host and Origin; (c) Content-Type ---------------------------------------------------------
_JSON = {"Content-Type": "application/json"}


def test_a_host_not_allowed_is_400_even_with_a_valid_key(
    http: httpx.Client, live_registry: LiveRegistry
) -> None:
    rows = {"rows": [live_registry.row]}
    evil = {"Host": "evil.example"}
    error = _error(http.post("/v1/admin/models/wine/reload", headers=evil), 400, "Host")
    assert error["code"] == "bad_host" and "--allowed-hosts evil.example" in error["message"]
    moved = http.put(
        "/v1/admin/models/wine/alias", json={"alias": "production", "version": 1}, headers=evil
    )
    _error(moved, 400, "Host")
    _error(http.post("/v1/models/wine/predict", json=rows, headers=evil), 400, "Host")
    _error(http.get("/v1/models", headers=evil), 400, "Host")
    assert http.get("/healthz", headers=evil).status_code == 200  # probes address servers by IP
    for host in ("localhost:1234", "127.0.0.1", "models.example.com:8443", "MODELS.example.com"):
        answer = http.post("/v1/models/wine/predict", json=rows, headers={"Host": host})
        assert answer.status_code == 200, (host, answer.text)


def test_a_cross_site_origin_is_403_on_what_changes_state(
    server: LiveServer, http: httpx.Client, live_registry: LiveRegistry
) -> None:
    rows = {"rows": [live_registry.row]}
    evil = {"Origin": "http://evil.example"}
    error = _error(http.post("/v1/admin/models/wine/reload", headers=evil), 403, "Origin")
    assert error["code"] == "cross_origin"
    _error(http.post("/v1/admin/models", json={"ref": "wine:1"}, headers=evil), 403, "Origin")
    _error(http.delete("/v1/admin/models/wine-v2", headers=evil), 403, "Origin")
    _error(http.post("/v1/models/wine/predict", json=rows, headers=evil), 403, "Origin")
    _error(http.post("/v1/models/wine/predict", json=rows, headers={"Origin": "null"}), 403)
    assert http.get("/v1/models", headers=evil).status_code == 200  # reading: CORS's business
    for origin in (server.url, "http://localhost:3000", "https://models.example.com"):
        answer = http.post("/v1/models/wine/predict", json=rows, headers={"Origin": origin})
        assert answer.status_code == 200, (origin, answer.text)


def test_a_body_that_is_not_json_is_415(http: httpx.Client, live_registry: LiveRegistry) -> None:
    body = json.dumps({"rows": [live_registry.row]}).encode()  # valid JSON, under another type
    for content_type in (
        "application/python-pickle",
        "application/x-www-form-urlencoded",  # what curl -d sends
        "text/plain",
        "application/json; charset=latin-1",
    ):
        answer = http.post(
            "/v1/models/wine/predict", content=body, headers={"Content-Type": content_type}
        )
        error = _error(answer, 415, "Content-Type")
        assert "application/json" in error["message"] or "UTF-8" in error["message"]
    admin = http.post(
        "/v1/admin/models", content=b'{"ref": "wine:1"}', headers={"Content-Type": "text/plain"}
    )
    _error(admin, 415, "Content-Type")
    for content_type in ("application/json; charset=utf-8", "application/vnd.danlu+json", None):
        headers = {"Content-Type": content_type} if content_type else {}
        answer = http.post("/v1/models/wine/predict", content=body, headers=headers)
        assert answer.status_code == 200, (content_type, answer.text)
