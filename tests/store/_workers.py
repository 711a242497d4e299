"""Process bodies for the reliability tests, started with the ``spawn`` context (so they import
little: no pytest, no test module)."""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

from danlu.store import MetricPoint, SqlStore


class _Remember(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def log_metrics_worker(
    url: str, home: str, start: Any, results: Any, points: int, batch: int
) -> None:
    """Open the store when every worker is ready (so the migrations race too), then log
    ``points`` values of one metric in batches, as the tracker does once per epoch."""
    warnings = _Remember()
    logging.getLogger("danlu").addHandler(warnings)
    try:
        start.wait(timeout=60)
        with SqlStore(url, home=home) as store:
            run = store.create_run(experiment="concurrency", name="worker")
            for first in range(0, points, batch):
                store.log_metrics(
                    run.id,
                    [
                        MetricPoint("loss", 1.0 / (step + 1), step)
                        for step in range(first, first + batch)
                    ],
                )
                store.heartbeat(run.id)
    except BaseException:
        results.put(("error", traceback.format_exc(), warnings.messages))
        raise
    results.put(("ok", run.id, warnings.messages))


def heartbeat_worker(url: str, home: str, results: Any) -> None:
    """A run that heartbeats and logs a point every 20 ms until it is killed."""
    with SqlStore(url, home=home) as store:
        run = store.create_run(experiment="killed", name="victim")
        results.put(run.id)
        step = 0
        while True:
            store.heartbeat(run.id)
            store.log_metrics(run.id, [MetricPoint("loss", 1.0 / (step + 1), step)])
            step += 1
            time.sleep(0.02)
