"""The pre-flight memory estimate: counted parts exact, the total within 2x of a measured peak."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from danlu.config import load_recipe
from danlu.data import prepare_data
from danlu.train import MemoryEstimate, Trainer, estimate_memory

ROOT = Path(__file__).resolve().parents[2]
WINE = {
    "name": "estimate",
    "data": {"source": "builtin:wine"},
    "task": "classification",
    "model": {"type": "mlp", "hidden": [32, 16], "dropout": 0.1},
    "train": {"epochs": 1, "batch_size": 16, "early_stopping": None, "checkpoint": {"every": 0}},
}


@pytest.fixture(scope="module")
def wine():
    recipe = load_recipe(WINE)
    return prepare_data(recipe.data, recipe.task)


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


@pytest.mark.parametrize(
    "optimizer",
    [
        {"name": "adam"},
        {"name": "adamw"},
        {"name": "sgd", "momentum": 0.9},
        {"name": "sgd", "momentum": 0.0},
        {"name": "rmsprop"},
        {"name": "rmsprop", "momentum": 0.5},
        {"name": "adagrad"},
    ],
    ids=lambda o: "-".join(map(str, o.values())),
)
def test_parameters_gradients_and_optimizer_state_are_exact(wine, optimizer):
    """Counted against the tensors a real fit leaves: the model's state, every gradient and
    the optimizer's state after its steps."""
    from danlu.models import build_model
    from danlu.tasks import get_task

    recipe = load_recipe({**WINE, "train": {**WINE["train"], "optimizer": optimizer}})
    est = estimate_memory(recipe, data=wine)
    task = get_task(recipe.task)
    model = build_model(recipe.model, wine.schema, task)
    trainer = Trainer(recipe.train).fit(model, task, wine)
    assert est.parameters == _tensor_bytes(trainer.model.state_dict().values())
    assert est.gradients == _tensor_bytes(p for p in trainer.model.parameters())
    state = trainer.optimizer.state_dict()["state"].values()
    assert est.optimizer == _tensor_bytes(v for s in state for v in s.values())
    assert est.data == wine.x_train.nbytes + 8 * len(wine.y_train)  # int64 class indices
    assert not est.rough and est.total > est.parameters + est.optimizer


def test_activations_grow_with_the_batch_and_bf16_shrinks_them(wine):
    def activations(batch: int, precision: str = "fp32") -> int:
        train = {**WINE["train"], "batch_size": batch, "precision": precision}
        recipe = load_recipe({**WINE, "model": {"type": "mlp", "hidden": [256]}, "train": train})
        return estimate_memory(recipe, data=wine).activations

    # batches larger than the evaluation chunk (36 test rows), which would dominate otherwise
    small, large = activations(60), activations(120)
    assert 1.8 < large / small <= 2.0  # per-row saved tensors, plus a small fixed part
    assert 0.4 < activations(120, "bf16") / large < 0.9  # bf16 halves what autocast casts


def test_describe_is_one_line_and_nothing_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("DANLU_HOME", str(tmp_path / "home"))
    est = estimate_memory(ROOT / "examples" / "wine_mlp.yaml")
    line = est.describe()
    assert "\n" not in line and line.startswith("~") and "optimizer (adam)" in line
    assert "activations at batch 16" in line
    assert not (tmp_path / "home").exists()  # no store opened: no run
    assert json.loads(json.dumps(est.to_dict()))["total"] == est.total


def test_trees_and_auto_get_a_rough_figure_from_the_data(wine):
    for model in ({"type": "gbdt"}, {"type": "auto"}):
        recipe = load_recipe({**WINE, "model": model})
        est = estimate_memory(recipe, data=wine)
        assert est.rough and "rough" in est.describe()
        assert est.data == wine.x_train.nbytes + 8 * len(wine.y_train)
        assert est.total > 4 * est.data


def test_a_stream_counts_the_rows_its_reader_holds(tmp_path):
    from tests.data.test_stream import STREAM, write_folder

    folder = write_folder(tmp_path / "data", sizes=(1500, 1500))
    recipe = load_recipe(
        {
            "name": "stream",
            "data": {"source": str(folder), "target": "y", "stream": STREAM},
            "task": "classification",
            "model": {"type": "mlp", "hidden": [64]},
            "train": {"batch_size": 256},
        }
    )
    est = estimate_memory(recipe)  # prepares the stream: its sample rows, not all the data
    width = prepare_data(recipe.data, recipe.task).schema.input_dim
    held = STREAM["shuffle_buffer"] + STREAM["chunk_rows"]
    assert est.data == held * (4 * width + 8)  # float32 features and an int64 class
    assert est.batch_size == 256 and est.activations > 0 and not est.rough


# -- against a measured peak --------------------------------------------------------------------
MEASURE = """
import json, sys
from pathlib import Path

import torch

from danlu.config import load_recipe
from danlu.data import prepare_data
from danlu.models import build_model
from danlu.tasks import get_task
from danlu.train import Trainer, estimate_memory, seed_everything

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

torch.set_num_threads(1)
recipe = load_recipe(json.loads(sys.argv[1]))
task = get_task(recipe.task)
data = prepare_data(recipe.data, task)  # resident before training: the baseline includes it
Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS")
seed_everything(recipe.train.seed)
trainer = Trainer(recipe.train).fit(build_model(recipe.model, data.schema, task), task, data)
trainer.predict_outputs(data.x_test)  # as the train stage does next: test outputs, in chunks
peak = status("VmHWM") - before
est = estimate_memory(recipe, data=data)  # after the measurement: it cannot warm anything up
state = trainer.optimizer.state_dict()["state"].values()
print(json.dumps({
    "estimate": est.to_dict(),
    "peak": peak,
    "parameters": sum(t.nbytes for t in trainer.model.state_dict().values()),
    "optimizer": sum(v.nbytes for s in state for v in s.values() if isinstance(v, torch.Tensor)),
}))
"""


def _measure(recipe: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps(recipe)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _wide_table(path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 128)).astype("float32")
    import pandas as pd

    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(128)])
    frame["y"] = (x[:, 0] + x[:, 1] > 0).astype(int)
    frame.to_parquet(path)
    return path


def _no_clear_refs() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return True
    return False


@pytest.mark.skipif(_no_clear_refs(), reason="needs Linux /proc/self/clear_refs to reset VmHWM")
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_total_is_within_2x_of_the_measured_peak(kind, tmp_path):
    """A fresh process prepares the data, resets its peak RSS and trains one epoch: the peak's
    rise is compared with the estimate less the data (already resident, and on the CPU the
    engine's tensors share its memory). Parameters and optimizer state are exact."""
    train = {"epochs": 1, "early_stopping": None, "checkpoint": {"every": 0}}
    if kind == "mlp":  # a wide MLP on a 20k x 128 table: tensors dominate the framework
        recipe = {
            "name": "wide",
            "data": {"source": str(_wide_table(tmp_path / "wide.parquet")), "target": "y"},
            "task": "classification",
            "model": {"type": "mlp", "hidden": [1024, 1024], "dropout": 0.1},
            "train": {**train, "batch_size": 1024, "optimizer": {"name": "adam"}},
        }
    else:  # the digits CNN of examples/digits_cnn.yaml
        recipe = {
            "name": "digits",
            "data": {"source": "builtin:digits", "prepare": {"scale": "minmax"}},
            "task": "classification",
            "model": {"type": "cnn", "channels": [32, 64], "convs_per_stage": 2, "hidden": 128},
            "train": {**train, "batch_size": 256, "optimizer": {"name": "adamw"}},
        }
    got = _measure(recipe)
    est = MemoryEstimate(**{k: v for k, v in got["estimate"].items() if k != "total"})
    assert est.parameters == got["parameters"] and est.optimizer == got["optimizer"]
    expected = est.total - est.data
    assert 0.5 <= got["peak"] / expected <= 2.0, (got["peak"], est.describe())


def test_text_evaluation_is_estimated_in_the_engines_length_ordered_chunks(tmp_path):
    """Text rows are predicted in chunks of 256 (in length order): the evaluation pass the
    estimate sizes is that chunk, not 8,192 rows, unless bucketing is off."""
    import pandas as pd

    rng = np.random.default_rng(0)
    words = np.array([f"w{i}" for i in range(200)])
    frame = pd.DataFrame(
        {
            "body": [" ".join(rng.choice(words, 12)) for _ in range(3000)],
            "y": rng.integers(0, 2, 3000),
        }
    )
    recipe = {
        "name": "estimate-text",
        "data": {
            "source": str(tmp_path / "texts.csv"),
            "target": "y",
            "features": {"body": "text"},
            "text": {"max_length": 16},
        },
        "task": "classification",
        "model": {"type": "text_cnn", "embedding": 64, "channels": 64, "kernels": [3]},
        "train": {"epochs": 1, "batch_size": 8},
    }
    frame.to_csv(tmp_path / "texts.csv", index=False)
    prepared = load_recipe(recipe)
    from danlu.models._text_inputs import text_inputs

    data = prepare_data(prepared.data, prepared.task, frame=frame, **text_inputs(prepared.model))
    assert len(data.x_test) > 256
    on = estimate_memory(recipe, data=data).activations
    off = estimate_memory(recipe, overrides=["train.bucket_by_length=false"], data=data).activations
    assert off > 2 * on  # 600 test rows in one pass against 256
