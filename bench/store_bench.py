"""The run store under load: metric logging throughput and run search over 10,000 runs.

(a) One run logs 100,000 metric points (4 keys x 25,000 steps) through ``SqlStore.log_metrics``,
    in batches of 1,000 and of 100 (the tracker writes one batch per flush). Target: <= 2 s on
    SQLite for batches of 1,000.
(b) 10,000 finished runs, each with 10 params, 3 latest metrics and a short history, are written
    straight into the store's tables (SQLAlchemy Core on ``danlu.store._tables``: through the API
    it would take minutes), then ``search_runs("metrics.test_accuracy > 0.9 and params.model.type
    = 'cnn'", order_by=["-metrics.test_accuracy"], limit=50)`` is timed (median of 5 after one
    warm-up call). Target: <= 0.5 s.

Each backend gets a fresh database: a SQLite file in a temp folder and, with ``--pg URL``, a new
PostgreSQL database on that server (created and dropped here).

    python bench/store_bench.py [--pg postgresql+psycopg://danlu:danlu@127.0.0.1:5432/danlu_test]
        [--runs 10000] [--points 100000] [--reps 5]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine, write  # noqa: E402
from sqlalchemy import create_engine, insert, make_url, text  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from danlu.store import MetricPoint, SqlStore  # noqa: E402
from danlu.store import _tables as t  # noqa: E402

QUERY = "metrics.test_accuracy > 0.9 and params.model.type = 'cnn'"
ORDER = ["-metrics.test_accuracy"]
KEYS = ("loss", "val_loss", "accuracy", "lr")


@contextlib.contextmanager
def fresh_database(kind: str, pg_url: str | None) -> Iterator[tuple[str, str]]:
    """(database URL, home folder) of a fresh store; removed afterwards."""
    with tempfile.TemporaryDirectory() as home:
        if kind == "sqlite":
            yield f"sqlite:///{home}/danlu.db", home
            return
        assert pg_url is not None
        url = make_url(pg_url)
        if "+" not in url.drivername:
            url = url.set(drivername="postgresql+psycopg")
        name = f"danlu_bench_{secrets.token_hex(4)}"
        admin = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield url.set(database=name).render_as_string(hide_password=False), home
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def bench_logging(store: SqlStore, points: int, batch: int) -> dict[str, Any]:
    """Log ``points`` values (4 keys per step) for one new run in batches of ``batch``."""
    run = store.create_run(experiment="bench-logging", name=f"batch-{batch}").id
    steps = points // len(KEYS)
    every = [
        MetricPoint(key, 1.0 / (step + 1) + i, step, step // 100, 0.0)
        for step in range(steps)
        for i, key in enumerate(KEYS)
    ]
    start = time.perf_counter()
    for first in range(0, len(every), batch):
        store.log_metrics(run, every[first : first + batch])
    seconds = time.perf_counter() - start
    stored = len(store.metric_history(run))
    assert stored == len(every), f"{stored} of {len(every)} points stored"
    return {
        "points": len(every),
        "batch": batch,
        "seconds": seconds,
        "points_per_s": len(every) / seconds,
    }


def populate(store: SqlStore, runs: int, seed: int = 0) -> float:
    """Write ``runs`` finished runs with params and metrics straight into the tables."""
    rng = random.Random(seed)
    start = time.perf_counter()
    now = time.time() - runs
    with store.engine.begin() as conn:
        experiment = conn.execute(
            insert(t.experiments).values(name="bench-search", created_at=now)
        ).inserted_primary_key[0]  # type: ignore[index]
        for chunk in range(0, runs, 1000):
            run_rows, params, latest, history = [], [], [], []
            for i in range(chunk, min(chunk + 1000, runs)):
                run_id = f"bench-{i:06d}"
                created = now + i
                run_rows.append(
                    {
                        "id": run_id,
                        "experiment_id": experiment,
                        "name": f"trial-{i}",
                        "stage": "train",
                        "status": "finished",
                        "created_at": created,
                        "started_at": created,
                        "ended_at": created + 60,
                        "heartbeat_at": created + 60,
                        "packages": "{}",
                    }
                )
                values = {
                    "model.type": rng.choice(["cnn", "mlp", "transformer", "lstm"]),
                    "model.dropout": str(rng.choice([0.0, 0.1, 0.25, 0.5])),
                    "model.hidden": rng.choice(["[64]", "[128, 64]", "[256, 128]"]),
                    "train.optimizer.name": rng.choice(["adamw", "sgd"]),
                    "train.optimizer.lr": str(10 ** rng.uniform(-4, -2)),
                    "train.batch_size": str(rng.choice([32, 64, 128])),
                    "train.epochs": str(rng.choice([10, 20, 30])),
                    "train.seed": str(i),
                    "data.source": "builtin:digits",
                    "data.split.test": "0.2",
                }
                params += [{"run_id": run_id, "key": k, "value": v} for k, v in values.items()]
                accuracy = rng.uniform(0.5, 1.0)
                metrics = {"test_accuracy": accuracy, "val_loss": 1 - accuracy, "epoch_s": 1.0}
                latest += [
                    {"run_id": run_id, "key": k, "value": v, "step": 10, "time": created}
                    for k, v in metrics.items()
                ]
                history += [
                    {
                        "run_id": run_id,
                        "key": k,
                        "value": v * step / 10,
                        "step": step,
                        "epoch": step,
                        "time": created + step,
                    }
                    for step in range(1, 11)
                    for k, v in metrics.items()
                ]
            conn.execute(insert(t.runs), run_rows)
            conn.execute(insert(t.params), params)
            conn.execute(insert(t.latest_metrics), latest)
            conn.execute(insert(t.metrics), history)
    if store.engine.dialect.name == "postgresql":
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))  # as autovacuum would soon after a bulk load
    return time.perf_counter() - start


def bench_search(store: SqlStore, reps: int) -> dict[str, Any]:
    def once() -> tuple[float, list[Any]]:
        start = time.perf_counter()
        found = store.search_runs(QUERY, order_by=ORDER, limit=50)
        return time.perf_counter() - start, found

    cold, found = once()
    times = [once()[0] for _ in range(reps)]
    accuracies = [r.metrics["test_accuracy"] for r in found]
    assert len(found) == 50 and accuracies == sorted(accuracies, reverse=True)
    assert all(
        a > 0.9 and r.params["model.type"] == "cnn" for a, r in zip(accuracies, found, strict=True)
    )
    return {
        "query": QUERY,
        "order_by": ORDER,
        "limit": 50,
        "cold_s": cold,
        "seconds": times,
        "median_s": statistics.median(times),
    }


def run_backend(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"backend": kind}
    with fresh_database(kind, args.pg) as (url, home), SqlStore(url, home=home) as store:
        result["logging"] = [bench_logging(store, args.points, b) for b in (1000, 100)]
        result["populate_s"] = populate(store, args.runs)
        result["search"] = bench_search(store, args.reps)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pg", metavar="URL", help="also run on this PostgreSQL server")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()

    backends = ["sqlite"] + (["postgresql"] if args.pg else [])
    results = [run_backend(kind, args) for kind in backends]
    targets = {"log_1000_s": 2.0, "search_s": 0.5}
    rows = []
    for r in results:
        for log in r["logging"]:
            target = targets["log_1000_s"] if log["batch"] == 1000 else None
            rows.append(
                [
                    r["backend"],
                    f"log {log['points']:,} points, batches of {log['batch']:,}",
                    f"{log['seconds']:.2f}",
                    f"{log['points_per_s']:,.0f} points/s",
                    f"<= {target} s" if target and r["backend"] == "sqlite" else "",
                ]
            )
        search = r["search"]
        rows.append(
            [
                r["backend"],
                f"search {args.runs:,} runs (median of {args.reps})",
                f"{search['median_s']:.3f}",
                f"cold {search['cold_s']:.3f} s; load {r['populate_s']:.1f} s",
                f"<= {targets['search_s']} s",
            ]
        )
    payload = {
        "benchmark": "store_bench",
        "setup": {"runs": args.runs, "points": args.points, "reps": args.reps, "keys": KEYS},
        "machine": machine(),
        "targets": targets,
        "results": results,
    }
    command = "python bench/store_bench.py" + (" --pg URL" if args.pg else "")
    path = write(
        "store_bench",
        payload,
        ["backend", "what", "seconds", "detail", "target"],
        rows,
        notes=f"Search: `{QUERY}`, order by `{ORDER[0]}`, limit 50. Command: `{command}`",
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
