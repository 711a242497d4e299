"""The compression stage end to end on real runs: ``danlu run`` with a ``compress:`` block makes,
measures, gates and registers int8 variants (served like any version), the trade-off lands in the
run and the parent's trust report; the gate can refuse everything; a variant whose ONNX parity
check fails is never served; ``danlu compress`` works on a run and on a registered version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import danlu
from danlu.store import SqlStore

WINE: dict[str, Any] = {
    "name": "wine-compress",
    "data": {"source": "builtin:wine"},
    "task": "classification",
    "model": {"type": "mlp", "hidden": [64, 64]},
    "train": {"epochs": 12, "batch_size": 32, "seed": 0},
    "register": {"name": "wine", "alias": "staging"},
    "compress": {
        "quantize": {"methods": ["torch-dynamic", "ort-dynamic"]},
        "max_metric_drop": 0.05,
        "bootstrap": 50,
        "repeats": 3,
    },
}


@pytest.fixture(scope="module")
def compressed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    home = tmp_path_factory.mktemp("home")
    result = danlu.run(WINE, home=home)
    return home, result


def test_a_run_registers_its_passing_int8_variants_with_their_parent(compressed) -> None:
    home, result = compressed
    store = SqlStore(home=home)
    stages = [s.name for s in result.stages]
    assert stages[-2:] == ["register", "compress"]
    record = json.loads(store.artifact_path(result.run_id, "compression.json").read_text())
    assert record["parent"] == "wine:1" and record["reference"]["variant"] == "fp32"
    names = {v["variant"]: v for v in record["variants"]}
    assert set(names) == {"int8-torch-dynamic", "int8-ort-dynamic"}
    for name, row in names.items():
        assert row["status"] == "passed", row
        assert row["drop"] <= 0.05 and 0 <= row["agreement"] <= 1
        mv = store.resolve(row["version"])
        assert mv.tags["compression"] == name and mv.tags["parent"] == "wine:1"
        assert f"test_{record['reference']['metric']}" in mv.metrics
        report = json.loads(
            store.model_version_path(mv.name, mv.version, "report.json").read_text()
        )
        assert "compression" in report["sections"] and "metrics" in report["sections"]
    # the int8 ONNX graph is smaller than the fp32 one and is what ONNX Runtime serves
    ort = names["int8-ort-dynamic"]
    assert ort["size_bytes"] < record["reference"]["size_bytes"]
    assert ort["onnx_latency_ms"] is not None and ort["torch_latency_ms"] is None
    torch_row = names["int8-torch-dynamic"]
    assert torch_row["torch_rows_per_s"] > 0 and torch_row["onnx_rows_per_s"] is None
    # the parent's trust report and the run's both carry the trade-off
    for path in (
        store.artifact_path(result.run_id, "report.json"),
        store.model_version_path("wine", 1, "report.json"),
    ):
        section = json.loads(path.read_text())["sections"]["compression"]
        assert [r["variant"] for r in section["variants"]][0] == "fp32"
    html = store.model_version_path("wine", 1, "report.html").read_text()
    assert 'id="compression"' in html and "<svg" in html


def test_the_alias_goes_to_a_passing_variant_faster_than_fp32(compressed) -> None:
    home, result = compressed
    store = SqlStore(home=home)
    record = json.loads(store.artifact_path(result.run_id, "compression.json").read_text())
    reference = record["reference"]
    best = record["best"]
    if best is None:  # none beat fp32 at batch-1 latency on this machine: no alias moved
        assert record["alias"] is None
        return
    row = next(v for v in record["variants"] if v["variant"] == best)
    runtime = row["runtime"]
    assert row[f"{runtime}_latency_ms"] < reference[f"{reference['runtime']}_latency_ms"]
    assert store.resolve("wine@fast").ref == row["version"]


def test_a_served_variant_answers_like_its_measurement(compressed) -> None:
    """Each variant loads back and predicts: the torch int8 one through load_model (its int8
    weights rebuilt from safetensors), the ONNX int8 one on ONNX Runtime."""
    from danlu.config import load_recipe
    from danlu.data import prepare_data
    from danlu.serve._runtime import OnnxRuntime, TorchRuntime, load_runtime
    from danlu.tasks import get_task

    home, result = compressed
    store = SqlStore(home=home)
    record = json.loads(store.artifact_path(result.run_id, "compression.json").read_text())
    names = {v["variant"]: v for v in record["variants"]}
    recipe = load_recipe(WINE)
    data = prepare_data(recipe.data, get_task("classification"))
    for name, kind in (("int8-torch-dynamic", TorchRuntime), ("int8-ort-dynamic", OnnxRuntime)):
        mv = store.resolve(names[name]["version"])
        runtime = load_runtime(store, mv, "onnx")
        assert isinstance(runtime, kind)
        outputs = runtime.outputs(data.x_test)
        got = float(np.mean(outputs.argmax(1) == data.y_test))
        assert record["reference"]["metric"] == "accuracy"
        assert got == pytest.approx(names[name]["value"], abs=1e-9)
    predictor = danlu.load_model(names["int8-torch-dynamic"]["version"], store=store)
    assert len(predictor.predict(data.test_frame)["prediction"]) == len(data.y_test)


def test_a_compressed_version_is_not_exported_again(compressed) -> None:
    from danlu.errors import StoreError
    from danlu.export import export_version

    home, result = compressed
    store = SqlStore(home=home)
    record = json.loads(store.artifact_path(result.run_id, "compression.json").read_text())
    ref = next(v["version"] for v in record["variants"] if v["variant"] == "int8-ort-dynamic")
    before = store.model_version_path(*_split(ref), "model.onnx").read_bytes()
    with pytest.raises(StoreError, match="compressed variant int8-ort-dynamic"):
        export_version(store, ref)
    assert store.model_version_path(*_split(ref), "model.onnx").read_bytes() == before


def _split(ref: str) -> tuple[str, int]:
    name, version = ref.split(":")
    return name, int(version)


def test_a_variant_whose_onnx_disagrees_with_torch_is_failed_and_never_measured(
    compressed,
) -> None:
    """A network whose graph ONNX Runtime computes differently (random noise in its forward) is
    marked failed with the diff; it is not measured, gated or registered."""
    import torch

    from danlu.compress import CompressJob, Variant
    from danlu.compress._stage import _prepare
    from danlu.config import load_recipe
    from danlu.data import prepare_data
    from danlu.tasks import get_task

    class Noisy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(13, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x) + torch.rand(x.shape[0], 3)

    home, result = compressed
    recipe = load_recipe(WINE)
    task = get_task("classification")
    data = prepare_data(recipe.data, task)
    job = CompressJob(
        config=recipe.compress,
        recipe=recipe,
        model=torch.nn.Linear(13, 3),
        card={},
        task=task,
        data=data,
        store=SqlStore(home=home),
        run_id=result.run_id,
    )
    prepared = _prepare(
        job, Variant(name="noisy", method="prune", runtime="onnx", model=Noisy()), b""
    )
    assert prepared.status == "failed"
    assert "disagrees with torch" in (prepared.reason or "") and "max |onnx − torch|" in (
        prepared.reason or ""
    )


def test_danlu_compress_on_a_registered_version_and_bad_overrides(compressed) -> None:
    """The CLI compresses a registered version (its variants become versions of the same model,
    parent tagged), prints the table; an invalid --set exits 2-ish with the key named."""
    import os
    import subprocess
    import sys

    home, _ = compressed
    env = {**os.environ, "DANLU_HOME": str(home), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "danlu",
            "compress",
            "wine:1",
            "--set",
            "quantize.methods=[ort-dynamic]",
            "--set",
            "repeats=2",
            "--set",
            "bootstrap=0",
            "--set",
            "max_metric_drop=0.05",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "int8-ort-dynamic" in done.stdout and "fp32" in done.stdout
    store = SqlStore(home=home)
    versions = [mv for mv in store.list_model_versions("wine") if mv.tags.get("parent") == "wine:1"]
    assert sum(mv.tags.get("compression") == "int8-ort-dynamic" for mv in versions) == 2
    bad = subprocess.run(
        [sys.executable, "-m", "danlu", "compress", "wine:1", "--set", "prune.sparsity=1.5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "compress.prune.sparsity" in bad.stderr + bad.stdout


def test_a_gate_no_variant_passes_succeeds_and_registers_nothing(tmp_path: Path) -> None:
    """95% of the weights zeroed without fine-tuning cannot keep the accuracy within a gate of
    zero: the run still succeeds, says so, and registers nothing but the parent."""
    recipe = {
        **WINE,
        "name": "wine-gate",
        "train": {**WINE["train"], "epochs": 8},
        "register": {"name": "gated"},
        "compress": {
            "quantize": False,
            "prune": {"sparsity": 0.95, "finetune_epochs": 0},
            "max_metric_drop": 0.0,
            "bootstrap": 0,
            "repeats": 2,
        },
    }
    result = danlu.run(recipe, home=tmp_path)
    store = SqlStore(home=tmp_path)
    assert store.get_run(result.run_id).status == "finished"
    compression = result.details["compression"]
    (variant,) = compression.variants
    assert variant.name == "pruned-95" and variant.status == "dropped", variant.reason
    assert variant.measurement.drop > 0 and "more than max_metric_drop 0" in (variant.reason or "")
    assert compression.passed == [] and compression.best is None and compression.alias is None
    assert "nothing was registered" in compression.summary
    assert [mv.ref for mv in store.list_model_versions("gated")] == ["gated:1"]
    section = json.loads(store.artifact_path(result.run_id, "report.json").read_text())
    assert "nothing was registered" in section["sections"]["compression"]["summary"]
