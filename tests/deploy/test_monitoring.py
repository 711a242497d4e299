"""The shipped monitoring files against a real Prometheus (Debian's ``prometheus``/``promtool``).

One Prometheus for the module, on 127.0.0.1 with a config made from the shipped
``prometheus.yml`` (1 s scrapes, the shipped ``alerts.yml`` loaded), scraping:

- a real uvicorn server of danlu's app configured as it runs in a container (``--host 0.0.0.0``:
  ``/metrics`` needs a predict key) but bound to 127.0.0.1 only — once with the bearer token (the
  shipped job) and once without (refused: 401);
- the training endpoint (``train.metrics.port``) of the run that trained the served model, in
  this process (the endpoint outlives the run, with its final values);
- ``danlu agent``'s metrics endpoint (the queue), in this process.

Without the binaries the tests skip, unless ``DANLU_REQUIRE_PROMETHEUS=1`` (CI), where they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from danlu.deploy import monitoring_files
from danlu.serve import ServeSettings
from danlu.serve._server import build_app
from tests.serve.conftest import running_server

STARTUP_S = 60.0  # longest wait for a process to answer
QUERY_S = 30.0  # longest wait for a series to show in Prometheus
SERVE_HOST = "127.0.0.1"


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (Debian: apt-get install prometheus)"
        if os.environ.get("DANLU_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(f"DANLU_REQUIRE_PROMETHEUS=1 but {message}")
        pytest.skip(message)
    return found


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, process: subprocess.Popen[bytes] | None, log: Path | None) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace")[-4000:] if log else ""
            raise AssertionError(f"{url}: the process exited ({process.returncode}):\n{tail}")
        with contextlib.suppress(httpx.TransportError):  # not listening yet
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-4000:] if log else ""
    raise AssertionError(f"{url} did not answer 200 within {STARTUP_S:.0f} s:\n{tail}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_monitoring_files_are_shipped_and_parse():
    files = monitoring_files()
    assert set(files) == {"prometheus.yml", "alerts.yml", "grafana-dashboard.json"}
    config = yaml.safe_load(files["prometheus.yml"])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["danlu-serve"]["authorization"]["type"] == "Bearer"  # keyed servers are scraped
    assert {"danlu-train", "danlu-agent", "pushgateway"} <= set(jobs)
    rules = yaml.safe_load(files["alerts.yml"])
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {
        "DanluServerDown",
        "DanluHighErrorRate",
        "DanluLatencyP99AboveSLO",
        "DanluInputDrift",
        "DanluTrainingStalled",
    } <= names
    dashboard = json.loads(files["grafana-dashboard.json"])
    assert all(t["expr"] for p in _panels(dashboard) for t in p["targets"])
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))  # Grafana keys panels by id
    cells: set[tuple[int, int]] = set()  # no two panels on the same grid cell, none past 24
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    used = set(re.findall(r"\$\{?(\w+)", json.dumps(dashboard["panels"])))
    assert used - {"__rate_interval"} <= variables, used - variables


@pytest.mark.parametrize("kind", ["config", "rules"])
def test_promtool_accepts_the_shipped_files(kind, tmp_path):
    promtool = _binary("promtool")
    for name, data in monitoring_files().items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "danlu-predict-key").write_text("a-predict-key\n")  # the file the config names
    target = "prometheus.yml" if kind == "config" else "alerts.yml"
    done = subprocess.run(
        [promtool, "check", kind, str(tmp_path / target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_promtool_fails_a_broken_rule(tmp_path):
    """The check above can fail: a rule with bad PromQL is refused."""
    promtool = _binary("promtool")
    rules = yaml.safe_load(monitoring_files()["alerts.yml"])
    rules["groups"][0]["rules"][0]["expr"] = "sum by (model (danlu_requests_total)"
    path = tmp_path / "alerts.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, timeout=60)
    assert done.returncode != 0


# -- the live stack ------------------------------------------------------------------------------


@dataclass
class Stack:
    prometheus: str  # its URL
    serve: str
    predict_key: str
    train_port: int
    run_id: str
    features: list[str]  # the served model's input names

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        assert answer.status_code == 200, f"{expr}: {answer.text}"
        body = answer.json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def wait_for(
        self, expr: str, what: str, between: Callable[[], None] | None = None
    ) -> list[dict[str, Any]]:
        """``expr``'s result once it has one (bounded); ``between`` runs between the polls (a
        request, so a counter keeps rising across scrapes while we wait)."""
        deadline = time.monotonic() + QUERY_S
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result:
                return result
            if between is not None:
                between()
            time.sleep(0.5)
        targets = httpx.get(f"{self.prometheus}/api/v1/targets", timeout=10).json()
        health = [
            (t["labels"].get("job"), t["health"], t.get("lastError"))
            for t in targets["data"]["activeTargets"]
        ]
        raise AssertionError(f"{what}: {expr!r} returned nothing in {QUERY_S:.0f} s; {health}")


def _trained_home(home: Path, train_port: int) -> str:
    """Train and register wine with train.metrics on; returns the run id."""
    from danlu import pipeline
    from danlu.store import SqlStore

    recipe = {
        "name": "wine-mon",
        "data": {"source": "builtin:wine"},
        "task": "classification",
        "model": {"type": "mlp", "hidden": [8]},
        "train": {"epochs": 3, "checkpoint": {"every": 0}, "metrics": {"port": train_port}},
        "register": {"name": "wine", "alias": "production"},
    }
    store = SqlStore(home=home)
    try:
        result = pipeline.run(recipe, store=store, home=home)
    finally:
        store.close()
    return result.run_id


def _prometheus_config(folder: Path, serve: str, train: str, agent: str, key: Path) -> Path:
    """The shipped prometheus.yml with this test's targets and key, scraping every second."""
    files = monitoring_files()
    (folder / "alerts.yml").write_bytes(files["alerts.yml"])
    config = yaml.safe_load(files["prometheus.yml"])
    config["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s"})
    targets = {"danlu-serve": serve, "danlu-train": train, "danlu-agent": agent}
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] not in targets:
            continue  # no Pushgateway here
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(key)
            jobs.append({"job_name": "danlu-serve-nokey", "static_configs": job["static_configs"]})
        jobs.append(job)
    config["scrape_configs"] = jobs
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus = _binary("prometheus")
    from danlu.jobs import JobQueue
    from danlu.jobs._metrics import serve_agent_metrics
    from danlu.store import SqlStore

    root = tmp_path_factory.mktemp("monitoring")
    home = root / "home"
    train_port = _free_port()
    run_id = _trained_home(home, train_port)
    store = SqlStore(home=home)
    predict_key = store.create_api_key("predict", name="prometheus")[1]
    features = [f["name"] for f in store.get_model_version("wine", 1).signature["inputs"]]
    agent_port = serve_agent_metrics(JobQueue(store), lambda: "", 0)
    key_file = root / "danlu-predict-key"
    key_file.write_text(predict_key + "\n")

    # the server as it runs off loopback (in a container, on 0.0.0.0): keys required, /metrics
    # included; yet it binds 127.0.0.1 only (the host handed to uvicorn, not the settings')
    settings = ServeSettings(models=("wine@production",), host="0.0.0.0", poll_seconds=0)
    app = build_app(settings, lambda: SqlStore(home=home))
    serving = contextlib.ExitStack()
    _, serve_url = serving.enter_context(running_server(app, settings, host=SERVE_HOST))
    serve_port = int(serve_url.rsplit(":", 1)[1])
    prom_port = _free_port()
    prom_log = root / "prometheus.log"
    config = _prometheus_config(
        root,
        f"{SERVE_HOST}:{serve_port}",
        f"127.0.0.1:{train_port}",
        f"127.0.0.1:{agent_port}",
        key_file,
    )
    with prom_log.open("wb") as log:
        prom = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_http(f"{serve_url}/readyz", None, None)
        prom_url = f"http://127.0.0.1:{prom_port}"
        _wait_http(f"{prom_url}/-/ready", prom, prom_log)
        yield Stack(prom_url, serve_url, predict_key, train_port, run_id, features)
    finally:
        _stop(prom)
        serving.close()  # stops the server as SIGTERM does
        store.close()


def _predict(stack: Stack) -> None:
    """One predict request of one row."""
    row = {n: 1.0 for n in stack.features}
    answer = httpx.post(
        f"{stack.serve}/v1/models/wine/predict",
        json={"rows": [row]},
        headers={"Authorization": f"Bearer {stack.predict_key}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text


def _traffic(stack: Stack, seconds: float) -> None:
    """Predict requests of 64 rows for ``seconds`` (a bounded loop), and one bad request."""
    headers = {"Authorization": f"Bearer {stack.predict_key}"}
    rows = [{n: float(i % 7) for n in stack.features} for i in range(64)]
    url = f"{stack.serve}/v1/models/wine/predict"
    bad = httpx.post(url, content=b"{not json", headers=headers, timeout=10)
    assert bad.status_code == 400, bad.text
    # the series exists before the loop: two scrapes (1 s apart) see it rise
    first = httpx.post(url, json={"rows": rows}, headers=headers, timeout=10)
    assert first.status_code == 200, first.text
    time.sleep(2.5)
    deadline = time.monotonic() + seconds
    for _ in range(1000):
        answer = httpx.post(url, json={"rows": rows}, headers=headers, timeout=10)
        assert answer.status_code == 200, answer.text
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p.get("type") != "row"]


def _substitute(expr: str) -> str:
    """The dashboard variables as Grafana fills them with 'All' selected."""
    expr = expr.replace("$__rate_interval", "1m")
    return re.sub(r"\$\{?(model|run_id)\}?", ".*", expr)


def test_prometheus_scrapes_serving_training_and_the_agent(stack):
    _traffic(stack, seconds=3.0)
    rate = stack.wait_for(
        "rate(danlu_requests_total[1m]) > 0", "serving traffic", between=lambda: _predict(stack)
    )
    assert {r["metric"]["model"] for r in rate} == {"wine"}
    loss = stack.wait_for(f'danlu_train_loss{{run_id="{stack.run_id}"}}', "the training loss")
    assert {r["metric"]["split"] for r in loss} == {"train", "val"}
    assert all(float(r["value"][1]) > 0 for r in loss)
    epoch = stack.query(f'danlu_train_epoch{{run_id="{stack.run_id}"}}')
    assert [float(r["value"][1]) for r in epoch] == [3.0]  # the run's three epochs
    done = stack.query(f'danlu_train_running{{run_id="{stack.run_id}"}}')
    assert [float(r["value"][1]) for r in done] == [0.0]  # it ended: no stall alert for it
    stack.wait_for('danlu_jobs{state="queued"}', "the agent's queue")


def test_a_keyed_server_refuses_a_scrape_without_the_token(stack):
    ok = httpx.get(
        f"{stack.serve}/metrics", headers={"Authorization": f"Bearer {stack.predict_key}"}
    )
    assert ok.status_code == 200 and b"danlu_requests_total" in ok.content
    assert httpx.get(f"{stack.serve}/metrics").status_code == 401
    stack.wait_for('up{job="danlu-serve"} == 1', "the scrape with the bearer token")
    stack.wait_for('up{job="danlu-serve-nokey"} == 0', "the scrape without a token failing")
    targets = httpx.get(f"{stack.prometheus}/api/v1/targets", timeout=10).json()
    errors = {
        t["labels"]["job"]: t["lastError"]
        for t in targets["data"]["activeTargets"]
        if t["labels"]["job"].startswith("danlu-serve")
    }
    assert "401" in errors["danlu-serve-nokey"], errors
    assert errors["danlu-serve"] == "", errors


def test_every_dashboard_panel_returns_data(stack):
    _traffic(stack, seconds=2.0)  # at least 100 rows in the drift window, within the last minute
    stack.wait_for("danlu_drift_psi", "drift PSI")
    dashboard = json.loads(monitoring_files()["grafana-dashboard.json"])
    empty = []
    for panel in _panels(dashboard):
        for target in panel["targets"]:
            expr = _substitute(target["expr"])
            if not stack.query(expr):
                empty.append(f"{panel['title']}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_the_shipped_rules_load_and_evaluate(stack):
    deadline = time.monotonic() + QUERY_S
    while True:
        body = httpx.get(f"{stack.prometheus}/api/v1/rules", timeout=10).json()
        rules = [r for g in body["data"]["groups"] for r in g["rules"]]
        if rules and all(r.get("lastEvaluation", "").startswith("2") for r in rules):
            break
        assert time.monotonic() < deadline, f"rules not evaluated in {QUERY_S:.0f} s: {rules}"
        time.sleep(0.5)
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    names = {r["name"] for r in rules}
    assert "DanluTrainingStalled" in names and "DanluInputDrift" in names
    # the run ended (running 0): the stall alert is not pending for it
    stalled = next(r for r in rules if r["name"] == "DanluTrainingStalled")
    assert stalled["state"] == "inactive"


def _rules_test(promtool: str, folder: Path, tests: list[dict[str, Any]]) -> str:
    """``promtool test rules`` on the shipped alerts (annotations left out: their templates are
    checked by ``promtool check rules``; here the expressions and durations are)."""
    rules = yaml.safe_load(monitoring_files()["alerts.yml"])
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (folder / "alerts.yml").write_text(yaml.safe_dump(rules))
    spec = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": tests}
    (folder / "alerts_test.yml").write_text(yaml.safe_dump(spec))
    done = subprocess.run(
        [promtool, "test", "rules", str(folder / "alerts_test.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout + done.stderr if done.returncode else ""


def _alert(name: str, at: str, *expected: dict[str, str]) -> dict[str, Any]:
    return {
        "eval_time": at,
        "alertname": name,
        "exp_alerts": [{"exp_labels": labels} for labels in expected],
    }


def test_each_alert_fires_when_it_should_and_not_otherwise(tmp_path):
    """Synthetic series through the shipped rules: each alert fires for the bad case only, and
    only once its ``for`` has passed."""
    promtool = _binary("promtool")
    train = {"job": "danlu-train", "instance": "a"}
    stuck, moving = {**train, "run_id": "stuck"}, {**train, "run_id": "moving"}
    ended = {**train, "run_id": "ended"}

    def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
        inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
        return {"series": f"{name}{{{inner}}}", "values": values}

    def hist(model: str, version: str, fast: str, slow: str) -> list[dict[str, str]]:
        labels = {"model": model, "version": version}
        return [
            series("danlu_request_seconds_bucket", {**labels, "le": "0.1"}, fast),
            series("danlu_request_seconds_bucket", {**labels, "le": "1"}, slow),
            series("danlu_request_seconds_bucket", {**labels, "le": "+Inf"}, slow),
        ]

    inputs = [
        # a run whose progress stopped at t=0, one that progresses every minute, one that ended
        series("danlu_train_running", stuck, "1x40"),
        series("danlu_train_last_progress_timestamp_seconds", stuck, "0x40"),
        series("danlu_train_running", moving, "1x40"),
        series("danlu_train_last_progress_timestamp_seconds", moving, "0+60x40"),
        series("danlu_train_running", ended, "0x40"),
        series("danlu_train_last_progress_timestamp_seconds", ended, "0x40"),
        # a server down from minute 3; another up
        series("up", {"job": "danlu-serve", "instance": "down:8000"}, "1 1 1 0x20"),
        series("up", {"job": "danlu-serve", "instance": "up:8000"}, "1x20"),
        # wine: 10 of 110 requests a minute fail with 503 (9%); digits: 1 of 101 (1%)
        series("danlu_requests_total", {"model": "wine", "code": "200"}, "0+100x40"),
        series("danlu_requests_total", {"model": "wine", "code": "503"}, "0+10x40"),
        series("danlu_requests_total", {"model": "digits", "code": "200"}, "0+100x40"),
        series("danlu_requests_total", {"model": "digits", "code": "503"}, "0+1x40"),
        # wine v2: every request between 0.1 and 1 s (p99 ~ 1 s); v1: all under 0.1 s
        *hist("wine", "2", "0x40", "0+100x40"),
        *hist("wine", "1", "0+100x40", "0+100x40"),
        # feature a drifted (PSI 0.3), feature b did not (0.05)
        series("danlu_drift_psi", {"model": "wine", "version": "2", "feature": "a"}, "0.3x60"),
        series("danlu_drift_psi", {"model": "wine", "version": "2", "feature": "b"}, "0.05x60"),
    ]
    warning, critical = {"severity": "warning"}, {"severity": "critical"}
    checks = [
        _alert("DanluTrainingStalled", "15m"),  # no progress for 15 min: not yet for 5 min
        _alert("DanluTrainingStalled", "25m", {**stuck, **warning}),
        _alert("DanluServerDown", "3m"),
        _alert(
            "DanluServerDown", "6m", {"job": "danlu-serve", "instance": "down:8000", **critical}
        ),
        _alert("DanluHighErrorRate", "4m"),  # over 5% from minute 1: pending for 5 min
        _alert("DanluHighErrorRate", "15m", {"model": "wine", **warning}),
        _alert("DanluLatencyP99AboveSLO", "9m"),  # over the SLO from minute 1: for 10 min
        _alert("DanluLatencyP99AboveSLO", "20m", {"model": "wine", "version": "2", **warning}),
        _alert("DanluInputDrift", "20m"),
        _alert(
            "DanluInputDrift",
            "40m",
            {"model": "wine", "version": "2", "feature": "a", **warning},
        ),
    ]
    failed = _rules_test(
        promtool, tmp_path, [{"interval": "1m", "input_series": inputs, "alert_rule_test": checks}]
    )
    assert not failed, failed
    # and the test can fail: the stuck run alerting at 15 min is refused
    early = [_alert("DanluTrainingStalled", "15m", {**stuck, **warning})]
    assert _rules_test(
        promtool, tmp_path, [{"interval": "1m", "input_series": inputs, "alert_rule_test": early}]
    )
