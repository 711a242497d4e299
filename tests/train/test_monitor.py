"""``train.metrics``: a run's progress for Prometheus while it trains (danlu/train/_monitor.py)."""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import httpx
import pytest

from danlu.config import load_recipe, recipe_to_dict
from danlu.errors import ConfigError
from danlu.train import Callback
from tests.cli._runner import danlu

RECIPE = """\
name: wine-mon
data:
  source: builtin:wine
task: classification
model: {type: mlp, hidden: [8]}
train:
  epochs: 3
  batch_size: 16
  checkpoint: {every: 0}
"""


def _recipe(**metrics: Any) -> dict[str, Any]:
    return {
        "name": "wine-mon",
        "data": {"source": "builtin:wine"},
        "task": "classification",
        "model": {"type": "mlp", "hidden": [8]},
        "train": {"epochs": 3, "batch_size": 16, "checkpoint": {"every": 0}, "metrics": metrics},
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _parse(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` of a Prometheus text exposition (comments left out)."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def _one(samples: dict[str, float], name: str) -> float:
    found = [v for k, v in samples.items() if k.split("{")[0] == name]
    assert len(found) == 1, f"{name}: {found} in {sorted(samples)}"
    return found[0]


class _Scrape(Callback):
    """Scrapes the endpoint in the middle of the second epoch and at its end."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.mid: dict[str, float] = {}
        self.after_epoch_1: dict[str, float] = {}

    def on_batch_end(self, trainer: Any, batch: int, loss: Any) -> None:
        if trainer.epoch == 1 and batch == 3 and not self.mid:
            time.sleep(1.05)  # past the 1 s between two reads of the batch loss
            self.mid = _parse(httpx.get(self.url, timeout=5).text)

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        if epoch == 2:
            self.after_epoch_1 = _parse(httpx.get(self.url, timeout=5).text)


def test_the_series_while_the_run_trains_and_after(tmp_path):
    from danlu import pipeline

    port = _free_port()
    scrape = _Scrape(port)
    result = pipeline.run(_recipe(port=port), home=tmp_path, callbacks=[scrape])
    after = scrape.after_epoch_1
    assert _one(after, "danlu_train_running") == 1.0
    assert _one(after, "danlu_train_epoch") == 1.0
    assert _one(after, "danlu_train_epochs_total") == 3.0
    history = result.history[0]
    assert after[f'danlu_train_loss{{run_id="{result.run_id}",split="train"}}'] == pytest.approx(
        history["train_loss"]
    )
    assert after[f'danlu_train_loss{{run_id="{result.run_id}",split="val"}}'] == pytest.approx(
        history["val_loss"]
    )
    headline = f'danlu_train_headline{{metric="accuracy",run_id="{result.run_id}"}}'
    assert after[headline] == pytest.approx(history["val_accuracy"])
    assert _one(after, "danlu_train_samples_per_second") > 0
    assert _one(after, "danlu_train_energy_joules") > 0
    mid = scrape.mid  # 4 of the epoch's batches done, in the second epoch
    ratio = _one(mid, "danlu_train_progress_ratio")
    assert 1 / 3 < ratio < 2 / 3
    assert _one(mid, "danlu_train_eta_seconds") > 0
    assert _one(mid, "danlu_train_batch_loss") > 0
    assert time.time() - _one(mid, "danlu_train_last_progress_timestamp_seconds") < 1.5
    info = [k for k in mid if k.startswith("danlu_train_info")]
    assert info == [
        f'danlu_train_info{{headline="accuracy",model="mlp",recipe="wine-mon",'
        f'run_id="{result.run_id}",stage="train",task="classification"}}'
    ]
    final = _parse(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
    assert _one(final, "danlu_train_running") == 0.0  # ended: the stall alert stays quiet
    assert _one(final, "danlu_train_epoch") == 3.0
    assert _one(final, "danlu_train_eta_seconds") == 0.0
    from danlu.store import SqlStore

    store = SqlStore(home=tmp_path)
    try:  # the endpoint's final energy is the one the run records
        recorded = store.get_run(result.run_id).metrics["energy_joules"]
    finally:
        store.close()
    assert _one(final, "danlu_train_energy_joules") == pytest.approx(recorded)


def test_a_taken_port_is_refused_before_the_run_exists(tmp_path):
    from danlu import pipeline
    from danlu.store import SqlStore

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port} on 127.0.0.1 is already in use"):
            pipeline.run(_recipe(port=port), home=tmp_path)
    store = SqlStore(home=tmp_path)
    try:
        assert store.search_runs() == []  # refused in the prepare stage: no run left behind
    finally:
        store.close()


def test_danlu_run_metrics_port_on_a_taken_port_says_so(tmp_path, monkeypatch):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    monkeypatch.setenv("DANLU_HOME", str(tmp_path / "home"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        got = danlu("run", str(recipe), "--metrics-port", str(port), "--quiet")
    assert got.code != 0
    assert f"port {port} on 127.0.0.1 is already in use" in got.stderr
    assert "Traceback" not in got.stderr + got.stdout


def test_recipe_errors_name_the_line_and_the_fix(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE + "  metrics: {prot: 9101}\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert f"{path}:10: train.metrics.prot: unknown key. Did you mean 'port'?" in str(info.value)
    path.write_text(RECIPE + "  metrics: {host: 127.0.0.1}\n")
    with pytest.raises(ConfigError, match="say where the progress goes: port"):
        load_recipe(path)
    path.write_text(RECIPE + "  metrics: {port: 70000}\n")
    with pytest.raises(ConfigError, match="train.metrics.port"):
        load_recipe(path)


def test_where_progress_is_shown_never_blocks_a_resume():
    from danlu.train._runner import _diff, _recipe_hash

    plain = recipe_to_dict(load_recipe(_recipe(port=9101)))
    other = {**plain, "train": {**plain["train"], "metrics": None}}
    assert _recipe_hash(plain) == _recipe_hash(other)
    assert _diff(plain, other) == []
    more = {**plain, "train": {**plain["train"], "batch_size": 8}}
    assert _diff(plain, more) == ["train.batch_size"]  # the check still sees the rest


def test_missing_prometheus_client_names_the_extra(tmp_path, monkeypatch):
    from danlu import pipeline

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'danlu\[serve\]'"):
        pipeline.run(_recipe(port=_free_port()), home=tmp_path)


class _Gateway(BaseHTTPRequestHandler):
    """A Pushgateway stand-in: records each push's method, path and body."""

    pushes: list[tuple[str, str, str]] = []

    def _record(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        type(self).pushes.append((self.command, self.path, body))
        self.send_response(200)
        self.end_headers()

    do_PUT = do_POST = _record  # noqa: N815 - http.server's names

    def log_message(self, *args: Any) -> None:
        """Quiet: the test reads the pushes, not a request log."""


def test_push_to_a_gateway_every_epoch_and_at_the_end(tmp_path):
    from danlu import pipeline

    _Gateway.pushes = []
    gateway = HTTPServer(("127.0.0.1", 0), _Gateway)
    thread = threading.Thread(target=gateway.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{gateway.server_port}"
        result = pipeline.run(_recipe(push=url, push_every_s=60), home=tmp_path)
    finally:
        gateway.shutdown()
        gateway.server_close()
    pushes = _Gateway.pushes
    assert len(pushes) >= 2  # the start and the end at least (fast epochs' pushes coalesce)
    assert {path for _, path, _ in pushes} == {f"/metrics/job/danlu_train/run_id/{result.run_id}"}
    last = _parse(pushes[-1][2])
    assert _one(last, "danlu_train_running") == 0.0
    assert _one(last, "danlu_train_epoch") == 3.0
    assert any(k.startswith("danlu_train_loss") for k in last)


def test_an_unreachable_gateway_never_stops_training(tmp_path, caplog):
    from danlu import pipeline

    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens
    with caplog.at_level(logging.WARNING, logger="danlu.train._monitor"):
        result = pipeline.run(_recipe(push=url), home=tmp_path)
    assert len(result.history) == 3
    assert any("could not push training metrics" in r.getMessage() for r in caplog.records)


def test_parallel_tuning_workers_cannot_share_one_port(tmp_path):
    from danlu.tune import tune

    recipe = {
        **_recipe(port=_free_port()),
        "tune": {
            "metric": "val_accuracy",
            "trials": 2,
            "space": {"train.optimizer.lr": {"loguniform": [1e-4, 1e-2]}},
        },
    }
    with pytest.raises(ConfigError, match=r"with --jobs 2: each worker process"):
        tune(recipe, jobs=2, home=tmp_path)
