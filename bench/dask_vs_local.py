"""The same 20-job batch through the Dask executor and through the local agent.

Each side gets a fresh store (a SQLite file and artifact folder in a temp dir) and the same 20
jobs, submitted in the same order: the wine MLP recipe with a different seed each, and a few
variations (learning rate, hidden width, batch size) so the jobs are not all the same model.

- **local**: ``danlu agent`` (``Agent``) with 2 CPU slots (CPUs pinned, one thread per job).
- **dask**: ``danlu agent --dask`` (``DaskExecutor``) on a ``distributed.LocalCluster`` on
  127.0.0.1: 2 worker processes, ``resources={"CPU": 1}``, one thread each (the cluster is
  started before the clock starts).

Both executors poll every 0.2 s and exit when idle. Checked job by job: the same recipe,
overrides and training params, and the same test metrics (exactly: CPU, one thread, same seed).
Timed: the batch's wall time (executor start to exit) and, per job, its own time (its run's
``started_at`` to ``ended_at``: data, training, evaluation), the time from its claim to its
run's start (the hand-off to a slot or a Dask worker, process start-up, imports) and the rest of
its attempt (claim → recorded outcome, minus the run's own time).
The overhead per job is ``(wall × 2 slots − Σ own times) / jobs``: slot-seconds each job costs
beyond its own run. Sides alternate over ``--reps`` (local, dask, dask, local, ...).

    python bench/dask_vs_local.py [--jobs 20] [--epochs 3] [--reps 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml  # noqa: E402
from _report import machine, write  # noqa: E402

from danlu.jobs import Agent, JobQueue, SlotPool  # noqa: E402
from danlu.jobs._dask import DaskExecutor  # noqa: E402
from danlu.store import SqlStore  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WINE = ROOT / "examples" / "wine_mlp.yaml"
SLOTS = 2
VARIANTS = [
    [],
    ["train.optimizer.lr=0.003"],
    ["model.hidden=[16]"],
    ["train.batch_size=32"],
]


def batch(n: int) -> list[list[str]]:
    """The overrides of each job: its own seed and one of the variants."""
    return [[f"train.seed={i}", *VARIANTS[i % len(VARIANTS)]] for i in range(n)]


def recipe(folder: Path, epochs: int) -> Path:
    data = yaml.safe_load(WINE.read_text())
    data["train"]["epochs"] = epochs
    data["train"].pop("early_stopping", None)  # the same epochs for every job
    path = folder / "wine_batch.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_side(side: str, jobs: list[list[str]], epochs: int, client: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        store = SqlStore(f"sqlite:///{tmp}/danlu.db", home=home)
        queue = JobQueue(store)
        path = recipe(Path(tmp), epochs)
        ids = [
            queue.submit(
                recipe=path.read_text(),
                recipe_path=str(path),
                name="wine-batch",
                overrides=overrides,
                workdir=tmp,
            ).id
            for overrides in jobs
        ]
        start = time.perf_counter()
        if side == "local":
            pool = SlotPool(cpu_ids=sorted(os.sched_getaffinity(0))[:SLOTS], memory_gb=4.0)
            Agent(queue, pool=pool, poll_s=0.2, exit_when_idle=True).run()
        else:
            DaskExecutor(queue, client=client, poll_s=0.2, exit_when_idle=True).run()
        wall = time.perf_counter() - start
        rows = []
        for job_id, overrides in zip(ids, jobs, strict=True):
            job = queue.get(job_id)
            assert job.status == "succeeded" and job.attempts == 1, (side, job)
            run = store.get_run(job.run_ids[-1])
            run_start = run.started_at or run.created_at
            own = (run.ended_at or 0.0) - run_start
            attempt = (job.ended_at or 0.0) - (job.started_at or 0.0)
            to_run = run_start - (job.started_at or 0.0)
            rows.append(
                {
                    "job": job_id,
                    "overrides": overrides,
                    "params": {k: str(v) for k, v in sorted(run.params.items())},
                    "test": {k: v for k, v in sorted(run.metrics.items()) if k.startswith("test_")},
                    "own_s": own,
                    "attempt_s": attempt,
                    "claim_to_run_s": to_run,
                }
            )
        store.close()
    own_total = sum(r["own_s"] for r in rows)
    return {
        "side": side,
        "wall_s": wall,
        "jobs": rows,
        "overhead_per_job_s": (wall * SLOTS - own_total) / len(rows),
        "median_own_s": statistics.median(r["own_s"] for r in rows),
        "median_outside_run_s": statistics.median(r["attempt_s"] - r["own_s"] for r in rows),
        "median_claim_to_run_s": statistics.median(r["claim_to_run_s"] for r in rows),
    }


def same_results(a: dict[str, Any], b: dict[str, Any]) -> int:
    """Assert the two sides made the same runs with the same test metrics; jobs compared."""
    for ra, rb in zip(a["jobs"], b["jobs"], strict=True):
        assert ra["overrides"] == rb["overrides"]
        assert ra["params"] == rb["params"], (ra["overrides"], ra["params"], rb["params"])
        assert ra["test"] and ra["test"] == rb["test"], (ra["overrides"], ra["test"], rb["test"])
    return len(a["jobs"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args()

    import distributed

    jobs = batch(args.jobs)
    cluster = distributed.LocalCluster(
        n_workers=SLOTS,
        processes=True,
        threads_per_worker=1,
        resources={"CPU": 1},
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        silence_logs=logging.ERROR,
    )
    client = distributed.Client(cluster, set_as_default=False)
    results: dict[str, list[dict[str, Any]]] = {"local": [], "dask": []}
    try:
        for rep in range(args.reps):
            order = ["local", "dask"] if rep % 2 == 0 else ["dask", "local"]
            for side in order:
                result = run_side(side, jobs, args.epochs, client)
                results[side].append(result)
                print(
                    f"rep {rep} {side}: wall {result['wall_s']:.1f} s, overhead/job "
                    f"{result['overhead_per_job_s']:.2f} s",
                    flush=True,
                )
            compared = same_results(results["local"][-1], results["dask"][-1])
    finally:
        client.close()
        cluster.close()

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in results[side])

    ratio = statistics.median(
        d["wall_s"] / lo["wall_s"] for d, lo in zip(results["dask"], results["local"], strict=True)
    )
    header = [
        "executor",
        "wall time (s)",
        "jobs",
        "median run's own time (s)",
        "median claim → run start (s)",
        "median attempt outside the run (s)",
        "overhead per job (slot-s)",
    ]
    rows = [
        [
            "local agent (2 CPU slots)",
            f"{med('local', 'wall_s'):.1f}",
            args.jobs,
            f"{med('local', 'median_own_s'):.2f}",
            f"{med('local', 'median_claim_to_run_s'):.2f}",
            f"{med('local', 'median_outside_run_s'):.2f}",
            f"{med('local', 'overhead_per_job_s'):.2f}",
        ],
        [
            "Dask executor (LocalCluster, 2 workers x CPU=1)",
            f"{med('dask', 'wall_s'):.1f}",
            args.jobs,
            f"{med('dask', 'median_own_s'):.2f}",
            f"{med('dask', 'median_claim_to_run_s'):.2f}",
            f"{med('dask', 'median_outside_run_s'):.2f}",
            f"{med('dask', 'overhead_per_job_s'):.2f}",
        ],
        ["**ratio dask / local (wall, median of reps)**", f"**{ratio:.3f}**", "", "", "", "", ""],
    ]
    extra = med("dask", "overhead_per_job_s") - med("local", "overhead_per_job_s")
    notes = (
        f"Same runs and test metrics job by job: {compared} of {args.jobs} jobs compared, all "
        f"identical ({args.reps} rep(s), {args.epochs} epochs each). The Dask executor's "
        f"overhead beyond the local agent's: {extra:+.2f} slot-seconds per job."
    )
    payload = {
        "machine": machine(),
        "args": vars(args),
        "identical_jobs": compared,
        "ratio_wall_dask_over_local": ratio,
        "dask_extra_overhead_per_job_s": extra,
        "results": results,
    }
    path = write("dask_vs_local", payload, header, rows, notes)
    print(path.read_text())


if __name__ == "__main__":
    main()
