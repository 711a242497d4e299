"""Serving an ONNX-ready version imports no torch (issue 23's slim image): in a fresh interpreter
whose imports of torch and the training-only libraries are refused (``_torchless.BLOCKED``), a
classifier, a regression, a text model (its tokenizer) and a sequence model load, warm up and
answer exactly what they answer with torch installed; a real ``danlu serve`` starts and answers
there; a version that needs torch is refused with a message saying why and what to install; and
:func:`danlu.serve.serving_requirements` says which of them needs what."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

import danlu
from danlu.serve import SERVING_BASE, serving_needs, serving_requirements
from tests.serve._torchless import BLOCKED
from tests.serve.conftest import SHUTDOWN_S, _wait_for_port, _wait_until_ready

pytestmark = pytest.mark.filterwarnings("error")

ROOT = Path(__file__).resolve().parents[2]
FAILED_EXPORT = "the exporter met an operator it cannot export"


def _recipe(name: str, data: dict[str, Any], task: str, model: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "data": data,
        "task": task,
        "model": model,
        "train": {"epochs": 1, "batch_size": 32, "checkpoint": {"every": 0}},
        "register": {"name": name, "alias": "production"},
    }


def _reviews(n: int = 64) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    good, bad = ["great", "lovely", "superb"], ["awful", "boring", "dull"]
    filler = ["the", "film", "plot", "was", "really", "and"]
    rows = []
    for i in range(n):
        words = [*rng.choice(filler, 3), *rng.choice(good if i % 2 else bad, 2)]
        rng.shuffle(words)
        rows.append({"review": " ".join(words), "y": i % 2})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """wine (MLP classifier), diabetes (MLP regression), reviews (a text CNN: a tokenizer) and
    gunpoint (a 1-D CNN over a series), registered and exported; and wine:2, the same files
    whose ONNX export failed."""
    from danlu.pipeline import run
    from danlu.store import SqlStore

    home = tmp_path_factory.mktemp("torchless")
    reviews = home / "reviews.csv"
    _reviews().to_csv(reviews, index=False)
    store = SqlStore(home=home)
    try:
        mlp = {"type": "mlp", "hidden": [8]}
        run(
            _recipe("wine", {"source": "builtin:wine"}, "classification", mlp),
            store=store,
            home=home,
        )
        run(
            _recipe("diabetes", {"source": "builtin:diabetes"}, "regression", mlp),
            store=store,
            home=home,
        )
        text = {"source": str(reviews), "target": "y", "features": {"review": "text"}}
        text_cnn = {"type": "text_cnn", "embedding": 8, "channels": 4, "kernels": [2]}
        text_recipe = _recipe(
            "reviews", {**text, "text": {"max_length": 8}}, "classification", text_cnn
        )
        run(text_recipe, store=store, home=home)
        series = {"source": "builtin:gunpoint", "split": {"by": "column", "column": "split"}}
        cnn1d = {"type": "cnn1d", "channels": [4], "kernel_sizes": [3]}
        run(_recipe("gunpoint", series, "classification", cnn1d), store=store, home=home)
        wine = store.get_model_version("wine", 1)
        files = {
            f: store.model_reader(wine)(f)
            for f in ("model.json", "model.safetensors", "preprocessing.json")
        }
        failed = {"format": "onnx", "status": "failed", "error": FAILED_EXPORT}
        store.create_model_version(
            "wine",
            run_id=None,
            files={**files, "export.json": json.dumps(failed).encode()},  # type: ignore[dict-item]
            signature=wine.signature,
            metrics={},
        )
    finally:
        store.close()
    return home


def _requests(home: Path) -> dict[str, Any]:
    """A payload per version: a few rows of its own data."""
    from danlu.data import load_source

    wine = load_source("builtin:wine").frame.drop(columns="target").head(5)
    diabetes = load_source("builtin:diabetes").frame.drop(columns="target").head(5)
    gunpoint = load_source("builtin:gunpoint").frame
    series = gunpoint.drop(columns=["split", "target"]).head(3).to_numpy().tolist()
    return {
        "wine:1": {"rows": wine.to_dict("records")},
        "diabetes:1": {"columns": diabetes.to_dict("list")},
        "reviews:1": {"rows": [{"review": "a superb lovely film"}, {"review": "dull and awful"}]},
        "gunpoint:1": {"rows": [{"series": s} for s in series]},  # the form the card enables
    }


def _torchless_serve(home: Path, requests: dict[str, Any]) -> dict[str, Any]:
    process = subprocess.run(
        [sys.executable, "-m", "tests.serve._torchless", "serve"],
        input=json.dumps({"home": str(home), "requests": requests}),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
        check=False,
    )
    assert process.returncode == 0, process.stderr[-4000:]
    return json.loads(process.stdout.strip().splitlines()[-1])


async def _answers(home: Path, requests: dict[str, Any]) -> dict[str, Any]:
    """What the same versions answer in this process, where torch is installed."""
    from danlu.serve._model import ServedModel
    from danlu.serve._types import ServeSettings
    from danlu.store import SqlStore

    store = SqlStore(home=home)
    answers = {}
    try:
        for ref, payload in requests.items():
            settings = ServeSettings(models=(ref,))
            model = await ServedModel.load(store, store.resolve(ref), settings)
            try:
                answers[ref] = await model.predict(model.parse(payload, max_rows=1024))
            finally:
                await model.close()
    finally:
        store.close()
    return answers


def test_onnx_ready_versions_serve_without_torch_and_answer_as_with_it(home: Path) -> None:
    from danlu.store import SqlStore

    requests = _requests(home)
    torch_asked = "wine:1 --runtime torch"
    got = _torchless_serve(
        home, {**requests, "wine:2": requests["wine:1"], torch_asked: requests["wine:1"]}
    )
    assert got["loaded"] == [], f"blocked modules were imported: {got['loaded']}"
    expected = json.loads(json.dumps(asyncio.run(_answers(home, requests))))  # JSON floats
    for ref in requests:
        served = got["models"][ref]
        assert "error" not in served, f"{ref}: {served.get('error')}"
        assert served["runtime"] == "onnx" and served["built"] is False, ref
        assert served["answer"] == expected[ref], ref  # the same ONNX graph: the same bits
        assert served["drift_window"] == len(next(iter(served["answer"].values())))
    # ... and what the torch predictor itself answers (danlu.load_model, no ONNX at all)
    predictor = danlu.load_model("wine:1", store=SqlStore(home=home))
    labels = predictor.predict(pd.DataFrame(requests["wine:1"]["rows"]))["prediction"]
    assert got["models"]["wine:1"]["answer"]["predictions"] == labels.tolist()
    assert got["models"]["gunpoint:1"]["signature"]["sequence"]["length"] == 150
    # a version that needs torch: refused, saying why (its export's error) and what to do
    error = got["models"]["wine:2"]["error"]
    assert error[0] == "MissingExtraError"
    assert "serves with the torch runtime" in error[1] and FAILED_EXPORT in error[1]
    assert "torch is not installed" in error[1] and "package the model with torch" in error[1]
    assert got["models"][torch_asked]["error"][0] == "MissingExtraError"
    assert "--runtime torch was asked for" in got["models"][torch_asked]["error"][1]
    # danlu.load_model works up to the network, which says it needs torch
    assert got["predictor"][0] == "MissingExtraError" and "needs torch" in got["predictor"][1]


def test_a_lazy_bundle_builds_its_network_on_first_use(home: Path) -> None:
    from danlu.models import load_bundle
    from danlu.store import SqlStore

    store = SqlStore(home=home)
    try:
        mv = store.get_model_version("gunpoint", 1)
        eager = load_bundle(store.model_reader(mv), mv.ref)
        lazy = load_bundle(store.model_reader(mv), mv.ref, lazy=True)
        assert not lazy.model_built and lazy.sequence_shape == eager.sequence_shape == (1, 150)
        rows = np.zeros((2, 1, 150))
        np.testing.assert_array_equal(
            lazy.predict(rows)["prediction"], eager.predict(rows)["prediction"]
        )
        assert lazy.model_built
    finally:
        store.close()


def test_danlu_serve_starts_and_answers_without_torch(home: Path, tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    command = [
        sys.executable,
        "-m",
        "tests.serve._torchless",
        "cli",
        "serve",
        "wine@production",
        "reviews@production",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ]
    env = {**os.environ, "DANLU_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("DANLU_DB_URL", None)
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{_wait_for_port(process, log_path)}"
        _wait_until_ready(process, url, log_path)
        with httpx.Client(base_url=url, timeout=30) as http:
            listed = http.get("/v1/models").json()["models"]
            assert {(m["name"], m["runtime"]) for m in listed} == {
                ("wine", "onnx"),
                ("reviews", "onnx"),
            }
            rows = _requests(home)["wine:1"]["rows"]
            answer = http.post("/v1/models/wine/predict", json={"rows": rows})
            assert answer.status_code == 200, answer.text
            expected = asyncio.run(_answers(home, {"wine:1": {"rows": rows}}))["wine:1"]
            assert answer.json()["predictions"] == expected["predictions"]
            text = http.post("/v1/models/reviews/predict", json={"rows": [{"review": "lovely"}]})
            assert text.status_code == 200 and len(text.json()["predictions"]) == 1
            paths = http.get("/openapi.json").json()["paths"]
            assert {"/v1/models/wine/predict", "/v1/models/reviews/predict"} <= set(paths)
            info = http.get("/v1/models/reviews").json()
            assert info["runtime"] == "onnx" and info["signature"]["inputs"][0]["kind"] == "text"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=SHUTDOWN_S) == 0, log_path.read_text()[-4000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert not re.search(r"Traceback|ModuleNotFoundError", log_path.read_text())


def test_serving_requirements_come_from_the_versions_files(home: Path) -> None:
    from danlu.store import SqlStore

    store = SqlStore(home=home)
    try:

        def needs(ref: str, **options: Any) -> set[str]:
            return serving_requirements(store, store.resolve(ref), **options)

        assert needs("wine:1") == needs("gunpoint:1") == set()
        assert needs("reviews:1") == {"tokenizers"}  # its preprocessing holds a tokenizer
        assert needs("wine:2") == {"torch", "safetensors"}  # its export failed
        assert needs("wine:1", runtime="torch") == {"torch", "safetensors"}
        reader = store.model_reader(store.resolve("wine:2"))
        found = serving_needs(reader)  # a reader alone: a packaged version's files
        assert found.runtime == "torch" and FAILED_EXPORT in (found.onnx_error or "")
        assert "torch" in found.reasons
        assert not (SERVING_BASE & BLOCKED) and "onnxruntime" in SERVING_BASE
        # a model.onnx that is not the file its export checked is not served: torch is needed
        mv = store.resolve("wine:1")
        broken = {
            **{f: store.model_reader(mv)(f) for f in mv.files},
            "model.onnx": b"not the exported graph",
        }
        assert serving_needs(broken.get).runtime == "torch"
    finally:
        store.close()
