"""``run_job``: one attempt as a real ``danlu run`` child pinned to its slot, killed at once when
its lease is lost (the job was requeued elsewhere), so a job never runs twice at once."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from sqlalchemy import update

from danlu.jobs import SlotPool, run_job
from danlu.store import jobs_table

from .conftest import QueueDb, wait_until, wine_recipe


def test_a_pinned_attempt_is_killed_when_its_lease_is_lost(
    sqlite_db: QueueDb, tmp_path: Path, monkeypatch
) -> None:  # noqa: ANN001
    monkeypatch.setenv("DANLU_HOME", str(sqlite_db.home))
    monkeypatch.setenv("DANLU_DB_URL", sqlite_db.url)
    queue = sqlite_db.queue()
    recipe = wine_recipe(tmp_path, epochs=40, batch_size=1)
    submitted = queue.submit(
        recipe=recipe.read_text(), recipe_path=str(recipe), name="wine", workdir=str(tmp_path)
    )
    cpu = sorted(os.sched_getaffinity(0))[-1]
    job = queue.claim("agent-1", SlotPool(cpu_ids=[cpu], memory_gb=1.0), lease_s=6)
    assert job.slot.cpus == (cpu,)
    result = {}
    worker = threading.Thread(
        target=lambda: result.setdefault(
            "outcome", run_job(queue, job, job.slot, "agent-1", lease_s=6)
        )
    )
    worker.start()
    log = queue.log_path(job.id)
    pid = int(
        wait_until(
            lambda: log.is_file() and re.search(r"started pid (\d+)", log.read_text())
        ).group(1)
    )
    # pinned to its slot: its CPU, no GPU, one thread, and tagged with the job
    status = Path(f"/proc/{pid}/status").read_text()
    assert re.search(rf"Cpus_allowed_list:\s+{cpu}\n", status)
    environ = dict(
        item.split("=", 1)
        for item in Path(f"/proc/{pid}/environ").read_text().split("\0")
        if "=" in item
    )
    assert environ["CUDA_VISIBLE_DEVICES"] == "" and environ["OMP_NUM_THREADS"] == "1"
    assert environ["DANLU_JOB_ID"] == job.id
    wait_until(lambda: queue.store.search_runs(f"tags.job = '{job.id}'"))  # training started

    # the job is requeued and claimed elsewhere (as after a lease expiry): another token holds it
    with queue.store.engine.begin() as conn:
        conn.execute(
            update(jobs_table).where(jobs_table.c.id == job.id).values(lease_token="another-holder")
        )
    worker.join(timeout=60)
    assert not worker.is_alive()
    outcome = result["outcome"]
    assert outcome.reason == "lost" and outcome.status is None
    assert (
        not Path(f"/proc/{pid}").exists() or "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    )
    after = queue.get(submitted.id)  # the old holder wrote nothing over the new one
    assert after.status == "running" and after.lease_token == "another-holder"
    assert "its lease was lost" in log.read_text()
