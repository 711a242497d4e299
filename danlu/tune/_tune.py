"""``danlu tune``: create or resume a study, run its workers, record and register the best.

Every trial, and the refit, is a prepare → train run of the stage runner
(:func:`danlu.train.run_training`); when the recipe has ``evaluate:``, the winner's run gets its
trust report from ``danlu run``'s evaluate stage (``report_winner``, which
:func:`danlu.pipeline.tune` passes: the pipeline sits above this layer); the winner is then
registered and exported to ONNX by :func:`danlu.export.register_model`, as ``danlu run``
registers its model, report included.

The study's run (stage ``tune``) is the parent of every trial's run. ``jobs`` worker processes
(spawned, so each has its own interpreter: training holds the GIL) share the study through the
danlu database; more workers on other machines may join with ``danlu tune --worker STUDY``.
Running the same recipe again resumes the study: finished trials are kept, lost ones re-run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from danlu.config import Recipe, load_recipe, raise_issues, recipe_to_dict, recipe_to_yaml
from danlu.errors import ConfigError, DanluError
from danlu.logging import get_logger
from danlu.store import flatten_params
from danlu.tune._report import study_summary
from danlu.tune._space import check_tune
from danlu.tune._study import (
    RECIPE_ATTR,
    RUN_ATTR,
    BudgetGate,
    quiet_optuna,
    reap_lost_trials,
    study_recipe,
)
from danlu.tune._worker import TrialCallback, work
from danlu.types import StrPath

if TYPE_CHECKING:
    import optuna

    from danlu.config import EvaluateConfig
    from danlu.store import ModelVersion, SqlStore, StoreTracker
    from danlu.train import Callback

    # the winner's run id -> its trust report (stored with the run), given the evaluate block
    ReportWinner = Callable[[SqlStore, str, EvaluateConfig], Any]

__all__ = ["TuneResult", "join_study", "tune"]

log = get_logger(__name__)

# keys a resumed study may change: its budget, and what happens to the winner
_RESUMABLE = ("tune.trials", "tune.timeout", "tune.refit", "register", "evaluate")


@dataclass
class TuneResult:
    """What :func:`tune` returns: the study, its best trial and what was registered."""

    study: str
    run_id: str
    metric: str
    direction: str
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    best_run_id: str | None
    counts: dict[str, int]
    epochs_spent: int
    summary: dict[str, Any] = field(default_factory=dict)
    refit_run_id: str | None = None
    registered: ModelVersion | None = None
    report: Any = None  # the winner's trust report (danlu.evaluate.Report), made this session
    report_run_id: str | None = None  # the run that holds it (the best trial's, or the refit's)


def _changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    a, b = flatten_params(old), flatten_params(new)
    return sorted(
        k
        for k in set(a) | set(b)
        if a.get(k) != b.get(k)
        and not any(k == r or k.startswith(f"{r}.") for r in _RESUMABLE)
        and k != "name"
    )


def _new_study_run(recipe: Recipe, name: str, store: SqlStore) -> str:
    """The study's run in the store (stage ``tune``), the parent of its trials' runs."""
    from danlu.store import git_state, host_name, package_versions

    assert recipe.tune is not None
    resolved = recipe_to_dict(recipe)
    commit, dirty = git_state()
    run = store.create_run(
        experiment=recipe.name,
        name=name,
        stage="tune",
        recipe=resolved,
        git_commit=commit,
        git_dirty=dirty,
        packages=package_versions(),
        host=host_name(),
        tags={
            "task": recipe.task,
            "model.type": recipe.model.type,
            "tune.study": name,
            "tune.sampler": recipe.tune.sampler.name,
            "tune.pruner": recipe.tune.pruner.name,
        },
    )
    store.log_params(run.id, flatten_params(resolved))
    store.log_artifact(run.id, "recipe.yaml", recipe_to_yaml(recipe).encode())
    return run.id


def _open_study(
    recipe: Recipe, name: str, store: SqlStore, storage: optuna.storages.BaseStorage
) -> tuple[optuna.Study, str, bool]:
    """Create the study and its run, or resume them. Returns (study, run id, resumed)."""
    import optuna

    from danlu.tasks import get_task

    assert recipe.tune is not None
    resolved = recipe_to_dict(recipe)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        study = None
    if study is not None and RUN_ATTR in study.user_attrs:
        changed = _changed(study_recipe(study), resolved)
        if changed:
            raise ConfigError(
                f"Study '{name}' was started with a different recipe (it differs at {', '.join(changed[:8])}). "
                f"Run it with the recipe it started with (only tune.trials, tune.timeout, tune.refit, evaluate and register may change), "
                f"or start a new study: --study NEW_NAME or tune.study in the recipe."
            )
        study.set_user_attr(RECIPE_ATTR, json.dumps(resolved))  # a new budget reaches every worker
        run_id = str(study.user_attrs[RUN_ATTR])
        store.set_status(run_id, "running")
        return study, run_id, True
    if study is None:
        direction = recipe.tune.direction
        if direction == "auto":
            mode = get_task(recipe.task).monitor_mode(recipe.tune.metric)
            direction = "maximize" if mode == "max" else "minimize"
        try:
            study = optuna.create_study(study_name=name, storage=storage, direction=direction)
        except optuna.exceptions.DuplicatedStudyError:  # another `danlu tune` created it first
            time.sleep(1.0)  # let it record its run
            return _open_study(recipe, name, store, storage)
    # a new study, or one whose creator stopped before recording its run: record it now
    study.set_user_attr(RECIPE_ATTR, json.dumps(resolved))
    run_id = _new_study_run(recipe, name, store)
    study.set_user_attr(RUN_ATTR, run_id)
    return study, run_id, False


def _threads_per_worker(jobs: int) -> int:
    env = os.environ.get("OMP_NUM_THREADS", "")
    total = int(env) * jobs if env.isdigit() and int(env) > 0 else (os.cpu_count() or 1)
    return max(1, total // jobs)


def _run_pool(
    name: str,
    store: SqlStore,
    study: optuna.Study,
    jobs: int,
    deadline: float | None,
    on_trial: TrialCallback | None,
) -> None:
    """Run ``jobs`` worker processes until each finds the budget spent; replace dead ones."""
    import logging
    import subprocess
    import sys

    from optuna.trial import TrialState

    threads = _threads_per_worker(jobs)
    level = logging.getLogger("danlu").getEffectiveLevel()
    env = {
        **os.environ,
        "DANLU_DB_URL": store.url,
        "DANLU_HOME": str(store.home),
        "OMP_NUM_THREADS": str(threads),
    }

    def start(index: int) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "danlu.tune", name, "--index", str(index)]
        command += ["--threads", str(threads), "--log-level", str(level)]
        if deadline is not None:
            command += ["--deadline", repr(deadline)]
        return subprocess.Popen(command, env=env)

    procs = {i: start(i) for i in range(jobs)}
    restarts, reported = (
        0,
        {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()},
    )
    try:
        while procs:
            time.sleep(0.5)
            for index, proc in list(procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                del procs[index]
                if code != 0:
                    with BudgetGate(store).held():
                        lost = reap_lost_trials(study, store)
                    log.warning(
                        "tuning worker %d stopped with exit code %s%s",
                        index,
                        code,
                        f"; trial {', '.join(map(str, lost))} queued again" if lost else "",
                    )
                    if restarts >= 2 * jobs:  # a worker that keeps dying is a bug, not bad luck
                        raise DanluError(
                            f"Tuning workers keep stopping (exit code {code}, {restarts} restarts); "
                            "their error is printed above. Run with --jobs 1 to see it in this process."
                        )
                    restarts += 1
                    procs[index] = start(index)
            if on_trial is not None:  # in the order they finished
                done = [
                    t
                    for t in study.get_trials(deepcopy=False)
                    if t.number not in reported
                    and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
                ]
                for trial in sorted(done, key=_finish_order):
                    reported.add(trial.number)
                    on_trial(study, trial)
    except BaseException:
        for proc in procs.values():  # Ctrl-C reaches the workers too; give them a moment
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait(timeout=5)
        raise


def _finish_order(trial: optuna.trial.FrozenTrial) -> tuple[float, int]:
    end = trial.datetime_complete
    return (end.timestamp() if end is not None else float("inf"), trial.number)


def _refit(
    recipe: Recipe,
    best: dict[str, Any],
    store: SqlStore,
    run_id: str,
    callbacks: Sequence[Callback],
) -> Any:
    """Retrain the best values on train + validation for as many epochs as the best trial used."""
    from danlu.train import run_training
    from danlu.tune._space import apply_params

    data = apply_params(recipe_to_dict(recipe), best["values"])
    data.pop("tune", None)
    data["data"]["split"]["val"] = 0.0
    data["train"]["epochs"] = int(
        best.get("best_epoch") or best.get("epochs") or recipe.train.epochs
    )
    data["train"]["early_stopping"] = None
    if data["model"].get("type") == "gbdt":  # its epochs are boosting rounds
        data["model"]["n_estimators"] = data["train"]["epochs"]
    if data["train"]["scheduler"]["name"] == "plateau":  # it watched the validation loss
        data["train"]["scheduler"]["name"] = "none"
    return run_training(
        data,
        store=store,
        stage="tune-refit",
        parent_id=run_id,
        tags={"tune.study": best.get("study", ""), "tune.trial": str(best["number"])},
        callbacks=callbacks,
        run_name=f"{best.get('study', recipe.name)}-refit",
    )


def _finish(
    recipe: Recipe,
    study: optuna.Study,
    store: SqlStore,
    tracker: StoreTracker,
    callbacks: Sequence[Callback],
    report_winner: ReportWinner | None,
) -> TuneResult:
    from danlu.export import register_model
    from danlu.tune._plots import study_plots

    summary = study_summary(study)
    counts = summary["counts"]
    best = summary["best"]
    run_id = tracker.run_id
    metrics = {
        "trials_complete": counts["complete"],
        "trials_pruned": counts["pruned"],
        "trials_failed": counts["failed"],
        "epochs_spent": summary["epochs_spent"],
    }
    if best is not None:
        metrics["best_value"] = best["value"]
        metrics.update({f"best_test_{k}": v for k, v in (best.get("test") or {}).items()})
    step = len(summary["history"])
    tracker.log_metrics(metrics, step=step)
    tracker.log_artifact("study.json", json.dumps(summary, indent=1, default=str))
    for file, data in study_plots(summary).items():
        tracker.log_artifact(file, data)
    tracker.flush()

    refit_id, registered, report, reported = None, None, None, None
    if best is not None:
        store.set_tags(run_id, {"best_trial": str(best["number"]), "best_run": str(best["run_id"])})
        source = str(best["run_id"])
        if recipe.tune is not None and recipe.tune.refit:
            refit = _refit(recipe, {**best, "study": study.study_name}, store, run_id, callbacks)
            refit_id = source = refit.run_id
        # a resumed study with the same winner (and no refit) reports and registers nothing new
        tags = store.get_run(run_id).tags
        winner = str(best["number"])
        if recipe.evaluate is not None and report_winner is None:
            log.warning(
                "the winner of study %s gets no trust report: danlu.pipeline.tune (danlu tune) "
                "makes it",
                study.study_name,
            )
        elif (
            recipe.evaluate is not None
            and report_winner is not None
            and (refit_id is not None or tags.get("reported") != winner)
        ):
            report = report_winner(store, source, recipe.evaluate)
            reported = source
            store.set_tags(run_id, {"reported": winner, "report_run": source})
        new_winner = refit_id is not None or tags.get("registered_trial") != winner
        if (
            recipe.register is not None
            and new_winner
            and not store.artifact_path(source, "model.safetensors").is_file()
        ):  # a worker on another machine trained it: its files are in that machine's home
            log.warning(
                "The best trial's run %s was trained by a worker whose artifact folder is not "
                "this one, so it is not registered here; register it where its files are: "
                "danlu models register %s %s",
                source,
                source,
                recipe.register.name,
            )
        elif recipe.register is not None and new_winner:
            registered = register_model(store, source, recipe.register.name, recipe.register.alias)
            store.set_tags(
                run_id,
                {"registered_trial": str(best["number"]), "registered": registered.ref},
            )
    else:
        log.warning("study %s has no complete trial yet; nothing to register", study.study_name)
    return TuneResult(
        study=study.study_name,
        run_id=run_id,
        metric=str(summary["metric"]),
        direction=summary["direction"],
        best_value=best["value"] if best else None,
        best_params=best["values"] if best else {},
        best_trial=best["number"] if best else None,
        best_run_id=best["run_id"] if best else None,
        counts=counts,
        epochs_spent=summary["epochs_spent"],
        summary=summary,
        refit_run_id=refit_id,
        registered=registered,
        report=report,
        report_run_id=reported,
    )


def tune(
    recipe: StrPath | Mapping[str, Any] | Recipe,
    *,
    overrides: Iterable[str] = (),
    jobs: int = 1,
    study: str | None = None,
    home: StrPath | None = None,
    store: SqlStore | None = None,
    callbacks: Sequence[Callback] = (),
    on_trial: TrialCallback | None = None,
    report_winner: ReportWinner | None = None,
) -> TuneResult:
    """Search the recipe's ``tune:`` space with Optuna; record every trial; register the best.

    Args:
        jobs: worker processes on this machine (1 runs the trials in this process).
        study: the study's name (default ``tune.study`` or the recipe's name); an existing
            study of that name is resumed.
        callbacks: extra engine callbacks for each trial run in this process (jobs=1).
        on_trial: called with the study and every trial as it finishes.
        report_winner: makes the winner's trust report when the recipe has ``evaluate:``
            (called with the store, the winner's run id and the evaluate block, before
            registering); :func:`danlu.pipeline.tune` passes ``danlu run``'s evaluate stage.

    Example:
        >>> from danlu.tune import tune
        >>> result = tune("examples/digits_tune.yaml", overrides=["tune.trials=2"])  # doctest: +SKIP
        >>> result.best_params  # doctest: +SKIP
    """
    from danlu.store import SqlStore
    from danlu.train import check_device, check_recipe
    from danlu.tune._storage import close_storage, open_storage

    if jobs < 1:
        raise ConfigError(
            f"--jobs must be at least 1; got {jobs}. Use 1 to run trials in this process, or up to "
            f"the number of CPU cores ({os.cpu_count()}) for parallel workers."
        )
    recipe = load_recipe(recipe, overrides)
    raise_issues(check_tune(recipe), recipe._source)
    check_recipe(recipe)
    check_device(recipe)  # before any trial: each would fail on its own
    metrics = recipe.train.metrics
    if jobs > 1 and metrics is not None and metrics.port is not None:
        raise ConfigError(
            f"train.metrics.port {metrics.port} with --jobs {jobs}: each worker process trains "
            "its own trials and only one can listen on that port. Use train.metrics.push (a "
            "Pushgateway, grouped by run), or --jobs 1, or drop train.metrics.port."
        )
    assert recipe.tune is not None
    name = study or recipe.tune.study or recipe.name
    own_store = store is None
    store = store or SqlStore(home=home)
    try:
        with quiet_optuna():
            storage = open_storage(store)
            try:
                return _tune_study(
                    recipe, name, store, storage, jobs, callbacks, on_trial, report_winner
                )
            finally:
                close_storage(storage)
    finally:
        if own_store:
            store.close()


def _tune_study(
    recipe: Recipe,
    name: str,
    store: SqlStore,
    storage: optuna.storages.BaseStorage,
    jobs: int,
    callbacks: Sequence[Callback],
    on_trial: TrialCallback | None,
    report_winner: ReportWinner | None,
) -> TuneResult:
    from danlu.store import StoreTracker

    assert recipe.tune is not None
    optuna_study, run_id, resumed = _open_study(recipe, name, store, storage)
    tracker = StoreTracker(store, run_id)
    deadline = time.time() + recipe.tune.timeout if recipe.tune.timeout else None
    if resumed:
        log.info("resuming study %s (run %s)", name, run_id)
    try:
        with BudgetGate(store).held():
            reap_lost_trials(optuna_study, store)
        if jobs == 1:
            work(name, store, deadline=deadline, callbacks=callbacks, on_trial=on_trial)
        else:
            _run_pool(name, store, optuna_study, jobs, deadline, on_trial)
        result = _finish(recipe, optuna_study, store, tracker, callbacks, report_winner)
    except KeyboardInterrupt:
        tracker.set_status("interrupted", error="interrupted by the user")
        raise
    except BaseException as exc:
        tracker.set_status("failed", error=str(exc) or type(exc).__name__)
        raise
    tracker.set_status("finished")
    return result


def join_study(name: str, *, home: StrPath | None = None, store: SqlStore | None = None) -> int:
    """Join study ``name`` as one more worker (``danlu tune --worker STUDY``, on any machine
    that reaches the same database); returns the number of trials this worker ran."""
    from danlu.store import SqlStore
    from danlu.tune._report import load_study
    from danlu.tune._storage import close_storage

    own_store = store is None
    store = store or SqlStore(home=home)
    try:
        study = load_study(name, store)  # a clear error when the study does not exist
        recipe = study_recipe(study)
        close_storage(study._storage)
        if not recipe.get("tune"):
            raise DanluError(f"Study '{name}' was not created by danlu tune.")
        from danlu.models import check_stored_recipe

        check_stored_recipe(recipe, f"Study '{name}'")  # read from the database, not a file
        return work(name, store, worker=os.getpid() % 9973)
    finally:
        if own_store:
            store.close()
