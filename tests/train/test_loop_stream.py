"""The engine fed by a TrainStream: the same loop, hooks and features as in memory."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from danlu.config import load_recipe
from danlu.data import prepare_data
from danlu.models import build_model
from danlu.tasks import get_task
from danlu.train import Callback, Trainer, class_weights, seed_everything
from tests.data.test_stream import STREAM, write_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("engine") / "data", sizes=(3000, 2500))


class Count(Callback):
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.totals: list[int] = []

    def on_epoch_start(self, trainer, epoch):
        self.batches = []

    def on_batch_end(self, trainer, batch, loss):
        self.batches.append(batch)

    def on_epoch_end(self, trainer, epoch, metrics):
        self.totals.append(len(self.batches))


def setup(folder, *overrides):
    base = {
        "name": "engine-stream",
        "data": {"source": str(folder), "target": "y", "stream": STREAM},
        "task": "classification",
        "model": {"type": "mlp", "hidden": [8]},
        "train": {"epochs": 2, "batch_size": 64},
    }
    recipe = load_recipe(base, list(overrides))
    data = prepare_data(recipe.data, recipe.task)
    task = get_task(recipe.task)
    seed_everything(recipe.train.seed)
    return recipe, data, task, build_model(recipe.model, data.schema, task)


def test_streamed_batches_drive_the_same_loop(folder, tmp_path):
    recipe, data, task, model = setup(
        folder,
        "train.grad_accumulation=3",
        "train.class_weight=balanced",
        "data.augment=[{noise: 0.05}]",
    )
    count = Count()
    trainer = Trainer(
        recipe.train, callbacks=[count], checkpoint_path=tmp_path / "c.safetensors"
    ).fit(model, task, data)
    assert data.stream is not None
    expected = math.ceil(data.stream.rows["train"] / 64)
    assert trainer.num_batches == expected and count.totals == [expected, expected]
    assert trainer.global_step == 2 * math.ceil(expected / 3)
    assert {"train_loss", "val_loss", "val_accuracy"} <= set(trainer.history_[-1])
    assert (tmp_path / "c.safetensors").exists()
    outputs, targets = trainer.stream_outputs(data.stream, "test")
    assert len(outputs) == len(targets) == data.stream.rows["test"]
    assert targets.dtype == torch.int64


def test_class_weights_from_counts_equal_weights_from_labels(folder):
    _, data, _, _ = setup(folder)
    assert data.stream is not None and data.stream.class_counts is not None
    counts = data.stream.class_counts
    labels = np.repeat(np.arange(len(counts)), counts)
    a = class_weights("balanced", labels, data.schema)
    b = class_weights("balanced", data.y_train, data.schema, counts=counts)
    assert a is not None and b is not None and torch.allclose(a, b)
