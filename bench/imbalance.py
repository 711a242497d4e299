"""Class imbalance strategies on breast cancer with the malignant class cut to 10% of training.

For each seed the data is prepared as ``examples/breast_cancer_mlp.yaml`` describes (split seed =
seed), then malignant rows (label 0, the minority) are dropped from the *training split only*,
chosen with a seeded generator, until they are 10% of the training rows. Validation and test rows
are untouched, so every strategy is judged on the real class balance. Each strategy then trains
the recipe's MLP with danlu's ``Trainer`` on a ``dataclasses.replace``d ``PreparedData``:

- ``none``: the skewed training rows as they are;
- ``class_weight``: ``data.imbalance: class_weight`` (balanced loss weights);
- ``oversample`` / ``smote``: ``data.imbalance`` resampling of the skewed training rows.

Reported: malignant (minority) recall and macro F1 on the test split, mean ± std over seeds.
The issue's setting is a 10% minority; 5% is run too, to show how the gain grows with the skew.
Ten seeds by default: the test split holds ~42 malignant rows, so one row is ~2.4 points of
recall and three seeds cannot resolve a 5-point difference.

    python bench/imbalance.py [--seeds 0 1 2 ...] [--minority 0.1 0.05]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from _report import machine, write  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "examples" / "breast_cancer_mlp.yaml"
STRATEGIES = ("none", "class_weight", "oversample", "smote")
MINORITY_LABEL = 0  # malignant
TARGET_POINTS = 5.0  # the target: some strategy lifts minority recall by >= 5 points


def skewed_training(data: Any, minority: float, seed: int) -> Any:
    """``data`` with minority rows dropped from the training split until they are ``minority``."""
    import numpy as np

    index = data.schema.classes.index(MINORITY_LABEL)
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(data.y_train == index)
    others = len(data.y_train) - len(rows)
    keep_n = round(minority * others / (1 - minority))  # keep_n / (keep_n + others) = minority
    keep = np.sort(
        np.concatenate(
            [np.flatnonzero(data.y_train != index), rng.choice(rows, keep_n, replace=False)]
        )
    )
    return replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep])


def one(strategy: str, seed: int, minority: float) -> dict[str, Any]:
    import logging

    import numpy as np
    import torch
    from sklearn.metrics import f1_score, recall_score

    from danlu.config import ImbalanceConfig, load_recipe
    from danlu.data import imbalance_class_weight, prepare_data, resample_training
    from danlu.models import MODELS
    from danlu.pipeline import check_recipe
    from danlu.tasks import get_task
    from danlu.train import Trainer, seed_everything

    torch.set_num_threads(1)
    logging.getLogger("danlu").setLevel(logging.ERROR)
    recipe = load_recipe(RECIPE, [f"data.split.seed={seed}", f"train.seed={seed}"])
    options = check_recipe(recipe)
    data = skewed_training(prepare_data(recipe.data, recipe.task), minority, seed)
    classes = data.schema.classes
    counts_before = np.bincount(data.y_train, minlength=len(classes)).tolist()
    cfg = ImbalanceConfig(method=strategy)
    x, y, _ = resample_training(data.x_train, data.y_train, cfg, classes, seed)
    data = replace(data, x_train=x, y_train=y, class_weight=imbalance_class_weight(cfg, classes))
    task = get_task(recipe.task)
    seed_everything(seed)
    model = MODELS.get(recipe.model.type).builder(options, data.schema, task)
    start = time.perf_counter()
    trainer = Trainer(recipe.train).fit(model, task, data)
    seconds = time.perf_counter() - start
    predicted = trainer.predict_outputs(data.x_test).argmax(dim=1).numpy()
    index = classes.index(MINORITY_LABEL)
    return {
        "strategy": strategy,
        "seed": seed,
        "minority_recall": float(
            recall_score(data.y_test, predicted, labels=[index], average="macro")
        ),
        "macro_f1": float(f1_score(data.y_test, predicted, average="macro")),
        "train_counts_before": counts_before,
        "train_counts_after": np.bincount(data.y_train, minlength=len(classes)).tolist(),
        "test_counts": np.bincount(data.y_test, minlength=len(classes)).tolist(),
        "epochs_run": trainer.epoch,
        "train_seconds": seconds,
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std per strategy, and the best strategy's minority-recall gain over none."""
    summary: dict[str, Any] = {}
    for strategy in STRATEGIES:
        mine = [r for r in results if r["strategy"] == strategy]
        recall = _mean_std([r["minority_recall"] for r in mine])
        f1 = _mean_std([r["macro_f1"] for r in mine])
        summary[strategy] = {
            "minority_recall_mean": recall[0],
            "minority_recall_std": recall[1],
            "macro_f1_mean": f1[0],
            "macro_f1_std": f1[1],
            "train_counts_first_seed": mine[0]["train_counts_after"],
        }
    base = summary["none"]["minority_recall_mean"]
    best = max(STRATEGIES[1:], key=lambda s: summary[s]["minority_recall_mean"])
    gain = 100 * (summary[best]["minority_recall_mean"] - base)
    return {
        "strategies": summary,
        "best_strategy": best,
        "best_minority_recall_gain_points": gain,
        "met": gain >= TARGET_POINTS,
        "train_counts_before_first_seed": results[0]["train_counts_before"],
        "test_counts_first_seed": results[0]["test_counts"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--minority", type=float, nargs="+", default=[0.1, 0.05])
    args = parser.parse_args()
    start = time.perf_counter()
    levels: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []
    for minority in args.minority:
        results = [one(s, seed, minority) for s in STRATEGIES for seed in args.seeds]
        runs += [{"minority": minority, **r} for r in results]
        levels[f"{minority:g}"] = summarise(results)
    elapsed = time.perf_counter() - start
    rows = []
    for minority in args.minority:
        level = levels[f"{minority:g}"]
        base = level["strategies"]["none"]["minority_recall_mean"]
        for strategy in STRATEGIES:
            s = level["strategies"][strategy]
            rows.append(
                [
                    f"{minority:.0%}",
                    f"`{strategy}`",
                    f"{s['train_counts_first_seed']}",
                    f"**{s['minority_recall_mean']:.3f}** ± {s['minority_recall_std']:.3f}",
                    f"{100 * (s['minority_recall_mean'] - base):+.1f}",
                    f"{s['macro_f1_mean']:.3f} ± {s['macro_f1_std']:.3f}",
                ]
            )
    payload = {
        "benchmark": "imbalance",
        "recipe": "examples/breast_cancer_mlp.yaml",
        "seeds": args.seeds,
        "minority_fractions_of_training": args.minority,
        "target_gain_points": TARGET_POINTS,
        "levels": levels,
        "runs": runs,
        "seconds": elapsed,
        "machine": machine(),
    }
    verdicts = "; ".join(
        f"at {m:.0%}: best `{levels[f'{m:g}']['best_strategy']}`, "
        f"{levels[f'{m:g}']['best_minority_recall_gain_points']:+.1f} points "
        f"({'met' if levels[f'{m:g}']['met'] else 'not met'})"
        for m in args.minority
    )
    first = levels[f"{args.minority[0]:g}"]
    notes = (
        "Breast cancer; malignant (label 0, the minority) rows dropped from the *training split "
        "only* (seeded) until they are the given share of training rows; validation and test "
        f"splits untouched (test [malignant, benign] = {first['test_counts_first_seed']} for the "
        f"first seed, so one test row is {100 / first['test_counts_first_seed'][0]:.1f} points of "
        "minority recall). MLP of `examples/breast_cancer_mlp.yaml` (early stopping on the "
        f"untouched validation split), seeds {args.seeds} (split, subsampling, resampling and "
        "training); mean ± std over seeds; Δ = minority recall minus `none`'s, in points. "
        f"Target: some strategy ≥ +{TARGET_POINTS:g} points; {verdicts}. "
        f"Total {elapsed:.0f} s on {machine()['cpus']} CPUs, one torch thread. "
        "Command: `.venv/bin/python bench/imbalance.py`"
    )
    path = write(
        "imbalance",
        payload,
        [
            "minority share",
            "strategy",
            "train counts, first seed",
            "minority recall",
            "Δ (points)",
            "macro F1",
        ],
        rows,
        notes=notes,
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
