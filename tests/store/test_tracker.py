from __future__ import annotations

import json
import os
import time

import pytest

from danlu.errors import StoreError
from danlu.store import SqlStore, StoreTracker, atomic_write_bytes, flatten_params


@pytest.fixture
def store(tmp_path):
    return SqlStore(home=tmp_path)


def test_metrics_are_buffered_until_flush(store):
    tracker = StoreTracker(store, store.create_run(experiment="t", name="t").id)
    tracker.log_metrics({"loss": 1.0, "epoch": 1}, step=1, epoch=1)
    assert store.metric_history(tracker.run_id) == []
    tracker.flush()
    tracker.log_metrics({"loss": 0.5}, step=2, epoch=2)
    tracker.set_status("finished")  # flushes, stops the heartbeat
    history = store.metric_history(tracker.run_id)
    assert [(p.key, p.value, p.step, p.epoch) for p in history] == [
        ("loss", 1.0, 1, 1),
        ("loss", 0.5, 2, 2),
    ]
    assert store.get_run(tracker.run_id).status == "finished"
    assert not tracker._thread.is_alive()


def test_buffered_metrics_are_written_once_the_flush_interval_passed(store, monkeypatch):
    """Readers of a run without checkpoints (danlu agent --metrics-port) see its epochs."""
    from danlu.store import _tracker

    tracker = StoreTracker(store, store.create_run(experiment="t", name="t").id)
    tracker.log_metrics({"loss": 1.0}, step=1, epoch=1)
    assert store.metric_history(tracker.run_id) == []  # within the interval: buffered
    monkeypatch.setattr(_tracker, "FLUSH_EVERY_S", 0.0)
    tracker.log_metrics({"loss": 0.5}, step=2, epoch=2)
    assert [p.value for p in store.metric_history(tracker.run_id)] == [1.0, 0.5]
    tracker.close()


def test_heartbeat_thread_keeps_the_run_alive(tmp_path):
    store = SqlStore(home=tmp_path, heartbeat_timeout=0.6)
    alive = StoreTracker(
        store, store.create_run(experiment="t", name="alive").id, heartbeat_interval=0.1
    )
    silent = StoreTracker(
        store, store.create_run(experiment="t", name="silent").id, heartbeat_interval=60
    )
    time.sleep(1.0)
    assert store.get_run(alive.run_id).status == "running"
    assert store.get_run(silent.run_id).status == "interrupted"
    alive.close()
    silent.close()


def test_params_are_flattened_and_artifacts_recorded(store):
    tracker = StoreTracker(store, store.create_run(experiment="t", name="t").id)
    tracker.log_params({"train": {"optimizer": {"lr": 0.001}}, "name": "x"})
    path = tracker.log_artifact("notes/readme.txt", "hello")
    assert path.read_text() == "hello"
    atomic_write_bytes(tracker.artifact_path("weights.bin"), b"1234")
    tracker.record_artifact("weights.bin")
    tracker.close()
    run = store.get_run(tracker.run_id)
    assert run.params == {"train.optimizer.lr": "0.001", "name": "x"}
    assert {a.name: a.size for a in store.list_artifacts(tracker.run_id)} == {
        "notes/readme.txt": 5,
        "weights.bin": 4,
    }
    with pytest.raises(StoreError, match="Invalid artifact name"):
        tracker.log_artifact("../escape.txt", "x")


def test_flatten_params():
    assert flatten_params({"a": {"b": 1, "c": {"d": [2]}}, "e": {}}) == {
        "a.b": 1,
        "a.c.d": [2],
        "e": {},
    }


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    atomic_write_bytes(path, json.dumps({"v": 1}).encode())

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(StoreError, match="No space left"):
        atomic_write_bytes(path, b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert json.loads(path.read_text()) == {"v": 1}
