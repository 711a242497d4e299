"""Do explanations find the features that matter? y depends on 3 of 20 features; are those 3 the
top-3 by global importance?

For each seed, 1,500 rows of 20 independent standard normal features ``f0 .. f19`` are drawn, and
three informative features ``i, j, k`` are chosen by the same seed. The binary target is
``y = 1 if 2·f_i − 1.5·f_j + f_k + 0.1·noise > 0``. The data is written to a CSV and trained
through danlu (``run_training`` with an MLP of one hidden layer of 32 units, 20 epochs, split and
training seeded with the seed, runs recorded in a temporary store), then ``explain_section``
explains 200 seeded test rows with each method. A seed is a hit for a method when its top-3 raw
features by global importance are exactly ``{i, j, k}``.

Target (the issue): the 3 are the top-3 in at least 9 of 10 seeds.

    python bench/explain_sanity.py [--seeds 0 1 ...] [--methods integrated_gradients ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from _report import machine, write  # noqa: E402

METHODS = ("integrated_gradients", "gradient_shap", "kernel_shap")
ROWS, FEATURES, EPOCHS, EXPLAINED = 1500, 20, 20, 200
COEFFICIENTS = (2.0, -1.5, 1.0)
TARGET_HITS = 9  # of 10 seeds


def dataset(seed: int, path: Path) -> list[str]:
    """Write the seed's CSV; return the informative features' names (largest weight first)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    informative = rng.choice(FEATURES, size=3, replace=False)
    x = rng.normal(size=(ROWS, FEATURES))
    logit = x[:, informative] @ np.asarray(COEFFICIENTS) + 0.1 * rng.normal(size=ROWS)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(FEATURES)])
    frame["y"] = (logit > 0).astype(int)
    frame.to_csv(path, index=False)
    return [f"f{i}" for i in informative]


def one(seed: int, methods: list[str], home: Path) -> dict[str, Any]:
    import logging

    import torch

    from danlu.config import ExplainConfig, load_recipe
    from danlu.data import prepare_data
    from danlu.evaluate import EvalData
    from danlu.evaluate._explain import explain_section
    from danlu.store import SqlStore
    from danlu.train import run_training

    torch.set_num_threads(1)
    logging.getLogger("danlu").setLevel(logging.ERROR)
    csv = home / f"sparse_{seed}.csv"
    informative = dataset(seed, csv)
    recipe = load_recipe(
        {
            "name": "explain-sanity",
            "data": {"source": str(csv), "target": "y", "split": {"seed": seed}},
            "task": "classification",
            "model": {"type": "mlp", "hidden": [32], "dropout": 0.0},
            "train": {"epochs": EPOCHS, "checkpoint": {"every": 0}, "seed": seed},
        }
    )
    prepared = prepare_data(recipe.data, recipe.task)
    store = SqlStore(home=home / f"store_{seed}")
    try:
        result = run_training(recipe, prepared=prepared, store=store)
    finally:
        store.close()
    data = EvalData.from_prepared(result.model.eval(), result.task, prepared)
    accuracy = data.task.metrics(data.test_outputs, data.y, data.schema)["accuracy"]
    record: dict[str, Any] = {"seed": seed, "informative": informative, "accuracy": accuracy}
    for method in methods:
        start = time.perf_counter()
        section = explain_section(data, ExplainConfig(method=method, samples=EXPLAINED, seed=seed))
        ranked = [item["feature"] for item in section.data["importance"]]
        scores = [item["importance"] for item in section.data["importance"]]
        record[method] = {
            "hit": set(ranked[:3]) == set(informative),
            "top5": ranked[:5],
            "ranks": [ranked.index(f) + 1 for f in informative],
            # how clearly the informative features stand out: weakest of them / strongest other
            "margin": min(scores[ranked.index(f)] for f in informative)
            / max(s for f, s in zip(ranked, scores, strict=True) if f not in informative),
            "seconds": time.perf_counter() - start,
        }
    return record


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="danlu-explain-") as tmp:
        runs = [one(seed, args.methods, Path(tmp)) for seed in args.seeds]
    elapsed = time.perf_counter() - start
    hits = {m: sum(r[m]["hit"] for r in runs) for m in args.methods}
    rows = [
        [
            r["seed"],
            ", ".join(r["informative"]),
            f"{r['accuracy']:.3f}",
            *(
                f"{'yes' if r[m]['hit'] else '**no**'} ({', '.join(r[m]['top5'][:3])}; "
                f"margin {r[m]['margin']:.1f}×)"
                for m in args.methods
            ),
        ]
        for r in runs
    ]
    rows.append(["hits", "", "", *(f"**{hits[m]}/{len(runs)}**" for m in args.methods)])
    payload = {
        "benchmark": "explain_sanity",
        "rows": ROWS,
        "features": FEATURES,
        "coefficients": COEFFICIENTS,
        "epochs": EPOCHS,
        "explained_rows": EXPLAINED,
        "seeds": args.seeds,
        "methods": args.methods,
        "hits": hits,
        "target_hits": TARGET_HITS,
        "met": {m: hits[m] >= TARGET_HITS for m in args.methods},
        "runs": runs,
        "seconds": elapsed,
        "machine": machine(),
    }
    verdicts = "; ".join(
        f"`{m}` {hits[m]}/{len(runs)} ({'met' if hits[m] >= TARGET_HITS else 'not met'})"
        for m in args.methods
    )
    notes = (
        f"{ROWS} rows of {FEATURES} independent N(0, 1) features; y = 1 if "
        f"{COEFFICIENTS[0]:g}·f_i {COEFFICIENTS[1]:+g}·f_j {COEFFICIENTS[2]:+g}·f_k + 0.1·noise > 0, "
        "with the informative i, j, k (listed largest weight first) drawn by the seed. MLP "
        f"[32], {EPOCHS} epochs, trained with `danlu.train.run_training` (split and training "
        f"seeded); {EXPLAINED} seeded test rows explained by `explain_section` (baselines: the "
        "training mean for integrated gradients and kernel SHAP, 20 seeded training rows for "
        "gradient SHAP). A hit: the top-3 raw features by global importance (mean |attribution|) "
        "are exactly the informative three; margin: the weakest informative feature's importance "
        "over the strongest other's. "
        f"Target: ≥ {TARGET_HITS}/10 seeds; {verdicts}. "
        f"Total {elapsed:.0f} s on {machine()['cpus']} CPUs, one torch thread. "
        "Command: `OMP_NUM_THREADS=1 .venv/bin/python bench/explain_sanity.py`"
    )
    header = ["seed", "informative", "test accuracy", *(f"`{m}` top-3" for m in args.methods)]
    path = write("explain_sanity", payload, header, rows, notes=notes)
    print(path.read_text())


if __name__ == "__main__":
    main()
