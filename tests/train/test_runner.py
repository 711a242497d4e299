"""The stage runner's mechanics on toy stages (no training): order, records, run status, resume."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from danlu.config import load_recipe
from danlu.store import SqlStore
from danlu.testing import wine_recipe
from danlu.train import Context, Runner, Stage


def context(store: SqlStore, **settings) -> Context:
    recipe = load_recipe(wine_recipe())
    return Context(recipe, {"name": recipe.name, "x": 1}, None, store, **settings)


def prepare(ctx: Context) -> Context:
    ctx.data = SimpleNamespace(raw_fingerprint="f" * 64)
    ctx.log_artifact("prepared.json", "{}")  # no run yet: kept until it opens
    return ctx


def work(ctx: Context) -> Context:
    ctx.log_artifact("work.txt", "done")
    ctx.metrics["work"] = 1.0
    return ctx


def stages_of(store: SqlStore, run_id: str) -> list[dict]:
    return json.loads(store.artifact_path(run_id, "stages.json").read_text())["stages"]


def test_a_plan_runs_in_order_and_each_stage_is_recorded(tmp_path):
    store = SqlStore(home=tmp_path)
    seen = []

    def ship(ctx: Context) -> Context:
        seen.append(store.get_run(ctx.run_id).status)  # after_run: the run is finished
        return ctx

    plan = [
        Stage("prepare", prepare, phase="before_run"),
        Stage("work", work),
        Stage("skipped", work, when=lambda recipe: False),
        Stage("ship", ship, phase="after_run"),
    ]
    ctx = Runner(plan).run(context(store))
    run = store.get_run(ctx.run_id)
    assert run.status == "finished" and seen == ["finished"]
    records = stages_of(store, run.id)
    assert [(r["name"], r["status"], r["artifacts"]) for r in records] == [
        ("prepare", "finished", ["prepared.json"]),
        ("work", "finished", ["work.txt"]),
        ("ship", "finished", []),
    ]
    assert [s.name for s in ctx.stages] == ["prepare", "work", "ship"]
    assert {"stage_prepare_seconds", "stage_work_seconds", "stage_ship_seconds"} <= set(run.metrics)
    assert {"recipe.yaml", "prepared.json", "work.txt", "stages.json"} == {
        a.name for a in store.list_artifacts(run.id)
    }


@pytest.mark.parametrize("where", ["before_run", "check"])
def test_a_failure_before_the_run_opens_leaves_no_run(tmp_path, where):
    store = SqlStore(home=tmp_path)

    def bad(ctx: Context) -> None:
        raise ValueError("bad data (simulated)")

    plan = [
        Stage("prepare", bad if where == "before_run" else prepare, phase="before_run"),
        Stage("work", work, check=bad if where == "check" else None),
    ]
    with pytest.raises(ValueError, match="simulated"):
        Runner(plan).run(context(store))
    assert store.search_runs() == []


def test_resume_restores_the_finished_stages_and_runs_the_failed_one_again(tmp_path):
    store = SqlStore(home=tmp_path)
    calls: list[str] = []
    failures = ["boom (simulated)"]

    def counted(ctx: Context) -> Context:
        calls.append("work")
        return work(ctx)

    def restore(ctx: Context) -> Context:
        calls.append("restore")
        ctx.metrics["work"] = 1.0
        return ctx

    def flaky(ctx: Context) -> Context:
        calls.append("flaky")
        if failures:
            raise RuntimeError(failures.pop())
        return ctx

    plan = [
        Stage("prepare", prepare, phase="before_run"),
        Stage("work", counted, restore=restore),
        Stage("flaky", flaky),
        Stage("ship", lambda ctx: ctx, phase="after_run"),
    ]
    with pytest.raises(RuntimeError, match="simulated"):
        Runner(plan).run(context(store))
    [run] = store.search_runs()
    assert run.status == "failed" and "boom" in (run.error or "")
    assert [(r["name"], r["status"]) for r in stages_of(store, run.id)] == [
        ("prepare", "finished"),
        ("work", "finished"),
        ("flaky", "failed"),
    ]

    ctx = Runner(plan).run(context(store, resume=run.id))
    assert ctx.run_id == run.id and ctx.metrics == {"work": 1.0}
    assert calls == ["work", "flaky", "restore", "flaky"]
    assert store.get_run(run.id).status == "finished"
    records = stages_of(store, run.id)
    assert [(r["name"], r["status"], r["restored"]) for r in records] == [
        ("prepare", "finished", False),
        ("work", "finished", True),
        ("flaky", "finished", False),
        ("ship", "finished", False),
    ]
    assert records[1]["artifacts"] == ["work.txt"]  # as the session that ran it recorded


def test_a_changed_recipe_runs_every_stage_again_on_resume(tmp_path):
    store = SqlStore(home=tmp_path)
    calls: list[str] = []

    def counted(ctx: Context) -> Context:
        calls.append("work")
        return ctx

    plan = [
        Stage("prepare", prepare, phase="before_run"),
        Stage("work", counted, restore=lambda ctx: calls.append("restore") or ctx),
    ]
    first = Runner(plan).run(context(store))
    changed = context(store, resume=first.run_id)
    changed.resolved = {**changed.resolved, "train": {"epochs": 9}}  # the one key that may change
    Runner(plan).run(changed)
    assert calls == ["work", "work"]
