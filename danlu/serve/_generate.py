"""``POST /v1/models/{name}/generate``: text from a served language model (``model.type: gpt``),
whole or streamed as server-sent events.

The body::

    {"prompt": "Once upon a time", "max_tokens": 64, "temperature": 0.8, "top_k": 50,
     "top_p": 0.95, "repetition_penalty": 1.1, "stop": ["\\n\\n"], "seed": 1, "stream": true}

Only ``prompt`` is required. Without ``stream`` the answer is one JSON object::

    {"model": "tiny-lm", "version": 2, "ref": "tiny-lm:2", "text": "...", "finish_reason":
     "length", "prompt_tokens": 5, "completion_tokens": 64, "seconds": 0.41,
     "tokens_per_second": 156.1, "runtime": "torch"}

With ``"stream": true`` it is ``text/event-stream``: one ``data: {"text": "..."}`` event per
piece of text as it is drawn, then a last event ``data: {"done": true, "finish_reason": ...,
"prompt_tokens": ..., "completion_tokens": ..., ...}`` (the object above, without ``text``).

**Runtime.** Generation runs the version's torch model with its key/value cache, whatever
``--runtime`` serves ``/predict`` with (an ONNX graph of the scoring forward cannot keep a
cache); ``"runtime": "torch"`` says so in every answer.

**Limits.** A prompt longer than the model's context (or ``extra["generate_max_prompt_tokens"]``
when smaller) is a 413 naming ``prompt``; ``max_tokens`` over ``extra["generate_max_tokens"]``
(default 1024) is a 422 naming ``max_tokens``; any other bad setting a 422 naming it.

**Slots.** Each served model version generates for at most ``extra["generate_slots"]`` requests
at once (default 1), each in a thread of its own, off the event loop; a request waits for a
free slot up to the request timeout, then gets 503 with ``Retry-After``. A client that
disconnects mid-stream stops its generation within one token, and the slot is freed.

Metrics: ``danlu_generated_tokens_total{model,version}``,
``danlu_generation_tokens_per_second{model,version}`` (a histogram, one observation per finished
generation), ``danlu_generation_first_token_seconds{model,version}``,
``danlu_generations_total{model,version,finish}`` and ``danlu_generations_in_flight{model}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import weakref
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from danlu.errors import DanluError
from danlu.logging import get_logger
from danlu.serve._auth import PREDICT, requires
from danlu.serve._codec import as_integer, decode_body, json_response
from danlu.serve._errors import error_response, predict_failure
from danlu.serve._model_route import refused
from danlu.serve._types import QueueFull, RequestError

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from danlu.serve._metrics import ServeMetrics
    from danlu.serve._state import ServerState

__all__ = ["GENERATE_PATH", "add_generate_route", "max_new_tokens", "read_generate_request"]

log = get_logger(__name__)

GENERATE_PATH = "/v1/models/{name}/generate"
MAX_TOKENS = 1024  # the default cap on max_tokens (extra["generate_max_tokens"])
MAX_STOPS = 8  # stop strings per request
MAX_STOP_CHARS = 200
RUNTIME = "torch"
_DEFAULTS: dict[str, Any] = {
    "max_tokens": 64,
    "temperature": 1.0,
    "top_k": None,
    "top_p": None,
    "repetition_penalty": 1.0,
    "stop": [],
    "seed": None,
    "stream": False,
}
_KEYS = frozenset({"prompt", *_DEFAULTS})


def max_new_tokens(extra: dict[str, Any]) -> int:
    """The most tokens one request may ask for on a server with these settings."""
    return int(extra.get("generate_max_tokens", MAX_TOKENS))


def _number(payload: dict[str, Any], key: str, kind: type, low: float | None = None) -> Any:
    value = payload.get(key, _DEFAULTS[key])
    if value is None and _DEFAULTS[key] is None:
        return None
    if kind is int:
        value = as_integer(value)
        ok = value is not None
    else:
        ok = not isinstance(value, bool) and isinstance(value, int | float)
    if not ok:
        raise RequestError(key, f"must be {'an integer' if kind is int else 'a number'}.")
    if low is not None and value < low:
        raise RequestError(key, f"must be at least {low:g}; got {value}.")
    return kind(value)


def read_generate_request(payload: Any, max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    """The checked settings of a decoded body (the defaults filled in).

    Raises:
        RequestError: naming the field at fault (422).

    Example:
        >>> read_generate_request({"prompt": "Hi", "max_tokens": 5})["max_tokens"]
        5
    """
    if not isinstance(payload, dict):
        raise RequestError("body", 'must be a JSON object such as {"prompt": "Once upon"}.')
    unknown = sorted(set(payload) - _KEYS)
    if unknown:
        raise RequestError(
            unknown[0], f"is not a key of a generate request ({', '.join(sorted(_KEYS))})."
        )
    prompt = payload.get("prompt")
    if not isinstance(prompt, str):
        raise RequestError("prompt", "is required: the text to continue, as a string.")
    settings = {
        "prompt": prompt,
        # left out: the default, or the server's cap when that is lower
        "max_tokens": _number({"max_tokens": min(64, max_tokens), **payload}, "max_tokens", int, 1),
        "temperature": _number(payload, "temperature", float, 0),
        "top_k": _number(payload, "top_k", int, 1),
        "top_p": _number(payload, "top_p", float),
        "repetition_penalty": _number(payload, "repetition_penalty", float),
        "seed": _number(payload, "seed", int, 0),
    }
    if settings["max_tokens"] > max_tokens:
        raise RequestError(
            "max_tokens",
            f"is {settings['max_tokens']}; this server generates at most "
            f"{max_tokens} tokens per request.",
        )
    top_p = settings["top_p"]
    if top_p is not None and not 0 < top_p <= 1:
        raise RequestError("top_p", f"must be in (0, 1]; got {top_p}.")
    if not settings["repetition_penalty"] > 0:
        raise RequestError("repetition_penalty", "must be > 0 (1 is none).")
    stop = payload.get("stop", [])
    stop = [stop] if isinstance(stop, str) else stop
    if (
        not isinstance(stop, list)
        or len(stop) > MAX_STOPS
        or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stop)
    ):
        raise RequestError(
            "stop",
            f"must be a string or a list of at most {MAX_STOPS} non-empty strings of "
            f"at most {MAX_STOP_CHARS} characters.",
        )
    settings["stop"] = stop
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("stream", "must be true or false.")
    settings["stream"] = stream
    return settings


class _Metrics:
    """The generation series, in the server's registry (made once per registry)."""

    def __init__(self, metrics: ServeMetrics) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        r = metrics.registry
        labels = ["model", "version"]
        self.tokens = Counter("danlu_generated_tokens", "Tokens generated.", labels, registry=r)
        self.rate = Histogram(
            "danlu_generation_tokens_per_second",
            "Tokens per second of each finished generation.",
            labels,
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=r,
        )
        self.first = Histogram(
            "danlu_generation_first_token_seconds",
            "Seconds from the request to its first generated token.",
            labels,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.done = Counter(
            "danlu_generations",
            "Generations finished, by finish reason (length, stop, eos, cancelled, error).",
            [*labels, "finish"],
            registry=r,
        )
        self.in_flight = Gauge(
            "danlu_generations_in_flight", "Generations running now.", ["model"], registry=r
        )


_METRICS: weakref.WeakKeyDictionary[Any, _Metrics] = weakref.WeakKeyDictionary()
_SLOTS: weakref.WeakKeyDictionary[Any, asyncio.Semaphore] = weakref.WeakKeyDictionary()
_TOKENIZERS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _metrics(metrics: ServeMetrics) -> _Metrics:
    with _LOCK:
        found = _METRICS.get(metrics)
        if found is None:
            found = _METRICS[metrics] = _Metrics(metrics)
        return found


def tokenizer_of(bundle: Any) -> Any:
    """The ``tokenizers.Tokenizer`` a language model was trained with (from its preprocessing)."""
    from danlu.data._lm import lm_tokenizer

    return lm_tokenizer(bundle)


def _language_model(served: Any, name: str) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a served language model; a 422 naming ``name`` otherwise."""
    from danlu.models._gpt import is_language_model

    bundle = getattr(served, "bundle", None)
    if not getattr(bundle, "model_built", True):  # loaded lazily: the server has no torch
        from danlu.models._bundle import torch_installed

        if not torch_installed():
            if served.signature.get("task") == "language_model":
                raise RequestError(
                    "name",
                    f"model '{name}' generates with torch, which is not installed on this "
                    "server (it answers POST /v1/models/{name}/predict on ONNX Runtime). Serve "
                    "it where torch is installed to generate text.",
                    501,
                    code="not_implemented",
                )
            bundle = None  # not a language model: answered below without building it
    model = getattr(bundle, "model", None)
    if model is None or not is_language_model(model):
        raise RequestError(
            "name",
            f"model '{name}' is a {served.signature.get('task')} model, not a language model; "
            "use POST /v1/models/{name}/predict.",
        )
    tokenizer = _TOKENIZERS.get(served)
    if tokenizer is None:
        tokenizer = _TOKENIZERS[served] = tokenizer_of(bundle)
    return model, tokenizer


class _Job:
    """One generation in a thread of its own; the pieces reach the event loop through a queue.

    ``stop`` (set by a disconnect, a timeout or the end of the response) makes the thread stop
    before its next token; the slot is given back when the thread ends.
    """

    def __init__(
        self,
        state: ServerState,
        served: Any,
        name: str,
        settings: dict[str, Any],
        slot: asyncio.Semaphore,
        began: float,
    ) -> None:
        self.state, self.served, self.name, self.settings = state, served, name, settings
        self.slot = slot
        self.began = began
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.stop = threading.Event()
        self.metrics = _metrics(state.metrics)
        self.version = str(served.version)
        self.summary: dict[str, Any] = {}

    def start(self, model: Any, tokenizer: Any) -> None:
        self.metrics.in_flight.labels(self.name).inc()
        thread = threading.Thread(
            target=self._run, args=(model, tokenizer), name=f"generate {self.name}", daemon=True
        )
        thread.start()

    def _put(self, kind: str, value: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody listens any more
            self.stop.set()

    def _run(self, model: Any, tokenizer: Any) -> None:
        from danlu.models._generate import generate

        s = self.settings
        gen = None
        finish = "error"
        started = time.perf_counter()
        try:
            import torch

            threads = max(1, int(self.state.settings.threads))
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            gen = generate(
                model,
                tokenizer,
                s["prompt"],
                max_tokens=s["max_tokens"],
                temperature=s["temperature"],
                top_k=s["top_k"],
                top_p=s["top_p"],
                repetition_penalty=s["repetition_penalty"],
                stop=s["stop"],
                seed=s["seed"],
            )
            counted = 0
            tokens = self.metrics.tokens.labels(self.name, self.version)
            first = True
            while not self.stop.is_set():
                try:
                    piece = next(gen)
                except StopIteration:
                    break
                if first:
                    self.metrics.first.labels(self.name, self.version).observe(
                        time.perf_counter() - self.began
                    )
                    first = False
                tokens.inc(gen.tokens - counted)
                counted = gen.tokens
                self._put("text", piece)
            gen.close()  # stopped early: "cancelled"; else already finished
            tokens.inc(gen.tokens - counted)
            finish = str(gen.finish_reason)
        except DanluError as exc:
            self._put("error", exc)
        except Exception as exc:
            log.exception("Generation with %s failed.", self.name)
            self._put("error", exc)
        finally:
            seconds = time.perf_counter() - started
            made = gen.tokens if gen is not None else 0
            rate = made / seconds if seconds > 0 else 0.0
            if made:
                self.metrics.rate.labels(self.name, self.version).observe(rate)
            self.metrics.done.labels(self.name, self.version, finish).inc()
            self.summary = {
                "model": self.name,
                "version": self.served.version,
                "ref": self.served.ref,
                "finish_reason": finish,
                "prompt_tokens": gen.prompt_tokens if gen is not None else 0,
                "truncated_prompt_tokens": gen.truncated if gen is not None else 0,
                "completion_tokens": made,
                "seconds": round(seconds, 4),
                "tokens_per_second": round(rate, 2),
                "runtime": RUNTIME,
            }
            self.metrics.in_flight.labels(self.name).dec()
            with contextlib.suppress(RuntimeError):  # the loop closed: the server is gone
                self.loop.call_soon_threadsafe(self.slot.release)
            self._put("done", self.summary)

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        """The job's pieces, then an error (if any) and its end."""
        while True:
            kind, value = await self.queue.get()
            yield kind, value
            if kind == "done":
                return


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


class _EventStream(Response):
    """A ``text/event-stream`` response of a generation job; when the client goes away (or the
    response ends for any reason) the job is told to stop."""

    media_type = "text/event-stream"

    def __init__(self, job: _Job) -> None:
        super().__init__(
            None,
            headers={
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                "X-Model-Version": str(job.served.version),
            },
        )
        self.job = job
        # its length is not known: no Content-Length (the body is streamed, chunked)
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        job = self.job

        async def watch() -> None:  # the body was read: the next message is the disconnect
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    job.stop.set()
                    return

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for kind, value in job.events():
                if job.stop.is_set():
                    break
                if kind == "text":
                    event = _sse({"text": value})
                elif kind == "error":
                    response, code = predict_failure(value, job.state.settings.request_timeout_s)
                    event = _sse({"error": json.loads(bytes(response.body))["error"]})
                else:
                    event = _sse({"done": True, **value})
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away while we wrote: stop generating (below)
            log.debug("a generate stream's client went away")
        finally:
            job.stop.set()
            watcher.cancel()


async def _acquire(state: ServerState, served: Any, name: str) -> asyncio.Semaphore:
    """A generation slot of the served version (waits up to the request timeout)."""
    with _LOCK:
        slot = _SLOTS.get(served)
        if slot is None:
            slots = max(1, int(state.settings.extra.get("generate_slots", 1)))
            slot = _SLOTS[served] = asyncio.Semaphore(slots)
    try:
        async with asyncio.timeout(state.settings.request_timeout_s):
            await slot.acquire()
    except TimeoutError:
        raise QueueFull(name, 1.0) from None
    return slot


async def _start(state: ServerState, name: str, raw: bytes, began: float) -> _Job:
    served = state.pool.route(name)
    model, tokenizer = _language_model(served, name)
    extra = state.settings.extra
    settings = read_generate_request(decode_body(raw), max_new_tokens(extra))
    from danlu.models._gpt import context_of

    context = context_of(model)
    limit = min(context, int(extra.get("generate_max_prompt_tokens", context)))
    prompt_tokens = len(tokenizer.encode(settings["prompt"], add_special_tokens=False).ids)
    if prompt_tokens > limit:
        raise RequestError(
            "prompt",
            f"holds {prompt_tokens} tokens; this model reads at most {limit}. Send a shorter "
            "prompt (its newest text).",
            413,
        )
    slot = await _acquire(state, served, name)
    job = _Job(state, served, name, settings, slot, began)
    try:
        job.start(model, tokenizer)
    except BaseException:
        slot.release()
        raise
    return job


async def _whole(job: _Job, timeout: float) -> Response:
    """A generation's whole text, as one JSON answer (504 when it takes longer than timeout)."""
    pieces: list[str] = []
    error: Exception | None = None
    try:
        async with asyncio.timeout(timeout):
            async for kind, value in job.events():
                if kind == "text":
                    pieces.append(value)
                elif kind == "error":
                    error = value
    except TimeoutError:
        job.stop.set()
        return error_response(
            504,
            f"The generation did not finish within {timeout:g} s; ask for fewer max_tokens or "
            'send "stream": true to read the text as it is made.',
        )
    finally:
        job.stop.set()
    if error is not None:
        return predict_failure(error, timeout)[0]
    body = {**job.summary, "text": "".join(pieces)}
    return json_response(body, headers={"X-Model-Version": str(job.served.version)})


def add_generate_route(app: FastAPI, state: ServerState) -> None:
    """Declare ``POST /v1/models/{name}/generate`` (the predict scope)."""

    @requires(PREDICT)
    async def generate_route(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            raw = await request.body()
        except ClientDisconnect:
            return Response(status_code=499)
        began = time.perf_counter()
        try:
            job = await _start(state, name, raw, began)
        except (RequestError, QueueFull, DanluError) as exc:
            return refused(state, name, exc, began)
        state.metrics.observe_request(name, job.served.version, 200, time.perf_counter() - began)
        if job.settings["stream"]:
            return _EventStream(job)
        return await _whole(job, state.settings.request_timeout_s)

    app.add_route(GENERATE_PATH, generate_route, methods=["POST"], include_in_schema=False)
