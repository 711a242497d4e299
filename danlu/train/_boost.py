"""Training for models a library fits natively (``model: {type: gbdt}``), behind the
:class:`~danlu.train.Trainer`'s interface so the train stage, tuning and cross-validation use
it unchanged.

The library fits the trees on the prepared training rows (class weights become row weights),
early stopping on danlu's validation split. Each boosting round then counts as an epoch: the
round's validation loss (the task's own loss, as the neural loop reports it) and metrics are
computed from the fitted trees, logged on the run and fed to the callbacks (progress, a tuning
trial's pruner) — after the fit, since the library trains in one call, so a pruner cannot save
a trial's time: early stopping inside the trial does. The model keeps the trees up to its best
round (``train.early_stopping.monitor``, else the validation loss), and its torch form is
checked against the library's own predictions before anything uses it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from danlu.config import TrainConfig
from danlu.errors import DataError
from danlu.logging import get_logger
from danlu.train._callbacks import Callback
from danlu.train._loop import class_weights, seed_everything

if TYPE_CHECKING:
    from danlu.data import FeatureSchema, PreparedData
    from danlu.models._gbdt import NativeFit
    from danlu.models._trees import TreeEnsemble
    from danlu.store import Tracker
    from danlu.tasks import Task

__all__ = ["BoostingTrainer", "NATIVE_ATOL", "is_boosted"]

log = get_logger(__name__)

NATIVE_ATOL = 1e-4  # largest |torch − library| difference of the outputs allowed
_PARITY_ROWS = 512  # rows the torch form is checked on against the library
_TRAIN_LOSS_ROWS = 4096  # training rows the per-round training loss is computed on
_ROUND_CHUNK = 64  # boosting rounds whose leaves are looked up at once
_CALLBACK_POINTS = 100  # rounds at most that the callbacks see (evenly spaced, and the last)


def is_boosted(model: torch.nn.Module) -> bool:
    """True for a model fitted by a boosting library rather than by the torch loop."""
    return (
        getattr(model, "differentiable", True) is False and getattr(model, "spec", None) is not None
    )


class BoostingTrainer:
    """Fits a :class:`~danlu.models.TreeEnsemble` with its library; the Trainer's interface
    (``fit``, ``predict_outputs``, ``history_``, ``epoch``, ``best_epoch``, ``model``).

    Example:
        >>> # trainer = BoostingTrainer(recipe.train).fit(model, get_task("regression"), prepared)
        >>> # trainer.best_epoch, trainer.history_[-1]["val_r2"]
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        callbacks: Sequence[Callback] = (),
        tracker: Tracker | None = None,
        checkpoint_path: Any = None,  # accepted for the Trainer's signature; trees fit in one go
    ) -> None:
        self.config = config
        self.callbacks = list(callbacks)
        self.tracker = tracker
        self.should_stop = False
        self.num_batches = 0  # no batches: progress bars show rounds only
        self.history_: list[dict[str, float]] = []
        self.epoch = 0
        self.best_epoch = 0
        self.native: dict[str, Any] = {}  # library, rounds, trees, parity with the library
        self.model: torch.nn.Module
        self.task: Task
        self.schema: FeatureSchema

    def fit(
        self, model: torch.nn.Module, task: Task, data: PreparedData, *, resume: bool = False
    ) -> BoostingTrainer:
        """Fit the trees of ``model.spec`` on ``data``; returns ``self``. ``resume`` fits anew."""
        from danlu.models._gbdt import fit_gbdt
        from danlu.models._trees import TreeEnsemble

        assert isinstance(model, TreeEnsemble), "BoostingTrainer fits a TreeEnsemble"

        if data.stream is not None:
            raise DataError("Gradient-boosted trees are fitted on rows in memory, not streamed.")
        if len(data.x_train) == 0:
            raise DataError(
                "The training split is empty; lower data.split.test / data.split.val or add rows."
            )
        seed_everything(self.config.seed)
        self.task, self.schema = task, data.schema
        weights = self._class_weights(data)
        row_weight = None if weights is None else weights.numpy()[data.y_train].astype(np.float64)
        outputs = task.output_dim(data.schema)
        # progress bars start before the library fits (its rounds at most; early stopping ends
        # sooner, as it does for a network's epochs)
        self.config = self.config.model_copy(update={"epochs": model.spec.n_estimators})
        for cb in self.callbacks:
            cb.on_fit_start(self)  # type: ignore[arg-type]
        native = fit_gbdt(
            model.spec,
            data.x_train,
            data.y_train,
            row_weight,
            data.x_val,
            data.y_val,
            outputs=outputs,
            classes=task.target_kind == "classes",
            seed=self.config.seed,
        )
        full = model.set_trees(native.trees, bias=native.bias, strict=native.strict)
        self.history_ = self._history(full, native, data, weights)
        self.best_epoch = self._best_round(native.rounds)
        self.model = full.truncated(self.best_epoch * native.per_round)
        self.model.spec = model.spec
        if native.save is not None:  # the library's own model of the kept rounds (TreeSHAP)
            self.model.native_model = (model.spec.library, native.save(self.best_epoch))
        self.native = {
            "library": native.library,
            "rounds": native.rounds,
            "best_round": self.best_epoch,
            "trees": self.model.n_trees,
            "depth": self.model.depth,
            "parity": self._parity(native, data),
        }
        self._replay(native.rounds)
        if self.tracker is not None:
            self.tracker.flush()
        return self

    # -- fit's parts ---------------------------------------------------------------------------
    def _class_weights(self, data: PreparedData) -> torch.Tensor | None:
        if self.task.target_kind != "classes":
            return None
        return class_weights(
            self.config.class_weight or data.class_weight, data.y_train, data.schema
        )

    def _history(
        self,
        model: TreeEnsemble,
        native: NativeFit,
        data: PreparedData,
        weights: torch.Tensor | None,
    ) -> list[dict[str, float]]:
        """One row per boosting round: training loss, validation loss and metrics."""
        loss_fn = self.task.make_loss(weights)
        target = getattr(torch, self.task.target_dtype)
        rows = np.random.default_rng(self.config.seed).permutation(len(data.x_train))
        rows = np.sort(rows[:_TRAIN_LOSS_ROWS])
        splits = {"train": (data.x_train[rows], data.y_train[rows])}
        if len(data.x_val):
            splits["val"] = (data.x_val, data.y_val)
        running = {name: model.bias.expand(len(x), -1).clone() for name, (x, _) in splits.items()}
        targets = {name: torch.as_tensor(y).to(target) for name, (_, y) in splits.items()}
        out_of = model.tree_output.reshape(native.rounds, native.per_round, -1)  # (R, P, K)
        history: list[dict[str, float]] = []
        with torch.inference_mode():
            for first in range(0, native.rounds, _ROUND_CHUNK):  # bounded memory: a chunk at a time
                last = min(first + _ROUND_CHUNK, native.rounds)
                trees = slice(first * native.per_round, last * native.per_round)
                leaves = {  # (n, rounds in chunk, P)
                    name: model.leaves(torch.as_tensor(x), trees).reshape(len(x), last - first, -1)
                    for name, (x, _) in splits.items()
                }
                for r in range(first, last):
                    history.append(
                        self._round_row(r, splits, leaves, first, out_of, running, targets, loss_fn)
                    )
        return history

    def _round_row(
        self,
        r: int,
        splits: dict[str, Any],
        leaves: dict[str, torch.Tensor],
        first: int,
        out_of: torch.Tensor,
        running: dict[str, torch.Tensor],
        targets: dict[str, torch.Tensor],
        loss_fn: torch.nn.Module,
    ) -> dict[str, float]:
        """Round ``r``'s row: add its trees to the running outputs, then losses and metrics."""
        row: dict[str, float] = {"epoch": r + 1}
        for name in splits:
            running[name] += leaves[name][:, r - first] @ out_of[r]  # (n, P) @ (P, K)
            outputs = running[name].float()
            row[f"{name}_loss"] = float(loss_fn(outputs, targets[name]))
            if name == "val":
                quick = self.task.quick_metrics(outputs, targets[name], self.schema)
                row.update({f"val_{k}": v for k, v in quick.items()})
        if not math.isfinite(row["train_loss"]):
            raise DataError(f"The training loss became {row['train_loss']} at round {r + 1}.")
        return row

    def _best_round(self, rounds: int) -> int:
        """The round the model keeps: the best on the monitored validation metric."""
        stopping = self.config.early_stopping
        monitor = stopping.monitor if stopping else "val_loss"
        values = [row.get(monitor) for row in self.history_]
        if not values or any(v is None for v in values):
            return rounds  # no validation rows: every round
        mode = (
            self.task.monitor_mode(monitor)
            if not stopping or stopping.mode == "auto"
            else stopping.mode
        )
        scores = np.asarray(values, dtype=np.float64)
        return int(np.argmin(scores) if mode == "min" else np.argmax(scores)) + 1

    def _parity(self, native: NativeFit, data: PreparedData) -> dict[str, Any]:
        """The kept trees' torch outputs against the library's on real rows; raises if apart."""
        x = next((s for s in (data.x_val, data.x_test, data.x_train) if len(s)), data.x_train)
        x = np.ascontiguousarray(x[:_PARITY_ROWS], dtype=np.float32)
        with torch.inference_mode():
            got = self.model(torch.from_numpy(x)).double().numpy()
        want = native.native_outputs(x, self.best_epoch)
        scale = max(1.0, float(np.abs(want).max()) if want.size else 1.0)
        diff = float(np.abs(got - want).max()) if want.size else 0.0
        agree = (
            float(np.mean(got.argmax(axis=1) == want.argmax(axis=1))) if want.shape[1] > 1 else 1.0
        )
        parity = {"rows": len(x), "max_abs_diff": diff, "atol": NATIVE_ATOL * scale}
        if diff > NATIVE_ATOL * scale or agree < 1.0:
            raise DataError(
                f"The trees read out of {native.library} disagree with its own predictions "
                f"(max |difference| {diff:.3g} on {len(x)} rows, argmax agreement {agree:.3f}); "
                "the model was not kept. Please report this with the recipe."
            )
        return parity

    def _replay(self, rounds: int) -> None:
        """The rounds as epochs: tracker metrics for each, the callbacks' epoch hooks at evenly
        spaced rounds (and the last)."""
        step = max(1, math.ceil(rounds / _CALLBACK_POINTS))
        for row in self.history_:
            epoch = int(row["epoch"])
            self.epoch = epoch
            if self.tracker is not None:
                self.tracker.log_metrics(row, step=epoch, epoch=epoch)
            if epoch % step == 0 or epoch == rounds:
                for cb in self.callbacks:
                    cb.on_epoch_start(self, epoch)  # type: ignore[arg-type]
                    cb.on_epoch_end(self, epoch, row)  # type: ignore[arg-type]
        for cb in self.callbacks:
            cb.on_fit_end(self)  # type: ignore[arg-type]

    # -- after fit -----------------------------------------------------------------------------
    @torch.inference_mode()
    def predict_outputs(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Raw model outputs for ``x``, float32 on the CPU, in chunks."""
        x_t = torch.as_tensor(x)
        parts = [self.model(x_t[i : i + 8192]) for i in range(0, len(x_t), 8192)]
        return torch.cat(parts) if parts else torch.empty(0)
