"""Knowledge distillation in the engine (``train.distill``): the loss, a distilled run, its
resume after a preemption, and the teachers it refuses."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from danlu.errors import ConfigError, Preempted
from danlu.train._distill import distill_loss

WINE = {
    "name": "kd",
    "data": {"source": "builtin:wine"},
    "task": "classification",
    "model": {"type": "mlp", "hidden": [32]},
    "train": {"epochs": 3, "batch_size": 16},
}


def _recipe(**changes):
    recipe = {**WINE, "train": dict(WINE["train"])}
    for key, value in changes.items():
        if key == "train":
            recipe["train"].update(value)
        else:
            recipe[key] = value
    return recipe


# -- the loss -----------------------------------------------------------------------------------
def test_alpha_zero_is_the_task_loss_and_alpha_one_the_tempered_kl():
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 4, generator=gen), torch.randn(8, 4, generator=gen) * 3
    task = F.cross_entropy(student, torch.randint(0, 4, (8,), generator=gen))
    loss0 = distill_loss(student, teacher, task, alpha=0.0, temperature=4.0)
    assert torch.allclose(loss0, task)
    temp = 4.0
    p = torch.softmax(teacher / temp, dim=1)  # the teacher's soft targets
    q = torch.softmax(student / temp, dim=1)
    kl = (p * (p.log() - q.log())).sum(dim=1).mean() * temp**2  # KL(p ‖ q) · T², by hand
    loss1 = distill_loss(student, teacher, task, alpha=1.0, temperature=temp)
    assert torch.allclose(loss1, kl, atol=1e-6)
    assert kl > 0.05  # the two distributions differ: the check above compares real numbers
    half = distill_loss(student, teacher, task, alpha=0.3, temperature=temp)
    assert torch.allclose(half, 0.3 * kl + 0.7 * task, atol=1e-6)
    same = distill_loss(teacher, teacher, task, alpha=1.0, temperature=temp)
    assert same.abs() < 1e-6  # a student that matches its teacher has nothing left to learn


def test_regression_uses_the_mse_to_the_teachers_output():
    student, teacher = torch.tensor([[0.5], [2.0]]), torch.tensor([[1.5], [0.0]])
    loss = distill_loss(
        student, teacher, torch.tensor(7.0), alpha=1.0, temperature=4.0, target_kind="values"
    )
    assert loss.item() == pytest.approx((1.0 + 4.0) / 2)
    mixed = distill_loss(
        student, teacher, torch.tensor(7.0), alpha=0.5, temperature=4.0, target_kind="values"
    )
    assert mixed.item() == pytest.approx(0.5 * 2.5 + 0.5 * 7.0)


def test_multilabel_soft_term_is_the_per_label_bernoulli_kl():
    gen = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    temp = 2.0
    p, q = torch.sigmoid(teacher / temp), torch.sigmoid(student / temp)
    kl = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).mean() * temp**2
    loss = distill_loss(
        student, teacher, torch.tensor(0.0), alpha=1.0, temperature=temp, target_kind="label_sets"
    )
    assert torch.allclose(loss, kl, atol=1e-6)


# -- a distilled run ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher_home(tmp_path_factory):
    """A store holding a trained wine teacher (and its run id)."""
    from danlu.store import SqlStore
    from danlu.train import run_training

    home = tmp_path_factory.mktemp("teacher")
    store = SqlStore(home=home)
    result = run_training(_recipe(model={"type": "mlp", "hidden": [64]}), store=store)
    return store, result


def test_a_distilled_run_trains_on_the_teacher_and_records_its_metrics(teacher_home):
    from danlu.train import run_training

    store, teacher = teacher_home
    plain = run_training(_recipe(), store=store)
    distilled = run_training(
        _recipe(train={"distill": {"teacher": teacher.run_id, "alpha": 0.7}}), store=store
    )
    assert 0.0 <= distilled.metrics["accuracy"] <= 1.0
    assert [h["epoch"] for h in distilled.history] == [1, 2, 3]
    assert "val_accuracy" in distilled.history[-1]
    run = store.get_run(distilled.run_id)
    assert run.tags["distill_teacher"] == f"run {teacher.run_id}"
    assert run.recipe["train"]["distill"]["alpha"] == 0.7
    # the same student, seed and batches: only the teacher's term makes the losses differ
    assert distilled.history[0]["train_loss"] != pytest.approx(plain.history[0]["train_loss"])
    # validation stays the task's own loss: the same first-epoch val_loss scale, not the KL
    assert distilled.history[-1]["val_loss"] < 2.0


def test_a_distilled_run_resumes_after_a_preemption_as_if_never_stopped(teacher_home, monkeypatch):
    """SIGTERM in the 12th training batch (epoch 2): the run is kept interrupted with a
    checkpoint; resumed, it loads the teacher again and ends as the uninterrupted run."""
    from danlu.train import run_training
    from danlu.train._runner import run_of

    store, teacher = teacher_home
    recipe = _recipe(
        model={"type": "tests.train.test_preempt:build", "hidden": [16]},
        data={"source": "builtin:wine", "augment": [{"noise": 0.05}]},
        train={"distill": {"teacher": teacher.run_id, "temperature": 2.0}},
    )
    full = run_training(recipe, store=store)
    monkeypatch.setenv("DANLU_TEST_SIGTERM_AT", "12")
    with pytest.raises(Preempted) as stopped:
        run_training(recipe, store=store)
    run_id = run_of(stopped.value)
    assert run_id is not None and store.get_run(run_id).status == "interrupted"
    monkeypatch.delenv("DANLU_TEST_SIGTERM_AT")
    resumed = run_training(recipe, store=store, resume=run_id)
    assert resumed.run_id == run_id
    assert resumed.history == full.history
    assert resumed.metrics == full.metrics
    state, ref = resumed.model.state_dict(), full.model.state_dict()
    assert all(torch.equal(state[k], ref[k]) for k in ref)


def test_a_student_whose_outputs_differ_from_the_teachers_is_refused(teacher_home):
    """A regression student (one output) of a 3-class teacher: refused before training, the
    message naming the key and both shapes."""
    from danlu.train import run_training

    store, teacher = teacher_home
    recipe = _recipe(
        task="regression",
        data={"source": "builtin:wine", "target": "target"},
        train={"distill": {"teacher": teacher.run_id}},
    )
    with pytest.raises(ConfigError, match=r"train\.distill\.teacher") as refused:
        run_training(recipe, store=store)
    message = str(refused.value)
    assert "[1]" in message and "[3]" in message and "output shape" in message


def test_an_unknown_teacher_is_refused_with_the_key(teacher_home):
    from danlu.train import run_training

    store, _ = teacher_home
    with pytest.raises(ConfigError, match=r"train\.distill\.teacher: 'nosuch@prod'"):
        run_training(_recipe(train={"distill": {"teacher": "nosuch@prod"}}), store=store)


def test_a_trainer_without_its_teacher_says_how_to_give_one():
    from danlu.config import load_recipe
    from danlu.data import prepare_data
    from danlu.models import build_model
    from danlu.tasks import get_task
    from danlu.train import Trainer

    recipe = load_recipe(_recipe(train={"distill": {"teacher": "abc"}, "epochs": 1}))
    task = get_task("classification")
    data = prepare_data(recipe.data, task)
    with pytest.raises(ConfigError, match="teacher="):
        Trainer(recipe.train).fit(build_model(recipe.model, data.schema, task), task, data)


def test_distillation_of_a_model_the_engine_does_not_train_is_refused_before_the_run():
    from danlu.train import make_context

    recipe = _recipe(model={"type": "gbdt"}, train={"distill": {"teacher": "abc"}})
    with pytest.raises(ConfigError, match=r"train\.distill[\s\S]*model type gbdt"):
        make_context(recipe)
