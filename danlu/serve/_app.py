"""The HTTP layer of ``danlu serve``: routes, strict body decoding, error bodies, OpenAPI.

Before anything else, one middleware refuses a Host the server does not answer to, a cross-site
Origin on a request that changes something, and a body declared as anything but JSON
(``_guard.py``). Every route declares who may call it (``@requires``); one middleware checks keys
for all of them (``_auth.py``). The predict route is a plain Starlette route that reads the raw body itself: it
decodes strictly (UTF-8, JSON without NaN/Infinity, bounded nesting), hands the payload to the
served model's ``parse`` and awaits its micro-batched ``predict`` under the request timeout.
Under a server, :class:`DanluApp` answers that route through a fast lane (:class:`_PredictLane`)
that does what the middlewares and the endpoint do without the middleware stack and the router;
the declared route stays, for OpenAPI and the scope table, and serves when the lane steps aside.

Every error is JSON ``{"error": {"status", "code", "field"?, "message"}}``; an unexpected one is
a 500 with a request id that the server log carries with the traceback — never the traceback, a
file path or SQL in the body.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from danlu.errors import ConfigError, DanluError, DataError, NotFoundError
from danlu.logging import get_logger
from danlu.serve._auth import (
    ADMIN,
    PREDICT,
    PUBLIC,
    SCOPE_KEY,
    Authenticator,
    AuthError,
    AuthMiddleware,
    requires,
    route_scopes,
)
from danlu.serve._guard import GuardMiddleware, RequestGuard
from danlu.serve._limits import BodyLimitMiddleware, RowLimits, content_length_error, read_body
from danlu.serve._metrics import UNKNOWN, ServeMetrics
from danlu.serve._openapi import (
    ERROR_CODES,
    AliasRequest,
    AliasSet,
    DriftReport,
    LoadRequest,
    ModelInfo,
    ModelList,
    ModelSummary,
    Status,
    Unloaded,
    build_openapi,
    errors,
)
from danlu.serve._types import ModelLoadError, QueueFull, RequestError, ServeSettings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from danlu.serve._types import ServedModelLike

__all__ = ["MAX_DEPTH", "create_app", "decode_body", "error_response", "server_state"]

log = get_logger(__name__)

MAX_DEPTH = 32  # JSON nesting a request body may have ({"rows": [{...}]} needs 3)
PREDICT_PATH = "/v1/models/{name}/predict"
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # as the registry validates it
_PATHLIKE = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s'\"\\/:,;()]+){2,}[\\/]?")


# -- JSON in and out -----------------------------------------------------------------------------
def _reject_constant(literal: str) -> Any:
    raise RequestError(
        "body",
        f"contains {literal}, which is not a JSON number; send finite numbers "
        "(null where a value is missing)",
        400,
    )


def _too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists/dicts more than ``limit`` levels (iterative: no recursion)."""
    if not isinstance(value, dict | list):
        return False
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def decode_body(body: bytes) -> dict[str, Any]:
    """Decode a predict body strictly; raises RequestError naming ``body`` (400, or 422 for a
    well-formed body that is not a JSON object), or naming a key an object has twice (400).

    Example:
        >>> decode_body(b'{"rows": [{"x": 1.5}]}')
        {'rows': [{'x': 1.5}]}
    """
    if not body:
        raise RequestError("body", 'is empty; send a JSON object such as {"rows": [{...}]}', 400)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(
            "body", f"is not valid UTF-8 (bad byte at offset {exc.start})", 400
        ) from None
    try:
        payload = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise RequestError(
            "body",
            f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} "
            f"(character {exc.pos})",
            400,
        ) from None
    except RecursionError:  # the C decoder stops at the interpreter's recursion limit
        raise RequestError(
            "body", f"nests arrays or objects deeper than {MAX_DEPTH} levels", 400
        ) from None
    except RequestError:  # NaN or Infinity (_reject_constant)
        raise
    except ValueError:  # an integer literal over Python's 4300-digit conversion limit
        raise RequestError(
            "body", "contains a number with too many digits; send at most 4300 digits", 400
        ) from None
    # only a body with many brackets can be deep: skip the walk for the usual small request
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and _too_deep(payload, MAX_DEPTH):
        raise RequestError("body", f"nests arrays or objects deeper than {MAX_DEPTH} levels", 400)
    # a key twice in one object: the decoder keeps the last one silently. When every colon of
    # the body belongs to a key counted here, there is none (1.5 µs for a 64-feature row,
    # against 4 µs for decoding with object_pairs_hook); any other body is decoded again, its
    # pairs kept, to find one
    if text.count(":") != _key_count(payload):
        refuse_duplicate_keys(text)
    if not isinstance(payload, dict):
        raise RequestError(
            "body", 'must be a JSON object: {"rows": [{...}, ...]} or {"columns": {...}}', 422
        )
    return payload


def _key_count(payload: Any) -> int:
    """The keys of a predict body: its own and those of the objects one level in (the rows, the
    columns); -1 for a body that is not an object."""
    if type(payload) is not dict:
        return -1
    count = len(payload)
    for value in payload.values():
        if type(value) is dict:
            count += len(value)
        elif type(value) is list:
            count += sum(len(item) for item in value if type(item) is dict)
    return count


class _Duplicated(dict[str, Any]):
    """A decoded object that had ``key`` twice."""

    key = ""


def _keep_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            marked = _Duplicated(obj)
            marked.key = key
            return marked
        seen.add(key)
    return obj  # pragma: no cover - a shorter dict means a repeated key


def refuse_duplicate_keys(text: str | bytes) -> None:
    """Raise RequestError (400, naming the key and where it is) when an object in the JSON
    ``text`` has a key twice; text that is not JSON is left to the caller to report.

    Example:
        >>> refuse_duplicate_keys('{"rows": [{"x": 1, "y": 2}]}')  # fine: returns None
        >>> # refuse_duplicate_keys('{"rows": [{"x": 1, "x": 2}]}') raises, field "rows[0].x"
    """
    try:
        payload = _PAIRS_DECODER.decode(text.decode("utf-8") if isinstance(text, bytes) else text)
    except (ValueError, RecursionError):
        return
    queue: deque[tuple[Any, str]] = deque([(payload, "")])
    while queue:  # breadth first: the shallowest repeat is named
        value, path = queue.popleft()
        if isinstance(value, dict):
            if isinstance(value, _Duplicated):
                raise RequestError(
                    f"{path}.{value.key}" if path else value.key,
                    "appears twice in one object; send each key once (JSON readers disagree on "
                    "which of the two counts).",
                    400,
                    code="duplicate_key",
                )
            queue.extend((v, f"{path}.{k}" if path else k) for k, v in value.items())
        elif isinstance(value, list):
            queue.extend((v, f"{path}[{i}]") for i, v in enumerate(value))


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as null (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """json.dumps' fallback for numpy values."""
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# built once: json.loads/json.dumps with options build a new decoder/encoder on every call
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_PAIRS_DECODER = json.JSONDecoder(object_pairs_hook=_keep_pairs)
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"), default=_plain)


def _dumps(content: Any) -> bytes:
    try:
        text = _ENCODER.encode(content)
    except ValueError:  # a NaN somewhere: the slow path
        text = json.dumps(
            _finite(json.loads(json.dumps(content, default=_plain))), separators=(",", ":")
        )
    return text.encode()


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_dumps(content), status, headers, media_type="application/json")


def error_response(
    status: int,
    message: str,
    field: str | None = None,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
) -> Response:
    """``{"error": {"status", "code", "field"?, "message", "request_id"?}}`` with ``status``."""
    error: dict[str, Any] = {"status": status, "code": code or ERROR_CODES.get(status, "error")}
    if field:
        error["field"] = field
    error["message"] = message
    if request_id:
        error["request_id"] = request_id
        headers = {**(headers or {}), "X-Request-ID": request_id}
    return _json({"error": error}, status, headers)


def _internal_error(where: str) -> Response:
    """Log the exception being handled under a fresh request id; a generic 500 for the client."""
    request_id = uuid.uuid4().hex[:16]
    log.exception("Unexpected error in %s (request id %s)", where, request_id)
    return error_response(
        500,
        f"Internal server error; the server log has the details under request id {request_id}.",
        request_id=request_id,
    )


def _scrub(message: str) -> str:
    """A message from the store or a model loader, without file paths in it."""

    def hide(match: re.Match[str]) -> str:  # the server's own routes are no secret
        return match.group(0) if match.group(0).startswith("/v1/") else "<path>"

    return _PATHLIKE.sub(hide, message)


def _request_error(exc: RequestError) -> Response:
    return error_response(exc.status, exc.message, exc.field, code=exc.code)


def _auth_error(exc: AuthError) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="danlu"'} if exc.status == 401 else None
    return error_response(exc.status, exc.message, exc.field, headers=headers)


def _queue_full(exc: QueueFull) -> Response:
    retry = str(max(1, math.ceil(exc.retry_after)))
    return error_response(503, str(exc), code="queue_full", headers={"Retry-After": retry})


def _danlu_error(exc: DanluError) -> Response:
    if isinstance(exc, RequestError):
        return _request_error(exc)
    if isinstance(exc, QueueFull):
        return _queue_full(exc)
    if isinstance(exc, AuthError):
        return _auth_error(exc)
    if isinstance(exc, NotFoundError):
        return error_response(404, _scrub(str(exc)))
    if isinstance(exc, ConfigError | DataError):
        return error_response(422, _scrub(str(exc)))
    return _internal_error(type(exc).__name__)


class _ErrorBoundary:
    """Outermost middleware: an exception nothing else handled becomes a generic JSON 500 (the
    traceback goes to the log), instead of Starlette's plain-text one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            response = _internal_error(f"{scope.get('method')} {scope.get('path')}")
            if not started:
                await response(scope, receive, send)


# -- the predict fast lane -------------------------------------------------------------------------
_PREDICT_PREFIX = "/v1/models/"
_PREDICT_SUFFIX = "/predict"
_JSON_TYPE = (b"content-type", b"application/json")


class DanluApp(FastAPI):
    """The FastAPI app, with a fast lane for ``POST /v1/models/{name}/predict``.

    The hot route skips the middleware stack and the router: one string check recognises it and
    :class:`_PredictLane` answers it with the same protections the stack gives every other route
    (body cap and deadline, API key, error boundary). Every other request, and every request once
    someone adds a middleware after ``create_app``, goes through the full app. The route stays
    declared (``@requires(PREDICT)``) so OpenAPI and the scope table see it.
    """

    _lane: _PredictLane | None = None
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


class _PredictLane:
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
        pool: Any,
        auth: Authenticator,
        guard: RequestGuard,
        metrics: ServeMetrics,
        request_log: Any,
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
        self._version_bytes: dict[Any, bytes] = {}

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
        served = None
        try:
            served = self.pool.route(name)
            label, version = name, served.version
            try:
                raw = await body()
            except RequestError as exc:  # the body limit's answer, not the endpoint's
                return _request_error(exc)
            if raw is None:  # nobody is listening
                return Response(status_code=499)
            payload = decode_body(raw)
            x = served.parse(payload, self.row_limits.of(served.signature, served.ref))
            async with asyncio.timeout(self.timeout):
                out = await served.predict(x)
            if self.request_log is not None:
                self.request_log.record(name, served.version, payload, out["predictions"])
            content = _dumps({"model": name, "version": served.version, "ref": served.ref, **out})
        except Exception as exc:
            if isinstance(exc, RequestError) and exc.status == 413 and served is not None:
                if exc.field != "body":  # too many rows: say which setting sets the limit
                    why = self.row_limits.why(served.signature, served.ref)
                    exc = RequestError(exc.field, f"{exc.message} ({why})", 413)
            response, code = _predict_failure(exc, self.timeout)
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
            response = _internal_error(f"POST {scope.get('path')}")
            if not started:
                await response(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        headers = scope["headers"]
        # what GuardMiddleware checks first: Host, Origin, Content-Type
        refused = self.guard.check("POST", scope["path"], headers)
        if refused is not None:
            await _request_error(refused)(scope, receive, send)
            return
        # then BodyLimitMiddleware: the declared length
        limit = content_length_error(headers, self.max_body_bytes)
        if limit is not None:
            await _request_error(limit)(scope, receive, send)
            return
        # then AuthMiddleware: the predict scope
        try:
            key = await self.auth.authorize(headers, PREDICT)
        except AuthError as exc:
            await _auth_error(exc)(scope, receive, send)
            return
        scope[SCOPE_KEY] = key  # type: ignore[literal-required]
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


# -- state ----------------------------------------------------------------------------------------
class _LazyStore:
    """Opens the store on first use (in whichever thread asks first), once."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._store: Any = None
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = self._factory()
        return self._store

    def close(self) -> None:
        store, self._store = self._store, None
        close = getattr(store, "close", None)
        if close is not None:
            close()


@dataclass
class ServerState:
    """What the routes share; ``draining`` turns readiness off while the server shuts down."""

    pool: Any
    settings: ServeSettings
    metrics: ServeMetrics
    auth: Authenticator
    store: _LazyStore
    draining: bool = False
    startup_error: DanluError | None = None  # why the models could not be served
    reports_startup_error: bool = False  # serve() says why itself: uvicorn need not log it

    def begin_drain(self) -> None:
        self.draining = True


def server_state(app: FastAPI) -> ServerState:
    """The app's :class:`ServerState` (``server_state(app).begin_drain()`` on SIGTERM)."""
    return app.state.danlu  # type: ignore[no-any-return]


# -- the app ---------------------------------------------------------------------------------------
def create_app(
    pool: Any,
    store_factory: Callable[[], Any],
    settings: ServeSettings,
    *,
    metrics_registry: CollectorRegistry | None = None,
) -> FastAPI:
    """The FastAPI app serving ``pool``'s models.

    Args:
        pool: a ``ModelPool`` (started by the app's lifespan, stopped when it ends).
        store_factory: opens the store (API keys, aliases); called once, lazily.
        settings: limits, timeouts and where the server listens (non-loopback: predict needs a key).
        metrics_registry: where the Prometheus series go; a fresh registry when None.

    Example:
        >>> # app = create_app(ModelPool(SqlStore, settings), SqlStore, settings)
        >>> # uvicorn.run(app)
    """
    store = _LazyStore(store_factory)
    auth = Authenticator(store, loopback=settings.loopback)
    guard = RequestGuard(settings.allowed_hosts, settings.host)
    row_limits = RowLimits(settings.max_rows, settings.body_limit)
    metrics = ServeMetrics(metrics_registry)
    state = ServerState(pool=pool, settings=settings, metrics=metrics, auth=auth, store=store)
    # a pool that reports its micro-batches feeds danlu_batch_rows; else rows per request do
    batches_reported = hasattr(pool, "on_batch") and pool.on_batch is None
    if batches_reported:
        pool.on_batch = lambda model, rows, _seconds: metrics.observe_batch(
            model.name, model.version, rows
        )

    request_log = None
    if settings.log_sample > 0:
        from danlu.serve._requestlog import RequestLog

        request_log = RequestLog(store_factory, settings.log_sample, settings.models)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        try:
            await pool.start()
        except DanluError as exc:  # no model could be loaded: say which and why, no traceback
            state.startup_error = exc
            raise
        await auth.keys_exist()  # warm the cache before the first request
        if request_log is not None:
            await request_log.start()
        if settings.extra.get("gc_freeze"):
            _freeze_heap()
        try:
            yield
        finally:
            state.begin_drain()
            try:
                await pool.stop()
                if request_log is not None:
                    await request_log.stop()
            finally:
                await asyncio.to_thread(store.close)

    app = DanluApp(
        title="danlu inference server",
        version=_danlu_version(),
        description="Predictions from danlu's registered models. Each model's request body is "
        "described under its own predict path; errors are JSON {error: {status, code, field, "
        "message}}.",
        lifespan=lifespan,
        redoc_url=None,
        strict_content_type=False,  # no Content-Type: read as JSON (GuardMiddleware: 415 for others)
        **_no_telemetry(),
    )
    app.state.danlu = state
    lane = _PredictLane(
        pool=pool,
        auth=auth,
        guard=guard,
        metrics=metrics,
        request_log=request_log,
        settings=settings,
        row_limits=row_limits,
        body_timeout_s=float(settings.extra.get("body_timeout_s", settings.request_timeout_s)),
        batches_reported=batches_reported,
    )

    def served_pairs() -> Iterator[tuple[str, ServedModelLike]]:
        for name in pool.names():
            try:
                yield name, pool.primary(name)
                canary = pool.canary(name)
            except NotFoundError:
                continue
            if canary is not None:
                yield name, canary

    def canary_info(name: str) -> dict[str, Any] | None:
        canary = pool.canary(name)
        if canary is None:
            return None
        share = next((c.share for c in settings.canaries if c.name == name), None)
        return {"ref": canary.ref, "version": canary.version, "share": share}

    def summary(name: str) -> dict[str, Any]:
        served = pool.primary(name)
        return {
            "name": name,
            "version": served.version,
            "ref": served.ref,
            "runtime": served.runtime_name,
            "task": served.signature.get("task"),
            "canary": canary_info(name),
        }

    # -- predict (the hot path: a plain Starlette route, no FastAPI body machinery) -------------
    @requires(PREDICT)
    async def predict(request: Request) -> Response:
        async def body() -> bytes | None:
            try:
                return await request.body()
            except ClientDisconnect:  # nobody is listening (or the body limit answered)
                return None

        answer = await lane.predict(request.path_params["name"], body)
        if isinstance(answer, Response):
            return answer
        content, version = answer
        return Response(
            content, headers={"X-Model-Version": str(version)}, media_type="application/json"
        )

    app.add_route(PREDICT_PATH, predict, methods=["POST"], include_in_schema=False)

    # -- models ------------------------------------------------------------------------------------
    @app.get(
        "/v1/models",
        tags=["models"],
        response_model=None,
        responses={200: {"model": ModelList}, **errors(401)},
    )
    @requires(PREDICT)
    async def list_models() -> Response:
        """The served models (name, version, runtime, task and canary), and the models named at
        start-up that failed to load, with the reason."""
        models = []
        for name in sorted(pool.names()):
            try:
                models.append(summary(name))
            except NotFoundError:
                continue
        failed = [{**f, "error": _scrub(f["error"])} for f in getattr(pool, "failed", ())]
        return _json({"models": models, "failed": failed})

    @app.get(
        "/v1/models/{name}",
        tags=["models"],
        response_model=None,
        responses={200: {"model": ModelInfo}, **errors(401, 404)},
    )
    @requires(PREDICT)
    async def model_info(name: str) -> Response:
        """One served model: its signature, version, runtime, registry metrics and canary."""
        served = pool.primary(name)
        info = summary(name)
        info["signature"] = served.signature
        info["metrics"] = dict(served.metrics)
        info["queue_depth"] = sum(int(m.queue_depth()) for n, m in served_pairs() if n == name)
        return _json(info)

    @app.get(
        "/v1/models/{name}/drift",
        tags=["models"],
        response_model=None,
        responses={200: {"model": DriftReport}, **errors(401, 404)},
    )
    @requires(PREDICT)
    async def model_drift(name: str) -> Response:
        """Input drift per feature (PSI over a sliding window) against the training data."""
        served = pool.primary(name)
        report = {"model": name, **served.drift(), "version": served.version}
        metrics.set_drift(name, served.version, report)
        canary = pool.canary(name)
        if canary is not None:
            canary_report = {**canary.drift(), "version": canary.version, "ref": canary.ref}
            metrics.set_drift(name, canary.version, canary_report)
            report["canary"] = canary_report
        return _json(report)

    # -- health ----------------------------------------------------------------------------------
    @app.get("/healthz", tags=["health"], response_model=None, responses={200: {"model": Status}})
    @requires(PUBLIC)
    async def healthz() -> Response:
        """Liveness: 200 while the process runs."""
        return _json({"status": "ok"})

    @app.get(
        "/readyz",
        tags=["health"],
        response_model=None,
        responses={200: {"model": Status}, **errors(503)},
    )
    @requires(PUBLIC)
    async def readyz() -> Response:
        """Readiness: 200 when the models are loaded and the server is not shutting down."""
        if state.draining:
            return error_response(503, "The server is shutting down.", code="shutting_down")
        if not pool.ready:
            return error_response(503, "The models are still loading.", code="not_ready")
        ready: dict[str, Any] = {"status": "ready", "models": sorted(pool.names())}
        failed = sorted({f["name"] for f in getattr(pool, "failed", ())})
        if failed:  # named at start-up but not loadable; GET /v1/models says why
            ready["failed"] = failed
        return _json(ready)

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=PlainTextResponse,
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
            **errors(401),
        },
    )
    @requires(PUBLIC if settings.loopback else PREDICT)
    async def prometheus_metrics() -> Response:
        """Prometheus metrics (needs a predict key when the server listens beyond loopback)."""
        try:
            metrics.update_models(list(served_pairs()))
        except Exception:
            log.exception("Could not refresh the queue and drift gauges.")
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    # -- admin -----------------------------------------------------------------------------------
    admin_errors = errors(400, 401, 403, 404, 408, 409, 413, 415, 422)

    async def admin_call(what: str, call: Any) -> Any:
        try:
            return await call
        except ModelLoadError as exc:  # whatever the loader raised (NotFoundError too): 409
            raise _AdminFailure(
                f"{what} failed; what was serving still serves: {_scrub(str(exc))}"
            ) from exc
        except (NotFoundError, ConfigError, RequestError):
            raise
        except DanluError as exc:
            raise _AdminFailure(
                f"{what} failed; what was serving still serves: {_scrub(str(exc))}"
            ) from exc

    @app.post(
        "/v1/admin/models/{name}/reload",
        tags=["admin"],
        response_model=None,
        responses={200: {"model": ModelSummary}, **admin_errors},
    )
    @requires(ADMIN)
    async def reload_model(name: str) -> Response:
        """Load the version the model's reference now points at beside the old one, then swap."""
        await admin_call(f"Reloading '{name}'", pool.reload(name))
        return _json(summary(name))

    async def unique_keys(request: Request) -> None:
        """A JSON body with a key twice is refused (400) before it is validated."""
        refuse_duplicate_keys(await request.body())  # FastAPI has read it: cached

    @app.post(
        "/v1/admin/models",
        tags=["admin"],
        response_model=None,
        responses={200: {"model": ModelSummary}, **admin_errors},
        dependencies=[Depends(unique_keys)],
    )
    @requires(ADMIN)
    async def load_model(body: LoadRequest) -> Response:
        """Load and serve another model: {"ref": "wine@production"}, or under a name of its own:
        {"ref": "wine@tuned", "name": "wine-tuned"}. A name already served switches to the new
        version (hot swap); a version that fails to load is a 409 and changes nothing."""
        from danlu.store import parse_model_ref

        name = body.name or parse_model_ref(body.ref)[0]
        loaded = await admin_call(f"Loading '{body.ref}'", pool.load(body.ref, name=name))
        return _json(summary(getattr(loaded, "name", None) or name))

    @app.delete(
        "/v1/admin/models/{name}",
        tags=["admin"],
        response_model=None,
        responses={200: {"model": Unloaded}, **admin_errors},
    )
    @requires(ADMIN)
    async def unload_model(name: str) -> Response:
        """Stop serving a model (requests already queued are answered first)."""
        await admin_call(f"Unloading '{name}'", pool.unload(name))
        return _json({"model": name, "unloaded": True})

    @app.put(
        "/v1/admin/models/{name}/alias",
        tags=["admin"],
        response_model=None,
        responses={200: {"model": AliasSet}, **admin_errors},
        dependencies=[Depends(unique_keys)],
    )
    @requires(ADMIN)
    async def set_alias(name: str, body: AliasRequest, request: Request) -> Response:
        """Point an alias at a version in the registry, then reload the model if it is served."""
        from danlu.errors import StoreError

        if not _MODEL_NAME.match(name):
            raise NotFoundError(f"There is no model named {name[:100]!r}.")
        key = request.scope.get(SCOPE_KEY)
        actor = f"api-key:{key.name}" if key is not None else "danlu-serve"
        try:
            await asyncio.to_thread(store().set_alias, name, body.alias, body.version, actor=actor)
        except StoreError as exc:  # an invalid name or alias
            raise RequestError("alias", _scrub(str(exc))) from exc
        serving = None
        if name in pool.names():
            await admin_call(f"Reloading '{name}'", pool.reload(name))
            serving = summary(name)
        return _json(
            {"model": name, "alias": body.alias, "version": body.version, "serving": serving}
        )

    _install_error_handlers(app)
    app.add_middleware(AuthMiddleware, routes_of=app, authenticator=auth, respond=_auth_error)
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.body_limit,
        body_timeout_s=lane.body_timeout_s,
        respond=_request_error,
    )
    app.add_middleware(GuardMiddleware, guard=guard, respond=_request_error)
    app.add_middleware(_ErrorBoundary)
    app._lane = lane
    app._lane_middleware = len(app.user_middleware)

    openapi_cache: dict[Any, dict[str, Any]] = {}
    app.openapi = lambda: build_openapi(app, pool, row_limits, openapi_cache)  # type: ignore[method-assign]
    route_scopes(app)  # refuse to build an app with an unprotected route
    return app


class _AdminFailure(DanluError, RuntimeError):
    """An admin action on the pool failed (409); what was serving keeps serving."""


def _predict_failure(exc: Exception, timeout: float) -> tuple[Response, str]:
    """The response to a failed predict request and its error code (for the metrics)."""
    if isinstance(exc, TimeoutError):
        message = f"The model did not answer within {timeout:g} s; retry later or send fewer rows."
        return error_response(504, message), "timeout"
    if isinstance(exc, RequestError):
        code = exc.code or (
            "invalid_body" if exc.status == 400 else ERROR_CODES.get(exc.status, "invalid_input")
        )
        return error_response(exc.status, exc.message, exc.field, code=code), code
    if isinstance(exc, QueueFull):
        return _queue_full(exc), "queue_full"
    if isinstance(exc, DanluError):
        response = _danlu_error(exc)
        return response, ERROR_CODES.get(response.status_code, "error")
    return _internal_error("predict"), "internal"


def _install_error_handlers(app: FastAPI) -> None:
    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        if status == 404:
            message = "No such route; the API is described at /docs."
        elif status == 405:
            message = "This route does not accept that method."
        else:
            message = str(exc.detail)
        return error_response(status, message, headers=dict(exc.headers or {}))

    async def validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = []
        for error in exc.errors()[:5]:
            if error.get("type") == "json_invalid":  # loc is ("body", position)
                where = error.get("loc", ("body", "?"))[-1]
                why = (error.get("ctx") or {}).get("error", "JSON decode error")
                problems.append(("body", f"is not valid JSON: {why} (character {where})"))
                continue
            loc = [str(p) for p in error.get("loc", ())]
            field = ".".join(loc[1:] if loc[:1] == ["body"] and len(loc) > 1 else loc)
            problems.append((field or "body", str(error.get("msg", "is invalid"))))
        field = problems[0][0] if problems else "body"
        message = "; ".join(f"{f}: {m}" for f, m in problems) or "The request is invalid."
        return error_response(422, message, field)

    async def danlu_error(_: Request, exc: Exception) -> Response:
        if isinstance(exc, _AdminFailure):
            return error_response(409, str(exc), code="load_failed")
        assert isinstance(exc, DanluError)
        return _danlu_error(exc)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(DanluError, danlu_error)


def _freeze_heap() -> None:
    """Take everything alive after start-up (modules, models) out of the cyclic garbage
    collector's sight. With torch, pandas and FastAPI loaded the heap holds ~300k objects, and a
    full collection of them stalls the event loop for ~140 ms every few thousand requests under
    load (the p99); frozen, a full collection scans only what was allocated since (~0.2 ms).
    The cost: a start-up version swapped out later is freed by reference counting only.
    ``danlu serve`` turns this on (``extra["gc_freeze"]``); apps built in tests leave it off."""
    import gc

    gc.collect()
    gc.freeze()


def _no_telemetry() -> dict[str, Any]:
    """Turn FastAPI's OpenTelemetry hooks off where it has them: the Prometheus metrics cover
    requests, and asking the global providers costs every request several microseconds."""
    import inspect

    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    return {}


def _danlu_version() -> str:
    from danlu import __version__

    return __version__
