"""The winner of a study gets its trust report from ``danlu run``'s evaluate stage.

``danlu.pipeline.tune`` (what ``danlu tune`` runs) resumes the winning trial's run through the
stage runner: its training is reloaded, not repeated, the evaluate stage runs on it, and the
registered version carries the report. Tiny: iris, 2 trials of 2 epochs, a cut-down report.
"""

from __future__ import annotations

import json

import pytest

import danlu
from danlu.errors import DataError
from danlu.pipeline import tune
from danlu.store import SqlStore
from tests.cli._runner import danlu as cli
from tests.tune.test_tune import iris_recipe

QUICK_REPORT = {
    "bootstrap": 20,
    "baselines": False,
    "robustness": False,
    "explain": False,
    "cost": False,
}


def recipe(**extra):
    base = iris_recipe(trials=2, space={"train.optimizer.lr": {"loguniform": [1.0e-3, 3.0e-2]}})
    base["name"], base["train"]["epochs"] = "iris-report", 2
    return {**base, "evaluate": QUICK_REPORT, **extra}


def stages(store, run_id):
    saved = json.loads(store.artifact_path(run_id, "stages.json").read_text())
    return {s["name"]: s for s in saved["stages"]}


def test_the_registered_winner_carries_its_trust_report(tmp_path):
    store = SqlStore(home=tmp_path / "home")
    result = tune(recipe(), store=store)
    winner = result.best_run_id
    assert result.report is not None and result.report_run_id == winner
    assert result.report.subject["run_id"] == winner
    # the same evaluate stage as `danlu run`: recorded on the winner's run, training reused
    ran = stages(store, winner)
    assert ran["evaluate"]["status"] == "finished"
    assert ran["train"]["restored"] is True
    assert len(store.metric_history(winner, "train_loss")) == 2  # no epoch ran again
    assert store.get_run(winner).status == "finished"
    names = {a.name for a in store.list_artifacts(winner)}
    assert {"report.html", "report.json"} <= names
    assert "ece" in store.get_run(winner).metrics  # the report's figures, as danlu run logs them
    loser = next(r for r in store.search_runs("stage = 'tune-trial'") if r.id != winner)
    assert "report.json" not in {a.name for a in store.list_artifacts(loser.id)}
    # the registered version has the report, the one stored with the winner's run
    mv = result.registered
    assert mv is not None and mv.run_id == winner
    assert {"report.html", "report.json"} <= set(mv.files)
    stored = json.loads(store.model_version_path("iris", mv.version, "report.json").read_text())
    assert stored["summary"] == result.report.summary

    # resumed with the same winner (and a different evaluate block, which a study may change):
    # nothing is reported or registered again
    again = tune(recipe(evaluate={**QUICK_REPORT, "bootstrap": 30}), store=store)
    assert again.best_run_id == winner and again.report is None and again.registered is None


def test_without_evaluate_the_winner_has_no_report(tmp_path):
    store = SqlStore(home=tmp_path / "home")
    result = tune(recipe(evaluate=False, register=False), store=store)
    assert result.report is None and result.registered is None
    assert "report.json" not in {a.name for a in store.list_artifacts(result.best_run_id)}


def test_a_finished_run_resumed_with_an_evaluate_block_gets_its_report_without_training(
    tmp_path,
):
    """The evaluate block may change on resume (the report comes after training): resuming a
    run with one adds its report; training is reloaded."""
    plain = {k: v for k, v in recipe().items() if k not in ("tune", "evaluate", "register")}
    first = danlu.run(plain, home=tmp_path)
    again = danlu.run({**plain, "evaluate": QUICK_REPORT}, resume=first.run_id, home=tmp_path)
    assert again.run_id == first.run_id and again.report is not None
    assert [(s.name, s.restored) for s in again.stages] == [
        ("prepare", False),
        ("train", True),
        ("evaluate", False),
    ]
    assert again.metrics == first.metrics


def test_danlu_tune_reports_the_winner_and_takes_a_dotted_space_key(tmp_path, monkeypatch):
    """The CLI end to end: --set adds the space entry model.dropout (a YAML flow mapping), the
    winner's report summary is printed, the registered version has the report."""
    import yaml

    monkeypatch.setenv("DANLU_HOME", str(tmp_path / "home"))
    path = tmp_path / "iris.yaml"
    path.write_text(yaml.safe_dump(recipe()))
    outcome = cli(
        "tune", str(path), "--set", "tune.space.model.dropout={uniform: [0.1, 0.5]}", "--json"
    )
    assert outcome.code == 0, outcome.stderr
    result = json.loads(outcome.stdout)
    assert set(result["best_params"]) == {"train.optimizer.lr", "model.dropout"}
    assert 0.1 <= result["best_params"]["model.dropout"] <= 0.5
    assert result["report"] and result["report_run_id"] == result["best_run_id"]
    assert result["registered"] == "iris:1"
    store = SqlStore(home=tmp_path / "home")
    assert "report.json" in store.get_model_version("iris", 1).files


def test_a_report_that_cannot_be_made_is_refused_before_any_trial(tmp_path):
    """The winner's report is checked with the prepared data first (a fairness column that is
    not in the data): the study never starts."""
    store = SqlStore(home=tmp_path / "home")
    with pytest.raises(DataError, match="sex"):
        tune(recipe(evaluate={**QUICK_REPORT, "fairness": {"group": "sex"}}), store=store)
    assert store.search_runs() == []
