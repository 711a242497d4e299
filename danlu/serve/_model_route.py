"""The JSON routes of one served model beside ``/predict`` (``/forecast``, ``/recommend``): read
the body, answer, count the request and map failures to 4xx/5xx, the same way for each."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from danlu.serve._auth import PREDICT, requires
from danlu.serve._codec import json_response
from danlu.serve._errors import predict_failure
from danlu.serve._metrics import UNKNOWN
from danlu.serve._types import RequestError

if TYPE_CHECKING:
    from danlu.serve._state import ServerState

__all__ = ["add_model_route", "refused"]

#: answer(state, model name, raw body) → the JSON answer, holding the served ``version``.
Answer = Callable[["ServerState", str, bytes], Awaitable[dict[str, Any]]]


def add_model_route(app: FastAPI, state: ServerState, path: str, answer: Answer) -> None:
    """Declare ``POST path`` (the predict scope; ``{name}`` in ``path`` is the served model):
    ``answer``'s JSON with an ``X-Model-Version`` header, or the 4xx/5xx of its RequestError or
    timeout. Each request is counted with the predict requests (the same model, batches and
    queue)."""

    @requires(PREDICT)
    async def route(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            raw = await request.body()
        except ClientDisconnect:
            return Response(status_code=499)
        began = time.perf_counter()
        try:
            body = await answer(state, name, raw)
        except (RequestError, TimeoutError) as exc:
            return refused(state, name, exc, began)
        state.metrics.observe_request(name, body["version"], 200, time.perf_counter() - began)
        return json_response(body, headers={"X-Model-Version": str(body["version"])})

    app.add_route(path, route, methods=["POST"], include_in_schema=False)


def refused(state: ServerState, name: str, exc: Exception, began: float) -> Response:
    """The 4xx/5xx answer to a request for model ``name`` that failed with ``exc``, counted in
    the request and error metrics (under ``unknown`` when no model is served as ``name``)."""
    response, code = predict_failure(exc, state.settings.request_timeout_s)
    label = name if name in state.pool.names() else UNKNOWN
    state.metrics.observe_request(label, "", response.status_code, time.perf_counter() - began)
    state.metrics.observe_error(label, code)
    return response
