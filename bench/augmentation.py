"""Does augmentation help when data is scarce? Digits CNN trained on 20% of its training split.

For each seed the data is split as in ``examples/digits_cnn.yaml`` (test 20%, val 10%), then a
stratified, seeded 20% of the training rows is kept; validation and test stay whole. The same
model is trained with and without ``data.augment`` and scored on the untouched test split.

    python bench/augmentation.py [--seeds 0 1 2] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine, write  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FRACTION = 0.2
AUGMENT = json.loads(os.environ.get("DANLU_BENCH_AUGMENT", "null")) or [
    {"rotate": 12},
    {"shift": 0.1},
    {"scale": 0.1},
    {"shear": 8},
    {"mixup": 0.2},
]
EPOCHS = 150  # scarce data: many short epochs; early stopping on val_loss picks the epoch


def one(seed: int, augment: bool) -> dict[str, float]:
    os.environ["OMP_NUM_THREADS"] = "1"
    import dataclasses
    import logging

    import numpy as np
    import torch
    from sklearn.model_selection import train_test_split

    from danlu.config import load_recipe
    from danlu.data import prepare_data
    from danlu.models import MODELS, check_model_config
    from danlu.tasks import get_task
    from danlu.train import Trainer, seed_everything

    torch.set_num_threads(1)
    logging.getLogger("danlu").setLevel(logging.ERROR)
    overrides = [
        f"train.seed={seed}", f"data.split.seed={seed}", f"train.epochs={EPOCHS}",
        "train.early_stopping.patience=25", f"data.augment={AUGMENT if augment else []}",
    ]  # fmt: skip
    recipe = load_recipe(ROOT / "examples" / "digits_cnn.yaml", overrides)
    data = prepare_data(recipe.data, recipe.task)
    keep, _ = train_test_split(
        np.arange(len(data.y_train)), train_size=FRACTION, stratify=data.y_train, random_state=seed
    )
    keep = np.sort(keep)
    data = dataclasses.replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep])
    task = get_task(recipe.task)
    options, _ = check_model_config(recipe.model)
    seed_everything(seed)
    model = MODELS.get(recipe.model.type).builder(options, data.schema, task)
    trainer = Trainer(recipe.train).fit(model, task, data)
    outputs = trainer.predict_outputs(data.x_test).numpy()
    accuracy = float((outputs.argmax(1) == data.y_test).mean())
    return {"accuracy": accuracy, "train_rows": len(keep), "epochs": trainer.epoch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    jobs = [(seed, aug) for seed in args.seeds for aug in (False, True)]
    with ProcessPoolExecutor(args.jobs) as pool:
        results = dict(zip(jobs, pool.map(one, *zip(*jobs, strict=True)), strict=True))
    per_seed = []
    for seed in args.seeds:
        plain, aug = results[(seed, False)], results[(seed, True)]
        per_seed.append({"seed": seed, "without": plain, "with": aug})
        print(f"seed {seed}: without {plain['accuracy']:.4f}  with {aug['accuracy']:.4f}")
    mean = {
        k: statistics.mean(results[(s, k == "with")]["accuracy"] for s in args.seeds)
        for k in ("without", "with")
    }
    gain = 100 * (mean["with"] - mean["without"])
    rows = [
        [s["seed"], s["without"]["train_rows"], f"{100 * s['without']['accuracy']:.2f}%",
         f"{100 * s['with']['accuracy']:.2f}%",
         f"{100 * (s['with']['accuracy'] - s['without']['accuracy']):+.2f}"]
        for s in per_seed
    ]  # fmt: skip
    rows.append(["mean", "", f"{100 * mean['without']:.2f}%", f"{100 * mean['with']:.2f}%",
                 f"**{gain:+.2f}**"])  # fmt: skip
    payload = {
        "benchmark": "augmentation",
        "fraction_of_training_split": FRACTION,
        "augment": AUGMENT,
        "epochs_max": EPOCHS,
        "per_seed": per_seed,
        "mean_accuracy": mean,
        "gain_points": gain,
        "target_gain_points": 1.0,
        "machine": machine(),
    }
    notes = (
        f"Digits CNN (`examples/digits_cnn.yaml`) trained on a stratified {FRACTION:.0%} of its "
        f"training split, tested on the whole test split; augmentation: `{AUGMENT}`. "
        "Command: `python bench/augmentation.py`."
    )
    path = write(
        "augmentation", payload,
        ["seed", "training rows", "test accuracy, no augmentation", "with augmentation", "gain (points)"],
        rows, notes,
    )  # fmt: skip
    print(f"gain {gain:+.2f} points (target ≥ +1.00) → {path}")


if __name__ == "__main__":
    main()
