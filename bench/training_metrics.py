"""What ``train.metrics`` costs a training run: the batch hook, a scrape, and whole runs with the
endpoint on against off.

1. The hook: ``TrainingMetrics.on_batch_end`` called 200 000 times (µs per batch; the loss is
   read at most once a second, so almost every call is a clock read and two assignments).
2. A scrape: the ``danlu_train_*`` exposition rendered 2 000 times (ms per scrape; Prometheus
   asks every 15 s by default).
3. Whole runs: digits, an MLP, batch 8 (≈ 1 300 batches over 10 epochs), trained ``--repeats``
   times with ``train.metrics.port`` set and as many times without, alternately; the run's own
   ``train_seconds`` (the training stage's wall time) is compared by medians.

    OMP_NUM_THREADS=1 python bench/training_metrics.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine, write  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hook_us(calls: int = 200_000) -> float:
    import torch

    from danlu.config._metrics import MetricsConfig
    from danlu.train._monitor import TrainingMetrics

    cb = TrainingMetrics(MetricsConfig(port=9101), labels={"run_id": "bench"}, rows=1000)

    class Stub:
        class config:  # noqa: N801 - the Trainer's attribute name
            epochs = 10

        num_batches, epoch = 125, 0

    cb.on_fit_start(Stub())
    loss = torch.tensor(0.5)
    start = time.perf_counter()
    for i in range(calls):
        cb.on_batch_end(Stub, i % 125, loss)
    return (time.perf_counter() - start) / calls * 1e6


def scrape_ms(scrapes: int = 2_000) -> float:
    from prometheus_client import CollectorRegistry, generate_latest

    from danlu.config._metrics import MetricsConfig
    from danlu.train._monitor import TrainingMetrics, _Collector

    cb = TrainingMetrics(MetricsConfig(port=9101), labels={"run_id": "bench"}, rows=1000)
    cb.metrics = {"train_loss": 0.4, "val_loss": 0.5, "val_accuracy": 0.9, "val_f1": 0.88}
    registry = CollectorRegistry()
    registry.register(_Collector(lambda: cb))
    start = time.perf_counter()
    for _ in range(scrapes):
        generate_latest(registry)
    return (time.perf_counter() - start) / scrapes * 1e3


def recipe(metrics: dict[str, Any] | None) -> dict[str, Any]:
    train: dict[str, Any] = {"epochs": 10, "batch_size": 8, "checkpoint": {"every": 0}}
    if metrics:
        train["metrics"] = metrics
    return {
        "name": "digits-metrics-bench",
        "data": {"source": "builtin:digits"},
        "task": "classification",
        "model": {"type": "mlp", "hidden": [64]},
        "train": train,
    }


def train_seconds(metrics: dict[str, Any] | None) -> tuple[float, int]:
    from danlu import pipeline
    from danlu.store import SqlStore

    with tempfile.TemporaryDirectory() as home:
        store = SqlStore(home=home)
        try:
            result = pipeline.run(recipe(metrics), store=store, home=home)
            run = store.get_run(result.run_id)
            batches = int(run.metrics["rows_train"] // 8 + (run.metrics["rows_train"] % 8 > 0))
            return float(run.metrics["train_seconds"]), batches * 10
        finally:
            store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    hook = hook_us()
    scrape = scrape_ms()
    train_seconds({"port": _free_port()})  # warm-up: imports, first allocations
    on, off, batches = [], [], 0
    for _ in range(args.repeats):
        seconds, batches = train_seconds(None)
        off.append(seconds)
        seconds, _ = train_seconds({"port": _free_port()})
        on.append(seconds)
    off_med, on_med = statistics.median(off), statistics.median(on)
    payload = {
        "machine": machine(),
        "hook_us_per_batch": hook,
        "scrape_ms": scrape,
        "batches_per_run": batches,
        "train_seconds_off": off,
        "train_seconds_on": on,
        "median_off": off_med,
        "median_on": on_med,
        "overhead_percent": (on_med / off_med - 1) * 100,
    }
    rows = [
        ["batch hook (µs per batch)", f"{hook:.2f}"],
        ["one scrape (ms)", f"{scrape:.2f}"],
        [f"run without train.metrics (s, median of {args.repeats})", f"{off_med:.3f}"],
        [f"run with train.metrics.port (s, median of {args.repeats})", f"{on_med:.3f}"],
        ["difference", f"{(on_med / off_med - 1) * 100:+.1f}%"],
    ]
    notes = (
        f"digits, MLP [64], batch 8, 10 epochs ({batches} batches), 1 thread; "
        f"runs alternate off/on. Off: {', '.join(f'{s:.3f}' for s in off)}; "
        f"on: {', '.join(f'{s:.3f}' for s in on)}."
    )
    path = write("training_metrics", payload, ["measure", "value"], rows, notes)
    print(path.read_text())


if __name__ == "__main__":
    main()
