"""Optuna's samplers and pruners by name, and the bookkeeping every worker shares.

A study carries what a worker on another machine needs to join it (the resolved recipe and the
id of the study's run in the danlu store) as study attributes. Trial budget and retries:

- a trial counts toward ``tune.trials`` once it is running, queued, complete, pruned or failed;
- a trial whose worker died (heartbeat on PostgreSQL, process id on this machine) or that was
  interrupted is failed and queued again with the same parameters (up to ``MAX_RETRY`` times);
  the failed copy then no longer counts, so a killed study repeats no finished trial.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from danlu.logging import get_logger
from danlu.tune._storage import MAX_RETRY

if TYPE_CHECKING:
    import optuna

    from danlu.config import TuneConfig
    from danlu.store import Store

__all__ = [
    "RECIPE_ATTR",
    "RUN_ATTR",
    "budget_used",
    "make_pruner",
    "make_sampler",
    "quiet_optuna",
    "reap_lost_trials",
    "worker_id",
]

log = get_logger(__name__)

RUN_ATTR = "danlu.run_id"
RECIPE_ATTR = "danlu.recipe"
WORKER_ATTR = "worker"
INTERRUPTED_ATTR = "interrupted"


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna logs every trial at INFO and warns about experimental features; danlu reports
    trials itself, and its tests treat warnings as errors."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        yield


def worker_id() -> str:
    """``host:pid`` of this process, recorded on each trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def make_sampler(
    tune: TuneConfig, worker: int = 0, grid: dict[str, list[Any]] | None = None
) -> optuna.samplers.BaseSampler:
    """Optuna's sampler named in the recipe. Parallel workers get seeds ``seed + worker`` so
    they do not all draw the same random start-up trials."""
    import optuna

    cfg = tune.sampler
    seed = None if cfg.seed is None else cfg.seed + worker
    startup: dict[str, Any] = (
        {} if cfg.startup_trials is None else {"n_startup_trials": cfg.startup_trials}
    )
    if cfg.name == "grid":
        return optuna.samplers.GridSampler(grid or {}, seed=seed)
    if cfg.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.name == "tpe":
        # multivariate + group model the parameters jointly and handle conditional sub-spaces
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True, **startup
        )
    if cfg.name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, **startup, warn_independent_sampling=False)
    return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)


def make_pruner(tune: TuneConfig, epochs: int) -> optuna.pruners.BasePruner:
    """Optuna's pruner named in the recipe; one epoch is one unit of resource."""
    import optuna

    cfg = tune.pruner
    if cfg.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=cfg.startup_trials, n_warmup_steps=cfg.warmup_epochs
        )
    if cfg.name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=cfg.min_resource, reduction_factor=cfg.reduction_factor
        )
    if cfg.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=cfg.min_resource,
            max_resource=max(epochs, cfg.min_resource),
            reduction_factor=cfg.reduction_factor,
        )
    return optuna.pruners.NopPruner()


def _retried(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """Numbers of failed trials that were queued again."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def budget_used(study: optuna.Study) -> int:
    """Trials that count toward ``tune.trials``: running, queued or finished, minus retried ones."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    return sum(
        1
        for t in trials
        if not (
            t.state == TrialState.FAIL
            and (t.number in retried or t.user_attrs.get(INTERRUPTED_ATTR))
        )
    )


def _alive(worker: str) -> bool:
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's worker: its heartbeat (PostgreSQL) decides
    if int(pid) == os.getpid():
        return False  # between trials, this process runs none: a RUNNING one of ours is stale
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_lost_trials(study: optuna.Study, store: Store | None = None) -> list[int]:
    """Fail the trials whose worker process on this machine is gone, and queue them again.

    Interrupted trials (Ctrl-C) are queued again too. Their runs in the store are marked
    ``interrupted``. Returns the numbers of the trials queued again.
    """
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
    from optuna.trial import TrialState

    fail_stale_trials(study)  # PostgreSQL: trials whose heartbeat stopped, on any machine
    retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
    storage = study._storage
    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    requeued = []
    for trial in trials:
        lost = trial.state == TrialState.RUNNING and not _alive(
            str(trial.user_attrs.get(WORKER_ATTR, ""))
        )
        interrupted = (
            trial.state == TrialState.FAIL
            and trial.user_attrs.get(INTERRUPTED_ATTR)
            and trial.number not in retried
        )
        if not (lost or interrupted):
            continue
        if lost:
            try:
                storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker got there first
            run_id = trial.user_attrs.get("run_id")
            if store is not None and run_id:
                with contextlib.suppress(Exception):
                    if store.get_run(str(run_id)).status == "running":
                        store.set_status(str(run_id), "interrupted", error="its tuning worker died")
        frozen = storage.get_trial(trial._trial_id)
        # the queued copy must not inherit the "interrupted" mark (it would not count)
        frozen.user_attrs.pop(INTERRUPTED_ATTR, None)
        retry(study, frozen)
        requeued.append(trial.number)
        log.warning(
            "trial %d %s; queued again with the same parameters",
            trial.number,
            "was interrupted" if interrupted else "lost its worker",
        )
    return requeued


def study_recipe(study: optuna.Study) -> dict[str, Any]:
    """The resolved recipe a study was started with."""
    raw = study.user_attrs.get(RECIPE_ATTR)
    return json.loads(raw) if isinstance(raw, str) else dict(raw or {})
