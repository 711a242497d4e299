"""Forecasting: classical baselines, neural window models and ``model: {type: auto}`` on the
built-in series (issue 21).

(a) airline passengers, the last 24 months held out (horizon 24, one forecast from 1958-12):
    every model's test MAPE and MASE through ``danlu.run`` (``forecast.transform: log``: the
    seasonality is multiplicative); ``type: auto`` backtests its candidates on the 120 months
    before the test block and ships the best mean MASE.
(a2) the same with horizon 12 (the last 12 months held out, lags: auto = 24): every classical
    model, and ``type: auto`` with 3 seeds (its neural candidates fit in the backtest here).
(b) a 5-fold rolling-origin backtest on airline (horizon 24) of every classical baseline: the
    table and its wall time (target ≤ 60 s).
(c) co2 (weekly, gaps interpolated; horizon 52, two years held out) and sunspots (yearly;
    season 11, horizon 11, 44 years held out): the best neural model's test MASE (median of 3
    seeds) against seasonal naive and ETS.

    OMP_NUM_THREADS=1 python bench/forecasting.py [--quick] [--seeds 0 1 2] [--jobs 2]
                                                  [--only airline]

``--quick``: one seed, fewer epochs, (c) on mlp only — a smoke run, not the figures.
``--only airline``: re-measure (a), (a2), (b) and the other series' classical models only; the
other series' neural runs are kept from the stored ``bench/results/forecasting.json`` (each
run records when it was measured).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine, write  # noqa: E402

CLASSICAL = ("naive", "seasonal_naive", "ets", "arima")
NEURAL = ("mlp", "lstm", "tcn")
SETS: dict[str, dict[str, Any]] = {
    "airline": {
        "data": {"source": "builtin:airline", "target": "passengers"},
        "forecast": {"time": "month", "horizon": 24, "test": 24, "transform": "log"},
    },
    "airline12": {
        "data": {"source": "builtin:airline", "target": "passengers"},
        "forecast": {"time": "month", "horizon": 12, "transform": "log"},
    },
    "co2": {
        "data": {"source": "builtin:co2", "target": "co2"},
        "forecast": {
            "time": "date",
            "horizon": 52,
            "test": 104,
            "val": 104,
            "lags": 156,
            "missing": "interpolate",
        },
        "classical": ("seasonal_naive", "ets"),
    },
    "sunspots": {
        "data": {"source": "builtin:sunspots", "target": "sunactivity"},
        "forecast": {
            "time": "year",
            "horizon": 11,
            "test": 44,
            "val": 33,
            "season": 11,
            "lags": 33,
        },
        "classical": ("seasonal_naive", "ets"),
    },
}


def recipe(dataset: str, model: dict[str, Any], seed: int, epochs: int) -> dict[str, Any]:
    spec = SETS[dataset]
    return {
        "name": f"{dataset}-{model['type']}",
        "task": "forecasting",
        "data": spec["data"],
        "forecast": spec["forecast"],
        "model": model,
        "train": {
            "epochs": epochs,
            "batch_size": 32,
            "seed": seed,
            "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 1e-4},
            "early_stopping": {"patience": 25},
            "checkpoint": {"every": 0},
        },
    }


def one(dataset: str, kind: str, seed: int, epochs: int) -> dict[str, Any]:
    """Train one model on one series; its test figures and times."""
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    import danlu
    from danlu.store import SqlStore

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as home:
        store = SqlStore(home=Path(home) / "home")
        started = time.perf_counter()
        result = danlu.run(recipe(dataset, {"type": kind}, seed, epochs), store=store)
        seconds = time.perf_counter() - started
        chosen = result.details.get("model_selection", {}).get("winner_type")
        store.close()
    metrics = result.metrics
    return {
        "dataset": dataset,
        "model": kind,
        "seed": seed,
        "mape": metrics.get("mape"),
        "mase": metrics.get("mase"),
        "smape": metrics.get("smape"),
        "coverage": metrics.get("coverage"),
        "seconds": round(seconds, 2),
        "epochs_run": len(result.history),
        **({"chosen": chosen} if chosen else {}),
    }


def backtest_airline(folds: int) -> dict[str, Any]:
    """(b): every classical baseline over ``folds`` rolling origins; the table and wall time."""
    from danlu.config import load_recipe
    from danlu.data import prepare_forecast_data
    from danlu.models._classical import SPECS
    from danlu.tasks import get_task
    from danlu.train._backtest import backtest

    loaded = load_recipe(recipe("airline", {"type": "ets"}, 0, 1))
    assert loaded.forecast is not None
    started = time.perf_counter()
    prepared = prepare_forecast_data(loaded.data, loaded.forecast, get_task("forecasting"))
    result = backtest(
        [(k, SPECS[k]()) for k in CLASSICAL], prepared.series, recipe=loaded, folds=folds
    )
    table = result.to_dict()
    table["wall_seconds"] = round(time.perf_counter() - started, 2)
    return table


def fmt(value: Any, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--only",
        choices=["airline"],
        help="re-measure airline (a, a2, b) and the classical models; keep the stored neural "
        "co2 / sunspots runs",
    )
    args = parser.parse_args()
    seeds = args.seeds[:1] if args.quick else args.seeds
    epochs = 30 if args.quick else args.epochs
    neural = ("mlp",) if args.quick else NEURAL
    jobs: list[tuple[str, str, int, int]] = []
    for kind in (*CLASSICAL, "auto"):
        jobs.append(("airline", kind, 0, epochs))
    for kind in CLASSICAL:
        jobs.append(("airline12", kind, 0, epochs))
    jobs += [("airline12", "auto", seed, epochs) for seed in seeds]
    for dataset in ("co2", "sunspots"):
        for kind in SETS[dataset]["classical"]:
            jobs.append((dataset, kind, 0, epochs))
    for dataset in ("airline", "co2", "sunspots"):
        for kind in neural:
            jobs += [(dataset, kind, seed, epochs) for seed in seeds]
    kept: list[dict[str, Any]] = []
    if args.only:
        remeasured = {args.only, f"{args.only}12"}
        # every classical run too: they are quick, and their intervals are what changes
        jobs = [job for job in jobs if job[0] in remeasured or job[1] in CLASSICAL]
        stored = Path(__file__).resolve().parent / "results" / "forecasting.json"
        kept = [
            r
            for r in json.loads(stored.read_text())["runs"]
            if r["dataset"] not in remeasured and r["model"] not in CLASSICAL
        ]
    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(one, *job) for job in jobs]
        table_b = backtest_airline(5)  # in this process, while the pool works (timed alone below)
        done = [f.result() for f in futures]
    today = datetime.date.today().isoformat()
    done = [{**r, "measured": today} for r in done] + kept
    total = time.perf_counter() - started
    table_b_quiet = backtest_airline(5)  # (b)'s wall time on a quiet machine
    by = {}
    for r in done:
        by.setdefault((r["dataset"], r["model"]), []).append(r)

    def med(dataset: str, kind: str, key: str) -> float | None:
        values = [r[key] for r in by.get((dataset, kind), []) if r[key] is not None]
        return statistics.median(values) if values else None

    rows: list[list[Any]] = []
    summary: dict[str, Any] = {}
    for dataset in ("airline", "airline12", "co2", "sunspots"):
        kinds = [k for k in (*CLASSICAL, *neural, "auto") if (dataset, k) in by]
        summary[dataset] = {
            k: {
                "mape": med(dataset, k, "mape"),
                "mase": med(dataset, k, "mase"),
                "coverage": med(dataset, k, "coverage"),
                "seconds": med(dataset, k, "seconds"),
                "runs": len(by[(dataset, k)]),
                **(
                    {"chosen": sorted({r["chosen"] for r in by[(dataset, k)]})}
                    if k == "auto"
                    else {}
                ),
            }
            for k in kinds
        }
        for k in kinds:
            s = summary[dataset][k]
            name = f"auto → {' / '.join(s['chosen'])}" if k == "auto" else k
            seeds_note = f" (median of {s['runs']})" if s["runs"] > 1 else ""
            rows.append([
                dataset, name + seeds_note, fmt(s["mape"]), fmt(s["mase"]),
                fmt(s["coverage"], 2), fmt(s["seconds"], 1),
            ])  # fmt: skip
    best_neural = {}
    for dataset in ("airline", "co2", "sunspots"):
        scored = [(summary[dataset][k]["mase"], k) for k in neural if k in summary[dataset]]
        scored = [(m, k) for m, k in scored if m is not None]
        if scored:
            mase, kind = min(scored)
            best_neural[dataset] = {"model": kind, "mase": mase}
    baselines = [k for k in CLASSICAL if k in summary["airline"]]
    best_baseline = min(baselines, key=lambda k: summary["airline"][k]["mase"])
    auto = summary["airline"].get("auto", {})
    best12 = min(
        (k for k in CLASSICAL if k in summary["airline12"]),
        key=lambda k: summary["airline12"][k]["mase"],
    )
    auto12 = summary["airline12"].get("auto", {})
    payload = {
        "benchmark": "forecasting",
        "sets": SETS,
        "seeds": seeds,
        "epochs": epochs,
        "quick": args.quick,
        "only": args.only,
        "runs": done,
        "summary": summary,
        "best_neural": best_neural,
        "airline_best_baseline": {"model": best_baseline, **summary["airline"][best_baseline]},
        "airline_auto": auto,
        "auto_at_least_best_baseline": auto.get("mase") is not None
        and auto["mase"] <= summary["airline"][best_baseline]["mase"] + 1e-9,
        "airline12_best_baseline": {"model": best12, **summary["airline12"][best12]},
        "airline12_auto": auto12,
        "airline12_auto_at_least_best_baseline": auto12.get("mase") is not None
        and auto12["mase"] <= summary["airline12"][best12]["mase"] + 1e-9,
        "backtest_airline": table_b_quiet,
        "backtest_airline_wall_seconds": table_b_quiet["wall_seconds"],
        "backtest_airline_wall_seconds_busy": table_b["wall_seconds"],
        "total_seconds": round(total, 1),
        "machine": machine(),
    }
    bt_rows = "; ".join(
        f"{s['type']} MASE {fmt(s.get('mase'))} / MAPE {fmt(s.get('mape'))}"
        for s in table_b_quiet["summary"]
    )
    neural_text = "; ".join(
        f"{d}: {v['model']} {v['mase']:.3f} vs seasonal naive "
        f"{fmt(summary[d].get('seasonal_naive', {}).get('mase'))}, ETS "
        f"{fmt(summary[d].get('ets', {}).get('mase'))}"
        for d, v in best_neural.items()
    )
    notes = (
        "Test figures on the held-out end of each series (airline: the last 24 months, one "
        "24-step forecast; airline12: the last 12 months, one 12-step forecast; co2: the last 104 weeks, 53 origins of 52-step forecasts; sunspots: "
        "the last 44 years, 34 origins of 11-step forecasts). MASE is scaled by the seasonal "
        "naive error of the training block. Classical models are deterministic (one run); neural "
        f"rows are medians over seeds {seeds} ({epochs} epochs at most, early stopping on the "
        "validation block, patience 25). coverage: share of the truths inside the 0.1–0.9 "
        "quantile interval (nominal 0.8). auto: default candidates, backtested on the history "
        "before the test block (airline12: median of 3 seeds; chosen models listed). "
        f"Best neural model by median test MASE: {neural_text}. "
        f"(b) 5-fold rolling-origin backtest on airline (horizon 24, origins "
        f"{table_b_quiet['origins']}), all classical baselines: {bt_rows}; wall time "
        f"{table_b_quiet['wall_seconds']} s (target ≤ 60 s). "
        "Classical intervals: the empirical quantiles of each model's own forecast errors "
        "over the fitted history, per step (normal ones below 20 origins). "
        f"Command: `OMP_NUM_THREADS=1 python bench/forecasting.py{' --quick' if args.quick else ''}"
        f"{f' --only {args.only}' if args.only else ''}`"
        + (
            f" (airline and every classical model re-measured {today}; the neural co2 / sunspots "
            "rows kept from the earlier full run)."
            if args.only
            else "."
        )
    )
    path = write(
        "forecasting" + ("_quick" if args.quick else ""),
        payload,
        ["series", "model", "MAPE", "MASE", "coverage", "seconds"],
        rows,
        notes,
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
