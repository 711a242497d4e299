"""Time-series classification on the UCR/UEA sets that ship in sktime's wheel: danlu's 1-D CNN
against 1-nearest-neighbour baselines, on each archive's own train/test split.

For each data set (GunPoint, ItalyPowerDemand, BasicMotions) and seed, ``danlu.run`` trains
``model: {type: cnn1d}`` (the recipe of ``examples/gunpoint_cnn1d.yaml``: 64-128-64 channels,
kernels 8-5-3, global average pooling) with ``data.split: {by: column, column: split}``: the
archive's test rows are the test split, untouched; 20% of its train rows (stratified, seeded)
are the validation split that early stopping reads. Test accuracy is reported per seed and as
the median.

Baselines, computed here on the same split with numpy (every train row, no validation):
1-NN with Euclidean distance, 1-NN DTW with a full window, and 1-NN DTW with a Sakoe-Chiba
window learned by leave-one-out on the train rows (0-20% of the length, as the archive does;
ties to the smaller window). DTW's cost is the squared difference (summed over dimensions for
BasicMotions: dependent DTW). The published GunPoint error rates (UCR archive, 2018) are quoted
beside them: 1-NN Euclidean 0.087, 1-NN DTW (learned window) 0.087, 1-NN DTW (full) 0.093 —
Dau, H. A., et al. "The UCR Time Series Archive", IEEE/CAA J. Autom. Sinica 6(6), 2019, and
the archive's results table (www.cs.ucr.edu/~eamonn/time_series_data_2018/).

    OMP_NUM_THREADS=1 python bench/ucr.py [--seeds 0 1 2] [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine, write  # noqa: E402

SETS = ("gunpoint", "italy_power_demand", "basic_motions")
#: Published test error rates of GunPoint (UCR archive 2018 results table; Dau et al., 2019).
PUBLISHED = {
    "gunpoint": {
        "1-NN Euclidean": 0.087,
        "1-NN DTW (learned window)": 0.087,
        "1-NN DTW (full)": 0.093,
    }
}
CITATION = (
    'Dau, H. A., et al. "The UCR Time Series Archive", IEEE/CAA J. Autom. Sinica 6(6), 2019; '
    "results table at www.cs.ucr.edu/~eamonn/time_series_data_2018/"
)
MODEL = {"type": "cnn1d", "channels": [64, 128, 64], "kernel_sizes": [8, 5, 3]}
EPOCHS = 150
PATIENCE = 40


def recipe(name: str, seed: int) -> dict[str, Any]:
    return {
        "name": f"ucr-{name}",
        "data": {
            "source": f"builtin:{name}",
            "split": {"by": "column", "column": "split", "val": 0.2, "seed": seed},
            "prepare": {"scale": "none"},  # the archive's series are z-normalised already
        },
        "task": "classification",
        "model": MODEL,
        "train": {
            "epochs": EPOCHS,
            "batch_size": 16,
            "optimizer": {"name": "adam", "lr": 1e-3},
            "early_stopping": {"monitor": "val_loss", "patience": PATIENCE},
            "checkpoint": {"every": 0},
            "seed": seed,
        },
    }


def one(name: str, seed: int) -> dict[str, Any]:
    os.environ["OMP_NUM_THREADS"] = "1"
    import logging

    import torch

    torch.set_num_threads(1)
    logging.getLogger("danlu").setLevel(logging.WARNING)
    import danlu

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as home:
        result = danlu.run(recipe(name, seed), home=home)
        rows = dict(result.data_report["rows"])
    return {
        "set": name,
        "seed": seed,
        "accuracy": float(result.metrics["accuracy"]),
        "best_epoch": result.best_epoch,
        "rows": rows,
        "seconds": round(time.perf_counter() - start, 1),
    }


# -- 1-NN baselines ---------------------------------------------------------------------------
def archive_split(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) with x as (rows, channels, length)."""
    from danlu.data import load_source

    raw = load_source(f"builtin:{name}")
    assert raw.image_shape is not None
    frame = raw.frame
    x = frame.drop(columns=["split", raw.target]).to_numpy(np.float64)
    x = x.reshape(len(frame), *raw.image_shape)
    y = frame[raw.target].to_numpy()
    train = (frame["split"] == "train").to_numpy()
    return x[train], y[train], x[~train], y[~train]


def dtw(a: np.ndarray, b: np.ndarray, window: int | None) -> np.ndarray:
    """DTW distance of every row of ``a`` to every row of ``b``: ``(len(a), len(b))``.

    Rows are (channels, length); the cost of matching step i to j is the squared difference
    summed over channels; ``window`` is the Sakoe-Chiba band (None: no band). The dynamic
    programme runs over (i, j), vectorised over all pairs.
    """
    n_a, n_b, length = len(a), len(b), a.shape[2]
    ia, ib = (g.ravel() for g in np.meshgrid(np.arange(n_a), np.arange(n_b), indexing="ij"))
    w = length if window is None else window
    prev = np.full((len(ia), length + 1), np.inf)
    prev[:, 0] = 0.0
    for i in range(length):
        # (P, length): cost of step i of a against every step of b
        cost = ((a[ia, :, i][:, :, None] - b[ib]) ** 2).sum(axis=1)
        cur = np.full_like(prev, np.inf)
        for j in range(max(0, i - w), min(length, i + w + 1)):
            best = np.minimum(np.minimum(prev[:, j], prev[:, j + 1]), cur[:, j])
            cur[:, j + 1] = cost[:, j] + best
        prev = cur
    return prev[:, length].reshape(n_a, n_b)


def euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    flat_a, flat_b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return ((flat_a[:, None, :] - flat_b[None, :, :]) ** 2).sum(axis=2)


def nn_error(distances: np.ndarray, y_train: np.ndarray, y_test: np.ndarray) -> float:
    """Error rate of 1-NN: ``distances`` is (test, train); ties go to the first train row."""
    return float(np.mean(y_train[np.argmin(distances, axis=1)] != y_test))


def learned_window(x: np.ndarray, y: np.ndarray) -> int:
    """The band (0..20% of the length) with the fewest leave-one-out 1-NN errors on train."""
    length = x.shape[2]
    best, best_errors = 0, None
    for percent in range(0, 21):
        window = int(np.ceil(percent / 100 * length))
        d = dtw(x, x, window)
        np.fill_diagonal(d, np.inf)
        errors = int(np.sum(y[np.argmin(d, axis=1)] != y))
        if best_errors is None or errors < best_errors:
            best, best_errors = window, errors
    return best


def baselines(name: str) -> dict[str, Any]:
    start = time.perf_counter()
    x_train, y_train, x_test, y_test = archive_split(name)
    window = learned_window(x_train, y_train)
    out = {
        "1-NN Euclidean": nn_error(euclidean(x_test, x_train), y_train, y_test),
        "1-NN DTW (learned window)": nn_error(dtw(x_test, x_train, window), y_train, y_test),
        "1-NN DTW (full)": nn_error(dtw(x_test, x_train, None), y_train, y_test),
    }
    return {
        "set": name,
        "errors": out,
        "window": window,
        "shape": list(x_train.shape[1:]),
        "train": len(x_train),
        "test": len(x_test),
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    args = parser.parse_args()

    jobs = [(name, seed) for name in args.sets for seed in args.seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(one, *zip(*jobs, strict=True)))
        knn = list(pool.map(baselines, args.sets))
    by_set = {b["set"]: b for b in knn}

    header = ["data set", "model", "test error", "test accuracy", "source"]
    rows: list[list[Any]] = []
    summary: dict[str, Any] = {}
    for name in args.sets:
        accs = [r["accuracy"] for r in runs if r["set"] == name]
        median = statistics.median(accs)
        summary[name] = {"cnn1d_accuracy_median": median, "cnn1d_accuracies": accs}
        seeds = ", ".join(f"{a:.3f}" for a in accs)
        rows.append([
            name, "danlu cnn1d (median of seeds)", f"{1 - median:.3f}", f"{median:.3f}",
            f"measured here, seeds {args.seeds}: {seeds}",
        ])  # fmt: skip
        base = by_set[name]
        for model, error in base["errors"].items():
            label = model + (f", w={base['window']}" if "learned" in model else "")
            rows.append([name, label, f"{error:.3f}", f"{1 - error:.3f}", "measured here (numpy)"])
        for model, error in PUBLISHED.get(name, {}).items():
            rows.append([name, model, f"{error:.3f}", f"{1 - error:.3f}", "published (UCR)"])
    notes = (
        "Archive train/test split of each set (GunPoint 50/150, ItalyPowerDemand 67/1029, "
        "BasicMotions 40/40); the CNN's validation rows are 20% of the train rows. "
        f"Published figures: {CITATION}. Command: `OMP_NUM_THREADS=1 python bench/ucr.py "
        f"--seeds {' '.join(map(str, args.seeds))} --jobs {args.jobs}`."
    )
    path = write(
        "ucr",
        {
            "machine": machine(),
            "recipe": recipe("NAME", 0),
            "runs": runs,
            "baselines": knn,
            "published": PUBLISHED,
            "citation": CITATION,
            "summary": summary,
        },
        header,
        rows,
        notes,
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
