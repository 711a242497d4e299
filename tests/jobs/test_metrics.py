"""``danlu agent --metrics-port``: the queue and the progress of the agent's runs, read from the
store at each scrape (danlu/jobs/_metrics.py)."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from danlu.errors import ConfigError
from danlu.jobs import JobQueue, SlotPool
from danlu.jobs._metrics import AgentMetrics, serve_agent_metrics
from danlu.store import MetricPoint
from tests.jobs.conftest import QueueDb


def _samples(collector: AgentMetrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {f.name: [(s.labels, s.value) for s in f.samples] for f in collector.collect()}


def _running_job_with_a_run(queue: JobQueue) -> tuple[str, str, float]:
    """Two queued jobs, one claimed by agent-1, its run at epoch 2 of 4 (an epoch every 10 s)."""
    for name in ("a", "b"):
        queue.submit(recipe=f"name: {name}\n", recipe_path=f"{name}.yaml", name=name)
    job = queue.claim("agent-1", SlotPool(cpu_ids=[0], memory_gb=4), lease_s=30)
    assert job is not None
    store = queue.store
    run = store.create_run(
        experiment="wine",
        name="wine",
        recipe={"train": {"epochs": 4}},
        tags={"job": job.id, "task": "classification", "model.type": "mlp"},
    )
    now = time.time()
    points = []
    for epoch, at, loss in ((1, now - 20, 0.9), (2, now - 10, 0.5)):
        points += [  # as the tracker logs an epoch (no "epoch" key: the points carry it)
            MetricPoint("train_loss", loss, step=epoch, epoch=epoch, time=at),
            MetricPoint("val_loss", loss + 0.1, step=epoch, epoch=epoch, time=at),
            MetricPoint("val_accuracy", 1 - loss, step=epoch, epoch=epoch, time=at),
        ]
    store.log_metrics(run.id, points)
    return job.id, run.id, now - 10


def test_the_queue_and_the_running_runs_progress(queue_db: QueueDb) -> None:
    queue = queue_db.queue()
    job_id, run_id, last = _running_job_with_a_run(queue)
    got = _samples(AgentMetrics(queue, lambda: "agent-1"))
    jobs = {labels["state"]: value for labels, value in got["danlu_jobs"]}
    assert jobs["queued"] == 1 and jobs["running"] == 1 and jobs["failed"] == 0
    assert got["danlu_agent_running_jobs"] == [({"agent": "agent-1"}, 1.0)]
    [(info, _)] = got["danlu_agent_job_info"]
    assert info["job_id"] == job_id and info["run_id"] == run_id
    one = {"run_id": run_id}
    assert got["danlu_train_epoch"] == [(one, 2.0)]
    assert got["danlu_train_epochs_total"] == [(one, 4.0)]
    assert got["danlu_train_progress_ratio"] == [(one, 0.5)]
    assert got["danlu_train_running"] == [(one, 1.0)]
    losses = {labels["split"]: value for labels, value in got["danlu_train_loss"]}
    assert losses == pytest.approx({"train": 0.5, "val": 0.6})
    assert got["danlu_train_val_metric"] == [({**one, "metric": "accuracy"}, pytest.approx(0.5))]
    assert got["danlu_train_last_progress_timestamp_seconds"] == [(one, pytest.approx(last))]
    [(_, eta)] = got["danlu_train_eta_seconds"]
    assert eta == pytest.approx(10.0, abs=2.0)  # two epochs of 10 s left, 10 s of one gone
    [(labels, _)] = got["danlu_train_info"]
    assert labels["model"] == "mlp" and labels["task"] == "classification"


def test_another_agent_shows_the_queue_but_not_these_runs(queue_db: QueueDb) -> None:
    queue = queue_db.queue()
    _running_job_with_a_run(queue)
    got = _samples(AgentMetrics(queue, lambda: "agent-2"))
    assert got["danlu_agent_running_jobs"] == [({"agent": "agent-2"}, 0.0)]
    assert got["danlu_train_epoch"] == [] and got["danlu_agent_job_info"] == []
    assert {labels["state"]: v for labels, v in got["danlu_jobs"]}["running"] == 1


def test_the_endpoint_serves_them_and_a_taken_port_is_a_clear_error(queue_db: QueueDb) -> None:
    queue = queue_db.queue()
    port = serve_agent_metrics(queue, lambda: "agent-1", 0)
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert 'danlu_jobs{state="queued"} 0.0' in body
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"--metrics-port {busy}: the port is already in use"):
            serve_agent_metrics(queue, lambda: "agent-1", busy)
