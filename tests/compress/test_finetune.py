"""Fine-tuning a changed model in a child run (danlu/compress/_finetune.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from danlu.compress import CompressJob
from danlu.compress._finetune import finetune, finetune_recipe
from danlu.config import load_recipe
from danlu.models import load_bundle
from danlu.store import SqlStore
from danlu.train import run_training

WINE: dict[str, Any] = {
    "name": "wine-ft",
    "data": {"source": "builtin:wine", "split": {"test": 0.2, "val": 0.1, "seed": 0}},
    "task": "classification",
    "model": {"type": "mlp", "hidden": [16]},
    "train": {
        "epochs": 3,
        "batch_size": 32,
        "optimizer": {"name": "adam", "lr": 0.01},
        "device": "cpu",
        "checkpoint": {"every": 0},
    },
}


def trained_job(store: SqlStore, recipe: dict[str, Any], **compress: Any) -> CompressJob:
    """A trained model of ``recipe`` and everything a compression method gets."""
    recipe = {**recipe, "compress": compress or {}}
    result = run_training(recipe, store=store)
    card = json.loads(store.artifact_path(result.run_id, "model.json").read_text())
    loaded = load_recipe(recipe)
    assert loaded.compress is not None
    from danlu.train._run import prepare_recipe_data

    data = prepare_recipe_data(loaded, result.task)
    return CompressJob(
        config=loaded.compress,
        recipe=loaded,
        model=result.model.cpu().eval(),
        card=card,
        task=result.task,
        data=data,
        store=store,
        run_id=result.run_id,
    )


def run_files(store: SqlStore, run_id: str):
    def read(name: str) -> bytes | None:
        path = store.artifact_path(run_id, name)
        return path.read_bytes() if path.is_file() else None

    return read


@pytest.fixture
def store(tmp_path):
    store = SqlStore(home=tmp_path / "home")
    yield store
    store.close()


@pytest.fixture
def job(store):
    return trained_job(store, WINE)


def test_the_child_run_holds_a_complete_model(job, store):
    import copy

    model = copy.deepcopy(job.model)
    tuned, run_id = finetune(job, model, name="pruned-50", epochs=2, card={"note": "x"})
    assert run_id is not None
    run = store.get_run(run_id)
    assert run.status == "finished"
    assert run.parent_id == job.run_id
    assert run.tags["compression"] == "pruned-50"
    assert len(store.metric_history(run_id, "train_loss")) == 2  # one point per epoch
    assert 0.0 <= run.metrics["test_accuracy"] <= 1.0
    assert float(run.params["train.optimizer.lr"]) == pytest.approx(0.01)  # the recipe's
    bundle = load_bundle(run_files(store, run_id), f"run {run_id}")
    card = json.loads(store.artifact_path(run_id, "model.json").read_text())
    assert card == {**job.card, "note": "x"}
    x = torch.as_tensor(job.data.x_test)
    with torch.no_grad():
        assert torch.allclose(bundle.model.eval()(x), tuned(x), atol=1e-6)
    assert not tuned.training
    # it trained: the weights moved
    before = dict(job.model.named_parameters())
    assert any(not torch.equal(p, before[n]) for n, p in tuned.named_parameters())


def test_the_model_is_trained_from_its_weights_not_re_initialised(job):
    import copy

    tuned, _ = finetune(job, copy.deepcopy(job.model), name="same", epochs=1, learning_rate=1e-12)
    for (name, p), q in zip(job.model.named_parameters(), tuned.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name


def test_zero_epochs_open_no_run(job, store):
    before = len(store.search_runs())
    model, run_id = finetune(job, job.model, name="none", epochs=0)
    assert model is job.model and run_id is None
    assert len(store.search_runs()) == before


def test_a_failure_marks_the_child_run_failed(job, store):
    class Broken(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Linear(13, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("broken forward")

    with pytest.raises(RuntimeError, match="broken forward"):
        finetune(job, Broken(), name="broken", epochs=1)
    (child,) = [r for r in store.search_runs() if r.parent_id == job.run_id]
    assert child.status == "failed" and "broken forward" in (child.error or "")


def test_the_recipe_for_fine_tuning():
    recipe = load_recipe(
        {**WINE, "train": {**WINE["train"], "scheduler": {"name": "one_cycle", "max_lr": 0.1}}}
    )
    tuned = finetune_recipe(recipe, epochs=4, learning_rate=None)
    assert tuned.train.epochs == 4
    assert tuned.train.optimizer.lr == pytest.approx(0.01)  # the recipe's
    assert tuned.train.scheduler.max_lr == pytest.approx(0.1)
    halved = finetune_recipe(recipe, epochs=4, learning_rate=0.005)
    assert halved.train.scheduler.max_lr == pytest.approx(0.05)  # scaled with the new lr
    assert tuned.train.batch_size == recipe.train.batch_size
    assert finetune_recipe(recipe, epochs=1, learning_rate=0.5).train.optimizer.lr == 0.5
