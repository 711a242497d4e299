"""The deployments page: a real ``danlu serve`` process on 127.0.0.1 registers itself in the
store, the dashboard lists it with its model and reads its ``/metrics`` (a request count after
a few requests), and shows it stopped once it has shut down. Also: the Prometheus parsing and
the figures worked out from it, and a failing store never stops a server's beacon."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ui.conftest import screenshot, serve

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from danlu.ui._deployments import Scrape, parse_prometheus, quantile, summarise  # noqa: E402

WINE = {
    "name": "wine-deploy",
    "data": {"source": "builtin:wine"},
    "task": "classification",
    "model": {"type": "mlp", "hidden": [8]},
    "train": {"epochs": 1, "checkpoint": {"every": 0}},
    "register": {"name": "wine"},
}


# -- reading /metrics ---------------------------------------------------------------------------
METRICS = """# HELP danlu_requests_total Predict requests answered.
# TYPE danlu_requests_total counter
danlu_requests_total{model="wine",version="1",code="200"} 90.0
danlu_requests_total{model="wine",version="1",code="422"} 10.0
danlu_requests_total{model="a\\"b",version="2",code="200"} 5.0
danlu_request_seconds_bucket{le="0.001",model="wine",version="1"} 50.0
danlu_request_seconds_bucket{le="0.01",model="wine",version="1"} 90.0
danlu_request_seconds_bucket{le="0.1",model="wine",version="1"} 100.0
danlu_request_seconds_bucket{le="+Inf",model="wine",version="1"} 100.0
danlu_queue_depth{model="wine"} 2.0
danlu_drift_psi{model="wine",version="1",feature="alcohol"} 0.31
danlu_drift_psi{model="wine",version="1",feature="ash"} 0.02
garbage line that is not a sample
"""


def test_parse_prometheus() -> None:
    samples = parse_prometheus(METRICS)
    assert ("danlu_requests_total", {"model": 'a"b', "version": "2", "code": "200"}, 5.0) in samples
    assert (
        "danlu_request_seconds_bucket",
        {"le": "+Inf", "model": "wine", "version": "1"},
        100.0,
    ) in samples
    assert all(name.startswith("danlu_") for name, _, _ in samples)  # the garbage is skipped


def test_quantile_interpolates_like_prometheus() -> None:
    buckets = {0.001: 50.0, 0.01: 90.0, 0.1: 100.0, math.inf: 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.001)
    assert quantile(0.7, buckets) == pytest.approx(0.001 + 0.009 * 0.5)
    assert quantile(0.95, buckets) == pytest.approx(0.01 + 0.09 * 0.5)
    assert quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None
    assert quantile(0.99, {0.1: 1.0, math.inf: 10.0}) == 0.1  # beyond the last finite bound


def test_summary_since_start_then_over_the_interval() -> None:
    first = Scrape.of(parse_prometheus(METRICS), at=1000.0)
    life = summarise(first, None, started_at=900.0)
    assert life["since_start"] and life["requests"] == 105
    assert life["rps"] == pytest.approx(105 / 100.0)
    wine = life["models"]["wine"]
    assert wine["error_rate"] == pytest.approx(0.1)  # the 422s
    assert wine["latency_ms"]["p50"] == pytest.approx(1.0)
    assert wine["queue"] == 2.0
    assert wine["drift"] == {"psi": 0.31, "feature": "alcohol", "status": "shifted"}

    later = METRICS.replace("} 90.0\n", "} 110.0\n", 1)  # 20 more 200s in 10 s
    second = Scrape.of(parse_prometheus(later), at=1010.0)
    window = summarise(second, first, started_at=900.0)
    assert not window["since_start"] and window["window_s"] == pytest.approx(10.0)
    assert window["rps"] == pytest.approx(2.0)
    assert window["error_rate"] == 0.0  # no new 422 in the interval
    quiet = summarise(Scrape.of(parse_prometheus(later), at=1020.0), second, started_at=900.0)
    assert quiet["rps"] == 0.0  # no request in the last 10 s ...
    assert quiet["models"]["wine"]["latency_ms"]["p50"] is not None  # ... latency over its life
    restarted = summarise(first, second, started_at=900.0)  # counters went back: a restart
    assert restarted["since_start"]


# -- the beacon never fails the server ----------------------------------------------------------
@dataclass
class _Model:
    name: str
    version: int
    ref: str


class _Pool:
    def names(self) -> list[str]:
        return ["wine"]

    def primary(self, name: str) -> _Model:
        return _Model(name, 3, "wine:3")

    def canary(self, name: str) -> _Model | None:
        return None


def test_beacon_registers_heartbeats_and_stops(tmp_path: Path) -> None:
    from danlu.serve._beacon import DeploymentBeacon
    from danlu.serve._types import ServeSettings
    from danlu.store import SqlStore

    def opener() -> SqlStore:
        return SqlStore(home=tmp_path)

    settings = ServeSettings(models=("wine",), host="127.0.0.1", port=0)

    async def life() -> str:
        beacon = DeploymentBeacon(_Pool(), settings, opener, lambda: 8123, every_s=0.05)
        beacon.start()
        for _ in range(200):  # until it has registered and beaten once (bounded: 10 s)
            await asyncio.sleep(0.05)
            if beacon.id is not None and not beacon._failing:
                await asyncio.sleep(0.2)
                break
        await beacon.stop()
        assert beacon.id is not None
        return beacon.id

    deployment_id = _run_alone(life)
    store = opener()
    try:
        [d] = store.list_deployments()
    finally:
        store.close()
    assert d.id == deployment_id and d.url == "http://127.0.0.1:8123" and d.port == 8123
    assert [m.ref for m in d.models] == ["wine:3"]
    assert d.heartbeat_at > d.started_at  # it beat after registering
    assert d.status() == "stopped"


def _run_alone(make: Any) -> Any:
    """``asyncio.run(make())`` in a thread of its own: the browser fixtures' Playwright keeps
    an event loop running in the main thread, where asyncio.run refuses to start."""
    import threading

    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = asyncio.run(make())
        except BaseException as exc:  # re-raised in the test's thread
            out["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=60)
    if "error" in out:
        raise out["error"]
    return out.get("value")


def test_beacon_survives_a_failing_store(caplog: pytest.LogCaptureFixture) -> None:
    from danlu.errors import StoreError
    from danlu.serve._beacon import DeploymentBeacon
    from danlu.serve._types import ServeSettings

    calls = []

    def broken() -> Any:
        calls.append(1)
        raise StoreError("Database write failed: disk I/O error")

    settings = ServeSettings(models=("wine",), host="127.0.0.1", port=8124)

    async def life() -> None:
        beacon = DeploymentBeacon(_Pool(), settings, broken, lambda: None, every_s=0.02)
        beacon.start()
        await asyncio.sleep(0.3)
        await beacon.stop()  # nothing to mark stopped; no exception either

    with caplog.at_level(logging.WARNING, logger="danlu.serve._beacon"):
        _run_alone(life)
    assert len(calls) > 3  # it kept trying
    warnings = [r for r in caplog.records if "deployments table" in r.getMessage()]
    assert len(warnings) == 1, "one warning per failure streak, not one per heartbeat"
    assert "serving goes on" in warnings[0].getMessage()


# -- a real server ------------------------------------------------------------------------------
class Deployed:
    """A ``danlu serve wine`` process and a dashboard over the same store."""

    def __init__(self, home: Path, log_dir: Path) -> None:
        from danlu.store import SqlStore
        from tests.serve.conftest import start_server

        self.store = SqlStore(home=home)
        self._server_cm = start_server(home, "wine", "--poll", "0", log_dir=log_dir)
        self.server = self._server_cm.__enter__()
        self._ui_cm = serve(self.store)
        self.ui = self._ui_cm.__enter__()
        self.stopped = False

    def stop_server(self) -> None:
        if not self.stopped:
            self.stopped = True
            self._server_cm.__exit__(None, None, None)  # SIGTERM; exits 0 (asserted there)

    def close(self) -> None:
        try:
            self.stop_server()
        finally:
            self._ui_cm.__exit__(None, None, None)
            self.store.close()

    def listed(self) -> list[dict[str, Any]]:
        response = httpx.get(self.ui + "/api/deployments", timeout=10)
        assert response.status_code == 200
        return [d for d in response.json()["deployments"] if d["port"] == self.server.port]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    import danlu
    from danlu.store import SqlStore

    home = tmp_path_factory.mktemp("deploy-home")
    store = SqlStore(home=home)
    try:
        danlu.run(WINE, store=store)
    finally:
        store.close()
    live = Deployed(home, tmp_path_factory.mktemp("deploy-server"))
    try:
        yield live
    finally:
        live.close()


def _wait_for(check: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.1)


def test_a_live_server_is_listed_with_its_model_and_requests(deployed: Deployed) -> None:
    [d] = _wait_for(deployed.listed, "the server registered itself")
    assert d["status"] == "live" and d["url"] == deployed.server.url
    assert [m["ref"] for m in d["models"]] == ["wine:1"]
    assert d["stats"] is not None and "error" not in d["stats"], d["stats"]

    row = {f["name"]: 1.0 for f in deployed.store.get_model_version("wine", 1).signature["inputs"]}
    with httpx.Client(base_url=deployed.server.url, timeout=10) as client:
        for _ in range(5):
            answer = client.post("/v1/models/wine/predict", json={"rows": [row]})
            assert answer.status_code == 200, answer.text
        assert client.post("/v1/models/wine/predict", json={"rows": [{}]}).status_code == 422

    [d] = deployed.listed()
    stats = d["stats"]
    assert stats["requests"] >= 6 and stats["rps"] > 0
    assert 0 < stats["error_rate"] < 1  # the 422 among the 200s
    assert stats["latency_ms"]["p50"] > 0
    assert stats["models"]["wine"]["requests"] >= 6

    page = httpx.get(deployed.ui + "/deployments", timeout=10)
    assert page.status_code == 200
    assert "wine:1" in page.text and deployed.server.url in page.text
    assert 'class="num requests">6<' in page.text or 'class="num requests">7<' in page.text


def test_the_page_in_a_browser(deployed: Deployed, page: Any, tmp_path: Path) -> None:
    page.goto(deployed.ui + "/deployments")
    row = page.locator(f"tr.deployment:has-text('{deployed.server.url}')")
    assert "wine:1" in row.locator("td.models").inner_text()
    assert row.locator(".pill").inner_text() == "live"
    assert int(row.locator("td.requests").inner_text()) > 0
    # the page refreshes itself from /api/deployments every 5 s
    refreshed = page.locator("#deployments[data-refreshed]")
    refreshed.wait_for(state="attached", timeout=12_000)
    assert int(row.locator("td.requests").inner_text()) > 0
    screenshot(page, tmp_path, "deployments.png")


def test_a_stopped_server_shows_as_stopped(deployed: Deployed) -> None:
    deployed.stop_server()
    [d] = deployed.listed()
    assert d["status"] == "stopped" and d["stopped_at"] is not None
    assert d["stats"] is None  # a stopped server is not scraped
    page = httpx.get(deployed.ui + "/deployments", timeout=10).text
    assert "status-stopped" in page


def test_workers_of_one_server_are_one_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`danlu serve --workers 3` registers three processes at one URL: the page lists one server
    with its three pids; another server and a stopped one keep their own rows."""
    from danlu.store import SqlStore

    monkeypatch.setenv("DANLU_UI_SCRAPE", "0")
    store = SqlStore(home=tmp_path)
    try:
        url = "http://127.0.0.1:8123"
        for pid in (301, 302, 303):
            store.register_deployment(url=url, host="h", port=8123, pid=pid, models=[])
        store.register_deployment(
            url="http://127.0.0.1:8124", host="h", port=8124, pid=400, models=[]
        )
        gone = store.register_deployment(url=url, host="h", port=8123, pid=200, models=[])
        store.stop_deployment(gone.id)
        with serve(store) as ui:
            listed = httpx.get(ui + "/api/deployments", timeout=10).json()["deployments"]
            page = httpx.get(ui + "/deployments", timeout=10).text
    finally:
        store.close()
    live = {d["url"]: d for d in listed if d["status"] == "live"}
    assert len(live) == 2
    assert live[url]["workers"] == 3 and live[url]["pids"] == [301, 302, 303]
    assert live["http://127.0.0.1:8124"]["workers"] == 1
    assert [d["pid"] for d in listed if d["status"] == "stopped"] == [200]
    assert "3 workers" in page and "301, 302, 303" in page
