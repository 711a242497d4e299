"""The jobs pages over a real server, on a real queue: one job run to the end by ``run_job`` (a
real ``danlu run`` of tiny wine: its log by attempt), one claimed (running, with its slot), others
queued by priority; Cancel and Retry with and without an admin key."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.ui.conftest import screenshot, serve

pytest.importorskip("fastapi")

RECIPE = {
    "name": "wine-job",
    "data": {"source": "builtin:wine", "split": {"test": 0.2, "val": 0.2, "seed": 0}},
    "task": "classification",
    "model": {"type": "mlp", "hidden": [8]},
    "train": {"epochs": 2, "batch_size": 32, "seed": 0},
}


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """(server URL, queue, jobs by role): ``done`` succeeded, ``running`` claimed into a slot,
    ``low`` / ``high`` / ``mid`` queued with priorities 0 / 5 / 2."""
    from danlu.jobs import JobQueue, SlotPool, run_job
    from danlu.store import SqlStore

    folder = tmp_path_factory.mktemp("jobs")
    store = SqlStore(home=folder / "home")
    queue = JobQueue(store)
    path = folder / "wine.yaml"
    path.write_text(yaml.safe_dump(RECIPE, sort_keys=False))

    def submit(name: str, priority: int = 0) -> Any:
        return queue.submit(
            recipe=path.read_text(),
            recipe_path=str(path),
            name=name,
            priority=priority,
            workdir=str(folder),
        )

    cpu = sorted(os.sched_getaffinity(0))[-1]
    submitted = {"done": submit("<b>done</b>")}
    job = queue.claim("agent-1", SlotPool(cpu_ids=[cpu], memory_gb=1.0), lease_s=120)
    assert job is not None and job.id == submitted["done"].id
    outcome = run_job(queue, job, job.slot, "agent-1", lease_s=120)
    assert outcome.status == "succeeded", Path(queue.log_path(job.id)).read_text()[-2000:]
    submitted["running"] = submit("running", priority=9)
    claimed = queue.claim("agent-1", SlotPool(cpu_ids=[cpu], memory_gb=1.0), lease_s=600)
    assert claimed is not None and claimed.id == submitted["running"].id
    for name, priority in (("low", 0), ("high", 5), ("mid", 2)):
        submitted[name] = submit(name, priority)
    try:
        with serve(store) as url:
            yield url, queue, {k: queue.get(v.id) for k, v in submitted.items()}
    finally:
        store.close()


def _ids(html: str, table: str) -> list[str]:
    body = re.search(rf'<table id="{table}">(.*?)</table>', html, re.S)
    assert body is not None
    return re.findall(r'<a href="/jobs/([0-9a-f]{12})">', body.group(1))


def test_jobs_page_shows_running_queued_and_finished(jobs):
    url, _, job = jobs
    page = httpx.get(url + "/jobs")
    assert page.status_code == 200
    assert _ids(page.text, "running") == [job["running"].id]
    cpu = job["running"].slot.cpus[0]
    assert f"<td>CPUs {cpu}</td>" in page.text  # its slot
    # queued in the order they will be claimed: priority first
    assert _ids(page.text, "queued") == [job["high"].id, job["mid"].id, job["low"].id]
    assert job["done"].id in _ids(page.text, "finished")
    assert "&lt;b&gt;done&lt;/b&gt;" in page.text and "<b>done</b>" not in page.text


def test_job_page_splits_the_log_by_attempt(jobs):
    url, queue, job = jobs
    page = httpx.get(f"{url}/jobs/{job['done'].id}")
    assert page.status_code == 200
    assert re.findall(r"<h3>attempt (\d+)</h3>", page.text) == ["1"]
    log = queue.log_path(job["done"].id).read_text()
    assert "attempt 1 ended: exited, exit status 0 -&gt; job succeeded" in page.text
    assert len(log) > 100
    for run in job["done"].run_ids:
        assert f'<a href="/runs/{run}">{run}</a>' in page.text
    # the polling route hands the rest of the log from an offset
    tail = httpx.get(f"{url}/api/jobs/{job['done'].id}/log", params={"offset": 10}).json()
    assert tail["status"] == "succeeded" and tail["finished"] is True
    assert tail["text"] == log.encode()[10:].decode() and tail["offset"] == len(log.encode())
    assert httpx.get(f"{url}/jobs/000000000000").status_code == 404
    assert httpx.get(f"{url}/jobs/not-an-id").status_code == 404


def _post(url: str, path: str, key: str = "", origin: str | None = None) -> httpx.Response:
    return httpx.post(
        url + path,
        data={"key": key},
        headers={"Origin": origin or url},
        follow_redirects=False,
    )


def test_cancel_and_retry_need_an_admin_key(jobs):
    url, queue, job = jobs
    store = queue.store
    _, admin = store.create_api_key("admin", name="ui-jobs", actor="tests")
    _, predict = store.create_api_key("predict", name="ui-jobs-predict", actor="tests")
    target = job["low"].id
    refused = [
        _post(url, f"/jobs/{target}/cancel"),
        _post(url, f"/jobs/{target}/cancel", predict),
        _post(url, f"/jobs/{target}/cancel", admin, origin="http://evil.test"),
    ]
    assert [r.status_code for r in refused] == [403, 403, 403]
    assert queue.get(target).status == "queued"

    cancelled = _post(url, f"/jobs/{target}/cancel", admin)
    assert cancelled.status_code == 303 and cancelled.headers["location"] == f"/jobs/{target}"
    assert queue.get(target).status == "cancelled"
    assert target not in _ids(httpx.get(url + "/jobs").text, "queued")
    # cancelling it again says why, on its page
    again = _post(url, f"/jobs/{target}/cancel", admin)
    assert again.status_code == 409 and "nothing to cancel" in again.text

    assert _post(url, f"/jobs/{target}/retry").status_code == 403
    assert queue.get(target).status == "cancelled"
    retried = _post(url, f"/jobs/{target}/retry", admin)
    assert retried.status_code == 303 and queue.get(target).status == "queued"

    # a running job: the cancel is a request its executor acts on
    running = job["running"].id
    assert _post(url, f"/jobs/{running}/cancel", admin).status_code == 303
    after = queue.get(running)
    assert after.status == "running" and after.cancel_requested
    assert "cancel requested" in httpx.get(f"{url}/jobs/{running}").text


def test_job_page_in_chromium(jobs, page, tmp_path):
    url, _, job = jobs
    page.goto(f"{url}/jobs/{job['done'].id}")
    assert page.locator("pre.log").first.inner_text().count("attempt 1") >= 2
    assert page.locator("#retry-form").count() == 0  # a succeeded job: nothing to retry
    page.goto(url + "/jobs")
    assert page.locator("#queued tbody tr").count() >= 2
    screenshot(page, tmp_path, "jobs.png")
    # a running job's page polls its log (the page fixture fails on any script error)
    with page.expect_response(lambda r: "/api/jobs/" in r.url and r.status == 200):
        page.goto(f"{url}/jobs/{job['running'].id}")
    assert page.locator("#job-status").inner_text() == "running"


def test_jobs_filter_by_status_and_project(jobs):
    url, _, job = jobs
    project = job["low"].project
    queued = httpx.get(url + "/jobs", params={"status": "queued"}).text
    assert _ids(queued, "running") == [] and _ids(queued, "finished") == []
    assert _ids(queued, "queued") == [job["high"].id, job["mid"].id, job["low"].id]
    assert '<option value="queued" selected>' in queued
    same = httpx.get(url + "/jobs", params={"project": project}).text
    assert _ids(same, "running") == [job["running"].id]
    elsewhere = httpx.get(url + "/jobs", params={"project": "no-such-project"}).text
    assert all(_ids(elsewhere, t) == [] for t in ("running", "queued", "finished"))
    bad = httpx.get(url + "/jobs", params={"status": "<i>nope</i>"})
    assert bad.status_code == 400
    assert "Unknown job status" in bad.text and "<i>nope</i>" not in bad.text
