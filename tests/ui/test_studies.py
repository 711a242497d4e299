"""The studies pages over a real server, on a real tiny study (danlu.pipeline.tune: wine, 4
trials of 2 epochs, a median pruner that prunes some): the list, the trials table with pruned
trials marked and linked to their runs, the history and importance data, the charts in Chromium."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.ui.conftest import screenshot, serve

pytest.importorskip("fastapi")

STUDY = "wine-study"
RECIPE = {
    "name": "wine-tune",
    "data": {
        "source": "builtin:wine",
        "split": {"test": 0.2, "val": 0.2, "seed": 0, "stratify": True},
        "prepare": {"scale": "standard"},
    },
    "task": "classification",
    "model": {"type": "mlp", "hidden": [8]},
    "train": {"epochs": 2, "batch_size": 32, "seed": 0},
    "tune": {
        "metric": "val_accuracy",
        "trials": 4,
        "study": STUDY,
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "median", "startup_trials": 1, "warmup_epochs": 0},
        "space": {
            "train.optimizer.lr": {"loguniform": [1.0e-4, 3.0e-2]},
            "model.dropout": {"uniform": [0.0, 0.5]},
            "model.hidden": {"choice": [[8], [16, 8]]},
        },
    },
}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any, Any]]:
    """(server URL, store, TuneResult) of a real tiny study."""
    from danlu.pipeline import tune
    from danlu.store import SqlStore

    store = SqlStore(home=tmp_path_factory.mktemp("studies-home"))
    result = tune(RECIPE, store=store)
    try:
        with serve(store) as url:
            yield url, store, result
    finally:
        store.close()


def _chart_data(text: str) -> dict[str, Any]:
    found = re.search(r'data-study="([^"]*)"', text)
    assert found is not None
    return json.loads(html.unescape(found.group(1)))


def test_studies_page_lists_the_study(study):
    url, store, result = study
    page = httpx.get(url + "/studies")
    assert page.status_code == 200
    assert f'<a href="/studies/{STUDY}">{STUDY}</a>' in page.text
    assert result.run_id in page.text and "val_accuracy" in page.text


def test_study_page_shows_every_trial_with_pruned_ones_marked(study):
    url, store, result = study
    page = httpx.get(f"{url}/studies/{STUDY}")
    assert page.status_code == 200
    rows = re.findall(r'<tr class="trial-(\w+)">(.*?)</tr>', page.text, re.S)
    assert len(rows) == 4
    states = [state for state, _ in rows]
    counts = result.counts
    assert states.count("pruned") == counts["pruned"] and counts["pruned"] >= 1
    assert states.count("finished") == counts["complete"]
    for state, row in rows:
        assert f'<span class="pill status-{state}">{state}</span>' in row
    # each trial links to its run, and every trial run of the study is there
    trial_runs = {r.id for r in store.search_runs(f"parent_id = '{result.run_id}'")}
    linked = set(re.findall(r'<a href="/runs/([^"]+)">wine-study-trial-\d+</a>', page.text))
    assert linked == trial_runs and len(linked) == 4
    # the searched parameters are columns
    for key in RECIPE["tune"]["space"]:
        assert f"<th>{key}</th>" in page.text


def test_history_matches_what_optuna_recorded(study):
    url, store, result = study
    data = _chart_data(httpx.get(f"{url}/studies/{STUDY}").text)
    assert data["direction"] == "maximize" and data["metric"] == "val_accuracy"
    by_trial = {h["trial"]: h for h in data["history"]}
    assert sorted(by_trial) == [0, 1, 2, 3]
    for row in result.summary["trials"]:
        got = by_trial[row["number"]]
        if row["state"] == "complete":
            assert got["value"] == pytest.approx(row["value"])
        else:
            assert got["value"] is None and got["state"] == "pruned"
    assert data["history"][-1]["best"] == pytest.approx(result.best_value)
    bests = [h["best"] for h in data["history"] if h["best"] is not None]
    assert bests == sorted(bests)  # the best so far never gets worse
    # parallel coordinates: one line per complete trial, the objective on the last axis
    axes, lines = data["parallel"]["axes"], data["parallel"]["lines"]
    assert [a["name"] for a in axes] == [*RECIPE["tune"]["space"], "val_accuracy"]
    assert axes[0]["type"] == "log" and axes[2]["type"] == "category"
    assert len(lines) == result.counts["complete"]
    assert sorted(line["value"][-1] for line in lines) == pytest.approx(
        sorted(r["value"] for r in result.summary["trials"] if r["state"] == "complete")
    )


def test_unknown_study_is_404(study):
    url, _, _ = study
    assert httpx.get(url + "/studies/no-such-study").status_code == 404
    assert httpx.get(url + "/studies/a'b").status_code == 404


def test_param_importance_is_the_share_of_rank_variance():
    from danlu.ui._studies import param_importance

    kinds = {"lr": "log", "act": "category", "noise": "value"}
    params = [
        {"lr": str(lr), "act": act, "noise": str(n)}
        for lr, act, n in [(0.1, "relu", 1), (0.2, "relu", 4), (0.3, "tanh", 2), (0.4, "tanh", 3)]
    ]
    scores = param_importance(params, [1.0, 2.0, 3.0, 4.0], kinds)
    assert scores["lr"] == pytest.approx(1.0)  # the objective's order is lr's order
    # ranks 0,1 | 2,3: between-group variance 1.0 of total 1.25
    assert scores["act"] == pytest.approx(0.8)
    assert scores["noise"] == pytest.approx(0.16)  # Spearman rho = 0.4
    assert list(scores) == ["lr", "act", "noise"]  # most important first
    assert param_importance(params[:2], [1.0, 2.0], kinds) == {}  # too few trials
    assert param_importance(params, [1.0] * 4, kinds) == {}  # nothing to explain


def test_study_charts_have_points_in_chromium(study, page, tmp_path):
    url, _, result = study
    page.goto(f"{url}/studies/{STUDY}")
    page.wait_for_function(
        "window.echarts && echarts.getInstanceByDom(document.getElementById('parallel'))"
    )
    counts = page.evaluate(
        """() => {
        const h = echarts.getInstanceByDom(document.getElementById('history')).getOption();
        const p = echarts.getInstanceByDom(document.getElementById('parallel')).getOption();
        return {trials: h.series[0].data.length, pruned: h.series[1].data.length,
                best: h.series[2].data.length, lines: p.series[0].data.length};
    }"""
    )
    assert counts["trials"] == result.counts["complete"]
    assert counts["pruned"] == result.counts["pruned"]
    assert counts["best"] >= 1 and counts["lines"] == result.counts["complete"]
    assert page.locator("#trials tr.trial-pruned").count() == result.counts["pruned"]
    screenshot(page, tmp_path, "study.png")


def test_a_running_study_counts_its_trials_so_far(study):
    url, store, _ = study
    from danlu.store import MetricPoint

    parent = store.create_run(
        experiment="live",
        name="live-study",
        stage="tune",
        recipe={"tune": {"metric": "val_loss", "space": {"model.dropout": {"uniform": [0, 1]}}}},
        tags={"tune.study": "live-study"},
    )
    for number, status in enumerate(["finished", "pruned", "running"]):
        trial = store.create_run(
            experiment="live",
            name=f"live-study-trial-{number}",
            stage="tune-trial",
            parent_id=parent.id,
            tags={"tune.study": "live-study", "tune.trial": str(number)},
        )
        store.log_params(trial.id, {"model.dropout": 0.1 * number})
        store.log_metrics(trial.id, [MetricPoint("val_loss", 1.0 - 0.1 * number, step=1, epoch=1)])
        if status != "running":
            store.set_status(trial.id, status)
    listed = httpx.get(url + "/studies").text
    row = re.search(r'<a href="/studies/live-study">live-study</a>(.*?)</tr>', listed, re.S)
    assert row is not None
    assert '<td class="num">1</td><td class="num">1</td>' in row.group(1)  # complete, pruned
    data = _chart_data(httpx.get(url + "/studies/live-study").text)
    assert data["direction"] == "minimize"  # a loss, with direction auto
    assert [(h["state"], h["value"]) for h in data["history"]] == [
        ("finished", pytest.approx(1.0)),
        ("pruned", None),
        ("running", None),
    ]


def test_a_running_study_page_refreshes_itself_in_chromium(study, page):
    """While the study runs, a trial that ends appears in the table and the history chart
    without a reload; once the study has ended the page stops polling."""
    url, store, _ = study
    from danlu.store import MetricPoint

    parent = store.create_run(
        experiment="live",
        name="grow-study",
        stage="tune",
        recipe={"tune": {"metric": "val_loss", "space": {"model.dropout": {"uniform": [0, 1]}}}},
        tags={"tune.study": "grow-study"},
    )

    def trial(number: int) -> None:
        run = store.create_run(
            experiment="live",
            name=f"grow-study-trial-{number}",
            stage="tune-trial",
            parent_id=parent.id,
            tags={"tune.study": "grow-study", "tune.trial": str(number)},
        )
        store.log_params(run.id, {"model.dropout": 0.1 * number})
        store.log_metrics(run.id, [MetricPoint("val_loss", 1.0 - 0.1 * number, step=1, epoch=1)])
        store.set_status(run.id, "finished")

    trial(0)
    page.goto(f"{url}/studies/grow-study")
    page.wait_for_function("() => document.getElementById('study-charts').dataset.trials === '1'")
    assert page.locator("#trials tbody tr").count() == 1
    trial(1)
    page.wait_for_function(
        "() => document.getElementById('study-charts').dataset.trials === '2'", timeout=15_000
    )
    assert page.locator("#trials tbody tr").count() == 2
    points = page.evaluate(
        "() => echarts.getInstanceByDom(document.getElementById('history'))"
        ".getOption().series[0].data.length"
    )
    assert points == 2
    store.set_status(parent.id, "finished")
    page.wait_for_function(
        "() => !document.getElementById('study-summary').textContent.includes('refreshed every')",
        timeout=15_000,
    )
