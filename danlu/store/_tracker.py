"""The ``Tracker`` seam every stage logs through, backed by the store.

Metrics are buffered in memory and written in one batch per flush, so tracking stays off the
training hot path: the engine flushes before each checkpoint and at the end, and the tracker
itself at least every ``FLUSH_EVERY_S`` seconds while metrics come (so readers such as ``danlu
agent --metrics-port`` see a run's epochs without checkpoints too). A background thread sends a
heartbeat so a run whose process dies is marked ``interrupted`` by the next reader.
"""

from __future__ import annotations

import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from danlu.logging import get_logger
from danlu.store._entities import MetricPoint
from danlu.store.base import Store

__all__ = ["StoreTracker", "Tracker", "flatten_params"]

log = get_logger(__name__)

FLUSH_EVERY_S = 5.0  # the longest buffered metrics wait for a write while more keep coming


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"optimizer": {"lr": 1e-3}}}`` → ``{"train.optimizer.lr": 1e-3}``.

    Example:
        >>> flatten_params({"a": {"b": 1}, "c": [2]})
        {'a.b': 1, 'c': [2]}
    """
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, name + "."))
        else:
            flat[name] = value
    return flat


class Tracker(ABC):
    """What a stage records about its run. Writes may be buffered; ``flush`` forces them out."""

    run_id: str

    @abstractmethod
    def log_params(self, params: Mapping[str, Any]) -> None: ...

    @abstractmethod
    def log_metrics(
        self, metrics: Mapping[str, float], step: int, epoch: int | None = None
    ) -> None: ...

    @abstractmethod
    def log_artifact(self, name: str, data: bytes | str) -> Path:
        """Store ``data`` under ``name`` atomically and return where it lives."""

    @abstractmethod
    def artifact_path(self, name: str) -> Path:
        """Where the artifact ``name`` lives (validated; it may not exist yet)."""

    @abstractmethod
    def record_artifact(self, name: str) -> None:
        """Record a file a stage wrote itself (atomically) at ``artifact_path(name)``."""

    @abstractmethod
    def set_status(self, status: str, *, error: str | None = None) -> None:
        """``running``, ``finished``, ``failed`` or ``interrupted``."""

    @abstractmethod
    def flush(self) -> None: ...


class StoreTracker(Tracker):
    """Tracks one run in a :class:`~danlu.store.base.Store`.

    Example:
        >>> # tracker = StoreTracker(store, store.create_run(experiment="x", name="x").id)
        >>> # tracker.log_metrics({"loss": 0.3}, step=1); tracker.flush()
    """

    def __init__(
        self, store: Store, run_id: str, *, heartbeat_interval: float | None = None
    ) -> None:
        self.store = store
        self.run_id = run_id
        self._pending: list[MetricPoint] = []
        self._flushed_at = time.monotonic()
        interval = (
            heartbeat_interval
            if heartbeat_interval is not None
            else float(os.environ.get("DANLU_HEARTBEAT_INTERVAL", "15"))
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(interval,), name=f"danlu-heartbeat-{run_id}", daemon=True
        )
        self._thread.start()

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.store.heartbeat(self.run_id)
            except Exception as exc:  # never kill training over a missed heartbeat
                log.warning("heartbeat for run %s failed: %s", self.run_id, exc)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.store.log_params(self.run_id, flatten_params(params))

    def log_metrics(
        self, metrics: Mapping[str, float], step: int, epoch: int | None = None
    ) -> None:
        now = time.time()
        self._pending.extend(
            MetricPoint(k, float(v), step, epoch, now)
            for k, v in metrics.items()
            if k not in {"epoch", "step"}
        )
        if time.monotonic() - self._flushed_at >= FLUSH_EVERY_S:  # at most one write per interval
            self.flush()

    def flush(self) -> None:
        self._flushed_at = time.monotonic()
        if self._pending:
            batch, self._pending = self._pending, []
            self.store.log_metrics(self.run_id, batch)

    def log_artifact(self, name: str, data: bytes | str) -> Path:
        payload = data.encode("utf-8") if isinstance(data, str) else data
        self.store.log_artifact(self.run_id, name, payload)
        return self.store.artifact_path(self.run_id, name)

    def artifact_path(self, name: str) -> Path:
        return self.store.artifact_path(self.run_id, name)

    def record_artifact(self, name: str) -> None:
        self.store.record_artifact(self.run_id, name)

    def set_status(self, status: str, *, error: str | None = None) -> None:
        self.flush()
        self.store.set_status(self.run_id, status, error=error)
        if status != "running":
            self.close()

    def close(self) -> None:
        """Stop the heartbeat (the run's status is left as it is)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
