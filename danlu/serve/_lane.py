"""The predict lane: ``POST /v1/models/{name}/predict`` on the fast path.

:class:`DanluApp` is the FastAPI app with one string check in front: a predict request goes
straight to :class:`PredictLane`, which does what the middlewares and the endpoint would do —
Host, Origin and Content-Type, Content-Length, the API key, the body under its cap and deadline,
strict decoding, the model's parse, the micro-batched prediction under the request timeout, the
request log and the metrics — without the middleware stack, the router or a Request object. The
declared route (``_routes.py``) calls the same :meth:`PredictLane.predict`, for OpenAPI, the
scope table, and whenever the lane steps aside (a middleware added after ``create_app``, a root
path).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.responses import Response

from danlu.serve._auth import PREDICT, SCOPE_KEY, Authenticator, AuthError
from danlu.serve._codec import decode_body, dumps
from danlu.serve._errors import auth_error, internal_error, predict_failure, request_error
from danlu.serve._guard import RequestGuard
from danlu.serve._limits import RowLimits, content_length_error, read_body
from danlu.serve._metrics import UNKNOWN, ServeMetrics
from danlu.serve._outputs import CLASSES, response_classes
from danlu.serve._state import ServerState
from danlu.serve._types import ModelPoolLike, RequestError, ServedModelLike, ServeSettings

if TYPE_CHECKING:
    from starlette.types import Message, Receive, Scope, Send

    from danlu.serve._requestlog import RequestLog

__all__ = ["DanluApp", "PredictLane"]

_PREDICT_PREFIX = "/v1/models/"
_PREDICT_SUFFIX = "/predict"
_JSON_TYPE = (b"content-type", b"application/json")


class DanluApp(FastAPI):
    """The FastAPI app, with a fast lane for ``POST /v1/models/{name}/predict``.

    The hot route skips the middleware stack and the router: one string check recognises it and
    :class:`PredictLane` answers it with the same protections the stack gives every other route
    (body cap and deadline, API key, error boundary). Every other request, and every request once
    someone adds a middleware after ``create_app``, goes through the full app. The route stays
    declared (``@requires(PREDICT)``) so OpenAPI and the scope table see it.
    """

    _lane: PredictLane | None = None
    _lane_middleware = 0  # how many user middlewares create_app installed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self._lane
        if scope["type"] == "lifespan":
            await super().__call__(scope, receive, self._startup_reporting(send))
            return
        if (
            lane is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and not self.root_path
            and not scope.get("root_path")
            and len(self.user_middleware) == self._lane_middleware
        ):
            path: str = scope["path"]
            if path.startswith(_PREDICT_PREFIX) and path.endswith(_PREDICT_SUFFIX):
                name = path[len(_PREDICT_PREFIX) : -len(_PREDICT_SUFFIX)]
                if name and "/" not in name:  # the route's {name}: one non-empty segment
                    scope["app"] = self
                    await lane(scope, receive, send, name)
                    return
        await super().__call__(scope, receive, send)

    def _startup_reporting(self, send: Send) -> Send:
        """``send`` for the lifespan, with a failed start-up's message (a traceback, by
        Starlette) replaced by the danlu error's own, or by nothing when ``serve()`` reports it."""

        async def reporting_send(message: Message) -> None:
            state: ServerState | None = getattr(self.state, "danlu", None)
            failed = message["type"] == "lifespan.startup.failed"
            if failed and state is not None and state.startup_error is not None:
                text = "" if state.reports_startup_error else str(state.startup_error)
                message = {**message, "message": text}
            await send(message)

        return reporting_send


class PredictLane:
    """``POST /v1/models/{name}/predict`` without Starlette's middleware, router or Request: what
    the middlewares and the predict endpoint do, in the same order and with the same answers —
    Host, Origin and Content-Type (400/403/415), Content-Length (400/413), the API key
    (401/403/503), the model (404), the body under its cap
    (413) and deadline (408), strict decoding (400/422), the model's parse (422/413), the
    micro-batched prediction under the request timeout (504; 503 when the queue is full),
    request log, metrics, ``X-Model-Version``; an unexpected error is a JSON 500 with a request
    id, never a traceback."""

    def __init__(
        self,
        *,
        pool: ModelPoolLike,
        auth: Authenticator,
        guard: RequestGuard,
        metrics: ServeMetrics,
        request_log: RequestLog | None,
        settings: ServeSettings,
        row_limits: RowLimits,
        body_timeout_s: float,
        batches_reported: bool,
    ) -> None:
        self.pool = pool
        self.auth = auth
        self.guard = guard
        self.metrics = metrics
        self.request_log = request_log
        self.timeout = settings.request_timeout_s
        self.row_limits = row_limits
        self.max_body_bytes = settings.body_limit
        self.body_timeout_s = body_timeout_s
        self.batches_reported = batches_reported
        self._version_bytes: dict[int | str, bytes] = {}

    async def predict(
        self, name: str, body: Callable[[], Awaitable[bytes | None]]
    ) -> Response | tuple[bytes, int | str]:
        """The predict endpoint itself, shared by the lane and the declared route: an error
        Response, or the answer's JSON and the version that answered (metrics and the request
        log done). ``body()`` reads the request body: None when the client went away, a
        RequestError when the body limit answers (413 / 408, as BodyLimitMiddleware would)."""
        metrics = self.metrics
        began = time.perf_counter()
        label: str = UNKNOWN
        version: int | str = ""
        served: ServedModelLike | None = None
        try:
            served = self.pool.route(name)
            label, version = name, served.version
            try:
                raw = await body()
            except RequestError as exc:  # the body limit's answer, not the endpoint's
                return request_error(exc)
            if raw is None:  # nobody is listening
                return Response(status_code=499)
            payload = decode_body(raw)
            x = served.parse(payload, self.row_limits.of(served.signature, served.ref))
            async with asyncio.timeout(self.timeout):
                out = await served.predict(x)
            if self.request_log is not None:
                self.request_log.record(name, served.version, payload, out["predictions"])
            answer = {"model": name, "version": served.version, "ref": served.ref, **out}
            classes = response_classes(served.signature)
            if classes is not None and len(out) > 1:  # what each score column stands for
                answer[CLASSES] = classes
            content = dumps(answer)
        except Exception as exc:
            if isinstance(exc, RequestError) and exc.status == 413 and served is not None:
                if exc.field != "body":  # too many rows: say which setting sets the limit
                    why = self.row_limits.why(served.signature, served.ref)
                    exc = RequestError(exc.field, f"{exc.message} ({why})", 413)
            response, code = predict_failure(exc, self.timeout)
            metrics.observe_request(
                label, version, response.status_code, time.perf_counter() - began
            )
            metrics.observe_error(label, code)
            return response
        rows = None if self.batches_reported else len(x)
        metrics.observe_request(name, version, 200, time.perf_counter() - began, rows=rows)
        return content, version

    async def __call__(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._answer(scope, receive, tracking_send, name)
        except Exception:  # the error boundary: a JSON 500, the traceback in the log
            response = internal_error(f"POST {scope.get('path')}")
            if not started:
                await response(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        headers = scope["headers"]
        # what GuardMiddleware checks first: Host, Origin, Content-Type
        refused = self.guard.check("POST", scope["path"], headers)
        if refused is not None:
            await request_error(refused)(scope, receive, send)
            return
        # then BodyLimitMiddleware: the declared length
        limit = content_length_error(headers, self.max_body_bytes)
        if limit is not None:
            await request_error(limit)(scope, receive, send)
            return
        # then AuthMiddleware: the predict scope
        try:
            key = await self.auth.authorize(headers, PREDICT, scope["path"], "POST")
        except AuthError as exc:
            await auth_error(exc)(scope, receive, send)
            return
        scope[SCOPE_KEY] = key
        # then the endpoint

        async def body() -> bytes | None:
            return await read_body(receive, self.max_body_bytes, self.body_timeout_s, deadline)

        answer = await self.predict(name, body)
        if isinstance(answer, Response):
            await answer(scope, receive, send)
            return
        content, version = answer
        version_bytes = self._version_bytes.get(version)
        if version_bytes is None:
            if len(self._version_bytes) > 64:
                self._version_bytes.clear()
            version_bytes = self._version_bytes[version] = str(version).encode("latin-1")
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"x-model-version", version_bytes),
                    (b"content-length", b"%d" % len(content)),
                    _JSON_TYPE,
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})
