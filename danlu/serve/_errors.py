"""Error mapping: every exception a request can meet, as a status and a JSON body.

Every error is ``{"error": {"status", "code", "field"?, "message", "request_id"?}}``. A
:class:`~danlu.serve._types.RequestError` keeps its status and field; an auth error is 401/403
(401 with ``WWW-Authenticate``); a full queue is 503 with ``Retry-After``; a NotFoundError 404; a
ConfigError or DataError 422; a failed admin action 409. Anything else is danlu's own fault: a 500
with a request id that the server log carries with the traceback — never the traceback, a file
path or SQL in the body (:func:`scrub` takes paths out of messages from the store and loaders).
"""

from __future__ import annotations

import math
import re
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from danlu.errors import ConfigError, DanluError, DataError, NotFoundError
from danlu.logging import get_logger
from danlu.serve._auth import AuthError
from danlu.serve._codec import json_response
from danlu.serve._openapi import ERROR_CODES
from danlu.serve._types import QueueFull, RequestError

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "AdminFailure",
    "ErrorBoundary",
    "auth_error",
    "danlu_error",
    "error_response",
    "install_error_handlers",
    "internal_error",
    "predict_failure",
    "request_error",
    "scrub",
]

log = get_logger(__name__)

_PATHLIKE = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s'\"\\/:,;()]+){2,}[\\/]?")


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
    return json_response({"error": error}, status, headers)


def internal_error(where: str) -> Response:
    """Log the exception being handled under a fresh request id; a generic 500 for the client."""
    request_id = uuid.uuid4().hex[:16]
    log.exception("Unexpected error in %s (request id %s)", where, request_id)
    return error_response(
        500,
        f"Internal server error; the server log has the details under request id {request_id}.",
        request_id=request_id,
    )


def scrub(message: str) -> str:
    """A message from the store or a model loader, without file paths in it."""

    def hide(match: re.Match[str]) -> str:  # the server's own routes are no secret
        return match.group(0) if match.group(0).startswith("/v1/") else "<path>"

    return _PATHLIKE.sub(hide, message)


def request_error(exc: RequestError) -> Response:
    return error_response(exc.status, exc.message, exc.field, code=exc.code)


def auth_error(exc: AuthError) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="danlu"'} if exc.status == 401 else None
    return error_response(exc.status, exc.message, exc.field, headers=headers)


def queue_full(exc: QueueFull) -> Response:
    retry = str(max(1, math.ceil(exc.retry_after)))
    return error_response(503, str(exc), code="queue_full", headers={"Retry-After": retry})


def danlu_error(exc: DanluError) -> Response:
    if isinstance(exc, RequestError):
        return request_error(exc)
    if isinstance(exc, QueueFull):
        return queue_full(exc)
    if isinstance(exc, AuthError):
        return auth_error(exc)
    if isinstance(exc, NotFoundError):
        return error_response(404, scrub(str(exc)))
    if isinstance(exc, ConfigError | DataError):
        return error_response(422, scrub(str(exc)))
    return internal_error(type(exc).__name__)


class ErrorBoundary:
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
            response = internal_error(f"{scope.get('method')} {scope.get('path')}")
            if not started:
                await response(scope, receive, send)


class AdminFailure(DanluError, RuntimeError):
    """An admin action on the pool failed (409); what was serving keeps serving."""


def predict_failure(exc: Exception, timeout: float) -> tuple[Response, str]:
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
        return queue_full(exc), "queue_full"
    if isinstance(exc, DanluError):
        response = danlu_error(exc)
        return response, ERROR_CODES.get(response.status_code, "error")
    return internal_error("predict"), "internal"


def install_error_handlers(app: FastAPI) -> None:
    """Answer Starlette's HTTP errors (404, 405), FastAPI's validation errors (422) and danlu
    errors with JSON error bodies."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DanluError, _on_danlu_error)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 404:
        message = "No such route; the API is described at /docs."
    elif status == 405:
        message = "This route does not accept that method."
    else:
        message = str(exc.detail)
    return error_response(status, message, headers=dict(exc.headers or {}))


async def _validation_error(_: Request, exc: Exception) -> Response:
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


async def _on_danlu_error(_: Request, exc: Exception) -> Response:
    if isinstance(exc, AdminFailure):
        return error_response(409, str(exc), code="load_failed")
    assert isinstance(exc, DanluError)
    return danlu_error(exc)
