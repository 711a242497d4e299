"""The job queue under ``kill -9``: no job lost, none run twice, over random kills of its agents.

Two ``danlu agent`` processes (one slot each, each pinned to its own CPU with ``taskset``, a
short lease) share one SQLite store in a temporary DANLU_HOME. ``--jobs`` jobs are submitted,
each a real ``danlu run`` of a wine MLP for ``--epochs`` short epochs with a checkpoint after
each (its own ``train.seed``). While they run, a random agent (of those registered, not one
still starting) gets SIGKILL at random times (``--kills`` times, ``--min-gap``..``--max-gap``
seconds apart) and is started again at once.
When every job has ended, the outcome is checked two ways:

- **from the store**: every job ``succeeded``; each job made exactly one run, and it is
  ``finished`` with every epoch in its metric history; none failed, none is still queued.
- **from outside**: a watcher thread scans ``/proc`` every ``--watch-every`` seconds for the
  attempts' processes (``DANLU_JOB_ID`` in their environment) and records when each was first
  and last seen alive. Two processes of one job never overlapping in time is the "never twice at
  once" check, independent of the queue's own bookkeeping; no job may have more processes than
  the attempts the store counted; and each killed agent's attempt must die with it
  (``PR_SET_PDEATHSIG``; the delay is reported).

The jobs that needed more than one attempt are also run once more directly (``danlu run``, no
queue, no kill) with the same seed: their final test metrics must equal the resumed runs'.

    python bench/queue_faults.py [--jobs 40] [--kills 10] [--lease 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _queue import env_for  # noqa: E402

from _report import machine, write  # noqa: E402

RECIPE = """\
name: faults-wine
data:
  source: builtin:wine
  split: {{test: 0.2, val: 0.1, stratify: true, seed: 0}}
  prepare: {{scale: standard}}
task: classification
model: {{type: mlp, hidden: [16]}}
train:
  epochs: {epochs}
  batch_size: 4
  optimizer: {{name: adam, lr: 1.0e-3}}
  checkpoint: {{every: 1}}
  seed: 0
"""


@dataclass
class Seen:
    """One attempt's process as the watcher saw it."""

    job: str
    pid: int
    ppid: int
    first: float
    last: float


class Watcher(threading.Thread):
    """Scans /proc for the processes of queued attempts (``DANLU_JOB_ID`` in their environment)."""

    def __init__(self, every: float) -> None:
        super().__init__(daemon=True)
        self.every = every
        self.seen: dict[tuple[int, str], Seen] = {}  # (pid, start time) -> what was seen
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.scan()
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()

    def scan(self) -> None:
        now = time.time()
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if stat[0] == "Z":  # a zombie runs no more
                continue
            key = (pid, stat[19])  # field 22: the start time tells a reused pid apart
            if key in self.seen:
                self.seen[key].last = now
                continue
            # read again on every scan until it matches: between fork and exec an attempt still
            # shows its agent's command line and environment
            try:
                if b"-m\0danlu\0run\0" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                    continue
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            job = next((e[13:].decode() for e in environ if e.startswith(b"DANLU_JOB_ID=")), None)
            if job is not None:
                self.seen[key] = Seen(job, pid, int(stat[1]), now, now)


class AgentProc:
    """One ``danlu agent`` process pinned to one CPU; started again after each kill."""

    def __init__(self, index: int, cpu: int, home: Path, lease: float) -> None:
        self.index, self.cpu, self.home, self.lease = index, cpu, home, lease
        self.proc: subprocess.Popen[str] | None = None
        self.starts = 0
        self.pids: list[int] = []

    def start(self) -> None:
        self.starts += 1
        log = open(self.home / f"agent{self.index}.{self.starts}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(self.cpu), sys.executable, "-m", "danlu", "agent"]
            + ["--poll", "0.2", "--lease", str(self.lease), "--retry-backoff", "1"],
            env=env_for(self.home),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.pids.append(self.proc.pid)  # taskset execs the agent: the same process

    def kill9(self) -> float:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        at = time.time()
        self.proc.wait(timeout=60)
        return at

    def agent_id(self) -> str | None:
        log = self.home / f"agent{self.index}.{self.starts}.log"
        found = re.search(r"agent ([0-9a-f]{16}) ", log.read_text()) if log.exists() else None
        return found.group(1) if found else None

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def direct_metrics(recipe: Path, seed: int, home: Path) -> dict[str, float]:
    """An uninterrupted ``danlu run`` of the same recipe and seed: its test metrics."""
    import json

    done = subprocess.run(
        [sys.executable, "-m", "danlu", "run", str(recipe), "--set", f"train.seed={seed}"]
        + ["--threads", "1", "--json"],
        env=env_for(home),
        cwd=recipe.parent,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the direct run of seed {seed} failed: {done.stdout[-2000:]}")
    from danlu.store import SqlStore

    store = SqlStore(home=home)
    run_id = json.loads(done.stdout)["run_id"]
    metrics = {k: v for k, v in store.get_run(run_id).metrics.items() if k.startswith("test_")}
    store.close()
    return metrics


def main() -> None:  # noqa: C901, PLR0915 - one scenario, read top to bottom
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--lease", type=float, default=3.0, help="danlu agent --lease")
    parser.add_argument("--min-gap", type=float, default=3.0)
    parser.add_argument("--max-gap", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0, help="of the kill schedule")
    parser.add_argument("--watch-every", type=float, default=0.1)
    parser.add_argument("--max-attempts", type=int, default=15)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--name", default="queue_faults")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    from danlu.jobs import JobQueue, Resources
    from danlu.store import SqlStore

    load_start = os.getloadavg()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="danlu-queue-faults-"))
    home = tmp / "home"
    home.mkdir()
    recipe = tmp / "faults_wine.yaml"
    recipe.write_text(RECIPE.format(epochs=args.epochs))
    cpus = sorted(os.sched_getaffinity(0))
    agents = [AgentProc(i, cpus[i % len(cpus)], home, args.lease) for i in range(2)]
    watcher = Watcher(args.watch_every)
    watcher.start()
    store = SqlStore(home=home)
    queue = JobQueue(store)
    text = recipe.read_text()
    jobs = {
        queue.submit(
            recipe=text,
            recipe_path=str(recipe),
            name="faults-wine",
            overrides=[f"train.seed={seed}"],
            resources=Resources(1, 0, 0.0),
            max_attempts=args.max_attempts,
            workdir=str(tmp),
        ).id: seed
        for seed in range(args.jobs)
    }
    start = time.time()
    for agent in agents:
        agent.start()
    kills: list[dict[str, Any]] = []
    deadline = time.monotonic() + args.timeout
    try:
        next_kill = time.monotonic() + rng.uniform(args.min_gap, args.max_gap)
        while True:
            counts = queue.counts()
            if counts.get("queued", 0) + counts.get("running", 0) == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the jobs did not end within {args.timeout} s: {counts}")
            ready = [a for a in agents if a.agent_id() is not None]  # registered, not booting
            if len(kills) < args.kills and time.monotonic() >= next_kill and ready:
                victim = rng.choice(ready)
                agent_id = victim.agent_id()
                running = [
                    j.id for j in queue.list_jobs(status="running", limit=1000)
                    if agent_id is not None and j.lease_owner == agent_id
                ]  # fmt: skip
                at = victim.kill9()
                kills.append(
                    {"at": at - start, "agent": victim.index, "pid": victim.proc.pid,  # type: ignore[union-attr]
                     "agent_id": agent_id, "running_jobs": running}
                )  # fmt: skip
                print(f"{at - start:6.1f} s: kill -9 agent {victim.index} ({running})", flush=True)
                victim.start()
                next_kill = time.monotonic() + rng.uniform(args.min_gap, args.max_gap)
            time.sleep(0.2)
        wall = time.time() - start
    finally:
        for agent in agents:
            agent.terminate()
        time.sleep(3 * args.watch_every)
        watcher.stop()
        watcher.join(timeout=10)

    # -- the store's account ----------------------------------------------------------------------
    final = {job_id: queue.get(job_id) for job_id in jobs}
    status_counts: dict[str, int] = {}
    for job in final.values():
        status_counts[job.status] = status_counts.get(job.status, 0) + 1
    runs_per_job, finished_per_job, complete = {}, {}, 0
    for job_id in jobs:
        runs = store.search_runs(f"tags.job = '{job_id}'")
        runs_per_job[job_id] = len(runs)
        finished = [r for r in runs if r.status == "finished"]
        finished_per_job[job_id] = len(finished)
        if len(finished) == 1:
            steps = {p.step for p in store.metric_history(finished[0].id, "train_loss")}
            complete += steps == set(range(1, args.epochs + 1))
    lost = sum(1 for j in final.values() if j.status != "succeeded")
    duplicated_runs = sum(1 for n in finished_per_job.values() if n > 1)

    # -- the watcher's account --------------------------------------------------------------------
    # an attempt is a direct child of an agent; what it forks itself (a helper it starts, seen
    # between fork and exec) carries the job's environment too, and is left out
    agent_pids = {pid for agent in agents for pid in agent.pids}
    attempts_seen = [s for s in watcher.seen.values() if s.ppid in agent_pids]
    by_job: dict[str, list[Seen]] = {}
    for seen in attempts_seen:
        by_job.setdefault(seen.job, []).append(seen)
    overlaps = []
    for job_id, seen in by_job.items():
        seen.sort(key=lambda s: s.first)
        for a, b in zip(seen, seen[1:], strict=False):
            if b.first <= a.last:
                overlaps.append((job_id, a.pid, b.pid, a.last - b.first))
    gaps = [
        b.first - a.last
        for seen in by_job.values()
        for a, b in zip(seen, seen[1:], strict=False)
    ]  # fmt: skip
    # more processes than attempts would be a job run twice; fewer, an attempt killed with its
    # agent before its process got to exec (or alive for less than one scan)
    process_mismatch = [
        j for j, job in final.items() if len(by_job.get(j, [])) > job.attempts
    ]  # fmt: skip
    unseen = sum(max(job.attempts - len(by_job.get(j, [])), 0) for j, job in final.items())
    # each killed agent's attempt died with it
    death_delays = []
    for kill in kills:
        children = [s for s in attempts_seen if s.ppid == kill["pid"]]
        death_delays += [s.last - (start + kill["at"]) for s in children]
    hit_jobs = sorted({j for k in kills for j in k["running_jobs"]})
    multi = [j for j, job in final.items() if job.attempts > 1]

    # -- resumed runs vs uninterrupted ones ------------------------------------------------------
    direct_home = tmp / "direct"
    direct_home.mkdir()
    equal = 0
    mismatches = []
    for job_id in multi:
        job = final[job_id]
        if not job.run_ids:
            continue
        resumed = {
            k: v for k, v in store.get_run(job.run_ids[-1]).metrics.items() if k.startswith("test_")
        }
        direct = direct_metrics(recipe, jobs[job_id], direct_home)
        if resumed == direct:
            equal += 1
        else:
            mismatches.append({"job": job_id, "resumed": resumed, "direct": direct})
    store.close()

    attempts_total = sum(j.attempts for j in final.values())
    payload = {
        "jobs": args.jobs,
        "epochs": args.epochs,
        "kills": kills,
        "lease_s": args.lease,
        "wall_s": wall,
        "status_counts": status_counts,
        "lost": lost,
        "runs_total": sum(runs_per_job.values()),
        "jobs_with_one_finished_run": sum(1 for n in finished_per_job.values() if n == 1),
        "jobs_with_all_epochs": complete,
        "duplicated_runs": duplicated_runs,
        "attempts_total": attempts_total,
        "jobs_with_several_attempts": len(multi),
        "jobs_running_when_killed": hit_jobs,
        "processes_seen": len(attempts_seen),
        "helper_processes_seen": len(watcher.seen) - len(attempts_seen),
        "watched": [
            {
                "job": s.job,
                "pid": s.pid,
                "ppid": s.ppid,
                "first": s.first - start,
                "last": s.last - start,
            }
            for s in sorted(watcher.seen.values(), key=lambda s: s.first)
        ],  # fmt: skip
        "overlapping_processes": overlaps,
        "min_gap_between_attempts_s": min(gaps) if gaps else None,
        "jobs_with_more_processes_than_attempts": process_mismatch,
        "attempts_whose_process_was_not_seen": unseen,
        "killed_attempt_death_delay_max_s": max(death_delays) if death_delays else None,
        "killed_attempts_seen": len(death_delays),
        "resumed_equal_to_uninterrupted": equal,
        "resumed_compared": len([j for j in multi if final[j].run_ids]),
        "mismatches": mismatches,
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "machine": machine(),
        "command": " ".join(["python", "bench/queue_faults.py", *sys.argv[1:]]),
    }
    ok = lost == 0 and duplicated_runs == 0 and not overlaps and not process_mismatch
    header = ["jobs", "kill -9s", "succeeded", "lost", "duplicated", "runs", "attempts"]
    header += ["overlapping attempts", "resumed = uninterrupted"]
    rows = [
        [
            args.jobs,
            len(kills),
            status_counts.get("succeeded", 0),
            lost,
            duplicated_runs,
            payload["runs_total"],
            attempts_total,
            len(overlaps),
            f"{equal}/{payload['resumed_compared']}",
        ]
    ]
    delay = payload["killed_attempt_death_delay_max_s"]
    notes = (
        f"Two `danlu agent --lease {args.lease:g} --poll 0.2` processes, one slot and one CPU "
        f"each, SQLite; {args.jobs} jobs (`danlu run` of a wine MLP [16], {args.epochs} epochs, "
        f"a checkpoint per epoch, one seed each); {len(kills)} `kill -9`s of a random agent "
        f"{args.min_gap:g}–{args.max_gap:g} s apart (seed {args.seed}; an agent still "
        f"starting is no candidate), each agent restarted at once; {len(hit_jobs)} job(s) were running on the killed agent. All ended in "
        f"{wall:.0f} s. Target: 0 lost, 0 duplicated — **{'met' if ok else 'not met'}**. "
        f"Lost = jobs not `succeeded`; duplicated = jobs with more than one finished run. "
        f"Every job made {'exactly one run' if payload['runs_total'] == args.jobs else 'runs'} "
        f"({payload['jobs_with_all_epochs']}/{args.jobs} with all {args.epochs} epochs logged). "
        f"A watcher outside the queue saw {len(attempts_seen)} attempt processes "
        f"for {attempts_total} attempts in the store ({len(process_mismatch)} jobs with more "
        f"processes than attempts; {unseen} attempt(s) killed before their process was seen); "
        f"no two of one job alive at once: {len(overlaps)} overlaps"
        + (
            f", the shortest gap between two attempts of a job {min(gaps):.1f} s (lease expiry)"
            if gaps
            else ""
        )
        + (
            f"; a killed agent's attempt died at most {delay:.2f} s after it "
            f"({len(death_delays)} seen)"
            if delay is not None
            else ""
        )
        + f". The {payload['resumed_compared']} jobs resumed after a kill have the test metrics "
        f"of an uninterrupted `danlu run` of the same seed in {equal}. Load average "
        f"{load_start[0]:.2f} at the start ({os.cpu_count()} cores, shared). Command: "
        f"`{payload['command']}`."
    )
    path = write(args.name, payload, header, rows, notes)
    print(path.read_text())
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
