"""Tuning efficiency on digits: grid (reference) vs random, TPE and TPE + ASHA, with ``danlu.tune``.

The base recipe is the digits CNN (``builtin:digits``, split test 0.2 / val 0.1 stratified, seed 0;
min-max scaling; ``cnn`` with a 64-unit dense layer; AdamW with a cosine lr schedule), trained for
a fixed number of epochs per trial (15) with no early stopping, so "to completion" means every
epoch. A complete trial's value is its last epoch's metric; the cosine schedule (lr annealed to 0)
keeps that value from jumping with the last few optimiser steps (``--scheduler none`` to compare).
The space:

- ``train.optimizer.lr``            grid [5e-4, 2e-3, 8e-3]   others loguniform [5e-4, 8e-3]
- ``train.optimizer.weight_decay``  grid [1e-4, 1e-2]         others loguniform [1e-4, 1e-2]
- ``model.dropout``                 grid [0.1, 0.4]           others uniform [0.1, 0.4]
- ``model.channels``                choice [[16, 32], [32, 64]]
- ``train.batch_size``              choice [32, 128]

The grid's 3 × 2 × 2 × 2 × 2 = 48 points run to completion as the reference. Random, TPE and
TPE + ASHA (``pruner: asha``, min_resource 1, reduction_factor 3) each get the same 48 trials,
once per sampler seed (``tune.sampler.seed``). Trials are tuned on ``val_loss`` (minimised: on
180 validation rows ``val_accuracy`` ties between many trials); a study's *validation-selected*
trial is its best complete trial by that metric, and its test accuracy is what is compared
(pruned trials have no test score, and a test score never chooses a trial). The grid's best test
accuracy of any point (an oracle that selects on the test split) is reported beside it, and so
is each selected configuration retrained with 5 fresh training seeds (``--retrain-seeds``): on
360 test rows one row is 0.28 points, so one training run's test accuracy is mostly luck at the
0.3-point scale of the target.

Epochs count every epoch every trial trained, pruned trials included (the trial's ``epochs``).
Target (from the issue): TPE + ASHA's validation-selected test accuracy (mean over seeds) within
0.3 points of the grid's validation-selected one, spending ≤ 35% of the grid's epochs. Also
written: best-so-far (metric and selected test accuracy) against epochs spent for every study,
and its mean over seeds; a plot of it (PNG + SVG).

Each study runs in-process (jobs=1, one torch thread) with its own temporary DANLU_HOME.

    python bench/tune_efficiency.py [--seeds 0 1 2] [--epochs 15] [--scheduler cosine] [--quick]
    python bench/tune_efficiency.py --jobs-timing [--quick]    # jobs=1 vs jobs=2 wall time only

``--jobs-timing`` is a separate measurement (own results file ``tune_jobs``): the same small
study (24 random-sampler trials of the digits CNN, fixed epochs, no pruner) tuned with jobs=1 and jobs=2,
each in a fresh interpreter; reported: wall time per completed trial and the ratio jobs2/jobs1
(target ≤ 0.65). Run it on an otherwise idle machine with at least 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("DANLU_DB_URL", None)  # every study gets its own SQLite store in a temp home

import _report  # noqa: E402
from _report import machine, write  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NAME = "tune_efficiency"
TARGET_POINTS = 0.3  # accuracy within this many points of the grid's
TARGET_EPOCH_SHARE = 0.35  # ... spending at most this share of the grid's epochs
TARGET_JOBS_RATIO = 0.65

GRID = {
    "train.optimizer.lr": [5e-4, 2e-3, 8e-3],
    "train.optimizer.weight_decay": [1e-4, 1e-2],
    "model.dropout": [0.1, 0.4],
    "model.channels": [[16, 32], [32, 64]],
    "train.batch_size": [32, 128],
}
STRATEGIES = ("grid", "random", "tpe", "tpe+asha")
LABELS = {"grid": "grid", "random": "random", "tpe": "TPE", "tpe+asha": "TPE + ASHA"}
CURVE_LABELS = {
    **LABELS,
    "grid": "grid (mean over 1000 orders)",
    "grid_as_run": "grid (the order it ran in)",
}


def base_recipe(epochs: int, scheduler: str = "cosine") -> dict[str, Any]:
    return {
        "name": "bench-tune",
        "data": {
            "source": "builtin:digits",
            "split": {"test": 0.2, "val": 0.1, "stratify": True, "seed": 0},
            "prepare": {"scale": "minmax"},
        },
        "task": "classification",
        "model": {"type": "cnn", "channels": [16, 32], "hidden": 64, "dropout": 0.25},
        "train": {
            "epochs": epochs,
            "batch_size": 64,
            "optimizer": {"name": "adamw", "lr": 2e-3, "weight_decay": 1e-4},
            "scheduler": {"name": scheduler},
            "early_stopping": None,  # every complete trial trains every epoch
            "seed": 0,
            # no resumable checkpoint per epoch: it changes neither epochs nor accuracy
            "checkpoint": {"every": 0},
        },
    }


def space(strategy: str, grid: dict[str, list[Any]]) -> dict[str, Any]:
    """The grid's values as choices, or continuous ranges spanning them."""
    if strategy == "grid":
        return {k: {"choice": v} for k, v in grid.items()}
    out: dict[str, Any] = {}
    for key, values in grid.items():
        if key in ("train.optimizer.lr", "train.optimizer.weight_decay"):
            out[key] = (
                {"loguniform": [min(values), max(values)]}
                if len(values) > 1
                else {"choice": values}
            )
        elif key == "model.dropout":
            out[key] = (
                {"uniform": [min(values), max(values)]} if len(values) > 1 else {"choice": values}
            )
        else:
            out[key] = {"choice": values}
    return out


def tune_block(strategy: str, args: argparse.Namespace, grid: dict[str, list[Any]], seed: int):
    trials = math.prod(len(v) for v in grid.values()) if strategy == "grid" else args.trials
    sampler: dict[str, Any] = {"name": "tpe" if strategy.startswith("tpe") else strategy}
    sampler["seed"] = seed
    if sampler["name"] == "tpe" and args.startup_trials is not None:
        sampler["startup_trials"] = args.startup_trials
    pruner: dict[str, Any] = {"name": "none"}
    if strategy == "tpe+asha":
        pruner = {
            "name": "asha",
            "min_resource": args.min_resource,
            "reduction_factor": args.reduction_factor,
        }
    return {
        "metric": args.metric,
        "trials": trials,
        "sampler": sampler,
        "pruner": pruner,
        "space": space(strategy, grid),
    }


def run_study(strategy: str, seed: int, args: argparse.Namespace, grid: dict[str, list[Any]]):
    import logging

    import torch

    from danlu.tune import tune

    torch.set_num_threads(1)
    logging.getLogger("danlu").setLevel(logging.ERROR)
    recipe = {
        **base_recipe(args.epochs, args.scheduler),
        "tune": tune_block(strategy, args, grid, seed),
    }
    with tempfile.TemporaryDirectory(prefix="danlu-tune-bench-") as home:
        os.environ["DANLU_HOME"] = home
        start = time.perf_counter()
        result = tune(recipe, jobs=1, study=f"{strategy.replace('+', '-')}-{seed}", home=home)
        seconds = time.perf_counter() - start
        study = digest(strategy, seed, result.summary, seconds)
        best = result.summary["best"]
        if best is not None and args.retrain_seeds:
            study["retrained"] = retrain(recipe, best["values"], args.retrain_seeds, home)
    return study


def retrain(
    recipe: dict[str, Any], values: dict[str, Any], seeds: int, home: str
) -> dict[str, Any]:
    """The selected configuration trained again with fresh training seeds 1..N (not the seed 0
    it was selected with): its test accuracy without the selection's luck of one initialisation."""
    from danlu.config import load_recipe
    from danlu.data import prepare_data
    from danlu.train import run_training
    from danlu.tune import apply_params

    data = {k: v for k, v in recipe.items() if k != "tune"}
    data = apply_params(data, values)
    prepared = None
    accuracies = []
    for seed in range(1, seeds + 1):
        one = {**data, "name": f"retrain-{seed}", "train": {**data["train"], "seed": seed}}
        if prepared is None:
            loaded = load_recipe(one)
            prepared = prepare_data(loaded.data, loaded.task)
        result = run_training(one, home=home, stage="bench-retrain", prepared=prepared)
        accuracies.append(result.metrics["accuracy"])
    return {
        "train_seeds": list(range(1, seeds + 1)),
        "test_accuracy": accuracies,
        "test_accuracy_mean": statistics.mean(accuracies),
    }


def digest(strategy: str, seed: int, summary: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Selected trial, epochs, and the best-so-far curve of one study."""
    maximize = summary["direction"] == "maximize"
    rows = {t["number"]: t for t in summary["trials"]}

    def better(a: float, b: float | None) -> bool:
        return b is None or (a > b if maximize else a < b)

    curve, best = [], None
    for point in summary["history"]:
        trial = rows[point["trial"]]
        if trial["state"] == "complete" and trial["value"] is not None:
            if best is None or better(trial["value"], best["value"]):
                best = trial
        curve.append(
            {
                "trials": len(curve) + 1,
                "epochs": point["epochs_spent"],
                "metric": best["value"] if best else None,
                "test_accuracy": best["test"].get("accuracy") if best else None,
                "trial": point["trial"],
                "state": trial["state"],
            }
        )
    complete = [t for t in summary["trials"] if t["state"] == "complete"]
    oracle = max((t["test"].get("accuracy", 0.0) for t in complete), default=None)
    return {
        "strategy": strategy,
        "seed": seed,
        "direction": summary["direction"],
        "counts": summary["counts"],
        "epochs": sum(t["epochs"] for t in summary["trials"]),
        "epochs_spent_summary": summary["epochs_spent"],
        "selected": None
        if best is None
        else {
            "trial": best["number"],
            "metric": best["value"],
            "test_accuracy": best["test"].get("accuracy"),
            "params": best["params"],
            "epochs": best["epochs"],
        },
        "oracle_test_accuracy": oracle,
        "curve": curve,
        "trials": [
            {
                "number": t["number"],
                "state": t["state"],
                "value": t["value"],
                "epochs": t["epochs"],
                "test_accuracy": (t["test"] or {}).get("accuracy"),
                "params": t["params"],
            }
            for t in summary["trials"]
        ],
        "seconds": seconds,
    }


def _at(curve: list[dict[str, Any]], x: float, key: str) -> float | None:
    """The step function ``curve`` (best so far after each trial) at ``x`` epochs spent."""
    value = None
    for point in curve:
        if point["epochs"] > x:
            break
        value = point[key]
    return value


def mean_curve(studies: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
    """Mean over seeds of the best-so-far curves on a common grid of epochs spent (points where
    every seed has a complete trial)."""
    end = max(s["curve"][-1]["epochs"] for s in studies if s["curve"])
    out = []
    for x in range(step, end + step, step):
        x = min(x, end)
        metric = [_at(s["curve"], x, "metric") for s in studies]
        acc = [_at(s["curve"], x, "test_accuracy") for s in studies]
        if any(v is None for v in metric + acc):
            continue
        out.append(
            {
                "epochs": x,
                "metric": statistics.mean(metric),
                "test_accuracy": statistics.mean(acc),
                "seeds_finished": sum(s["curve"][-1]["epochs"] <= x for s in studies),
            }
        )
    return out


def grid_orders_curve(
    grid: dict[str, Any], maximize: bool, orders: int = 1000
) -> list[dict[str, Any]]:
    """The grid's best-so-far curve averaged over ``orders`` random orders of its points (the
    order the grid sampler draws them in is random; its trials are not run again)."""
    import random

    trials = [t for t in grid["trials"] if t["state"] == "complete"]
    rng = random.Random(0)
    sums = [[0.0, 0.0, 0] for _ in trials]
    for _ in range(orders):
        order = trials[:]
        rng.shuffle(order)
        best = None
        for i, t in enumerate(order):
            if best is None or (
                t["value"] > best["value"] if maximize else t["value"] < best["value"]
            ):
                best = t
            sums[i][0] += best["value"]
            sums[i][1] += best["test_accuracy"]
            sums[i][2] += sum(o["epochs"] for o in order[: i + 1])
    return [
        {"epochs": round(e / orders), "metric": m / orders, "test_accuracy": a / orders}
        for m, a, e in sums
    ]


def _ms(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(studies: list[dict[str, Any]], grid_epochs: float) -> dict[str, Any]:
    ok = [s for s in studies if s["selected"] is not None]
    acc = _ms([s["selected"]["test_accuracy"] for s in ok]) if ok else (None, None)
    metric = _ms([s["selected"]["metric"] for s in ok]) if ok else (None, None)
    epochs = _ms([s["epochs"] for s in studies])
    return {
        "seeds": [s["seed"] for s in studies],
        "selected_test_accuracy_mean": acc[0],
        "selected_test_accuracy_std": acc[1],
        "selected_test_accuracy_per_seed": [
            s["selected"]["test_accuracy"] if s["selected"] else None for s in studies
        ],
        "best_metric_mean": metric[0],
        "best_metric_std": metric[1],
        "oracle_test_accuracy_mean": statistics.mean(s["oracle_test_accuracy"] for s in ok)
        if ok
        else None,
        "retrained_test_accuracy_mean": statistics.mean(
            s["retrained"]["test_accuracy_mean"] for s in ok
        )
        if ok and all("retrained" in s for s in ok)
        else None,
        "epochs_mean": epochs[0],
        "epochs_per_seed": [s["epochs"] for s in studies],
        "epoch_share_of_grid": epochs[0] / grid_epochs,
        "complete_mean": statistics.mean(s["counts"]["complete"] for s in studies),
        "pruned_mean": statistics.mean(s["counts"]["pruned"] for s in studies),
        "failed": sum(s["counts"]["failed"] for s in studies),
        "seconds": sum(s["seconds"] for s in studies),
    }


def plot(
    curves: dict[str, list[dict[str, Any]]], reference: dict[str, Any], metric: str, stem: Path
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = {
        "grid": "#7f7f7f",
        "grid_as_run": "#bbbbbb",
        "random": "#1f77b4",
        "tpe": "#2ca02c",
        "tpe+asha": "#d62728",
    }
    try:
        for strategy, curve in curves.items():
            xs = [p["epochs"] for p in curve]
            style = {
                "where": "post",
                "label": CURVE_LABELS[strategy],
                "color": colours[strategy],
                "lw": 0.9 if strategy == "grid_as_run" else 1.5,
                "ls": ":" if strategy == "grid_as_run" else "-",
            }
            axes[0].step(xs, [100 * p["test_accuracy"] for p in curve], **style)
            axes[1].step(xs, [p["metric"] for p in curve], **style)
        budget = TARGET_EPOCH_SHARE * reference["epochs"]
        target = 100 * (reference["selected_test_accuracy"] - TARGET_POINTS / 100)
        for ax in axes:
            ax.axvline(budget, ls="--", lw=0.8, color="black")
            ax.set_xlabel("epochs spent (all trials, pruned ones included)")
        axes[0].axhline(target, ls="-.", lw=0.8, color="black")
        axes[0].set_ylabel("test acc. of the validation-selected trial (%)")
        axes[0].set_title(
            f"best so far (mean over seeds)\ndashed: {TARGET_EPOCH_SHARE:.0%} of the grid's "
            f"epochs; dash-dot: grid's − {TARGET_POINTS} points",
            fontsize=10,
        )
        axes[1].set_ylabel(f"best {metric} so far")
        axes[1].set_title(f"tuned metric ({metric})")
        axes[0].legend(loc="lower right", fontsize=8)
        files = []
        for fmt in ("png", "svg"):
            path = stem.with_suffix(f".{fmt}")
            fig.savefig(
                path, format=fmt, dpi=110, bbox_inches="tight",
                metadata={"Date": None} if fmt == "svg" else None,
            )  # fmt: skip
            files.append(path.name)
        return files
    finally:
        plt.close(fig)


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def main_benchmark(args: argparse.Namespace) -> None:
    grid = dict(GRID)
    if args.quick:  # 2 × 1 × 1 × 2 × 2 = 8 points
        grid = {
            k: (v[:1] if k in ("train.optimizer.weight_decay", "model.dropout") else v)
            for k, v in grid.items()
        }
        grid["train.optimizer.lr"] = grid["train.optimizer.lr"][1:]
    points = math.prod(len(v) for v in grid.values())
    args.trials = args.trials or points
    start = time.perf_counter()
    studies: dict[str, list[dict[str, Any]]] = {}
    for strategy in args.strategies:
        seeds = args.seeds[:1] if strategy == "grid" else args.seeds
        for seed in seeds:
            t0 = time.perf_counter()
            study = run_study(strategy, seed, args, grid)
            studies.setdefault(strategy, []).append(study)
            sel = study["selected"] or {}
            print(
                f"{LABELS[strategy]:>10} seed {seed}: {study['counts']['complete']} complete, "
                f"{study['counts']['pruned']} pruned, {study['epochs']} epochs, selected "
                f"{args.metric}={sel.get('metric', float('nan')):.4f} test acc "
                f"{pct(sel.get('test_accuracy'))} (oracle {pct(study['oracle_test_accuracy'])})"
                f" [{time.perf_counter() - t0:.0f} s]",
                flush=True,
            )
    elapsed = time.perf_counter() - start
    g = studies["grid"][0]
    reference = {
        "points": points,
        "epochs": g["epochs"],
        "selected_test_accuracy": g["selected"]["test_accuracy"],
        "selected_metric": g["selected"]["metric"],
        "selected_params": g["selected"]["params"],
        "best_test_accuracy_any_point": g["oracle_test_accuracy"],
        "selected_retrained_test_accuracy": (g.get("retrained") or {}).get("test_accuracy_mean"),
    }
    summary = {s: summarise(v, reference["epochs"]) for s, v in studies.items()}
    for row in summary.values():
        acc_ok = (
            row["selected_test_accuracy_mean"] is not None
            and 100 * (reference["selected_test_accuracy"] - row["selected_test_accuracy_mean"])
            <= TARGET_POINTS + 1e-9
        )
        oracle_ok = (
            row["selected_test_accuracy_mean"] is not None
            and 100
            * (reference["best_test_accuracy_any_point"] - row["selected_test_accuracy_mean"])
            <= TARGET_POINTS + 1e-9
        )
        epochs_ok = row["epoch_share_of_grid"] <= TARGET_EPOCH_SHARE + 1e-9
        # Δ = this strategy's selected test accuracy minus the grid's, in points (> 0: better)
        row["delta_points_vs_grid_selected"] = (
            None
            if row["selected_test_accuracy_mean"] is None
            else 100 * (row["selected_test_accuracy_mean"] - reference["selected_test_accuracy"])
        )
        row["delta_points_vs_grid_any_point"] = (
            None
            if row["selected_test_accuracy_mean"] is None
            else 100
            * (row["selected_test_accuracy_mean"] - reference["best_test_accuracy_any_point"])
        )
        row["accuracy_met"] = acc_ok
        row["accuracy_met_vs_any_point"] = oracle_ok
        row["epochs_met"] = epochs_ok
        row["met"] = acc_ok and epochs_ok
    step = max(1, args.epochs // 3)
    curves = {s: mean_curve(v, step) for s, v in studies.items()}
    curves["grid_as_run"] = curves["grid"]
    curves["grid"] = grid_orders_curve(g, g["direction"] == "maximize")

    rows = []
    for s in args.strategies:
        r = summary[s]
        n = len(r["seeds"])
        rows.append(
            [
                f"**{LABELS[s]}**" if s == "tpe+asha" else LABELS[s],
                n,
                f"{r['complete_mean']:.1f} / {r['pruned_mean']:.1f}",
                f"{r['best_metric_mean']:.4f} ± {r['best_metric_std']:.4f}",
                f"{pct(r['selected_test_accuracy_mean'])} ± {100 * r['selected_test_accuracy_std']:.2f}",
                " / ".join(pct(a) for a in r["selected_test_accuracy_per_seed"]),
                f"{r['delta_points_vs_grid_selected']:+.2f}",
                pct(r["oracle_test_accuracy_mean"]),
                pct(r["retrained_test_accuracy_mean"]),
                f"{r['epochs_mean']:.0f}",
                f"{100 * r['epoch_share_of_grid']:.0f}%",
                "reference"
                if s == "grid"
                else ("✓" if r["accuracy_met"] else "✗")
                + " / "
                + ("✓" if r["epochs_met"] else "✗")
                + (" **pass**" if r["met"] else " **fail**"),
            ]
        )
    asha = summary.get("tpe+asha")
    verdict = "TPE + ASHA: " + (
        f"{pct(asha['selected_test_accuracy_mean'])} vs grid's validation-selected "
        f"{pct(reference['selected_test_accuracy'])} (Δ {asha['delta_points_vs_grid_selected']:+.2f} "
        f"points; target ≥ -{TARGET_POINTS}), {100 * asha['epoch_share_of_grid']:.0f}% of "
        f"the grid's epochs (target ≤ {TARGET_EPOCH_SHARE:.0%}) → "
        f"**{'met' if asha['met'] else 'not met'}**; against the grid's best test accuracy of "
        f"any point ({pct(reference['best_test_accuracy_any_point'])}, an oracle that selects on "
        f"the test split) Δ is {asha['delta_points_vs_grid_any_point']:+.2f} points "
        f"({'within' if asha['accuracy_met_vs_any_point'] else 'not within'} {TARGET_POINTS})."
        + (
            f" Retrained ×{args.retrain_seeds}: TPE + ASHA's configurations "
            f"{pct(asha['retrained_test_accuracy_mean'])} vs the grid's "
            f"{pct(reference['selected_retrained_test_accuracy'])}."
            if asha.get("retrained_test_accuracy_mean") is not None
            and reference["selected_retrained_test_accuracy"] is not None
            else ""
        )
        if asha
        else "not run."
    )
    test_rows = 360
    notes = (
        f"Digits CNN (hidden 64, AdamW, min-max scaling, split test 0.2 / val 0.1 stratified seed 0: "
        f"{test_rows} test rows, so one row is {100 / test_rows:.2f} points), {args.epochs} epochs "
        f"per trial, no early stopping, lr schedule `{args.scheduler}`; tuned on `{args.metric}`. Grid: {points} points "
        f"({', '.join(f'`{k}` {v}' for k, v in grid.items())}), run once (its result does not "
        f"depend on the order). Random / TPE / TPE + ASHA: {args.trials} trials each over "
        "continuous ranges spanning the grid's values (loguniform lr and weight decay, uniform "
        f"dropout, the same choices), sampler seeds {args.seeds}; TPE is danlu's (multivariate, "
        f"{args.startup_trials if args.startup_trials is not None else 10} start-up trials); "
        f"ASHA: min_resource {args.min_resource}, reduction_factor {args.reduction_factor}. "
        "Selected = the study's best complete trial by the tuned metric; its test accuracy is "
        "what is compared, with the **grid's validation-selected trial** as the reference "
        f"({pct(reference['selected_test_accuracy'])}, {args.metric} "
        f"{reference['selected_metric']:.4f}); 'best test acc, any trial' selects on the test split "
        f"and is shown for context (grid: {pct(reference['best_test_accuracy_any_point'])}). "
        + (
            f"'Retrained': each study's selected configuration trained again with fresh training "
            f"seeds 1..{args.retrain_seeds} (it was selected with seed 0), mean test accuracy over "
            "those and over sampler seeds: the quality of the configuration found, without one "
            "initialisation's luck (not part of the target). "
            if args.retrain_seeds
            else ""
        )
        + f"Epochs count every epoch trained, pruned trials included (grid: {reference['epochs']}). "
        f"Target column: accuracy within {TARGET_POINTS} points / ≤ {TARGET_EPOCH_SHARE:.0%} of "
        f"the grid's epochs. {verdict} Curves of best so far vs epochs spent (mean over sampler "
        "seeds; the grid's averaged over 1000 random orders of its points, as `grid`, and in the "
        "order it ran, as `grid_as_run`): "
        f"`{NAME if not args.quick else NAME + '_quick'}.json` (`curves`), plot `.png`/`.svg`. "
        f"Total {elapsed:.0f} s on {machine()['cpus']} CPUs, one torch thread, jobs=1. "
        f"Command: `.venv/bin/python bench/tune_efficiency.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}`"
    )
    name = NAME + ("_quick" if args.quick else "")
    _report.RESULTS.mkdir(parents=True, exist_ok=True)
    images = plot(curves, reference, args.metric, _report.RESULTS / name)
    payload = {
        "benchmark": NAME,
        "quick": args.quick,
        "recipe": base_recipe(args.epochs, args.scheduler),
        "metric": args.metric,
        "grid": grid,
        "spaces": {s: space(s, grid) for s in STRATEGIES},
        "tune_blocks": {s: tune_block(s, args, grid, 0) for s in args.strategies},
        "seeds": args.seeds,
        "targets": {
            "accuracy_points_vs_grid_selected": TARGET_POINTS,
            "epoch_share_of_grid": TARGET_EPOCH_SHARE,
            "compared": "mean over seeds of the validation-selected trial's test accuracy vs the "
            "grid's validation-selected trial's test accuracy",
        },
        "reference": reference,
        "summary": summary,
        "curves": curves,
        "studies": studies,
        "plots": images,
        "seconds": elapsed,
        "machine": machine(),
    }
    path = write(
        name,
        payload,
        [
            "strategy", "seeds", "complete / pruned trials", f"best {args.metric}",
            "selected trial's test acc (mean ± std)", "per seed", "Δ vs grid (points)",
            "best test acc, any trial", f"selected config retrained ×{args.retrain_seeds}",
            "epochs", "% of grid epochs", "target: acc / epochs",
        ],
        rows,
        notes,
    )  # fmt: skip
    print(path.read_text())


# --------------------------------------------------------------------------- jobs timing

_CHILD = """
import json, os, sys, time, logging
start = time.perf_counter()
import torch
torch.set_num_threads(1)
from danlu.tune import tune
logging.getLogger("danlu").setLevel(logging.ERROR)
recipe, jobs, home = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
t0 = time.perf_counter()
result = tune(recipe, jobs=jobs, home=home)
t1 = time.perf_counter()
rows = result.summary["trials"]
print(json.dumps({
    "tune_s": t1 - t0, "process_s": t1 - start, "counts": result.counts,
    "epochs": result.epochs_spent,
    "trial_s": [r["duration_s"] for r in rows if r["state"] == "complete"],
}))
"""


def jobs_timing(args: argparse.Namespace) -> None:
    trials = 4 if args.quick else args.timing_trials
    epochs = 2 if args.quick else args.timing_epochs
    repeats = 1 if args.quick else args.timing_repeats
    space = {  # every trial costs the same: only lr, weight decay and dropout change
        "train.optimizer.lr": {"loguniform": [1e-3, 3e-3]},
        "train.optimizer.weight_decay": {"loguniform": [1e-4, 1e-2]},
        "model.dropout": {"uniform": [0.1, 0.4]},
    }
    recipe = base_recipe(epochs)
    recipe["model"]["channels"] = [32, 64]
    recipe["train"]["batch_size"] = 32
    recipe["train"].pop("checkpoint")  # what `danlu tune` does by default
    recipe["tune"] = {
        "metric": "val_loss",
        "trials": trials,
        "sampler": {"name": "random", "seed": 0},
        "pruner": "none",
        "space": space,
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    measurements: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    order = [1, 2, 2, 1] * repeats  # alternate so machine noise hits both alike
    order = order[: 2 * repeats]
    for jobs in order:
        with tempfile.TemporaryDirectory(prefix="danlu-tune-jobs-") as home:
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", _CHILD, json.dumps(recipe), str(jobs), home],
                env={**env, "DANLU_HOME": home},
                capture_output=True,
                text=True,
                check=False,
            )
            wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"jobs={jobs} failed:\n{proc.stderr[-4000:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        out["wall_s"] = wall
        out["per_trial_s"] = out["tune_s"] / max(1, out["counts"]["complete"])
        out["per_trial_wall_s"] = wall / max(1, out["counts"]["complete"])
        measurements[jobs].append(out)
        print(
            f"jobs={jobs}: {out['counts']['complete']} trials, tune() {out['tune_s']:.1f} s, "
            f"process {wall:.1f} s, {out['per_trial_s']:.2f} s/trial",
            flush=True,
        )
    med = {
        j: {
            "per_trial_s": statistics.median(m["per_trial_s"] for m in ms),
            "per_trial_wall_s": statistics.median(m["per_trial_wall_s"] for m in ms),
            "tune_s": statistics.median(m["tune_s"] for m in ms),
            "mean_trial_duration_s": statistics.median(statistics.mean(m["trial_s"]) for m in ms),
        }
        for j, ms in measurements.items()
    }
    ratio = med[2]["per_trial_s"] / med[1]["per_trial_s"]
    ratio_wall = med[2]["per_trial_wall_s"] / med[1]["per_trial_wall_s"]
    rows = [
        [
            j,
            len(measurements[j]),
            f"{med[j]['tune_s']:.1f}",
            f"{med[j]['per_trial_s']:.2f}",
            f"{med[j]['per_trial_wall_s']:.2f}",
            f"{med[j]['mean_trial_duration_s']:.2f}",
        ]
        for j in (1, 2)
    ]
    rows.append(["**jobs2 / jobs1**", "", "", f"**{ratio:.3f}**", f"{ratio_wall:.3f}", ""])
    met = ratio <= TARGET_JOBS_RATIO
    notes = (
        f"`danlu.tune(recipe, jobs=N)` in a fresh interpreter per measurement (median of "
        f"{repeats}, alternating), digits CNN channels [32, 64], batch 32, {epochs} epochs per "
        f"trial, {trials} random-sampler trials (lr, weight decay and dropout only: the same cost each), no "
        "pruner, OMP_NUM_THREADS=1 (one torch thread per worker). Per trial = tune() wall time / "
        "complete trials; 'process' includes interpreter start and imports. "
        f"Target jobs2/jobs1 ≤ {TARGET_JOBS_RATIO}: **{'met' if met else 'not met'}** "
        f"({ratio:.3f}). {machine()['cpus']} CPUs; load average at the end "
        f"{os.getloadavg()[0]:.2f}. Command: `.venv/bin/python bench/tune_efficiency.py "
        f"{' '.join(sys.argv[1:])}`"
    )
    payload = {
        "benchmark": "tune_jobs",
        "quick": args.quick,
        "recipe": recipe,
        "measurements": {str(k): v for k, v in measurements.items()},
        "median": {str(k): v for k, v in med.items()},
        "ratio_per_trial": ratio,
        "ratio_per_trial_process": ratio_wall,
        "target_ratio": TARGET_JOBS_RATIO,
        "met": met,
        "machine": machine(),
    }
    path = write(
        "tune_jobs" + ("_quick" if args.quick else ""),
        payload,
        ["jobs", "runs", "tune() wall (s)", "s per completed trial", "process s per trial",
         "mean trial duration (s)"],
        rows,
        notes,
    )  # fmt: skip
    print(path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="per trial (default 15)")
    parser.add_argument("--trials", type=int, default=None, help="default: the grid's points")
    parser.add_argument("--metric", default="val_loss")
    parser.add_argument(
        "--scheduler", default="cosine", choices=["none", "cosine"],
        help="lr schedule of every trial (cosine: the last epoch's val_loss is stable)",
    )  # fmt: skip
    parser.add_argument(
        "--retrain-seeds", type=int, default=None,
        help="retrain each selected configuration with this many fresh training seeds (default 5)",
    )  # fmt: skip
    parser.add_argument("--min-resource", type=int, default=1)
    parser.add_argument("--reduction-factor", type=int, default=3)
    parser.add_argument("--startup-trials", type=int, default=None, help="TPE (default 10)")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 points, 3 epochs")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results)")
    parser.add_argument(
        "--jobs-timing", action="store_true", help="only time jobs=1 vs jobs=2 (tune_jobs)"
    )
    parser.add_argument("--timing-trials", type=int, default=24)
    parser.add_argument("--timing-epochs", type=int, default=15)
    parser.add_argument("--timing-repeats", type=int, default=3)
    args = parser.parse_args()
    if args.out is not None:
        _report.RESULTS = args.out
    if args.jobs_timing:
        jobs_timing(args)
        return
    if "grid" not in args.strategies:
        parser.error("--strategies must include grid (the reference)")
    args.strategies = [s for s in STRATEGIES if s in args.strategies]
    if args.epochs is None:
        args.epochs = 3 if args.quick else 15
    if args.retrain_seeds is None:
        args.retrain_seeds = 2 if args.quick else 5
    if args.quick and args.seeds == [0, 1, 2]:
        args.seeds = [0]
    main_benchmark(args)


if __name__ == "__main__":
    main()
