"""Can temperature scaling hurt the served model? Test log-loss and ECE of the model as served
(``evaluate.calibration.temperature: true``) against the same model uncalibrated (T = 1), and
against the rule danlu had before (always serve the temperature fitted on validation, searched in
[0.05, 20]: the reference, computed in the same run from the same validation logits).

Each configuration is trained with ``danlu.pipeline.run`` for a few seeds (the split and the
training seed both = the seed) with ``evaluate:`` holding the calibration and metrics sections:

- penguins (``builtin:penguins``; 344 rows, split test 0.2 / val 0.1: 35 validation rows), the
  issue's case, where the old rule fitted T ≈ 0.1;
- penguins with val 0.3 (103 validation rows): enough rows for danlu to fit and test a T;
- digits (``builtin:digits``; 1,797 rows, val 0.1: 180 validation rows), an MLP.

"Worse beyond noise" means the 95% paired-bootstrap interval (1,000 resamples of the test rows)
of the per-row log-loss difference (served − uncalibrated) lies above 0.

Target (the issue): the served model's test log-loss is never worse than uncalibrated beyond
noise on penguins and digits.

    OMP_NUM_THREADS=1 python bench/calibration.py [--seeds 3] [--only NAME]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from _report import machine, write  # noqa: E402

MLP = {"type": "mlp", "hidden": [32], "dropout": 0.1}
TRAIN = {
    "batch_size": 32,
    "early_stopping": {"monitor": "val_loss", "patience": 10},
    "checkpoint": {"every": 0},
}
CONFIGS = {
    "penguins": {"source": "builtin:penguins", "val": 0.1, "epochs": 60, "model": MLP},
    "penguins, val 0.3": {"source": "builtin:penguins", "val": 0.3, "epochs": 60, "model": MLP},
    "digits": {
        "source": "builtin:digits",
        "val": 0.1,
        "epochs": 30,
        "model": {"type": "mlp", "hidden": [64], "dropout": 0.1},
    },
    # over-trained (no early stopping, no dropout): the over-confident network of Guo et al.
    "digits, over-trained": {
        "source": "builtin:digits",
        "val": 0.2,
        "epochs": 150,
        "model": {"type": "mlp", "hidden": [256], "dropout": 0.0},
        "train": {"early_stopping": None},
    },
}
EVALUATE = {
    "bootstrap": 0,
    "baselines": False,
    "training": False,
    "calibration": {"temperature": True},
    "robustness": False,
    "explain": False,
    "cost": False,
}


def old_temperature(logits: Any, y: Any) -> float:
    """The rule before: the NLL-minimising T in [0.05, 20], always served."""
    import numpy as np
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(y)), y].mean())

    found = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(found.x))


def one(name: str, seed: int, home: Path) -> dict[str, Any]:
    """Train one configuration; the calibration section's figures and the paired check."""
    import logging

    import numpy as np
    import torch
    from scipy.special import log_softmax

    from danlu.config import load_recipe
    from danlu.data import prepare_data
    from danlu.evaluate import bootstrap_ci
    from danlu.pipeline import run

    torch.set_num_threads(1)
    logging.getLogger("danlu").setLevel(logging.ERROR)
    config = CONFIGS[name]
    recipe = {
        "name": f"calibration-{name.replace(', ', '-').replace(' ', '')}",
        "data": {
            "source": config["source"],
            "split": {"test": 0.2, "val": config["val"], "stratify": True, "seed": seed},
            "prepare": {"missing": "median", "scale": "standard"},
        },
        "task": "classification",
        "model": config["model"],
        "train": {**TRAIN, "epochs": config["epochs"], "seed": seed, **config.get("train", {})},
        "evaluate": EVALUATE,
    }
    start = time.perf_counter()
    result = run(recipe, home=home)  # a store of its own
    seconds = time.perf_counter() - start
    calibration = result.report.section("calibration").data
    tests, fit = calibration["test"], calibration["temperature_fit"]
    served_t = calibration["temperature"]

    prepared = prepare_data(load_recipe(recipe).data, result.task)  # the same split again
    with torch.inference_mode():
        raw_test = result.model(torch.as_tensor(prepared.x_test)).double().numpy()
        raw_val = result.model(torch.as_tensor(prepared.x_val)).double().numpy()
    y, y_val = prepared.y_test.astype(int), prepared.y_val.astype(int)

    def row_nll(t: float) -> np.ndarray:
        return -log_softmax(raw_test / t, axis=1)[np.arange(len(y)), y]

    paired = bootstrap_ci(lambda d: float(d.mean()), row_nll(served_t) - row_nll(1.0), seed=0)
    t_old = old_temperature(raw_val, y_val)
    old = float(row_nll(t_old).mean())
    assert abs(float(row_nll(1.0).mean()) - tests["uncalibrated"]["log_loss"]) < 1e-4
    return {
        "config": name,
        "seed": seed,
        "val_rows": len(y_val),
        "test_rows": len(y),
        "accuracy": float(result.metrics["accuracy"]),
        "uncalibrated": tests["uncalibrated"],
        "served": tests["served"],
        "temperature_fitted": fit["fitted"],
        "kept": fit["kept"],
        "reason": fit["reason"],
        "flagged_worse": calibration["worse_after_scaling"],
        "served_minus_uncalibrated": {
            "value": paired.value,
            "low": paired.low,
            "high": paired.high,
        },
        "worse_beyond_noise": paired.low > 0,
        "old_rule": {"temperature": t_old, "log_loss": old},
        "seconds": seconds,
    }


def _why(run: dict[str, Any]) -> str:
    if run["kept"]:
        return "kept"
    if run["temperature_fitted"] is None:
        return "refused: " + ("few rows" if "fewer than" in run["reason"] else "no mistakes")
    return "not kept (no gain)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", choices=list(CONFIGS), help="run one configuration")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="danlu-calibration-") as tmp:
        runs = [
            one(name, seed, Path(tmp) / f"{i}_{seed}")
            for i, name in enumerate(CONFIGS)
            if args.only in (None, name)
            for seed in range(args.seeds)
        ]
    elapsed = time.perf_counter() - start

    rows = []
    for r in runs:
        fitted = r["temperature_fitted"]
        rows.append(
            [
                r["config"],
                r["seed"],
                r["val_rows"],
                f"{r['uncalibrated']['log_loss']:.4f}",
                f"{r['served']['log_loss']:.4f}",
                f"{r['old_rule']['log_loss']:.4f} (T = {r['old_rule']['temperature']:.3g})",
                f"{r['uncalibrated']['ece']:.4f}",
                f"{r['served']['ece']:.4f}",
                "—" if fitted is None else f"{fitted:.3g}",
                _why(r),
                f"{r['served_minus_uncalibrated']['value']:+.4f} "
                f"[{r['served_minus_uncalibrated']['low']:+.4f}, "
                f"{r['served_minus_uncalibrated']['high']:+.4f}]",
                "**yes**" if r["worse_beyond_noise"] else "no",
                ", ".join("ECE" if k == "ece" else "log-loss" for k in r["flagged_worse"]) or "—",
            ]
        )
    ratios = [r["served"]["log_loss"] / r["uncalibrated"]["log_loss"] for r in runs]
    old_ratios = [r["old_rule"]["log_loss"] / r["uncalibrated"]["log_loss"] for r in runs]
    worse = sum(r["worse_beyond_noise"] for r in runs)
    summary = {
        "runs": len(runs),
        "worse_beyond_noise": worse,
        "target_met": worse == 0,
        "served_over_uncalibrated_log_loss": {
            "median": statistics.median(ratios),
            "max": max(ratios),
        },
        "old_rule_over_uncalibrated_log_loss": {
            "median": statistics.median(old_ratios),
            "max": max(old_ratios),
        },
        "kept": sum(r["kept"] for r in runs),
        "seconds": elapsed,
    }
    notes = (
        f"Served = the model `danlu run` ships with `evaluate.calibration.temperature: true` "
        f"(T kept only with ≥ 100 validation rows holding a mistake, T in [0.25, 4], and a "
        f"5-fold cross-fitted validation log-loss gain whose 95% bootstrap interval is above 0). "
        f"Old rule = the temperature fitted on validation in [0.05, 20] and always served (the "
        f"reference, from the same validation logits). Served − uncalibrated: mean per-row test "
        f"log-loss difference with its 95% paired-bootstrap interval. Worse beyond noise: "
        f"{worse} of {len(runs)} runs (target 0: **{'met' if worse == 0 else 'not met'}**). "
        f"Test log-loss served / uncalibrated: median {summary['served_over_uncalibrated_log_loss']['median']:.3f}, "
        f"max {summary['served_over_uncalibrated_log_loss']['max']:.3f}; old rule / uncalibrated: "
        f"median {summary['old_rule_over_uncalibrated_log_loss']['median']:.3f}, max "
        f"{summary['old_rule_over_uncalibrated_log_loss']['max']:.3f}. 'Report flags worse': the "
        f"test figures the report flags as worse after the served temperature. MLPs (penguins "
        f"hidden 32, 60 epochs; digits hidden 64, 30 epochs; early stopping on val_loss, patience "
        f"10; 'over-trained': hidden 256, no dropout, 150 epochs, no early stopping, val 0.2), "
        f"split test 0.2 stratified, split and training seed = seed. Total {elapsed:.0f} s on "
        f"{os.cpu_count()} CPUs, one torch thread. Command: "
        f"`OMP_NUM_THREADS=1 .venv/bin/python bench/calibration.py --seeds {args.seeds}`"
    )
    header = [
        "data",
        "seed",
        "val rows",
        "test log-loss, T = 1",
        "served",
        "old rule",
        "test ECE, T = 1",
        "served",
        "fitted T",
        "temperature",
        "served − T = 1 (95% CI)",
        "worse beyond noise",
        "report flags worse",
    ]
    path = write(
        "calibration",
        {"machine": machine(), "summary": summary, "runs": runs},
        header,
        rows,
        notes,
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
