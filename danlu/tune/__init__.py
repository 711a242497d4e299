"""Hyperparameter tuning on Optuna: the recipe's ``tune:`` block, parallel and multi-machine
workers sharing one study in the danlu database, pruning wired to the engine, resumable studies.

Example:
    >>> from danlu.tune import tune
    >>> result = tune("examples/digits_tune.yaml", jobs=2)  # doctest: +SKIP
"""

from __future__ import annotations

from danlu.tune._report import list_studies, load_study, param_importance, study_summary
from danlu.tune._space import Param, apply_params, check_tune, iter_params, sample
from danlu.tune._tune import TuneResult, join_study, tune
from danlu.tune._worker import PruningCallback, work

__all__ = [
    "Param",
    "PruningCallback",
    "TuneResult",
    "apply_params",
    "check_tune",
    "iter_params",
    "join_study",
    "list_studies",
    "load_study",
    "param_importance",
    "sample",
    "study_summary",
    "tune",
    "work",
]
