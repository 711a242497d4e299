"""The store contract for artifacts: atomic writes under the run, media types, validated names."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from danlu.errors import NotFoundError, StoreError
from danlu.store import (
    Store,
    atomic_write_bytes,
)
from danlu.testing.store._common import sha256_hex

MEDIA_CASES: list[tuple[str, str | None, str]] = [
    ("model.safetensors", None, "application/vnd.safetensors"),
    ("model.onnx", None, "application/onnx"),
    ("recipe.yaml", None, "application/yaml"),
    ("log.jsonl", None, "application/jsonl"),
    ("report.html", None, "text/html"),
    ("blob.unknownext", None, "application/octet-stream"),
    ("notes.html", "text/plain", "text/plain"),
]


class ArtifactsConformance:
    """Artifacts of a run, and the names and ids every path is built from."""

    # -- artifacts -----------------------------------------------------------------------------
    def test_log_artifact(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r")
        data = b'{"accuracy": 0.97}'
        artifact = store.log_artifact(run.id, "reports/metrics.json", data)
        assert (artifact.run_id, artifact.name, artifact.size) == (
            run.id,
            "reports/metrics.json",
            len(data),
        )
        assert (artifact.sha256, artifact.media_type) == (sha256_hex(data), "application/json")
        path = store.artifact_path(run.id, "reports/metrics.json")
        assert path.read_bytes() == data
        assert store.list_artifacts(run.id) == [artifact]
        empty = store.log_artifact(run.id, "empty.bin", b"")
        assert (empty.size, empty.sha256) == (0, sha256_hex(b""))
        assert [a.name for a in store.list_artifacts(run.id)] == [
            "empty.bin",
            "reports/metrics.json",
        ]

    def test_artifact_media_types(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r")
        got = {
            (name, given): store.log_artifact(run.id, name, b"x", media_type=given).media_type
            for name, given, _ in MEDIA_CASES
        }
        assert got == {(name, given): media for name, given, media in MEDIA_CASES}

    def test_artifact_overwrite(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r")
        store.log_artifact(run.id, "weights.bin", b"old")
        new = store.log_artifact(run.id, "weights.bin", b"newer")
        assert store.list_artifacts(run.id) == [new]
        assert (new.size, new.sha256) == (5, sha256_hex(b"newer"))
        assert store.artifact_path(run.id, "weights.bin").read_bytes() == b"newer"
        folder = store.artifact_path(run.id, "weights.bin").parent
        assert sorted(p.name for p in folder.iterdir()) == ["weights.bin"]  # no temp files

    def test_record_artifact(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r")
        path = store.artifact_path(run.id, "ckpt/last.safetensors")
        assert not path.exists()  # artifact_path does not create anything
        atomic_write_bytes(path, b"\x00" * 1000)
        artifact = store.record_artifact(run.id, "ckpt/last.safetensors")
        assert (artifact.size, artifact.sha256) == (1000, sha256_hex(b"\x00" * 1000))
        assert artifact.media_type == "application/vnd.safetensors"
        atomic_write_bytes(path, b"\x01" * 10)  # rewritten by the stage, recorded again
        again = store.record_artifact(run.id, "ckpt/last.safetensors", media_type="x/y")
        assert (again.size, again.media_type) == (10, "x/y")
        assert store.list_artifacts(run.id) == [again]
        with pytest.raises(NotFoundError, match="never-written"):
            store.record_artifact(run.id, "never-written.bin")

    def test_artifact_of_unknown_run(self, store: Store) -> None:
        path = store.artifact_path("20000101-000000-abcdef", "a.txt")
        with pytest.raises(NotFoundError):
            store.log_artifact("20000101-000000-abcdef", "a.txt", b"x")
        assert not path.exists() and not path.parent.exists()

    # -- validation ----------------------------------------------------------------------------
    def test_paths_are_validated(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r")
        for bad in ("../x", "/abs", "a\x00b", "x" * 300, "a/../../b", "%2e%2e%2fx"):
            calls: list[tuple[Callable[..., object], tuple[object, ...]]] = [
                (store.artifact_path, (run.id, bad)),
                (store.artifact_path, (bad, "a.txt")),
                (store.model_version_path, (bad, 1, "w.bin")),
                (store.model_version_path, ("digits", 1, bad)),
                (store.get_run, (bad,)),
            ]
            for method, args in calls:
                with pytest.raises(StoreError):
                    method(*args)
