"""Distributed data-parallel training (train.distributed, torchrun): 2 ranks × 1 thread vs
1 rank × 1 thread, side by side in one run.

1. Throughput: the digits CNN (examples/digits_cnn.yaml; no report, no registration), global
   batch 128 (1 rank × 128 vs 2 ranks × 64: the same steps per epoch). Rows per second over
   epochs 2..E, from the times the run's tracker logged each epoch (so neither torchrun's start,
   the data preparation nor the first epoch's warm-up counts). Runs alternate (1, 2, 2, 1, …);
   the table reports medians and the median of per-pair ratios, and the machine's load.
   The same for the compute-bound cases the issue names: the digits CNN on a larger table of
   8×8 digit images (the real ones resampled with pixel noise; global batch 512) and a wide MLP
   (32 → 1024 → 1024 → 4) on a synthetic table (global batch 1024).
2. Equivalence: one optimizer step with 2 ranks × batch b against 1 rank × batch 2b on the same
   rows (a 160-row training split, b = 80): the largest parameter difference.
3. Accuracy: the digits CNN trained to the end (early stopping as in the example) by 1 rank
   (batch 64) and by 2 ranks (batch 32 each), over 3 seeds: test accuracy.

    python bench/ddp.py [--reps 3] [--epochs 6] [--seeds 3] [--image-rows 40000] [--wide-rows 60000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from _report import RESULTS, machine, write  # noqa: E402

import danlu  # noqa: E402
from danlu.store import SqlStore  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "digits_cnn.yaml"
BARE = ["evaluate=false", "register=false"]


def ranks_override(ranks: int) -> list[str]:
    if ranks == 1:
        return ["train.distributed=false"]
    return [f"train.distributed.nproc_per_node={ranks}", "train.distributed.timeout_s=120"]


def logged_throughput(recipe: dict | Path, overrides: list[str], epochs: int, home: Path) -> float:
    """Training rows per second over epochs 2..E (the times the run's tracker logged them)."""
    result = danlu.run(recipe, overrides=overrides, home=home)
    store = SqlStore(home=home)
    points = {p.step: p.time for p in store.metric_history(result.run_id, "train_loss")}
    rows = store.get_run(result.run_id).metrics["rows_train"]
    store.close()
    return rows * (epochs - 1) / (points[epochs] - points[1])


def throughput(ranks: int, epochs: int, home: Path) -> float:
    """The digits CNN on the 1,797 digits themselves, global batch 128."""
    overrides = [
        *BARE,
        *ranks_override(ranks),
        f"train.epochs={epochs}",
        f"train.batch_size={128 // ranks}",
        "train.early_stopping=null",
        "train.checkpoint.every=0",
    ]
    return logged_throughput(EXAMPLE, overrides, epochs, home)


def digits_table(folder: Path, rows: int) -> Path:
    """``rows`` 8×8 digit images: the real digits drawn with replacement, plus pixel noise."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    pick = rng.integers(0, len(digits.target), rows)
    x = np.clip(digits.data[pick] + rng.normal(0, 2, (rows, 64)), 0, 16).astype(np.float32)
    frame = pd.DataFrame(x, columns=[f"pixel_{i // 8}_{i % 8}" for i in range(64)])
    frame["target"] = digits.target[pick]
    path = folder / "digits_large.parquet"
    frame.to_parquet(path, index=False)
    return path


def image_throughput(ranks: int, epochs: int, table: Path, home: Path) -> float:
    """The digits CNN (the example's model and optimizer) on a larger image table, global
    batch 512: enough work per step that the gradient all-reduce is a small part of it."""
    example = yaml.safe_load(EXAMPLE.read_text())
    data = {"target": "target", "image_shape": [1, 8, 8], "prepare": {"scale": "minmax"}}
    recipe = table_recipe(
        "ddp-digits-cnn-large", table, data, example["model"], epochs, 512 // ranks
    )
    recipe["train"]["optimizer"] = example["train"]["optimizer"]
    return table_throughput(recipe, ranks, epochs, home)


def table_recipe(
    name: str, table: Path, data: dict, model: dict, epochs: int, batch: int
) -> dict[str, Any]:
    """A bare recipe (no report, no registration, no checkpoints) on a large Parquet table."""
    return {
        "name": name,
        "data": {"source": str(table), "split": {"test": 0.01, "val": 0.01, "seed": 0}, **data},
        "task": "classification",
        "model": model,
        "train": {"epochs": epochs, "batch_size": batch, "checkpoint": {"every": 0}},
        "evaluate": False,
        "register": False,
    }


def table_throughput(recipe: dict[str, Any], ranks: int, epochs: int, home: Path) -> float:
    if ranks > 1:
        recipe["train"]["distributed"] = {"nproc_per_node": ranks, "timeout_s": 120}
    return logged_throughput(recipe, [], epochs, home)


def wide_table(folder: Path, rows: int) -> Path:
    """A synthetic table (``rows`` × 32 numeric features, 4 classes) as Parquet."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 32)).astype(np.float32)
    frame = pd.DataFrame({f"f{i}": x[:, i] for i in range(32)})
    frame["label"] = (x[:, :4].sum(1) > 0).astype(int) + 2 * (x[:, 4] * x[:, 5] > 0)
    path = folder / "wide.parquet"
    frame.to_parquet(path, index=False)
    return path


def wide_throughput(ranks: int, epochs: int, table: Path, home: Path) -> float:
    """The same measure on a wide MLP (32 → 1024 → 1024 → 4), global batch 1024."""
    model = {"type": "mlp", "hidden": [1024, 1024], "dropout": 0.0}
    recipe = table_recipe("ddp-wide-mlp", table, {"target": "label"}, model, epochs, 1024 // ranks)
    recipe["train"]["optimizer"] = {"name": "adam", "lr": 1e-3}
    return table_throughput(recipe, ranks, epochs, home)


def equivalence(folder: Path) -> dict[str, float]:
    """One step of 2 ranks × 80 rows vs 1 rank × 160 rows: the largest parameter difference."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(250, 6))
    frame = pd.DataFrame({f"f{i}": x[:, i] for i in range(6)})
    frame["label"] = (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 0.8).astype(int)
    frame.to_csv(folder / "table.csv", index=False)

    def run(ranks: int, batch: int) -> dict[str, torch.Tensor]:
        recipe = {
            "name": "ddp-equivalence",
            "data": {
                "source": str(folder / "table.csv"),
                "target": "label",
                "split": {"test": 0.2, "val": 0.16, "stratify": False, "seed": 0},
            },
            "task": "classification",
            "model": {"type": "mlp", "hidden": [64], "dropout": 0.0},
            "train": {"epochs": 1, "batch_size": batch, "optimizer": {"name": "adam", "lr": 0.01}},
        }
        if ranks > 1:
            recipe["train"]["distributed"] = {"nproc_per_node": ranks, "timeout_s": 120}
        result = danlu.run(recipe, home=folder / f"home{ranks}")
        return {k: v.detach().clone() for k, v in result.model.state_dict().items()}

    one, two = run(1, 160), run(2, 80)  # 160 training rows: one step each
    diff = max((one[k] - two[k]).abs().max().item() for k in one)
    scale = max(one[k].abs().max().item() for k in one)
    return {"max_abs_diff": diff, "max_abs_param": scale}


def accuracy(ranks: int, seed: int, home: Path) -> tuple[float, int]:
    overrides = [
        *BARE,
        *ranks_override(ranks),
        f"train.seed={seed}",
        f"train.batch_size={64 // ranks}",
    ]
    result = danlu.run(EXAMPLE, overrides=overrides, home=home)
    return result.metrics["accuracy"], len(result.history)


def pair_ratios(speed: dict[int, list[float]]) -> list[float]:
    """2 ranks' speed over 1 rank's, pair by pair."""
    return [b / a for a, b in zip(speed[1], speed[2], strict=True)]


def throughput_row(label: str, speed: dict[int, list[float]]) -> list[str]:
    ratios = pair_ratios(speed)
    return [
        f"training throughput, {label} (rows/s, median)",
        f"{statistics.median(speed[1]):.0f}",
        f"{statistics.median(speed[2]):.0f}",
        f"**{statistics.median(ratios):.2f}×** (pairs: "
        + ", ".join(f"{r:.2f}" for r in ratios)
        + ")",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--throughput-only",
        action="store_true",
        help="measure throughput again; keep the equivalence and accuracy of the last results",
    )
    parser.add_argument(
        "--image-rows", type=int, default=40_000, help="0: skip the digits CNN on a large table"
    )
    parser.add_argument("--image-epochs", type=int, default=4)
    parser.add_argument("--wide-rows", type=int, default=60_000, help="0: skip the wide MLP")
    parser.add_argument("--wide-epochs", type=int, default=3)
    args = parser.parse_args()
    earlier = json.loads((RESULTS / "ddp.json").read_text()) if args.throughput_only else None
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)

        def pairs(measure: Callable[[int, Path], float], tag: str) -> dict[int, list[float]]:
            """``measure`` for 1 and 2 ranks, alternating 1, 2, 2, 1, … over the reps."""
            speed: dict[int, list[float]] = {1: [], 2: []}
            for rep in range(args.reps):
                for ranks in (1, 2) if rep % 2 == 0 else (2, 1):
                    speed[ranks].append(measure(ranks, root / f"{tag}{rep}-{ranks}"))
            return speed

        speed = pairs(lambda ranks, home: throughput(ranks, args.epochs, home), "t")
        ratios = pair_ratios(speed)
        image: dict[int, list[float]] = {1: [], 2: []}
        if args.image_rows:
            images = digits_table(root, args.image_rows)
            image = pairs(
                lambda ranks, home: image_throughput(ranks, args.image_epochs, images, home), "i"
            )
        image_ratios = pair_ratios(image)
        wide: dict[int, list[float]] = {1: [], 2: []}
        if args.wide_rows:
            table = wide_table(root, args.wide_rows)
            wide = pairs(
                lambda ranks, home: wide_throughput(ranks, args.wide_epochs, table, home), "w"
            )
        wide_ratios = pair_ratios(wide)
        acc: dict[int, list[float]] = {1: [], 2: []}
        epochs_run: dict[int, list[int]] = {1: [], 2: []}
        if earlier is not None:  # the deterministic parts, as last measured
            equal = earlier["equivalence"]
            acc = {int(k): v for k, v in earlier["test_accuracy"].items()}
            epochs_run = {int(k): v for k, v in earlier["epochs_run"].items()}
            args.seeds = len(acc[1])
        else:
            equal = equivalence(root)
            for seed in range(args.seeds):
                for ranks in (1, 2):
                    value, ran = accuracy(ranks, seed, root / f"a{seed}-{ranks}")
                    acc[ranks].append(value)
                    epochs_run[ranks].append(ran)
    load_after = os.getloadavg()
    result = {
        "benchmark": "ddp",
        "setup": {
            "model": "digits CNN (examples/digits_cnn.yaml), no report",
            "global_batch": 128,
            "epochs_timed": f"2..{args.epochs}",
            "reps": args.reps,
            "seeds": args.seeds,
            "threads_per_rank": 1,
        },
        "machine": machine(),
        "load_average_1_5_15": {"before": load_before, "after": load_after},
        "seconds": time.time() - started,
        "rows_per_s": {str(k): v for k, v in speed.items()},
        "median_rows_per_s": {str(k): statistics.median(v) for k, v in speed.items()},
        "throughput_ratio_pairs": ratios,
        "median_throughput_ratio": statistics.median(ratios),
        "digits_cnn_large": {
            "setup": f"{args.image_rows} synthetic digit images (the real digits resampled, "
            f"plus noise), the digits CNN, global batch 512, epochs timed 2..{args.image_epochs}",
            "rows_per_s": {str(k): v for k, v in image.items()},
            "throughput_ratio_pairs": image_ratios,
            "median_throughput_ratio": statistics.median(image_ratios) if image_ratios else None,
        },
        "wide_mlp": {
            "setup": f"{args.wide_rows} rows × 32 features, MLP 1024-1024, global batch 1024, "
            f"epochs timed 2..{args.wide_epochs}",
            "rows_per_s": {str(k): v for k, v in wide.items()},
            "throughput_ratio_pairs": wide_ratios,
            "median_throughput_ratio": statistics.median(wide_ratios) if wide_ratios else None,
        },
        "equivalence": equal,
        "test_accuracy": {str(k): v for k, v in acc.items()},
        "mean_test_accuracy": {str(k): statistics.mean(v) for k, v in acc.items()},
        "epochs_run": {str(k): v for k, v in epochs_run.items()},
    }
    spread = {k: f"{min(v):.4f}–{max(v):.4f}" for k, v in acc.items()}
    rows = [
        throughput_row("digits CNN on the 1,797 digits, global batch 128", speed),
        *(
            [
                throughput_row(
                    f"digits CNN on {args.image_rows:,} digit images, global batch 512", image
                )
            ]
            if image_ratios
            else []
        ),
        *(
            [
                throughput_row(
                    f"wide MLP on {args.wide_rows:,} synthetic rows, global batch 1024", wide
                )
            ]
            if wide_ratios
            else []
        ),
        [
            "one step: 1 rank × 160 rows vs 2 ranks × 80, largest parameter difference",
            "—",
            "—",
            f"**{equal['max_abs_diff']:.1e}** (largest parameter {equal['max_abs_param']:.2f})",
        ],
        [
            f"test accuracy, mean of {args.seeds} seeds (range)",
            f"{result['mean_test_accuracy']['1']:.4f} ({spread[1]})",
            f"{result['mean_test_accuracy']['2']:.4f} ({spread[2]})",
            f"{result['mean_test_accuracy']['2'] - result['mean_test_accuracy']['1']:+.4f}",
        ],
    ]
    path = write(
        "ddp",
        result,
        ["figure", "1 rank × 1 thread", "2 ranks × 1 thread", "2 ranks vs 1"],
        rows,
        notes=(
            f"{os.cpu_count()} cores; load average (1, 5, 15 min) {load_before[0]:.2f}, "
            f"{load_before[1]:.2f}, {load_before[2]:.2f} before and {load_after[0]:.2f}, "
            f"{load_after[1]:.2f}, {load_after[2]:.2f} after (other work shared the machine). "
            f"Command: `python bench/ddp.py --reps {args.reps} --epochs {args.epochs} "
            f"--seeds {args.seeds} --image-rows {args.image_rows} --wide-rows {args.wide_rows}`"
            + (
                " (`--throughput-only`: equivalence and accuracy from the full run before)"
                if earlier is not None
                else ""
            )
        ),
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
