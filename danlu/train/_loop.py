"""The training engine: one short loop you can read top to bottom.

Data lives in memory as tensors and batches are slices of a shuffled index, exactly as in a
hand-written loop, so the engine costs almost nothing on top of the model's own work. Data larger
than memory (``data.stream``) feeds the same loop from a :class:`~danlu.data.TrainStream` that
reads Parquet in chunks, ahead of training in a background thread. With text columns the
shuffle is length-bucketed (``train.bucket_by_length``, ``_buckets.py``): each batch holds texts
of similar length, so a text model, which cuts a batch to its longest row, pads less. Everything
else (early stopping, progress, user hooks) is a callback; checkpoints capture the whole state
(model, optimizer, schedule, callbacks, every RNG) so a killed run resumes bit-for-bit.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
import torch

from danlu.config import TrainConfig
from danlu.data import Augmenter
from danlu.errors import ConfigError, DataError, Preempted
from danlu.logging import get_logger
from danlu.models._base_weights import trained_state, with_frozen_base
from danlu.store._crypt import read_bytes
from danlu.train._adversarial import Adversary, adversary_for
from danlu.train._buckets import EVAL_CHUNK_ROWS, bucketed_order, token_lengths
from danlu.train._callbacks import Callback, EarlyStopping
from danlu.train._checkpoint import (
    CheckpointWriter,
    capture_rng,
    checkpoint_from_bytes,
    load_checkpoint,
    restore_rng,
)
from danlu.train._distributed import Strategy, active_strategy
from danlu.train._optim import LRSchedule, build_optimizer
from danlu.train._preempt import safe_points, stop_requested

if TYPE_CHECKING:
    from danlu.data import FeatureSchema, PreparedData, TrainStream
    from danlu.store import Tracker
    from danlu.tasks import Task
    from danlu.train._distill import Distiller
    from danlu.train._privacy import PrivateTraining

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


@dataclass(slots=True)
class _FitSetup:
    """What :meth:`Trainer.fit` wires once and its loop reads on every batch and epoch."""

    device: torch.device
    net: torch.nn.Module  # what forward/backward runs through: the model, or its DDP wrapper
    x_train: torch.Tensor  # (N, D) on the device; empty when streaming
    y_train: torch.Tensor  # (N,)
    x_val: torch.Tensor  # (V, D) on the CPU
    y_val: torch.Tensor  # (V,)
    stream: TrainStream | None  # data larger than memory, read from Parquet
    rows: int  # training rows (of this rank: a shard, when distributed), in memory or streamed
    batch_size: int
    accumulation: int  # batches per optimizer step
    loss_fn: torch.nn.Module
    val_loss_fn: torch.nn.Module  # the same loss, its class weights on the CPU
    schedule: LRSchedule
    monitor: str  # the metric the schedule steps on
    generator: torch.Generator  # the shuffle's RNG, saved in checkpoints
    augment: Augmenter | None
    l1_params: list[torch.nn.Parameter]  # weights (not biases) under train.l1
    resume_at: dict[str, Any] | None = None  # where a preempted session stopped in its epoch
    epoch_shuffle: torch.Tensor | None = None  # the shuffle's RNG as the current epoch began
    lengths: torch.Tensor | None = None  # (N,) rows' token counts: length-bucketed batches
    distiller: Distiller | None = None  # train.distill: the teacher's soft targets join the loss
    adversary: Adversary | None = None  # train.adversarial: attacks batches (_adversarial.py)
    privacy: PrivateTraining | None = None  # train.privacy: DP-SGD (_privacy.py)


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
        strategy: Strategy | None = None,
        teacher: torch.nn.Module | None = None,
    ) -> None:
        self.config = config
        self.teacher = teacher  # train.distill's teacher (_distill.py), on the model's device
        # one process (a no-op), or this rank's part of a torchrun job (_distributed.py)
        self.strategy = strategy if strategy is not None else active_strategy()
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
        """Raw model outputs for ``x`` in eval mode, in float32 on the CPU.

        Rows with text are predicted in order of length, in chunks of similar length (less
        padding), and the outputs put back in the rows' order."""
        model = self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        x_t = torch.as_tensor(x)
        schema = getattr(self, "schema", None)
        lengths = (
            token_lengths(x_t, schema)
            if schema is not None and self.config.bucket_by_length and len(x_t)
            else None
        )
        # a model whose rows are large inside (a GPT's block: context × vocabulary logits)
        # names fewer rows per pass: memory stays bounded and the logits stay in cache
        most = max(1, int(getattr(model, "eval_chunk_rows", _EVAL_CHUNK)))
        if lengths is None:  # slices in the rows' order
            step = min(_EVAL_CHUNK, most)
            chunks = [slice(start, start + step) for start in range(0, len(x_t), step)]
            order = None
        else:
            order = torch.argsort(lengths, stable=True)  # (N,) shortest first
            chunks = list(order.split(min(EVAL_CHUNK_ROWS, most)))
        outputs = []
        for rows in chunks:
            with self._autocast(device):
                outputs.append(model(x_t[rows].to(device)).float().cpu())
        model.train(was_training)
        if not outputs:
            return torch.empty(0)
        out = torch.cat(outputs)
        if order is not None:  # back in the rows' order
            out = torch.empty_like(out).index_copy_(0, order, out)
        return out

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

    def _state(
        self,
        schedule: LRSchedule,
        generator: torch.Generator,
        position: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The whole training state; ``position`` (a preempted epoch's batches done, loss so far,
        shuffle RNG at the epoch's start and pending accumulated gradients) when mid-epoch.

        Distributed, it is the full state on every rank (FSDP shards gathered): a checkpoint
        resumes on any number of ranks."""
        return self.strategy.full_state(
            {
                "epoch": self.epoch,
                "should_stop": self.should_stop,
                "global_step": self.global_step,
                "history": self.history_,
                "model": trained_state(self.model),  # a LoRA / frozen base: left out
                "optimizer": self.optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "callbacks": {
                    key: state for key, cb in self._keyed_callbacks() if (state := cb.state_dict())
                },
                "rng": capture_rng(generator),
                **({"position": position} if position is not None else {}),
            }
        )

    def _restore(
        self, state: dict[str, Any], schedule: LRSchedule, generator: torch.Generator
    ) -> dict[str, Any] | None:
        """Load a checkpoint's state; returns its position inside an epoch, if it has one."""
        keyed = dict(self._keyed_callbacks())
        missing = sorted(set(state["callbacks"]) - set(keyed))
        if missing:
            raise ConfigError(
                f"The checkpoint holds state of callbacks {missing} that this run does not have (was train.early_stopping removed?); resume with the same recipe."
            )
        self.strategy.load_model_state(self.model, with_frozen_base(self.model, state["model"]))
        self.strategy.load_optimizer_state(self.optimizer, state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        for key, cb_state in state["callbacks"].items():
            keyed[key].load_state_dict(cb_state)
        self.epoch, self.global_step = state["epoch"], state["global_step"]
        self.should_stop = state["should_stop"]
        self.history_ = list(state["history"])
        restore_rng(state["rng"], generator)
        position = state.get("position")
        if position is not None and self.strategy.distributed:  # batches differ per world size:
            generator.set_state(position["shuffle"])  # the stopped epoch again, from its start
            log.warning(
                "resuming on %d ranks: the stopped epoch starts again",
                self.strategy.world_size,
            )
            return None
        if position is not None:  # gradients of an accumulation cycle the preemption cut short
            params = dict(self.model.named_parameters())
            for name, grad in position["grads"].items():
                params[name].grad = grad.to(params[name].device)
        return position

    # -- the loop ------------------------------------------------------------------------------
    def fit(
        self,
        model: torch.nn.Module,
        task: Task,
        data: PreparedData,
        *,
        resume: bool = False,
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
        strategy = self.strategy
        net = strategy.wrap(self.model)  # DDP / FSDP on a rank of a torchrun job, else the model
        setup = self._setup(data, device, net)  # data, batches, losses, optimizer, schedule …
        if strategy.agree(resume):  # rank 0 decides, and reads the checkpoint
            self._resume(setup)
        batch_hooks = [
            cb for cb in self.callbacks if type(cb).on_batch_end is not Callback.on_batch_end
        ]
        for cb in self.callbacks:
            cb.on_fit_start(self)

        # Checkpoints are written off the training thread, and are on disk (or their error
        # raised) before fit goes on. SIGTERM (preemption) stops after the current batch with a
        # checkpoint of the position inside the epoch, then raises Preempted (_preempt.py).
        with safe_points(), contextlib.closing(CheckpointWriter()) as writer:
            last_batch = self.num_batches - 1
            while self.epoch < cfg.epochs and not self.should_stop:
                epoch = self.epoch + 1
                for cb in self.callbacks:
                    cb.on_epoch_start(self, epoch)
                strategy.seed_epoch(cfg.seed, epoch)  # distributed: dropout differs per rank
                self.model.train()
                start, loss_sum = self._epoch_start(setup)  # 0 and 0, or where preemption stopped
                first_batch = (epoch - 1) * self.num_batches  # counted over the run: seeds augment
                batches = self._epoch_batches(setup, epoch, start)
                for batch, (xb, yb) in enumerate(batches, start):  # (B, D), (B,)
                    step = (batch + 1) % setup.accumulation == 0 or batch == last_batch
                    with strategy.gradient_sync(setup.net, step):  # DDP: all-reduce on a step
                        loss = self._forward_backward(setup, xb, yb, first_batch + batch)
                    if step:
                        self._optimizer_step(setup)
                    loss_sum += loss * len(yb)  # summed on device: no sync per batch
                    for cb in batch_hooks:
                        cb.on_batch_end(self, batch, loss)
                    if stop_requested() and not strategy.distributed:  # SIGTERM: checkpoint
                        self._stop_preempted(setup, writer, epoch, batch + 1, loss_sum)

                metrics = self._epoch_metrics(setup, epoch, loss_sum)  # train loss, val_*, lr
                self._record_epoch(setup, epoch, metrics)  # schedule, history, tracker
                for cb in self.callbacks:
                    cb.on_epoch_end(self, epoch, metrics)
                if strategy.distributed:  # the ranks agree on stopping, and checkpoint together
                    self._end_distributed_epoch(setup, writer, epoch)
                    continue
                if self.checkpoint_path is not None and self._checkpoint_due(epoch):
                    self._save_checkpoint(self.checkpoint_path, setup, writer)
                if stop_requested():  # SIGTERM during validation: stop at the epoch's end
                    self._stop_preempted(setup, writer, epoch, None, loss_sum)

        for cb in self.callbacks:
            cb.on_fit_end(self)
        self.model = strategy.finish(self.model)  # FSDP: the gathered, unsharded model
        if self.tracker is not None:
            self.tracker.flush()
        return self

    # -- fit's parts, in the order fit calls them -------------------------------------------------
    def _setup(self, data: PreparedData, device: torch.device, net: torch.nn.Module) -> _FitSetup:
        """Wire one fit: data on the device, the batch plan, losses, optimizer, schedule, monitor."""
        cfg, task = self.config, self.task
        target_dtype = getattr(torch, task.target_dtype)
        x_train = torch.as_tensor(data.x_train, device=device)  # (N, D)
        y_train = torch.as_tensor(data.y_train, device=device).to(target_dtype)  # (N,)
        x_val = torch.as_tensor(data.x_val)  # (V, D), validated on the CPU in chunks
        y_val = torch.as_tensor(data.y_val).to(target_dtype)  # (V,)
        stream = data.stream  # data larger than memory: batches come from Parquet, not tensors
        lengths = (  # text: each row's token count, for batches of similar length
            token_lengths(data.x_train, data.schema)
            if cfg.bucket_by_length and stream is None
            else None
        )
        rows = self.strategy.rows_per_rank(len(x_train) if stream is None else stream.rows["train"])
        val_rows = len(x_val) if stream is None else stream.rows["val"]
        batch_size = self._batch_size(rows)
        self.num_batches = math.ceil(rows / batch_size)
        accumulation = min(cfg.grad_accumulation, self.num_batches)

        loss_fn, val_loss_fn = self._losses(data, device)
        self.optimizer = build_optimizer(cfg.optimizer, self.model)
        privacy = None
        if cfg.privacy is not None:  # DP-SGD: per-row gradients, clipped and noised, accounted
            from danlu.train._privacy import make_private

            privacy = make_private(
                self,
                cfg.privacy,
                net,
                rows=rows,
                batch_size=batch_size,
                steps_per_epoch=self.num_batches,
                streaming=stream is not None,
            )
            net, self.optimizer = privacy.net, privacy.optimizer
        monitor = self._monitor(val_rows)
        schedule = LRSchedule(
            cfg.scheduler,
            self.optimizer,
            epochs=cfg.epochs,
            steps_per_epoch=math.ceil(self.num_batches / accumulation),
            monitor_mode=task.monitor_mode(monitor),
        )
        self._add_early_stopping()
        return _FitSetup(
            device=device,
            net=net,
            x_train=x_train,
            y_train=y_train,
            x_val=x_val,
            y_val=y_val,
            stream=stream,
            rows=rows,
            batch_size=batch_size,
            accumulation=accumulation,
            loss_fn=loss_fn,
            val_loss_fn=val_loss_fn,
            schedule=schedule,
            monitor=monitor,
            generator=torch.Generator().manual_seed(cfg.seed),
            augment=(
                Augmenter(
                    data.augment,
                    data.schema.image_shape,
                    self.strategy.rank_seed(cfg.seed),
                )
                if data.augment
                else None
            ),
            l1_params=[p for p in self.model.parameters() if p.ndim > 1] if cfg.l1 > 0 else [],
            lengths=lengths,
            distiller=self._distiller(device),
            adversary=adversary_for(cfg.adversarial, data, cfg.seed),
            privacy=privacy,
        )

    def _distiller(self, device: torch.device) -> Distiller | None:
        """``train.distill``'s teacher, frozen on the device, with its loss weights."""
        distill = self.config.distill
        if distill is None:
            return None
        if self.teacher is None:
            raise ConfigError(
                "train.distill is set but the Trainer was given no teacher: pass "
                "Trainer(..., teacher=model), or train through danlu run / run_training, which "
                "load train.distill.teacher."
            )
        from danlu.train._distill import Distiller

        return Distiller(
            self.teacher, distill.alpha, distill.temperature, self.task.target_kind
        ).to(device)

    def _batch_size(self, rows: int) -> int:
        """``train.batch_size``, or the whole training split when that is smaller."""
        if rows == 0:
            raise DataError(
                "The training split is empty; lower data.split.test / data.split.val or add rows."
            )
        if self.config.batch_size > rows:
            log.warning(
                "train.batch_size %d is larger than the training split (%d rows); using %d.",
                self.config.batch_size,
                rows,
                rows,
            )
            return rows
        return self.config.batch_size

    def _losses(
        self, data: PreparedData, device: torch.device
    ) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The training loss (on the device) and the validation loss (on the CPU).

        Validation outputs come back on the CPU; both losses carry the class weights when the
        target is classes.
        """
        cfg, stream = self.config, data.stream
        weights = (
            class_weights(
                cfg.class_weight or data.class_weight,
                data.y_train,
                data.schema,
                counts=None if stream is None else stream.class_counts,
            )
            if self.task.target_kind == "classes"
            else None
        )
        loss_fn = self.task.make_loss(weights.to(device) if weights is not None else None, cfg.loss)
        return loss_fn, self.task.make_loss(weights, cfg.loss)

    def _monitor(self, val_rows: int) -> str:
        """The metric the schedule (and early stopping) watch; train_loss without validation."""
        stopping = self.config.early_stopping
        monitor = stopping.monitor if stopping else "val_loss"
        if val_rows == 0 and monitor.startswith("val_"):
            return "train_loss"
        return monitor

    def _add_early_stopping(self) -> None:
        """Put ``train.early_stopping`` first among the callbacks unless one was passed in."""
        stopping = self.config.early_stopping
        if stopping is None or any(isinstance(cb, EarlyStopping) for cb in self.callbacks):
            return
        mode = (
            self.task.monitor_mode(stopping.monitor) if stopping.mode == "auto" else stopping.mode
        )
        self.callbacks.insert(0, EarlyStopping(stopping, mode))

    def _resume(self, setup: _FitSetup) -> None:
        path, strategy = self.checkpoint_path, self.strategy
        if strategy.is_main and (path is None or not path.exists()):
            raise DataError(f"Cannot resume: there is no checkpoint at '{path}'.")
        if not strategy.distributed:
            assert path is not None
            state = load_checkpoint(path)
        else:  # rank 0 reads the file, every rank decodes the bytes it sent
            raw = strategy.share_bytes(read_bytes(path) if path is not None else None)
            state = checkpoint_from_bytes(raw, path or "rank 0's checkpoint")
        setup.resume_at = self._restore(state, setup.schedule, setup.generator)
        done = setup.resume_at["batch"] if setup.resume_at else 0
        log.info(
            "resumed from %s: epoch %d, batch %d",
            self.checkpoint_path,
            self.epoch + 1,
            done,
        )

    def _epoch_start(self, setup: _FitSetup) -> tuple[int, torch.Tensor]:
        """The epoch's first batch and its loss sum so far: 0 and 0, except in the first epoch
        after resuming a preempted session, which goes on where that one stopped."""
        position, setup.resume_at = setup.resume_at, None
        if position is None:
            setup.epoch_shuffle = setup.generator.get_state()  # replayed if preempted mid-epoch
            return 0, torch.zeros((), device=setup.device)
        setup.epoch_shuffle = position["shuffle"]
        setup.generator.set_state(position["shuffle"])  # the same order as the stopped epoch
        return int(position["batch"]), position["loss_sum"].to(setup.device)

    def _epoch_batches(
        self, setup: _FitSetup, epoch: int, start: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch's training batches from batch ``start``, (B, D) and (B,), on the device."""
        if setup.privacy is not None:  # DP-SGD: Poisson-sampled batches of varying size
            from danlu.train._privacy import poisson_batches

            draws = poisson_batches(
                setup.rows, setup.privacy.sample_rate, self.num_batches, setup.generator, start
            )
            return (
                (setup.x_train[i], setup.y_train[i]) for i in (d.to(setup.device) for d in draws)
            )
        if setup.stream is None:  # in memory: slices of a shuffled index, as by hand
            order = torch.randperm(len(setup.x_train), generator=setup.generator)
            if setup.lengths is not None:  # text: batches of similar length (_buckets.py), cut
                # at batch_size × ranks, so each rank's strided share of a batch is its batch
                rows = setup.batch_size * self.strategy.world_size
                order = bucketed_order(order, setup.lengths, rows, setup.generator)
            order = self.strategy.shard(order).to(setup.device)  # distributed: this rank's share
            return (
                (setup.x_train[idx], setup.y_train[idx])
                for idx in order.split(setup.batch_size)[start:]
            )
        # from Parquet: row groups and a buffer shuffled per epoch, read ahead; y is already
        # int64 (classes) or float32 (regression). The order depends on the epoch alone, so a
        # resumed epoch reads (and skips) the batches it had already trained on.
        batches = self.strategy.stream_batches(setup.stream, setup.batch_size, epoch)
        return (
            (torch.from_numpy(x).to(setup.device), torch.from_numpy(y).to(setup.device))
            for x, y in itertools.islice(batches, start, None)
        )

    def _forward_backward(
        self, setup: _FitSetup, xb: torch.Tensor, yb: torch.Tensor, position: int
    ) -> torch.Tensor:
        """Adds one batch's gradients (scaled for accumulation); returns its detached loss.

        ``position`` counts batches over the whole run: it seeds the batch's augmentation.
        """
        if setup.privacy is not None and len(yb) == 0:  # DP-SGD: no row drawn, noise still added
            from danlu.train._privacy import empty_batch

            return empty_batch(setup.privacy, setup.device)
        mix = None
        if setup.augment is not None:  # training batches only
            xb, mix = setup.augment(xb, position)
        if setup.adversary is not None:  # train.adversarial: a share of the batch attacked
            xb = setup.adversary.perturb(self.model, xb, yb, setup.loss_fn, position)
        with self._autocast(setup.device):
            outputs = setup.net(xb)  # (B, C) or (B,)
            loss = setup.loss_fn(outputs.float(), yb)
            if mix is not None:  # mixup: the loss mixes the two targets the same way
                loss = mix.lam * loss + (1 - mix.lam) * setup.loss_fn(outputs.float(), yb[mix.perm])
            if setup.distiller is not None:  # the teacher's soft targets on the same batch
                loss = setup.distiller.loss(xb, outputs, loss)
        total = loss
        if setup.l1_params:
            total = total + self.config.l1 * sum(p.abs().sum() for p in setup.l1_params)
        (total / setup.accumulation if setup.accumulation > 1 else total).backward()
        return loss.detach()

    def _optimizer_step(self, setup: _FitSetup) -> None:
        """Clip, step and clear the gradients, then advance the per-batch LR schedule."""
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        setup.schedule.step_batch()
        self.global_step += 1

    def _epoch_metrics(
        self, setup: _FitSetup, epoch: int, loss_sum: torch.Tensor
    ) -> dict[str, float]:
        """The epoch's row: mean training loss, validation metrics and the learning rate."""
        if self.strategy.distributed:  # the loss over every rank's rows
            seen = setup.rows if setup.stream is None else self.strategy.epoch_rows
            total = self.strategy.sum(
                torch.stack([loss_sum.double(), loss_sum.new_tensor(seen, dtype=torch.float64)])
            )
            train_loss = (total[0] / total[1]).item()
        else:
            train_loss = (loss_sum / setup.rows).item()
        metrics: dict[str, float] = {"epoch": epoch, "train_loss": train_loss}
        metrics.update(self._validate(setup.x_val, setup.y_val, setup.val_loss_fn, setup.stream))
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        metrics = self.strategy.same_metrics(metrics)  # rank 0's, so the ranks never diverge
        if not math.isfinite(metrics["train_loss"]):
            raise DataError(
                f"The training loss became {metrics['train_loss']} at epoch {epoch}. Lower train.optimizer.lr, set train.grad_clip, or check the data for extreme values."
            )
        return metrics

    def _record_epoch(self, setup: _FitSetup, epoch: int, metrics: dict[str, float]) -> None:
        """Step the per-epoch schedule and log the epoch in the history and the tracker."""
        setup.schedule.step_epoch(metrics.get(setup.monitor))
        self.epoch = epoch
        self.history_.append(metrics)
        if self.tracker is not None:  # before the callbacks: a pruned epoch is recorded too
            self.tracker.log_metrics(metrics, step=epoch, epoch=epoch)

    def _checkpoint_due(self, epoch: int) -> bool:
        """Every ``checkpoint.every`` epochs, and after the last one (stopped early or not)."""
        every = self.config.checkpoint.every
        if not every:
            return False
        return epoch % every == 0 or self.should_stop or epoch == self.config.epochs

    def _save_checkpoint(
        self,
        path: Path | None,
        setup: _FitSetup,
        writer: CheckpointWriter,
        position: dict[str, Any] | None = None,
    ) -> None:
        if self.tracker is not None:
            self.tracker.flush()  # metrics on disk before the checkpoint that covers them
        state = self._state(setup.schedule, setup.generator, position)  # FSDP: every rank
        if path is not None and self.strategy.is_main:
            writer.save(path, state)

    def _stop_preempted(
        self,
        setup: _FitSetup,
        writer: CheckpointWriter,
        epoch: int,
        batches_done: int | None,
        loss_sum: torch.Tensor,
    ) -> NoReturn:
        """SIGTERM came: checkpoint where training is (``batches_done`` of ``epoch``, or its end
        when None), wait until it is on disk, raise Preempted."""
        where = (
            f"epoch {epoch}" if batches_done is None else f"batch {batches_done} of epoch {epoch}"
        )
        if self.checkpoint_path is None:
            raise Preempted(
                f"The run was preempted (SIGTERM) at {where}. No checkpoint is kept "
                "(train.checkpoint.every is 0): resuming trains it again from the start."
            )
        position = None
        if batches_done is not None:  # mid-epoch: what resuming needs to go on from this batch
            position = {
                "epoch": epoch,
                "batch": batches_done,
                "loss_sum": loss_sum,
                "shuffle": setup.epoch_shuffle,
                "grads": {
                    n: p.grad for n, p in self.model.named_parameters() if p.grad is not None
                },
            }
        self._save_checkpoint(self.checkpoint_path, setup, writer, position)
        writer.wait()
        raise Preempted(f"The run was preempted (SIGTERM) at {where}, with a checkpoint there.")

    def _end_distributed_epoch(
        self, setup: _FitSetup, writer: CheckpointWriter, epoch: int
    ) -> None:
        """A rank's epoch end: rank 0's stop decision (early stopping) holds for all; SIGTERM
        on any rank stops all after this epoch's checkpoint, the same on every rank (FSDP
        gathers its shards for it) and written by rank 0 alone."""
        strategy = self.strategy
        self.should_stop = strategy.agree(self.should_stop)
        preempted = strategy.any(stop_requested())
        if self._checkpoint_due(epoch) or preempted:
            self._save_checkpoint(self.checkpoint_path, setup, writer)
        if preempted:
            writer.wait()
            raise Preempted(
                f"The run was preempted (SIGTERM) after epoch {epoch}, with a checkpoint there."
            )

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
