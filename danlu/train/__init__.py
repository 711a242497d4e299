"""The training engine: the loop, callbacks, optimizers and schedules, checkpoints, and the stage
runner every run goes through (``danlu.train.Runner``; the full plan is ``danlu.pipeline``)."""

from __future__ import annotations

from danlu.train._callbacks import Callback, EarlyStopping, Pruned
from danlu.train._checkpoint import load_checkpoint, save_checkpoint
from danlu.train._distributed import RankFailed
from danlu.train._energy import EnergyMeter, EnergyReading, watts_per_core
from danlu.train._estimate import MemoryEstimate, estimate_memory
from danlu.train._lm_base import load_base_model  # registers model.base's loader (LMs)
from danlu.train._loop import Trainer, class_weights, resolve_device, seed_everything
from danlu.train._optim import LRSchedule, build_optimizer
from danlu.train._preempt import preemptible
from danlu.train._run import (
    PREPARE,
    TRAIN,
    TRAINING_PLAN,
    Result,
    check_recipe,
    make_context,
    run_training,
)
from danlu.train._runner import Context, Runner, Stage, StageRecord, check_device, run_of

__all__ = [
    "PREPARE",
    "TRAIN",
    "TRAINING_PLAN",
    "Callback",
    "Context",
    "EarlyStopping",
    "EnergyMeter",
    "EnergyReading",
    "LRSchedule",
    "MemoryEstimate",
    "Pruned",
    "RankFailed",
    "Result",
    "Runner",
    "Stage",
    "StageRecord",
    "Trainer",
    "build_optimizer",
    "check_device",
    "check_recipe",
    "class_weights",
    "estimate_memory",
    "load_base_model",
    "load_checkpoint",
    "make_context",
    "preemptible",
    "resolve_device",
    "run_of",
    "run_training",
    "save_checkpoint",
    "seed_everything",
    "watts_per_core",
]
