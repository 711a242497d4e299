"""The training engine: the loop, callbacks, optimizers and schedules, checkpoints."""

from __future__ import annotations

from danlu.train._callbacks import Callback, EarlyStopping, Pruned
from danlu.train._checkpoint import load_checkpoint, save_checkpoint
from danlu.train._energy import EnergyMeter, EnergyReading, watts_per_core
from danlu.train._loop import Trainer, class_weights, resolve_device, seed_everything
from danlu.train._optim import LRSchedule, build_optimizer
from danlu.train._run import Result, check_recipe, register_run, run_training

__all__ = [
    "Callback",
    "EarlyStopping",
    "EnergyMeter",
    "EnergyReading",
    "LRSchedule",
    "Result",
    "Pruned",
    "Trainer",
    "build_optimizer",
    "check_recipe",
    "class_weights",
    "load_checkpoint",
    "register_run",
    "resolve_device",
    "run_training",
    "save_checkpoint",
    "seed_everything",
    "watts_per_core",
]
