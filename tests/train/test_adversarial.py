"""Adversarial training (``train.adversarial``, ``danlu/train/_adversarial.py``) and its gain in
the trust report (``danlu/evaluate/_adversarial_gain.py``): the recipe block, what it refuses
(categorical-only and text inputs, gbdt, DP), perturbations inside the ε-ball on the continuous
columns only, a run that trains, and the report comparing it with standard training."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from danlu.errors import ConfigError

DIGITS = {
    "name": "adv",
    "data": {
        "source": "builtin:digits",
        "split": {"test": 0.2, "val": 0.1, "seed": 0},
        "prepare": {"scale": "minmax"},
    },
    "task": "classification",
    "model": {"type": "mlp", "hidden": [32]},
    "train": {
        "epochs": 2,
        "batch_size": 64,
        "optimizer": {"name": "adam", "lr": 3e-3},
        "adversarial": {"method": "pgd", "epsilon": 0.1, "steps": 3},
    },
}

TINY_REPORT = {
    "bootstrap": 0,
    "baselines": False,
    "calibration": False,
    "explain": False,
    "membership": False,
    "cost": False,
    "robustness": {"pgd": [0.1], "samples": 120},
}


def _recipe(adversarial=None, **changes):
    recipe = {**DIGITS, "train": {**DIGITS["train"]}, **changes}
    if adversarial is not None:
        recipe["train"]["adversarial"] = adversarial
    return recipe


# -- the recipe ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("adversarial", "fix"),
    [
        ({"method": "pgd"}, "epsilon"),
        ({"epsilon": 0.0}, "greater than 0"),
        ({"epsilon": 0.1, "ratio": 1.5}, "less than or equal to 1"),
        ({"epsilon": 0.1, "ratio": 0}, "greater than 0"),
        ({"epsilon": 0.1, "method": "cw"}, "'pgd' or 'fgsm'"),
        ({"epsilon": 0.1, "method": "fgsm", "steps": 5}, "only apply to method pgd"),
        ({"epsilon": 0.1, "eps": 0.1}, "eps"),
    ],
)
def test_a_bad_adversarial_block_names_the_key_and_the_fix(adversarial, fix):
    from danlu.config import load_recipe

    with pytest.raises(ConfigError, match=r"train\.adversarial") as caught:
        load_recipe(_recipe(adversarial))
    assert fix in str(caught.value)


def test_defaults_follow_the_robustness_section():
    from danlu.config import AdversarialConfig, load_recipe

    config = load_recipe(_recipe({"epsilon": 0.2})).train.adversarial
    assert config == AdversarialConfig(epsilon=0.2)
    assert (config.method, config.steps, config.ratio) == ("pgd", 10, 1.0)
    assert config.alpha == pytest.approx(2.5 * 0.2 / 10)  # the report's PGD step
    assert AdversarialConfig(method="fgsm", epsilon=0.2).alpha == 0.2
    assert AdversarialConfig(epsilon=0.2, steps=4, step_size=0.07).alpha == 0.07


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"model": {"type": "gbdt"}}, "model.type"),
        (
            {"train": {**DIGITS["train"], "distributed": {"strategy": "fsdp"}}},
            "train.distributed.strategy",
        ),
        ({"train": {**DIGITS["train"], "privacy": {"noise_multiplier": 1.0}}}, "train.adversarial"),
    ],
)
def test_what_adversarial_training_cannot_combine_with_is_refused_before_the_run(changes, key):
    from danlu.train import make_context

    with pytest.raises(ConfigError, match=re.escape(key)) as caught:
        make_context(_recipe(**changes))
    assert "adversarial" in str(caught.value)


def test_categorical_only_inputs_are_refused_naming_the_key_and_why(tmp_path):
    from danlu.train import run_training

    rng = np.random.default_rng(0)
    rows = 120
    colour = rng.choice(["red", "green", "blue"], rows)
    size = rng.choice(["s", "m", "l"], rows)
    label = np.where(colour == "red", "yes", "no")
    path = tmp_path / "cats.csv"
    path.write_text(
        "colour,size,label\n"
        + "".join(f"{c},{s},{y}\n" for c, s, y in zip(colour, size, label, strict=True))
    )
    recipe = _recipe(
        data={"source": str(path), "target": "label", "split": {"test": 0.2, "val": 0.1}},
        model={"type": "mlp", "hidden": [8]},
    )
    with pytest.raises(ConfigError, match=r"train\.adversarial") as caught:
        run_training(recipe, home=tmp_path / "store")
    message = str(caught.value)
    assert "no continuous input column" in message
    assert "colour (categorical)" in message and "size (categorical)" in message
    assert "Remove train.adversarial" in message


def test_text_inputs_are_refused():
    from danlu.data import Feature, FeatureSchema
    from danlu.train._adversarial import continuous_columns

    schema = FeatureSchema(
        (Feature("x", "numeric"), Feature("body", "text", max_length=3, vocab_size=50)),
        "y",
        "classification",
        ("a", "b"),
        None,
        None,
        None,
        0,
        ("x", "body#0", "body#1", "body#2"),
    )
    with pytest.raises(ConfigError, match=r"train\.adversarial.*text columns \(body\)"):
        continuous_columns(schema)


# -- what moves ---------------------------------------------------------------------------------
def test_the_continuous_columns_are_the_robustness_sections(tmp_path):
    """Titanic mixes numeric and categorical features: the columns adversarial training moves
    are exactly the ones the trust report's attacks move."""
    from danlu.config import DataConfig
    from danlu.data import prepare_data
    from danlu.evaluate import input_groups
    from danlu.tasks import get_task
    from danlu.train._adversarial import continuous_columns

    prepared = prepare_data(
        DataConfig(source="builtin:titanic", split={"test": 0.2, "val": 0.1}),
        get_task("classification"),
    )
    schema = prepared.schema
    mask = continuous_columns(schema)
    expected = np.zeros(len(schema.encoded_names), dtype=bool)
    for group in input_groups(schema):
        if group.continuous:
            expected[list(group.columns)] = True
    assert mask.tolist() == expected.tolist()
    assert 0 < mask.sum() < len(mask)  # some one-hot columns stay
    assert all("=" in n for n, m in zip(schema.encoded_names, mask, strict=True) if not m)


@pytest.mark.parametrize("method", ["pgd", "fgsm"])
def test_perturbations_stay_in_the_ball_on_the_continuous_columns_only(method):
    from danlu.config import AdversarialConfig
    from danlu.train._adversarial import Adversary

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    mask = torch.tensor([True, True, False, True, False, False])
    config = AdversarialConfig(method=method, epsilon=0.3)
    grads_before = [p.grad for p in model.parameters()]
    x_adv = Adversary(config, mask, seed=1).perturb(
        model, x, y, torch.nn.CrossEntropyLoss(), position=7
    )
    delta = x_adv - x  # (40, 6)
    assert delta.abs().max() <= 0.3 + 1e-6
    assert (delta[:, ~mask] == 0).all()  # one-hot columns never move
    assert (delta[:, mask].abs() > 0).float().mean() > 0.9  # the others do
    if method == "fgsm":
        assert torch.allclose(delta[:, mask].abs(), torch.full_like(delta[:, mask], 0.3))
    assert [p.grad for p in model.parameters()] == grads_before  # parameters' grads untouched
    assert model.training  # mode restored
    loss = torch.nn.CrossEntropyLoss()
    assert loss(model(x_adv), y) > loss(model(x), y)  # the attack raises the loss


def test_ratio_replaces_that_share_of_the_batch_and_is_seeded():
    from danlu.config import AdversarialConfig
    from danlu.train._adversarial import Adversary

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    x, y = torch.randn(10, 4), torch.randint(0, 2, (10,))
    adversary = Adversary(
        AdversarialConfig(epsilon=0.1, steps=1, step_size=0.01, ratio=0.5),
        torch.ones(4, dtype=torch.bool),
    )
    x_adv = adversary.perturb(model, x, y, torch.nn.CrossEntropyLoss(), position=3)
    moved = (x_adv != x).any(dim=1)
    assert moved[:5].all() and not moved[5:].any()
    again = adversary.perturb(model, x, y, torch.nn.CrossEntropyLoss(), position=3)
    assert torch.equal(x_adv, again)  # the same batch position: the same random start
    other = adversary.perturb(model, x, y, torch.nn.CrossEntropyLoss(), position=4)
    assert not torch.equal(x_adv, other)  # one short step: the random start shows


def test_the_attack_runs_in_eval_mode_and_leaves_batch_norm_statistics_alone():
    from danlu.config import AdversarialConfig
    from danlu.train._adversarial import Adversary

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2)
    )
    model.train()
    before = model[1].running_mean.clone()
    Adversary(AdversarialConfig(epsilon=0.2), torch.ones(3, dtype=torch.bool)).perturb(
        model, torch.randn(16, 3) + 5, torch.randint(0, 2, (16,)), torch.nn.CrossEntropyLoss(), 0
    )
    assert torch.equal(model[1].running_mean, before)
    assert model.training


# -- a run, and the report ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def adversarial_run(tmp_path_factory):
    """Digits, 2 epochs of PGD training (3 steps), with a small robustness section."""
    import danlu

    home = tmp_path_factory.mktemp("adv")
    result = danlu.run(_recipe(evaluate=TINY_REPORT), home=home)
    return home, result


def test_a_run_trains_on_adversarial_batches(adversarial_run):
    _, result = adversarial_run
    assert result.metrics["accuracy"] > 0.5  # 10 classes: it learned
    assert result.recipe.train.adversarial is not None


def test_the_report_compares_with_standard_training(adversarial_run):
    from danlu.store import SqlStore

    home, result = adversarial_run
    section = next(s for s in result.report.sections if s.key == "robustness")
    gain = section.data["adversarial_training"]
    trained, standard = gain["models"]
    assert trained["run_id"] == result.run_id and trained["model"].startswith("adversarial")
    assert standard["model"] == "standard training"
    for kind in ("clean", "fgsm", "pgd"):
        assert gain["gain"][kind] == pytest.approx(trained[kind] - standard[kind])
    assert gain["epsilon"] == 0.1 and gain["pgd_steps"] == 10
    # the model in the report is the one trained: its PGD point at ε = 0.1 is the section's own
    assert trained["pgd"] == pytest.approx(section.data["curves"]["pgd"][0]["value"])
    assert gain["gain"]["pgd"] > 0  # PGD training helps against PGD, even in 2 epochs
    assert "over standard training" in section.summary
    assert any("same recipe trained without train.adversarial" in n for n in section.notes)
    # the reference is a child run, without train.adversarial, of the same data and seed
    store = SqlStore(home=home)
    reference = store.get_run(standard["run_id"])
    assert reference.parent_id == result.run_id and reference.stage == "adversarial-reference"
    assert reference.recipe["train"].get("adversarial") is None
    assert reference.recipe["data"] == result.recipe.model_dump(mode="json")["data"]


def test_a_later_report_reuses_the_reference_and_the_switch_turns_it_off(adversarial_run):
    from danlu.config import EvaluateConfig
    from danlu.evaluate import evaluate_run
    from danlu.store import SqlStore

    home, result = adversarial_run
    store = SqlStore(home=home)
    first = next(s for s in result.report.sections if s.key == "robustness")
    report = evaluate_run(result.run_id, store=store)
    again = next(s for s in report.sections if s.key == "robustness")
    assert (
        again.data["adversarial_training"]["models"][1]["run_id"]
        == (first.data["adversarial_training"]["models"][1]["run_id"])
    )
    assert any("trained for an earlier report" in n for n in again.notes)
    children = store.search_runs(f"parent_id = '{result.run_id}'")
    assert len([r for r in children if r.stage == "adversarial-reference"]) == 1

    off = EvaluateConfig(
        **{**TINY_REPORT, "robustness": {**TINY_REPORT["robustness"], "compare_standard": False}}
    )
    report = evaluate_run(result.run_id, store=store, config=off)
    section = next(s for s in report.sections if s.key == "robustness")
    alone = section.data["adversarial_training"]  # the model's own figures at the recipe's ε
    assert [m["model"] for m in alone["models"]] == [
        first.data["adversarial_training"]["models"][0]["model"]
    ]
    assert alone["models"][0]["pgd"] == first.data["adversarial_training"]["models"][0]["pgd"]
    assert "gain" not in alone
    assert any("compare_standard: false" in n for n in section.notes)
    children = store.search_runs(f"parent_id = '{result.run_id}'")
    assert len([r for r in children if r.stage == "adversarial-reference"]) == 1  # none trained


def test_a_resumed_run_attacks_exactly_as_an_uninterrupted_one(tmp_path):
    """PGD's random starts are seeded by the batch's position, so resuming from a checkpoint
    gives the same model, bit for bit."""
    from danlu.config import load_recipe
    from danlu.data import prepare_data
    from danlu.models import build_model
    from danlu.tasks import get_task
    from danlu.testing import wine_recipe
    from danlu.train import Callback, Trainer, seed_everything

    base = wine_recipe(epochs=4, adversarial={"epsilon": 0.2, "steps": 2, "ratio": 0.5})
    recipe = load_recipe(base, ["model.dropout=0.3"])
    data = prepare_data(recipe.data, recipe.task)
    task = get_task(recipe.task)

    def model():
        seed_everything(recipe.train.seed)
        return build_model(recipe.model, data.schema, task)

    full = Trainer(recipe.train, checkpoint_path=tmp_path / "full.safetensors").fit(
        model(), task, data
    )

    class Crash(Callback):
        def on_epoch_end(self, trainer, epoch, metrics):
            if epoch == 2:
                raise KeyboardInterrupt

    path = tmp_path / "cut.safetensors"
    with pytest.raises(KeyboardInterrupt):
        Trainer(recipe.train, callbacks=[Crash()], checkpoint_path=path).fit(model(), task, data)
    resumed = Trainer(recipe.train, checkpoint_path=path).fit(model(), task, data, resume=True)
    assert resumed.history_ == full.history_
    for a, b in zip(
        resumed.model.state_dict().values(), full.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    plain = load_recipe(wine_recipe(epochs=4), ["model.dropout=0.3"])
    standard = Trainer(plain.train).fit(model(), task, data)
    assert standard.history_ != full.history_  # the attack did change training
