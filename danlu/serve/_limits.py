"""Limits against big and slow clients.

- :class:`BodyLimitMiddleware` (pure ASGI): a body over ``max_body_bytes`` gets 413 — at once when
  ``Content-Length`` says so, else as soon as the streamed (chunked) body passes the cap — and a
  body that has not fully arrived ``body_timeout_s`` after its headers gets 408 (slowloris).
- :class:`RowLimits`: the most rows one request to a model may carry — ``--max-rows``, or fewer
  when that many of the model's rows would not fit ``--max-body`` at :data:`VALUE_BYTES` a value,
  so that the limit a client is told (the OpenAPI ``maxItems``, the 413) is one it can reach.
  :func:`body_bytes_for` sizes a body cap the other way round (``danlu serve`` without
  ``--max-body``).
- :func:`header_deadline_protocol`: uvicorn's HTTP protocol with a deadline on the request
  headers, so a client that connects and trickles headers (or nothing) is disconnected; uvicorn's
  own ``timeout_keep_alive`` only covers idle time *between* requests. Its request line and
  headers are also capped at ``MAX_HEADER_BYTES`` (431): h11 enforces the cap itself
  (``h11_max_incomplete_event_size``), httptools has none, so the protocol counts them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from danlu.serve._types import RequestError

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "MAX_HEADER_BYTES",
    "VALUE_BYTES",
    "BodyLimitMiddleware",
    "RowLimits",
    "body_bytes_for",
    "content_length_error",
    "header_deadline_protocol",
    "read_body",
    "row_bytes",
]

MAX_HEADER_BYTES = 64 * 1024  # a request's line and headers, at most
# a value's share of a {"rows": [...]} body besides its key: a float64 at full precision (at most
# 24 characters), ": " and ", ", and indentation as json.dumps(indent=4) writes it
VALUE_BYTES = 40
_ENVELOPE_BYTES = 64  # {"rows": [ ... ]} and the whitespace around it


def row_bytes(features: Sequence[str]) -> int:
    """The bytes one row of these features may take: each key as JSON, plus VALUE_BYTES.

    Example:
        >>> row_bytes(["alcohol", "hue"])  # {"alcohol": ..., "hue": ...}
        96
    """
    return 2 + sum(len(json.dumps(name)) + VALUE_BYTES for name in features)


def body_bytes_for(rows: int, features: Sequence[str]) -> int:
    """A body cap that holds ``rows`` rows of these features.

    Example:
        >>> body_bytes_for(1024, [f"pixel_{i}_{j}" for i in range(8) for j in range(8)])
        3344448
    """
    return _ENVELOPE_BYTES + rows * row_bytes(features)


def _feature_names(signature: Mapping[str, Any]) -> list[str]:
    return [str(f.get("name")) for f in signature.get("inputs") or () if isinstance(f, Mapping)]


class RowLimits:
    """The most rows one request to a model may carry: ``max_rows``, or as many of the model's
    rows as ``max_body_bytes`` holds at VALUE_BYTES a value when that is fewer (at least 1).

    Args:
        max_rows: ``--max-rows``.
        max_body_bytes: ``--max-body``.

    Example:
        >>> limits = RowLimits(max_rows=1024, max_body_bytes=64_000)
        >>> limits.of({"inputs": [{"name": f"x{i}"} for i in range(64)]}, "m:1")
        22
    """

    def __init__(self, max_rows: int, max_body_bytes: int) -> None:
        self.max_rows = max_rows
        self.max_body_bytes = max_body_bytes
        self._by_ref: dict[str, int] = {}

    def of(self, signature: Mapping[str, Any], ref: str) -> int:
        """The limit of the version ``ref`` with this signature (cached by ``ref``)."""
        limit = self._by_ref.get(ref)
        if limit is None:
            features = _feature_names(signature)
            fit = (self.max_body_bytes - _ENVELOPE_BYTES) // row_bytes(features)
            limit = max(1, min(self.max_rows, fit))
            if len(self._by_ref) > 256:
                self._by_ref.clear()
            self._by_ref[ref] = limit
        return limit

    def why(self, signature: Mapping[str, Any], ref: str) -> str:
        """Which setting makes the limit of ``ref``, for a 413's message."""
        limit = self.of(signature, ref)
        if limit >= self.max_rows:
            return f"the server's --max-rows is {self.max_rows}"
        n = len(_feature_names(signature))
        return (
            f"--max-body ({self.max_body_bytes} bytes) holds {limit} rows of this model's {n} "
            f"features at {VALUE_BYTES} bytes a value; --max-rows is {self.max_rows}"
        )


class BodyLimitMiddleware:
    """Cap the request body's size and the time it may take to arrive.

    When a limit is hit the middleware answers itself (``respond(RequestError)`` builds the
    response) and tells the app the client went away, so the app never sees a partial body and
    whatever it answers is dropped.

    Args:
        app: the ASGI app to wrap.
        max_body_bytes: bodies larger than this get 413.
        body_timeout_s: the whole body must arrive within this many seconds of the headers.
        respond: turns a RequestError into an ASGI response app.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        body_timeout_s: float,
        respond: Callable[[RequestError], Any],
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        error = content_length_error(scope["headers"], self.max_body_bytes)
        if error is not None:
            await self.respond(error)(scope, receive, send)
            return
        body = _LimitedBody(self, scope, receive, send)
        try:
            await self.app(scope, body.receive, body.send)
        finally:
            body.close()


class _LimitedBody:
    """One request's body under :class:`BodyLimitMiddleware`'s limits: the app reads it through
    :meth:`receive` (counted, and under the deadline) and answers through :meth:`send`, which
    drops what the app sends once the middleware has answered (413/408) itself.

    The deadline is one timer, armed on the first read (routes that read no body pay nothing);
    it cancels the read it interrupts, and only a read (cheaper than a timeout context around
    every read).
    """

    def __init__(
        self, limits: BodyLimitMiddleware, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.limits = limits
        self.scope, self._receive, self._send = scope, receive, send
        self.loop = asyncio.get_running_loop()
        self.deadline = self.loop.time() + limits.body_timeout_s
        self.received = 0
        self.body_done = False
        self.answered = False  # the middleware answered with 413/408: drop what the app sends
        self.timer: asyncio.TimerHandle | None = None
        self.reading: asyncio.Task[Any] | None = None
        self.expired = False

    def _expire(self) -> None:
        self.expired = True
        if self.reading is not None:
            self.reading.cancel()

    async def _reply(self, error: RequestError) -> Message:
        if not self.answered:
            self.answered = True
            await self.limits.respond(error)(self.scope, self._receive, self._send)
        return {"type": "http.disconnect"}

    async def receive(self) -> Message:
        if self.body_done or self.answered:
            return await self._receive()  # after the body: waits for a disconnect, no deadline
        if self.expired:
            return await self._reply(_too_slow(self.limits.body_timeout_s))
        if self.timer is None:
            self.timer = self.loop.call_at(self.deadline, self._expire)
        self.reading = asyncio.current_task()
        try:
            message = await self._receive()
        except asyncio.CancelledError:
            if self.expired and self.reading is not None and self.reading.uncancel() == 0:
                return await self._reply(_too_slow(self.limits.body_timeout_s))  # our deadline
            raise
        finally:
            self.reading = None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limits.max_body_bytes:
                return await self._reply(_too_large(self.limits.max_body_bytes))
            if not message.get("more_body", False):
                self.body_done = True
                self.timer.cancel()
        return message

    async def send(self, message: Message) -> None:
        if not self.answered:
            await self._send(message)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


def _too_large(max_body_bytes: int) -> RequestError:
    return RequestError(
        "body",
        f"is larger than the server's limit of {max_body_bytes} bytes (--max-body); send fewer "
        "rows per request",
        413,
    )


def _too_slow(body_timeout_s: float) -> RequestError:
    return RequestError("body", f"did not arrive within {body_timeout_s:g} s; send it faster", 408)


def content_length_error(
    headers: list[tuple[bytes, bytes]], max_body_bytes: int
) -> RequestError | None:
    """The error a request's ``Content-Length`` earns before its body is read (400 when it is not
    a number, 413 when it is over ``max_body_bytes``), or None."""
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit():
                return RequestError("Content-Length", "must be a whole number of bytes", 400)
            if int(value) > max_body_bytes:
                return _too_large(max_body_bytes)
            return None
    return None


async def read_body(
    receive: Receive, max_body_bytes: int, body_timeout_s: float, deadline: float
) -> bytes | None:
    """A request's whole body, under the same limits as :class:`BodyLimitMiddleware`: raises
    RequestError 413 once the streamed body passes ``max_body_bytes`` and 408 when it has not all
    arrived by ``deadline`` (the loop's clock; ``body_timeout_s`` is for the message). None when
    the client went away.

    The deadline is one timer that cancels the read it interrupts (no timeout context per read);
    a body already buffered by the server arrives without the task ever waiting on it.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        if task is not None:
            task.cancel()

    timer = loop.call_at(deadline, expire)
    chunks: list[bytes] = []
    received = 0
    try:
        while True:
            if expired:
                raise _too_slow(body_timeout_s)
            try:
                message = await receive()
            except asyncio.CancelledError:
                if expired and task is not None and task.uncancel() == 0:
                    raise _too_slow(body_timeout_s) from None  # our deadline, no one else's
                raise
            kind = message["type"]
            if kind == "http.request":
                body = message.get("body", b"")
                if body:
                    received += len(body)
                    if received > max_body_bytes:
                        raise _too_large(max_body_bytes)
                    chunks.append(body)
                if not message.get("more_body", False):
                    break
            elif kind == "http.disconnect":
                return None
    finally:
        timer.cancel()
    if expired and task is not None:  # the timer fired after the last read returned
        task.uncancel()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


HEADER_TIMEOUT_S = 10.0  # default deadline for a request's headers
_PROTOCOLS: dict[float, type[asyncio.Protocol] | None] = {}


def header_deadline_protocol(
    header_timeout_s: float = HEADER_TIMEOUT_S,
) -> type[asyncio.Protocol] | None:
    """uvicorn's HTTP protocol class (h11, or httptools when installed) that closes a connection
    whose request headers have not all arrived ``header_timeout_s`` after it opened or after its
    previous response; None when uvicorn's protocol classes cannot be imported (the default
    protocol is used then, without the deadline).

    The class for the default deadline is importable as
    ``danlu.serve._limits.HeaderDeadlineProtocol``, so it pickles into worker processes.

    Example:
        >>> # uvicorn.Config(app, http=header_deadline_protocol(10.0) or "auto")
    """
    if header_timeout_s not in _PROTOCOLS:
        _PROTOCOLS[header_timeout_s] = _make_protocol(header_timeout_s)
    return _PROTOCOLS[header_timeout_s]


def __getattr__(name: str) -> Any:
    if name == "HeaderDeadlineProtocol":
        return header_deadline_protocol()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _make_protocol(header_timeout_s: float) -> type[asyncio.Protocol] | None:
    """uvicorn's HTTP protocol (httptools when installed, else h11) with :class:`_HeaderDeadline`
    mixed in, for this deadline."""
    import importlib.util

    base: type[asyncio.Protocol]
    try:
        if importlib.util.find_spec("httptools") is not None:
            from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

            base = HttpToolsProtocol
        else:
            from uvicorn.protocols.http.h11_impl import H11Protocol

            base = H11Protocol
    except ImportError:  # pragma: no cover - a uvicorn without these modules
        return None
    default = header_timeout_s == HEADER_TIMEOUT_S
    name = "HeaderDeadlineProtocol" if default else f"HeaderDeadlineProtocol_{header_timeout_s:g}"
    namespace = {"header_timeout_s": header_timeout_s, "__module__": __name__, "__qualname__": name}
    return cast("type[asyncio.Protocol]", type(name, (_HeaderDeadline, base), namespace))


if TYPE_CHECKING:

    class _UvicornHttp(asyncio.Protocol):
        """What :class:`_HeaderDeadline` uses of uvicorn's HTTP protocols (for the type checker;
        at run time the mixin sits in front of the real protocol class)."""

        loop: asyncio.AbstractEventLoop
        cycle: Any
        transport: asyncio.Transport

        def on_response_complete(self) -> None: ...
        def handle_events(self) -> None: ...
        def on_headers_complete(self) -> None: ...
        def on_message_begin(self) -> None: ...
        def on_url(self, url: bytes) -> None: ...
        def on_header(self, name: bytes, value: bytes) -> None: ...
        def send_400_response(self, msg: str) -> None: ...

    _Mixin = _UvicornHttp
else:
    _Mixin = object


class _HeaderDeadline(_Mixin):
    """Mixed in front of uvicorn's HTTP protocol: a deadline on each request's headers, and (for
    httptools, which has none) a cap on their size."""

    header_timeout_s = HEADER_TIMEOUT_S
    _header_timer: asyncio.TimerHandle | None = None
    _header_bytes = 0  # httptools: the current request's line and headers so far
    _headers_too_large = False

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and not self.transport.is_closing():
            self.transport.close()  # headers too slow: drop the connection

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        self._arm()  # before super(): it may start a pipelined request, which disarms
        super().on_response_complete()

    # h11: a request's headers are complete when handle_events starts a new cycle.
    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:
            self._disarm()

    # httptools: the parser calls this when the headers are complete.
    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    # httptools has no cap on the headers' size: count them as the parser reports them. An
    # exception here stops the parser; uvicorn then answers with send_400_response.
    def on_message_begin(self) -> None:
        self._header_bytes = 0
        super().on_message_begin()

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            self._headers_too_large = True
            raise ValueError("request headers too large")

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        if not self._headers_too_large:
            super().send_400_response(msg)
            return
        error = {
            "status": 431,
            "code": "headers_too_large",
            "field": "headers",
            "message": f"the request line and headers exceed {MAX_HEADER_BYTES} bytes",
        }
        body = json.dumps({"error": error}, separators=(",", ":")).encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            + b"content-length: %d\r\n" % len(body)
            + b"connection: close\r\n\r\n"
            + body
        )
        self.transport.close()
