"""Shared fixtures of the dashboard tests: a store filled with real small runs, a real uvicorn
server of the dashboard on 127.0.0.1, a headless Chromium page that fails the test when the
browser logs an error or a dialog opens, and keys.

The browser tests skip when no ``chromium`` is found, unless ``DANLU_REQUIRE_BROWSER=1`` (CI),
where they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

#: the name of a run that tries to inject a script (rendered as text, never run)
XSS_NAME = "<script>alert(1)</script>"
#: a tiny recipe: wine, an MLP, 2 epochs
WINE = {
    "name": "wine-tiny",
    "data": {"source": "builtin:wine", "target": "target"},
    "task": "classification",
    "model": {"type": "mlp", "hidden": [16]},
    "train": {"epochs": 2, "batch_size": 32, "seed": 0},
}
BREAST_CANCER = {
    "name": "breast-cancer-tiny",
    "data": {"source": "builtin:breast_cancer", "target": "target"},
    "task": "classification",
    "model": {"type": "mlp", "hidden": [8]},
    "train": {"epochs": 2, "batch_size": 64, "seed": 0},
}
#: a trust report without the slow sections, and a registered model
QUICK_EVALUATE = {"bootstrap": 0, "robustness": False, "explain": False, "cost": None}
SYNTHETIC_RUNS = 12


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(store: Any, *, require_keys: bool = False) -> Iterator[str]:
    """A real uvicorn server of the dashboard over ``store`` on 127.0.0.1; yields its base URL."""
    import httpx
    import uvicorn

    from danlu.ui import create_app

    port = _free_port()
    config = uvicorn.Config(
        create_app(store, require_keys=require_keys),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        server_header=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the dashboard did not start within 20 s")
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def fill_store(store: Any) -> dict[str, str]:
    """Real small runs in ``store``; returns their ids by role.

    - ``wine``: wine MLP, 2 epochs, a quick trust report, registered as model ``wine``;
    - ``cancer``: breast-cancer MLP, 2 epochs;
    - ``child``: a run whose parent is ``wine``;
    - ``xss``: a run named ``<script>alert(1)</script>`` with a log artifact;
    - ``synthetic``: SYNTHETIC_RUNS more runs with a ``score`` metric 0..11 (for paging).
    """
    import danlu
    from danlu.store import MetricPoint

    ids: dict[str, str] = {}
    ids["wine"] = danlu.run(
        {**WINE, "evaluate": QUICK_EVALUATE, "register": {"name": "wine"}}, store=store
    ).run_id
    ids["cancer"] = danlu.run(BREAST_CANCER, store=store).run_id
    for i in range(SYNTHETIC_RUNS):
        run = store.create_run(experiment="synthetic", name=f"synthetic-{i:02d}", stage="train")
        store.log_params(run.id, {"model.type": "linear", "width": i})
        store.log_metrics(
            run.id,
            [MetricPoint("score", float(i), step=0)]
            + [MetricPoint("train_loss", 1.0 / (e + i + 1), step=e, epoch=e) for e in (1, 2, 3)],
        )
        store.set_status(run.id, "finished")
    child = store.create_run(
        experiment="default", name="wine-child", stage="compress", parent_id=ids["wine"]
    )
    store.set_status(child.id, "finished")
    ids["child"] = child.id
    xss = store.create_run(experiment="default", name=XSS_NAME, stage="train")
    store.log_params(xss.id, {"model.type": XSS_NAME})
    store.log_metrics(xss.id, [MetricPoint("test_accuracy", 0.5, step=0)])
    store.log_artifact(xss.id, "train.log", f"epoch 1 done\n{XSS_NAME}\nlast line\n".encode())
    store.set_status(xss.id, "finished")
    ids["xss"] = xss.id
    return ids


@pytest.fixture(scope="session")
def ui_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, str]]]:
    """(store, ids): a SQLite store filled by :func:`fill_store`, shared by the session."""
    pytest.importorskip("fastapi")
    from danlu.store import SqlStore

    store = SqlStore(home=tmp_path_factory.mktemp("ui-home"))
    try:
        yield store, fill_store(store)
    finally:
        store.close()


@pytest.fixture(scope="session")
def runs(ui_store: tuple[Any, dict[str, str]]) -> dict[str, str]:
    """The filled store's run ids by role (see :func:`fill_store`)."""
    return ui_store[1]


@pytest.fixture(scope="session")
def server(ui_store: tuple[Any, dict[str, str]]) -> Iterator[str]:
    """The base URL of a dashboard over the filled store (127.0.0.1, no keys required)."""
    with serve(ui_store[0]) as url:
        yield url


@pytest.fixture
def api_key(ui_store: tuple[Any, dict[str, str]]) -> Callable[[str], str]:
    """``api_key(scope)``: the secret of a new key of ``scope`` (``predict`` or ``admin``) in the
    filled store."""

    def make(scope: str = "admin") -> str:
        _, secret = ui_store[0].create_api_key(scope, name=f"test-{scope}", actor="tests")
        return str(secret)

    return make


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright (skips without one unless
    ``DANLU_REQUIRE_BROWSER=1``)."""
    required = os.environ.get("DANLU_REQUIRE_BROWSER") == "1"
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            pytest.fail("DANLU_REQUIRE_BROWSER=1 but the playwright package is not installed")
        pytest.skip("browser tests need the playwright package (pip install playwright)")
    if executable is None:
        if required:
            pytest.fail("DANLU_REQUIRE_BROWSER=1 but no chromium executable is on PATH")
        pytest.skip("no chromium found on PATH (apt-get install chromium); browser tests skipped")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-dev-shm-usage",
            ],
        )
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser page (1280x900). The test fails when the page logs a console error, throws
    an uncaught exception, or opens a dialog (alert, confirm, prompt)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on(
        "console",
        lambda msg: (
            problems.append(f"console {msg.type}: {msg.text} ({msg.location.get('url')})")
            if msg.type == "error"
            else None
        ),
    )
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

    def dialog(d: Any) -> None:
        problems.append(f"dialog {d.type}: {d.message}")
        d.dismiss()

    page.on("dialog", dialog)
    try:
        yield page
    finally:
        context.close()
    assert not problems, "the browser reported problems:\n" + "\n".join(problems)


def screenshot(page: Any, folder: Path, name: str, *, full_page: bool = True) -> Path:
    """Save a screenshot of ``page`` (the whole page, or the window) as ``folder/name``."""
    path = folder / name
    page.screenshot(path=str(path), full_page=full_page)
    return path
