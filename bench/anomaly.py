"""Anomaly detection: test AUROC of danlu's autoencoder and Deep SVDD against Isolation Forest,
Local Outlier Factor (novelty) and a one-class SVM, on the same training rows.

Everything goes through ``danlu.run`` and the trust report: each run trains the model on the
normal training rows (``anomaly.train_on: normal``) and its report's baselines section fits the
three scikit-learn detectors on the same rows and scores the same test rows.

- digits: each digit in turn is the anomaly (the nine others are normal), 10 settings;
- breast cancer: malignant (target 0) is the anomaly, benign the normal class; and again with a
  malignant minority (every benign row, 40 of the 212 malignant ones: 10%).

Data split test 0.3 / val 0.2 (the validation rows fit the threshold and early stopping), each
seed its own split and initialisation; scaling fitted on the training split, standard and again
minmax (every detector sees the same prepared rows: the scaling moves all of them). Figures are
medians over the seeds; the digits rows average the ten held-out digits (the mean of the
per-digit medians).

    python bench/anomaly.py [--seeds 0 1 2] [--jobs 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine, write  # noqa: E402

MODELS: dict[str, dict[str, Any]] = {
    "autoencoder": {"type": "autoencoder", "hidden": [32, 8]},
    "deep_svdd": {"type": "deep_svdd", "hidden": [64, 32], "rep_dim": 16},
}
BASELINES = ("Isolation Forest", "Local Outlier Factor", "one-class SVM")
EPOCHS = 100
DIGITS = list(range(10))
SCALES = ("standard", "minmax")  # data.prepare.scale: the rows every detector sees


def _minority_csv(folder: Path) -> Path:
    """Breast cancer with a malignant minority: every benign row and a fixed random 10% share
    of malignant ones (40 of 212), as a CSV."""
    import numpy as np
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    benign, malignant = frame[frame.target == 1], frame[frame.target == 0]
    keep = np.random.default_rng(0).choice(len(malignant), 40, replace=False)
    path = folder / "breast_cancer_10pct_malignant.csv"
    frame.loc[list(benign.index) + list(malignant.index[np.sort(keep)])].to_csv(path, index=False)
    return path


def recipe(source: str, anomalous: int, model: str, seed: int, scale: str) -> dict[str, Any]:
    return {
        "name": "anomaly-bench",
        "data": {
            "source": source,
            "target": "target",
            "split": {"test": 0.3, "val": 0.2, "seed": seed},
            "prepare": {"scale": scale},
        },
        "task": "anomaly",
        "anomaly": {
            "anomalous": [anomalous],
            "threshold": {"method": "contamination", "rate": 0.05},
        },
        "model": MODELS[model],
        "train": {
            "epochs": EPOCHS,
            "batch_size": 64,
            "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-5},
            "early_stopping": {"monitor": "val_loss", "patience": 10},
            "seed": seed,
        },
        # the baselines section only: the rest of the report is not measured here
        "evaluate": {
            "bootstrap": 0,
            "calibration": False,
            "robustness": False,
            "explain": False,
            "membership": False,
            "cost": False,
            "training": False,
        },
    }


def one(source: str, anomalous: int, model: str, seed: int, scale: str) -> dict[str, Any]:
    import os
    import tempfile

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import danlu

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as home:
        result = danlu.run(recipe(source, anomalous, model, seed, scale), home=home)
    rows = {row["model"]: row for row in result.report.section("baselines").data["rows"]}
    return {
        "source": source,
        "anomalous": anomalous,
        "model": model,
        "seed": seed,
        "scale": scale,
        "auroc": {
            "model": rows["danlu model"]["auroc"],
            **{b: rows[b]["auroc"] for b in BASELINES},
        },
        "auprc": {
            "model": rows["danlu model"]["auprc"],
            **{b: rows[b]["auprc"] for b in BASELINES},
        },
        "epochs": len(result.history),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    minority = _minority_csv(Path(tempfile.mkdtemp(prefix="danlu-anomaly-bench-")))
    settings = [("builtin:digits", d) for d in DIGITS] + [
        ("builtin:breast_cancer", 0),
        (str(minority), 0),
    ]
    names = {"builtin:digits": "digits", "builtin:breast_cancer": "breast_cancer"}
    names[str(minority)] = "breast_cancer_10pct"
    jobs = [
        (s, a, m, seed, scale)
        for scale in SCALES
        for s, a in settings
        for m in MODELS
        for seed in args.seeds
    ]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        done = list(pool.map(one, *zip(*jobs, strict=True)))
    wall = time.perf_counter() - start

    def median(source: str, anomalous: int, model: str, who: str, scale: str) -> float:
        return statistics.median(
            r["auroc"][who]
            for r in done
            if (r["source"], r["anomalous"], r["model"], r["scale"])
            == (source, anomalous, model, scale)
        )

    # baselines do not depend on the model: take them from the autoencoder's runs
    per_setting: list[dict[str, Any]] = []
    for scale in SCALES:
        for source, anomalous in settings:
            entry: dict[str, Any] = {
                "data": names[source],
                "anomalous": anomalous,
                "scale": scale,
            }
            for model in MODELS:
                entry[model] = median(source, anomalous, model, "model", scale)
            for b in BASELINES:
                entry[b] = median(source, anomalous, "autoencoder", b, scale)
            per_setting.append(entry)
    columns = [*MODELS, *BASELINES]
    digits = [e for e in per_setting if e["data"] == "digits" and e["scale"] == "standard"]
    cancer = next(
        e for e in per_setting if e["data"] == "breast_cancer" and e["scale"] == "standard"
    )
    average = {c: statistics.mean(e[c] for e in digits) for c in columns}
    minmax_digits = [e for e in per_setting if e["data"] == "digits" and e["scale"] == "minmax"]
    minmax_average = {c: statistics.mean(e[c] for e in minmax_digits) for c in columns}
    minmax_cancer = next(
        e for e in per_setting if e["data"] == "breast_cancer" and e["scale"] == "minmax"
    )
    losses = {
        model: [
            {
                "digit": e["anomalous"],
                "model": e[model],
                "best_baseline": max(e[b] for b in BASELINES),
            }
            for e in digits
            if e[model] < max(e[b] for b in BASELINES)
        ]
        for model in MODELS
    }

    def f(value: float) -> str:
        return f"{value:.3f}"

    header = ["data (anomaly)", "autoencoder", "Deep SVDD", *BASELINES]
    payload_rare: dict[str, Any] = {}
    rows: list[list[Any]] = [
        [f"digits ({e['anomalous']})", *(f(e[c]) for c in columns)] for e in digits
    ]
    rows.append(["**digits, mean of 10**", *(f"**{f(average[c])}**" for c in columns)])
    rows.append(["breast cancer (malignant)", *(f(cancer[c]) for c in columns)])
    rows.append(["digits, mean of 10, minmax scaling", *(f(minmax_average[c]) for c in columns)])
    rows.append(["breast cancer, minmax scaling", *(f(minmax_cancer[c]) for c in columns)])
    for scale in SCALES:
        rare = next(
            e for e in per_setting if e["data"] == "breast_cancer_10pct" and e["scale"] == scale
        )
        payload_rare[scale] = rare
        rows.append([f"breast cancer, 10% malignant ({scale})", *(f(rare[c]) for c in columns)])
    payload = {
        "benchmark": "anomaly",
        "metric": "test AUROC, median over seeds",
        "models": MODELS,
        "epochs_max": EPOCHS,
        "seeds": args.seeds,
        "per_setting": per_setting,
        "digits_mean": average,
        "breast_cancer": cancer,
        "breast_cancer_10pct_malignant": payload_rare,
        "digits_mean_minmax": minmax_average,
        "breast_cancer_minmax": minmax_cancer,
        "digits_where_the_model_loses": losses,
        "runs": done,
        "wall_seconds": wall,
        "machine": machine(),
    }
    against_forest = {
        model: sorted(e["anomalous"] for e in digits if e[model] < e["Isolation Forest"])
        for model in MODELS
    }
    payload["digits_where_the_model_trails_isolation_forest"] = against_forest
    forest = "; ".join(
        f"{model}: {len(v)} of 10 ({', '.join(map(str, v)) or 'none'})"
        for model, v in against_forest.items()
    )
    lost = "; ".join(
        f"{model}: {len(v)} of 10 digits ({', '.join(str(x['digit']) for x in v)})"
        for model, v in losses.items()
    )
    notes = (
        "Test AUROC (median over seeds "
        f"{args.seeds}), each model trained on the normal training rows only; the baselines "
        "(scikit-learn defaults: IsolationForest, LocalOutlierFactor(novelty=True), "
        "OneClassSVM(gamma='scale', nu=0.05)) fitted on the same rows by the trust report. "
        "Split test 0.3 / val 0.2, standard scaling unless a row says minmax; up to "
        f"{EPOCHS} epochs with early stopping on the validation loss (the normal rows' mean score). Digits: each digit in turn "
        "held out as the anomaly (10% of the rows); breast cancer: malignant (37% of the rows) "
        "as the anomaly, and with 40 malignant rows kept (10%). Digits where a neural model "
        f"trails Isolation Forest: {forest}; "
        f"where it trails the best baseline: {lost}. "
        f"Wall time {wall:.0f} s with {args.jobs} processes. Command: `OMP_NUM_THREADS=1 "
        "python bench/anomaly.py`."
    )
    path = write("anomaly", payload, header, rows, notes)
    print(path.read_text())


if __name__ == "__main__":
    main()
