"""``danlu agent --metrics-port``: the job queue and the progress of this agent's runs, for
Prometheus.

Each scrape reads the store (a few queries), so what Prometheus sees is what ``danlu jobs``
would show at that moment, and nothing runs between scrapes:

- ``danlu_jobs{state}``: jobs in the queue by state (every state, 0 included);
- ``danlu_agent_running_jobs{agent}``: attempts running on this agent now;
- ``danlu_agent_job_info{agent,job_id,name,run_id}``: each of them and its run;
- for each such run, the ``danlu_train_*`` series of a run's own endpoint that the store can
  answer (``danlu_train_info``, ``_running``, ``_epoch``, ``_epochs_total``, ``_progress_ratio``,
  ``_loss{split}``, ``_val_metric{metric}``, ``_eta_seconds``, ``_last_progress_timestamp_seconds``,
  ``_start_timestamp_seconds``), so the same dashboard panels and alerts work for queued runs.

Why the store, not each child's own endpoint: the runs already log their epochs there (the
engine flushes its metrics once per epoch), their ports would have to be handed out and
discovered, and an agent on another machine (PostgreSQL) sees the same numbers. What only the
running process knows (the batch loss, throughput, energy so far) is on the run's own endpoint
(``train.metrics``), at epoch granularity here.
"""

from __future__ import annotations

import errno
import math
import socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from danlu.errors import ConfigError
from danlu.jobs._entities import JOB_STATUSES
from danlu.logging import get_logger

if TYPE_CHECKING:
    from danlu.jobs._queue import JobQueue
    from danlu.store import Run

__all__ = ["AgentMetrics", "serve_agent_metrics"]

log = get_logger(__name__)


class AgentMetrics:
    """A Prometheus collector of the queue and of the runs of ``agent_id()``'s running jobs.

    Args:
        queue: the job queue (its store holds the runs).
        agent_id: returns this agent's id ("" before it registered).

    Example:
        >>> # registry.register(AgentMetrics(queue, lambda: agent.report.agent_id))
    """

    def __init__(self, queue: JobQueue, agent_id: Callable[[], str]) -> None:
        self.queue = queue
        self.agent_id = agent_id

    def describe(self) -> list[Any]:
        return []  # read from the store at each scrape; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            counts = self.queue.counts()
            agent = self.agent_id()
            running = (
                [
                    j
                    for j in self.queue.list_jobs(status="running", limit=10_000)
                    if j.agent_id == agent
                ]
                if agent
                else []
            )
        except Exception as exc:  # a busy database: this scrape shows nothing, the next one may
            log.warning("agent metrics: could not read the queue: %s", exc)
            return
        jobs = GaugeMetricFamily("danlu_jobs", "Jobs in the queue by state.", labels=["state"])
        for status in JOB_STATUSES:
            jobs.add_metric([status], float(counts.get(status, 0)))
        yield jobs
        here = GaugeMetricFamily(
            "danlu_agent_running_jobs", "Attempts running on this agent.", labels=["agent"]
        )
        here.add_metric([agent], float(len(running)))
        yield here
        info = GaugeMetricFamily(
            "danlu_agent_job_info",
            "A job running on this agent and its run.",
            labels=["agent", "job_id", "name", "run_id"],
        )
        runs: list[Run] = []
        for job in running:
            run = self._run_of(job.id, job.last_run)
            info.add_metric([agent, job.id, job.name, run.id if run else ""], 1.0)
            if run is not None:
                runs.append(run)
        yield info
        yield from self._run_families(runs)

    def _run_of(self, job_id: str, last: str | None) -> Run | None:
        store = self.queue.store
        try:
            found = store.search_runs(f"tags.job = '{job_id}'", order_by=["created_at"])
            if found:
                return found[-1]
            return store.get_run(last) if last else None
        except Exception as exc:
            log.debug("agent metrics: no run for job %s: %s", job_id, exc)
            return None

    def _run_families(self, runs: list[Run]) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        def family(name: str, doc: str, *labels: str) -> Any:
            return GaugeMetricFamily(name, doc, labels=["run_id", *labels])

        keys = ["run_id", "recipe", "model", "task", "stage", "headline"]
        out = {
            "info": GaugeMetricFamily("danlu_train_info", "The run.", labels=keys),
            "running": family("danlu_train_running", "1 while the run trains."),
            "epoch": family("danlu_train_epoch", "Epochs done."),
            "total": family("danlu_train_epochs_total", "Epochs to train (train.epochs)."),
            "ratio": family("danlu_train_progress_ratio", "Share of the epochs done."),
            "loss": family("danlu_train_loss", "The last epoch's mean loss.", "split"),
            "val": family(
                "danlu_train_val_metric", "The last epoch's validation metrics.", "metric"
            ),
            "eta": family("danlu_train_eta_seconds", "Seconds left at the pace of its epochs."),
            "last": family(
                "danlu_train_last_progress_timestamp_seconds",
                "Unix time of the latest epoch logged (the run's start before one).",
            ),
            "start": family("danlu_train_start_timestamp_seconds", "Unix time the run started."),
        }
        for run in runs:
            self._add_run(out, run)
        yield from out.values()

    def _add_run(self, out: dict[str, Any], run: Run) -> None:
        rid, metrics = run.id, run.metrics
        train = (run.recipe or {}).get("train") or {}
        total = float(train.get("epochs") or 0)
        out["info"].add_metric(
            [
                rid,
                run.experiment,
                run.tags.get("model.type", ""),
                run.tags.get("task", ""),
                run.stage,
                "",
            ],
            1.0,
        )
        out["running"].add_metric([rid], 1.0 if run.status == "running" else 0.0)
        started = run.started_at or run.created_at
        out["start"].add_metric([rid], started)
        try:  # one point per epoch, its step the epoch (the tracker logs no "epoch" key)
            points = self.queue.store.metric_history(rid, "train_loss")
        except Exception:
            points = []
        epoch = float(points[-1].epoch or points[-1].step) if points else 0.0
        out["epoch"].add_metric([rid], epoch)
        if total:
            out["total"].add_metric([rid], total)
            out["ratio"].add_metric([rid], min(epoch / total, 1.0))
        for split in ("train", "val"):
            value = metrics.get(f"{split}_loss")
            if value is not None and math.isfinite(value):
                out["loss"].add_metric([rid, split], value)
        for key, value in metrics.items():
            if key.startswith("val_") and key != "val_loss" and math.isfinite(value):
                out["val"].add_metric([rid, key[4:]], value)
        last = points[-1].time if points else started
        out["last"].add_metric([rid], last)
        if points and total and run.status == "running":
            first = points[0].time if len(points) > 1 else started
            per_epoch = (last - first) / max(len(points) - 1, 1) if len(points) > 1 else None
            if per_epoch is None and epoch > 0:
                per_epoch = (last - started) / epoch
            if per_epoch is not None:
                left = per_epoch * max(total - epoch, 0.0) - (time.time() - last)
                out["eta"].add_metric([rid], max(left, 0.0))


def serve_agent_metrics(
    queue: JobQueue, agent_id: Callable[[], str], port: int, host: str = "127.0.0.1"
) -> int:
    """Serve :class:`AgentMetrics` at ``http://HOST:PORT/metrics`` from a daemon thread;
    returns the port (useful with 0). Raises ConfigError when the port is taken or
    prometheus-client is missing."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError as exc:
        raise ConfigError(
            "--metrics-port needs prometheus-client, which comes with the serve extra: "
            "pip install 'danlu[serve]' (or pip install prometheus-client)."
        ) from exc
    registry = CollectorRegistry()
    registry.register(AgentMetrics(queue, agent_id))
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except socket.gaierror as exc:  # an OSError too: first
        raise ConfigError(
            f"--metrics-host {host!r} is not an address of this machine ({exc})."
        ) from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"--metrics-port {port}: the port is already in use on {host}. Choose a free "
                "port, or stop what listens there."
            ) from None
        raise ConfigError(
            f"--metrics-port {port}: cannot listen on {host}:{port} ({exc.strerror or exc})."
        ) from None
    return int(server.server_port)
