"""Low-rank factorisation: the SVD layers (danlu/models/_lowrank.py) and the compression method
(danlu/compress/_lowrank.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from safetensors.torch import save as st_save
from torch import nn

from danlu.compress import CompressJob
from danlu.compress._lowrank import lowrank_variants
from danlu.config import load_recipe
from danlu.errors import StoreError
from danlu.models import load_bundle
from danlu.models._lowrank import LowRankLinear, factorize, factorize_structure, keep_rank
from danlu.store import SqlStore
from danlu.train import run_training


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(48, 64), nn.ReLU(), nn.Sequential(nn.Linear(64, 40)), nn.Linear(40, 3)
    )


# -- the layers ---------------------------------------------------------------------------------
def test_the_factorised_layer_is_the_best_rank_r_approximation():
    net = _net()
    weight, bias = net[0].weight.detach().clone(), net[0].bias.detach().clone()  # (64, 48)
    ranks = factorize(net, rank=8, min_features=32)
    assert ranks == {"0": 8, "2.0": 8}  # the 40 × 3 head is below min_features
    layer = net[0]
    assert isinstance(layer, LowRankLinear) and layer.first.bias is None
    approx = layer.second.weight @ layer.first.weight  # (64, 8) @ (8, 48)
    singular = torch.linalg.svdvals(weight.double())
    error = torch.linalg.matrix_norm(weight.double() - approx.double())  # Frobenius
    assert error.item() == pytest.approx(singular[8:].pow(2).sum().sqrt().item(), rel=1e-4)
    assert error > 0.1  # something was discarded: the equality above is not 0 == 0
    assert torch.equal(layer.second.bias, bias)
    x = torch.randn(5, 48)
    assert torch.allclose(layer(x), x @ approx.T + bias, atol=1e-5)
    assert isinstance(net[3], nn.Linear)  # left whole


def test_full_rank_reproduces_the_layer_but_is_not_kept_when_it_saves_nothing():
    net = _net()
    x = torch.randn(4, 48)
    reference = net(x)
    assert factorize(net, rank=1000, min_features=2) == {}  # r·(in+out) ≥ in·out everywhere
    assert torch.equal(net(x), reference)
    # r·(48 + 64) < 48·64 holds for r ≤ 27; the 64 → 40 layer would need r ≤ 24
    assert factorize(net, rank=27, min_features=32) == {"0": 27}


def test_energy_keeps_the_fewest_singular_values_holding_that_share():
    singular = torch.tensor([4.0, 2.0, 1.0, 1.0])  # squares 16, 4, 1, 1 of 22
    assert keep_rank(singular, rank=None, energy=16 / 22) == 1
    assert keep_rank(singular, rank=None, energy=0.8) == 2  # 20/22 = 0.909
    assert keep_rank(singular, rank=None, energy=0.95) == 3  # 21/22 = 0.955
    assert keep_rank(singular, rank=None, energy=1.0) == 4
    assert keep_rank(singular, rank=9, energy=None) == 4
    net = _net()
    ranks = factorize(net, energy=0.5, min_features=32)
    s = torch.linalg.svdvals(_net()[0].weight.detach().double())
    share = (s**2).cumsum(0) / (s**2).sum()
    r = ranks["0"]
    assert share[r - 1] >= 0.5 > share[r - 2]


def test_the_structure_is_rebuilt_from_the_ranks_and_bad_cards_are_refused():
    net = _net()
    ranks = factorize(net, rank=6)
    fresh = factorize_structure(_net(seed=1), ranks, where="m")
    fresh.load_state_dict(net.state_dict())
    x = torch.randn(3, 48)
    assert torch.equal(fresh(x), net(x))
    with pytest.raises(StoreError, match=r"'1'.*ReLU.*not a Linear"):
        factorize_structure(_net(), {"1": 4}, where="m")
    with pytest.raises(StoreError, match=r"'nope'.*nothing"):
        factorize_structure(_net(), {"nope": 4}, where="m")
    with pytest.raises(StoreError, match=r"rank 99.*1 to 48"):
        factorize_structure(_net(), {"0": 99}, where="m")
    with pytest.raises(StoreError, match="must map module paths"):
        factorize_structure(_net(), [4], where="m")  # type: ignore[arg-type]


# -- the compression method ---------------------------------------------------------------------
WINE: dict[str, Any] = {
    "name": "wine-lr",
    "data": {"source": "builtin:wine", "split": {"test": 0.2, "val": 0.1, "seed": 0}},
    "task": "classification",
    "model": {"type": "mlp", "hidden": [64, 64]},
    "train": {"epochs": 3, "batch_size": 32, "device": "cpu", "optimizer": {"lr": 0.01}},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    store = SqlStore(home=tmp_path_factory.mktemp("home"))
    yield store, run_training(WINE, store=store)
    store.close()


def _job(store: SqlStore, result, recipe: dict[str, Any] = WINE, **low_rank: Any) -> CompressJob:
    from danlu.train._run import prepare_recipe_data

    card = json.loads(store.artifact_path(result.run_id, "model.json").read_text())
    loaded = load_recipe({**recipe, "compress": {"quantize": False, "low_rank": low_rank}})
    assert loaded.compress is not None
    return CompressJob(
        config=loaded.compress,
        recipe=loaded,
        model=result.model.cpu().eval(),
        card=card,
        task=result.task,
        data=prepare_recipe_data(loaded, result.task),
        store=store,
        run_id=result.run_id,
    )


def _round_trip(store: SqlStore, job: CompressJob, card: dict[str, Any], model: nn.Module):
    """What the stage registers (the parent's card updated, the state dict), loaded back."""
    files = {
        "model.json": json.dumps({**job.card, **card}).encode(),
        "model.safetensors": st_save(model.state_dict()),
        "preprocessing.json": store.artifact_path(job.run_id, "preprocessing.json").read_bytes(),
    }
    return load_bundle(files.get, "low-rank").model


def test_the_variant_is_factorised_fine_tuned_and_loads_from_its_card(trained):
    store, result = trained
    job = _job(store, result, rank=4, finetune_epochs=2)
    parent = {k: v.clone() for k, v in job.model.state_dict().items()}
    [variant] = lowrank_variants(job)
    assert (variant.name, variant.method, variant.runtime, variant.status) == (
        "low-rank-4",
        "low_rank",
        "onnx",
        "ok",
    )
    # the 13-wide input layer and the 3-wide head are below min_features (32)
    assert variant.card == {"low_rank": {"3": 4}} and variant.details["ranks"] == {"3": 4}
    details = variant.details
    assert details["parameters_after"] == sum(p.numel() for p in variant.model.parameters())
    assert details["parameters_before"] - details["parameters_after"] == 64 * 64 - 4 * 128
    run = store.get_run(variant.run_id)
    assert run.parent_id == result.run_id and run.tags["compression"] == "low-rank-4"
    assert all(torch.equal(v, parent[k]) for k, v in job.model.state_dict().items())
    loaded = _round_trip(store, job, variant.card, variant.model)
    x = torch.as_tensor(job.data.x_test)
    with torch.inference_mode():
        assert torch.equal(loaded(x), variant.model(x))


def test_energy_without_fine_tuning_round_trips(trained):
    store, result = trained
    job = _job(store, result, energy=0.6, finetune_epochs=0)
    [variant] = lowrank_variants(job)
    assert variant.name == "low-rank-0.6" and variant.run_id is None
    loaded = _round_trip(store, job, variant.card, variant.model)
    x = torch.as_tensor(job.data.x_test)
    with torch.inference_mode():
        assert torch.equal(loaded(x), variant.model(x))


def test_a_model_with_nothing_to_factorise_is_skipped_with_the_reason(trained):
    store, result = trained
    job = _job(store, result, rank=4, min_features=100)
    [variant] = lowrank_variants(job)
    assert variant.status == "skipped" and variant.model is None
    assert "min_features (100)" in (variant.reason or "")
    job = _job(store, result, rank=40)  # 40·(64 + 64) ≥ 64·64: nothing saved
    [variant] = lowrank_variants(job)
    assert variant.status == "skipped" and "fewer weights" in (variant.reason or "")
