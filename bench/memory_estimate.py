"""The pre-flight memory estimate (``danlu.train.estimate_memory``) vs the memory training took.

Each configuration runs in a fresh process: it prepares the data, resets its peak resident set
size (``/proc/self/clear_refs``), builds the model, trains one epoch and predicts the test rows
(as the train stage does), then reads the peak (``VmHWM``) less the resident size before the
model was built. The estimate is made after the
measurement (so it warms nothing up) and compared less its ``data`` part: the prepared data was
resident before the measurement, and on the CPU the engine's tensors share its memory. The
parameters and the optimizer state are also compared with the tensors the fit left (they must be
equal). Each configuration is measured ``--reps`` times; the table gives medians.

    python bench/memory_estimate.py [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine, write  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
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
data = prepare_data(recipe.data, task)
Path("/proc/self/clear_refs").write_text("5")
before = status("VmRSS")
seed_everything(recipe.train.seed)
trainer = Trainer(recipe.train).fit(build_model(recipe.model, data.schema, task), task, data)
trainer.predict_outputs(data.x_test)  # as the train stage does next: test outputs, in chunks
peak = status("VmHWM") - before
est = estimate_memory(recipe, data=data)
state = trainer.optimizer.state_dict()["state"].values()
print(json.dumps({
    "estimate": est.to_dict(), "describe": est.describe(), "peak": peak, "rss": status("VmRSS"),
    "parameters": sum(t.nbytes for t in trainer.model.state_dict().values()),
    "optimizer": sum(v.nbytes for s in state for v in s.values() if isinstance(v, torch.Tensor)),
}))
"""


def configs(folder: Path) -> dict[str, dict]:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 128)).astype("float32")
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(128)])
    frame["y"] = (x[:, 0] + x[:, 1] > 0).astype(int)
    table = folder / "wide.parquet"
    frame.to_parquet(table)
    once = {"epochs": 1, "early_stopping": None, "checkpoint": {"every": 0}}
    wide = {
        "name": "wide",
        "data": {"source": str(table), "target": "y"},
        "task": "classification",
        "model": {"type": "mlp", "hidden": [1024, 1024], "dropout": 0.1},
        "train": {**once, "batch_size": 1024, "optimizer": {"name": "adam"}},
    }
    digits = {
        "name": "digits",
        "data": {"source": "builtin:digits", "prepare": {"scale": "minmax"}},
        "task": "classification",
        "model": {"type": "cnn", "channels": [32, 64], "convs_per_stage": 2, "hidden": 128},
        "train": {**once, "batch_size": 32, "optimizer": {"name": "adamw"}},
    }
    return {
        "wine MLP (examples/wine_mlp.yaml, batch 16)": {
            "name": "wine",
            "data": {"source": "builtin:wine", "prepare": {"scale": "standard"}},
            "task": "classification",
            "model": {"type": "mlp", "hidden": [32], "dropout": 0.1},
            "train": {**once, "batch_size": 16, "optimizer": {"name": "adam"}},
        },
        "wide MLP 128-1024-1024, 20k rows, batch 1024, Adam": wide,
        "same, bf16": {**wide, "train": {**wide["train"], "precision": "bf16"}},
        "same, SGD momentum 0.9": {
            **wide,
            "train": {**wide["train"], "optimizer": {"name": "sgd", "momentum": 0.9}},
        },
        "same, batch 4096": {**wide, "train": {**wide["train"], "batch_size": 4096}},
        "digits CNN (examples/digits_cnn.yaml), batch 32": digits,
        "digits CNN, batch 256": {**digits, "train": {**digits["train"], "batch_size": 256}},
    }


def measure(recipe: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps(recipe)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    mib = 2**20
    results, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for name, recipe in configs(Path(tmp)).items():
            runs = [measure(recipe) for _ in range(args.reps)]
            est = runs[0]["estimate"]
            expected = est["total"] - est["data"]
            peak = statistics.median(r["peak"] for r in runs)
            exact = all(
                r["parameters"] == est["parameters"] and r["optimizer"] == est["optimizer"]
                for r in runs
            )
            results[name] = {"recipe": recipe, "runs": runs, "median_peak": peak}
            rows.append(
                [
                    name,
                    f"{(est['parameters'] + est['optimizer']) / mib:.2f}",
                    "yes" if exact else "**no**",
                    f"{est['activations'] / mib:.1f}",
                    f"{expected / mib:.1f}",
                    f"{peak / mib:.1f}",
                    f"{peak / expected:.2f}",
                ]
            )
            print(name, runs[0]["describe"], f"measured {peak / mib:.1f} MiB", flush=True)
    header = [
        "configuration",
        "parameters + optimizer (MiB)",
        "exact",
        "activations (MiB)",
        "estimate less data (MiB)",
        "measured peak rise (MiB, median)",
        "measured / estimate",
    ]
    notes = (
        f"{args.reps} fresh processes per configuration; one epoch each; torch threads 1. The "
        "estimate's overhead (10 % + 128 MiB on the CPU) covers what the first backward and "
        "optimizer step load (~95 MiB whatever the model)."
    )
    path = write("memory_estimate", {"machine": machine(), "results": results}, header, rows, notes)
    print(path.read_text())


if __name__ == "__main__":
    main()
