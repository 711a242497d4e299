"""Tuning end to end: trials as runs, pruning, resume, killed workers, parallel workers."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from danlu.errors import ConfigError, DanluError
from danlu.store import SqlStore
from danlu.tune import list_studies, load_study, study_summary, tune
from danlu.tune._study import quiet_optuna

ROOT = Path(__file__).resolve().parents[2]


def iris_recipe(**tune):
    return {
        "name": "iris-tune",
        "data": {"source": "builtin:iris", "split": {"test": 0.2, "val": 0.2, "seed": 0}},
        "task": "classification",
        "model": {"type": "mlp", "hidden": [16]},
        "train": {"epochs": 3, "batch_size": 16, "seed": 0},
        "tune": {
            "metric": "val_loss",
            "trials": 3,
            "sampler": {"name": "random", "seed": 0},
            "space": {
                "train.optimizer.lr": {"loguniform": [1.0e-3, 3.0e-2]},
                "model.hidden": {"choice": [[8], [16, 8]]},
            },
            **tune,
        },
        "register": {"name": "iris", "alias": "tuned"},
    }


def test_every_trial_is_a_run_under_the_study_run(tmp_path):
    store = SqlStore(home=tmp_path / "home")
    result = tune(iris_recipe(), store=store)
    study_run = store.get_run(result.run_id)
    assert study_run.stage == "tune" and study_run.status == "finished"
    trials = store.search_runs("stage = 'tune-trial'")
    assert len(trials) == 3
    assert {t.parent_id for t in trials} == {result.run_id}
    assert {t.experiment for t in trials} == {"iris-tune"}  # one experiment, not one per trial
    assert sorted(t.name for t in trials) == [f"iris-tune-trial-{n}" for n in range(3)]
    assert all(t.status == "finished" for t in trials)
    # each trial trained the values its Optuna trial sampled
    for row in result.summary["trials"]:
        run = store.get_run(row["run_id"])
        assert run.recipe["train"]["optimizer"]["lr"] == pytest.approx(
            row["params"]["train.optimizer.lr"]
        )
        assert json.dumps(run.recipe["model"]["hidden"]) == row["params"]["model.hidden"]
        assert run.tags["tune.trial"] == str(row["number"])
        assert len(store.metric_history(run.id, "val_loss")) == 3  # curves per epoch
    # the best trial is the one with the lowest val_loss, and it was registered
    values = {row["number"]: row["value"] for row in result.summary["trials"]}
    assert result.best_trial == min(values, key=lambda n: values[n])
    assert result.best_value == pytest.approx(min(values.values()))
    assert result.registered is not None and result.registered.run_id == result.best_run_id
    assert store.get_model_version("iris", alias="tuned").version == result.registered.version
    # tune() from Python exports the winner to ONNX, as `danlu run` and the CLI do
    assert {"export.json", "model.onnx"} <= set(result.registered.files)
    export = json.loads(store.model_version_path("iris", 1, "export.json").read_text())
    assert export["status"] == "ok" and export["parity"]["passed"]
    assert study_run.metrics["best_value"] == pytest.approx(result.best_value)
    assert study_run.metrics["trials_complete"] == 3
    names = {a.name for a in store.list_artifacts(result.run_id)}
    assert {"study.json", "history.svg", "history.png", "recipe.yaml"} <= names
    assert store.artifact_path(result.run_id, "history.svg").read_bytes().startswith(b"<?xml")


def test_pruned_trials_stop_at_once_and_are_marked_pruned(tmp_path):
    import optuna

    from danlu.train import Pruned, run_training
    from danlu.tune import PruningCallback

    store = SqlStore(home=tmp_path / "home")
    with quiet_optuna():
        study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0))
        trial = study.ask()
    recipe = iris_recipe()
    recipe.pop("tune")
    recipe["train"]["epochs"] = 20
    with pytest.raises(Pruned, match="pruned at epoch 1"):
        run_training(recipe, store=store, callbacks=[PruningCallback(trial, "val_loss")])
    (run,) = store.search_runs()
    assert run.status == "pruned"
    assert [p.step for p in store.metric_history(run.id, "val_loss")] == [1]
    assert set(trial.storage.get_trial(trial._trial_id).intermediate_values) == {1}
    assert "model.safetensors" not in {a.name for a in store.list_artifacts(run.id)}


def test_a_pruner_prunes_within_a_study(tmp_path):
    store = SqlStore(home=tmp_path / "home")
    recipe = iris_recipe(
        trials=8,
        pruner={"name": "median", "startup_trials": 1, "warmup_epochs": 0},
        space={"train.optimizer.lr": {"loguniform": [1.0e-5, 1.0e-1]}},
    )
    recipe["train"]["epochs"] = 6
    result = tune(recipe, store=store)
    assert result.counts["pruned"] >= 1
    assert result.counts["pruned"] + result.counts["complete"] == 8
    pruned = [r for r in result.summary["trials"] if r["state"] == "pruned"]
    assert all(r["epochs"] < 6 for r in pruned)  # stopped before the last epoch
    assert {store.get_run(r["run_id"]).status for r in pruned} == {"pruned"}
    assert result.epochs_spent == sum(r["epochs"] for r in result.summary["trials"])


def test_running_again_resumes_without_repeating_finished_trials(tmp_path):
    store = SqlStore(home=tmp_path / "home")
    first = tune(iris_recipe(trials=2), store=store)
    again = tune(iris_recipe(trials=4), store=store)
    assert again.run_id == first.run_id and again.study == "iris-tune"
    rows = again.summary["trials"]
    assert [r["number"] for r in rows] == [0, 1, 2, 3]
    assert [r["run_id"] for r in rows[:2]] == [r["run_id"] for r in first.summary["trials"]]
    assert len(store.search_runs("stage = 'tune-trial'")) == 4
    # nothing left to do: a third call runs no trial
    third = tune(iris_recipe(trials=4), store=store)
    assert len(third.summary["trials"]) == 4


def test_resuming_with_a_different_recipe_is_refused(tmp_path):
    store = SqlStore(home=tmp_path / "home")
    tune(iris_recipe(trials=1), store=store)
    changed = iris_recipe(trials=2)
    changed["train"]["batch_size"] = 32
    with pytest.raises(ConfigError, match=r"differs at train.batch_size.*--study NEW_NAME"):
        tune(changed, store=store)
    renamed = tune(changed, store=store, study="iris-bs32")
    assert renamed.study == "iris-bs32" and len(renamed.summary["trials"]) == 2


def test_jobs_zero_is_refused():
    with pytest.raises(ConfigError, match="--jobs must be at least 1; got 0"):
        tune(iris_recipe(), jobs=0)


def test_refit_trains_the_best_values_on_train_and_validation(tmp_path):
    store = SqlStore(home=tmp_path / "home")
    result = tune(iris_recipe(trials=2, refit=True), store=store)
    refit = store.get_run(result.refit_run_id)
    assert refit.stage == "tune-refit" and refit.parent_id == result.run_id
    assert refit.recipe["data"]["split"]["val"] == 0
    assert refit.recipe["train"]["optimizer"]["lr"] == pytest.approx(
        result.best_params["train.optimizer.lr"]
    )
    assert result.registered is not None and result.registered.run_id == refit.id
    assert "test_accuracy" in refit.metrics


def _write_recipe(tmp_path, recipe):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _start_tune(path, home, jobs=1):
    code = f"from danlu.tune import tune; tune({str(path)!r}, jobs={jobs})"
    env = {**os.environ, "DANLU_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT)


def _wait_for(predicate, timeout=120.0):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def _running_trial(store, name):
    from optuna.trial import TrialState

    try:
        with quiet_optuna():
            study = load_study(name, store)
    except Exception:
        return None
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.RUNNING and len(trial.intermediate_values) >= 2:
            return trial
    return None


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["killed", "interrupted"])
def test_a_killed_tune_resumes_and_reruns_the_lost_trial(tmp_path, sig):
    home = tmp_path / "home"
    recipe = iris_recipe(trials=2)
    recipe["train"]["epochs"] = 400  # long enough to be caught mid-trial
    path = _write_recipe(tmp_path, recipe)
    proc = _start_tune(path, home)
    store = SqlStore(home=home)
    try:
        lost = _wait_for(lambda: _running_trial(store, "iris-tune"))
    finally:
        proc.send_signal(sig)
        proc.wait(timeout=60)
    recipe["train"]["epochs"] = 400
    quick = iris_recipe(trials=2)  # same recipe, so the study resumes
    quick["train"]["epochs"] = 400
    result = tune(_write_recipe(tmp_path, quick), store=store)
    rows = result.summary["trials"]
    failed = [r for r in rows if r["state"] == "fail"]
    assert [r["number"] for r in failed] == [lost.number]
    retry = [r for r in rows if r["retry_of"] == lost.number]
    assert len(retry) == 1 and retry[0]["state"] == "complete"
    assert retry[0]["params"] == lost.params  # the same point, run again
    assert result.counts["complete"] == 2  # the budget counts the re-run, not the lost one
    assert store.get_run(lost.user_attrs["run_id"]).status == "interrupted"


def test_two_worker_processes_share_one_study(tmp_path):
    store = SqlStore(home=tmp_path / "home")
    recipe = iris_recipe(trials=4)
    result = tune(recipe, store=store, jobs=2)
    rows = result.summary["trials"]
    assert len(rows) == 4 and all(r["state"] == "complete" for r in rows)
    workers = {r["worker"] for r in rows}
    assert len(workers) == 2 and str(os.getpid()) not in {w.rsplit(":", 1)[1] for w in workers}
    assert {store.get_run(r["run_id"]).parent_id for r in rows} == {result.run_id}
    (listed,) = list_studies(store)
    assert listed["complete"] == 4 and listed["status"] == "finished"
    assert math.isfinite(listed["best_value"])


def test_studies_are_listed_and_summarised(tmp_path):
    store = SqlStore(home=tmp_path / "home")
    tune(iris_recipe(trials=3), store=store)
    summary = study_summary(load_study("iris-tune", store))
    assert summary["counts"]["complete"] == 3 and summary["metric"] == "val_loss"
    assert summary["direction"] == "minimize" and summary["sampler"] == "random"
    assert set(summary["importance"]) <= {"train.optimizer.lr", "model.hidden"}
    assert [h["epochs_spent"] for h in summary["history"]] == [3, 6, 9]
    bests = [h["best"] for h in summary["history"]]
    assert bests == sorted(bests, reverse=True)  # best so far never gets worse
    from danlu.errors import NotFoundError

    with pytest.raises(
        NotFoundError, match="There is no study 'iris-tun'. Did you mean 'iris-tune'"
    ):
        load_study("iris-tun", store)


def test_a_trial_is_never_pruned_after_its_last_epoch(tmp_path):
    import optuna

    from danlu.train import run_training
    from danlu.tune import PruningCallback

    store = SqlStore(home=tmp_path / "home")
    with quiet_optuna():
        study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0))
        trial = study.ask()
    recipe = iris_recipe()
    recipe.pop("tune")
    recipe["train"]["epochs"] = 1  # the pruner would cut here, but training is already done
    result = run_training(recipe, store=store, callbacks=[PruningCallback(trial, "val_loss")])
    assert store.get_run(result.run_id).status == "finished"
    assert "accuracy" in result.metrics


def test_a_grid_runs_every_point_by_default(tmp_path):
    store = SqlStore(home=tmp_path / "home")
    recipe = iris_recipe(
        sampler="grid",
        space={
            "train.optimizer.lr": {"choice": [1.0e-3, 1.0e-2]},
            "model.dropout": {"choice": [0.0, 0.2]},
        },
    )
    del recipe["tune"]["trials"]
    recipe["train"]["epochs"] = 1
    result = tune(recipe, store=store)
    points = {
        (r["values"]["train.optimizer.lr"], r["values"]["model.dropout"])
        for r in result.summary["trials"]
    }
    assert points == {(a, b) for a in (1.0e-3, 1.0e-2) for b in (0.0, 0.2)}
    assert result.counts["complete"] == 4


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path):
    store = SqlStore(home=tmp_path / "home")
    recipe = iris_recipe(sampler="grid", space={"train.optimizer.lr": {"choice": [1.0e-2, 1.0e30]}})
    recipe["train"]["optimizer"] = {"name": "sgd"}
    recipe["train"]["epochs"] = 2
    result = tune(recipe, store=store)
    assert result.counts["complete"] == 1 and result.counts["failed"] == 1
    (failed,) = [r for r in result.summary["trials"] if r["state"] == "fail"]
    assert failed["values"]["train.optimizer.lr"] == 1.0e30
    assert "training loss became" in failed["error"]
    assert result.best_params == {"train.optimizer.lr": 1.0e-2}


def test_a_study_whose_creator_stopped_early_is_completed_on_the_next_run(tmp_path):
    import optuna

    from danlu.tune import join_study
    from danlu.tune._storage import open_storage

    store = SqlStore(home=tmp_path / "home")
    with quiet_optuna():  # as if `danlu tune` died right after creating the study
        optuna.create_study(study_name="iris-tune", storage=open_storage(store))
    with pytest.raises(DanluError, match="was not created by danlu tune"):
        join_study("iris-tune", store=store)
    result = tune(iris_recipe(trials=1), store=store)
    assert store.get_run(result.run_id).stage == "tune"
    assert result.counts["complete"] == 1


def test_a_recipe_asking_for_a_missing_gpu_is_refused_before_any_trial(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    store = SqlStore(home=tmp_path / "home")
    with pytest.raises(ConfigError, match=r"--set train.device=cuda: train.device: no CUDA"):
        tune(iris_recipe(), overrides=["train.device=cuda"], store=store)
    assert store.search_runs() == []
