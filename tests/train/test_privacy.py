"""Differentially private training (``train.privacy``, ``danlu/train/_privacy.py``): the recipe
block, what DP refuses, the layers Opacus cannot train, an unreachable ε, Poisson batches, a DP
run that learns, the ε spent on the run / model card / version / trust report, and a resumed
run that spends exactly the ε of an uninterrupted one."""

from __future__ import annotations

import json
import re

import pytest
import torch

from danlu.errors import ConfigError, Preempted

BREAST = {
    "name": "dp",
    "data": {
        "source": "builtin:breast_cancer",
        "split": {"test": 0.2, "val": 0.1, "seed": 0},
        "prepare": {"scale": "standard"},
    },
    "task": "classification",
    "model": {"type": "mlp", "hidden": [16]},
    "train": {
        "epochs": 3,
        "batch_size": 64,
        "optimizer": {"name": "sgd", "lr": 0.5},
        "privacy": {"target_epsilon": 3.0, "max_grad_norm": 1.0},
    },
}


def _recipe(privacy=None, **train):
    recipe = {**BREAST, "train": {**BREAST["train"], **train}}
    if privacy is not None:
        recipe["train"]["privacy"] = privacy
    return recipe


@pytest.fixture(scope="module")
def dp_store(tmp_path_factory):
    from danlu.store import SqlStore

    return SqlStore(home=tmp_path_factory.mktemp("dp"))


@pytest.fixture(scope="module")
def dp_run(dp_store):
    """A 3-epoch DP run (ε = 3) on breast cancer."""
    from danlu.train import run_training

    return run_training(_recipe(), store=dp_store)


# -- the recipe ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("privacy", "fix"),
    [
        ({"target_epsilon": 3.0, "noise_multiplier": 1.0}, "exactly one of target_epsilon"),
        ({"max_grad_norm": 1.0}, "exactly one of target_epsilon"),
        ({"target_epsilon": -1.0}, "greater than 0"),
        ({"noise_multiplier": 1.0, "delta": 1.5}, "less than 1"),
        ({"noise_multiplier": 1.0, "accountant": "gdp"}, "'rdp' or 'prv'"),
        ({"noise_multiplier": 1.0, "epsilon": 3}, "epsilon"),
    ],
)
def test_a_bad_privacy_block_names_the_key_and_the_fix(privacy, fix):
    from danlu.config import load_recipe

    with pytest.raises(ConfigError, match=r"train\.privacy") as caught:
        load_recipe(_recipe(privacy))
    assert fix in str(caught.value)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"train": {"grad_clip": 1.0}}, "train.grad_clip"),
        ({"train": {"grad_accumulation": 2}}, "train.grad_accumulation"),
        ({"train": {"l1": 0.01}}, "train.l1"),
        ({"train": {"precision": "bf16"}}, "train.precision"),
        ({"model": {"type": "gbdt"}}, "model.type"),
        ({"data": {**BREAST["data"], "augment": [{"mixup": 0.2}]}}, "data.augment"),
    ],
)
def test_what_dp_cannot_combine_with_is_refused_before_the_run(changes, key):
    from danlu.train import make_context

    recipe = _recipe(**changes.get("train", {}))
    recipe.update({k: v for k, v in changes.items() if k != "train"})
    with pytest.raises(ConfigError, match=re.escape(key)) as caught:
        make_context(recipe)
    assert "privacy" in str(caught.value) or "DP" in str(caught.value)


def test_batch_norm_is_refused_naming_the_layer_and_the_fix(dp_store):
    from danlu.train import run_training

    recipe = _recipe()
    recipe["model"] = {"type": "mlp", "hidden": [16], "batch_norm": True}
    with pytest.raises(ConfigError) as caught:
        run_training(recipe, store=dp_store)
    message = str(caught.value)
    assert "(BatchNorm1d)" in message
    assert re.search(r"'net\.\d+' \(BatchNorm1d\)|'\w[\w.]*' \(BatchNorm1d\)", message)
    assert "batch_norm: false" in message and "GroupNorm" in message


def test_an_unreachable_epsilon_names_the_smallest_reachable_one(dp_store):
    from danlu.train import run_training
    from danlu.train._privacy import _noise_for

    with pytest.raises(ConfigError, match=r"train\.privacy\.target_epsilon") as caught:
        run_training(_recipe({"target_epsilon": 0.01}), store=dp_store)
    message = str(caught.value)
    found = re.search(r"smallest reachable ε is (\d+(?:\.\d+)?)", message)
    assert found, message
    floor = float(found.group(1))
    assert 0.01 < floor < 1.0
    assert "398 training rows" in message and "3 epochs" in message
    # the number is right: just above it is reachable, just below it is not
    from danlu.config import PrivacyConfig

    q, steps = 64 / 398, 3 * 7
    above = PrivacyConfig(target_epsilon=floor * 1.02)
    assert _noise_for(above, q, steps, "here") > 10  # reachable, with a great deal of noise
    with pytest.raises(ConfigError):
        _noise_for(PrivacyConfig(target_epsilon=floor * 0.9), q, steps, "here")


# -- the engine ---------------------------------------------------------------------------------
def test_poisson_batches_draw_each_row_on_its_own_with_the_sample_rate():
    from danlu.train._privacy import poisson_batches

    rows, q, batches = 500, 0.1, 400
    drawn = list(poisson_batches(rows, q, batches, torch.Generator().manual_seed(3)))
    sizes = torch.tensor([len(b) for b in drawn], dtype=torch.float64)
    assert len(drawn) == batches
    assert sizes.mean().item() == pytest.approx(rows * q, rel=0.03)
    # Binomial(N, q): variance N q (1 - q), not the 0 of fixed-size batches
    assert sizes.var().item() == pytest.approx(rows * q * (1 - q), rel=0.25)
    counts = torch.zeros(rows)
    for b in drawn:
        assert len(set(b.tolist())) == len(b)  # without replacement inside a batch
        counts[b] += 1
    assert counts.mean().item() == pytest.approx(q * batches, rel=0.03)  # every row, alike
    again = list(poisson_batches(rows, q, batches, torch.Generator().manual_seed(3), start=390))
    assert [b.tolist() for b in again] == [b.tolist() for b in drawn[390:]]  # resumed epoch


def test_the_epsilon_spent_is_opacus_own_computed_once_per_noise():
    from opacus.accountants import PRVAccountant, RDPAccountant

    from danlu.train._privacy import spent_epsilon

    for accountant in (RDPAccountant(), PRVAccountant()):
        assert spent_epsilon(accountant, 1e-5) == 0.0  # nothing spent before the first step
        accountant.history = [(1.3, 0.16, 40), (0.9, 0.2, 3)]  # a resumed run: two settings
        assert spent_epsilon(accountant, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5))
    more = RDPAccountant()
    more.history = [(1.3, 0.16, 80)]
    assert spent_epsilon(more, 1e-5) > spent_epsilon(RDPAccountant(), 1e-5)


def test_a_second_dp_training_adds_its_steps_to_the_first(dp_run):
    """A compressed variant fine-tuned with DP-SGD (compress/_finetune.py): its card's ε is the
    total of both trainings, as one accountant over both trainings' steps."""
    from opacus.accountants import RDPAccountant

    from danlu.train._privacy import composed_record

    first = dp_run.details["privacy"]
    then = {**first, "noise_multiplier": 2.0, "steps": 7}
    total = composed_record(first, then)
    accountant = RDPAccountant()
    accountant.history = [(first["noise_multiplier"], first["sample_rate"], first["steps"])]
    accountant.history.append((2.0, first["sample_rate"], 7))
    assert total["epsilon"] == pytest.approx(accountant.get_epsilon(1e-5))
    assert total["epsilon"] > first["epsilon"] and total["steps"] == first["steps"] + 7
    again = composed_record(total, then)  # a third training: three entries, not nested
    assert len(again["trainings"]) == 3 and again["epsilon"] > total["epsilon"]


def test_a_dp_run_learns_and_records_the_epsilon_it_spent(dp_run, dp_store):
    assert dp_run.metrics["accuracy"] > 0.75  # chance (the larger class) is ~0.63
    run = dp_store.get_run(dp_run.run_id)
    record = dp_run.details["privacy"]
    assert 0 < record["epsilon"] <= 3.0 + 0.02  # the accountant stayed within the target
    assert record["delta"] == 1e-5 and record["accountant"] == "rdp"
    assert record["steps"] == 3 * 7  # ceil(398 / 64) Poisson batches a epoch, 3 epochs
    assert record["sample_rate"] == pytest.approx(64 / 398)
    assert record["noise_multiplier"] > 0.5
    assert run.metrics["privacy_epsilon"] == pytest.approx(record["epsilon"])
    assert run.metrics["privacy_delta"] == 1e-5
    assert run.metrics["privacy_noise_multiplier"] == pytest.approx(record["noise_multiplier"])
    card = json.loads(dp_store.artifact_path(dp_run.run_id, "model.json").read_text())
    assert card["privacy"]["epsilon"] == pytest.approx(record["epsilon"])
    # Opacus leaves nothing on the trained model: no hooks, no per-row gradients
    assert not any(m._forward_hooks for m in dp_run.model.modules())
    assert not any(hasattr(p, "grad_sample") for p in dp_run.model.parameters())


def test_a_fixed_noise_multiplier_spends_more_epsilon_when_it_is_smaller(dp_store):
    from danlu.train import run_training

    loud = run_training(_recipe({"noise_multiplier": 2.0}, epochs=1), store=dp_store)
    quiet = run_training(_recipe({"noise_multiplier": 0.8}, epochs=1), store=dp_store)
    assert loud.details["privacy"]["noise_multiplier"] == 2.0
    assert 0 < loud.details["privacy"]["epsilon"] < quiet.details["privacy"]["epsilon"]
    assert loud.details["privacy"]["target_epsilon"] is None


def test_a_resumed_run_spends_the_epsilon_of_an_uninterrupted_one(dp_store, monkeypatch):
    """SIGTERM in the 10th training batch (epoch 2): the accountant's history is in the
    checkpoint, so the resumed run ends with the same steps, the same ε and the same weights."""
    from danlu.train import run_training
    from danlu.train._runner import run_of

    recipe = _recipe()
    recipe["model"] = {"type": "tests.train.test_preempt:build", "hidden": [16]}
    full = run_training(recipe, store=dp_store)
    monkeypatch.setenv("DANLU_TEST_SIGTERM_AT", "10")
    with pytest.raises(Preempted) as stopped:
        run_training(recipe, store=dp_store)
    run_id = run_of(stopped.value)
    assert run_id is not None
    monkeypatch.delenv("DANLU_TEST_SIGTERM_AT")
    resumed = run_training(recipe, store=dp_store, resume=run_id)
    assert resumed.details["privacy"]["steps"] == full.details["privacy"]["steps"] == 21
    assert resumed.details["privacy"]["epsilon"] == full.details["privacy"]["epsilon"]
    assert dp_store.get_run(run_id).metrics["privacy_epsilon"] == pytest.approx(
        full.details["privacy"]["epsilon"]
    )
    assert resumed.history == full.history
    state, ref = resumed.model.state_dict(), full.model.state_dict()
    assert all(torch.equal(state[k], ref[k]) for k in ref)


# -- the model version and the trust report ---------------------------------------------------
def _quick_evaluate() -> dict:
    """Only the sections this test needs (the others are every report's, tested elsewhere)."""
    from danlu.config import EvaluateConfig

    off = ("calibration", "robustness", "explain", "cost", "membership")
    block = {key: False for key in off if key in EvaluateConfig.model_fields}
    return {"bootstrap": 0, "baselines": False, "training": False, **block}


def test_the_version_and_the_trust_report_carry_the_epsilon_spent(dp_store):
    import danlu
    from danlu.evaluate import EvalData, build_report, evaluate_model
    from danlu.evaluate._privacy_budget import privacy_section
    from danlu.store._crypt import read_bytes

    recipe = _recipe({"target_epsilon": 8.0, "max_grad_norm": 1.0}, epochs=2)
    recipe.update(evaluate=_quick_evaluate(), register={"name": "dp-bc"})
    result = danlu.run(recipe, store=dp_store)
    record = result.details["privacy"]
    section = result.report.section("privacy")
    assert section is not None and section.data["trained_with_dp"] is True
    assert section.data["epsilon"] == pytest.approx(record["epsilon"])
    for key in ("delta", "noise_multiplier", "max_grad_norm", "sample_rate", "steps"):
        assert section.data[key] == record[key]
    assert section.data["accountant"] == "rdp"
    assert f"ε = {record['epsilon']:.3g}" in result.report.summary
    assert not section.flags  # ε ≤ 10 and δ < 1 / rows: nothing for a reviewer to see
    version = dp_store.get_model_version("dp-bc", 1)
    assert version.tags["privacy.epsilon"] == f"{record['epsilon']:.4g}"
    assert version.tags["privacy.delta"] == "1e-05"
    card = json.loads(read_bytes(dp_store.model_version_path("dp-bc", 1, "model.json")))
    assert card["privacy"]["epsilon"] == pytest.approx(record["epsilon"])
    # the stored version's report reads the ε from its model card
    again = evaluate_model("dp-bc:1", store=dp_store)
    assert again.section("privacy").data["epsilon"] == pytest.approx(record["epsilon"])
    # a model trained without DP has no privacy section; a weak ε or a large δ is flagged
    from danlu.config import EvaluateConfig
    from danlu.data import prepare_data
    from danlu.tasks import get_task

    config = EvaluateConfig.model_validate(_quick_evaluate())
    task = get_task("classification")
    prepared = prepare_data(danlu.config.load_recipe(recipe).data, task)
    plain = build_report(EvalData.from_prepared(result.model, task, prepared), config, subject={})
    assert plain.section("privacy") is None
    weak = EvalData.from_prepared(
        result.model, task, prepared, privacy={**record, "epsilon": 30.0, "delta": 0.01}
    )
    flags = privacy_section(weak).flags
    twice = EvalData.from_prepared(
        result.model, task, prepared, privacy={**record, "trainings": [record, record]}
    )
    assert privacy_section(twice).data["trainings"] == 2
    assert len(flags) == 2 and "weak" in flags[0] and "1 / training rows" in flags[1]
