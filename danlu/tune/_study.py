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
import copy
import json
import os
import socket
import uuid
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
    "BudgetGate",
    "RECIPE_ATTR",
    "RUN_ATTR",
    "budget_used",
    "gated",
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


def _machine() -> str:
    """This machine: its host name and hardware address (two machines may share a name)."""
    return f"{socket.gethostname()}-{uuid.getnode():012x}"


def worker_id() -> str:
    """``machine:pid`` of this process, recorded on each trial it runs."""
    return f"{_machine()}:{os.getpid()}"


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
    if host != _machine() or not pid.isdigit():
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
    ``interrupted``. Returns the numbers of the trials queued again. Call it holding the
    study's :class:`BudgetGate`, so that two workers do not queue the same trial twice.
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
        frozen = copy.deepcopy(storage.get_trial(trial._trial_id))  # the storage may cache it
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


class BudgetGate:
    """A lock across every worker of a study, held from "is any budget left?" until the new trial
    exists, so that workers finishing together do not start one trial too many (or run a grid
    point twice). A file lock beside the journal on SQLite; an advisory lock on PostgreSQL.
    """

    _PG_KEY = 0x64616E6C7547  # "danluG"

    def __init__(self, store: Store) -> None:
        from danlu.tune._storage import journal_path

        self.store = store
        journal = journal_path(store)  # type: ignore[arg-type]
        self._path = None if journal is None else journal.with_name(journal.name + ".ask-lock")
        self._handle: Any = None

    def acquire(self) -> None:
        if self._path is not None:
            import fcntl

            self._handle = open(self._path, "a+")  # noqa: SIM115 - held until release
            fcntl.flock(self._handle, fcntl.LOCK_EX)
        else:
            from sqlalchemy import text

            self._handle = self.store.engine.connect()  # type: ignore[attr-defined]
            self._handle.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self._PG_KEY})

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        if self._path is not None:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_UN)
        else:
            from sqlalchemy import text

            handle.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._PG_KEY})
        handle.close()


def gated(sampler: optuna.samplers.BaseSampler, gate: BudgetGate) -> optuna.samplers.BaseSampler:
    """``sampler``, releasing ``gate`` as soon as Optuna has created the trial it samples for."""
    import optuna

    class GatedSampler(optuna.samplers.BaseSampler):
        def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
            return sampler.infer_relative_search_space(study, trial)

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
            return sampler.sample_relative(study, trial, search_space)

        def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
            return sampler.sample_independent(study, trial, name, dist)

        def before_trial(self, study: Any, trial: Any) -> None:
            try:  # a grid sampler picks its point here: still under the lock
                sampler.before_trial(study, trial)
            finally:
                gate.release()  # the trial exists now: it counts toward the budget

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            sampler.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            sampler.reseed_rng()

    return GatedSampler()
