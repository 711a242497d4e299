"""Run danlu as in a slim serving image: torch and the training-only libraries cannot be imported.

``python -m tests.serve._torchless ACTION ...`` (from the repository root) puts a meta-path
finder first that refuses every module of :data:`BLOCKED` (as ``ModuleNotFoundError``, what an
absent package raises), then:

* ``serve``: reads ``{"home", "requests": {ref: payload}}`` as JSON on stdin (a ref ending in
  `` --runtime torch`` asks for the torch runtime), loads each version
  as ``danlu serve`` does (``ServedModel.load``: runtime, warm-up, drift monitor), answers its
  payload and prints ``{"models": {ref: {...} | {"error": [type, message]}}, "refused": [...]}``
  as JSON on stdout.
* ``cli ARGS...``: runs ``danlu ARGS...`` (e.g. ``serve wine@production --port 0``).
"""

from __future__ import annotations

import asyncio
import importlib.abc
import json
import sys
from typing import Any

#: What a served ONNX-ready version must never import: torch (754 MB installed), the
#: libraries of training, tuning, explaining and reporting, and pyarrow (pandas tries it and
#: goes on without it).
BLOCKED = frozenset(
    {
        "torch",
        "lightgbm",
        "xgboost",
        "optuna",
        "captum",
        "fairlearn",
        "statsmodels",
        "matplotlib",
        "imblearn",
        "transformers",
        "peft",
        "opacus",
        "dask",
        "pyarrow",
    }
)

refused: list[str] = []  # the top-level names something tried to import (or to find)


class RefuseImports(importlib.abc.MetaPathFinder):
    """Refuses the modules of :data:`BLOCKED` as if they were not installed."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        top = name.partition(".")[0]
        if top in BLOCKED:
            if top not in refused:
                refused.append(top)
            raise ModuleNotFoundError(f"No module named {name!r} (refused)", name=name)
        return None


def _install() -> None:
    already = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
    if already:
        raise RuntimeError(f"already imported before the finder: {already}")
    sys.meta_path.insert(0, RefuseImports())


async def _serve_one(store: Any, ref: str, payload: Any, runtime: str) -> dict[str, Any]:
    from danlu.serve._model import ServedModel
    from danlu.serve._types import ServeSettings

    settings = ServeSettings(models=(ref,), runtime=runtime)
    model = await ServedModel.load(store, store.resolve(ref.partition(" ")[0]), settings)
    try:
        answer = await model.predict(model.parse(payload, max_rows=1024))
        return {
            "runtime": model.runtime_name,
            "built": model.bundle.model_built,
            "answer": answer,
            "signature": model.signature,
            "drift_window": model.drift()["window"],
        }
    finally:
        await model.close()


def _serve() -> None:
    from danlu.store import SqlStore

    request = json.load(sys.stdin)
    store = SqlStore(home=request["home"])
    models: dict[str, Any] = {}
    try:
        for ref, payload in request["requests"].items():
            try:
                runtime = "torch" if ref.endswith(" --runtime torch") else "onnx"
                models[ref] = asyncio.run(_serve_one(store, ref, payload, runtime))
            except Exception as exc:  # reported to the test, which asserts on it
                models[ref] = {"error": [type(exc).__name__, str(exc)]}
    finally:
        store.close()
    try:  # what danlu.load_model gives without torch: a predictor that says what it needs
        from danlu.export import load_model

        rows = request["requests"]["wine:1"]["rows"]
        load_model("wine:1", store=SqlStore(home=request["home"])).predict(rows)
        predictor = None
    except Exception as exc:
        predictor = [type(exc).__name__, str(exc)]
    loaded = sorted({m.partition(".")[0] for m in sys.modules} & BLOCKED)
    result = {"models": models, "predictor": predictor, "refused": refused, "loaded": loaded}
    print(json.dumps(result))


def main(argv: list[str]) -> None:
    _install()
    if argv[0] == "serve":
        _serve()
    elif argv[0] == "cli":
        from danlu.cli import main as danlu

        sys.argv = ["danlu", *argv[1:]]
        danlu()
    else:
        raise SystemExit(f"unknown action {argv[0]!r}: serve or cli")


if __name__ == "__main__":
    main(sys.argv[1:])
