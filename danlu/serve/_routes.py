"""The routes of ``danlu serve``: predict (declared; :mod:`._lane` answers it), the served models,
health and metrics, and the admin API.

Every route declares who may call it (``@requires``); one middleware checks keys for all of them
(``_auth.py``). The routes talk to the models through :class:`~danlu.serve._types.ModelPoolLike`
and answer JSON through :func:`~danlu.serve._codec.json_response`; errors are raised and mapped
to JSON bodies by ``_errors.py``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from danlu.errors import ConfigError, DanluError, NotFoundError, StoreError
from danlu.logging import get_logger
from danlu.serve._auth import ADMIN, PREDICT, PUBLIC, SCOPE_KEY, requires
from danlu.serve._codec import json_response, refuse_duplicate_keys
from danlu.serve._errors import AdminFailure, error_response, scrub
from danlu.serve._forecast import add_forecast_route
from danlu.serve._generate import add_generate_route
from danlu.serve._lane import PredictLane
from danlu.serve._openapi import (
    AliasRequest,
    AliasSet,
    DriftReport,
    LoadRequest,
    ModelInfo,
    ModelList,
    ModelSummary,
    Status,
    Unloaded,
    errors,
)
from danlu.serve._recommend import add_recommend_route
from danlu.serve._state import ServerState
from danlu.serve._types import ModelLoadError, RequestError, ServedModelLike

__all__ = ["PREDICT_PATH", "add_routes"]

log = get_logger(__name__)

PREDICT_PATH = "/v1/models/{name}/predict"
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # as the registry validates it
T = TypeVar("T")


def add_routes(app: FastAPI, state: ServerState, lane: PredictLane) -> None:
    """Declare every route of the server on ``app``."""
    catalog = _Catalog(state)
    _add_predict(app, lane)
    add_forecast_route(app, state)  # task: forecasting: a history in, the horizon out
    add_recommend_route(app, state)  # task: recommendation: a user in, items out
    add_generate_route(app, state)  # a language model: a prompt in, text out (streamed)
    _add_models(app, state, catalog)
    _add_health(app, state, catalog)
    _add_admin(app, state, catalog)
    _add_docs(app)


class _Catalog:
    """What the routes say about the served models: summaries, canaries, every served version."""

    def __init__(self, state: ServerState) -> None:
        self.pool = state.pool
        self.settings = state.settings

    def served_pairs(self) -> Iterator[tuple[str, ServedModelLike]]:
        """(served name, version) for every primary and canary version."""
        for name in self.pool.names():
            try:
                yield name, self.pool.primary(name)
                canary = self.pool.canary(name)
            except NotFoundError:  # unloaded meanwhile
                continue
            if canary is not None:
                yield name, canary

    def canary_info(self, name: str) -> dict[str, Any] | None:
        canary = self.pool.canary(name)
        if canary is None:
            return None
        share = next((c.share for c in self.settings.canaries if c.name == name), None)
        return {"ref": canary.ref, "version": canary.version, "share": share}

    def summary(self, name: str) -> dict[str, Any]:
        served = self.pool.primary(name)
        return {
            "name": name,
            "version": served.version,
            "ref": served.ref,
            "runtime": served.runtime_name,
            "task": served.signature.get("task"),
            "canary": self.canary_info(name),
        }

    def failed(self) -> list[dict[str, str]]:
        """The models named at start-up that did not load, with the reason (paths scrubbed)."""
        return [{**f, "error": scrub(f["error"])} for f in self.pool.failed]


def _add_predict(app: FastAPI, lane: PredictLane) -> None:
    """The predict route, declared for OpenAPI and the scope table: a plain Starlette route
    (no FastAPI body machinery) that answers through the lane's endpoint."""

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


def _add_models(app: FastAPI, state: ServerState, catalog: _Catalog) -> None:
    pool = state.pool

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
                models.append(catalog.summary(name))
            except NotFoundError:
                continue
        return json_response({"models": models, "failed": catalog.failed()})

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
        info = catalog.summary(name)
        info["signature"] = served.signature
        info["metrics"] = dict(served.metrics)
        depths = (m.queue_depth() for n, m in catalog.served_pairs() if n == name)
        info["queue_depth"] = sum(int(d) for d in depths)
        return json_response(info)

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
        state.metrics.set_drift(name, served.version, report)
        canary = pool.canary(name)
        if canary is not None:
            canary_report = {**canary.drift(), "version": canary.version, "ref": canary.ref}
            state.metrics.set_drift(name, canary.version, canary_report)
            report["canary"] = canary_report
        return json_response(report)


def _add_health(app: FastAPI, state: ServerState, catalog: _Catalog) -> None:
    pool, metrics = state.pool, state.metrics

    @app.get("/healthz", tags=["health"], response_model=None, responses={200: {"model": Status}})
    @requires(PUBLIC)
    async def healthz() -> Response:
        """Liveness: 200 while the process runs."""
        return json_response({"status": "ok"})

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
        failed = sorted({f["name"] for f in pool.failed})
        if failed:  # named at start-up but not loadable; GET /v1/models says why
            ready["failed"] = failed
        return json_response(ready)

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=PlainTextResponse,
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
            **errors(401),
        },
    )
    @requires(PUBLIC if state.settings.loopback else PREDICT)
    async def prometheus_metrics() -> Response:
        """Prometheus metrics (needs a predict key when the server listens beyond loopback)."""
        try:
            metrics.update_models(list(catalog.served_pairs()))
        except Exception:
            log.exception("Could not refresh the queue and drift gauges.")
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)


def _add_docs(app: FastAPI) -> None:
    """``/docs``: the API reference rendered here from the OpenAPI document, so that it works
    without internet access (FastAPI's own page loads Swagger UI from a CDN)."""
    from fastapi.responses import HTMLResponse

    from danlu.serve._docs import CONTENT_SECURITY_POLICY, docs_html

    @app.get("/docs", include_in_schema=False, response_model=None)
    @requires(PUBLIC)
    async def docs() -> Response:
        page = docs_html(app.openapi(), app.openapi_url or "/openapi.json")
        return HTMLResponse(page, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})


async def _admin_call(what: str, call: Awaitable[T]) -> T:
    """Await an admin action on the pool; a failed load (whatever the loader raised) or another
    danlu error is a 409 saying that what was serving still serves."""
    try:
        return await call
    except ModelLoadError as exc:  # whatever the loader raised (NotFoundError too): 409
        raise AdminFailure(
            f"{what} failed; what was serving still serves: {scrub(str(exc))}"
        ) from exc
    except (NotFoundError, ConfigError, RequestError):
        raise
    except DanluError as exc:
        raise AdminFailure(
            f"{what} failed; what was serving still serves: {scrub(str(exc))}"
        ) from exc


async def _unique_keys(request: Request) -> None:
    """A JSON body with a key twice is refused (400) before it is validated."""
    refuse_duplicate_keys(await request.body())  # FastAPI has read it: cached


_ADMIN_ERRORS = errors(400, 401, 403, 404, 408, 409, 413, 415, 422)


def _add_admin(app: FastAPI, state: ServerState, catalog: _Catalog) -> None:
    pool = state.pool

    @app.post(
        "/v1/admin/models/{name}/reload",
        tags=["admin"],
        response_model=None,
        responses={200: {"model": ModelSummary}, **_ADMIN_ERRORS},
    )
    @requires(ADMIN)
    async def reload_model(name: str, request: Request) -> Response:
        """Load the version the model's reference now points at beside the old one, then swap."""
        await _admin_call(f"Reloading '{name}'", pool.reload(name))
        summary = catalog.summary(name)
        await _record(state, request, "serve_reload", name, summary.get("version"))
        return json_response(summary)

    @app.post(
        "/v1/admin/models",
        tags=["admin"],
        response_model=None,
        responses={200: {"model": ModelSummary}, **_ADMIN_ERRORS},
        dependencies=[Depends(_unique_keys)],
    )
    @requires(ADMIN)
    async def load_model(body: LoadRequest, request: Request) -> Response:
        """Load and serve another model: {"ref": "wine@production"}, or under a name of its own:
        {"ref": "wine@tuned", "name": "wine-tuned"}. A name already served switches to the new
        version (hot swap); a version that fails to load is a 409 and changes nothing."""
        from danlu.store import parse_model_ref

        model = parse_model_ref(body.ref)[0]
        name = body.name or model
        key = request.scope.get(SCOPE_KEY)
        if key is not None:  # the model loaded decides the project (the middleware saw none)
            await state.auth.allowed(key, "serve", None, model, ref=body.ref)
        loaded = await _admin_call(f"Loading '{body.ref}'", pool.load(body.ref, name=name))
        summary = catalog.summary(loaded.name or name)
        await _record(state, request, "serve_load", model, summary.get("version"), served=name)
        return json_response(summary)

    @app.delete(
        "/v1/admin/models/{name}",
        tags=["admin"],
        response_model=None,
        responses={200: {"model": Unloaded}, **_ADMIN_ERRORS},
    )
    @requires(ADMIN)
    async def unload_model(name: str, request: Request) -> Response:
        """Stop serving a model (requests already queued are answered first)."""
        await _admin_call(f"Unloading '{name}'", pool.unload(name))
        await _record(state, request, "serve_unload", name, None)
        return json_response({"model": name, "unloaded": True})

    _add_set_alias(app, state, catalog)


def _actor(state: ServerState, request: Request) -> str:
    """Who made an admin request, for the audit log: the key's user and id."""
    key = request.scope.get(SCOPE_KEY)
    if key is None:
        return "danlu-serve"
    principal = getattr(state.store(), "key_principal", None)
    if principal is None:  # a key store without users
        return f"api-key:{key.name}"
    return str(principal(key, via="http").actor)


async def _record(
    state: ServerState, request: Request, action: str, model: str, version: Any, **detail: Any
) -> None:
    """Audit an admin action the registry does not record itself (never fails the request)."""
    store = state.store()
    record = getattr(store, "record_action", None)
    key = request.scope.get(SCOPE_KEY)
    if record is None or key is None:
        return
    try:
        principal = store.key_principal(key, via="http")
        await asyncio.to_thread(record, principal, action, model[:100], version, **detail)
    except Exception:
        log.exception("Could not audit %s of %s.", action, model)


def _add_set_alias(app: FastAPI, state: ServerState, catalog: _Catalog) -> None:
    pool = state.pool

    @app.put(
        "/v1/admin/models/{name}/alias",
        tags=["admin"],
        response_model=None,
        responses={200: {"model": AliasSet}, **_ADMIN_ERRORS},
        dependencies=[Depends(_unique_keys)],
    )
    @requires(ADMIN)
    async def set_alias(name: str, body: AliasRequest, request: Request) -> Response:
        """Point an alias at a version in the registry, then reload the model if it is served."""
        if not _MODEL_NAME.match(name):
            raise NotFoundError(f"There is no model named {name[:100]!r}.")
        actor = _actor(state, request)
        store = state.store()
        try:
            await asyncio.to_thread(store.set_alias, name, body.alias, body.version, actor=actor)
        except StoreError as exc:  # an invalid name or alias
            raise RequestError("alias", scrub(str(exc))) from exc
        serving = None
        if name in pool.names():
            await _admin_call(f"Reloading '{name}'", pool.reload(name))
            serving = catalog.summary(name)
        return json_response(
            {"model": name, "alias": body.alias, "version": body.version, "serving": serving}
        )
