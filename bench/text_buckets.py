"""Length-bucketed batches vs a plain shuffle, and the token cache, on BBC News.

A text model cuts each batch to its longest row, so a batch costs what its longest text costs.
With ``train.bucket_by_length: true`` (the default for text) the engine puts texts of similar
length together (danlu/train/_buckets.py); with ``false`` batches are slices of a plain shuffle.
Both sides run danlu's own ``Trainer`` (no store, no checkpoints: the engine alone) on the same
prepared rows, the same freshly seeded model, the same settings; only the switch differs.

- ``text_cnn`` (embedding and channels ``--cnn-width``, default 64, kernel widths 3/4/5) on the
  training split of ``builtin:bbc_news`` (the example's split: test 0.2, val 0.1, stratified,
  seed 0; 1,558 articles) with a WordPiece tokenizer trained on it, at each of
  ``--cnn-max-lengths`` (default 1024: the articles' lengths spread from about 120 to over
  1,000 tokens, median about 490; and 256, where most articles fill all 256 positions);
- MiniLM's own tokenizer on the first ``--minilm-rows`` (300) training articles at each of
  ``--minilm-max-lengths`` (256, 512), batches of 16: the padding shares only, counted through
  a tiny stand-in model (the batches depend on the rows and the seed, not on the model);
  ``--minilm-time`` also times MiniLM + LoRA (r 8 on query/value, mean pooling) at the first
  length, which takes minutes per epoch on a CPU.

The time is the whole ``fit`` per epoch (setup, training, validation, which predicts in length
order when bucketing), after an untimed warm-up fit on two batches; runs alternate (bucketed, plain, then
plain, bucketed, ...) so machine noise hits both alike, and the table gives medians and the
median of the per-rep ratios. The padding share (pad positions / positions the model computes
on, training batches) is exact and the same on every rep. The token cache: ``prepare_data`` of
the first text_cnn data with a cold cache, a warm one and ``data.text.cache: false``, each rep
in a fresh ``DANLU_HOME``.

    python bench/text_buckets.py [--reps 3] [--epochs 1] [--threads 1] [--minilm-time]

Writes bench/results/text_buckets.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from _report import machine, write  # noqa: E402

from danlu.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from danlu.data import PreparedData, prepare_data  # noqa: E402
from danlu.models import build_model, resolve_pretrained  # noqa: E402
from danlu.tasks import get_task  # noqa: E402
from danlu.train import Trainer  # noqa: E402

SPLIT = {"test": 0.2, "val": 0.1, "stratify": True, "seed": 0}
CNN = {"type": "text_cnn"}
MINILM = {
    "type": "transformer",
    "pretrained": "all-MiniLM-L6-v2",
    "pooling": "mean",
    "finetune": "lora",
    "lora": {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["query", "value"]},
}


def data_config(max_length: int, *, cache: bool = True) -> DataConfig:
    return DataConfig(
        source="builtin:bbc_news",
        features={"text": "text"},
        split=SPLIT,
        text={"max_length": max_length, "cache": cache},
    )


def prepare(max_length: int, tokenizer_dir: Path | None = None, cache: bool = True) -> PreparedData:
    return prepare_data(
        data_config(max_length, cache=cache),
        "classification",
        text_models=True,
        tokenizer_dir=tokenizer_dir,
    )


class Padding:
    """Counts the training batches' real and computed token positions (a forward pre-hook)."""

    def __init__(self, data: PreparedData) -> None:
        (self.text,) = data.schema.text_slices()
        self.real = self.computed = 0

    def __call__(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if not module.training:
            return
        ids = args[0][:, self.text.start : self.text.stop]
        lengths = (ids != self.text.pad_id).sum(1)
        self.real += int(lengths.sum())
        self.computed += int(lengths.max()) * len(lengths)

    @property
    def share(self) -> float:
        return 1 - self.real / self.computed if self.computed else 0.0


def one_fit(
    data: PreparedData, model_options: dict[str, Any], bucket: bool, train: dict[str, Any]
) -> dict[str, float]:
    task = get_task("classification")
    torch.manual_seed(0)
    model = build_model(ModelConfig(**model_options), data.schema, task)
    padding = Padding(data)
    model.register_forward_pre_hook(padding)
    config = TrainConfig(device="cpu", seed=0, bucket_by_length=bucket, **train)
    started = time.perf_counter()
    trainer = Trainer(config).fit(model, task, data)
    seconds = time.perf_counter() - started
    return {
        "s_per_epoch": seconds / config.epochs,
        "padding_share": padding.share,
        "val_accuracy": trainer.history_[-1].get("val_accuracy", float("nan")),
    }


def compare(
    name: str,
    data: PreparedData,
    model_options: dict[str, Any],
    train: dict[str, Any],
    reps: int,
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {"bucketed": [], "plain": []}
    for rep in range(reps):
        sides = ("bucketed", "plain") if rep % 2 == 0 else ("plain", "bucketed")
        for side in sides:
            result = one_fit(data, model_options, side == "bucketed", train)
            runs[side].append(result)
            print(f"{name} rep {rep} {side}: {result}", flush=True)
    ratios = [
        b["s_per_epoch"] / p["s_per_epoch"]
        for b, p in zip(runs["bucketed"], runs["plain"], strict=True)
    ]
    return {
        "name": name,
        "train_rows": len(data.x_train),
        "val_rows": len(data.x_val),
        "model": model_options,
        "train": train,
        "runs": runs,
        "median_s": {k: statistics.median(r["s_per_epoch"] for r in v) for k, v in runs.items()},
        "padding_share": {k: v[0]["padding_share"] for k, v in runs.items()},
        "median_ratio_bucketed_to_plain": statistics.median(ratios),
    }


def cache_times(max_length: int, reps: int) -> dict[str, Any]:
    """prepare_data with a cold token cache, a warm one, and the cache off (fresh homes)."""
    times: dict[str, list[float]] = {"cold": [], "warm": [], "off": []}
    previous = os.environ.get("DANLU_HOME")
    try:
        for _ in range(reps):
            with tempfile.TemporaryDirectory() as home:
                os.environ["DANLU_HOME"] = home
                for kind in ("cold", "warm", "off"):
                    started = time.perf_counter()
                    prepare(max_length, cache=kind != "off")
                    times[kind].append(time.perf_counter() - started)
                    print(f"prepare ({kind} cache): {times[kind][-1]:.2f} s", flush=True)
    finally:
        if previous is None:
            os.environ.pop("DANLU_HOME", None)
        else:
            os.environ["DANLU_HOME"] = previous
    return {"runs": times, "median_s": {k: statistics.median(v) for k, v in times.items()}}


def warm_up(data: PreparedData, rows: int) -> PreparedData:
    """The first ``rows`` training and validation rows: an untimed first fit (lazy set-up)."""
    return dataclasses.replace(
        data,
        x_train=data.x_train[:rows],
        y_train=data.y_train[:rows],
        x_val=data.x_val[:rows],
        y_val=data.y_val[:rows],
    )


def padding_only(data: PreparedData, batch: int) -> dict[str, float]:
    """The padding shares of the engine's batches, bucketed and plain, counted through a tiny
    stand-in model (the batches depend on the rows and the seed, not on the model)."""
    shares = {}
    for side in ("bucketed", "plain"):
        stand_in = {"type": "text_cnn", "embedding": 4, "channels": 4, "kernels": [3]}
        train = {"epochs": 1, "batch_size": batch, "scheduler": {"name": "none"}}
        shares[side] = one_fit(data, stand_in, side == "bucketed", train)["padding_share"]
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cnn-max-lengths", type=int, nargs="*", default=[1024, 256])
    parser.add_argument("--cnn-width", type=int, default=64, help="embedding and channels")
    parser.add_argument("--cnn-batch", type=int, default=32)
    parser.add_argument("--cnn-rows", type=int, default=0, help="0: the whole training split")
    parser.add_argument("--minilm-rows", type=int, default=300)
    parser.add_argument("--minilm-val", type=int, default=100)
    parser.add_argument("--minilm-max-lengths", type=int, nargs="*", default=[256, 512])
    parser.add_argument("--minilm-batch", type=int, default=16)
    parser.add_argument(
        "--minilm-time",
        action="store_true",
        help="also time MiniLM + LoRA at the first --minilm-max-lengths (slow on a CPU)",
    )
    parser.add_argument("--out", default="text_buckets", help="results file name")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    os.environ["DANLU_HOME"] = tempfile.mkdtemp(prefix="danlu-bench-")  # this bench's cache
    cases, padding = [], []
    cnn = {**CNN, "embedding": args.cnn_width, "channels": args.cnn_width}
    cnn_train = {
        "epochs": args.epochs,
        "batch_size": args.cnn_batch,
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "scheduler": {"name": "none"},
    }
    for max_length in args.cnn_max_lengths:
        data = prepare(max_length)
        if args.cnn_rows:
            rows = args.cnn_rows
            data = dataclasses.replace(
                data, x_train=data.x_train[:rows], y_train=data.y_train[:rows]
            )
        one_fit(warm_up(data, 2 * args.cnn_batch), cnn, True, cnn_train)  # not timed
        name = f"text_cnn (width {args.cnn_width}), max_length {max_length}"
        cases.append(compare(name, data, cnn, cnn_train, args.reps))
    minilm_dir = resolve_pretrained("all-MiniLM-L6-v2")
    for k, max_length in enumerate(args.minilm_max_lengths):
        full = prepare(max_length, minilm_dir)
        subset = dataclasses.replace(
            full,
            x_train=full.x_train[: args.minilm_rows],
            y_train=full.y_train[: args.minilm_rows],
            x_val=full.x_val[: args.minilm_val],
            y_val=full.y_val[: args.minilm_val],
        )
        name = f"MiniLM tokens, {args.minilm_rows} articles, max_length {max_length}"
        shares = padding_only(subset, args.minilm_batch)
        padding.append({"name": name, "batch_size": args.minilm_batch, "padding_share": shares})
        print(f"{name}: {shares}", flush=True)
        if args.minilm_time and k == 0:
            import transformers

            transformers.utils.logging.set_verbosity_error()
            minilm_train = {
                "epochs": args.epochs,
                "batch_size": args.minilm_batch,
                "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
                "scheduler": {"name": "none"},
            }
            one_fit(warm_up(subset, 2 * args.minilm_batch), MINILM, True, minilm_train)
            name = f"MiniLM + LoRA r 8, {args.minilm_rows} articles, max_length {max_length}"
            cases.append(compare(name, subset, MINILM, minilm_train, args.reps))
    cache = cache_times(args.cnn_max_lengths[0], args.reps) if args.cnn_max_lengths else None

    payload = {
        "machine": machine(),
        "args": vars(args),
        "cases": cases,
        "padding_only": padding,
        "prepare_cache": cache,
    }
    rows = []
    for case in cases:
        median, share = case["median_s"], case["padding_share"]
        rows.append(
            [
                case["name"],
                case["train_rows"],
                f"{median['plain']:.2f}",
                f"{median['bucketed']:.2f}",
                f"**{case['median_ratio_bucketed_to_plain']:.2f}**",
                f"{100 * share['plain']:.1f}%",
                f"{100 * share['bucketed']:.1f}%",
            ]
        )
    for entry in padding:
        share = entry["padding_share"]
        rows.append(
            [
                f"{entry['name']} (batch {entry['batch_size']}; padding only)",
                args.minilm_rows,
                "",
                "",
                "",
                f"{100 * share['plain']:.1f}%",
                f"{100 * share['bucketed']:.1f}%",
            ]
        )
    notes = (
        f"Median of {args.reps} interleaved reps after a warm-up fit on two batches, {args.epochs} epoch(s) "
        f"each, {args.threads} thread(s); s/epoch includes the validation pass. Padding: pad "
        "positions / positions computed on in the training batches (each batch cut to its "
        "longest row)."
    )
    if cache is not None:
        prep = cache["median_s"]
        notes += (
            f"\n\n`prepare_data` of the text_cnn data (max_length {args.cnn_max_lengths[0]}), "
            f"median of {args.reps}: cold token cache {prep['cold']:.2f} s, warm "
            f"{prep['warm']:.2f} s, `data.text.cache: false` {prep['off']:.2f} s."
        )
    path = write(
        args.out,
        payload,
        [
            "case",
            "training rows",
            "plain shuffle s/epoch",
            "bucketed s/epoch",
            "ratio bucketed / plain (median of reps)",
            "padding, plain",
            "padding, bucketed",
        ],
        rows,
        notes,
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
