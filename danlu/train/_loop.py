"""The training engine: one short loop you can read top to bottom.

Data lives in memory as tensors and batches are slices of a shuffled index, exactly as in a
hand-written loop, so the engine costs almost nothing on top of the model's own work. Data larger
than memory (``data.stream``) feeds the same loop from a :class:`~danlu.data.TrainStream` that
reads Parquet in chunks, ahead of training in a background thread. Everything
else (early stopping, progress, user hooks) is a callback; checkpoints capture the whole state
(model, optimizer, schedule, callbacks, every RNG) so a killed run resumes bit-for-bit.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from danlu.config import TrainConfig
from danlu.data import Augmenter
from danlu.errors import ConfigError, DataError
from danlu.logging import get_logger
from danlu.train._callbacks import Callback, EarlyStopping
from danlu.train._checkpoint import CheckpointWriter, capture_rng, load_checkpoint, restore_rng
from danlu.train._optim import LRSchedule, build_optimizer

if TYPE_CHECKING:
    from danlu.data import FeatureSchema, PreparedData, TrainStream
    from danlu.store import Tracker
    from danlu.tasks import Task

__all__ = ["Trainer", "class_weights", "resolve_device", "seed_everything"]

log = get_logger(__name__)

_EVAL_CHUNK = 8192  # rows per forward pass when evaluating, to bound memory


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so the same seed gives the same run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "train.device: 'cuda' was asked for but no CUDA device is visible. Use 'auto' or 'cpu'."
        )
    return torch.device(name)


def class_weights(
    setting: str | dict[str, float] | None,
    y: np.ndarray,
    schema: FeatureSchema,
    counts: np.ndarray | None = None,
) -> torch.Tensor | None:
    """Loss weights per class: 'balanced' = n / (k · count), or an explicit {label: weight}.

    ``counts`` (rows per class) replaces ``y`` when the labels are not in memory (streaming).
    """
    if setting is None:
        return None
    classes = [str(c) for c in schema.classes or ()]
    if setting == "balanced":
        if counts is None:
            counts = np.bincount(y, minlength=len(classes))
        counts = np.asarray(counts, dtype=np.float64)
        weights = counts.sum() / (len(classes) * np.maximum(counts, 1))
        return torch.tensor(weights, dtype=torch.float32)
    assert isinstance(setting, dict)
    unknown = sorted(set(setting) - set(classes))
    if unknown:
        raise ConfigError(
            f"train.class_weight names classes {unknown} that are not in the data; the classes are {classes}."
        )
    return torch.tensor([setting.get(c, 1.0) for c in classes], dtype=torch.float32)


class Trainer:
    """Trains a model on prepared data.

    Example:
        >>> # trainer = Trainer(recipe.train, checkpoint_path=run_dir / "checkpoint.safetensors")
        >>> # trainer.fit(model, get_task("classification"), prepared)
        >>> # trainer.history_[-1]["val_accuracy"]
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        callbacks: Sequence[Callback] = (),
        tracker: Tracker | None = None,
        checkpoint_path: Path | None = None,
    ) -> None:
        self.config = config
        self.callbacks = list(callbacks)
        self.tracker = tracker
        self.checkpoint_path = checkpoint_path
        self.should_stop = False  # a callback sets this to end training after the current epoch
        # Set by fit (learned state ends in "_" where it is a result):
        self.history_: list[dict[str, float]] = []
        self.epoch = 0
        self.global_step = 0
        self.num_batches = 0
        self.model: torch.nn.Module
        self.optimizer: torch.optim.Optimizer
        self.task: Task
        self.schema: FeatureSchema

    # -- helpers -------------------------------------------------------------------------------
    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        if self.config.precision == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def predict_outputs(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Raw model outputs for ``x`` in eval mode, in float32 on the CPU."""
        model = self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        x_t = torch.as_tensor(x)
        outputs = []
        for start in range(0, len(x_t), _EVAL_CHUNK):
            with self._autocast(device):
                outputs.append(model(x_t[start : start + _EVAL_CHUNK].to(device)).float().cpu())
        model.train(was_training)
        return torch.cat(outputs) if outputs else torch.empty(0)

    def stream_outputs(self, stream: TrainStream, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs and targets of a streamed split (``val``/``test``); features are not kept."""
        target_dtype = getattr(torch, self.task.target_dtype)
        outputs, targets = [], []
        for x, y in stream.batches(split):  # (n, D), (n,) per chunk
            outputs.append(self.predict_outputs(torch.from_numpy(x)))
            targets.append(torch.from_numpy(y).to(target_dtype))
        if not outputs:
            return torch.empty(0), torch.empty(0, dtype=target_dtype)
        return torch.cat(outputs), torch.cat(targets)

    def _validate(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        loss_fn: torch.nn.Module,
        stream: TrainStream | None = None,
    ) -> dict[str, float]:
        if (len(x) if stream is None else stream.rows["val"]) == 0:
            return {}
        if stream is None:
            outputs = self.predict_outputs(x)
        else:
            outputs, y = self.stream_outputs(stream, "val")
        metrics = {"val_loss": loss_fn(outputs, y).item()}
        metrics.update(
            {
                f"val_{k}": v
                for k, v in self.task.quick_metrics(outputs, y.cpu(), self.schema).items()
            }
        )
        return metrics

    def _keyed_callbacks(self) -> list[tuple[str, Callback]]:
        """Callbacks named by class (and rank among their class) so states find their owner."""
        seen: dict[str, int] = {}
        keyed = []
        for cb in self.callbacks:
            name = type(cb).__name__
            seen[name] = seen.get(name, 0) + 1
            keyed.append((name if seen[name] == 1 else f"{name}{seen[name]}", cb))
        return keyed

    def _state(self, schedule: LRSchedule, generator: torch.Generator) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "should_stop": self.should_stop,
            "global_step": self.global_step,
            "history": self.history_,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "callbacks": {
                key: state for key, cb in self._keyed_callbacks() if (state := cb.state_dict())
            },
            "rng": capture_rng(generator),
        }

    def _restore(
        self, state: dict[str, Any], schedule: LRSchedule, generator: torch.Generator
    ) -> None:
        keyed = dict(self._keyed_callbacks())
        missing = sorted(set(state["callbacks"]) - set(keyed))
        if missing:
            raise ConfigError(
                f"The checkpoint holds state of callbacks {missing} that this run does not have (was train.early_stopping removed?); resume with the same recipe."
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        for key, cb_state in state["callbacks"].items():
            keyed[key].load_state_dict(cb_state)
        self.epoch, self.global_step = state["epoch"], state["global_step"]
        self.should_stop = state["should_stop"]
        self.history_ = list(state["history"])
        restore_rng(state["rng"], generator)

    # -- the loop ------------------------------------------------------------------------------
    def fit(
        self, model: torch.nn.Module, task: Task, data: PreparedData, *, resume: bool = False
    ) -> Trainer:
        """Train ``model`` on ``data.x_train`` with per-epoch validation; returns ``self``.

        Args:
            resume: continue from ``checkpoint_path`` (same recipe, same data) instead of starting.
        """
        cfg = self.config
        seed_everything(cfg.seed)
        device = resolve_device(cfg.device)
        self.model, self.task, self.schema = model.to(device), task, data.schema
        self.history_ = []
        self.epoch = self.global_step = 0
        self.should_stop = False

        target_dtype = getattr(torch, task.target_dtype)
        x_train = torch.as_tensor(data.x_train, device=device)  # (N, D)
        y_train = torch.as_tensor(data.y_train, device=device).to(target_dtype)  # (N,)
        x_val = torch.as_tensor(data.x_val)
        y_val = torch.as_tensor(data.y_val).to(target_dtype)
        stream = data.stream  # data larger than memory: batches come from Parquet, not tensors
        n = len(x_train) if stream is None else stream.rows["train"]
        n_val = len(x_val) if stream is None else stream.rows["val"]
        if n == 0:
            raise DataError(
                "The training split is empty; lower data.split.test / data.split.val or add rows."
            )
        batch_size = cfg.batch_size
        if batch_size > n:
            log.warning(
                "train.batch_size %d is larger than the training split (%d rows); using %d.",
                batch_size,
                n,
                n,
            )
            batch_size = n
        num_batches = self.num_batches = math.ceil(n / batch_size)
        accumulation = min(cfg.grad_accumulation, num_batches)
        steps_per_epoch = math.ceil(num_batches / accumulation)

        weights = (
            class_weights(
                cfg.class_weight or data.class_weight,
                data.y_train,
                data.schema,
                counts=None if stream is None else stream.class_counts,
            )
            if task.target_kind == "classes"
            else None
        )
        loss_fn = task.make_loss(weights.to(device) if weights is not None else None, cfg.loss)
        val_loss_fn = task.make_loss(weights, cfg.loss)  # validation outputs come back on the CPU
        self.optimizer = build_optimizer(cfg.optimizer, self.model)
        monitor = cfg.early_stopping.monitor if cfg.early_stopping else "val_loss"
        if n_val == 0 and monitor.startswith("val_"):
            monitor = "train_loss"
        mode_of = lambda m: task.monitor_mode(m)  # noqa: E731
        schedule = LRSchedule(
            cfg.scheduler,
            self.optimizer,
            epochs=cfg.epochs,
            steps_per_epoch=steps_per_epoch,
            monitor_mode=mode_of(monitor),
        )
        if cfg.early_stopping and not any(isinstance(cb, EarlyStopping) for cb in self.callbacks):
            mode = (
                mode_of(cfg.early_stopping.monitor)
                if cfg.early_stopping.mode == "auto"
                else cfg.early_stopping.mode
            )
            self.callbacks.insert(0, EarlyStopping(cfg.early_stopping, mode))
        generator = torch.Generator().manual_seed(cfg.seed)
        augment = Augmenter(data.augment, data.schema.image_shape, cfg.seed) if data.augment else None
        l1_params = [p for p in self.model.parameters() if p.ndim > 1] if cfg.l1 > 0 else []

        if resume:
            if self.checkpoint_path is None or not self.checkpoint_path.exists():
                raise DataError(
                    f"Cannot resume: there is no checkpoint at '{self.checkpoint_path}'."
                )
            self._restore(load_checkpoint(self.checkpoint_path), schedule, generator)
            log.info("resumed from %s after epoch %d", self.checkpoint_path, self.epoch)
        batch_hooks = [
            cb for cb in self.callbacks if type(cb).on_batch_end is not Callback.on_batch_end
        ]
        for cb in self.callbacks:
            cb.on_fit_start(self)

        writer = CheckpointWriter()  # checkpoints are written off the training thread
        try:
            last_batch = num_batches - 1
            while self.epoch < cfg.epochs and not self.should_stop:
                epoch = self.epoch + 1
                for cb in self.callbacks:
                    cb.on_epoch_start(self, epoch)
                self.model.train()
                batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
                if stream is None:  # in memory: slices of a shuffled index, as by hand
                    order = torch.randperm(n, generator=generator).to(device)
                    batches = ((x_train[idx], y_train[idx]) for idx in order.split(batch_size))
                else:  # from Parquet: row groups and a buffer shuffled per epoch, read ahead
                    batches = (  # y is already int64 (classes) or float32 (regression)
                        (torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
                        for x, y in stream.batches("train", batch_size, epoch=epoch)
                    )
                loss_sum = torch.zeros((), device=device)
                for batch, (xb, yb) in enumerate(batches):  # (B, D), (B,)
                    mix = None
                    if augment is not None:  # training batches only; seeded by the batch position
                        xb, mix = augment(xb, (epoch - 1) * num_batches + batch)
                    with self._autocast(device):
                        outputs = self.model(xb)
                        loss = loss_fn(outputs.float(), yb)
                        if mix is not None:  # mixup: the loss mixes the two targets the same way
                            loss = mix.lam * loss + (1 - mix.lam) * loss_fn(
                                outputs.float(), yb[mix.perm]
                            )
                    total = loss
                    if l1_params:
                        total = total + cfg.l1 * sum(p.abs().sum() for p in l1_params)
                    (total / accumulation if accumulation > 1 else total).backward()
                    if (batch + 1) % accumulation == 0 or batch == last_batch:
                        if cfg.grad_clip is not None:
                            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                        self.optimizer.step()
                        self.optimizer.zero_grad(set_to_none=True)
                        schedule.step_batch()
                        self.global_step += 1
                    loss_sum += loss.detach() * len(yb)  # summed on device: no sync per batch
                    for cb in batch_hooks:
                        cb.on_batch_end(self, batch, loss.detach())

                metrics: dict[str, float] = {"epoch": epoch, "train_loss": (loss_sum / n).item()}
                metrics.update(self._validate(x_val, y_val, val_loss_fn, stream))
                metrics["lr"] = self.optimizer.param_groups[0]["lr"]
                if not math.isfinite(metrics["train_loss"]):
                    raise DataError(
                        f"The training loss became {metrics['train_loss']} at epoch {epoch}. Lower train.optimizer.lr, set train.grad_clip, or check the data for extreme values."
                    )
                schedule.step_epoch(metrics.get(monitor))
                self.epoch = epoch
                self.history_.append(metrics)
                if self.tracker is not None:  # before the callbacks: a pruned epoch is recorded too
                    self.tracker.log_metrics(metrics, step=epoch, epoch=epoch)
                for cb in self.callbacks:
                    cb.on_epoch_end(self, epoch, metrics)
                if (
                    self.checkpoint_path is not None
                    and cfg.checkpoint.every
                    and (
                        epoch % cfg.checkpoint.every == 0 or self.should_stop or epoch == cfg.epochs
                    )
                ):
                    if self.tracker is not None:
                        self.tracker.flush()  # metrics on disk before the checkpoint that covers them
                    writer.save(self.checkpoint_path, self._state(schedule, generator))
        finally:
            writer.close()  # the last checkpoint is on disk (or its error raised) before we go on

        for cb in self.callbacks:
            cb.on_fit_end(self)
        if self.tracker is not None:
            self.tracker.flush()
        return self

    @property
    def best_epoch(self) -> int:
        """The epoch whose weights the model ends with (the last one without early stopping)."""
        for cb in self.callbacks:
            if (
                isinstance(cb, EarlyStopping)
                and cb.config.restore_best
                and cb.best_state is not None
            ):
                return cb.best_epoch
        return self.epoch
