"""Serving under load: ``danlu serve`` against a naive and a lean hand-written endpoint.

For the digits CNN (the architecture of ``examples/digits_cnn.yaml``, 64 pixel inputs) and the
breast-cancer MLP (``hidden [16]``, 30 numeric inputs), single-sample predict requests (one fixed
JSON row, ``{"rows": [{...}]}``) from a closed-loop client at 1, 8, 32 and 128 concurrent
connections: requests/s, p50 and p99 latency, errors. The servers, all uvicorn on 127.0.0.1 with
httptools + uvloop, one process each, ``OMP_NUM_THREADS=1`` and one inference thread:

- ``danlu``: ``danlu serve digits@production breast_cancer@production`` (ONNX Runtime, micro-
  batching, a predict API key configured and sent by the client, metrics, drift);
- ``naive`` (reference a): a sync FastAPI route — DataFrame, saved preprocessing, torch per request;
- ``lean``  (reference b): an async Starlette route calling an ONNX Runtime session directly;
- ``floor``: an async Starlette route answering a fixed body (no model: what HTTP allows);

plus (c), the in-process ONNX Runtime ceiling (``session.run`` calls per second at batch 1 and 32,
no HTTP). See ``bench/serve_refs.py`` for the references.

The load generator is Debian's ``wrk`` (one thread, ``bench/serve_load.lua``; each connection is
a closed loop), or an aiohttp closed-loop client when wrk is missing. The machine has 2 cores: by
default every server is pinned to CPU 0 and wrk to CPU 1 (``taskset``), so the client never takes
the server's core (``--no-pin`` lets the OS schedule both). All servers run at once (idle ones cost
nothing) and the points are interleaved (for each model and concurrency, each server in turn), so
a background load drifting over the run hits every server alike. Each point runs ``--seconds``
(6) after a 2 s warm-up per server and model.

Also measured: a per-stage profile of danlu's request path in-process (µs per stage with
``time.perf_counter`` over many iterations, and the whole ASGI app called without a socket), a
py-spy sample of the danlu server under 32-connection load when py-spy is installed, and a hot
swap under 32-connection load: the ``digits@production`` alias moved 10 times between two
versions (``--poll 0.2``), counting failed requests and the versions that answered.

Targets (issue 7): at 32 concurrent danlu ≥ 3× naive's requests/s with p99 ≤ 30 ms and ≥ 0.85×
lean's; at 128 concurrent no errors other than deliberate 503s and p99 ≤ 100 ms; hot swap: zero
failed requests across 10 alias moves.

    python bench/serve_load.py [--seconds 6] [--max-wait-ms 0] [--max-batch-size 32] [--no-pin]
        [--home DIR (reuse trained models)] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("DANLU_DB_URL", None)  # the models live in a SQLite store of our own

from _report import machine, write  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
NAME = "serve_load"
PYTHON = sys.executable
DANLU = str(Path(sys.executable).parent / "danlu")
LUA = BENCH / "serve_load.lua"
CONNECTIONS = (1, 8, 32, 128)
SERVERS = ("danlu", "lean", "naive", "floor")
MODELS = {
    "digits": "digits CNN (64 inputs)",
    "breast_cancer": "breast-cancer MLP (30 inputs)",
}
SERVER_CPU, CLIENT_CPU = "0", "1"
TARGET_NAIVE, TARGET_LEAN, TARGET_P99_32, TARGET_P99_128 = 3.0, 0.85, 30.0, 100.0
SWAPS = 10


# -- models ----------------------------------------------------------------------------------------
def _recipe(name: str, seed: int) -> dict[str, Any]:
    split = {"test": 0.2, "val": 0.1, "stratify": True, "seed": 0}
    if name == "digits":
        data = {"source": "builtin:digits", "split": split, "prepare": {"scale": "minmax"}}
        model = {"type": "cnn", "channels": [32, 64], "convs_per_stage": 2, "hidden": 128}
        epochs = 3
    else:
        data = {"source": "builtin:breast_cancer", "split": split, "prepare": {"scale": "standard"}}
        model = {"type": "mlp", "hidden": [16]}
        epochs = 10
    return {
        "name": f"{name}-serve-bench",
        "data": data,
        "task": "classification",
        "model": model,
        "train": {"epochs": epochs, "seed": seed, "checkpoint": {"every": 0}},
        "register": {"name": name, "alias": "production"},
    }


def prepare_models(home: Path) -> dict[str, Any]:
    """Train and register digits (2 versions, for the hot swap) and breast_cancer (1) in ``home``
    (reused when already there); production → version 1. Returns the store."""
    import danlu.pipeline
    from danlu.export._onnx import onnx_ready
    from danlu.store import SqlStore

    store = SqlStore(home=home)
    have = {m.name: len(store.list_model_versions(m.name)) for m in store.list_models()}
    for name, versions in (("digits", 2), ("breast_cancer", 1)):
        for seed in range(have.get(name, 0), versions):
            print(f"training {name} (seed {seed}) ...", flush=True)
            danlu.pipeline.run(_recipe(name, seed), store=store)
        store.set_alias(name, "production", 1, actor="bench")
        for mv in store.list_model_versions(name):
            if not onnx_ready(store, mv):
                raise SystemExit(f"{mv.ref} has no passing ONNX export; cannot benchmark it")
    return store


def request_body(store: Any, name: str) -> bytes:
    """One real test row of the model's data as ``{"rows": [{feature: value}]}``."""
    from sklearn import datasets

    frame = getattr(datasets, f"load_{name}")(as_frame=True).frame
    mv = store.get_model_version(name, None, alias="production")
    names = [i["name"] for i in mv.signature["inputs"]]
    row = frame.iloc[7]
    return json.dumps({"rows": [{n: float(row[n]) for n in names}]}).encode()


# -- servers --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str, timeout: float = 5.0, secret: str = "") -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    try:
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout) as r:  # noqa: S310 - loopback
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


class Server:
    """One server process on 127.0.0.1 (pinned to the server CPU unless told otherwise)."""

    def __init__(self, kind: str, cmd: list[str], ready: str, home: Path, pin: bool) -> None:
        self.kind = kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_path = ready
        env = {**os.environ, "OMP_NUM_THREADS": "1", "DANLU_HOME": str(home)}
        env.pop("DANLU_DB_URL", None)
        full = [*(["taskset", "-c", SERVER_CPU] if pin else []), *cmd, "--port", str(self.port)]
        self.log = open(home / f"server-{kind}-{self.port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(full, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server {self.kind} exited early; see {self.log.name}")
            if _get(self.url + self.ready_path, 1.0)[0] == 200:
                return
            time.sleep(0.2)
        raise SystemExit(f"server {self.kind} was not ready within {timeout:g} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


def start_server(kind: str, args: argparse.Namespace, home: Path, poll: float = 2.0) -> Server:
    refs = [f"{m}@production" for m in args.models]
    if kind == "danlu":
        cmd = [
            DANLU, "serve", *refs,
            "--max-batch-size", str(args.max_batch_size),
            "--max-wait-ms", str(args.max_wait_ms),
            "--max-queue", str(args.max_queue),
            "--poll", str(poll),
        ]  # fmt: skip
        return Server(kind, cmd, "/readyz", home, args.pin)
    cmd = [PYTHON, str(BENCH / "serve_refs.py"), kind, *refs, "--home", str(home)]
    return Server(kind, cmd, "/healthz", home, args.pin)


# -- load ------------------------------------------------------------------------------------------
def run_wrk(
    url: str, body_file: Path, secret: str, connections: int, seconds: float, pin: bool,
    count: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """One closed-loop point with wrk (one thread): totals and latency percentiles."""
    env = {**os.environ, "WRK_BODY": str(body_file), "WRK_AUTH": secret, "WRK_COUNT": "01"[count]}
    cmd = [
        *(["taskset", "-c", CLIENT_CPU] if pin else []),
        "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "--latency",
        "-s", str(LUA), url,
    ]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    line = next((s for s in out.stdout.splitlines() if s.startswith("WRKJSON ")), None)
    if line is None:
        raise SystemExit(f"wrk gave no result:\n{out.stdout}\n{out.stderr}")
    r = json.loads(line[len("WRKJSON ") :])
    e = r["errors"]
    socket_errors = e["connect"] + e["read"] + e["write"] + e["timeout"]
    duration = r["duration_us"] / 1e6
    return {
        "requests": r["requests"],
        "seconds": round(duration, 3),
        "rps": round(r["requests"] / duration, 1),
        "p50_ms": round(r["latency_us"]["p50"] / 1000, 3),
        "p90_ms": round(r["latency_us"]["p90"] / 1000, 3),
        "p99_ms": round(r["latency_us"]["p99"] / 1000, 3),
        "max_ms": round(r["latency_us"]["max"] / 1000, 3),
        "non_2xx": e["status"],
        "socket_errors": socket_errors,
        "errors": e["status"] + socket_errors,
        "statuses": r["statuses"],
        "versions": r["versions"],
        "client": "wrk",
    }


def run_aiohttp(
    url: str, body_file: Path, secret: str, connections: int, seconds: float, pin: bool,
    count: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """The fallback client: ``connections`` closed loops on aiohttp, in this process."""
    import aiohttp

    if pin:
        os.sched_setaffinity(0, {int(CLIENT_CPU)})
    body = body_file.read_bytes()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {secret}"}
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    socket_errors = 0

    async def loop(session: aiohttp.ClientSession, stop: float) -> None:
        nonlocal socket_errors
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    statuses[str(r.status)] += 1
                    versions[r.headers.get("X-Model-Version", "none")] += 1
            except (aiohttp.ClientError, TimeoutError):
                socket_errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    async def main() -> float:
        timeout = aiohttp.ClientTimeout(total=10)
        conn = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
            t0 = time.perf_counter()
            await asyncio.gather(*(loop(session, t0 + seconds) for _ in range(connections)))
            return time.perf_counter() - t0

    try:
        duration = asyncio.run(main())
    finally:
        if pin:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    latencies.sort()

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 3)

    non_2xx = sum(n for s, n in statuses.items() if not s.startswith("2"))
    return {
        "requests": len(latencies),
        "seconds": round(duration, 3),
        "rps": round(len(latencies) / duration, 1),
        "p50_ms": pct(0.5),
        "p90_ms": pct(0.9),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "non_2xx": non_2xx,
        "socket_errors": socket_errors,
        "errors": non_2xx + socket_errors,
        "statuses": dict(statuses),
        "versions": dict(versions),
        "client": "aiohttp",
    }


_SERIES = re.compile(
    r"^(danlu_requests_total|danlu_batch_rows_sum|danlu_batch_rows_count)\{(.*)\} (\S+)$"
)


def danlu_counts(url: str, model: str) -> Counter[str]:
    """danlu's request counts by status code, and its batch-row sums, for ``model``."""
    counts: Counter[str] = Counter()
    status, text = _get(url + "/metrics")
    if status != 200:
        return counts
    for line in text.decode().splitlines():
        m = _SERIES.match(line)
        if m is None:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if labels.get("model") != model:
            continue
        key = f"code_{labels['code']}" if "code" in labels else m.group(1).rsplit("_", 1)[1]
        counts[key] += float(m.group(3))
    return counts


# -- (c): the in-process ceiling ------------------------------------------------------------------
def _rate(call: Any, seconds: float, max_calls: int = 2_000_000) -> tuple[int, float]:
    """Calls of ``call`` in about ``seconds`` (bounded in count too), and the time they took."""
    for _ in range(50):
        call()
    n, t0 = 0, time.perf_counter()
    stop = t0 + seconds
    while n < max_calls:
        for _ in range(50):
            call()
        n += 50
        if time.perf_counter() >= stop:
            break
    return n, time.perf_counter() - t0


def ort_ceiling(store: Any, name: str, seconds: float) -> dict[str, Any]:
    """Raw ``session.run`` calls per second at batch 1 and 32 (one thread, the server CPU)."""
    import numpy as np
    import onnxruntime as ort

    from danlu.export._onnx import read_onnx

    mv = store.get_model_version(name, None, alias="production")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(
        read_onnx(store, mv), sess_options=options, providers=["CPUExecutionProvider"]
    )
    input_name = session.get_inputs()[0].name
    dim = session.get_inputs()[0].shape[1]
    out: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    for batch in (1, 32):
        x = rng.random((batch, dim), dtype=np.float32)
        n, took = _rate(lambda x=x: session.run(None, {input_name: x}), seconds)
        out[f"batch{batch}"] = {
            "calls_per_s": round(n / took, 1),
            "rows_per_s": round(n * batch / took, 1),
            "us_per_call": round(took / n * 1e6, 2),
        }
    return out


# -- the in-process profile ------------------------------------------------------------------------
def _us(call: Any, seconds: float = 0.6) -> float:
    n, took = _rate(call, seconds, max_calls=200_000)
    return round(took / n * 1e6, 2)


def stage_profile(
    home: Path, args: argparse.Namespace, secret: str, bodies: dict[str, bytes]
) -> dict[str, Any]:
    """µs per stage of danlu's predict path for one row, measured in this process (pinned to the
    server CPU), and the whole ASGI apps (danlu, lean, floor) called without a socket."""
    import serve_refs
    import uvloop

    from danlu.serve import ServeSettings
    from danlu.serve._app import decode_body, dumps, server_state
    from danlu.serve._auth import PREDICT
    from danlu.serve._server import build_app
    from danlu.store import SqlStore

    refs = tuple(f"{m}@production" for m in args.models)
    settings = ServeSettings(
        models=refs,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        poll_seconds=0,
        extra={"gc_freeze": True},  # as `danlu serve` runs it
    )
    app = build_app(settings, lambda: SqlStore(home=home))
    lean = serve_refs.lean_app(list(refs), str(home))
    floor = serve_refs.floor_app(list(refs), str(home))
    state = server_state(app)
    result: dict[str, Any] = {}

    async def asgi_call(target: Any, path: str, body: bytes) -> int:
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [
                (b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"authorization", f"Bearer {secret}".encode()),
            ],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {},
        }  # fmt: skip
        sent = False
        status = 0

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)  # a client that stays connected
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await target(scope, receive, send)
        return status

    async def timed_async(make: Any, seconds: float = 0.6) -> float:
        for _ in range(50):
            await make()
        n, t0 = 0, time.perf_counter()
        while n < 100_000:
            for _ in range(20):
                await make()
            n += 20
            if time.perf_counter() - t0 >= seconds:
                break
        return round((time.perf_counter() - t0) / n * 1e6, 2)

    async def one_model(name: str) -> dict[str, Any]:
        headers = [(b"authorization", f"Bearer {secret}".encode())]
        body = bodies[name]
        served = state.pool.route(name)
        payload = decode_body(body)
        x = served.parse(payload, settings.max_rows)
        raw = served.runtime.outputs(x)
        out = await served.predict(x)
        answer = {"model": name, "version": served.version, "ref": served.ref, **out}
        path = f"/v1/models/{name}/predict"
        assert await asgi_call(app, path, body) == 200
        stages = {
            "auth (cached key)": await timed_async(lambda: state.auth.authorize(headers, PREDICT)),
            "decode_body (UTF-8 + JSON)": _us(lambda: decode_body(body)),
            "parse (validate + preprocess)": _us(lambda: served.parse(payload, settings.max_rows)),
            "runtime.outputs (ONNX Runtime, 1 row)": _us(lambda: served.runtime.outputs(x)),
            "batcher round trip (submit → worker thread → future), incl. model": (
                await timed_async(lambda: served._batcher.submit(x))
            ),
            "decode outputs (bundle.decode)": _us(lambda: served.bundle.decode(raw)),
            "drift observe": _us(lambda: served.monitor.observe(x)),
            "served.predict (batcher + decode + drift)": await timed_async(
                lambda: served.predict(x)
            ),
            "encode response (dumps)": _us(lambda: dumps(answer)),
            "metrics observe_request": _us(
                lambda: state.metrics.observe_request(name, served.version, 200, 0.002)
            ),
        }
        whole = {
            "danlu ASGI app": await timed_async(lambda: asgi_call(app, path, body)),
            "lean ASGI app": await timed_async(lambda: asgi_call(lean, path, body)),
            "floor ASGI app": await timed_async(lambda: asgi_call(floor, path, body)),
        }
        return {"stages_us": stages, "asgi_in_process_us": whole}

    async def main() -> None:
        async with app.router.lifespan_context(app):
            for name in args.models:
                result[name] = await one_model(name)

    if args.pin:
        os.sched_setaffinity(0, {int(SERVER_CPU)})
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    finally:
        if args.pin:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    return result


CATEGORIES = (  # (substring of a py-spy frame, category); a frame's first match decides
    ("onnxruntime", "model (ONNX Runtime)"),
    ("_runtime.py", "model (ONNX Runtime)"),
    ("decode_body", "JSON decode/encode"),
    ("dumps (", "JSON decode/encode"),
    ("_codec.py", "JSON decode/encode"),
    ("/json/", "JSON decode/encode"),
    ("prometheus_client", "metrics"),
    ("_metrics.py", "metrics"),
    ("parse (", "validation + preprocessing"),
    ("_parse.py", "validation + preprocessing"),
    ("_preprocessor.py", "validation + preprocessing"),
    ("danlu/tasks", "output decoding + drift"),
    ("danlu/data", "output decoding + drift"),
    ("_model.py", "output decoding + drift"),
    ("_outputs.py", "output decoding + drift"),
    ("danlu/models", "output decoding + drift"),
    ("_batcher.py", "batching (queue, thread hop)"),
    ("_auth.py", "auth"),
    ("_limits.py", "limits (body size/deadline, header deadline)"),
    ("uvicorn/server.py", "event loop (uvloop, sockets)"),
    ("uvicorn/main.py", "event loop (uvloop, sockets)"),
    ("uvicorn/_compat.py", "event loop (uvloop, sockets)"),
    ("uvicorn/", "HTTP (uvicorn + httptools)"),
    ("httptools", "HTTP (uvicorn + httptools)"),
    ("starlette/", "ASGI framework (Starlette/FastAPI, routing, middleware)"),
    ("fastapi/", "ASGI framework (Starlette/FastAPI, routing, middleware)"),
    ("_app.py", "ASGI framework (Starlette/FastAPI, routing, middleware)"),
    ("_lane.py", "ASGI framework (Starlette/FastAPI, routing, middleware)"),
    ("_errors.py", "ASGI framework (Starlette/FastAPI, routing, middleware)"),
    ("_pool.py", "ASGI framework (Starlette/FastAPI, routing, middleware)"),
)


def _category(frame: str) -> str | None:
    return next((c for s, c in CATEGORIES if s in frame), None)


def pyspy_profile(pid: int, seconds: float, workdir: Path) -> dict[str, Any] | None:
    """Sample the server with py-spy for ``seconds``: share of samples per category (a sample
    goes to the category of its innermost categorised frame)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return None
    raw = workdir / f"pyspy-{pid}.txt"
    cmd = [spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "250", "-f", "raw",
           "-o", str(raw), "--nonblocking"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0 or not raw.exists():
        return {"error": (done.stderr or done.stdout)[-500:]}
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        category = "event loop (uvloop, sockets)"
        for frame in reversed(stack.split(";")):
            found = _category(frame)
            if found is not None:
                category = found
                break
        counts[category] += int(n)
    total = sum(counts.values()) or 1
    return {
        "samples": total,
        "share": {c: round(n / total, 4) for c, n in counts.most_common()},
    }


# -- hot swap --------------------------------------------------------------------------------------
def hot_swap(args: argparse.Namespace, home: Path, store: Any, body_file: Path, secret: str,
             client: Any) -> dict[str, Any]:  # fmt: skip
    """Move digits@production between versions 1 and 2 ``SWAPS`` times under 32-connection
    load (the server polls the alias every 0.2 s)."""
    server = start_server("danlu", args, home, poll=0.2)
    moves: list[dict[str, Any]] = []
    try:
        server.wait_ready()
        url = server.url + "/v1/models/digits/predict"
        run_wrk_warm = client(url, body_file, secret, 32, 1, args.pin)
        del run_wrk_warm
        seconds = SWAPS * args.swap_gap + 3
        result: dict[str, Any] = {}

        def load() -> None:
            result.update(client(url, body_file, secret, 32, seconds, args.pin, count=True))

        thread = threading.Thread(target=load)
        thread.start()
        time.sleep(1.0)
        for i in range(SWAPS):
            version = 2 if i % 2 == 0 else 1
            t0 = time.monotonic()
            store.set_alias("digits", "production", version, actor="bench")
            served = None
            while time.monotonic() - t0 < 10:  # bounded: the watcher polls every 0.2 s
                status, text = _get(server.url + "/v1/models/digits", 2.0, secret)
                if status == 200 and json.loads(text)["version"] == version:
                    served = round(time.monotonic() - t0, 3)
                    break
                time.sleep(0.05)
            moves.append({"to": version, "serving_after_s": served})
            time.sleep(max(0.0, args.swap_gap - (time.monotonic() - t0)))
        thread.join(timeout=seconds + 90)
    finally:
        server.stop()
        store.set_alias("digits", "production", 1, actor="bench")
    return {
        "swaps": SWAPS,
        "swaps_completed": sum(m["serving_after_s"] is not None for m in moves),
        "moves": moves,
        "requests": result.get("requests"),
        "failed": result.get("errors"),
        "statuses": result.get("statuses"),
        "versions": result.get("versions"),
        "rps": result.get("rps"),
        "p99_ms": result.get("p99_ms"),
        "max_ms": result.get("max_ms"),
    }


# -- the run ---------------------------------------------------------------------------------------
def wait_for_quiet(limit_s: float) -> dict[str, Any]:
    """Wait (bounded) until no pytest runs on the machine; the load average when done."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        busy = subprocess.run(["pgrep", "-f", "pytest"], capture_output=True, text=True).stdout
        if not busy.strip():
            break
        time.sleep(20)
    else:
        print(f"warning: pytest still running after {limit_s:g} s; measuring anyway", flush=True)
    return {
        "waited_s": round(time.monotonic() - t0, 1),
        "pytest_running": bool(
            subprocess.run(["pgrep", "-f", "pytest"], capture_output=True, text=True).stdout.strip()
        ),
        "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per load point")
    parser.add_argument("--connections", type=int, nargs="+", default=list(CONNECTIONS))
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=0.0)
    parser.add_argument("--max-queue", type=int, default=1024)
    parser.add_argument("--swap-gap", type=float, default=0.8, help="seconds between alias moves")
    parser.add_argument("--no-pin", dest="pin", action="store_false")
    parser.add_argument("--client", choices=("wrk", "aiohttp"), default=None)
    parser.add_argument("--home", type=Path, default=None, help="reuse (or keep) the models here")
    parser.add_argument("--quiet-wait", type=float, default=600.0, help="max s to wait for pytest")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--no-swap", dest="swap", action="store_false")
    parser.add_argument("--quick", action="store_true", help="2 s points (a smoke run)")
    parser.add_argument("--out", default=NAME)
    args = parser.parse_args()
    if args.quick:
        args.seconds = 2.0
    started = time.perf_counter()
    use_wrk = (args.client or ("wrk" if shutil.which("wrk") else "aiohttp")) == "wrk"
    client = run_wrk if use_wrk else run_aiohttp
    if args.pin and (os.cpu_count() or 1) < 2:
        args.pin = False

    tmp = None
    if args.home is None:
        tmp = tempfile.TemporaryDirectory(prefix="danlu-serve-bench-")
        args.home = Path(tmp.name)
    home = args.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DANLU_HOME"] = str(home)
    store = prepare_models(home)
    _, secret = store.create_api_key("predict", name="serve-bench", actor="bench")
    bodies = {m: request_body(store, m) for m in args.models}
    body_files = {}
    for m, body in bodies.items():
        body_files[m] = home / f"body-{m}.json"
        body_files[m].write_bytes(body)

    quiet = wait_for_quiet(args.quiet_wait)
    print(f"load average at start: {quiet['loadavg_at_start']}", flush=True)

    # (c) and the in-process profile first, while no server runs
    if args.pin:
        os.sched_setaffinity(0, {int(SERVER_CPU)})
    ceiling = {m: ort_ceiling(store, m, 1.5) for m in args.models}
    if args.pin:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    stages = stage_profile(home, args, secret, bodies) if args.profile else {}

    servers = {kind: start_server(kind, args, home) for kind in args.servers}
    points: list[dict[str, Any]] = []
    spy: dict[str, Any] = {}
    try:
        for s in servers.values():
            s.wait_ready()
        for model in args.models:
            for s in servers.values():  # warm-up (discarded)
                client(f"{s.url}/v1/models/{model}/predict", body_files[model], secret, 32, 2,
                       args.pin)  # fmt: skip
            for c in args.connections:
                for kind, s in servers.items():
                    url = f"{s.url}/v1/models/{model}/predict"
                    before = danlu_counts(s.url, model) if kind == "danlu" else None
                    r = client(url, body_files[model], secret, c, args.seconds, args.pin)
                    r.pop("versions", None)
                    if before is not None:
                        after = danlu_counts(s.url, model)
                        delta = {k: after[k] - before.get(k, 0) for k in after}
                        r["codes"] = {k[5:]: int(v) for k, v in delta.items()
                                      if k.startswith("code_") and v}  # fmt: skip
                        r["deliberate_503"] = r["codes"].get("503", 0)
                        if delta.get("count"):
                            r["mean_batch_rows"] = round(delta["sum"] / delta["count"], 2)
                    else:
                        r["deliberate_503"] = 0
                    points.append({"model": model, "server": kind, "connections": c, **r})
                    print(f"{model:14s} {kind:6s} c={c:<4d} {r['rps']:9.1f} req/s  "
                          f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
                          f"errors {r['errors']}", flush=True)  # fmt: skip
            if args.profile and "danlu" in servers:
                s = servers["danlu"]
                url = f"{s.url}/v1/models/{model}/predict"
                load = threading.Thread(
                    target=client, args=(url, body_files[model], secret, 32, 7, args.pin)
                )
                load.start()
                time.sleep(1.0)
                spy[model] = pyspy_profile(s.proc.pid, 5, home)
                load.join(timeout=90)
    finally:
        for s in servers.values():
            s.stop()

    swap = hot_swap(args, home, store, body_files["digits"], secret, client) if args.swap else None
    payload = summarise(args, quiet, ceiling, stages, spy, points, swap, use_wrk, started)
    report(payload, args.out)
    if tmp is not None:
        tmp.cleanup()


def _point(points: list[dict[str, Any]], model: str, server: str, c: int) -> dict[str, Any] | None:
    return next(
        (
            p
            for p in points
            if p["model"] == model and p["server"] == server and p["connections"] == c
        ),
        None,
    )


def summarise(args: argparse.Namespace, quiet: dict[str, Any], ceiling: dict[str, Any],
              stages: dict[str, Any], spy: dict[str, Any], points: list[dict[str, Any]],
              swap: dict[str, Any] | None, use_wrk: bool, started: float) -> dict[str, Any]:  # fmt: skip
    targets: dict[str, Any] = {}
    for model in args.models:
        d32, n32, l32 = (_point(points, model, s, 32) for s in ("danlu", "naive", "lean"))
        d128 = _point(points, model, "danlu", 128)
        t: dict[str, Any] = {}
        if d32 and n32:
            ratio = d32["rps"] / n32["rps"]
            t["vs_naive_at_32"] = {"ratio": round(ratio, 2), "target": TARGET_NAIVE,
                                   "pass": ratio >= TARGET_NAIVE}  # fmt: skip
        if d32 and l32:
            ratio = d32["rps"] / l32["rps"]
            t["vs_lean_at_32"] = {"ratio": round(ratio, 3), "target": TARGET_LEAN,
                                  "pass": ratio >= TARGET_LEAN}  # fmt: skip
        if d32:
            t["p99_at_32_ms"] = {"value": d32["p99_ms"], "target": TARGET_P99_32,
                                 "pass": d32["p99_ms"] <= TARGET_P99_32}  # fmt: skip
        if d128:
            other = d128["errors"] - d128.get("deliberate_503", 0)
            t["errors_at_128"] = {"value": other, "deliberate_503": d128.get("deliberate_503", 0),
                                  "target": 0, "pass": other == 0}  # fmt: skip
            t["p99_at_128_ms"] = {"value": d128["p99_ms"], "target": TARGET_P99_128,
                                  "pass": d128["p99_ms"] <= TARGET_P99_128}  # fmt: skip
        targets[model] = t
    if swap is not None:
        versions = {v for v, n in (swap["versions"] or {}).items() if n and v != "none"}
        targets["hot_swap"] = {
            "failed": swap["failed"],
            "swaps_completed": swap["swaps_completed"],
            "versions_answering": sorted(versions),
            "pass": swap["failed"] == 0 and swap["swaps_completed"] == SWAPS and len(versions) >= 2,
        }
    return {
        "benchmark": NAME,
        "machine": machine(),
        "environment": {
            **quiet,
            "client": "wrk 4.1 (1 thread, bench/serve_load.lua)" if use_wrk else "aiohttp",
            "pinning": (
                f"servers on CPU {SERVER_CPU}, client on CPU {CLIENT_CPU} (taskset)"
                if args.pin
                else "none"
            ),  # fmt: skip
            "uvicorn": "httptools + uvloop, one process, no access log",
            "OMP_NUM_THREADS": 1,
        },
        "settings": {
            "seconds_per_point": args.seconds,
            "connections": args.connections,
            "danlu": {
                "max_batch_size": args.max_batch_size,
                "max_wait_ms": args.max_wait_ms,
                "max_queue": args.max_queue,
                "runtime": "onnx",
                "threads": 1,
                "api_key": "a predict key configured and sent (Authorization: Bearer)",
            },
        },
        "models": {m: MODELS[m] for m in args.models},
        "points": points,
        "ceiling_in_process": ceiling,
        "profile_in_process": stages,
        "profile_pyspy_32": spy,
        "hot_swap": swap,
        "targets": targets,
        "run_seconds": round(time.perf_counter() - started, 1),
    }


def _fmt_pass(ok: bool) -> str:
    return "**pass**" if ok else "**FAIL**"


def report(payload: dict[str, Any], out: str) -> None:
    points = payload["points"]
    header = ["model", "connections", "server", "req/s", "p50 ms", "p99 ms", "errors",
              "503 (deliberate)", "mean batch rows"]  # fmt: skip
    rows = [
        [p["model"], p["connections"], p["server"], f"{p['rps']:.0f}", f"{p['p50_ms']:.2f}",
         f"{p['p99_ms']:.2f}", p["errors"], p.get("deliberate_503", 0),
         p.get("mean_batch_rows", "")]
        for p in sorted(points, key=lambda p: (p["model"], p["connections"],
                                               SERVERS.index(p["server"])))
    ]  # fmt: skip
    lines = []
    env, settings = payload["environment"], payload["settings"]
    lines.append(
        f"Client: {env['client']}; {env['pinning']}; {env['uvicorn']}; OMP_NUM_THREADS=1; "
        f"{settings['seconds_per_point']:g} s per point. Load average at start: "
        f"{env['loadavg_at_start']} (waited {env['waited_s']} s for pytest to finish)."
    )
    d = settings["danlu"]
    lines.append(
        f"danlu serve settings: --max-batch-size {d['max_batch_size']} --max-wait-ms "
        f"{d['max_wait_ms']:g} --max-queue {d['max_queue']}, runtime onnx, 1 thread; "
        "a predict API key is configured and sent."
    )
    lines.append("\n### Targets at 32 and 128 concurrent connections\n")
    lines.append("| model | danlu/naive at 32 (≥ 3) | danlu/lean at 32 (≥ 0.85) | p99 at 32 (≤ 30 ms) "
                 "| errors at 128 besides 503 (0) | p99 at 128 (≤ 100 ms) |")  # fmt: skip
    lines.append("|---|---|---|---|---|---|")
    for model, t in payload["targets"].items():
        if model == "hot_swap":
            continue

        def cell(key: str, fmt: str, t: dict[str, Any] = t) -> str:
            v = t.get(key)
            if v is None:
                return "–"
            value = v.get("ratio", v.get("value"))
            return f"{value:{fmt}} {_fmt_pass(v['pass'])}"

        lines.append(
            f"| {model} | {cell('vs_naive_at_32', '.2f')} | {cell('vs_lean_at_32', '.3f')} | "
            f"{cell('p99_at_32_ms', '.2f')} | {cell('errors_at_128', 'd')} | "
            f"{cell('p99_at_128_ms', '.2f')} |"
        )
    lines.append("\n### (c) In-process ONNX Runtime ceiling (one thread, no HTTP)\n")
    lines.append("| model | batch 1 calls/s | µs/call | batch 32 calls/s | rows/s at batch 32 |")
    lines.append("|---|---|---|---|---|")
    for model, c in payload["ceiling_in_process"].items():
        lines.append(
            f"| {model} | {c['batch1']['calls_per_s']:.0f} | {c['batch1']['us_per_call']:.1f} | "
            f"{c['batch32']['calls_per_s']:.0f} | {c['batch32']['rows_per_s']:.0f} |"
        )
    floor = {p["model"]: p for p in points if p["server"] == "floor" and p["connections"] == 32}
    if floor:
        lines.append(
            "\nWhat HTTP allows here (the `floor` server: a Starlette route answering a fixed body, "
            "no model) at 32 connections: "
            + ", ".join(
                f"{m} {p['rps']:.0f} req/s ({1e6 / p['rps']:.0f} µs/request)"
                for m, p in floor.items()
            )  # fmt: skip
            + "."
        )
    per_request = [
        (
            m,
            {
                p["server"]: 1e6 / p["rps"]
                for p in points
                if p["model"] == m and p["connections"] == 32
            },
        )
        for m in payload["models"]
    ]
    if any(v for _, v in per_request):
        lines.append(
            "\nServer time per request at 32 connections (1e6 / req/s: each server owns one core): "
            + "; ".join(
                f"{m}: "
                + ", ".join(f"{k} {v:.0f} µs" for k, v in sorted(d.items(), key=lambda kv: kv[1]))
                for m, d in per_request
                if d
            )
            + "."
        )
    if payload["profile_in_process"]:
        lines.append("\n### Where the time goes: danlu's request path in-process (µs, one row)\n")
        models = list(payload["profile_in_process"])
        lines.append("| stage | " + " | ".join(models) + " |")
        lines.append("|---|" + "---|" * len(models))
        first = payload["profile_in_process"][models[0]]
        for key in first["stages_us"]:
            vals = [payload["profile_in_process"][m]["stages_us"][key] for m in models]
            lines.append(f"| {key} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
        for key in first["asgi_in_process_us"]:
            vals = [payload["profile_in_process"][m]["asgi_in_process_us"][key] for m in models]
            lines.append(
                f"| whole {key}, no socket | " + " | ".join(f"{v:.1f}" for v in vals) + " |"
            )
    spy = {m: s for m, s in payload["profile_pyspy_32"].items() if s and "share" in s}
    if spy:
        lines.append("\n### py-spy: danlu server under 32-connection load (share of samples)\n")
        models = list(spy)
        cats = sorted({c for s in spy.values() for c in s["share"]},
                      key=lambda c: -max(s["share"].get(c, 0) for s in spy.values()))  # fmt: skip
        lines.append("| category | " + " | ".join(models) + " |")
        lines.append("|---|" + "---|" * len(models))
        for c in cats:
            lines.append(
                f"| {c} | " + " | ".join(f"{spy[m]['share'].get(c, 0):.1%}" for m in models) + " |"
            )
    swap = payload["hot_swap"]
    if swap:
        t = payload["targets"]["hot_swap"]
        lines.append(
            f"\n### Hot swap under 32-connection load\n\n{swap['swaps_completed']}/{swap['swaps']} "
            f"alias moves of digits@production (1 ↔ 2) took effect; {swap['requests']} requests, "
            f"{swap['failed']} failed, statuses {swap['statuses']}, answered by versions "
            f"{swap['versions']}; p99 {swap['p99_ms']} ms, max {swap['max_ms']} ms. "
            f"{_fmt_pass(t['pass'])}"
        )
    lines.append(f"\nRun time: {payload['run_seconds']:.0f} s.")
    write(out, payload, header, rows, "\n".join(lines))


if __name__ == "__main__":
    main()
