"""``danlu tune`` and ``danlu studies`` on the digits example, cut down to 2 trials of 2 epochs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.cli._runner import Outcome, danlu

RECIPE = str(Path(__file__).resolve().parents[2] / "examples" / "digits_tune.yaml")
FAST = ("--set", "train.epochs=2")
STUDY = "digits-tune"


def tune(*args: str, trials: int = 2) -> Outcome:
    return danlu("tune", RECIPE, "--set", f"tune.trials={trials}", *FAST, *args)


def finished(counts: dict[str, int]) -> int:
    return counts["complete"] + counts["pruned"] + counts["failed"]


class Tuned(NamedTuple):
    home: Path
    outcome: Outcome


@pytest.fixture(scope="module")
def _tuned_once(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuned]:
    """One study of two trials, shared by the tests that only read it."""
    home = tmp_path_factory.mktemp("tuned") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DANLU_HOME", str(home))
        outcome = tune()
    yield Tuned(home, outcome)


@pytest.fixture
def tuned(_tuned_once: Tuned, monkeypatch: pytest.MonkeyPatch) -> Outcome:
    monkeypatch.setenv("DANLU_HOME", str(_tuned_once.home))
    return _tuned_once.outcome


def test_tune_prints_best_value_and_registered_version(tuned):
    assert tuned.code == 0, tuned.stderr
    assert f"study {STUDY}" in tuned.stdout
    assert "best val_loss" in tuned.stdout and "best params" in tuned.stdout
    assert "registered as model digits:1 (alias tuned)" in tuned.stdout
    assert f"danlu studies show {STUDY}" in tuned.stdout
    # not a terminal: one plain line per trial (and per epoch), no bar, no escape codes
    assert "trial 0 " in tuned.stderr and "/2 finished" in tuned.stderr
    assert "epoch 1/2" in tuned.stderr
    assert "\x1b[" not in tuned.stderr


def test_studies_ls_table_and_json(tuned):
    table = danlu("studies", "ls")
    assert table.code == 0, table.stderr
    assert STUDY in table.stdout and "val_loss" in table.stdout and "finished" in table.stdout
    out = danlu("studies", "ls", "--json")
    assert out.code == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert row["study"] == STUDY and row["trials"] == 2
    assert finished(row) == 2 and row["direction"] == "minimize"
    assert row["best_value"] is not None and row["status"] == "finished"


def test_studies_show_trials_counts_and_json(tuned):
    out = danlu("studies", "show", STUDY)
    assert out.code == 0, out.stderr
    assert f"study {STUDY}" in out.stdout and "best val_loss" in out.stdout
    assert "trials" in out.stdout and "2 of 2:" in out.stdout and "pruned" in out.stdout
    assert "lr=" in out.stdout and "history" in out.stdout
    data = json.loads(danlu("studies", "show", STUDY, "--json").stdout)
    assert data["best"] is not None and data["best"]["run_id"] in out.stdout
    assert finished(data["counts"]) == 2 and len(data["trials"]) == 2
    assert data["metric"] == "val_loss" and data["budget"] == 2


def test_studies_show_writes_plots(tuned, tmp_path):
    folder = tmp_path / "plots" / "new"
    out = danlu("studies", "show", STUDY, "--plots", str(folder))
    assert out.code == 0, out.stderr
    assert (folder / "history.svg").read_bytes().lstrip().startswith(b"<?xml")
    assert (folder / "history.png").read_bytes().startswith(b"\x89PNG")
    assert str(folder / "history.svg") in out.stdout and "artifacts" in out.stdout

    a_file = tmp_path / "taken"
    a_file.write_text("")
    refused = danlu("studies", "show", STUDY, "--plots", str(a_file))
    assert refused.code != 0 and "is a file" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_worker_on_a_spent_study_runs_nothing(tuned):
    out = danlu("tune", "--worker", STUDY)
    assert out.code == 0, out.stderr
    assert "ran no trial" in out.stdout


def test_unknown_study_fails_cleanly(tuned):
    show = danlu("studies", "show", "digits-tnue")
    assert show.code != 0 and "There is no study 'digits-tnue'" in show.stderr
    assert STUDY in show.stderr and "Traceback" not in show.stderr
    worker = danlu("tune", "--worker", "nope")
    assert worker.code != 0 and "There is no study 'nope'" in worker.stderr
    assert "Traceback" not in worker.stderr


def test_no_studies_yet():
    assert json.loads(danlu("studies", "ls", "--json").stdout) == []
    out = danlu("studies", "ls")
    assert out.code == 0 and "No studies yet" in out.stderr


def test_bad_invocations_exit_non_zero_without_traceback():
    jobs = tune("--jobs", "0")
    assert jobs.code != 0 and "--jobs must be at least 1; got 0" in jobs.stderr
    assert "Traceback" not in jobs.stderr
    neither = danlu("tune")
    assert neither.code != 0 and "Give a RECIPE" in neither.stderr
    both = danlu("tune", RECIPE, "--worker", STUDY)
    assert both.code != 0 and "--worker STUDY" in both.stderr
    assert "Traceback" not in neither.stderr + both.stderr


def test_running_again_with_a_larger_budget_resumes_the_study():
    first = tune("--quiet", trials=2)
    assert first.code == 0, first.stderr
    again = tune("--json", trials=3)
    assert again.code == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["study"] == STUDY and finished(result["counts"]) == 3
    summary = json.loads(danlu("studies", "show", STUDY, "--json").stdout)
    assert finished(summary["counts"]) == 3 and len(summary["trials"]) == 3  # one trial added
    assert summary["run_id"] == result["run_id"]  # the same study run, resumed


def test_validate_checks_the_search_space_too(tmp_path):
    ok = danlu("validate", RECIPE)
    assert ok.code == 0 and "tunes 5 key(s)" in ok.stdout
    bad = tmp_path / "bad.yaml"
    text = Path(RECIPE).read_text().replace("train.batch_size:", "train.batch_sise:")
    bad.write_text(text)
    outcome = danlu("validate", str(bad))
    assert outcome.code == 2 and "Traceback" not in outcome.stderr
    assert "tune.space.train.batch_sise: no such key in the recipe" in outcome.stderr
    assert "Did you mean 'train.batch_size'?" in outcome.stderr


def test_stored_names_are_shown_not_obeyed_as_markup():
    study = "[bold red]x[/bold red]"
    first = tune("--quiet", "--study", study, trials=1)
    assert first.code == 0, first.stderr
    again = tune("--study", study, trials=1)  # the budget is spent: resumes, runs nothing
    assert again.code == 0, again.stderr
    assert f"Resuming study {study}: 1 of 1 trials finished." in again.stderr
    assert f"study {study}" in again.stdout and f"danlu studies show {study}" in again.stdout
    joined = danlu("tune", "--worker", "[red]nope[/red]")
    assert "Joining study [red]nope[/red] as one more worker" in joined.stderr
