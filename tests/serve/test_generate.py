"""POST /v1/models/{name}/generate against a fake pool serving a tiny GPT: whole and streamed
answers, limits naming their field, the predict scope, metrics — and a real uvicorn server on
127.0.0.1 where a client that disconnects mid-stream stops the generation and frees its slot."""

from __future__ import annotations

import json
import re
import time
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from danlu.models._generate import generate, generate_text
from danlu.serve import ServeSettings
from danlu.serve import _generate as route
from danlu.serve._app import create_app
from tests.models.test_generate import tiny_lm, tiny_tokenizer
from tests.serve.conftest import route_validators, running_server
from tests.serve.test_app import (
    PREDICT,
    AppClient,
    FakePool,
    FakeServed,
    assert_error,
    keyed_store,
    make_app,
)


class SlowGPT:
    """A GPT whose every forward call waits ``delay`` seconds (a long generation)."""

    def __init__(self, gpt: Any, delay: float) -> None:
        self.gpt, self.delay = gpt, delay
        self.context = gpt.context
        self.training = False

    def logits(self, ids: Any, cache: Any = None, **options: Any) -> Any:
        time.sleep(self.delay)
        return self.gpt.logits(ids, cache, **options)

    def parameters(self) -> Any:
        return self.gpt.parameters()

    def eval(self) -> SlowGPT:
        return self


class FakeLM(FakeServed):
    def __init__(self, model: Any, name: str = "lm", version: int = 2) -> None:
        super().__init__(name, version)
        self.signature = {
            "task": "language_model",
            "inputs": [{"name": "prompt", "kind": "text"}],
            "context": model.context,
            "generate": {"inputs": {"prompt": {"type": "string"}}},
        }
        self.runtime_name = "onnx"  # /predict's runtime; generation says torch
        self.bundle = SimpleNamespace(model=model)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def gpt(tok):
    return tiny_lm(tok)


@pytest.fixture
def client(tok, gpt, monkeypatch):
    monkeypatch.setattr(route, "tokenizer_of", lambda bundle: tok)
    pool = FakePool(FakeServed(), FakeLM(gpt))
    app, _, _ = make_app(pool, extra={"generate_max_tokens": 50})
    with AppClient(app) as c:
        yield c


def _post(client: Any, body: Any, model: str = "lm", headers: Any = PREDICT) -> httpx.Response:
    return client.post(f"/v1/models/{model}/generate", json=body, headers=headers)


def _events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.split("\n\n") if line.startswith("data: ")]


def test_the_whole_text_is_the_library_s(client, tok, gpt):
    body = {"prompt": "the quick", "max_tokens": 20, "temperature": 0}
    answer = _post(client, body)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-model-version"] == "2"
    got = answer.json()
    assert got["text"] == generate_text(gpt, tok, "the quick", max_tokens=20, temperature=0)
    assert got["finish_reason"] == "length" and got["completion_tokens"] == 20
    assert got["prompt_tokens"] == len(tok.encode("the quick").ids)
    assert (got["ref"], got["runtime"]) == ("lm:2", "torch")


def test_a_stream_sends_each_piece_then_the_end(client, tok, gpt):
    body = {"prompt": "the lazy", "max_tokens": 30, "temperature": 0.7, "seed": 5, "stream": True}
    answer = _post(client, body)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = _events(answer.text)
    *pieces, last = events
    assert len(pieces) > 3 and all(set(p) == {"text"} for p in pieces)
    expected = generate(gpt, tok, "the lazy", max_tokens=30, temperature=0.7, seed=5)
    assert "".join(p["text"] for p in pieces) == "".join(expected)
    assert last["done"] is True and last["finish_reason"] == "length"
    assert last["completion_tokens"] == 30 and last["tokens_per_second"] > 0
    metrics = client.get("/metrics").text
    assert re.search(r'danlu_generated_tokens_total\{model="lm",version="2"\} 30\.0', metrics)
    assert 'danlu_generations_in_flight{model="lm"} 0.0' in metrics


def test_stop_strings_end_the_text(client, tok, gpt):
    full = generate_text(gpt, tok, "the quick", max_tokens=30, temperature=0)
    stop = full[8:11]
    answer = _post(
        client, {"prompt": "the quick", "max_tokens": 30, "temperature": 0, "stop": stop}
    )
    assert answer.json()["text"] == full[: full.index(stop)]
    assert answer.json()["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"prompt": "the " * 40}, 413, "prompt"),  # past the context of 16 tokens
        ({"prompt": "the", "max_tokens": 51}, 422, "max_tokens"),  # past the server's 50
        ({"prompt": "the", "max_tokens": 0}, 422, "max_tokens"),
        ({"prompt": "the", "temperature": -1}, 422, "temperature"),
        ({"prompt": "the", "top_p": 2}, 422, "top_p"),
        ({"prompt": "the", "top_k": "5"}, 422, "top_k"),
        ({"prompt": "the", "seed": 1.5}, 422, "seed"),
        ({"prompt": "the", "stop": [""]}, 422, "stop"),
        ({"prompt": "the", "stream": "yes"}, 422, "stream"),
        ({"prompt": "the", "temperatur": 1}, 422, "temperatur"),
        ({"max_tokens": 5}, 422, "prompt"),
    ],
)
def test_a_bad_request_names_its_field(client, body, status, field):
    assert_error(_post(client, body), status, field)
    request, _ = route_validators(client.get("/openapi.json").json(), "/v1/models/lm/generate")
    # the spec refuses it too, but for a prompt's length in tokens, which JSON Schema cannot say
    assert request.is_valid(body) == (field == "prompt" and status == 413), body


def test_integers_may_come_as_json_numbers_with_a_zero_fraction():
    """JSON Schema's "integer" (the spec's) includes 5.0; so does the route."""
    settings = route.read_generate_request({"prompt": "a", "max_tokens": 5.0, "top_k": 3.0})
    assert (settings["max_tokens"], settings["top_k"]) == (5, 3)
    assert isinstance(settings["max_tokens"], int)


def test_the_spec_describes_generate_for_language_models_only(client):
    spec = client.get("/openapi.json").json()
    assert "/v1/models/wine/generate" not in spec["paths"]
    operation = spec["paths"]["/v1/models/lm/generate"]["post"]
    assert operation["security"] and {"404", "413", "422", "501", "503"} <= set(operation["responses"])  # fmt: skip
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    request, answer = route_validators(spec, "/v1/models/lm/generate")
    schema = spec["components"]["schemas"]["lm_GenerateRequest"]
    assert schema["properties"]["max_tokens"]["maximum"] == 50  # the server's cap
    body = {"prompt": "the quick", "max_tokens": 7, "top_k": 3, "stop": ["zz"], "seed": 1}
    request.validate(body)
    got = _post(client, body)
    assert got.status_code == 200, got.text
    answer.validate(got.json())
    assert not answer.is_valid({**got.json(), "finish_reason": "tired"})


def test_a_model_that_is_not_a_language_model_or_not_served(client):
    assert_error(_post(client, {"prompt": "x"}, model="wine"), 422, "name")
    assert _post(client, {"prompt": "x"}, model="nope").status_code == 404


def test_the_route_needs_a_predict_key(client):
    assert _post(client, {"prompt": "the"}, headers={}).status_code == 401


def _metric(url: str, pattern: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.search(pattern + r" ([0-9.e+-]+)", text)
    return float(found.group(1)) if found else 0.0


def test_a_client_that_disconnects_stops_the_generation_and_frees_the_slot(tok, gpt, monkeypatch):
    monkeypatch.setattr(route, "tokenizer_of", lambda bundle: tok)
    slow = SlowGPT(gpt, delay=0.01)  # 2,000 tokens would take 20 s
    settings = ServeSettings(
        models=("lm",), extra={"generate_max_tokens": 2000, "generate_slots": 1}
    )
    app = create_app(FakePool(FakeLM(slow)), lambda: keyed_store(), settings)
    body = {"prompt": "the", "max_tokens": 2000, "temperature": 1.0, "seed": 1, "stream": True}
    with running_server(app, settings) as (_, url):
        tokens = r'danlu_generated_tokens_total\{model="lm",version="2"\}'
        in_flight = r'danlu_generations_in_flight\{model="lm"\}'
        with httpx.Client(base_url=url, headers=PREDICT, timeout=10) as http:
            with http.stream("POST", "/v1/models/lm/generate", json=body) as answer:
                assert answer.status_code == 200
                lines = answer.iter_lines()
                got: list[str] = []
                for line in lines:  # read three pieces, then hang up
                    if line.startswith("data: "):
                        got.append(line)
                    if len(got) == 3:
                        break
                assert _metric(url, in_flight) == 1.0
        # the connection is closed: the generation stops within a token or so
        deadline = time.monotonic() + 5
        while _metric(url, in_flight) != 0.0:
            assert time.monotonic() < deadline, "the generation did not stop"
            time.sleep(0.05)
        made = _metric(url, tokens)
        assert 3 <= made < 2000 / 4
        time.sleep(0.2)
        assert _metric(url, tokens) == made  # nothing more is generated
        assert (
            _metric(url, r'danlu_generations_total\{finish="cancelled",model="lm",version="2"\}')
            == 1
        )
        # the one slot is free again: the next request is answered at once
        with httpx.Client(base_url=url, headers=PREDICT, timeout=10) as http:
            began = time.monotonic()
            answer = http.post("/v1/models/lm/generate", json={"prompt": "the", "max_tokens": 3})
            assert answer.status_code == 200 and answer.json()["completion_tokens"] == 3
            assert time.monotonic() - began < 2


def test_a_registered_language_model_generates_through_danlu_serve(tmp_path):
    import pandas as pd

    import danlu
    from danlu.data._lm import lm_tokenizer
    from danlu.store import SqlStore
    from tests.cli.test_generate import _documents
    from tests.serve.conftest import start_server

    corpus = tmp_path / "docs.csv"
    pd.DataFrame({"text": _documents()}).to_csv(corpus, index=False)
    home = tmp_path / "home"
    recipe = {
        "name": "lm",
        "task": "language_model",
        "data": {"source": str(corpus)},
        "language_model": {
            "vocab_size": 300,
            "samples": {"temperatures": []},
            "near_duplicates": None,  # the documents repeat one pattern
        },
        "model": {"type": "gpt", "width": 32, "layers": 2, "heads": 4, "context": 16},
        "train": {"epochs": 1, "batch_size": 16},
        "evaluate": False,
        "register": {"name": "lm", "alias": "production"},
    }
    danlu.run(recipe, home=home)
    with SqlStore(home=home) as store:
        bundle = danlu.load_model("lm@production", store=store)
    tokenizer = lm_tokenizer(bundle)
    expected = generate_text(bundle.model, tokenizer, "the cat", max_tokens=10, temperature=0)
    with start_server(home, "lm@production", "--poll", "0", log_dir=tmp_path) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            body = {"prompt": "the cat", "max_tokens": 10, "temperature": 0}
            whole = http.post("/v1/models/lm/generate", json=body)
            assert whole.status_code == 200, whole.text
            assert whole.json()["text"] == expected and whole.json()["runtime"] == "torch"
            streamed = http.post("/v1/models/lm/generate", json={**body, "stream": True})
            events = _events(streamed.text)
            assert "".join(e.get("text", "") for e in events) == expected
            assert events[-1]["done"] and events[-1]["completion_tokens"] == 10
            # /predict runs the exported scoring graph; generation says it used torch
            assert http.get("/v1/models/lm").json()["runtime"] == "onnx"
            long = http.post("/v1/models/lm/generate", json={"prompt": "the cat " * 20})
            assert_error(long, 413, "prompt")
