"""``danlu export MODEL``: exit 0 with the parity figures when ONNX agrees with torch, exit 1
with the diff (no traceback) when it does not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from danlu.cli._app import app
from danlu.cli._export import export_command
from tests.cli._runner import danlu

if "export" not in [c.name for c in app.registered_commands]:  # until _app.py registers it
    app.command("export")(export_command)


class Home(NamedTuple):
    path: Path
    run_id: str


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    from danlu.pipeline import run
    from danlu.store import SqlStore

    home = tmp_path_factory.mktemp("cli-export") / "home"
    store = SqlStore(home=home)
    result = run(
        {
            "name": "w",
            "data": {"source": "builtin:wine"},
            "task": "classification",
            "model": {"type": "mlp", "hidden": [16]},
            "train": {"epochs": 2, "checkpoint": {"every": 0}},
            "register": {"name": "wine", "alias": "production"},
        },
        store=store,
    )
    store.close()
    yield Home(home, result.run_id)


@pytest.fixture
def home(trained: Home, monkeypatch: pytest.MonkeyPatch) -> Iterator[Home]:
    monkeypatch.setenv("DANLU_HOME", str(trained.path))
    yield trained


def _fresh(home: Home) -> str:
    """A new, never exported version of the trained model."""
    from danlu.pipeline import register_run
    from danlu.store import SqlStore

    store = SqlStore(home=home.path)
    try:
        return register_run(store, home.run_id, "wine").ref
    finally:
        store.close()


def _version_dir(home: Home, ref: str) -> Path:
    name, version = ref.split(":")
    return home.path / "models" / name / version


def test_export_prints_the_parity_figures(home: Home) -> None:
    ref = _fresh(home)
    outcome = danlu("export", ref)
    assert outcome.code == 0, outcome.stderr
    out = outcome.stdout
    for text in ("ok", "max abs diff", "argmax agreement", "100.0%", "model.onnx", "dynamo", ref):
        assert text in out, out
    folder = _version_dir(home, ref)
    assert (folder / "model.onnx").is_file()
    assert json.loads((folder / "export.json").read_text())["status"] == "ok"


def test_export_as_json(home: Home) -> None:
    outcome = danlu("export", "wine@production", "--json", "--atol", "1e-3")
    assert outcome.code == 0, outcome.stderr
    result = json.loads(outcome.stdout)
    assert result["status"] == "ok" and result["ref"] == "wine:1"
    assert result["parity"]["atol"] == 1e-3 and result["parity"]["passed"]
    assert result["exporter"] == "dynamo" and result["size_bytes"] > 0 and result["error"] is None


def test_a_failed_parity_check_exits_1_with_the_diff(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx
    from onnx import numpy_helper

    from danlu.export import _onnx

    real = _onnx._export

    def skewed(model: Any, input_dim: int, sample: np.ndarray) -> tuple[bytes, str]:
        data, exporter = real(model, input_dim, sample)
        proto = onnx.load_from_string(data)
        for init in proto.graph.initializer:
            array = numpy_helper.to_array(init)
            if array.dtype == np.float32:
                init.CopyFrom(numpy_helper.from_array(array + np.float32(0.05), init.name))
        return proto.SerializeToString(), exporter

    monkeypatch.setattr(_onnx, "_export", skewed)
    ref = _fresh(home)
    outcome = danlu("export", ref)
    assert outcome.code == 1
    assert "failed" in outcome.stdout
    assert "max |onnx − torch| = " in outcome.stderr and "> atol 0.0001" in outcome.stderr
    assert "argmax agrees on" in outcome.stderr
    assert "Traceback" not in outcome.stderr + outcome.stdout
    folder = _version_dir(home, ref)
    assert not (folder / "model.onnx").exists()
    assert json.loads((folder / "export.json").read_text())["status"] == "failed"

    as_json = danlu("export", ref, "--json")
    assert as_json.code == 1
    result = json.loads(as_json.stdout)
    assert result["status"] == "failed" and "max |onnx − torch|" in result["error"]


def test_only_onnx_is_a_format(home: Home) -> None:
    outcome = danlu("export", "wine", "--format", "tflite")
    assert outcome.code == 2
    assert "--format must be one of onnx; got 'tflite'" in outcome.stderr
    assert danlu("export", "wine", "--format", "ONNX").code == 0


def test_an_unknown_model_is_not_found(home: Home) -> None:
    outcome = danlu("export", "wnie")
    assert outcome.code == 4
    assert "wnie" in outcome.stderr and "Traceback" not in outcome.stderr


def test_a_negative_atol_is_refused(home: Home) -> None:
    outcome = danlu("export", "wine", "--atol", "-1")
    assert outcome.code == 2
    assert "--atol" in outcome.stderr
