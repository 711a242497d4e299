"""Test-split quality of every example recipe, mean of 3 seeds, next to a scikit-learn baseline.

Each seed changes both the split (``data.split.seed``) and the training (``train.seed``). The
baseline (logistic regression, or ridge for regression) is fitted on the same prepared training
split, so the table shows what the neural model adds.

    python bench/example_accuracy.py [--seeds 0 1 2] [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import write  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {
    "digits_cnn": ("accuracy", 0.985),
    "breast_cancer_mlp": ("accuracy", 0.97),
    "wine_mlp": ("accuracy", 0.97),
    "diabetes_regression": ("r2", 0.45),
}


def one(example: str, seed: int, home: str) -> tuple[str, int, float, float]:
    os.environ["OMP_NUM_THREADS"] = "1"
    import logging

    import torch
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import accuracy_score, r2_score

    import danlu

    torch.set_num_threads(1)
    logging.getLogger("danlu").setLevel(logging.ERROR)
    metric, _ = TARGETS[example]
    result = danlu.run(
        ROOT / "examples" / f"{example}.yaml",
        overrides=[f"train.seed={seed}", f"data.split.seed={seed}"],
        home=home,
    )
    from danlu.config import load_recipe
    from danlu.data import prepare_data

    recipe = load_recipe(ROOT / "examples" / f"{example}.yaml", [f"data.split.seed={seed}"])
    data = prepare_data(recipe.data, recipe.task)
    if recipe.task == "regression":
        base = r2_score(data.y_test, Ridge().fit(data.x_train, data.y_train).predict(data.x_test))
    else:
        base = accuracy_score(
            data.y_test,
            LogisticRegression(max_iter=5000).fit(data.x_train, data.y_train).predict(data.x_test),
        )
    return example, seed, result.metrics[metric], float(base)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as home, ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(one, ex, seed, home) for ex in TARGETS for seed in args.seeds]
        results = [f.result() for f in futures]
    payload: dict = {"benchmark": "example_accuracy", "seeds": args.seeds, "examples": {}}
    rows = []
    for example, (metric, target) in TARGETS.items():
        values = [v for ex, _, v, _ in results if ex == example]
        bases = [b for ex, _, _, b in results if ex == example]
        mean = statistics.mean(values)
        payload["examples"][example] = {
            "metric": metric,
            "target": target,
            "per_seed": values,
            "mean": mean,
            "baseline_per_seed": bases,
            "baseline_mean": statistics.mean(bases),
        }
        rows.append(
            [
                f"examples/{example}.yaml",
                f"test {metric}",
                f"≥ {target}",
                f"**{mean:.4f}**",
                ", ".join(f"{v:.4f}" for v in values),
                f"{statistics.mean(bases):.4f}",
                "yes" if mean >= target else "no",
            ]
        )
    path = write(
        "example_accuracy",
        payload,
        ["recipe", "metric", "target", "mean", "per seed", "sklearn baseline mean", "met"],
        rows,
        notes=f"Seeds {args.seeds} (split and training). Baseline: LogisticRegression / Ridge on the same prepared split. Command: `python bench/example_accuracy.py`",
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
