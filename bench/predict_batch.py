"""``danlu predict`` on a 1-million-row CSV vs an in-process ONNX Runtime loop at batch 1,024.

1. Trains and registers (with its parity-checked ONNX export) an MLP on scikit-learn's breast
   cancer table, in a temporary DANLU_HOME.
2. Generates (once, cached under bench/data/, git-ignored) a CSV of ``--rows`` rows: the real
   rows resampled with replacement, each value moved by Gaussian noise of 5% of its column's
   standard deviation, plus an ``id`` column and no target.
3. Runs ``danlu predict MODEL rows.csv --out predictions.csv --keep id`` in a subprocess, timed
   from outside (start-up, model load and the import of torch included), its peak resident
   memory read by ``/usr/bin/time -v`` (else the parent's RUSAGE_CHILDREN); then the same with
   ``--proba``, and with the same rows as Parquet in and out (no text to parse or format).
4. The reference, in this process: the same CSV already read and preprocessed into one float32
   matrix (not timed), then ONNX Runtime on the same ``model.onnx`` over it in batches of 1,024
   rows (timed): inference alone, no reading, no preprocessing, no writing.
5. Reference 2, in this process: the script a user would write around ONNX Runtime, file to
   file (pyarrow's streaming CSV reader, ``Predictor.encode``, ORT at batch 1,024, the class
   labels, pyarrow's CSV writer), compared with ``danlu predict``'s streaming seconds.

Each is run ``--repeats`` times; the medians are reported with their ratio. Both sides run ONNX
Runtime with ``--threads`` intra-op threads; ``danlu predict`` also reads the next chunk in a
second thread while one is predicted.

    python bench/predict_batch.py [--rows 1000000] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

DATA = Path(__file__).resolve().parent / "data"
DANLU = [sys.executable, "-m", "danlu"]
#: the default MLP (inference far cheaper than reading CSV text) and a wide one (inference
#: dominates); both trained on the same table
MODELS = {"mlp [128, 64] (default)": [128, 64], "mlp [512, 512]": [512, 512]}


def recipe(name: str, hidden: list[int]) -> dict[str, object]:
    return {
        "name": name,
        "data": {"source": "builtin:breast_cancer"},
        "task": "classification",
        "model": {"type": "mlp", "hidden": hidden},
        "train": {"epochs": 5, "checkpoint": {"every": 0}},
        "register": {"name": name, "alias": "bench"},
    }


def generate(path: Path, rows: int) -> float:
    """The CSV of ``rows`` noisy resampled breast-cancer rows; seconds taken (0 if cached)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from danlu.data import load_source

    if path.exists() and path.with_suffix(".rows").exists():
        if path.with_suffix(".rows").read_text() == str(rows):
            return 0.0
    start = time.perf_counter()
    frame = load_source("builtin:breast_cancer").frame.drop(columns=["target"])
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(frame), rows)
    columns: dict[str, object] = {"id": np.arange(rows)}
    for name in frame.columns:
        values = frame[name].to_numpy(dtype=np.float64)
        noisy = values[picks] + rng.normal(0.0, 0.05 * values.std(), rows)
        columns[name] = np.round(np.abs(noisy), 5)  # positive, as measurements are
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(columns)
    pcsv.write_csv(table, path)
    pq.write_table(table, path.with_suffix(".parquet"))
    path.with_suffix(".rows").write_text(str(rows))
    return time.perf_counter() - start


def train(home: Path, name: str, hidden: list[int]) -> str:
    from danlu.pipeline import run
    from danlu.store import SqlStore

    store = SqlStore(home=home)
    try:
        result = run(recipe(name, hidden), store=store)
        assert result.registered is not None
    finally:
        store.close()
    return f"{name}@bench"


def _stream(csv: Path) -> Any:
    """pyarrow's streaming CSV reader over the file as ``danlu predict`` reads it: features as
    float64, the id as text, 4 MB blocks."""
    from csv import reader

    import pyarrow as pa
    import pyarrow.csv as pcsv

    with csv.open(newline="") as file:
        names = next(reader(file))  # the header (pyarrow quotes its names)
    types = {n: pa.string() if n == "id" else pa.float64() for n in names}
    return pcsv.open_csv(
        csv,
        read_options=pcsv.ReadOptions(block_size=4 << 20),
        convert_options=pcsv.ConvertOptions(column_types=types),
    )


def read_only(csv: Path, repeats: int) -> list[float]:
    """Seconds for the streaming CSV reader alone over the file: the floor for any tool that
    reads this CSV."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _batch in _stream(csv):
            pass
        times.append(time.perf_counter() - start)
    return times


def run_predict(args: list[str], env: dict[str, str]) -> tuple[float, int, float]:
    """(wall seconds, peak RSS in bytes, streaming seconds) of one ``danlu predict``
    subprocess; streaming seconds are the tool's own (first read to renamed output)."""
    timer = ["/usr/bin/time", "-v"] if shutil.which("/usr/bin/time") else []
    start = time.perf_counter()
    done = subprocess.run(
        [*timer, *DANLU, "predict", *args], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"danlu predict failed:\n{done.stderr[-3000:]}")
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    if match:
        peak = int(match.group(1)) * 1024
    else:
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    streamed = re.search(r"predicted [\d,]+ rows with .* in ([\d.]+) s", done.stderr)
    assert streamed is not None, done.stderr[-2000:]
    return seconds, peak, float(streamed.group(1))


def _runtime(home: Path, model: str, threads: int) -> tuple[Any, Any, str]:
    """(the version's Predictor, an ONNX Runtime session on its model.onnx, the input name)."""
    import onnxruntime as ort

    from danlu.export import load_model, read_onnx
    from danlu.store import SqlStore

    store = SqlStore(home=home)
    try:
        mv = store.resolve(model)
        predictor = load_model(model, store=store)
        onnx = read_onnx(store, mv)
    finally:
        store.close()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
    return predictor, session, session.get_inputs()[0].name


def reference(
    home: Path, model: str, csv: Path, threads: int, repeats: int
) -> tuple[list[float], int]:
    """Seconds of ONNX Runtime over the preprocessed rows at batch 1,024, per repeat."""
    import numpy as np
    import pyarrow.csv as pcsv

    predictor, session, name = _runtime(home, model, threads)
    x = predictor.encode(pcsv.read_csv(csv).to_pandas())  # (rows, 30) float32, not timed
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(x), 1024):
            session.run(None, {name: np.ascontiguousarray(x[i : i + 1024])})
        times.append(time.perf_counter() - start)
    return times, len(x)


def reference_file(
    home: Path, model: str, csv: Path, out: Path, threads: int, repeats: int
) -> list[float]:
    """Seconds of the in-process script a user would write around ONNX Runtime, file to file:
    pyarrow's streaming CSV reader (4 MB blocks), the saved preprocessing
    (``Predictor.encode``), ONNX Runtime at batch 1,024, the saved decoding to class labels,
    and ``id, prediction`` written with pyarrow's CSV writer. No checks, no atomic rename, no
    read-ahead thread."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv

    predictor, session, name = _runtime(home, model, threads)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        writer = None
        for batch in _stream(csv):
            x = predictor.encode(batch.to_pandas())
            outputs = np.concatenate(
                [
                    session.run(None, {name: np.ascontiguousarray(x[i : i + 1024])})[0]
                    for i in range(0, len(x), 1024)
                ]
            )
            labels = predictor.decode(outputs)["prediction"]
            table = pa.table({"id": batch.column("id"), "prediction": pa.array(labels)})
            if writer is None:
                writer = pcsv.CSVWriter(out, table.schema)
            writer.write_table(table)
        assert writer is not None
        writer.close()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    from _report import machine, write

    torch.set_num_threads(args.threads)
    csv = DATA / f"breast_cancer_{args.rows}.csv"
    generated = generate(csv, args.rows)
    floor = statistics.median(read_only(csv, args.repeats))
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="danlu-bench-predict-") as folder:
        home = Path(folder) / "home"
        env = {**os.environ, "DANLU_HOME": str(home), "OMP_NUM_THREADS": str(args.threads)}
        for i, (label, hidden) in enumerate(MODELS.items()):
            model = train(home, f"bc{i}", hidden)
            out = Path(folder) / "predictions.csv"
            common = [model, str(csv), "--out", str(out), "--keep", "id"]
            common += ["--threads", str(args.threads)]
            plain = [run_predict(common, env) for _ in range(args.repeats)]
            lines = sum(1 for _ in out.open()) - 1
            assert lines == args.rows, (lines, args.rows)
            proba = [run_predict([*common, "--proba"], env) for _ in range(args.repeats)]
            parquet = [model, str(csv.with_suffix(".parquet")), "--keep", "id"]
            parquet += ["--out", str(out.with_suffix(".parquet")), "--threads", str(args.threads)]
            columnar = [run_predict(parquet, env) for _ in range(args.repeats)]
            ref_times, rows = reference(home, model, csv, args.threads, args.repeats)
            ref = statistics.median(ref_times)
            script_times = reference_file(
                home, model, csv, Path(folder) / "script.csv", args.threads, args.repeats
            )
            script = statistics.median(script_times)
            results[label] = {
                "reference_seconds": [round(t, 3) for t in ref_times],
                "reference_rows_per_s": round(rows / ref),
                "script_seconds": [round(t, 3) for t in script_times],
                "script_rows_per_s": round(rows / script),
                "predict": _summary(plain, rows, ref, script),
                "predict --proba": _summary(proba, rows, ref, script),
                "predict (Parquet in and out)": _summary(columnar, rows, ref, script),
            }
    payload = {
        "rows": args.rows,
        "csv_mb": round(csv.stat().st_size / 2**20, 1),
        "threads": args.threads,
        "repeats": args.repeats,
        "generate_seconds": round(generated, 1),
        "reference": "in-process ONNX Runtime at batch 1,024 on the preprocessed float32 rows",
        "script_reference": "in-process script, CSV file to CSV file: pyarrow streaming read, "
        "Predictor.encode, ONNX Runtime at batch 1,024, decode, pyarrow CSV write",
        "csv_read_only_seconds": round(floor, 3),
        "csv_read_only_rows_per_s": round(args.rows / floor),
        "models": results,
        "targets": {"peak_rss_mb_max": 1024, "ratio_min": 0.8},
        "machine": machine(),
    }
    table = []
    for label, r in results.items():
        table.append(
            [
                label,
                "in-process ORT, batch 1,024 (reference)",
                "-",
                "-",
                f"{r['reference_rows_per_s']:,}",
                "-",
                "1.00×",
                "-",
            ]
        )
        table.append(
            [
                label,
                "in-process script around ORT, CSV to CSV (reference 2)",
                "-",
                round(statistics.median(r["script_seconds"]), 2),  # type: ignore[arg-type]
                f"{r['script_rows_per_s']:,}",
                "-",
                "-",
                "1.00×",
            ]
        )
        for name in ("predict", "predict --proba", "predict (Parquet in and out)"):
            p = r[name]
            table.append(
                [
                    label,
                    f"`danlu {name}`",
                    p["seconds_median"],
                    p["streaming_seconds_median"],
                    f"{p['streaming_rows_per_s']:,}",
                    p["peak_rss_mb"],
                    f"{p['streaming_ratio']:.2f}× ({p['ratio']:.2f}× end to end)",
                    f"{p['script_ratio']:.2f}×",
                ]
            )
    table.append(
        [
            "-",
            "pyarrow reading the CSV alone (no model)",
            "-",
            round(floor, 3),
            f"{args.rows / floor:,.0f}",
            "-",
            "-",
            "-",
        ]
    )
    path = write(
        "predict_batch",
        payload,
        [
            "model",
            "what",
            "s end to end",
            "s streaming",
            "rows/s streaming",
            "peak RSS MB",
            "throughput vs ORT alone",
            "vs script (CSV to CSV)",
        ],
        table,
        notes=(
            f"{args.rows:,} rows × 30 features + id ({payload['csv_mb']} MB CSV), "
            f"{args.threads} ORT thread(s) on both sides, medians of {args.repeats}. End to end: "
            "the `danlu predict` process timed from outside (Python start-up, torch import and "
            "model load included); streaming: the tool's own time from the first read to the "
            "renamed output. Reference 1 is ONNX Runtime alone on rows already read and "
            "preprocessed; reference 2 is the in-process script a user would write around it, "
            "file to file (pyarrow streaming read, the saved preprocessing, ORT at batch 1,024, "
            "class labels, pyarrow CSV write), compared with danlu's streaming seconds. Command: "
            f"`python bench/predict_batch.py --rows {args.rows} --repeats {args.repeats} "
            f"--threads {args.threads}`."
        ),
    )
    print(path.read_text())


def _summary(
    runs: list[tuple[float, int, float]], rows: int, ref: float, script: float
) -> dict[str, object]:
    seconds = statistics.median(s for s, _, _ in runs)
    streaming = statistics.median(s for _, _, s in runs)
    return {
        "seconds_median": round(seconds, 2),
        "seconds": [round(s, 2) for s, _, _ in runs],
        "streaming_seconds_median": round(streaming, 2),
        "streaming_rows_per_s": round(rows / streaming),
        "peak_rss_mb": round(max(p for _, p, _ in runs) / 2**20, 1),
        "streaming_ratio": round(ref / streaming, 3),
        "ratio": round(ref / seconds, 3),
        "script_ratio": round(script / streaming, 3),
    }


if __name__ == "__main__":
    main()
