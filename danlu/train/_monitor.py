"""A training run's progress for Prometheus (``train.metrics``, off by default).

:class:`TrainingMetrics` is an engine callback: the hooks only store a few numbers (the batch
hook costs a clock read; the batch loss is read at most once a second), and the ``danlu_train_*``
series are computed when Prometheus scrapes (or when a push is due), from those numbers, the
clock and the run's :class:`~danlu.train.EnergyMeter`:

- ``danlu_train_info{run_id,recipe,model,task,stage,headline}`` (always 1) and
  ``danlu_train_running{run_id}`` (1 while training, 0 once it ended);
- ``danlu_train_epoch`` (epochs done) and ``danlu_train_epochs_total`` (``train.epochs``);
  ``danlu_train_progress_ratio`` (0..1, batch by batch);
- ``danlu_train_loss{split="train"|"val"}`` (the last epoch's), ``danlu_train_batch_loss`` (a
  recent batch's), ``danlu_train_val_metric{metric}`` (every validation metric, e.g. accuracy) and
  ``danlu_train_headline{metric}`` (the task's headline metric on the validation split);
- ``danlu_train_samples_per_second`` (training rows per second over the epoch so far, validation
  excluded), ``danlu_train_eta_seconds`` (to the last epoch at this session's pace: an upper
  bound under early stopping), ``danlu_train_elapsed_seconds``;
- ``danlu_train_energy_joules`` (this session's energy so far, as the run records it at its end);
- ``danlu_train_last_progress_timestamp_seconds`` (unix time of the latest batch or epoch end:
  ``time() - it`` growing while ``running`` is 1 is a stalled run) and
  ``danlu_train_start_timestamp_seconds``.

Every series carries ``run_id``. The endpoint (``train.metrics.port``) is an HTTP server in a
daemon thread, started once per address in a process and kept until the process ends: the runs
a process trains one after another (tuning trials) show there in turn, and the last one's final
values stay readable. A push (``train.metrics.push``) goes to a Pushgateway under
``job="danlu_train"`` grouped by ``run_id``, every ``push_every_s`` seconds, at each epoch's end
and when training ends; a gateway that cannot be reached is logged, never fatal.
"""

from __future__ import annotations

import errno
import math
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from danlu.errors import ConfigError
from danlu.logging import get_logger
from danlu.train._callbacks import Callback

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from danlu.config._metrics import MetricsConfig
    from danlu.train._energy import EnergyMeter
    from danlu.train._runner import Context

__all__ = [
    "PUSH_JOB",
    "TrainingMetrics",
    "end_training_metrics",
    "metrics_endpoint",
    "training_metrics",
]

log = get_logger(__name__)

PUSH_JOB = "danlu_train"  # the Pushgateway's job label of pushed runs
_LOSS_EVERY_S = 1.0  # the batch loss is read (a device sync) at most this often
_INSTALL = (
    "train.metrics needs prometheus-client, which comes with the serve extra: "
    "pip install 'danlu[serve]' (or pip install prometheus-client)."
)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigError(_INSTALL) from exc
    return prometheus_client


class _Endpoint:
    """One ``/metrics`` HTTP server of this process and the run it shows now."""

    def __init__(self, host: str, port: int) -> None:
        prometheus_client = _prometheus()
        self.host, self.port = host, port
        self.current: TrainingMetrics | None = None
        self.registry = prometheus_client.CollectorRegistry()
        self.registry.register(_Collector(lambda: self.current))
        try:
            self.server, self.thread = prometheus_client.start_http_server(
                port, addr=host, registry=self.registry
            )
        except socket.gaierror as exc:
            raise ConfigError(
                f"train.metrics.host {host!r} is not an address of this machine ({exc}). Use "
                "127.0.0.1 (the default) or this machine's address."
            ) from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"train.metrics: port {port} on {host} is already in use (another run, a "
                    "server or a second worker listens there). Choose a free port "
                    "(train.metrics.port, or danlu run --metrics-port N), or stop what listens."
                ) from None
            raise ConfigError(
                f"train.metrics: cannot listen on {host}:{port} ({exc.strerror or exc}). Use "
                "train.metrics.host: 127.0.0.1 (the default) or an address of this machine."
            ) from None
        log.info("training metrics at http://%s:%d/metrics", host, self.server.server_port)


_ENDPOINTS: dict[tuple[str, int], _Endpoint] = {}
_ENDPOINTS_LOCK = threading.Lock()


def metrics_endpoint(config: MetricsConfig) -> _Endpoint | None:
    """The process's endpoint for ``config`` (started on first use), or None without a port.

    Raises ConfigError when the port is taken, the host is not this machine's, or
    prometheus-client is missing.
    """
    if config.port is None:
        _prometheus()  # a push needs it too: say so before training
        return None
    key = (config.host, config.port)
    with _ENDPOINTS_LOCK:
        endpoint = _ENDPOINTS.get(key)
        if endpoint is None:
            endpoint = _ENDPOINTS[key] = _Endpoint(*key)
    return endpoint


class TrainingMetrics(Callback):
    """Keeps a run's progress for the ``danlu_train_*`` series (module docstring).

    Args:
        config: the recipe's ``train.metrics``.
        labels: ``run_id``, ``recipe``, ``model``, ``task``, ``stage`` and ``headline`` (the
            task's headline metric, e.g. ``accuracy``).
        rows: training rows per epoch (all ranks'), for the throughput.
        meter: the run's energy meter (read at scrape time), when it has one.
        epochs: ``train.epochs``, shown before training starts.

    Example:
        >>> from danlu.config._metrics import MetricsConfig
        >>> config = MetricsConfig(push="http://127.0.0.1:9091")
        >>> cb = TrainingMetrics(config, labels={"run_id": "r1"}, rows=100)
        >>> any(f.name == "danlu_train_running" for f in cb.families())
        True
    """

    def __init__(
        self,
        config: MetricsConfig,
        *,
        labels: dict[str, str],
        rows: int,
        meter: EnergyMeter | None = None,
        epochs: int = 0,
    ) -> None:
        self.config = config
        self.labels = dict(labels)
        self.run_id = self.labels.get("run_id", "")
        self.rows = rows
        self.meter = meter
        self.running = False
        self.epochs_total = epochs  # train.epochs; the engine's own count from fit's start
        self.num_batches = 0
        self.epoch = 0  # epochs done
        self.batch = 0  # batches done in the epoch under way
        self.start_progress = 0.0  # epochs done when this session started (resumed runs)
        self.started = time.time()
        self._t0 = time.monotonic()
        self._epoch_t0 = self._t0
        self._last_t = self._t0  # monotonic time of the latest progress
        self.last_progress = self.started  # the same, as a unix time
        self._loss_at = -math.inf
        self.batch_loss: float | None = None
        self.throughput: float | None = None
        self.metrics: dict[str, float] = {}
        self._push_stop = threading.Event()
        self._push_wake = threading.Event()
        self._pusher: threading.Thread | None = None
        self._push_registry: CollectorRegistry | None = None

    # -- the hooks: store numbers, nothing more --------------------------------------------------
    def on_fit_start(self, trainer: Any) -> None:
        self.epochs_total = int(trainer.config.epochs)
        self.num_batches = int(getattr(trainer, "num_batches", 0) or 0)
        self.epoch = self.start_progress = int(getattr(trainer, "epoch", 0) or 0)
        self.batch, self.running = 0, True
        self._t0 = self._epoch_t0 = self._last_t = time.monotonic()
        self.started = self.last_progress = time.time()
        if self.config.push is not None:
            self._start_pushing()

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        self.batch = 0
        self._epoch_t0 = time.monotonic()

    def on_batch_end(self, trainer: Any, batch: int, loss: torch.Tensor) -> None:
        now = time.monotonic()
        self.batch, self._last_t = batch + 1, now
        if now - self._loss_at >= _LOSS_EVERY_S:  # .item() waits for the device: rarely
            self._loss_at = now
            self.batch_loss = float(loss.item())
            self.last_progress = time.time()
            self._update_throughput(now)

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        if self.num_batches:
            self.batch = self.num_batches
            self._update_throughput(self._last_t)
        self.epoch, self.metrics = epoch, dict(metrics)
        self._last_t, self.last_progress = now, time.time()
        self.batch = 0
        if self._pusher is not None:  # the pusher's thread pushes: a slow gateway waits there
            self._push_wake.set()

    def on_fit_end(self, trainer: Any) -> None:
        self.running = False
        self.last_progress = time.time()
        self._stop_pushing()

    def _update_throughput(self, now: float) -> None:
        if self.num_batches and now > self._epoch_t0 and self.rows:
            done = self.rows * self.batch / self.num_batches
            self.throughput = done / (now - self._epoch_t0)

    # -- the series, computed when asked for -----------------------------------------------------
    def progress(self) -> float:
        """Epochs done, counting the epoch under way by its batches."""
        part = self.batch / self.num_batches if self.num_batches else 0.0
        return min(self.epoch + part, float(self.epochs_total or self.epoch + part))

    def eta_seconds(self) -> float | None:
        """Seconds to the last epoch at this session's pace; None until there is a pace."""
        if not self.running:
            return 0.0
        done = self.progress() - self.start_progress
        elapsed = self._last_t - self._t0
        if done <= 0 or elapsed <= 0 or not self.epochs_total:
            return None
        left = max(self.epochs_total - self.progress(), 0.0)
        return left * elapsed / done

    def families(self) -> list[Any]:
        """The ``danlu_train_*`` metric families as they stand now."""
        from prometheus_client.core import GaugeMetricFamily

        run = [self.run_id]

        def gauge(name: str, doc: str, value: float | None, **extra: str) -> Any:
            family = GaugeMetricFamily(name, doc, labels=["run_id", *extra])
            if value is not None and math.isfinite(value):
                family.add_metric([*run, *extra.values()], float(value))
            return family

        info_keys = ["run_id", "recipe", "model", "task", "stage", "headline"]
        info = GaugeMetricFamily(
            "danlu_train_info", "The run: recipe, model, task, stage, headline.", labels=info_keys
        )
        info.add_metric([str(self.labels.get(k, "")) for k in info_keys], 1.0)
        loss = GaugeMetricFamily(
            "danlu_train_loss", "The last epoch's mean loss.", labels=["run_id", "split"]
        )
        for split in ("train", "val"):
            value = self.metrics.get(f"{split}_loss")
            if value is not None and math.isfinite(value):
                loss.add_metric([*run, split], value)
        val = GaugeMetricFamily(
            "danlu_train_val_metric",
            "The last epoch's validation metrics.",
            labels=["run_id", "metric"],
        )
        for key, value in self.metrics.items():
            if key.startswith("val_") and key != "val_loss" and math.isfinite(value):
                val.add_metric([*run, key[4:]], value)
        headline = self.labels.get("headline", "")
        energy = None
        if self.meter is not None and self.running:
            try:
                energy = self.meter.read().joules
            except Exception as exc:  # a counter gone unreadable: the series is left out
                log.debug("energy not readable: %s", exc)
        elif self.meter is not None and (final := getattr(self.meter, "reading", None)):
            energy = final.joules
        return [
            info,
            gauge("danlu_train_running", "1 while the run trains, 0 once it ended.", self.running),
            gauge("danlu_train_epoch", "Epochs done.", self.epoch),
            gauge("danlu_train_epochs_total", "Epochs to train (train.epochs).", self.epochs_total),
            gauge(
                "danlu_train_progress_ratio",
                "Share of the epochs done, batch by batch.",
                self.progress() / self.epochs_total if self.epochs_total else None,
            ),
            loss,
            gauge("danlu_train_batch_loss", "A recent training batch's loss.", self.batch_loss),
            val,
            gauge(
                "danlu_train_headline",
                "The task's headline metric on the validation split (last epoch).",
                self.metrics.get(f"val_{headline}"),
                metric=headline,
            ),
            gauge(
                "danlu_train_samples_per_second",
                "Training rows per second over the epoch so far (validation excluded).",
                self.throughput,
            ),
            gauge(
                "danlu_train_eta_seconds",
                "Seconds left to the last epoch at this session's pace.",
                self.eta_seconds(),
            ),
            gauge(
                "danlu_train_elapsed_seconds",
                "Seconds since this session's training started.",
                (time.monotonic() if self.running else self._last_t) - self._t0,
            ),
            gauge("danlu_train_energy_joules", "Energy of this session so far (joules).", energy),
            gauge(
                "danlu_train_last_progress_timestamp_seconds",
                "Unix time of the latest progress (a batch, an epoch, the end).",
                self.last_progress,
            ),
            gauge(
                "danlu_train_start_timestamp_seconds",
                "Unix time this session's training started.",
                self.started,
            ),
        ]

    # -- the Pushgateway ---------------------------------------------------------------------
    def push(self) -> None:
        """Push the series now (when ``train.metrics.push`` is set); failures are logged."""
        if self.config.push is None:
            return
        from prometheus_client import push_to_gateway

        if self._push_registry is None:
            from prometheus_client import CollectorRegistry

            self._push_registry = CollectorRegistry()
            self._push_registry.register(_Collector(lambda: self))
        try:
            push_to_gateway(
                self.config.push,
                job=PUSH_JOB,
                registry=self._push_registry,
                grouping_key={"run_id": self.run_id},
                timeout=5,
            )
        except Exception as exc:  # a gateway down never stops training
            log.warning("could not push training metrics to %s: %s", self.config.push, exc)

    def _start_pushing(self) -> None:
        """Push from a thread: at the start, every ``push_every_s``, when an epoch ends (woken),
        and once more with the final values when stopped."""
        self._push_stop.clear()
        self._push_wake.set()  # the first push at once

        def loop() -> None:
            while True:
                self._push_wake.wait(self.config.push_every_s)
                self._push_wake.clear()
                stopping = self._push_stop.is_set()  # read before: the last push is the final
                self.push()
                if stopping:
                    return

        self._pusher = threading.Thread(target=loop, name="danlu-metrics-push", daemon=True)
        self._pusher.start()

    def _stop_pushing(self) -> None:
        if self._pusher is not None:
            self._push_stop.set()
            self._push_wake.set()
            self._pusher.join(timeout=15)  # a push gives up after 5 s
            self._pusher = None


class _Collector:
    """Yields the families of whichever run ``current()`` returns (none between runs)."""

    def __init__(self, current: Any) -> None:
        self._current = current

    def collect(self) -> Iterator[Any]:
        run = self._current()
        if run is not None:
            yield from run.families()

    def describe(self) -> list[Any]:
        return []  # the series depend on the run shown; nothing to check at registration


def training_metrics(ctx: Context, meter: EnergyMeter | None = None) -> TrainingMetrics | None:
    """The callback for ``ctx``'s run when its recipe has ``train.metrics`` (rank 0 only),
    shown on the process's endpoint from now on and added to ``ctx.callbacks``; else None."""
    from danlu.train._distributed import active_strategy

    recipe, data, task, tracker = ctx.recipe, ctx.data, ctx.task, ctx.tracker
    config = recipe.train.metrics
    if config is None or not active_strategy().is_main:
        return None
    assert data is not None and task is not None and tracker is not None
    endpoint = metrics_endpoint(config)
    rows = len(data.x_train) if data.stream is None else int(data.stream.rows["train"])
    labels = {
        "run_id": tracker.run_id,
        "recipe": recipe.name,
        "model": recipe.model.type,
        "task": recipe.task,
        "stage": ctx.run_stage,
        "headline": str(getattr(task, "headline", "")),
    }
    callback = TrainingMetrics(
        config, labels=labels, rows=rows, meter=meter, epochs=recipe.train.epochs
    )
    if endpoint is not None:
        endpoint.current = callback
    ctx.callbacks = (*ctx.callbacks, callback)
    return callback


def end_training_metrics(ctx: Context, callback: TrainingMetrics | None) -> None:
    """After training (or its failure): ``running`` 0 (the energy: the meter's final reading),
    and the callback
    out of ``ctx.callbacks`` (later stages, e.g. compression's fine-tuning, train without it)."""
    if callback is None:
        return
    callback.running = False
    ctx.callbacks = tuple(cb for cb in ctx.callbacks if cb is not callback)
