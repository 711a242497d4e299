"""The training engine: the loop, callbacks, optimizers and schedules, checkpoints."""

from __future__ import annotations

from danlu.train._callbacks import Callback, EarlyStopping
from danlu.train._checkpoint import load_checkpoint, save_checkpoint
from danlu.train._loop import Trainer, class_weights, resolve_device, seed_everything
from danlu.train._optim import LRSchedule, build_optimizer

__all__ = [
    "Callback",
    "EarlyStopping",
    "LRSchedule",
    "Trainer",
    "build_optimizer",
    "class_weights",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
]
