"""The reference servers of ``bench/serve_load.py``, each one uvicorn process on 127.0.0.1.

- ``naive``: the endpoint a user would write first — a sync FastAPI route (``def``: it runs in
  the threadpool) taking the body as a ``dict``, calling ``danlu.load_model(ref).predict(rows)``
  (a pandas DataFrame, the saved preprocessing, the torch model) for every request.
- ``lean``: the leanest hand-written fast endpoint — an async Starlette route: ``json.loads`` →
  ``np.array`` (the saved centre/scale applied as two numpy operations, else the answers would be
  wrong) → ``session.run`` on the event loop → argmax/softmax → ``json.dumps``. No validation,
  auth, metrics or batching.
- ``floor``: what HTTP allows — an async Starlette route that reads the body and answers a fixed
  JSON response; no model at all.

Every server runs under uvicorn with the same options as ``danlu serve`` where they matter
(httptools, uvloop, no access log, no server header, 5 s keep-alive, one process). Each answers
``GET /healthz`` once its models are loaded (the app is built before uvicorn starts).

    python bench/serve_refs.py naive|lean|floor --home DIR --port 8001 digits@production ...
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

UVICORN_OPTIONS: dict[str, Any] = {
    "loop": "uvloop",
    "http": "httptools",
    "ws": "none",
    "access_log": False,
    "log_level": "warning",
    "server_header": False,
    "timeout_keep_alive": 5,
    "lifespan": "on",
}


def naive_app(refs: list[str], home: str) -> Any:
    import torch
    from fastapi import FastAPI

    from danlu import load_model
    from danlu.store import SqlStore, parse_model_ref

    torch.set_num_threads(1)
    store = SqlStore(home=home)
    models = {parse_model_ref(ref)[0]: load_model(ref, store=store) for ref in refs}
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/models/{name}/predict")
    def predict(name: str, body: dict[str, Any]) -> dict[str, Any]:
        out = models[name].predict(body["rows"])  # a DataFrame, preprocessing, torch
        result = {"predictions": out["prediction"].tolist()}
        if "probabilities" in out:
            result["probabilities"] = out["probabilities"].tolist()
        return result

    return app


class _LeanModel:
    """An ONNX Runtime session and what turns raw rows into its input and its output into JSON."""

    def __init__(self, store: Any, ref: str) -> None:
        import numpy as np
        import onnxruntime as ort

        from danlu.export._onnx import read_onnx
        from danlu.models import load_bundle
        from danlu.store import parse_model_ref

        name, version, alias = parse_model_ref(ref)
        mv = store.get_model_version(name, version, alias=alias)

        def read(file: str) -> bytes | None:
            path = store.model_version_path(mv.name, mv.version, file)
            return path.read_bytes() if path.is_file() else None

        bundle = load_bundle(read, ref)
        pre = bundle.preprocessor
        features = pre.schema_.features
        if pre.reducer_ is not None or any(f.kind != "numeric" for f in features):
            raise SystemExit(f"{ref}: the lean endpoint handles numeric features only")
        self.names = [f.name for f in features]
        self.center = np.array([pre.center_[n] for n in self.names], dtype=np.float32)
        self.scale = np.array([pre.scale_[n] for n in self.names], dtype=np.float32)
        self.classes = list(bundle.schema.classes)
        self.temperature = np.float32(bundle.temperature)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            read_onnx(store, mv), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name


def lean_app(refs: list[str], home: str) -> Any:
    import numpy as np
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from danlu.store import SqlStore, parse_model_ref

    store = SqlStore(home=home)
    models = {parse_model_ref(ref)[0]: _LeanModel(store, ref) for ref in refs}

    async def healthz(_: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def predict(request: Request) -> Response:
        m = models[request.path_params["name"]]
        rows = json.loads(await request.body())["rows"]
        x = (np.array([[r[n] for n in m.names] for r in rows], np.float32) - m.center) / m.scale
        logits = m.session.run(None, {m.input: x})[0] / m.temperature  # (n, classes)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        body = {
            "predictions": [m.classes[i] for i in logits.argmax(axis=1).tolist()],
            "probabilities": (e / e.sum(axis=1, keepdims=True)).tolist(),
        }
        return Response(json.dumps(body), media_type="application/json")

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/v1/models/{name}/predict", predict, methods=["POST"]),
        ]
    )


def floor_app(refs: list[str], home: str) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    answer = b'{"predictions":[0],"probabilities":[[1.0,0.0]]}'

    async def healthz(_: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def predict(request: Request) -> Response:
        await request.body()
        return Response(answer, media_type="application/json")

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/v1/models/{name}/predict", predict, methods=["POST"]),
        ]
    )


APPS = {"naive": naive_app, "lean": lean_app, "floor": floor_app}


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=sorted(APPS))
    parser.add_argument("models", nargs="*")
    parser.add_argument("--home", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = APPS[args.kind](args.models, args.home)
    uvicorn.run(app, host="127.0.0.1", port=args.port, **UVICORN_OPTIONS)


if __name__ == "__main__":
    main()
