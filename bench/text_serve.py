"""Serving raw text: MiniLM + LoRA (examples/bbc_news_lora.yaml) on ONNX Runtime vs torch, and
``danlu serve`` under load.

The ONNX Runtime models are the version's fp32 ``model.onnx`` (adapters merged) and its int8
variant made by ``danlu compress`` (ONNX Runtime's dynamic int8 of MatMul/Gemm, registered
after passing the accuracy gate: ``--max-drop``, default 0.01 = one point of test accuracy).

1. In process, on batches of 32 BBC News test articles, each runtime with the same number of
   threads (``--threads``, each value in turn):
   - *model only*: the torch model (``inference_mode``) vs an ONNX Runtime session on the
     version's ``model.onnx`` (adapters merged), on the same prepared rows (token ids);
   - *raw strings*: ``danlu.load_model(...).predict(frame)`` (tokenize, torch, decode) vs the same
     tokenizing and decoding around ``session.run``.
   Rows/s: the median of ``--reps`` timed blocks, the two runtimes alternating block by block.
2. ``danlu serve bbc-news@staging`` (ONNX Runtime, micro-batching, a predict API key) on
   127.0.0.1, ``OMP_NUM_THREADS=1``, pinned to CPU 0, loaded by wrk on CPU 1 (bench/serve_load.py's
   client): one article per request (``{"rows": [{"text": ...}]}``, an article of median length),
   closed loop at 8 and 32 connections for ``--seconds`` each: requests/s, p50, p99, errors.

The model is the example's (``bbc-news@staging``): ``--home`` reuses a home where
``danlu run examples/bbc_news_lora.yaml`` ran; otherwise it is trained and registered once in a
temporary home with the recipe cut to ``--epochs`` (1) — speed does not depend on how well it
was trained.

    python bench/text_serve.py [--home DIR] [--epochs 1] [--reps 7] [--threads 1 2] [--seconds 8]
        [--max-drop 0.01]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("DANLU_DB_URL", None)

import yaml  # noqa: E402
from _report import machine, write  # noqa: E402
from serve_load import DANLU, SERVER_CPU, Server, run_wrk  # noqa: E402

RECIPE = Path(__file__).resolve().parent.parent / "examples" / "bbc_news_lora.yaml"
NAME, REF = "bbc-news", "bbc-news@staging"  # as the example registers it
TARGET = 1.5  # ONNX Runtime / torch at batch 32 (issue 17)


def prepare_model(home: Path, epochs: int) -> Any:
    """Train and register the example once in ``home``; returns the store."""
    import danlu.pipeline
    from danlu.export import onnx_ready
    from danlu.store import SqlStore

    store = SqlStore(home=home)
    if NAME not in {m.name for m in store.list_models()}:
        recipe = yaml.safe_load(RECIPE.read_text())
        recipe["train"]["epochs"] = epochs
        print(f"training {NAME} ({epochs} epoch(s)) ...", flush=True)
        danlu.pipeline.run(recipe, store=store)
    mv = store.get_model_version(NAME, None, alias="staging")
    if not onnx_ready(store, mv):
        raise SystemExit(f"{mv.ref} has no passing ONNX export; cannot benchmark it")
    return store


def int8_variant(store: Any, max_drop: float) -> tuple[Any, dict[str, Any]]:
    """The int8 variant of ``bbc-news@staging`` (made by ``danlu compress`` unless the store has
    one), and its row of the compression table (accuracy, drop, agreement, size)."""
    import json

    from danlu.compress import compress

    parent = store.get_model_version(NAME, None, alias="staging")
    made = [
        v
        for v in store.list_model_versions(NAME)
        if v.tags.get("compression") == "int8-ort-dynamic" and v.tags.get("parent") == parent.ref
    ]
    if not made:
        print("compressing bbc-news@staging (int8-ort-dynamic) ...", flush=True)
        result = compress(
            store,
            REF,
            overrides=[
                "compress.quantize.methods=[ort-dynamic]",
                f"compress.max_metric_drop={max_drop}",
                "compress.repeats=5",
                "compress.alias=null",
            ],
        )
        row = next(v for v in result.variants if v.name == "int8-ort-dynamic")
        if not row.passed:
            raise SystemExit(f"the int8 variant did not pass the gate: {row.reason}")
        made = [store.resolve(str(row.version))]
    mv = made[-1]
    record = json.loads(
        store.model_version_path(mv.name, mv.version, "compression.json").read_text()
    )
    return mv, {**record["this"], "parent_accuracy": record["reference"]["value"]}


def test_articles(store: Any) -> list[str]:
    """The test articles of the run that made the version, in split order."""
    from danlu.config import load_recipe
    from danlu.data import prepare_data
    from danlu.models._text_inputs import text_inputs

    recipe = load_recipe(RECIPE)
    data = prepare_data(recipe.data, recipe.task, **text_inputs(recipe.model))
    return [str(t) for t in data.test_frame["text"]]


def _rows_per_s(call: Any, rows: int, reps: int, block_s: float) -> list[float]:
    """``reps`` blocks of about ``block_s`` seconds each (at least 2 calls): rows per second."""
    out = []
    for _ in range(reps):
        n, t0 = 0, time.perf_counter()
        while n < 2 or time.perf_counter() - t0 < block_s:
            call()
            n += 1
        out.append(n * rows / (time.perf_counter() - t0))
    return out


def in_process(store: Any, texts: list[str], threads: int, reps: int, int8: Any) -> dict[str, Any]:
    """torch vs ONNX Runtime (fp32 and int8) at batch 32, model only and raw strings,
    ``threads`` each."""
    import numpy as np
    import onnxruntime as ort
    import pandas as pd
    import torch

    from danlu.export import load_model, read_onnx

    torch.set_num_threads(threads)
    mv = store.get_model_version(NAME, None, alias="staging")
    predictor = load_model(REF, store=store)
    bundle = predictor.bundle if hasattr(predictor, "bundle") else predictor
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(
        read_onnx(store, mv), options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    quantized = ort.InferenceSession(
        read_onnx(store, int8), options, providers=["CPUExecutionProvider"]
    )
    frame = pd.DataFrame({"text": texts[:32]})
    x = bundle.encode(frame)
    model = bundle.model.eval()

    def torch_model() -> None:
        with torch.inference_mode():
            model(torch.from_numpy(x))

    def ort_model() -> None:
        session.run(None, {name: x})

    def int8_model() -> None:
        quantized.run(None, {name: x})

    def torch_raw() -> None:
        bundle.predict(frame)

    def ort_raw() -> None:
        bundle.decode(session.run(None, {name: bundle.encode(frame)})[0])

    def int8_raw() -> None:
        bundle.decode(quantized.run(None, {name: bundle.encode(frame)})[0])

    with torch.inference_mode():
        reference = model(torch.from_numpy(x)).numpy()
    gap = float(np.abs(session.run(None, {name: x})[0] - reference).max())
    result: dict[str, Any] = {"threads": threads, "batch": len(frame), "max_abs_diff": gap}
    calls = {
        "model": (torch_model, ort_model, int8_model),
        "raw": (torch_raw, ort_raw, int8_raw),
    }
    for what, trio in calls.items():
        for call in trio:  # warm-up
            _rows_per_s(call, len(frame), 1, 0.5)
        t, o, q = [], [], []
        for _ in range(reps):  # alternate block by block
            t += _rows_per_s(trio[0], len(frame), 1, 1.0)
            o += _rows_per_s(trio[1], len(frame), 1, 1.0)
            q += _rows_per_s(trio[2], len(frame), 1, 1.0)
        result[what] = {
            "torch_rows_per_s": statistics.median(t),
            "ort_rows_per_s": statistics.median(o),
            "int8_rows_per_s": statistics.median(q),
            "ratio": statistics.median([b / a for a, b in zip(t, o, strict=True)]),
            "int8_ratio": statistics.median([b / a for a, b in zip(t, q, strict=True)]),
        }
        print(f"{threads} thread(s) {what}: {result[what]}", flush=True)
    return result


def load_points(
    home: Path,
    store: Any,
    texts: list[str],
    connections: list[int],
    seconds: float,
    ref: str = REF,
) -> list[dict[str, Any]]:
    """``danlu serve`` on CPU 0 under wrk on CPU 1: one article per request."""
    import json

    _, secret = store.create_api_key("predict", name="text-bench", actor="bench")
    median = sorted(texts, key=len)[len(texts) // 2]
    body = home / "body-text.json"
    body.write_text(json.dumps({"rows": [{"text": median}]}))
    pin = (os.cpu_count() or 1) >= 2
    server = Server("danlu", [DANLU, "serve", ref], "/readyz", home, pin)
    points = []
    try:
        server.wait_ready(timeout=300)
        url = f"{server.url}/v1/models/{NAME}/predict"
        run_wrk(url, body, secret, 8, 3.0, pin)  # warm-up
        for c in connections:
            point = run_wrk(url, body, secret, c, seconds, pin)
            point.update(connections=c, chars=len(median), model=ref)
            print(f"serve at {c} connections: {point['rps']} req/s, p99 {point['p99_ms']} ms")
            points.append(point)
    finally:
        server.stop()
    return points


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--connections", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--max-drop", type=float, default=0.01)
    args = parser.parse_args()
    tmp = None
    if args.home is None:
        tmp = tempfile.TemporaryDirectory(prefix="danlu-text-serve-")
        args.home = Path(tmp.name)
    home = args.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DANLU_HOME"] = str(home)
    store = prepare_model(home, args.epochs)
    texts = test_articles(store)
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    int8, gate = int8_variant(store, args.max_drop)
    local = [in_process(store, texts, t, args.reps, int8) for t in args.threads]
    points = load_points(home, store, texts, args.connections, args.seconds)
    points += load_points(home, store, texts, args.connections, args.seconds, int8.ref)
    payload = {
        "benchmark": "text_serve",
        "setup": {
            "recipe": "examples/bbc_news_lora.yaml",
            "epochs": args.epochs,
            "reps": args.reps,
            "seconds": args.seconds,
            "server_cpu": SERVER_CPU,
        },
        "machine": machine(),
        "in_process": local,
        "int8": {"ref": int8.ref, **gate},
        "serve": points,
        "target_ratio": TARGET,
    }
    rows: list[list[Any]] = []
    for r in local:
        for what in ("model", "raw"):
            m = r[what]
            rows.append([
                f"in process, batch {r['batch']}, {r['threads']} thread(s), {what}",
                f"{m['torch_rows_per_s']:.0f} rows/s",
                f"{m['ort_rows_per_s']:.0f} rows/s ({m['ratio']:.2f}×)",
                f"{m['int8_rows_per_s']:.0f} rows/s (**{m['int8_ratio']:.2f}×**)",
            ])  # fmt: skip
    for p in points:
        rows.append([
            f"danlu serve {p['model']}, {p['connections']} connections, 1 article/request",
            f"{p['rps']:.1f} req/s",
            f"p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms",
            f"{p['errors']} errors",
        ])  # fmt: skip
    path = write(
        "text_serve",
        payload,
        ["what", "torch (fp32)", "ONNX Runtime fp32 (× torch)", "ONNX Runtime int8 (× torch)"],
        rows,
        notes=(
            f"MiniLM + LoRA r = 8 (merged for ONNX), max_length 128. Largest |ONNX − torch| "
            f"output: {max(r['max_abs_diff'] for r in local):.2e}. int8: {int8.ref}, made by "
            f"danlu compress (int8-ort-dynamic): test accuracy {100 * gate['value']:.1f}% vs "
            f"{100 * gate['parent_accuracy']:.1f}% fp32 (drop {100 * gate['drop']:.2f} points, "
            f"gate {100 * args.max_drop:g} point(s)), {100 * gate['agreement']:.1f}% of test predictions "
            f"unchanged, {gate['size_bytes'] / 1e6:.1f} MB. Target: ONNX Runtime ≥ "
            f"{TARGET}× torch at batch 32. Serving rows: columns hold "
            f"requests/s and latency. Command: `python bench/text_serve.py --epochs "
            f"{args.epochs} --reps {args.reps} --threads {' '.join(map(str, args.threads))} "
            f"--seconds {args.seconds:g}`"
        ),
    )
    print(path.read_text())
    if tmp is not None:
        store.close()
        tmp.cleanup()


if __name__ == "__main__":
    main()
