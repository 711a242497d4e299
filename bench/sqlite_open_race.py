"""Processes opening a fresh SQLite store at the same moment: how many opens fail with
"database is locked", with the WAL pragma tried once (as before) and tried again while locked
(``danlu.store._sql.set_wal``).

Each round makes a fresh database path; 4 spawned processes wait at a barrier, then each opens
the store's engine and runs the migrations, as ``SqlStore`` does. The two settings alternate
round by round.

    OMP_NUM_THREADS=1 python bench/sqlite_open_race.py [--rounds 60]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import write  # noqa: E402

PROCESSES = 4


def _open(db: str, tries: int, barrier: Any, results: Any) -> None:
    try:
        from danlu.store import _sql
        from danlu.store._migrate import upgrade

        _sql._WAL_TRIES = tries  # 1: the pragma once, as before the retry
        barrier.wait(timeout=60)
        engine = _sql._sqlite_engine(f"sqlite:///{db}")
        upgrade(engine, lock_file=Path(db + ".migrate-lock"))
        engine.dispose()
        results.put("ok")
    except BaseException:
        results.put(traceback.format_exc().strip().splitlines()[-1])


def one_round(tries: int) -> list[str]:
    ctx = mp.get_context("spawn")
    db = os.path.join(tempfile.mkdtemp(prefix="danlu-race-"), "danlu.db")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [
        ctx.Process(target=_open, args=(db, tries, barrier, results)) for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    out = [results.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    from danlu.store._sql import _WAL_TRIES

    settings = {"once": 1, "again": _WAL_TRIES}
    failed: dict[str, list[str]] = {k: [] for k in settings}
    for r in range(args.rounds):
        for key in ("once", "again") if r % 2 == 0 else ("again", "once"):
            failed[key] += [x for x in one_round(settings[key]) if x != "ok"]
        print(
            f"round {r + 1}: " + ", ".join(f"{k} {len(v)}" for k, v in failed.items()), flush=True
        )
    opens = args.rounds * PROCESSES
    payload = {"benchmark": "sqlite_open_race", "rounds": args.rounds, "processes": PROCESSES,
               "opens_per_setting": opens, "failures": failed}  # fmt: skip
    rows = [
        ["WAL pragma once (before)", f"{len(failed['once'])} of {opens}"],
        [f"tried again while locked (up to {_WAL_TRIES})", f"{len(failed['again'])} of {opens}"],
    ]
    notes = (
        f"{args.rounds} rounds of {PROCESSES} spawned processes opening one fresh SQLite store "
        "at once (a barrier), for each setting, alternating. Command: "
        f"`OMP_NUM_THREADS=1 python bench/sqlite_open_race.py --rounds {args.rounds}`."
    )
    print(write("sqlite_open_race", payload, ["setting", "failed opens"], rows, notes).read_text())


if __name__ == "__main__":
    main()
