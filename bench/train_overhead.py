"""danlu's engine vs a minimal hand-written PyTorch loop: same CNN, data, batch size, epochs.

Both train on digits' prepared tensors in memory, shuffle with randperm and validate once per
epoch. danlu additionally tracks params and metrics in its SQLite store (a run row, batched
metric inserts, a heartbeat thread) and writes a full, fsynced checkpoint
every epoch. Runs alternate (hand, danlu, danlu, hand, ...) so machine noise hits both alike;
the table reports medians and the median of per-pair ratios.

    python bench/train_overhead.py [--reps 7] [--epochs 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _report import machine, write  # noqa: E402

from danlu.config import load_recipe  # noqa: E402
from danlu.data import prepare_data  # noqa: E402
from danlu.models import build_model  # noqa: E402
from danlu.store import SqlStore, StoreTracker  # noqa: E402
from danlu.tasks import get_task  # noqa: E402
from danlu.train import Trainer  # noqa: E402

RECIPE = Path(__file__).resolve().parent.parent / "examples" / "digits_cnn.yaml"


def hand_loop(
    model: torch.nn.Module, data, epochs: int, batch_size: int, lr: float, wd: float, seed: int
) -> float:
    """What a careful user writes by hand: shuffle, batch, step, validate each epoch."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    xv, yv = torch.as_tensor(data.x_val), torch.as_tensor(data.y_val)
    acc = 0.0
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            out = model(xv)
            _val_loss = loss_fn(out, yv).item()
            acc = (out.argmax(1) == yv).float().mean().item()
    return acc


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    recipe = load_recipe(
        RECIPE,
        # The hand-written loop neither augments nor schedules: compare like with like.
        [
            f"train.epochs={args.epochs}",
            "train.scheduler.name=none",
            "train.early_stopping=null",
            "data.augment=[]",
        ],
    )
    data = prepare_data(recipe.data, recipe.task)
    task = get_task(recipe.task)
    opt = recipe.train.optimizer

    def fresh_model() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model(recipe.model, data.schema, task)

    def run_hand() -> float:
        start = time.perf_counter()
        hand_loop(
            fresh_model(), data, args.epochs, recipe.train.batch_size, opt.lr, opt.weight_decay, 0
        )
        return time.perf_counter() - start

    store = SqlStore(home=tempfile.mkdtemp())  # opened once, as `danlu run` does per process

    def run_danlu(home: Path) -> float:
        start = time.perf_counter()
        tracker = StoreTracker(store, store.create_run(experiment="bench", name="bench").id)
        trainer = Trainer(
            recipe.train,
            tracker=tracker,
            checkpoint_path=tracker.artifact_path("checkpoint.safetensors"),
        )
        trainer.fit(fresh_model(), task, data)
        tracker.set_status("finished")
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory() as home:
        run_hand(), run_danlu(Path(home))  # warm-up: allocator, kernels, file system
        hand, engine = [], []
        for rep in range(args.reps):
            order = [("hand", run_hand), ("danlu", lambda: run_danlu(Path(home)))]
            for name, fn in order if rep % 2 == 0 else reversed(order):
                (hand if name == "hand" else engine).append(fn())
    ratios = [e / h for e, h in zip(engine, hand, strict=True)]
    result = {
        "benchmark": "train_overhead",
        "setup": {
            "dataset": "digits",
            "model": recipe.model.model_dump(),
            "epochs": args.epochs,
            "batch_size": recipe.train.batch_size,
            "train_rows": len(data.x_train),
            "reps": args.reps,
        },
        "machine": machine(),
        "hand_seconds": hand,
        "danlu_seconds": engine,
        "hand_median_s": statistics.median(hand),
        "danlu_median_s": statistics.median(engine),
        "median_ratio": statistics.median(ratios),
    }
    path = write(
        "train_overhead",
        result,
        ["loop", "median time (s)", "runs"],
        [
            ["hand-written PyTorch", f"{result['hand_median_s']:.3f}", args.reps],
            [
                "danlu engine (tracking + checkpoint every epoch)",
                f"{result['danlu_median_s']:.3f}",
                args.reps,
            ],
            ["**ratio danlu / hand (median of pairs)**", f"**{result['median_ratio']:.3f}**", ""],
        ],
        notes=f"digits CNN, {args.epochs} epochs × {len(data.x_train)} rows, batch {recipe.train.batch_size}, {args.threads} thread(s). Command: `python bench/train_overhead.py --reps {args.reps} --epochs {args.epochs} --threads {args.threads}`",
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
