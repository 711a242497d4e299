"""The app of ``danlu serve``: :func:`create_app` wires the parts together.

- ``_codec.py``: strict decoding of request bodies, compact JSON answers;
- ``_errors.py``: exceptions → status and JSON body, the error boundary;
- ``_lane.py``: the predict fast lane (and :class:`DanluApp`, the FastAPI app that has it);
- ``_routes.py``: the routes; ``_openapi.py``: the spec, with each model's request and response
  schema built from its signature;
- ``_guard.py``, ``_limits.py``, ``_auth.py``: the middlewares in front of every route (Host,
  Origin and Content-Type; body size and deadline; API keys).

The app depends on the models through :class:`~danlu.serve._types.ModelPoolLike` only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from danlu.errors import DanluError
from danlu.serve._auth import Authenticator, AuthMiddleware, route_scopes
from danlu.serve._codec import MAX_DEPTH, decode_body, dumps
from danlu.serve._errors import ErrorBoundary, auth_error, install_error_handlers, request_error
from danlu.serve._generate import max_new_tokens
from danlu.serve._guard import GuardMiddleware, RequestGuard
from danlu.serve._lane import DanluApp, PredictLane
from danlu.serve._limits import BodyLimitMiddleware, RowLimits
from danlu.serve._metrics import ServeMetrics
from danlu.serve._openapi import build_openapi
from danlu.serve._routes import add_routes
from danlu.serve._state import LazyStore, ServerState, server_state
from danlu.serve._types import ModelPoolLike, ServeSettings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from danlu.serve._beacon import DeploymentBeacon
    from danlu.serve._requestlog import RequestLog

__all__ = ["MAX_DEPTH", "create_app", "decode_body", "dumps", "server_state"]


def create_app(
    pool: ModelPoolLike,
    store_factory: Callable[[], Any],
    settings: ServeSettings,
    *,
    metrics_registry: CollectorRegistry | None = None,
) -> FastAPI:
    """The FastAPI app serving ``pool``'s models.

    Args:
        pool: the models (a ``ModelPool``), started by the app's lifespan and stopped when it ends.
        store_factory: opens the store (API keys, aliases); called once, lazily.
        settings: limits, timeouts and where the server listens (non-loopback: predict needs a key).
        metrics_registry: where the Prometheus series go; a fresh registry when None.

    Example:
        >>> # app = create_app(ModelPool(SqlStore, settings), SqlStore, settings)
        >>> # uvicorn.run(app)
    """
    store = LazyStore(store_factory)
    auth = Authenticator(store, loopback=settings.loopback)
    metrics = ServeMetrics(metrics_registry)
    state = ServerState(pool=pool, settings=settings, metrics=metrics, auth=auth, store=store)
    # a pool that reports its micro-batches feeds danlu_batch_rows; else rows per request do
    batches_reported = pool.on_batch is None
    if batches_reported:
        pool.on_batch = lambda model, rows, _seconds: metrics.observe_batch(
            model.name, model.version, rows
        )
    request_log = _request_log(settings, store_factory)
    beacon = _beacon(state, store_factory)
    app = DanluApp(
        title="danlu inference server",
        version=_danlu_version(),
        description="Predictions from danlu's registered models. Each model's request and "
        "response bodies are described under its own predict path; errors are JSON {error: "
        "{status, code, field, message}}.",
        lifespan=_lifespan(state, request_log, beacon),
        redoc_url=None,
        docs_url=None,  # /docs is served by _routes.py, offline (FastAPI's loads a CDN)
        strict_content_type=False,  # no Content-Type: read as JSON (GuardMiddleware: 415 for others)
        **_no_telemetry(),
    )
    app.state.danlu = state
    row_limits = RowLimits(settings.max_rows, settings.body_limit)
    lane = PredictLane(
        pool=pool,
        auth=auth,
        guard=RequestGuard(settings.allowed_hosts, settings.host),
        metrics=metrics,
        request_log=request_log,
        settings=settings,
        row_limits=row_limits,
        body_timeout_s=float(settings.extra.get("body_timeout_s", settings.request_timeout_s)),
        batches_reported=batches_reported,
    )
    add_routes(app, state, lane)
    install_error_handlers(app)
    _add_middleware(app, lane)
    openapi_cache: dict[Any, dict[str, Any]] = {}
    cap = max_new_tokens(settings.extra)
    app.openapi = lambda: build_openapi(  # type: ignore[method-assign]
        app, pool, row_limits, openapi_cache, generate_max_tokens=cap
    )
    route_scopes(app)  # refuse to build an app with an unprotected route
    return app


def _add_middleware(app: DanluApp, lane: PredictLane) -> None:
    """The middlewares every route goes through (outermost last), and the lane that does what
    they do for the predict route."""
    state = server_state(app)
    app.add_middleware(AuthMiddleware, routes_of=app, authenticator=state.auth, respond=auth_error)
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=state.settings.body_limit,
        body_timeout_s=lane.body_timeout_s,
        respond=request_error,
    )
    app.add_middleware(GuardMiddleware, guard=lane.guard, respond=request_error)
    app.add_middleware(ErrorBoundary)
    app._lane = lane
    app._lane_middleware = len(app.user_middleware)


def _request_log(settings: ServeSettings, store_factory: Callable[[], Any]) -> RequestLog | None:
    if settings.log_sample <= 0:
        return None
    from danlu.serve._requestlog import RequestLog

    return RequestLog(store_factory, settings.log_sample, settings.models)


def _beacon(state: ServerState, store_factory: Callable[[], Any]) -> DeploymentBeacon | None:
    """The deployments-table entry of a ``danlu serve`` process (``extra["register"]``); apps
    built in tests do not register."""
    if not state.settings.extra.get("register"):
        return None
    from danlu.serve._beacon import DeploymentBeacon

    return DeploymentBeacon(state.pool, state.settings, store_factory, lambda: state.bound_port)


def _lifespan(
    state: ServerState, request_log: RequestLog | None, beacon: DeploymentBeacon | None = None
) -> Callable[[FastAPI], Any]:
    """Start the pool (and warm the key cache, start the request log, register the server in
    the deployments table) before the first request; on shutdown turn readiness off, drain the
    pool, write the request log, mark the server stopped, close the store."""
    pool, settings = state.pool, state.settings

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            await pool.start()
        except DanluError as exc:  # no model could be loaded: say which and why, no traceback
            state.startup_error = exc
            raise
        await state.auth.keys_exist()  # warm the cache before the first request
        if request_log is not None:
            await request_log.start()
        if beacon is not None:
            beacon.start()
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
                if beacon is not None:
                    await beacon.stop()
                await asyncio.to_thread(state.store.close)

    return lifespan


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
