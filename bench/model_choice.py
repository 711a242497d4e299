"""``model: {type: auto}`` on five real tables: is the shipped model ever worse than the best
trust-report baseline beyond noise?

For each table one ``danlu run`` trains the default candidates (the MLP and LightGBM trees) as
child runs, ships the best on validation, and makes the trust report with its baselines
(dummy, logistic / linear regression, scikit-learn's HistGradientBoosting) fitted on the same
training split. The table shows the shipped model's test headline with its 95% interval, the
strongest baseline's, and the paired bootstrap interval of the per-row difference: the shipped
model is "worse beyond noise" only when that whole interval is below 0. For the Titanic list
it also shows test accuracy with Wilson intervals for the shipped model, logistic regression
and the GBDT candidate.

    python bench/model_choice.py [--seeds 0 1 2] [--tables breast_cancer diabetes ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2 cores shared: threads spin-wait
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine, write  # noqa: E402

# table → (builtin source, task); the 50k-row regression table is diamonds (target: price)
TABLES = {
    "breast_cancer": ("builtin:breast_cancer", "classification"),
    "diabetes": ("builtin:diabetes", "regression"),
    "penguins": ("builtin:penguins", "classification"),
    "titanic": ("builtin:titanic", "classification"),
    "diamonds": ("builtin:diamonds", "regression"),
}


def recipe(source: str, task: str, seed: int) -> dict[str, Any]:
    return {
        "name": f"model-choice-{source.split(':')[1]}",
        "data": {"source": source, "split": {"test": 0.2, "val": 0.15, "seed": seed}},
        "task": task,
        "model": {"type": "auto"},  # default candidates: mlp and gbdt (lightgbm)
        "train": {
            "epochs": 60,
            "batch_size": 128,
            "early_stopping": {"monitor": "val_loss", "patience": 8},
            "seed": seed,
        },
        "evaluate": {
            "baselines": True,
            "calibration": False,
            "robustness": False,
            "explain": False,
            "cost": False,
            "training": False,
        },
    }


def _accuracy_ci(correct: int, n: int) -> dict[str, float]:
    from danlu.evaluate import wilson_interval

    ci = wilson_interval(correct, n)
    return {"value": correct / n, "low": ci.low, "high": ci.high, "rows": n}


def titanic_accuracies(result: Any, prepared: Any) -> dict[str, dict[str, float]]:
    """Test accuracy with Wilson intervals: the shipped model, logistic regression, scikit-learn's
    HistGradientBoosting baseline and the GBDT candidate (LightGBM)."""
    from danlu.evaluate import EvalData
    from danlu.evaluate._baselines import fit_baselines
    from danlu.store import SqlStore

    y = prepared.y_test
    n = len(y)
    data = EvalData.from_prepared(result.model, result.task, prepared)
    out = {"shipped": _accuracy_ci(int((data.test_outputs.argmax(axis=1) == y).sum()), n)}
    for name, fit in fit_baselines(data).items():
        if name != "most frequent (dummy)":
            out[name] = _accuracy_ci(int((fit["outputs"].argmax(axis=1) == y).sum()), n)
    selection = result.details["model_selection"]
    gbdt = next(c for c in selection["candidates"] if c["type"] == "gbdt")
    accuracy = SqlStore().get_run(gbdt["run_id"]).metrics["test_accuracy"]
    out["gbdt candidate (lightgbm)"] = _accuracy_ci(round(accuracy * n), n)
    return out


def run_one(name: str, seed: int) -> dict[str, Any]:
    import danlu
    from danlu.data import prepare_data
    from danlu.tasks import get_task

    source, task = TABLES[name]
    spec = recipe(source, task, seed)
    started = time.perf_counter()
    result = danlu.run(spec)
    seconds = time.perf_counter() - started
    report = result.report
    headline = result.task.headline
    metrics = report.section("metrics").data
    interval = metrics.get("intervals", {}).get(headline, {})
    baselines = report.section("baselines").data
    strongest = baselines["strongest"]
    best_row = next(r for r in baselines["rows"] if r["model"] == strongest["model"])
    paired = strongest.get("paired") or {}
    selection = result.details["model_selection"]
    row: dict[str, Any] = {
        "table": name,
        "task": task,
        "rows_test": metrics.get("rows"),
        "metric": headline,
        "shipped": selection["winner_type"],
        "shipped_test": result.metrics[headline],
        "shipped_low": interval.get("low"),
        "shipped_high": interval.get("high"),
        "best_baseline": strongest["model"],
        "best_baseline_test": best_row[headline],
        "paired_low": paired.get("low"),
        "paired_high": paired.get("high"),
        "worse_beyond_noise": bool(paired and paired["high"] < 0),
        "candidates": [
            {k: c[k] for k in ("type", "validation", "test", "seconds", "best_epoch")}
            for c in selection["candidates"]
        ],
        "seconds": round(seconds, 1),
    }
    if name == "titanic":
        prepared = prepare_data(danlu.load_recipe(spec).data, get_task(task))  # the same split
        row["titanic_accuracy"] = titanic_accuracies(result, prepared)
    return row


def _fmt(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _detail_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The per-seed table, as Markdown lines."""
    lines = [
        "| table | seed | shipped | shipped test [95% CI] | best baseline | baseline test | "
        "paired diff 95% CI | worse beyond noise | candidates (val / test / s) | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        candidates = "; ".join(
            f"{c['type']} {_fmt(c['validation'])} / {_fmt(c['test'])} / {c['seconds']:.0f}"
            for c in r["candidates"]
        )
        lines.append(
            f"| {r['table']} | {r['seed']} | {r['shipped']} | {r['shipped_test']:.3f} "
            f"[{_fmt(r['shipped_low'])}, {_fmt(r['shipped_high'])}] | {r['best_baseline']} | "
            f"{r['best_baseline_test']:.3f} | [{_fmt(r['paired_low'], 4)}, "
            f"{_fmt(r['paired_high'], 4)}] | {'yes' if r['worse_beyond_noise'] else 'no'} | "
            f"{candidates} | {r['seconds']} |"
        )
    return lines


def _summary(rows: list[dict[str, Any]], tables: list[str]) -> list[list[Any]]:
    """Per table over the seeds: medians, their ratio, and how often the shipped model lost."""
    import statistics

    summary = []
    for name in tables:
        mine = [r for r in rows if r["table"] == name]
        shipped = statistics.median(r["shipped_test"] for r in mine)
        baseline = statistics.median(r["best_baseline_test"] for r in mine)
        summary.append(
            [
                name,
                mine[0]["metric"],
                f"{shipped:.3f}",
                f"{baseline:.3f}",
                f"{shipped / baseline:.3f}" if baseline else "–",
                f"{sum(r['worse_beyond_noise'] for r in mine)} of {len(mine)}",
                ", ".join(r["shipped"] for r in mine),
                f"{statistics.median(r['seconds'] for r in mine):.0f}",
            ]
        )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=list(TABLES))
    args = parser.parse_args()
    logging.getLogger("danlu").setLevel(logging.ERROR)
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    rows = []
    with tempfile.TemporaryDirectory(prefix="danlu-model-choice-") as home:
        os.environ["DANLU_HOME"] = home
        for seed in args.seeds:
            for name in args.tables:
                row = {**run_one(name, seed), "seed": seed}
                rows.append(row)
                print(
                    f"{name} seed {seed}: shipped {row['shipped']} {row['metric']} "
                    f"{row['shipped_test']:.4f} vs {row['best_baseline']} "
                    f"{row['best_baseline_test']:.4f} ({row['seconds']} s)",
                    flush=True,
                )
    header = [
        "table",
        "metric",
        "shipped test (median)",
        "best baseline test (median)",
        "ratio",
        "worse beyond noise",
        "shipped per seed",
        "seconds (median)",
    ]
    notes = [
        f"Command: `python bench/model_choice.py --seeds {' '.join(map(str, args.seeds))}` "
        f"(OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}). Each table and seed is one "
        "`danlu run` with `model: {type: auto}` (default candidates: the MLP, 60 epochs at most "
        "with early stopping, and LightGBM trees); the seed sets the split and the training. "
        "The winner is chosen on validation; the test split is only reported. Baselines are the "
        "trust report's (dummy, logistic / linear regression, HistGradientBoosting), fitted on "
        "the same training split; 'best baseline' is the strongest on test. 'paired diff' is the "
        "95% bootstrap interval of the per-row difference shipped − best baseline (correctness "
        "for classification, −squared error in standardized units for regression); 'worse "
        "beyond noise' counts the seeds where the whole interval is below 0.",
        "",
        *_detail_rows(rows),
    ]
    titanic = next((r for r in rows if "titanic_accuracy" in r), None)
    if titanic is not None:
        notes.append(
            f"\nTitanic (vcdExtra/Titanicp, no row dropped), seed {titanic['seed']}: test "
            "accuracy, Wilson 95% CI:\n"
        )
        notes.append("| model | accuracy [95% CI] | test rows |\n|---|---|---|")
        for model, acc in titanic["titanic_accuracy"].items():
            notes.append(
                f"| {model} | {acc['value']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}] | "
                f"{acc['rows']} |"
            )
    path = write(
        "model_choice",
        {"machine": machine(), "seeds": args.seeds, "rows": rows},
        header,
        _summary(rows, args.tables),
        notes="\n".join(notes),
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
