"""Runtimes: ONNX Runtime and torch give the same outputs; an unexported version falls back."""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest

from danlu import pipeline
from danlu.errors import ConfigError
from danlu.models import load_bundle
from danlu.serve._runtime import OnnxRuntime, TorchRuntime, load_runtime
from danlu.store import ModelVersion, SqlStore, Store

WINE = {
    "name": "w",
    "data": {"source": "builtin:wine"},
    "task": "classification",
    "model": {"type": "mlp", "hidden": [16]},
    "train": {"epochs": 2, "checkpoint": {"every": 0}},
    "register": {"name": "wine", "alias": "production"},
}


def export_onnx(store: Store, mv: ModelVersion, path: Path) -> None:
    """Export ``mv`` to one self-contained ONNX file and attach it (with export.json: ok)."""
    import torch

    bundle = load_bundle(store.model_reader(mv), mv.ref)
    x = torch.zeros(2, bundle.schema.input_dim)
    with warnings.catch_warnings():  # the exporter's own deprecation and tracing chatter
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            bundle.model,
            (x,),
            dynamo=True,
            external_data=False,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            input_names=["input"],
            output_names=["output"],
        )
        program.save(str(path), external_data=False)
    data = path.read_bytes()
    export = {"status": "ok", "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}
    store.attach_model_files(
        mv.name, mv.version, {"model.onnx": data, "export.json": json.dumps(export).encode()}
    )


def register_unexported(store: Store, mv: ModelVersion) -> ModelVersion:
    """A new version with ``mv``'s model files only: never exported to ONNX."""
    files = {}
    for file in ("model.safetensors", "model.json", "preprocessing.json"):
        raw = store.model_reader(mv)(file)
        assert raw is not None
        files[file] = raw
    return store.create_model_version(
        mv.name, run_id=None, files=files, signature=mv.signature, metrics={}
    )


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> tuple[Store, ModelVersion, ModelVersion]:
    """Two wine versions: the first exported to ONNX, the second not."""
    home = tmp_path_factory.mktemp("runtime")
    store = SqlStore(home=home)
    pipeline.run(WINE, store=store, home=home)
    export_onnx(store, store.get_model_version("wine", 1), home / "model.onnx")
    unexported = register_unexported(store, store.get_model_version("wine", 1))
    assert "model.onnx" not in unexported.files
    return store, store.get_model_version("wine", 1), unexported


def test_onnx_and_torch_give_the_same_outputs(registry) -> None:
    store, mv, _ = registry
    onnx = load_runtime(store, mv, "onnx", threads=1)
    torch_rt = load_runtime(store, mv, "torch", threads=1)
    assert isinstance(onnx, OnnxRuntime) and onnx.name == "onnx"
    assert isinstance(torch_rt, TorchRuntime) and torch_rt.name == "torch"
    x = np.random.default_rng(0).normal(size=(37, 13)).astype(np.float32)
    for rows in (x[:1], x):  # the batch axis is dynamic
        a, b = onnx.outputs(rows), torch_rt.outputs(rows)
        assert a.shape == b.shape == (len(rows), 3) and a.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_onnx_runtime_loads_from_bytes(registry) -> None:
    store, mv, _ = registry
    raw = store.model_reader(mv)("model.onnx")
    assert raw is not None
    x = np.ones((4, 13), dtype=np.float32)
    np.testing.assert_allclose(
        OnnxRuntime(raw).outputs(x), load_runtime(store, mv, "onnx").outputs(x), atol=0
    )


def test_a_version_without_an_ok_export_is_served_by_torch(registry, caplog) -> None:
    store, _, unexported = registry
    with caplog.at_level(logging.WARNING, logger="danlu"):
        runtime = load_runtime(store, unexported, "onnx")
    assert runtime.name == "torch"
    assert "no successful ONNX export" in caplog.text and "wine:2" in caplog.text


def test_a_failed_export_is_never_served(registry) -> None:
    store, _, unexported = registry
    onnx = store.model_reader(store.get_model_version("wine", 1))("model.onnx")
    assert onnx is not None
    failed = json.dumps({"status": "failed", "error": "max abs diff 0.3"}).encode()
    store.attach_model_files("wine", 2, {"model.onnx": onnx, "export.json": failed})
    assert load_runtime(store, store.get_model_version("wine", 2), "onnx").name == "torch"


def test_an_onnx_file_that_is_not_the_checked_one_is_never_served(registry, caplog) -> None:
    store, _, _ = registry
    onnx = store.model_reader(store.get_model_version("wine", 1))("model.onnx")
    assert onnx is not None
    claimed = {"status": "ok", "sha256": "0" * 64, "size_bytes": len(onnx)}
    store.attach_model_files(
        "wine", 2, {"model.onnx": onnx, "export.json": json.dumps(claimed).encode()}
    )
    with caplog.at_level(logging.WARNING, logger="danlu"):
        runtime = load_runtime(store, store.get_model_version("wine", 2), "onnx")
    assert runtime.name == "torch" and "SHA-256" in caplog.text


def test_an_unknown_runtime_is_a_config_error(registry) -> None:
    store, mv, _ = registry
    with pytest.raises(ConfigError, match="onnx, torch"):
        load_runtime(store, mv, "tensorrt")
