"""int8 quantization of real trained models: each method makes a working variant (torch's
dynamic int8 stored without pickle and reloaded bit for bit through ``load_bundle``; ONNX
Runtime's dynamic and static int8 agreeing with fp32), a model a method cannot quantize gets a
skipped or failed variant while the others are made, an unknown quantize kind is refused, and
the MiniLM LoRA text model gets ONNX Runtime int8 with its token ids left exact."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

from danlu.compress import CompressJob, Variant
from danlu.compress._quantize import quantize_variants
from danlu.config import CompressConfig
from danlu.errors import StoreError
from danlu.models import load_bundle

pytest.importorskip("onnxruntime")

MLP = {"type": "mlp", "hidden": [64, 64], "dropout": 0.0}
CNN = {"type": "cnn", "channels": [8], "hidden": 16}


def _job(home: Path, recipe: dict[str, Any], methods: list[str]) -> CompressJob:
    """Train ``recipe`` for real, load the model back from the run's files and make the job."""
    from danlu.store import SqlStore
    from danlu.train import run_training
    from danlu.train._run import prepare_recipe_data

    result = run_training(recipe, home=home)
    files = result.run_dir

    def read(name: str) -> bytes | None:
        return (files / name).read_bytes() if (files / name).is_file() else None

    bundle = load_bundle(read, f"run {result.run_id}")
    return CompressJob(
        config=CompressConfig.model_validate({"quantize": {"methods": methods}}),
        recipe=result.recipe,
        model=bundle.model,
        card=json.loads(read("model.json") or b"{}"),
        task=result.task,
        data=prepare_recipe_data(result.recipe, result.task),
        store=SqlStore(home=home),
        run_id=result.run_id,
    )


def _recipe(source: str, model: dict[str, Any], epochs: int = 3) -> dict[str, Any]:
    return {
        "name": "quantize-test",
        "data": {"source": source},
        "task": "classification",
        "model": model,
        "train": {"epochs": epochs, "checkpoint": {"every": 0}, "seed": 0},
    }


@pytest.fixture(scope="module")
def wine(tmp_path_factory) -> CompressJob:
    home = tmp_path_factory.mktemp("wine")
    return _job(home, _recipe("builtin:wine", MLP, epochs=5), ["torch-dynamic", "ort-dynamic"])


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> CompressJob:
    home = tmp_path_factory.mktemp("digits")
    return _job(home, _recipe("builtin:digits", CNN, epochs=2), ["ort-dynamic", "ort-static"])


def _fp32(job: CompressJob, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return job.model(torch.as_tensor(x)).numpy()


def _onnx(variant: Variant, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    assert variant.onnx is not None
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(variant.onnx, options, providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": np.ascontiguousarray(x, dtype=np.float32)})[0]


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(axis=1) == b.argmax(axis=1)).mean())


def _files(job: CompressJob, variant: Variant) -> dict[str, bytes]:
    """The files the stage registers for ``variant``: the parent's card updated with its card,
    its weights, the parent's preprocessing."""
    run = job.store.artifact_path(job.run_id, "preprocessing.json").parent
    assert variant.weights is not None
    return {
        "model.json": json.dumps({**job.card, **variant.card}).encode(),
        "model.safetensors": variant.weights,
        "preprocessing.json": (run / "preprocessing.json").read_bytes(),
    }


def test_torch_dynamic_is_stored_without_pickle_and_reloads_bit_for_bit(wine):
    variants = {v.name: v for v in quantize_variants(wine)}
    assert list(variants) == ["int8-torch-dynamic", "int8-ort-dynamic"]
    variant = variants["int8-torch-dynamic"]
    assert variant.status == "ok", variant.reason
    assert variant.runtime == "torch" and variant.keep_calibration
    assert variant.card == {"quantize": "torch-dynamic-int8"}
    assert variant.details["quantized_layers"] == 3  # two hidden layers and the head
    fp32_bytes = len(st_save({k: v.contiguous() for k, v in wine.model.state_dict().items()}))
    assert variant.weights is not None and len(variant.weights) < fp32_bytes / 2
    assert not variant.weights.startswith(b"\x80")  # safetensors, not a pickle

    bundle = load_bundle(_files(wine, variant).get, "x")
    assert bundle.card["quantize"] == "torch-dynamic-int8"
    x = torch.as_tensor(wine.data.x_test)
    assert variant.model is not None
    with torch.inference_mode():
        expected, reloaded = variant.model(x), bundle.model(x)
    assert torch.equal(expected, reloaded)  # the very same int8 network
    assert _agreement(expected.numpy(), _fp32(wine, wine.data.x_test)) >= 0.9
    assert wine.model.__class__.__name__ != "DynamicQuantizedLinear"  # the parent is untouched
    assert any(isinstance(m, torch.nn.Linear) for m in wine.model.modules())


def test_an_unknown_quantize_kind_is_refused(wine):
    variant = next(v for v in quantize_variants(wine) if v.name == "int8-torch-dynamic")
    files = _files(wine, variant)
    files["model.json"] = json.dumps({**wine.card, "quantize": "int4-magic"}).encode()
    with pytest.raises(StoreError, match="int4-magic"):
        load_bundle(files.get, "x")


def test_a_stored_int8_layer_that_does_not_fit_is_refused(wine):
    from safetensors.torch import load as st_load

    variant = next(v for v in quantize_variants(wine) if v.name == "int8-torch-dynamic")
    files = _files(wine, variant)
    tensors = st_load(files["model.safetensors"])
    name = next(k for k in tensors if k.endswith(".weight_int8"))
    del tensors[name]
    files["model.safetensors"] = st_save(tensors)
    with pytest.raises(StoreError, match="weight_int8"):
        load_bundle(files.get, "x")


def test_ort_dynamic_int8_agrees_with_fp32_on_an_mlp(wine):
    variant = next(v for v in quantize_variants(wine) if v.name == "int8-ort-dynamic")
    assert variant.status == "ok", variant.reason
    assert variant.runtime == "onnx" and variant.model is wine.model
    assert variant.details["int8_bytes"] < variant.details["fp32_bytes"] / 2
    x = wine.data.x_test
    assert _agreement(_onnx(variant, x), _fp32(wine, x)) >= 0.9


def test_ort_static_and_dynamic_int8_of_a_cnn(digits):
    variants = {v.name: v for v in quantize_variants(digits)}
    assert [v.status for v in variants.values()] == ["ok", "ok"], variants
    x = digits.data.x_test[:200]
    fp32 = _fp32(digits, x)
    static = variants["int8-ort-static"]
    assert static.details["format"] == "QDQ" and static.details["calibration_rows"] == 256
    import onnx

    ops = {n.op_type for n in onnx.load_from_string(static.onnx).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    for variant in variants.values():
        assert _agreement(_onnx(variant, x), fp32) >= 0.9, variant.name


def test_a_method_that_cannot_quantize_the_model_does_not_stop_the_others(wine, monkeypatch):
    class NoLinear(torch.nn.Module):
        """A model without an nn.Linear: a matrix product of its own parameters."""

        def __init__(self, inputs: int, outputs: int) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(inputs, outputs) * 0.1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.weight

    no_linear = NoLinear(wine.data.schema.input_dim, 3).eval()
    job = dataclasses.replace(
        wine,
        model=no_linear,
        config=CompressConfig.model_validate(
            {"quantize": {"methods": ["torch-dynamic", "ort-dynamic", "torchao"]}}
        ),
    )
    monkeypatch.setitem(sys.modules, "torchao", None)  # `import torchao` fails
    made = {v.name: v for v in quantize_variants(job)}
    assert made["int8-torch-dynamic"].status == "skipped"
    assert "nn.Linear" in (made["int8-torch-dynamic"].reason or "")
    assert made["int8-ort-dynamic"].status == "ok"  # the MatMul of its own weight, int8
    assert made["int8-torchao"].status == "skipped"
    assert made["int8-torchao"].reason == "torchao is not installed: pip install torchao"

    # a model torch cannot export to ONNX: the ONNX Runtime methods fail, torch's is made
    def refuse(*args: Any, **kwargs: Any) -> bytes:
        raise StoreError("ONNX export failed with every exporter: dynamo: unsupported op")

    monkeypatch.setattr("danlu.export.export_onnx", refuse)
    job = dataclasses.replace(
        wine,
        config=CompressConfig.model_validate(
            {"quantize": {"methods": ["ort-dynamic", "torch-dynamic", "ort-static"]}}
        ),
    )
    made = {v.name: v for v in quantize_variants(job)}
    assert made["int8-torch-dynamic"].status == "ok"
    for name in ("int8-ort-dynamic", "int8-ort-static"):
        assert made[name].status == "failed"
        assert made[name].reason is not None and made[name].reason.startswith("StoreError: ")
        assert "unsupported op" in made[name].reason
