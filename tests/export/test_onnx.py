"""ONNX export: parity with torch on real rows, one self-contained file with a dynamic batch
axis, and the outcome recorded on the model version (a failed check is never served)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from danlu.errors import DataError, StoreError
from danlu.export import (
    _onnx,
    export_onnx,
    export_version,
    onnx_ready,
    parity_check,
    read_export,
    read_onnx,
)
from danlu.models import load_bundle
from danlu.pipeline import register_run
from danlu.store import ModelVersion, SqlStore

MODELS: dict[str, dict[str, Any]] = {
    "wine": {
        "source": "builtin:wine",
        "task": "classification",
        "model": {"type": "mlp", "hidden": [16]},
    },
    "breast_cancer": {
        "source": "builtin:breast_cancer",
        "task": "classification",
        "model": {"type": "mlp", "hidden": [16]},
    },
    "digits": {
        "source": "builtin:digits",
        "task": "classification",
        "model": {"type": "cnn", "channels": [8], "hidden": 16},
    },
    "diabetes": {
        "source": "builtin:diabetes",
        "task": "regression",
        "model": {"type": "mlp", "hidden": [16]},
    },
}


class Registered(NamedTuple):
    store: SqlStore
    mv: ModelVersion
    x: np.ndarray  # real preprocessed rows (test rows first), at least 64


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Registered]]:
    from danlu.config import load_recipe
    from danlu.data import prepare_data
    from danlu.pipeline import run

    store = SqlStore(home=tmp_path_factory.mktemp("export") / "home")
    found = {}
    for name, spec in MODELS.items():
        recipe = {
            "name": name,
            "data": {"source": spec["source"]},
            "task": spec["task"],
            "model": spec["model"],
            "train": {"epochs": 2, "checkpoint": {"every": 0}},
            "register": {"name": name, "alias": "production"},
        }
        result = run(recipe, store=store)
        assert result.registered is not None
        loaded = load_recipe(recipe)
        prepared = prepare_data(loaded.data, loaded.task)
        x = np.concatenate([prepared.x_test, prepared.x_train])[:128]
        found[name] = Registered(store, result.registered, x)
    yield found
    store.close()


def fresh(reg: Registered) -> ModelVersion:
    """A new version of the same run's model, never exported (whatever registration does)."""
    assert reg.mv.run_id is not None
    return register_run(reg.store, reg.mv.run_id, reg.mv.name)


def bundle(reg: Registered, mv: ModelVersion | None = None) -> Any:
    mv = mv or reg.mv

    def read(file: str) -> bytes | None:
        path = reg.store.model_version_path(mv.name, mv.version, file)
        return path.read_bytes() if path.is_file() else None

    return load_bundle(read, mv.ref)


def skewed(onnx_bytes: bytes, delta: float = 0.05) -> bytes:
    """The same graph with every float weight moved by ``delta``: a really wrong export."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(onnx_bytes)
    for init in proto.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32:
            init.CopyFrom(numpy_helper.from_array(array + np.float32(delta), init.name))
    return proto.SerializeToString()


@pytest.fixture
def broken_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make export_version's ONNX file disagree with torch (the failure path, for real)."""
    real = _onnx._export

    def export(model: Any, input_dim: int, sample: np.ndarray) -> tuple[bytes, str]:
        data, exporter = real(model, input_dim, sample)
        return skewed(data), exporter

    monkeypatch.setattr(_onnx, "_export", export)


def onnx_run(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": x})[0]


# -- export_onnx and parity_check ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["wine", "breast_cancer", "digits"])
def test_onnx_matches_torch_at_batch_1_7_64(registry: dict[str, Registered], name: str) -> None:
    import torch

    reg = registry[name]
    b = bundle(reg)
    data = export_onnx(b.model, b.schema.input_dim, reg.x[:16])
    for n in (1, 7, 64):
        x = reg.x[:n]
        got = onnx_run(data, x)
        with torch.inference_mode():
            want = b.model(torch.from_numpy(x)).numpy()
        assert got.shape == want.shape == (n, len(b.schema.classes))
        assert np.abs(got - want).max() < 1e-4
        assert (got.argmax(axis=1) == want.argmax(axis=1)).all()


def test_the_graph_has_a_dynamic_batch_axis(registry: dict[str, Registered]) -> None:
    import onnxruntime as ort

    reg = registry["digits"]
    b = bundle(reg)
    session = ort.InferenceSession(
        export_onnx(b.model, 64, reg.x[:1]), providers=["CPUExecutionProvider"]
    )
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("input", "output")
    assert isinstance(inp.shape[0], str) and inp.shape[1] == 64
    assert isinstance(out.shape[0], str) and out.shape[1] == 10
    assert inp.type == "tensor(float)"
    # traced on one row, it still runs any batch size
    assert session.run(None, {"input": reg.x[:33]})[0].shape == (33, 10)


def test_one_self_contained_file_and_a_clean_stdout(
    registry: dict[str, Registered],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    import onnx
    from onnx.external_data_helper import uses_external_data

    reg = registry["wine"]
    b = bundle(reg)
    monkeypatch.chdir(tmp_path)
    data = export_onnx(b.model, b.schema.input_dim, reg.x[:8])
    assert os.listdir(tmp_path) == []  # nothing written beside, no model.onnx.data
    captured = capfd.readouterr()
    assert captured.out == ""
    assert "torchvision" not in captured.err
    proto = onnx.load_from_string(data)
    assert proto.graph.initializer and not any(
        uses_external_data(t) for t in proto.graph.initializer
    )
    assert {p.key: p.value for p in proto.metadata_props}["danlu.exporter"] == "dynamo"
    # written alone in a folder, it loads from its path with nothing else there
    import onnxruntime as ort

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.onnx").write_bytes(data)
    session = ort.InferenceSession(
        str(tmp_path / "m" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    assert session.run(None, {"input": reg.x[:2]})[0].shape == (2, 3)
    assert os.listdir(tmp_path / "m") == ["model.onnx"]


def test_the_exported_model_keeps_its_training_mode(registry: dict[str, Registered]) -> None:
    b = bundle(registry["wine"])
    b.model.train()
    export_onnx(b.model, b.schema.input_dim, registry["wine"].x[:4])
    assert b.model.training


def test_parity_check_reports_the_diff(registry: dict[str, Registered]) -> None:
    reg = registry["breast_cancer"]
    b = bundle(reg)
    data = export_onnx(b.model, b.schema.input_dim, reg.x[:8])
    good = parity_check(b.model, data, reg.x)
    assert good["passed"] and good["rows"] == len(reg.x)
    assert good["batch_sizes_checked"] == [1, len(reg.x)]
    assert good["max_abs_diff"] < 1e-4 and good["argmax_agreement"] == 1.0 and good["atol"] == 1e-4
    bad = parity_check(b.model, skewed(data, 0.5), reg.x)
    assert not bad["passed"] and bad["max_abs_diff"] > 1e-4


def test_parity_check_of_a_single_output_column(registry: dict[str, Registered]) -> None:
    reg = registry["diabetes"]
    b = bundle(reg)
    data = export_onnx(b.model, b.schema.input_dim, reg.x[:8])
    good = parity_check(b.model, data, reg.x[:50])
    assert good["passed"] and good["argmax_agreement"] == 1.0
    bad = parity_check(b.model, skewed(data), reg.x[:50])
    assert not bad["passed"] and bad["argmax_agreement"] < 1.0


def test_a_sample_of_the_wrong_shape_is_refused(registry: dict[str, Registered]) -> None:
    b = bundle(registry["wine"])
    with pytest.raises(DataError, match=r"\(rows ≥ 1, 13\)"):
        export_onnx(b.model, b.schema.input_dim, np.zeros((4, 12), np.float32))
    with pytest.raises(DataError, match="13"):
        export_version(registry["wine"].store, "wine", sample=np.zeros((0, 13), np.float32))


def test_torchscript_is_the_fallback_when_dynamo_fails(
    registry: dict[str, Registered], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    real = torch.onnx.export

    def export(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("dynamo"):
            raise RuntimeError("dynamo cannot trace this")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", export)
    reg = registry["wine"]
    mv = fresh(reg)
    result = export_version(reg.store, mv.ref, sample=reg.x)
    assert result.status == "ok" and result.exporter == "torchscript"
    assert read_export(reg.store, mv)["exporter"] == "torchscript"  # type: ignore[index]
    assert onnx_run(read_onnx(reg.store, mv), reg.x[:1]).shape == (1, 3)


def test_when_every_exporter_fails_the_export_is_failed(
    registry: dict[str, Registered], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    def export(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", export)
    reg = registry["wine"]
    mv = fresh(reg)
    result = export_version(reg.store, mv.ref, sample=reg.x)
    assert result.status == "failed" and result.exporter is None and result.parity is None
    assert "dynamo" in result.error and "torchscript" in result.error  # type: ignore[operator]
    assert not reg.store.model_version_path(mv.name, mv.version, "model.onnx").exists()
    assert read_export(reg.store, mv)["status"] == "failed"  # type: ignore[index]


# -- export_version -----------------------------------------------------------------------------
def test_export_version_writes_model_onnx_and_export_json(registry: dict[str, Registered]) -> None:
    reg = registry["digits"]
    mv = fresh(reg)
    assert not onnx_ready(reg.store, mv) and read_export(reg.store, mv) is None
    result = export_version(reg.store, mv.ref)  # the run's own test rows
    assert result.status == "ok" and result.error is None, result.error
    assert result.exporter == "dynamo" and result.opset and result.size_bytes > 0
    assert result.parity is not None and result.parity["passed"]
    assert result.parity["rows"] == 256 and result.parity["batch_sizes_checked"] == [1, 256]

    folder = reg.store.model_version_path(mv.name, mv.version, "model.onnx").parent
    names = sorted(p.name for p in folder.iterdir())
    assert "model.onnx" in names and "export.json" in names
    assert not [n for n in names if n.endswith(".data")]
    assert {"model.safetensors", "model.json", "preprocessing.json"} <= set(names)
    listed = reg.store.get_model_version(mv.name, mv.version).files
    assert "model.onnx" in listed and "export.json" in listed

    export = read_export(reg.store, mv)
    assert export is not None
    assert export["format"] == "onnx" and export["status"] == "ok"
    assert export["input"] == {"name": "input", "dtype": "float32", "shape": [None, 64]}
    assert export["output"]["name"] == "output" and export["output"]["shape"] == [None, 10]
    assert export["parity"] == result.parity and export["exporter"] == "dynamo"
    assert export["opset"] == result.opset and export["created_at"]
    assert onnx_ready(reg.store, mv)
    data = read_onnx(reg.store, mv)
    assert len(data) == result.size_bytes
    assert onnx_run(data, reg.x[:5]).shape == (5, 10)


def test_a_failed_parity_check_is_recorded_and_never_served(
    registry: dict[str, Registered], broken_export: None
) -> None:
    reg = registry["wine"]
    mv = fresh(reg)
    result = export_version(reg.store, mv.ref, sample=reg.x)
    assert result.status == "failed" and not result.ok
    assert result.parity is not None and not result.parity["passed"]
    assert result.error is not None
    assert "max |onnx − torch| = " in result.error and "> atol 0.0001" in result.error
    assert f"on {len(reg.x)} rows; argmax agrees on " in result.error
    assert not reg.store.model_version_path(mv.name, mv.version, "model.onnx").exists()
    export = read_export(reg.store, mv)
    assert export is not None and export["status"] == "failed"
    assert export["error"] == result.error and export["parity"] == result.parity
    assert not onnx_ready(reg.store, mv)
    with pytest.raises(StoreError, match="last export failed"):
        read_onnx(reg.store, mv)


def test_a_failed_re_export_withdraws_the_older_onnx_file(
    registry: dict[str, Registered], monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = registry["breast_cancer"]
    mv = fresh(reg)
    assert export_version(reg.store, mv.ref, sample=reg.x).ok
    assert onnx_ready(reg.store, mv)
    real = _onnx._export
    monkeypatch.setattr(_onnx, "_export", lambda m, d, s: (skewed(real(m, d, s)[0], 0.5), "dynamo"))
    assert export_version(reg.store, mv.ref, sample=reg.x).status == "failed"
    # the older file is still on disk (a version's files are never deleted) but not servable
    assert reg.store.model_version_path(mv.name, mv.version, "model.onnx").is_file()
    assert not onnx_ready(reg.store, mv)


def test_re_export_replaces_the_files(registry: dict[str, Registered]) -> None:
    reg = registry["wine"]
    mv = fresh(reg)
    first = export_version(reg.store, mv.ref, sample=reg.x[:10])
    second = export_version(reg.store, mv.ref, sample=reg.x[:40])
    assert first.ok and second.ok
    export = read_export(reg.store, mv)
    assert export is not None and export["parity"]["rows"] == 40
    assert onnx_ready(reg.store, mv)
    attached = [
        e
        for e in reg.store.audit_log(mv.name)
        if e.action == "attach_files" and e.version == mv.version
    ]
    assert len(attached) == 2


def test_an_onnx_file_that_changed_is_not_served(registry: dict[str, Registered]) -> None:
    reg = registry["wine"]
    mv = fresh(reg)
    assert export_version(reg.store, mv.ref, sample=reg.x).ok
    path = reg.store.model_version_path(mv.name, mv.version, "model.onnx")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="SHA-256"):
        read_onnx(reg.store, mv)
    path.write_bytes(bytes(data) + b"\0")
    assert not onnx_ready(reg.store, mv)


def test_regression_model_exports(registry: dict[str, Registered]) -> None:
    reg = registry["diabetes"]
    mv = fresh(reg)
    result = export_version(reg.store, mv.ref)
    assert result.ok, result.error
    assert result.parity is not None and result.parity["argmax_agreement"] == 1.0
    export = read_export(reg.store, mv)
    assert export is not None and export["output"]["shape"] == [None, 1]
    assert onnx_ready(reg.store, mv)


def test_an_alias_reference_exports_the_version_it_points_at(
    registry: dict[str, Registered],
) -> None:
    reg = registry["diabetes"]
    result = export_version(reg.store, "diabetes@production", sample=reg.x)
    assert result.ref == reg.mv.ref and result.ok


def test_a_version_whose_run_is_gone_needs_sample_rows(registry: dict[str, Registered]) -> None:
    reg = registry["breast_cancer"]
    mv = fresh(reg)
    other = reg.store.create_run(experiment="x", name="gone")
    files = {
        f: reg.store.model_version_path(mv.name, mv.version, f).read_bytes()
        for f in ("model.safetensors", "model.json", "preprocessing.json")
    }
    orphan = reg.store.create_model_version(
        "orphan", run_id=other.id, files=files, signature=mv.signature, metrics={}
    )
    reg.store.delete_run(other.id)
    assert reg.store.get_model_version("orphan").run_id is None
    with pytest.raises(StoreError, match=r"was deleted.*sample=x"):
        export_version(reg.store, orphan.ref)
    assert read_export(reg.store, orphan) is None  # nothing recorded
    assert export_version(reg.store, orphan.ref, sample=reg.x).ok


def test_a_run_that_kept_no_recipe_needs_sample_rows(registry: dict[str, Registered]) -> None:
    reg = registry["wine"]
    mv = fresh(reg)
    bare = reg.store.create_run(experiment="x", name="no recipe")
    files = {
        f: reg.store.model_version_path(mv.name, mv.version, f).read_bytes()
        for f in ("model.safetensors", "model.json", "preprocessing.json")
    }
    kept = reg.store.create_model_version(
        "bare", run_id=bare.id, files=files, signature=mv.signature, metrics={}
    )
    with pytest.raises(StoreError, match=r"kept no recipe.*sample=x"):
        export_version(reg.store, kept.ref)
