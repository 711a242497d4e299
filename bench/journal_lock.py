"""A tuning writer killed mid-write: how long the next write to the study's journal waits,
with Optuna's own lock (an O_EXCL lock file, broken after a 30-second grace period) and with
danlu's (``FlockJournalLock``, dropped by the kernel with its process).

Each round starts a process that appends to an Optuna journal in a loop (as a trial reports
its epochs), kills it with SIGKILL after a random moment, then times one append by a fresh
writer. Both locks run the same rounds, interleaved. The figure is the share of rounds whose
next write had to wait out a stale lock, and the longest wait.

    python bench/journal_lock.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import write  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WRITER = """
import sys
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from danlu.tune._storage import FlockJournalLock
path, kind = sys.argv[1], sys.argv[2]
lock = FlockJournalLock(path) if kind == "flock" else JournalFileOpenLock(path)
backend = JournalFileBackend(path, lock_obj=lock)
print("writing", flush=True)
i = 0
while True:
    backend.append_logs([{"op_code": 0, "worker_id": "w", "i": i}])
    i += 1
"""


def _backend(path: str, kind: str):  # noqa: ANN202
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    from danlu.tune._storage import FlockJournalLock

    lock = FlockJournalLock(path) if kind == "flock" else JournalFileOpenLock(path)
    return JournalFileBackend(path, lock_obj=lock)  # type: ignore[arg-type]


def one_round(folder: Path, kind: str, rng: random.Random) -> float:
    """Kill a writer mid-loop; the seconds the next append takes."""
    path = str(folder / f"{kind}-{rng.random():.9f}.log")
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, path, kind], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
    time.sleep(rng.uniform(0.05, 0.5))
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    writer.stdout.close()
    start = time.perf_counter()
    _backend(path, kind).append_logs([{"op_code": 0, "worker_id": "next"}])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    rng = random.Random(0)
    waits: dict[str, list[float]] = {"optuna": [], "flock": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for kind in ("optuna", "flock") if r % 2 == 0 else ("flock", "optuna"):
                waits[kind].append(one_round(Path(tmp), kind, rng))
                print(f"round {r + 1} {kind}: {waits[kind][-1]:.3f} s", flush=True)
    stale = {k: sum(w > 1.0 for w in v) for k, v in waits.items()}
    payload = {
        "benchmark": "journal_lock",
        "rounds": args.rounds,
        "waits_s": waits,
        "stale_rounds": stale,
        "median_s": {k: statistics.median(v) for k, v in waits.items()},
        "max_s": {k: max(v) for k, v in waits.items()},
    }
    rows = [
        [name, f"{stale[key]} of {args.rounds}", f"{statistics.median(waits[key]):.4f}",
         f"{max(waits[key]):.2f}"]
        for key, name in (("optuna", "Optuna's JournalFileOpenLock"),
                          ("flock", "danlu's FlockJournalLock"))
    ]  # fmt: skip
    notes = (
        "A writer appending to the journal in a loop (the worst case: it holds the lock most "
        "of the time; a trial reporting its epochs holds it for a moment per epoch) is killed "
        "with SIGKILL after 0.05-0.5 s; then a fresh writer's one append is timed. A round counts as stale when that append "
        f"waited over 1 s. Command: `python bench/journal_lock.py --rounds {args.rounds}`."
    )
    path = write(
        "journal_lock",
        payload,
        ["lock", "rounds with a stale lock", "median next write (s)", "longest (s)"],
        rows,
        notes,
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
