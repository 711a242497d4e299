"""Prometheus metrics of the server, in a registry of its own (one per app).

Series (``version`` is a label, so a canary's traffic is told apart from the primary's):

- ``danlu_requests_total{model,version,code}``: predict requests answered, by HTTP status;
- ``danlu_request_seconds{model,version}``: predict latency, from body read to response;
- ``danlu_batch_rows{model,version}``: rows per micro-batch when the model reports its batches,
  else rows per request;
- ``danlu_queue_depth{model}``: requests waiting for a micro-batch (read at scrape time);
- ``danlu_drift_psi{model,version,feature}``: input drift per feature (read at scrape time and
  when ``/drift`` is asked);
- ``danlu_errors_total{model,code}``: failed predict requests by error code (``invalid_json``,
  ``queue_full``, ``timeout``, ...).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from danlu.serve._types import ServedModelLike

__all__ = ["ServeMetrics"]

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
UNKNOWN = "_unknown"  # the model label of requests for a model that is not served


class ServeMetrics:
    """The server's counters, histograms and gauges.

    Args:
        registry: where the series live; a fresh ``CollectorRegistry`` when None, so two apps in
            one process (tests) never share counts.

    Example:
        >>> m = ServeMetrics()
        >>> m.observe_request("wine", 3, 200, 0.004, rows=1)
        >>> b"danlu_requests_total" in m.render()[0]
        True
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "danlu_requests", "Predict requests answered.", ["model", "version", "code"], registry=r
        )
        self.latency = Histogram(
            "danlu_request_seconds",
            "Predict request latency in seconds.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "danlu_batch_rows",
            "Rows per micro-batch (rows per request when the model does not report batches).",
            ["model", "version"],
            buckets=ROW_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "danlu_queue_depth", "Requests waiting for a micro-batch.", ["model"], registry=r
        )
        self.drift_psi = Gauge(
            "danlu_drift_psi",
            "Population stability index of an input feature against the training data.",
            ["model", "version", "feature"],
            registry=r,
        )
        self.errors = Counter(
            "danlu_errors", "Failed predict requests by error code.", ["model", "code"], registry=r
        )
        # label lookups cost a lock and a dict each; the hot path keeps its children here
        self._children: dict[tuple[Any, ...], Any] = {}
        self._request_children: dict[tuple[Any, ...], tuple[Any, Any, Any]] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_request(
        self, model: str, version: int | str, status: int, seconds: float, rows: int | None = None
    ) -> None:
        """Count one predict request (and its rows, when the model does not report batches)."""
        key = (model, version, status)
        children = self._request_children.get(key)
        if children is None:
            v = str(version)
            children = (
                self._child(self.requests, model, v, str(status)),
                self._child(self.latency, model, v),
                self._child(self.batch_rows, model, v),
            )
            if len(self._request_children) > 4096:  # bounded, whatever the labels
                self._request_children.clear()
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if rows is not None:
            children[2].observe(rows)

    def observe_error(self, model: str, code: str) -> None:
        self._child(self.errors, model, code).inc()

    def observe_batch(self, model: str, version: int | str, rows: int) -> None:
        """Record one micro-batch's size (for a model that reports its batches)."""
        self._child(self.batch_rows, model, str(version)).observe(rows)

    def update_models(self, models: Iterable[tuple[str, ServedModelLike]]) -> None:
        """Refresh the gauges (queue depth, drift) from the served models: (name, model) pairs,
        primaries and canaries alike. Series of models no longer served disappear."""
        self.queue_depth.clear()
        self.drift_psi.clear()
        depth: dict[str, int] = {}
        for name, served in models:
            depth[name] = depth.get(name, 0) + int(served.queue_depth())
            self.set_drift(name, served.version, served.drift())
        for name, value in depth.items():
            self.queue_depth.labels(name).set(value)

    def set_drift(self, model: str, version: int | str, report: dict[str, Any]) -> None:
        """Set ``danlu_drift_psi`` from a model's drift report (features without a PSI yet are
        left out)."""
        for feature in report.get("features", ()):
            psi = feature.get("psi")
            if isinstance(psi, int | float) and not math.isnan(psi):
                self.drift_psi.labels(model, str(version), str(feature.get("feature"))).set(psi)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
