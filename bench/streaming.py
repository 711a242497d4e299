"""Streaming a Parquet folder larger than comfortable memory vs training on an in-memory slice.

Generates (once, cached under bench/data/, git-ignored) 20 million rows x 20 float32 columns and
a binary target that depends on a few of them, written as several Parquet files with row groups
of ~256k rows. Then, each in its own subprocess so that peak memory is the run's own:

1. ``danlu.run`` with ``data.stream`` for ONE epoch of an MLP [64, 64], batch 4096: the one-pass
   statistics, the streamed epoch, streamed validation and test; peak resident memory (VmHWM and
   the parent's RUSAGE_CHILDREN ru_maxrss) and training throughput in rows/s;
2. the same recipe without ``data.stream`` on a 1-million-row slice held in memory: its rows/s.

Throughput is timed from the epoch's start to its last batch (a batch hook, present in both).

    python bench/streaming.py [--rows 20000000] [--files 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

DATA = Path(__file__).resolve().parent / "data"
COLUMNS = 20
ROW_GROUP = 262_144
SLICE_ROWS = 1_000_000


def generate(folder: Path, rows: int, files: int) -> float:
    """Write ``rows`` rows in ``files`` files; returns the seconds it took (0 if cached)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    marker = folder / "_DONE.json"
    spec = {"rows": rows, "files": files, "columns": COLUMNS, "row_group": ROW_GROUP}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return 0.0
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()
    per_file = -(-rows // files)
    for i in range(files):
        n = min(per_file, rows - i * per_file)
        rng = np.random.default_rng(i)
        x = [rng.standard_normal(n, dtype=np.float32) for _ in range(COLUMNS)]
        score = x[0] + 0.5 * x[1] - x[2] + 0.25 * x[3] * x[4] + 0.3 * rng.standard_normal(n)
        table = pa.table(
            {**{f"x{j}": x[j] for j in range(COLUMNS)}, "y": (score > 0).astype(np.int64)}
        )
        pq.write_table(table, folder / f"part-{i:03d}.parquet", row_group_size=ROW_GROUP)
    marker.write_text(json.dumps(spec))
    return time.perf_counter() - start


def make_slice(folder: Path, path: Path) -> None:
    """The first 1M rows of the data set, as one file for the in-memory run."""
    import pyarrow.parquet as pq

    if path.exists():
        return
    first = sorted(folder.glob("*.parquet"))[0]
    pq.write_table(pq.read_table(first).slice(0, SLICE_ROWS), path, row_group_size=ROW_GROUP)


def recipe(source: Path, stream: bool) -> dict:
    data: dict = {"source": str(source), "target": "y"}
    if stream:
        data["stream"] = {"chunk_rows": 262_144, "shuffle_buffer": 262_144, "sample_rows": 100_000}
    return {
        "name": "bench-streaming",
        "data": data,
        "task": "classification",
        "model": {"type": "mlp", "hidden": [64, 64]},
        "train": {"epochs": 1, "batch_size": 4096, "optimizer": {"name": "adam", "lr": 1e-3}},
    }


def child(mode: str, source: Path, threads: int) -> None:
    """One run in this process; prints one JSON line with its timings and peak memory."""
    import torch

    import danlu
    from danlu.train import Callback

    torch.set_num_threads(threads)

    class Clock(Callback):
        def on_fit_start(self, trainer):
            self.fit_start = time.perf_counter()

        def on_epoch_start(self, trainer, epoch):
            self.epoch_start = time.perf_counter()

        def on_batch_end(self, trainer, batch, loss):
            self.last_batch = time.perf_counter()

        def on_epoch_end(self, trainer, epoch, metrics):
            self.epoch_end = time.perf_counter()

    clock = Clock()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as home:
        result = danlu.run(recipe(source, mode == "stream"), callbacks=[clock], home=home)
    total = time.perf_counter() - start
    train_rows = result.data_report["rows"]["train"]
    train_s = clock.last_batch - clock.epoch_start
    status = Path("/proc/self/status").read_text()
    hwm_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    stream = result.data_report.get("stream", {})
    out = {
        "mode": mode,
        "train_rows": train_rows,
        "rows": result.data_report["rows"],
        "prepare_s": clock.fit_start - start,
        "train_epoch_s": train_s,
        "rows_per_s": train_rows / train_s,
        "validate_s": clock.epoch_end - clock.last_batch,
        "total_s": total,
        "test_accuracy": result.metrics.get("accuracy"),
        "vmhwm_mb": hwm_kb / 1024,
        "sampled": stream.get("sampled"),
    }
    print(json.dumps(out))


def run_child(mode: str, source: Path, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--child", mode, "--source", str(source)]
    cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", choices=["stream", "memory"])
    parser.add_argument("--source", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.source, args.threads)
        return

    from _report import machine, write

    folder = DATA / f"stream_{args.rows // 1_000_000}m"
    generate_s = generate(folder, args.rows, args.files)
    slice_path = DATA / "slice_1m.parquet"
    make_slice(folder, slice_path)
    size_mb = sum(f.stat().st_size for f in folder.glob("*.parquet")) / 2**20

    streamed = run_child("stream", folder, args.threads)
    stream_maxrss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB
    in_memory = run_child("memory", slice_path, args.threads)
    ratio = in_memory["rows_per_s"] / streamed["rows_per_s"]
    result = {
        "benchmark": "streaming",
        "setup": {
            "rows": args.rows,
            "columns": COLUMNS,
            "files": args.files,
            "row_group": ROW_GROUP,
            "parquet_mb": size_mb,
            "generate_s": generate_s,
            "model": "mlp [64, 64]",
            "batch_size": 4096,
            "epochs": 1,
            "slice_rows": SLICE_ROWS,
        },
        "machine": machine(),
        "stream": {**streamed, "ru_maxrss_mb": stream_maxrss_mb},
        "in_memory": in_memory,
        "in_memory_over_stream_speed": ratio,
        "targets": {"peak_rss_mb": 1536, "max_speed_ratio": 2.0},
        "met": {
            "memory": max(streamed["vmhwm_mb"], stream_maxrss_mb) <= 1536,
            "speed": ratio <= 2.0,
        },
    }
    peak = max(streamed["vmhwm_mb"], stream_maxrss_mb)
    rows = [
        [
            f"streamed, {args.rows / 1e6:.0f}M rows ({size_mb:.0f} MB Parquet)",
            f"{streamed['train_rows']:,}",
            f"{streamed['rows_per_s']:,.0f}",
            f"{streamed['prepare_s']:.1f}",
            f"{streamed['total_s']:.1f}",
            f"**{peak:.0f}**",
            f"{streamed['test_accuracy']:.4f}",
        ],
        [
            "in memory, 1M-row slice",
            f"{in_memory['train_rows']:,}",
            f"{in_memory['rows_per_s']:,.0f}",
            f"{in_memory['prepare_s']:.1f}",
            f"{in_memory['total_s']:.1f}",
            f"{in_memory['vmhwm_mb']:.0f}",
            f"{in_memory['test_accuracy']:.4f}",
        ],
    ]
    path = write(
        "streaming",
        result,
        [
            "run",
            "train rows",
            "train rows/s",
            "prepare (s)",
            "whole run (s)",
            "peak RSS (MB)",
            "test accuracy",
        ],
        rows,
        notes=(
            f"One epoch, MLP [64, 64], batch 4096, {args.threads} torch thread(s). In-memory is "
            f"{ratio:.2f}x the streamed throughput (target <= 2x); peak RSS of the streamed run "
            f"{peak:.0f} MB (target <= 1536 MB). 'prepare' is the one-pass statistics and "
            "fingerprint (streamed) or load + clean + split + encode (in memory); 'whole run' "
            "adds validation and test (streamed: each one more pass over the files). Command: "
            f"`python bench/streaming.py --rows {args.rows} --files {args.files} "
            f"--threads {args.threads}`"
        ),
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
