"""Pruning (danlu/compress/_prune.py) and rebuilding a pruned network (danlu/models/_resize.py)."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from typing import Any

import pytest
import torch
from safetensors.torch import save as st_save

from danlu.compress._prune import output_layer, prune_variants
from danlu.config import load_recipe
from danlu.errors import ConfigError, StoreError
from danlu.models import load_bundle
from danlu.models._resize import resize_to_state
from danlu.store import SqlStore
from tests.compress.test_finetune import WINE, run_files, trained_job

MLP = {**WINE, "model": {"type": "mlp", "hidden": [32, 16], "batch_norm": True}}
DIGITS: dict[str, Any] = {
    "name": "digits-prune",
    "data": {
        "source": "builtin:digits",
        "split": {"test": 0.2, "val": 0.1, "seed": 0},
        "prepare": {"scale": "minmax"},
    },
    "task": "classification",
    "model": {"type": "cnn", "channels": [8, 16], "hidden": 16, "dropout": 0.0},
    "train": {
        "epochs": 1,
        "batch_size": 64,
        "optimizer": {"name": "adam", "lr": 0.01},
        "device": "cpu",
        "checkpoint": {"every": 0},
    },
}


@pytest.fixture
def store(tmp_path):
    store = SqlStore(home=tmp_path / "home")
    yield store
    store.close()


def round_trip(job: Any, card: dict[str, Any], model: torch.nn.Module, x: Any) -> None:
    """The variant saved as the stage saves it loads back through load_bundle, same outputs."""
    files = {
        "model.json": json.dumps(card).encode(),
        "preprocessing.json": json.dumps(job.data.preprocessor.to_dict()).encode(),
        "model.safetensors": st_save({k: v.contiguous() for k, v in model.state_dict().items()}),
    }
    loaded = load_bundle(files.get, "x").model.eval()
    x = torch.as_tensor(x)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_unstructured_pruning_reaches_the_sparsity_and_keeps_zeros_through_fine_tuning(store):
    job = trained_job(store, MLP, prune={"sparsity": 0.6, "steps": 2, "finetune_epochs": 2})
    (variant,) = prune_variants(job)
    assert variant.status == "ok", variant.reason
    assert (variant.name, variant.method, variant.runtime) == ("pruned-60", "prune", "onnx")
    model = variant.model
    assert model is not None and model is not job.model
    state = model.state_dict()
    assert not any(k.endswith(("_orig", "_mask")) for k in state)  # a plain state dict
    layers = ["0.weight", "4.weight"]  # the hidden layers; 8.weight is the output head
    total = sum(state[k].numel() for k in layers)
    zeros = sum(int((state[k] == 0).sum()) for k in layers)
    # fine-tuning with the masks in place: exactly the target's count of weights are zero
    assert zeros == round(total * 0.6)
    assert variant.details["sparsity"] == pytest.approx(zeros / total)
    assert variant.details["parameters"] == sum(p.numel() for p in model.parameters())
    assert int((state["8.weight"] == 0).sum()) == 0  # the head is not pruned
    assert float(job.model.state_dict()["0.weight"].eq(0).float().mean()) < 0.01  # untouched
    runs = variant.details["runs"]
    assert len(runs) == 2 and variant.run_id == runs[-1]
    steps = [store.get_run(r).tags["prune_step"] for r in runs]
    assert steps == ["1/2", "2/2"]
    assert all(store.get_run(r).parent_id == job.run_id for r in runs)
    # the last child run holds the pruned model itself
    bundle = load_bundle(run_files(store, variant.run_id), "run")
    assert torch.equal(bundle.model.state_dict()["0.weight"], state["0.weight"])
    round_trip(job, job.card, model, job.data.x_test)


def test_structured_pruning_removes_neurons_and_loads_back(store):
    job = trained_job(
        store, MLP, prune={"sparsity": 0.5, "structured": True, "norm": "l1", "finetune_epochs": 1}
    )
    (variant,) = prune_variants(job)
    assert variant.status == "ok", variant.reason
    assert variant.name == "pruned-50-structured" and variant.card == {"resized": True}
    assert variant.details["channels"] == {"0": [32, 16], "4": [16, 8]}
    assert variant.details["parameters"] < variant.details["parameters_before"]
    model = variant.model
    assert model is not None
    assert (model[0].out_features, model[1].num_features, model[8].in_features) == (16, 16, 8)
    assert model[8].out_features == 3  # the head keeps every output
    card = {**job.card, **variant.card}
    round_trip(job, card, model, job.data.x_test)
    child = json.loads(store.artifact_path(variant.run_id, "model.json").read_text())
    assert child["resized"] is True
    bundle = load_bundle(run_files(store, variant.run_id), "run")
    x = torch.as_tensor(job.data.x_test)
    with torch.no_grad():
        assert torch.equal(bundle.model.eval()(x), model(x))


def test_structured_pruning_of_the_digits_cnn(store):
    job = trained_job(
        store, DIGITS, prune={"sparsity": 0.5, "structured": True, "steps": 2, "finetune_epochs": 1}
    )
    (variant,) = prune_variants(job)
    assert variant.status == "ok", variant.reason
    channels = variant.details["channels"]
    assert channels["features.0"] == [8, 4] and channels["features.4"] == [16, 8]
    assert channels["head.2"] == [16, 8]
    assert variant.details["parameters"] < 0.5 * variant.details["parameters_before"]
    assert len(variant.details["runs"]) == 2
    round_trip(job, {**job.card, **variant.card}, variant.model, job.data.x_test[:50])


def test_sparsity_outside_0_1_is_refused_naming_the_key():
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match=r"compress\.prune\.sparsity"):
            load_recipe({**WINE, "compress": {"prune": {"sparsity": bad}}})


def test_a_layer_left_without_neurons_fails_before_training(store):
    recipe = {**WINE, "model": {"type": "mlp", "hidden": [2]}}
    job = trained_job(store, recipe, prune={"sparsity": 0.9, "structured": True})
    runs = len(store.search_runs())
    (variant,) = prune_variants(job)
    assert variant.status == "failed" and variant.model is None
    assert "layer '0' (2 outputs)" in (variant.reason or "")
    assert "Lower compress.prune.sparsity below 0.5" in (variant.reason or "")
    assert len(store.search_runs()) == runs  # nothing was fine-tuned


def test_models_torch_pruning_cannot_handle_are_skipped(store):
    job = trained_job(store, WINE, prune={"sparsity": 0.5, "structured": True})
    for kind in ("transformer", "gbdt"):
        other = dataclasses.replace(job, card={**job.card, "type": kind})
        (variant,) = prune_variants(other)
        assert variant.status == "skipped" and kind in (variant.reason or "")
        assert "prune.structured: false" in (variant.reason or "")


def test_structured_pruning_without_torch_pruning_says_how_to_install(store, monkeypatch):
    job = trained_job(store, WINE, prune={"sparsity": 0.5, "structured": True})
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # import fails
    (variant,) = prune_variants(job)
    assert variant.status == "skipped"
    assert "pip install 'danlu[compress]'" in (variant.reason or "")


def test_a_model_without_weights_to_prune_is_skipped(store):
    job = trained_job(store, WINE, prune={"sparsity": 0.5})
    only_head = dataclasses.replace(job, model=torch.nn.Sequential(torch.nn.Linear(13, 3)))
    (variant,) = prune_variants(only_head)
    assert variant.status == "skipped" and "no weights to prune" in (variant.reason or "")


def test_no_prune_block_makes_no_variant(store):
    job = trained_job(store, WINE)
    assert prune_variants(job) == []


def test_the_output_layer_is_the_last_with_the_outputs():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 5))
    assert output_layer(net, 3) == "0"
    assert output_layer(net, 7) == "1"
    assert output_layer(torch.nn.ReLU()) is None


def _mlp() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.LayerNorm(6), torch.nn.Linear(6, 2)
    )


def test_resize_to_state_fits_every_layer_kind():
    small = torch.nn.Sequential(
        torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 2)
    )
    conv = torch.nn.Sequential(torch.nn.Conv1d(2, 5, 3), torch.nn.Embedding(10, 5))
    conv_small = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3), torch.nn.Embedding(10, 4))
    for big, stored in ((_mlp(), small), (conv, conv_small)):
        tensors = stored.state_dict()
        resize_to_state(big, tensors, "x")
        big.load_state_dict(tensors)
        for (name, a), b in zip(big.state_dict().items(), tensors.values(), strict=True):
            assert torch.equal(a, b), name
    x = torch.randn(5, 4)
    assert torch.equal(_resized(small)(x.clone()), small.eval()(x))


def _resized(stored: torch.nn.Module) -> torch.nn.Module:
    model = _mlp()
    resize_to_state(model, stored.state_dict(), "x")
    model.load_state_dict(stored.state_dict())
    return model.eval()


@pytest.mark.parametrize(
    ("tensor", "shape", "found"),
    [
        ("0.weight", (3,), "has 1 dimensions"),  # a Linear weight must be 2-D
        ("0.bias", (5,), "needs [6]"),  # does not fit the layer's weight
        ("1.running_mean", (3,), "does not fit"),  # BatchNorm's tensors disagree
    ],
)
def test_resize_to_state_refuses_shapes_no_layer_explains(tensor, shape, found):
    tensors = dict(_mlp().state_dict())
    tensors[tensor] = torch.zeros(shape)
    with pytest.raises(StoreError, match=rf"run 7: the tensor '{tensor}'.*{re.escape(found)}"):
        resize_to_state(_mlp(), tensors, "run 7")


def test_resize_to_state_refuses_a_layer_it_cannot_resize():
    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(4))

    with pytest.raises(StoreError, match="'scale' has shape \\[3\\].*Scaled"):
        resize_to_state(Scaled(), {"scale": torch.ones(3)}, "run 7")
    with pytest.raises(StoreError, match="kernel"):
        resize_to_state(
            torch.nn.Conv2d(2, 4, 3), {"weight": torch.ones(3, 2, 5, 5), "bias": torch.ones(3)}, "r"
        )


def test_a_text_cnn_pruned_by_torch_pruning_loads_back():
    """text_cnn is among the structured types: its pruned convolutions (and the head's inputs,
    next to the tabular columns) are rebuilt from the stored tensors."""
    import torch_pruning as tp

    from tests.models.test_text_models import build, text_schema, token_rows

    schema = text_schema(tabular=2)
    options = {"type": "text_cnn", "embedding": 16, "channels": 8, "kernels": [2, 3]}
    model = build(schema, **options).eval()
    x = torch.cat([token_rows([5, 9, 16, 3]), torch.randn(4, 2)], 1)  # (4, L + 2)
    head = output_layer(model, 3)
    assert head == "head.1"
    tp.pruner.MetaPruner(
        model,
        x[:2],
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=[dict(model.named_modules())[head]],
    ).step()
    assert model.head[1].in_features == 2 * 4 + 2
    fresh = build(schema, **options).eval()
    resize_to_state(fresh, model.state_dict(), "x")
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
