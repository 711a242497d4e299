"""Multi-machine tuning on PostgreSQL: workers join a study by name; heartbeats fail a dead
worker's trial and queue it again. Needs DANLU_TEST_PG_URL (CI starts a server)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from danlu.store import SqlStore
from danlu.tune import load_study, tune
from danlu.tune._storage import close_storage
from danlu.tune._study import quiet_optuna
from tests.store.conftest import NO_PG, fresh_pg_database, pg_base_url
from tests.tune.test_tune import ROOT, _wait_for, iris_recipe

pytestmark = pytest.mark.skipif(pg_base_url() is None, reason=NO_PG)


@pytest.fixture
def pg_url():
    with fresh_pg_database(pg_base_url()) as url:
        yield url


def _env(url, home, **extra):
    return {
        **os.environ,
        "DANLU_DB_URL": url,
        "DANLU_HOME": str(home),
        "OMP_NUM_THREADS": "1",
        **extra,
    }


@contextlib.contextmanager
def _study(store, name="iris-tune"):
    """The study (None until it exists), with its connections closed afterwards."""
    try:
        with quiet_optuna():
            study = load_study(name, store)
    except Exception:
        study = None
    try:
        yield study
    finally:
        if study is not None:
            close_storage(study._storage)


def _trials(store):
    with _study(store) as study:
        return None if study is None else study.get_trials(), (
            None if study is None else study.user_attrs
        )


def test_optuna_tables_live_in_their_own_schema(pg_url, tmp_path):
    from sqlalchemy import create_engine, inspect

    store = SqlStore(pg_url, home=tmp_path / "home")
    tune(iris_recipe(trials=1), store=store)
    store.close()
    engine = create_engine(store.url)
    tables = inspect(engine).get_table_names()
    assert "runs" in tables and "trials" not in tables  # danlu's schema stays danlu's
    assert "trials" in inspect(engine).get_table_names(schema="optuna")
    engine.dispose()


def test_a_worker_on_another_process_joins_the_study(pg_url, tmp_path):
    home = tmp_path / "home"
    recipe = iris_recipe(trials=6)
    recipe["train"]["epochs"] = 60
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    store = SqlStore(pg_url, home=home)
    coordinator = subprocess.Popen(
        [sys.executable, "-c", f"from danlu.tune import tune; tune({str(path)!r})"],
        env=_env(pg_url, home),
        cwd=ROOT,
    )
    try:
        _wait_for(lambda: _trials(store)[0] is not None)
        worker = subprocess.run(
            [sys.executable, "-m", "danlu", "tune", "--worker", "iris-tune"],
            env=_env(pg_url, tmp_path / "elsewhere"),  # another machine: its own home folder
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert worker.returncode == 0, worker.stderr
    finally:
        assert coordinator.wait(timeout=300) == 0
    trials, attrs = _trials(store)
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    run_ids = [t.user_attrs["run_id"] for t in trials]
    parent = attrs["danlu.run_id"]
    assert {store.get_run(r).parent_id for r in run_ids} == {parent}
    assert store.get_run(parent).status == "finished"
    store.close()


def test_a_dead_workers_trial_is_failed_by_heartbeat_and_run_again(pg_url, tmp_path):
    home = tmp_path / "home"
    recipe = iris_recipe(trials=2)
    recipe["train"]["epochs"] = 400
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    store = SqlStore(pg_url, home=home)
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from danlu.tune import tune; tune({str(path)!r})"],
        env=_env(pg_url, home, DANLU_TUNE_HEARTBEAT="1"),
        cwd=ROOT,
    )

    def running():
        trials, _ = _trials(store)
        live = [t for t in trials or [] if t.state.name == "RUNNING"]
        return live[0] if live and len(live[0].intermediate_values) >= 2 else None

    try:
        lost = _wait_for(running)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    # as if the worker had run on another machine: only its missing heartbeat can tell
    with _study(store) as study:
        study._storage.set_trial_user_attr(lost._trial_id, "worker", "another-machine:1")
    time.sleep(3)  # past the grace period (2 heartbeats)
    os.environ["DANLU_TUNE_HEARTBEAT"] = "1"
    try:
        result = tune(iris_recipe(trials=2) | {"train": recipe["train"]}, store=store)
    finally:
        del os.environ["DANLU_TUNE_HEARTBEAT"]
    rows = result.summary["trials"]
    assert [r["state"] for r in rows if r["number"] == lost.number] == ["fail"]
    retry = [r for r in rows if r["retry_of"] == lost.number]
    assert len(retry) == 1 and retry[0]["state"] == "complete"
    assert retry[0]["params"] == lost.params
    assert result.counts["complete"] == 2
    store.close()
