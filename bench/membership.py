"""Does differential privacy close the membership-inference leak the trust report measures?

The same recipe is trained twice on the same split — without privacy, and with DP-SGD at
ε = 1 (δ = 1e-5, ``train.privacy``) — and each model's trust report carries its membership
section (``evaluate.membership``): the loss-threshold and the calibrated attack's AUC with their
95% bootstrap intervals (1,000 resamples) over equal samples of training rows and held-out
(validation + test) rows. Three seeds (the split and the training seed both = the seed).

The recipe is deliberately prone to leak — a small training split (30% of the rows), a wide MLP
without dropout or weight decay, many epochs, no early stopping — since a well-regularised model
on easy data leaks little to begin with:

- breast cancer (``builtin:breast_cancer``; 569 rows: 170 training, 399 held out);
- digits (``builtin:digits``; 1,797 rows: 539 training, 1,258 held out);
- breast cancer with a quarter of the labels flipped (seeded), the case of noisy labels in
  customer data: a network memorises the flipped training rows.

Target (the issue): the DP model's AUC is within noise of 0.5 (its interval holds 0.5), and the
non-private model's is higher.

    OMP_NUM_THREADS=1 python bench/membership.py [--seeds 3] [--only NAME] [--rewrite]

``--rewrite`` writes the tables again from ``bench/results/membership.json`` without training.
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

EPSILON, DELTA, MAX_GRAD_NORM = 1.0, 1e-5, 1.0
MODEL = {"type": "mlp", "hidden": [256, 256], "dropout": 0.0}
CONFIGS: dict[str, dict[str, Any]] = {
    "breast cancer": {"source": "builtin:breast_cancer", "epochs": 100},
    "digits": {"source": "builtin:digits", "epochs": 60},
    "breast cancer, 25% labels flipped": {
        "source": "builtin:breast_cancer",
        "epochs": 100,
        "flip": 0.25,
    },
}
ATTACKS = ("loss_threshold", "calibrated")
EVALUATE = {
    "bootstrap": 1000,
    "baselines": False,
    "training": False,
    "calibration": False,
    "robustness": False,
    "explain": False,
    "cost": False,
    "membership": {"seed": 0},
}


def _frame(config: dict[str, Any]) -> Any:
    """The rows with a seeded share of the labels flipped (None: the built-in data as is)."""
    if "flip" not in config:
        return None
    import numpy as np
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.copy()
    flip = np.random.default_rng(1234).random(len(frame)) < config["flip"]
    frame.loc[flip, "target"] = 1 - frame.loc[flip, "target"]
    return frame


def one(name: str, config: dict[str, Any], seed: int, private: bool) -> dict[str, Any]:
    import torch

    import danlu.pipeline
    from danlu.store import SqlStore

    torch.set_num_threads(1)
    train: dict[str, Any] = {
        "epochs": config["epochs"],
        "batch_size": 32,
        "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
        "checkpoint": {"every": 0},
        "seed": seed,
    }
    if private:
        train["privacy"] = {
            "target_epsilon": EPSILON,
            "delta": DELTA,
            "max_grad_norm": MAX_GRAD_NORM,
        }
    recipe = {
        "name": f"membership-{'dp' if private else 'plain'}",
        "data": {"source": config["source"], "split": {"test": 0.5, "val": 0.2, "seed": seed}},
        "task": "classification",
        "model": MODEL,
        "train": train,
        "evaluate": EVALUATE,
    }
    with tempfile.TemporaryDirectory() as home:
        store = SqlStore(home=home)
        start = time.perf_counter()
        result = danlu.pipeline.run(recipe, store=store, data=_frame(config))
        seconds = time.perf_counter() - start
        run = store.get_run(result.run_id)
        store.close()
    report = result.report
    assert report is not None
    section = report.section("membership")
    assert section is not None
    metrics = report.test_metrics()
    return {
        "data": name,
        "seed": seed,
        "private": private,
        "epsilon_spent": run.metrics.get("privacy_epsilon"),
        "accuracy": metrics.get("accuracy"),
        "members": section.data["members"],
        "loss_threshold": section.data["loss_threshold"],
        "calibrated": section.data["calibrated"],
        "mean_loss": section.data["mean_loss"],
        "flags": list(section.flags),
        "seconds": seconds,
        "section_seconds": section.seconds,
    }


def _ci(cell: dict[str, float]) -> str:
    return f"{cell['value']:.3f} [{cell['low']:.3f}, {cell['high']:.3f}]"


def summarise(results: list[dict[str, Any]], seeds: int, total: float) -> None:
    """Write bench/results/membership.{json,md} from the runs."""
    rows, summary = [], {}
    for name in dict.fromkeys(r["data"] for r in results):
        for private in (False, True):
            mine = [r for r in results if r["data"] == name and r["private"] == private]
            for r in mine:
                rows.append(
                    [
                        name,
                        f"ε = {EPSILON:g}" if private else "non-private",
                        r["seed"],
                        f"{100 * r['accuracy']:.1f}%",
                        f"{r['epsilon_spent']:.3f}" if r["epsilon_spent"] is not None else "—",
                        r["members"],
                        _ci(r["loss_threshold"]["auc"]),
                        _ci(r["calibrated"]["auc"]),
                        _ci(r["loss_threshold"]["tpr_at_1pct_fpr"]),
                        "yes" if r["flags"] else "no",
                    ]
                )
            holds_half = [_holds_half(r, a) for r in mine for a in ATTACKS]
            summary[f"{name} / {'dp' if private else 'plain'}"] = {
                "median_strongest_auc": statistics.median(_strongest(r) for r in mine),
                "median_accuracy": statistics.median(r["accuracy"] for r in mine),
                "intervals_holding_half": sum(holds_half),
                "intervals": len(holds_half),
                "flagged": sum(bool(r["flags"]) for r in mine),
            }
    dp = [_holds_half(r, a) for r in results if r["private"] for a in ATTACKS]
    pairs = [
        (plain, dp_run)
        for plain in results
        if not plain["private"]
        for dp_run in results
        if dp_run["private"] and (dp_run["data"], dp_run["seed"]) == (plain["data"], plain["seed"])
    ]
    lower = sum(_strongest(d) < _strongest(p) for p, d in pairs)
    lines = [
        f"{key}: median strongest AUC {s['median_strongest_auc']:.3f}, accuracy "
        f"{100 * s['median_accuracy']:.1f}%, intervals holding 0.5: "
        f"{s['intervals_holding_half']} of {s['intervals']}, flagged {s['flagged']} of {seeds}"
        for key, s in summary.items()
    ]
    section_seconds = statistics.median(r["section_seconds"] for r in results)
    notes = (
        f"ε = {EPSILON:g} models' AUC intervals (both attacks) holding 0.5: **{sum(dp)} of "
        f"{len(dp)}** (95% intervals: about {0.05 * len(dp):.1f} of {len(dp)} miss by chance "
        f"alone); the DP model's strongest AUC is below the non-private one's in {lower} of "
        f"{len(pairs)} seed pairs. (ε = {EPSILON:g} itself allows an attack AUC up to 0.73: "
        "TPR ≤ e^ε·FPR + δ.) Medians over "
        f"{seeds} seeds: "
        + "; ".join(lines)
        + f". Recipe: MLP {MODEL['hidden']}, no dropout or weight decay, Adam lr 1e-3, batch "
        "32, no early stopping (breast cancer 100 epochs, digits 60); split test 0.5 / val 0.2 "
        f"(30% of the rows trained on); DP-SGD target ε = {EPSILON:g}, δ = {DELTA:g}, "
        f"max_grad_norm {MAX_GRAD_NORM:g}. Flagged: an attack's AUC lower bound above 0.6. The "
        f"membership section took {section_seconds:.2f} s (median, 1,000 bootstrap resamples). "
        f"Total {total:.0f} s on {os.cpu_count()} CPUs, one torch thread. Command: "
        f"`OMP_NUM_THREADS=1 .venv/bin/python bench/membership.py --seeds {seeds}`"
    )
    header = [
        "data",
        "training",
        "seed",
        "test accuracy",
        "ε spent",
        "rows per side",
        "loss-threshold AUC (95% CI)",
        "calibrated AUC (95% CI)",
        "TPR at 1% FPR (loss)",
        "flagged",
    ]
    payload = {
        "machine": machine(),
        "seeds": seeds,
        "seconds": total,
        "results": results,
        "summary": summary,
        "dp_intervals_holding_half": [sum(dp), len(dp)],
    }
    path = write("membership", payload, header, rows, notes)
    print(path.read_text())


def _holds_half(run: dict[str, Any], attack: str) -> bool:
    return bool(run[attack]["auc"]["low"] <= 0.5 <= run[attack]["auc"]["high"])


def _strongest(run: dict[str, Any]) -> float:
    return max(float(run[a]["auc"]["value"]) for a in ATTACKS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", choices=sorted(CONFIGS), default=None)
    parser.add_argument(
        "--rewrite", action="store_true", help="rewrite the tables from the saved JSON"
    )
    args = parser.parse_args()
    if args.rewrite:
        import json

        from _report import RESULTS

        saved = json.loads((RESULTS / "membership.json").read_text())
        summarise(saved["results"], saved["seeds"], saved["seconds"])
        return
    started = time.perf_counter()
    results = []
    for name, config in CONFIGS.items():
        if args.only and name != args.only:
            continue
        for seed in range(args.seeds):
            for private in (False, True):  # side by side, same split and seed
                row = one(name, config, seed, private)
                results.append(row)
                print(
                    f"{name} seed {seed} {'DP' if private else 'plain'}: accuracy "
                    f"{row['accuracy']:.3f} loss AUC {_ci(row['loss_threshold']['auc'])} "
                    f"calibrated {_ci(row['calibrated']['auc'])} ε {row['epsilon_spent']}",
                    flush=True,
                )
    summarise(results, args.seeds, time.perf_counter() - started)


if __name__ == "__main__":
    main()
