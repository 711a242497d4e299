"""The job queue's scheduling overhead: ``--jobs`` short jobs through 2 slots, queue vs a plain pool.

A job is a tiny real recipe: ``danlu run`` of a one-hidden-layer MLP on scikit-learn's wine table
for ``--epochs`` epoch(s), each job with its own ``train.seed``. The same commands run two ways,
in one run of this script, each against its own SQLite store in a temporary DANLU_HOME:

- **reference**: a plain pool of ``--slots`` worker threads, each calling ``subprocess.run`` on
  ``python -m danlu run RECIPE --set train.seed=S --threads 1`` (``OMP_NUM_THREADS=1``, output
  piped and dropped), pinned to a CPU of its own as the agent pins its attempts — no queue. Each
  subprocess's wall time is *the job's own time*.
- **queue**: one ``danlu agent --cpus SLOTS`` (started first and left running: its start-up is
  not per-job), the jobs submitted with ``JobQueue.submit`` (the Python API; ``danlu submit`` also
  validates the recipe and estimates its memory, timed separately below), the wall time taken from
  the first submit to the last job's end as the store records it.

Overhead per job, for each side, is ``(wall × slots − Σ own time) / jobs``, where the own times
are the reference's subprocess times (the queue's runs are the same commands): what the executor
adds beyond the work itself, idle slots included. For the queue it also splits into the slots'
idle time between attempts (claims wait for the agent's next look at the queue, every
``--poll`` seconds: the wait of each job for its claim, once queued and with a slot free, is
reported too) and what an attempt costs beyond the bare subprocess (log pump, lease
renewal, run lookup, the log kept as an artifact, the finish).

Both sides run the same seeds in ``--rounds`` alternating blocks (reference, queue, queue,
reference, ...) so that the load of a shared machine drifts over both alike; the load average is
sampled throughout and reported. The test metrics of each queued run are checked against the
reference run of the same seed.

    python bench/queue_overhead.py [--jobs 200] [--slots 2] [--poll 1.0] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import queue as queue_module
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _queue import env_for  # noqa: E402

from _report import machine, write  # noqa: E402

RECIPE = """\
name: queue-wine
data:
  source: builtin:wine
  split: {{test: 0.2, val: 0.1, stratify: true, seed: 0}}
  prepare: {{scale: standard}}
task: classification
model: {{type: mlp, hidden: [16]}}
train:
  epochs: {epochs}
  batch_size: 16
  optimizer: {{name: adam, lr: 1.0e-3}}
  seed: 0
"""


class LoadSampler(threading.Thread):
    """The 1-minute load average every few seconds, tagged with the phase running then."""

    def __init__(self, every: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.every = every
        self.phase = "setup"
        self.samples: list[tuple[str, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.every):
            self.samples.append((self.phase, os.getloadavg()[0]))

    def stop(self) -> None:
        self._halt.set()

    def mean(self, phase: str) -> float | None:
        values = [v for p, v in self.samples if p == phase]
        return round(statistics.fmean(values), 2) if values else None


def command(recipe: Path, seed: int) -> list[str]:
    """The command line a queued attempt runs (danlu.jobs.child_command, less the pinning)."""
    return [sys.executable, "-m", "danlu", "run", str(recipe), "--set", f"train.seed={seed}"] + [
        "--threads",
        "1",
    ]


def run_reference(recipe: Path, seeds: list[int], slots: int, home: Path) -> dict[str, Any]:
    """The same commands through a plain pool of ``slots`` subprocess.run calls, each pinned to
    a CPU of its own and given the environment an agent gives its attempts (one thread, no GPU),
    as the queue's are: only the queue itself differs."""
    env = env_for(home) | {"CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    free = queue_module.SimpleQueue()
    for cpu in sorted(os.sched_getaffinity(0))[:slots]:
        free.put(cpu)

    def one(seed: int) -> float:
        cpu = free.get()
        try:
            start = time.perf_counter()
            done = subprocess.run(
                command(recipe, seed),
                env=env,
                cwd=recipe.parent,
                capture_output=True,
                text=True,
                timeout=900,
                preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),  # noqa: PLW1509
            )
            seconds = time.perf_counter() - start
        finally:
            free.put(cpu)
        if done.returncode != 0:
            raise RuntimeError(f"seed {seed}: exit {done.returncode}\n{done.stdout[-2000:]}")
        return seconds

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=slots) as pool:
        own = list(pool.map(one, seeds))
    return {"wall": time.perf_counter() - start, "own": own}


def scheduling_gaps(jobs: list[Any], slots: int) -> list[float]:
    """For each job, in the order the agent claimed them: how long it waited for its claim
    after both it was queued and a slot was free (the previous attempt there had finished).
    The tail of a block, where a slot idles because nothing is left, is not counted."""
    free_at = [min(j.created_at for j in jobs)] * slots
    gaps = []
    for job in sorted(jobs, key=lambda j: j.started_at):
        i = min(range(slots), key=lambda k: free_at[k])  # the slot that freed first
        gaps.append(job.started_at - max(free_at[i], job.created_at))
        free_at[i] = job.ended_at
    return gaps


def start_agent(home: Path, slots: int, poll: float, lease: float) -> subprocess.Popen[str]:
    from danlu.jobs import JobQueue
    from danlu.store import SqlStore

    log = open(home / "agent.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "danlu", "agent", "--cpus", str(slots), "--poll", str(poll)]
        + ["--lease", str(lease)],
        env=env_for(home),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    store = SqlStore(home=home)
    queue = JobQueue(store)
    deadline = time.monotonic() + 180
    while not queue.agents(live=True):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the agent did not start: {(home / 'agent.log').read_text()}")
        time.sleep(0.2)
    store.close()
    return proc


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) a process spent itself, its children not counted."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_queue(recipe: Path, seeds: list[int], home: Path, slots: int) -> dict[str, Any]:
    """Submit the commands to the running agent; wait for all of them to end."""
    from danlu.jobs import JobQueue, Resources
    from danlu.store import SqlStore

    store = SqlStore(home=home)
    queue = JobQueue(store)
    text = recipe.read_text()
    start = time.time()
    ids = [
        queue.submit(
            recipe=text,
            recipe_path=str(recipe),
            name="queue-wine",
            overrides=[f"train.seed={seed}"],
            resources=Resources(1, 0, 0.0),
            workdir=str(recipe.parent),
        ).id
        for seed in seeds
    ]
    submit_s = time.time() - start
    deadline = time.monotonic() + 60 * len(seeds) + 300
    # one small query a second while they run (the reference side waits without any): the
    # bench's own polling must not take CPU from the jobs it measures
    while sum(n for status, n in queue.counts().items() if status in ("queued", "running")):
        if time.monotonic() > deadline:
            raise RuntimeError("the queued jobs did not finish in time")
        time.sleep(1.0)
    jobs = [queue.get(i) for i in ids]
    bad = [j for j in jobs if j.status != "succeeded" or j.attempts != 1]
    if bad:
        raise RuntimeError(f"{len(bad)} job(s) did not succeed at the first attempt: {bad[0]}")
    attempts = [j.ended_at - j.started_at for j in jobs]  # type: ignore[operator]
    gaps = scheduling_gaps(jobs, slots)
    wall = max(j.ended_at for j in jobs) - start  # type: ignore[type-var]
    runs = {seed: j.run_ids[-1] for seed, j in zip(seeds, jobs, strict=True)}
    store.close()
    return {"wall": wall, "attempts": attempts, "gaps": gaps, "submit_s": submit_s, "runs": runs}


def cli_submit_seconds(recipe: Path, home: Path, count: int) -> list[float]:
    """``danlu submit`` (recipe validation and memory estimate included), timed from outside."""
    seconds = []
    for i in range(count):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "danlu", "submit", str(recipe), "--set", f"train.seed={i}"],
            env=env_for(home),
            cwd=recipe.parent,
            capture_output=True,
            text=True,
            timeout=300,
        )
        seconds.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise RuntimeError(f"danlu submit failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds


def test_metrics(home: Path) -> dict[tuple[int, str], dict[str, float]]:
    """Each finished run's test metrics, by (seed, run id)."""
    from danlu.store import SqlStore

    store = SqlStore(home=home)
    found = {}
    for run in store.search_runs("status = 'finished'", limit=100_000):
        seed = int((run.recipe or {})["train"]["seed"])
        found[(seed, run.id)] = {k: v for k, v in run.metrics.items() if k.startswith("test_")}
    store.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--poll", type=float, default=1.0, help="danlu agent --poll (default 1)")
    parser.add_argument("--lease", type=float, default=30.0, help="danlu agent --lease")
    parser.add_argument("--rounds", type=int, default=2, help="alternating blocks of each side")
    parser.add_argument("--cli-submits", type=int, default=3)
    parser.add_argument("--name", default="queue_overhead")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"

    sampler = LoadSampler()
    sampler.start()
    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="danlu-queue-overhead-"))
    recipe = tmp / "queue_wine.yaml"
    recipe.write_text(RECIPE.format(epochs=args.epochs))
    ref_home, queue_home = tmp / "reference", tmp / "queue"
    ref_home.mkdir()
    queue_home.mkdir()
    seeds = list(range(args.jobs))
    blocks = [seeds[i :: args.rounds] for i in range(args.rounds)]

    sampler.phase = "agent start"
    agent = start_agent(queue_home, args.slots, args.poll, args.lease)
    ref: dict[str, Any] = {"wall": 0.0, "own": [], "own_by_seed": {}}
    que: dict[str, Any] = {
        "wall": 0.0,
        "attempts": [],
        "gaps": [],
        "submit_s": 0.0,
        "runs": {},
        "agent_cpu_s": 0.0,
    }
    try:
        for r, block in enumerate(blocks):
            order = ("reference", "queue") if r % 2 == 0 else ("queue", "reference")
            for side in order:
                sampler.phase = side
                print(f"round {r + 1}/{len(blocks)}: {side}, {len(block)} jobs", flush=True)
                if side == "reference":
                    got = run_reference(recipe, block, args.slots, ref_home)
                    ref["wall"] += got["wall"]
                    ref["own"] += got["own"]
                    ref["own_by_seed"].update(dict(zip(block, got["own"], strict=True)))
                else:
                    cpu_before = cpu_seconds(agent.pid)
                    got = run_queue(recipe, block, queue_home, args.slots)
                    que["agent_cpu_s"] += cpu_seconds(agent.pid) - cpu_before
                    que["wall"] += got["wall"]
                    que["attempts"] += got["attempts"]
                    que["gaps"] += got["gaps"]
                    que["submit_s"] += got["submit_s"]
                    que["runs"].update(got["runs"])
    finally:
        agent.terminate()
        try:
            agent.wait(timeout=120)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
    sampler.phase = "danlu submit"
    cli = cli_submit_seconds(recipe, queue_home, args.cli_submits) if args.cli_submits else []
    sampler.stop()

    # the queued runs reproduce the reference's test metrics, seed by seed
    ref_metrics = {seed: m for (seed, _), m in test_metrics(ref_home).items()}
    queue_metrics = {seed: m for (seed, _), m in test_metrics(queue_home).items()}
    same = sum(1 for s in seeds if s in ref_metrics and queue_metrics.get(s) == ref_metrics[s])

    n, slots = args.jobs, args.slots
    own_sum = sum(ref["own"])
    ref_overhead = (ref["wall"] * slots - own_sum) / n
    queue_overhead = (que["wall"] * slots - own_sum) / n
    idle = (que["wall"] * slots - sum(que["attempts"])) / n
    wrapper = (sum(que["attempts"]) - own_sum) / n
    # an overhead below zero beyond noise means the queue's attempts ran faster than the same
    # commands did in the reference: the machine's load changed, and the figure shows nothing
    verdict = (
        "not established (the reference's job times do not match the queue's: load)"
        if queue_overhead < -0.5
        else "met"
        if queue_overhead <= 0.5
        else "not met"
    )
    payload = {
        "jobs": n,
        "slots": slots,
        "epochs": args.epochs,
        "rounds": args.rounds,
        "agent": {"poll_s": args.poll, "lease_s": args.lease},
        "reference": {
            "wall_s": ref["wall"],
            "own_sum_s": own_sum,
            "median_job_s": statistics.median(ref["own"]),
            "overhead_per_job_s": ref_overhead,
            "load_mean": sampler.mean("reference"),
        },
        "queue": {
            "wall_s": que["wall"],
            "attempt_sum_s": sum(que["attempts"]),
            "median_attempt_s": statistics.median(que["attempts"]),
            "overhead_per_job_s": queue_overhead,
            "idle_slot_per_job_s": idle,
            "claim_gap_mean_s": statistics.fmean(que["gaps"]),
            "claim_gap_median_s": statistics.median(que["gaps"]),
            "attempt_beyond_subprocess_per_job_s": wrapper,
            "submit_api_per_job_s": que["submit_s"] / n,
            "agent_cpu_per_job_s": que["agent_cpu_s"] / n,
            "danlu_submit_cli_s": cli,
            "load_mean": sampler.mean("queue"),
        },
        "same_test_metrics": same,
        "target_overhead_per_job_s": 0.5,
        "target_met": verdict == "met",
        "verdict": verdict,
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "load_samples": sampler.samples,
        "machine": machine(),
        "command": " ".join(["python", "bench/queue_overhead.py", *sys.argv[1:]]),
    }
    header = ["", "jobs", "slots", "median job (s)", "total wall (s)", "overhead / job (s)"]
    header += ["load (1-min avg)"]
    rows: list[list[Any]] = [
        [
            "plain pool of `subprocess.run` (reference)",
            n,
            slots,
            f"{statistics.median(ref['own']):.2f}",
            f"{ref['wall']:.1f}",
            f"{ref_overhead:+.3f}",
            sampler.mean("reference"),
        ],
        [
            f"`danlu agent --cpus {slots}` (poll {args.poll:g} s), SQLite",
            n,
            slots,
            f"{statistics.median(que['attempts']):.2f}",
            f"{que['wall']:.1f}",
            f"{queue_overhead:+.3f}",
            sampler.mean("queue"),
        ],
    ]
    notes = (
        f"Overhead per job = (wall × slots − Σ the jobs' own times) / jobs; own time = the "
        f"reference's subprocess time of the same command (Σ {own_sum:.1f} s). Target for the "
        f"queue: ≤ 0.5 s per job — **{verdict}** "
        f"({queue_overhead:.3f} s). Of the queue's overhead, {idle:.3f} s per job is slots left "
        f"idle between attempts and at the end of each block; the wait of a job for its claim "
        f"once queued and with a slot free (the agent's next look, every {args.poll:g} s) was "
        f"{statistics.fmean(que['gaps']):.3f} s on average "
        f"(median {statistics.median(que['gaps']):.3f} s); "
        f"and {wrapper:+.3f} s is an attempt beyond its bare subprocess (log pump, lease, run "
        f"lookup, log artifact, finish; noisy on a loaded machine, where a job's time varies by "
        f"seconds); the agent process itself spent {que['agent_cpu_s'] / n:.3f} s of CPU per "
        f"job. Median job time: the reference's subprocess; the "
        f"queue's attempt from claim to finish. Submitting by the Python API took "
        f"{que['submit_s'] / n * 1000:.1f} ms per job"
        + (
            f"; `danlu submit` (validation and memory estimate, a fresh process) "
            f"{statistics.median(cli):.2f} s (median of {len(cli)})"
            if cli
            else ""
        )
        + f". Queued runs with the reference's test metrics for the same seed: {same}/{n}. "
        f"Sides ran in {args.rounds} alternating blocks on a shared {os.cpu_count()}-core "
        f"machine; load average {load_start[0]:.2f} at the start. Job: `danlu run` of a wine MLP "
        f"[16], {args.epochs} epoch(s), one seed per job. Command: `{payload['command']}`."
    )
    path = write(args.name, payload, header, rows, notes)
    print(path.read_text())


if __name__ == "__main__":
    main()
