"""Preemption: how soon a high-priority job starts when every slot holds a preemptible one, and
whether the preempted jobs end exactly as uninterrupted runs do.

One ``danlu agent --cpus 2`` (2 slots) on a SQLite store in a temporary DANLU_HOME, for each
agent setting in ``--configs`` (``POLL,LEASE`` pairs: a running attempt renews its lease every
third of it, and reads its job's cancel/preempt flags every second). Each of ``--repeats`` rounds:

1. submits two preemptible priority-0 jobs (``danlu run`` of a wine MLP with dropout and early
   stopping, batch 1, ``--epochs`` epochs, a checkpoint per epoch, seeds of their own) and waits
   until both run and have logged at least ``--warm-epochs`` epochs;
2. submits a priority-10 job (one epoch) and measures the time from just before ``submit`` to its
   start (its claim, as the store records it; also to its run opening, Python start-up included);
3. lets all three finish: the preempted job checkpointed mid-epoch (SIGTERM, exit 75), went back
   to the queue and resumed with ``danlu run --resume``.

Then each preempted job's recipe and seed is run once more directly (``danlu run``, no queue, no
signal): its test metrics, best epoch, epochs run and model weights must equal the preempted
run's exactly.

    python bench/preemption.py [--repeats 3] [--configs "1,30 1,3"] [--epochs 30]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _queue import env_for  # noqa: E402

from _report import machine, write  # noqa: E402

LOW = """\
name: preempt-low
data:
  source: builtin:wine
  split: {{test: 0.2, val: 0.1, stratify: true, seed: 0}}
  prepare: {{scale: standard}}
task: classification
model: {{type: mlp, hidden: [32], dropout: 0.1}}
train:
  epochs: {epochs}
  batch_size: 1
  optimizer: {{name: adam, lr: 1.0e-3}}
  early_stopping: {{monitor: val_loss, patience: 8}}
  checkpoint: {{every: 1}}
  seed: 0
"""
HIGH = """\
name: preempt-high
data:
  source: builtin:wine
  split: {test: 0.2, val: 0.1, stratify: true, seed: 0}
  prepare: {scale: standard}
task: classification
model: {type: mlp, hidden: [16]}
train: {epochs: 1, batch_size: 16, seed: 0}
"""


def wait_for(check: Any, what: str, timeout: float = 600.0, every: float = 0.05) -> Any:
    """Poll ``check()`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise RuntimeError(f"gave up after {timeout:g} s waiting for {what}")


def epochs_logged(store: Any, job: Any) -> int:
    runs = store.search_runs(f"tags.job = '{job.id}'")
    return len(store.metric_history(runs[0].id, "train_loss")) if runs else 0


def child_pid(queue: Any, job_id: str) -> int:
    """The process of the job's current attempt (its log's last "started pid")."""
    text = queue.log_path(job_id).read_text()
    return int(re.findall(r"started pid (\d+)", text)[-1])


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def weights(store: Any, run_id: str) -> dict[str, Any]:
    from safetensors.numpy import load_file

    return load_file(str(store.artifact_root / run_id / "model.safetensors"))


def outcome(store: Any, run_id: str) -> dict[str, Any]:
    run = store.get_run(run_id)
    return {
        "status": run.status,
        "test": {k: v for k, v in run.metrics.items() if k.startswith("test_")},
        "best_epoch": run.metrics.get("best_epoch"),
        "epochs_run": run.metrics.get("epochs_run"),
    }


def scenario(
    tmp: Path, poll: float, lease: float, args: argparse.Namespace, seeds: list[int]
) -> dict[str, Any]:
    """One agent setting: ``args.repeats`` preemptions; the preempted jobs' runs."""
    from danlu.jobs import JobQueue, Resources
    from danlu.store import SqlStore

    home = tmp / f"queue-poll{poll:g}-lease{lease:g}"
    home.mkdir()
    low, high = tmp / "low.yaml", tmp / "high.yaml"
    log = open(home / "agent.log", "w")  # noqa: SIM115 - closed with the process
    agent = subprocess.Popen(
        [sys.executable, "-m", "danlu", "agent", "--cpus", "2", "--poll", str(poll)]
        + ["--lease", str(lease)],
        env=env_for(home),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    store = SqlStore(home=home)
    queue = JobQueue(store)

    def submit(path: Path, seed: int, priority: int, preemptible: bool) -> str:
        return queue.submit(
            recipe=path.read_text(),
            recipe_path=str(path),
            name=path.stem,
            overrides=[f"train.seed={seed}"],
            priority=priority,
            preemptible=preemptible,
            resources=Resources(1, 0, 0.0),
            workdir=str(tmp),
        ).id

    rounds = []
    try:
        wait_for(lambda: queue.agents(live=True), "the agent to start", timeout=180)
        for r in range(args.repeats):
            lows = {submit(low, seeds.pop(0), 0, True): None for _ in range(2)}

            def warm(lows: dict[str, None] = lows) -> bool:
                jobs = [queue.get(j) for j in lows]
                return all(
                    j.status == "running" and epochs_logged(store, j) >= args.warm_epochs
                    for j in jobs
                )

            wait_for(warm, "both slots to hold warm preemptible jobs", every=0.2)
            pids = {j: child_pid(queue, j) for j in lows}
            submitted = time.time()
            urgent = submit(high, 1000 + r, 10, False)
            # the steps in between: the agent asks a victim to stop; its process exits
            flagged: dict[str, float] = {}
            exited: dict[str, float] = {}
            deadline = time.monotonic() + 600
            while (started := queue.get(urgent).started_at) is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("the urgent job did not start within 600 s")
                now = time.time()
                for j in lows:
                    if j not in flagged and queue.get(j).preempt_requested:
                        flagged[j] = now
                    if j in flagged and j not in exited and not alive(pids[j]):
                        exited[j] = now
                time.sleep(0.05)
            run_open = wait_for(
                lambda u=urgent: store.search_runs(f"tags.job = '{u}'"),
                "the urgent job's run",
                every=0.2,
            )[0].created_at
            ids = [*lows, urgent]
            wait_for(
                lambda ids=ids: all(queue.get(j).finished for j in ids),
                "the round's jobs to end",
                every=0.5,
            )
            jobs = [queue.get(j) for j in ids]
            victim = next(iter(flagged), None)
            rounds.append(
                {
                    "latency_s": started - submitted,
                    "to_request_s": flagged[victim] - submitted if victim else None,
                    "to_victim_exit_s": exited[victim] - submitted if victim in exited else None,
                    "to_run_open_s": run_open - submitted,
                    "statuses": [j.status for j in jobs],
                    "preempted": [
                        {"job": j.id, "seed": int(j.overrides[0].split("=")[1]),
                         "preemptions": j.preemptions, "run": j.run_ids[-1]}
                        for j in jobs[:2] if j.preemptions
                    ],
                }
            )  # fmt: skip
            print(f"poll {poll:g} lease {lease:g} round {r + 1}: {rounds[-1]}", flush=True)
        # the preempted runs, kept for the comparison
        for rnd in rounds:
            for p in rnd["preempted"]:
                p["outcome"] = outcome(store, p["run"])
                p["weights"] = weights(store, p["run"])
    finally:
        agent.terminate()
        try:
            agent.wait(timeout=180)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        log.close()
        store.close()
    return {"poll_s": poll, "lease_s": lease, "rounds": rounds}


def direct(tmp: Path, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """An uninterrupted ``danlu run`` of the low recipe with ``seed``: outcome and weights."""
    from danlu.store import SqlStore

    home = tmp / "direct"
    home.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "danlu", "run", str(tmp / "low.yaml"), "--set"]
        + [f"train.seed={seed}", "--threads", "1", "--json"],
        env=env_for(home),
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the direct run of seed {seed} failed: {done.stdout[-2000:]}")
    run_id = json.loads(done.stdout)["run_id"]
    store = SqlStore(home=home)
    try:
        return outcome(store, run_id), weights(store, run_id)
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default="1,30 1,3", help="agent 'POLL,LEASE' settings")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--warm-epochs", type=int, default=2)
    parser.add_argument("--name", default="preemption")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    import numpy as np

    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="danlu-preemption-"))
    (tmp / "low.yaml").write_text(LOW.format(epochs=args.epochs))
    (tmp / "high.yaml").write_text(HIGH)
    seeds = list(range(100))
    configs = [tuple(float(x) for x in c.split(",")) for c in args.configs.split()]
    results = [scenario(tmp, poll, lease, args, seeds) for poll, lease in configs]

    compared = equal = 0
    for result in results:
        for rnd in result["rounds"]:
            for p in rnd["preempted"]:
                ref, ref_weights = direct(tmp, p["seed"])
                same_weights = ref_weights.keys() == p["weights"].keys() and all(
                    np.array_equal(ref_weights[k], p["weights"][k]) for k in ref_weights
                )
                p["uninterrupted"] = ref
                p["same_weights"] = same_weights
                p["equal"] = ref == p["outcome"] and same_weights
                compared += 1
                equal += p["equal"]
                del p["weights"]

    rows = []
    for result in results:
        latencies = [r["latency_s"] for r in result["rounds"]]
        to_run = [r["to_run_open_s"] for r in result["rounds"]]
        to_request = [r["to_request_s"] for r in result["rounds"] if r["to_request_s"] is not None]
        to_exit = [
            r["to_victim_exit_s"] for r in result["rounds"] if r["to_victim_exit_s"] is not None
        ]
        preempted = [p for r in result["rounds"] for p in r["preempted"]]
        result["median_latency_s"] = statistics.median(latencies)
        result["max_latency_s"] = max(latencies)
        result["median_to_run_open_s"] = statistics.median(to_run)
        rows.append(
            [
                f"`danlu agent --cpus 2 --poll {result['poll_s']:g} --lease {result['lease_s']:g}`",
                f"{len(latencies)} ({sum(bool(r['preempted']) for r in result['rounds'])})",
                f"{result['median_latency_s']:.2f}",
                f"{result['max_latency_s']:.2f}",
                f"{statistics.median(to_request):.2f}" if to_request else "-",
                f"{statistics.median(to_exit):.2f}" if to_exit else "-",
                f"{result['median_to_run_open_s']:.2f}",
                "met" if result["median_latency_s"] <= 5 else "not met",
                f"{sum(p['equal'] for p in preempted)}/{len(preempted)}",
            ]
        )
    payload = {
        "repeats": args.repeats,
        "epochs": args.epochs,
        "results": results,
        "preempted_runs_compared": compared,
        "preempted_runs_equal": equal,
        "target_latency_s": 5.0,
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "machine": machine(),
        "command": " ".join(["python", "bench/preemption.py", *sys.argv[1:]]),
    }
    header = ["agent", "rounds (with a preemption)", "median start latency (s)", "max (s)"]
    header += ["request set at (s)", "victim exited at (s)", "its run opened at (s)"]
    header += ["target ≤ 5 s", "preempted = uninterrupted"]
    notes = (
        f"Both slots held preemptible priority-0 jobs (wine MLP [32], dropout 0.1, early stopping "
        f"patience 8, batch 1, up to {args.epochs} epochs, a checkpoint per epoch, each with "
        f"≥ {args.warm_epochs} epochs done); a priority-10 job was submitted (Python API) and its "
        f"start latency taken from just before the submit to its claim as the store records it "
        f"(to its run opening adds the new process's Python start-up). The steps in between, as "
        f"medians from the submit: the agent's next look sets the victim's preemption request; "
        f"the victim's process exits (it saw the request, finished its batch, wrote its "
        f"checkpoint and exited with status 75); the agent, woken by the attempt's end, claims "
        f"the slot. A running attempt reads its job's flags every second. Equality: "
        f"each preempted job's final test metrics, best epoch, epochs run and model weights vs an "
        f"uninterrupted `danlu run` of the same recipe and seed on CPU — {equal}/{compared} "
        f"exactly equal (target: all). Load average {load_start[0]:.2f} at the start "
        f"({os.cpu_count()} cores, shared). Command: `{payload['command']}`."
    )
    path = write(args.name, payload, header, rows, notes)
    print(path.read_text())


if __name__ == "__main__":
    main()
