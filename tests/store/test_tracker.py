from __future__ import annotations

import json
import os

import pytest

from danlu.errors import NotFoundError, StoreError
from danlu.store import RunFolderTracker, atomic_write_bytes, flatten_params, validate_name


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "a/../../b",
        "/etc/passwd",
        "a\\..\\b",
        "a\x00b",
        "",
        ".",
        "x" * 300,
        "%2e%2e%2fetc",
        "a//b",
        "~/x",
    ],
)
def test_unsafe_artifact_names_are_refused(tmp_path, name):
    tracker = RunFolderTracker.create("t", tmp_path)
    with pytest.raises(StoreError, match="Invalid artifact name"):
        tracker.log_artifact(name, b"x")
    assert sorted(p.name for p in tracker.run_dir.iterdir()) == []


def test_nested_names_are_fine():
    assert validate_name("plots/loss.svg") == "plots/loss.svg"


def test_metrics_are_buffered_until_flush(tmp_path):
    tracker = RunFolderTracker.create("t", tmp_path)
    tracker.log_metrics({"loss": 1.0}, step=1)
    assert not (tracker.run_dir / "metrics.jsonl").exists()
    tracker.flush()
    tracker.log_metrics({"loss": 0.5}, step=2)
    tracker.set_status("finished")  # flushes
    assert [m["loss"] for m in tracker.metrics_history()] == [1.0, 0.5]
    tracker.truncate_metrics(1)
    assert [m["step"] for m in tracker.metrics_history()] == [1]


def test_status_round_trips_through_open(tmp_path):
    tracker = RunFolderTracker.create("t", tmp_path)
    tracker.set_status("running", data_fingerprint="abc")
    again = RunFolderTracker.open(tracker.run_dir)
    assert again.run_id == tracker.run_id and again.status["data_fingerprint"] == "abc"
    with pytest.raises(NotFoundError):
        RunFolderTracker.open(tmp_path)


def test_flatten_params():
    assert flatten_params({"a": {"b": 1, "c": {"d": [2]}}, "e": {}}) == {
        "a.b": 1,
        "a.c.d": [2],
        "e": {},
    }


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder_is_a_loud_error_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_bytes(path, b"old")
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="Cannot write"):
            atomic_write_bytes(path, b"new")
    finally:
        tmp_path.chmod(0o700)
    assert path.read_bytes() == b"old"


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
