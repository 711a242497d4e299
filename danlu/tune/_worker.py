"""A tuning worker: takes trials from a shared study until its budget is spent.

Each trial is a normal training run in the store (stage ``tune-trial``, parent = the study's run)
with the sampled values applied to the recipe: the prepare → train plan of the stage runner
(:func:`danlu.train.run_training`), so it is recorded like any run (``stages.json`` included). The engine reports the tuned metric to the trial
after every epoch; when the pruner says so, training stops at once and the run is ``pruned``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from danlu.errors import DanluError
from danlu.logging import get_logger
from danlu.train import Callback, Pruned
from danlu.tune._space import apply_params, grid_space, sample, uses_data
from danlu.tune._storage import close_storage, open_storage
from danlu.tune._study import (
    INTERRUPTED_ATTR,
    RUN_ATTR,
    WORKER_ATTR,
    BudgetGate,
    budget_used,
    gated,
    make_pruner,
    make_sampler,
    quiet_optuna,
    reap_lost_trials,
    study_recipe,
    worker_id,
)

if TYPE_CHECKING:
    import optuna

    from danlu.config import Recipe
    from danlu.data import PreparedData
    from danlu.store import SqlStore
    from danlu.train import Trainer

__all__ = ["PruningCallback", "TrialCallback", "work"]

log = get_logger(__name__)

TrialCallback = Callable[["optuna.Study", "optuna.trial.FrozenTrial"], None]


class PruningCallback(Callback):
    """Reports ``metric`` to the Optuna trial after every epoch; stops training when pruned.

    Example:
        >>> # Trainer(cfg, callbacks=[PruningCallback(trial, "val_loss")]).fit(model, task, data)
    """

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.tracker is not None:
            self.trial.set_user_attr("run_id", trainer.tracker.run_id)

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(value, epoch)  # a pruned trial's epochs are its last reported step
        # never after the last epoch: a fully trained trial is complete, whatever the rung says
        if epoch < trainer.config.epochs and self.trial.should_prune():
            raise Pruned(f"pruned at epoch {epoch} ({self.metric} = {value:.4g})")


def work(
    study_name: str,
    store: SqlStore,
    *,
    worker: int = 0,
    deadline: float | None = None,
    callbacks: Sequence[Callback] = (),
    on_trial: TrialCallback | None = None,
) -> int:
    """Run trials of ``study_name`` until the study's trial budget is used (or ``deadline``).

    Args:
        worker: this worker's index (its sampler's seed is ``tune.sampler.seed + worker``).
        deadline: a ``time.time()`` after which no new trial starts.
        callbacks: extra engine callbacks for every trial (progress bars).
        on_trial: called with the study and each trial this worker finishes.

    Returns the number of trials this worker ran.
    """
    import optuna

    from danlu.config import load_recipe
    from danlu.models import prepare_recipe_data
    from danlu.train import run_training

    with quiet_optuna():
        storage = open_storage(store)
        study = optuna.load_study(study_name=study_name, storage=storage)
        data = study_recipe(study)
        if not data.get("tune") or RUN_ATTR not in study.user_attrs:  # only danlu's studies
            close_storage(storage)
            raise DanluError(
                f"Study '{study_name}' was not created by danlu tune (or its creator stopped "
                "before recording it). Start it with `danlu tune RECIPE`."
            )
        recipe: Recipe = load_recipe(data)
        tune = recipe.tune
        assert tune is not None
        grid = grid_space(tune.space) if tune.sampler.name == "grid" else None
        # a resumed study must not replay the draws of the session before it: the seed moves on
        # with the trials already there (a fresh study with one worker keeps the recipe's seed)
        sampler = make_sampler(tune, worker + 1009 * len(study.get_trials(deepcopy=False)), grid)
        study = optuna.load_study(
            study_name=study_name,
            storage=storage,
            sampler=sampler,
            pruner=make_pruner(tune, recipe.train.epochs),
        )
        parent = str(study.user_attrs[RUN_ATTR])
        base = {k: v for k, v in data.items() if k not in ("tune", "register")}  # a trial's recipe
        cached: list[PreparedData] = []

        def objective(trial: optuna.Trial) -> float:
            trial.set_user_attr(WORKER_ATTR, worker_id())
            values = sample(trial, tune.space)
            trial.set_user_attr("values", json.dumps(values))
            try:  # a combination of values the recipe refuses fails this trial, not the study
                trial_recipe = load_recipe(apply_params(base, values))
                if not cached and not uses_data(tune.space):
                    cached.append(prepare_recipe_data(trial_recipe))
                result = run_training(
                    trial_recipe,
                    store=store,
                    stage="tune-trial",
                    parent_id=parent,
                    tags={"tune.study": study_name, "tune.trial": str(trial.number)},
                    callbacks=[PruningCallback(trial, tune.metric), *callbacks],
                    prepared=cached[0] if cached else None,
                    run_name=f"{study_name}-trial-{trial.number}",
                )
            except Pruned as exc:
                raise optuna.TrialPruned(str(exc)) from None
            except KeyboardInterrupt:
                trial.set_user_attr(INTERRUPTED_ATTR, True)
                raise
            except DanluError as exc:
                log.warning("trial %d failed: %s", trial.number, exc)
                trial.set_user_attr("error", str(exc)[:2000])
                raise
            trial.set_user_attr("run_id", result.run_id)
            trial.set_user_attr("epochs", len(result.history))
            trial.set_user_attr("best_epoch", result.best_epoch)
            trial.set_user_attr("test", result.metrics)
            value = (
                result.history[result.best_epoch - 1].get(tune.metric) if result.history else None
            )
            if value is None or not math.isfinite(value):
                raise DanluError(
                    f"trial {trial.number} recorded no finite {tune.metric} (got {value})"
                )
            return float(value)

        try:
            budget = tune.trials
            if budget is None and grid is not None:  # every point once
                budget = math.prod(len(values) for values in grid.values())
            return _loop(study, sampler, budget, deadline, objective, store, on_trial)
        finally:
            close_storage(storage)


def _loop(
    study: optuna.Study,
    sampler: optuna.samplers.BaseSampler,
    trials: int | None,
    deadline: float | None,
    objective: Callable[[optuna.Trial], float],
    store: SqlStore,
    on_trial: TrialCallback | None,
) -> int:
    """Take trials one at a time until the budget, the deadline or the grid runs out."""
    import optuna

    grid = sampler if isinstance(sampler, optuna.samplers.GridSampler) else None
    gate = BudgetGate(store)
    study.sampler = gated(sampler, gate)
    done = 0
    while True:
        if deadline is not None and time.time() >= deadline:
            break
        gate.acquire()  # released by the sampler once the trial exists, or below
        try:
            reap_lost_trials(study, store)
            if trials is not None and budget_used(study) >= trials:
                break
            if grid is not None and grid.is_exhausted(study):
                break
            study.optimize(
                objective,
                n_trials=1,
                catch=(DanluError,),
                callbacks=[on_trial] if on_trial is not None else None,
            )
        finally:
            gate.release()
        done += 1
    return done


def worker_main(argv: Sequence[str] | None = None) -> int:
    """A worker process of ``danlu tune --jobs N``: ``python -m danlu.tune STUDY ...``.

    A fresh interpreter, not a fork (torch's thread pools do not survive one) nor
    ``multiprocessing`` spawn (that re-imports the caller's main script, which breaks scripts
    without an ``if __name__ == "__main__"`` guard). The database comes from ``DANLU_DB_URL``
    and ``DANLU_HOME``, as for any danlu command.
    """
    import argparse

    import torch

    from danlu.store import SqlStore

    parser = argparse.ArgumentParser(prog="python -m danlu.tune")
    parser.add_argument("study")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--deadline", type=float, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-level", type=int, default=logging.WARNING)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"%(levelname)s danlu worker {args.index}: %(message)s"))
    root = logging.getLogger("danlu")
    root.addHandler(handler)
    root.setLevel(args.log_level)
    store = SqlStore()
    try:
        work(args.study, store, worker=args.index, deadline=args.deadline)
    except KeyboardInterrupt:
        return 130
    finally:
        store.close()
    return 0
