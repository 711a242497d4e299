"""What a study found, as plain data: best trial, trials table, counts, importance, history.

``study_summary`` is what ``danlu studies show`` renders, what the study's run saves as
``study.json``, and what the plots are drawn from.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from danlu.errors import NotFoundError
from danlu.logging import get_logger
from danlu.tune._study import RUN_ATTR, quiet_optuna, study_recipe

if TYPE_CHECKING:
    import optuna

    from danlu.store import SqlStore

__all__ = ["list_studies", "load_study", "param_importance", "study_summary"]

log = get_logger(__name__)


def load_study(name: str, store: SqlStore) -> optuna.Study:
    """The danlu study ``name`` in ``store``'s database. Raises NotFoundError with the names."""
    import optuna

    from danlu.registry import did_you_mean
    from danlu.tune._storage import close_storage, open_storage

    with quiet_optuna():
        storage = open_storage(store)
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, False)]
        if name not in names:
            close_storage(storage)
            hint = did_you_mean(name, names)
            known = (
                f" Studies: {', '.join(sorted(names))}." if names else " There are no studies yet."
            )
            raise NotFoundError(f"There is no study '{name}'.{hint}{known}")
        return optuna.load_study(study_name=name, storage=storage)


def list_studies(store: SqlStore) -> list[dict[str, Any]]:
    """One row per study: name, direction, trial counts, best value, its run and that run's status."""
    from danlu.tune._storage import close_storage, open_storage

    rows = []
    with quiet_optuna():
        storage = open_storage(store)
        try:
            rows = _study_rows(store, storage)
        finally:
            close_storage(storage)
    return rows


def _study_rows(store: SqlStore, storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    import optuna
    from optuna.trial import TrialState

    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        states = [t.state for t in trials]
        run_id = study.user_attrs.get(RUN_ATTR)
        status = None
        if run_id:
            try:
                status = store.get_run(str(run_id)).status
            except NotFoundError:
                status = "deleted"
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        best = _best(study, complete)
        recipe = study_recipe(study)
        rows.append(
            {
                "study": summary.study_name,
                "metric": (recipe.get("tune") or {}).get("metric"),
                "direction": study.direction.name.lower(),
                "trials": len(trials),
                "complete": states.count(TrialState.COMPLETE),
                "pruned": states.count(TrialState.PRUNED),
                "failed": states.count(TrialState.FAIL),
                "running": states.count(TrialState.RUNNING),
                "best_value": best.value if best is not None else None,
                "started": summary.datetime_start.timestamp() if summary.datetime_start else None,
                "run_id": run_id,
                "status": status,
            }
        )
    return rows


def _best(
    study: optuna.Study, complete: list[optuna.trial.FrozenTrial]
) -> optuna.trial.FrozenTrial | None:
    if not complete:
        return None
    maximize = study.direction.name == "MAXIMIZE"
    return (max if maximize else min)(complete, key=lambda t: float(t.value or 0.0))


def param_importance(study: optuna.Study, seed: int = 0) -> dict[str, float]:
    """fANOVA importance of each parameter over the complete trials (empty when it cannot be
    computed: fewer than two complete trials, or no parameter varies)."""
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}
    try:
        with quiet_optuna():
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
            scores = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. a single distinct value
        log.info("parameter importance not computed: %s", exc)
        return {}
    return {k: float(v) for k, v in scores.items() if math.isfinite(v)}


def epochs_of(trial: optuna.trial.FrozenTrial) -> int:
    """Epochs a trial trained: recorded when it completes, else its last reported epoch."""
    recorded = trial.user_attrs.get("epochs")
    return int(recorded) if recorded else max(trial.intermediate_values, default=0)


def _last_reported(trial: optuna.trial.FrozenTrial) -> float | None:
    steps = trial.intermediate_values
    return float(steps[max(steps)]) if steps else None


def _trial_row(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    start, end = trial.datetime_start, trial.datetime_complete
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "value": trial.value,
        "params": dict(trial.params),
        "values": json.loads(trial.user_attrs.get("values", "{}")),  # key path -> value, decoded
        "epochs": epochs_of(trial),
        "best_epoch": trial.user_attrs.get("best_epoch"),
        "duration_s": (end - start).total_seconds() if start and end else None,
        "run_id": trial.user_attrs.get("run_id"),
        "worker": trial.user_attrs.get("worker"),
        "test": trial.user_attrs.get("test", {}),
        "error": trial.user_attrs.get("error"),
        "retry_of": trial.system_attrs.get("failed_trial"),
    }


def study_summary(study: optuna.Study, *, importance: bool = True) -> dict[str, Any]:
    """Everything ``danlu studies show`` prints, as JSON-ready data.

    Example:
        >>> # study_summary(load_study("digits-tune", SqlStore()))["best"]["params"]
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = _best(study, complete)
    recipe = study_recipe(study)
    tune = recipe.get("tune") or {}
    counts = {
        state: sum(1 for t in trials if t.state.name.lower() == state)
        for state in ("complete", "pruned", "fail", "running", "waiting")
    }
    counts["failed"] = counts.pop("fail")
    # optimisation history: finished trials in the order they finished, epochs spent so far
    finished = sorted(
        (t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)),
        key=lambda t: (t.datetime_complete is None, t.datetime_complete, t.number),
    )
    maximize = study.direction.name == "MAXIMIZE"
    history, best_so_far, spent = [], None, 0
    for t in finished:
        spent += epochs_of(t)
        if t.state == TrialState.COMPLETE and t.value is not None:
            if best_so_far is None or (
                t.value > best_so_far if maximize else t.value < best_so_far
            ):
                best_so_far = t.value
        history.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                "last": t.value if t.value is not None else _last_reported(t),
                "best": best_so_far,
                "epochs_spent": spent,
            }
        )
    best_row = _trial_row(best) if best is not None else None
    return {
        "study": study.study_name,
        "run_id": study.user_attrs.get(RUN_ATTR),
        "metric": tune.get("metric"),
        "direction": study.direction.name.lower(),
        "sampler": (tune.get("sampler") or {}).get("name"),
        "pruner": (tune.get("pruner") or {}).get("name"),
        "budget": tune.get("trials"),
        "counts": counts,
        "epochs_spent": spent,
        "best": best_row,
        "trials": [_trial_row(t) for t in trials],
        "importance": param_importance(study) if importance else {},
        "history": history,
    }
