"""Length-bucketed batches for text (danlu/train/_buckets.py, wired in the engine's epochs)."""

from __future__ import annotations

import signal
import threading

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from danlu.config import DataConfig, ModelConfig, TrainConfig
from danlu.data import prepare_data
from danlu.errors import Preempted
from danlu.models import build_model
from danlu.tasks import get_task
from danlu.train import Trainer, preemptible
from danlu.train._buckets import bucketed_order, token_lengths
from danlu.train._distributed import DataParallel

L = 48  # max_length: texts from 3 to 48 tokens
WORDS = ["red", "blue", "cat", "dog", "runs", "sleeps", "big", "small", "fast", "slow"]


@pytest.fixture(scope="module")
def data():
    """300 texts of very different lengths (1 to 50 words), two classes, a tiny vocabulary."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(300):
        y = i % 2
        words = rng.choice(WORDS[y * 5 : y * 5 + 5], size=int(rng.integers(1, 50)))
        rows.append({"text": f"row{i} " + " ".join(words), "y": y})
    config = DataConfig(
        source="frame",
        target="y",
        features={"text": "text"},
        split={"test": 0.1, "val": 0.1, "seed": 0},
        text={"max_length": L, "vocab_size": 100, "tokenizer": "wordpiece", "cache": False},
    )
    return prepare_data(config, "classification", frame=pd.DataFrame(rows), text_models=True)


class Recording(nn.Module):
    """A text CNN that keeps each training batch it sees (and sends itself SIGTERM on the
    training forward passes listed in ``sigterm_at``)."""

    def __init__(self, schema, sigterm_at=()):
        super().__init__()
        torch.manual_seed(0)
        self.net = build_model(
            ModelConfig(type="text_cnn", embedding=8, channels=4, kernels=[2, 3], dropout=0.1),
            schema,
            get_task("classification"),
        )
        self.sigterm_at = list(sigterm_at)
        self.batches: list[torch.Tensor] = []
        self.evaluated: list[torch.Tensor] = []

    def forward(self, x):
        if self.training:
            self.batches.append(x.clone())
            if len(self.batches) in self.sigterm_at:  # stops after this batch
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)
        else:
            self.evaluated.append(x.clone())
        return self.net(x)


def fit(data, *, checkpoint=None, resume=False, sigterm_at=(), **train):
    settings = {"epochs": 2, "batch_size": 8, "seed": 0, "device": "cpu", **train}
    model = Recording(data.schema, sigterm_at)
    trainer = Trainer(TrainConfig(**settings), checkpoint_path=checkpoint)
    with preemptible():  # as the Runner wraps every run
        trainer.fit(model, get_task("classification"), data, resume=resume)
    return trainer, model


def padding(batches, schema) -> int:
    """Pad positions a text model computes on: each batch is cut to its longest row."""
    total = 0
    for xb in batches:
        lengths = token_lengths(xb, schema)
        total += int((lengths.max() - lengths).sum())
    return total


def epochs(model, per_epoch):
    return [model.batches[i : i + per_epoch] for i in range(0, len(model.batches), per_epoch)]


def test_bucketed_batches_pad_far_less_than_a_plain_shuffle(data):
    _, bucketed = fit(data, epochs=1)
    _, plain = fit(data, epochs=1, bucket_by_length=False)
    assert len(bucketed.batches) == len(plain.batches) == 30  # 240 training rows / 8
    assert padding(bucketed.batches, data.schema) * 4 < padding(plain.batches, data.schema)


def test_every_row_is_seen_once_per_epoch_and_epochs_differ(data):
    trainer, model = fit(data, epochs=2)
    expected = sorted(map(tuple, data.x_train.tolist()))
    first, second = epochs(model, trainer.num_batches)
    for epoch in (first, second):
        assert sorted(map(tuple, torch.cat(epoch).tolist())) == expected
    assert not all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_the_same_seed_gives_the_same_batches_and_another_seed_others(data):
    _, a = fit(data, epochs=1)
    _, b = fit(data, epochs=1)
    _, c = fit(data, epochs=1, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.batches, b.batches, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a.batches, c.batches, strict=True))


def test_a_preempted_bucketed_epoch_resumes_exactly(data, tmp_path):
    """SIGTERM in epoch 2's 5th batch: the resumed run trains on the very batches the
    uninterrupted run trained on after it, and ends with its history and weights."""
    full, whole = fit(data, epochs=3, checkpoint=tmp_path / "full.safetensors")
    with pytest.raises(Preempted, match="batch 5 of epoch 2"):
        fit(data, epochs=3, checkpoint=tmp_path / "cut.safetensors", sigterm_at=[35])
    resumed, rest = fit(data, epochs=3, checkpoint=tmp_path / "cut.safetensors", resume=True)
    assert len(rest.batches) == len(whole.batches) - 35
    assert all(torch.equal(x, y) for x, y in zip(rest.batches, whole.batches[35:], strict=True))
    assert resumed.history_ == full.history_
    a, b = resumed.model.state_dict(), full.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_evaluation_predicts_in_length_order_and_returns_the_rows_order(data):
    trainer, model = fit(data, epochs=1)
    model.evaluated.clear()
    outputs = trainer.predict_outputs(data.x_test)
    lengths = [token_lengths(xb, data.schema) for xb in model.evaluated]
    flat = torch.cat(lengths)
    assert torch.equal(flat, flat.sort().values)  # shortest first
    model.eval()
    with torch.no_grad():
        one_by_one = torch.cat([model.net(torch.as_tensor(row[None])) for row in data.x_test])
    torch.testing.assert_close(outputs, one_by_one, rtol=1e-5, atol=1e-5)


def test_without_text_columns_the_switch_changes_nothing():
    data = prepare_data(DataConfig(source="builtin:iris"), "classification")
    assert token_lengths(data.x_train, data.schema) is None
    runs = []
    for bucket in (True, False):
        torch.manual_seed(0)
        model = build_model(
            ModelConfig(type="mlp", hidden=[8]), data.schema, get_task("classification")
        )
        config = TrainConfig(epochs=2, batch_size=16, device="cpu", bucket_by_length=bucket)
        runs.append(Trainer(config).fit(model, get_task("classification"), data).history_)
    assert runs[0] == runs[1]


def test_two_ranks_get_equal_batch_counts_of_similar_lengths(data):
    """DataParallel's strided shard of a bucketed order cut at batch × ranks: each rank's batch
    i is its share of global batch i (similar lengths), and the ranks have equal counts."""
    lengths = token_lengths(data.x_train, data.schema)
    n, batch, ranks = 237, 8, 2  # an odd row count: the shard pads one row
    generator = torch.Generator().manual_seed(0)
    order = bucketed_order(
        torch.randperm(n, generator=generator), lengths, batch * ranks, generator
    )
    shards = []
    for rank in range(ranks):
        strategy = object.__new__(DataParallel)  # only the sharding; no process group
        strategy.rank, strategy.world_size = rank, ranks
        shards.append(strategy.shard(order).split(batch))
    assert len(shards[0]) == len(shards[1]) == 15
    assert set(torch.cat([torch.cat(s) for s in shards]).tolist()) == set(range(n))
    spread = [
        int(lengths[torch.cat([a, b])].max() - lengths[torch.cat([a, b])].min())
        for a, b in zip(shards[0][:-1], shards[1][:-1], strict=True)  # the last one is padded
    ]
    plain = torch.randperm(n, generator=generator).split(batch * ranks)[:-1]
    plain_spread = [int(lengths[b].max() - lengths[b].min()) for b in plain]
    assert sum(spread) * 4 < sum(plain_spread)
