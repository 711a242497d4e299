"""The runs pages in a real headless Chromium: values shown, charts with points, the filter,
compare, a live run's curve growing while it trains, no console errors, no script from a name."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from tests.ui.conftest import WINE, XSS_NAME, screenshot, serve

pytest.importorskip("fastapi")

DOCS = Path(__file__).resolve().parents[2] / "docs" / "ui"


def for_docs(path: Path) -> None:
    """Copy a screenshot into docs/ui/ when DANLU_UI_SCREENSHOTS=1 (refreshing the docs' images)."""
    if os.environ.get("DANLU_UI_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS / path.name)


def _points(page, selector: str) -> int:
    return int(page.get_attribute(selector, "data-points") or 0)


def test_runs_page_shows_accuracy_and_filters(page, server, runs, ui_store, tmp_path):
    store = ui_store[0]
    accuracy = store.get_run(runs["wine"]).metrics["test_accuracy"]
    page.goto(server + "/")
    row = page.locator(f'tr[data-run="{runs["wine"]}"]')
    assert row.locator('td[data-key="test_accuracy"]').inner_text() == f"{accuracy:.4g}"
    all_rows = page.locator("#runs tbody tr").count()
    for_docs(screenshot(page, tmp_path, "runs.png"))
    page.fill("input[name=filter]", "params.model.type = 'linear' and metrics.score >= 6")
    page.click("form.filter button[type=submit]")
    page.wait_for_url("**filter=*")
    assert 0 < page.locator("#runs tbody tr").count() == 6 < all_rows
    names = page.locator("#runs td.name").all_inner_texts()
    assert all(name.startswith("synthetic-") for name in names)


def test_sort_by_clicking_a_header(page, server):
    page.goto(server + "/?filter=params.model.type+%3D+%27linear%27")
    page.click('th a[href*="order=metrics.score"]')
    page.wait_for_url("**order=metrics.score*")
    first = [float(v) for v in page.locator('td[data-key="score"]').all_inner_texts()]
    assert first == sorted(first)
    page.click('th a[href*="order=-metrics.score"]')
    page.wait_for_url("**order=-metrics.score*")
    second = [float(v) for v in page.locator('td[data-key="score"]').all_inner_texts()]
    assert second == sorted(first, reverse=True)


def test_run_detail_has_curves_and_reports(page, server, runs, ui_store, tmp_path):
    accuracy = ui_store[0].get_run(runs["wine"]).metrics["test_accuracy"]
    page.goto(server + f"/runs/{runs['wine']}")
    page.wait_for_selector('div.chart[data-family="Losses"][data-points]')
    assert _points(page, 'div.chart[data-family="Losses"]') == 2
    assert page.get_attribute('div.chart[data-family="Losses"]', "data-series") == "2"
    assert page.locator("div.chart canvas").count() >= 2  # uPlot drew
    assert page.locator('#metrics td[data-key="test_accuracy"]').inner_text() == f"{accuracy:.4g}"
    # the trust report loads inside its sandboxed frame
    frame = page.frame_locator('iframe[src$="/report/report.html"]')
    assert frame.locator("body").inner_text(timeout=10_000).strip()
    screenshot(page, tmp_path, "run-full.png")
    page.evaluate("window.scrollTo(0, 0)")
    for_docs(screenshot(page, tmp_path, "run.png", full_page=False))
    # the legend toggles a series (uPlot marks it off)
    legend = page.locator('div.chart[data-family="Losses"] .u-legend .u-series').nth(1)
    legend.click()
    assert "u-off" in (legend.get_attribute("class") or "")


def test_compare_shows_both_runs(page, server, runs, tmp_path):
    page.goto(server + "/")
    page.check(f'input[name=runs][value="{runs["wine"]}"]')
    page.check(f'input[name=runs][value="{runs["cancer"]}"]')
    page.click("#compare-button")
    page.wait_for_url("**/compare?*")
    header = page.locator("#compare-runs thead").inner_text()
    assert "wine-tiny" in header and "breast-cancer-tiny" in header
    chart = 'div.chart[data-metric="train_loss"]'
    page.wait_for_selector(chart + "[data-points]")
    assert page.get_attribute(chart, "data-series") == "2" and _points(page, chart) == 2
    page.wait_for_selector("#parallel[data-lines]")
    assert page.get_attribute("#parallel", "data-lines") == "2"
    assert page.locator("#parallel canvas").count() >= 1
    assert page.locator("#params-diff tr.differs").count() >= 1
    screenshot(page, tmp_path, "compare.png")


def test_a_scripted_name_is_text(page, server, runs):
    page.goto(server + "/")
    assert page.get_by_text(XSS_NAME, exact=True).count() >= 1
    page.goto(server + f"/runs/{runs['xss']}")
    assert page.inner_text("h1").startswith(XSS_NAME)
    assert XSS_NAME in page.inner_text("pre.log")
    # no script element came from the name (the page's own scripts all have a src); the page
    # fixture fails the test if an alert (or any dialog) opened
    assert page.evaluate("document.querySelectorAll('script:not([src])').length") == 0


def test_every_page_without_console_errors(page, server, runs):
    for path in [
        "/",
        "/?filter=nonsense",
        f"/runs/{runs['cancer']}",
        f"/runs/{runs['child']}",
        f"/compare?runs={runs['wine']},{runs['cancer']},{runs['xss']}",
        "/compare",
    ]:
        page.goto(server + path)
        page.wait_for_load_state("networkidle")


def test_a_live_run_curve_grows(page, tmp_path):
    """A real run trains in a thread (each epoch sleeps a little); its page, opened while it
    runs, plots more points as epochs are logged, then says it finished."""
    import time

    import danlu
    from danlu.store import SqlStore
    from danlu.train import Callback

    class Slow(Callback):
        def on_epoch_end(self, trainer, epoch, metrics):
            time.sleep(0.4)

    store = SqlStore(home=tmp_path / "live")
    recipe = {**WINE, "name": "live", "train": {**WINE["train"], "epochs": 10}}
    failure: list[BaseException] = []

    def train() -> None:
        try:
            danlu.run(recipe, store=store, callbacks=[Slow()])
        except BaseException as exc:  # pragma: no cover - reported below
            failure.append(exc)

    with serve(store) as url:
        thread = threading.Thread(target=train, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not store.search_runs() and time.monotonic() < deadline:
            time.sleep(0.05)
        run = store.search_runs()[0]
        page.goto(url + f"/runs/{run.id}")
        chart = 'div.chart[data-family="Losses"]'
        page.wait_for_selector(chart + "[data-points]", timeout=30_000)
        first = _points(page, chart)
        page.wait_for_function(
            "([sel, n]) => Number(document.querySelector(sel).getAttribute('data-points')) > n",
            arg=[chart, first],
            timeout=20_000,
        )
        assert _points(page, chart) > first
        thread.join(timeout=60)
        assert not failure, failure
        page.wait_for_selector('#curves[data-status="finished"]', timeout=10_000)
        assert _points(page, chart) == 10
        assert page.inner_text("#run-status") == "finished"
