"""``danlu serve`` of an ONNX-ready version with torch installed and without it (issue 23).

Each case starts a real ``danlu serve REF`` on 127.0.0.1 — once as usual, once under
``tests/serve/_torchless.py``, whose import finder refuses torch and the training-only libraries
as a slim image lacks them — and measures the seconds from the process start to ``/readyz``
answering 200 and the server's resident memory (``VmRSS``) after one answered prediction. Both
serve on ONNX Runtime; with torch installed the server also builds the torch network at load (so
weights that do not fit it are refused there). Medians of ``--repeats`` starts.

    OMP_NUM_THREADS=1 python bench/serve_without_torch.py --home DIR digits:1 bbc-news:1

Each REF must be ONNX-ready in the store at ``--home``; the request is one row of its signature
(1.0 for numbers, a sentence for text).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _payload(home: str, ref: str) -> dict[str, Any]:
    from danlu.store import SqlStore

    store = SqlStore(home=home)
    try:
        inputs = store.resolve(ref).signature["inputs"]
    finally:
        store.close()
    row = {
        i["name"]: "the match ended in a draw" if i.get("kind") == "text" else 1.0 for i in inputs
    }
    return {"rows": [row]}


def _start(home: str, ref: str, payload: dict[str, Any], torchless: bool, port: int) -> tuple:
    command = (
        [sys.executable, "-m", "tests.serve._torchless", "cli"]
        if torchless
        else [
            sys.executable,
            "-m",
            "danlu",
        ]
    )
    env = {**os.environ, "DANLU_HOME": home, "OMP_NUM_THREADS": "1"}
    began = time.perf_counter()
    process = subprocess.Popen(
        [*command, "serve", ref, "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"danlu serve {ref} exited with {process.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
        ready = time.perf_counter() - began
        name = ref.partition("@")[0].partition(":")[0]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/models/{name}/predict",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200
        status = Path(f"/proc/{process.pid}/status").read_text().splitlines()
        rss = int(next(line for line in status if line.startswith("VmRSS")).split()[1]) / 1024
        return ready, rss
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("refs", nargs="+")
    parser.add_argument("--home", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--port", type=int, default=18300)
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine(), "repeats": args.repeats, "cases": []}
    rows = []
    for ref in args.refs:
        payload = _payload(args.home, ref)
        for torchless in (False, True):
            runs = [
                _start(args.home, ref, payload, torchless, args.port + k)
                for k in range(args.repeats)
            ]
            case = {
                "ref": ref,
                "torch": not torchless,
                "ready_s": round(statistics.median(r[0] for r in runs), 2),
                "rss_mib": round(statistics.median(r[1] for r in runs), 1),
                "runs": [[round(a, 3), round(b, 1)] for a, b in runs],
            }
            results["cases"].append(case)
            rows.append([ref, "yes" if case["torch"] else "no", case["ready_s"], case["rss_mib"]])
            print(case, flush=True)
    path = write(
        "serve_without_torch",
        results,
        ["version", "torch importable", "start → /readyz (s)", "RSS after 1 predict (MiB)"],
        rows,
        f"Medians of {args.repeats} starts of `danlu serve` on ONNX Runtime; "
        "`python bench/serve_without_torch.py --home DIR " + " ".join(args.refs) + "`.",
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
