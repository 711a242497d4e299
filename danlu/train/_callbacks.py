"""Callbacks: a handful of hooks, state saved in the checkpoint.

Hooks (all optional): ``on_fit_start``, ``on_epoch_start``, ``on_batch_end``, ``on_epoch_end``,
``on_fit_end``. A callback that keeps state across epochs returns it from ``state_dict`` so a
resumed run continues exactly where the killed one stopped.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from danlu.logging import get_logger

if TYPE_CHECKING:
    from danlu.config import EarlyStoppingConfig
    from danlu.train._loop import Trainer

__all__ = ["Callback", "EarlyStopping", "Pruned"]

log = get_logger(__name__)


class Pruned(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a callback to stop training at once (a tuning trial its pruner gave up on).

    The run that was training is marked ``pruned``, not ``failed``; nothing after the loop (test
    metrics, saved weights) runs.
    """


class Callback:
    """Base class: override only the hooks you need."""

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...

    def on_batch_end(self, trainer: Trainer, batch: int, loss: torch.Tensor) -> None:
        """Called after every batch with the (detached) batch loss. Keep it cheap."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    With ``restore_best`` the model ends with the weights of its best epoch.
    """

    def __init__(self, config: EarlyStoppingConfig, mode: str) -> None:
        self.config = config
        self.mode = mode
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = 0
        self.wait = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def _improved(self, value: float) -> bool:
        delta = self.config.min_delta
        return value < self.best - delta if self.mode == "min" else value > self.best + delta

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        value = metrics.get(self.config.monitor)
        if value is None or not math.isfinite(value):
            return
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.config.restore_best:
                from danlu.models._base_weights import trained_state

                self.best_state = {  # a LoRA / frozen base is left out: it never changes
                    k: v.detach().clone() for k, v in trained_state(trainer.model).items()
                }
        else:
            self.wait += 1
            if self.wait >= self.config.patience:
                log.info(
                    "early stopping at epoch %d: %s has not improved for %d epochs (best %.4g at epoch %d)",
                    epoch,
                    self.config.monitor,
                    self.wait,
                    self.best,
                    self.best_epoch,
                )
                trainer.should_stop = True

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.config.restore_best and self.best_state is not None:
            from danlu.models._base_weights import with_frozen_base

            trainer.model.load_state_dict(with_frozen_base(trainer.model, self.best_state))

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
        self.best_state = state["best_state"]
