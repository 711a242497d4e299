"""Checks on a request's headers that come before anything else: the Host it names, the Origin a
browser adds, and the type of body it declares.

- **Host** (DNS rebinding): a page on ``evil.example`` whose name is made to resolve to 127.0.0.1
  sends ``Host: evil.example``. Only the loopback names (``localhost``, ``127.0.0.1``, ``::1``),
  the address the server is bound to and the names of ``--allowed-hosts`` are answered, on any
  port; any other Host, or none, gets 400. ``--allowed-hosts '*'`` answers every Host (a proxy in
  front checks it). ``/healthz`` and ``/readyz`` are exempt: probes and load balancers address a
  server by its IP, and neither route tells or changes anything.
- **Origin** (cross-site requests): a POST, PUT, PATCH or DELETE with an ``Origin`` header gets
  403 unless the origin's host is an allowed one (``'*'`` does not count) or the origin is the very
  host the request was sent to. Clients that are not browsers send no Origin.
- **Content-Type**: a POST, PUT or PATCH that declares a body of another type than JSON
  (``application/json`` or ``application/*+json``; parameters allowed, a charset only UTF-8) gets
  415. A request without a Content-Type is read as JSON.

Each verdict is one dict lookup once a header value has been seen (the caches are bounded), so the
checks cost the predict lane well under a microsecond.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from danlu.serve._types import LOOPBACK, RequestError

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["GuardMiddleware", "RequestGuard", "parse_allowed_hosts"]

EXEMPT_PATHS = frozenset(("/healthz", "/readyz"))  # no Host check: probes address servers by IP
_STATE_CHANGING = frozenset(("POST", "PUT", "PATCH", "DELETE"))
_WITH_BODY = frozenset(("POST", "PUT", "PATCH"))
_WILDCARD_ADDRESSES = frozenset(("0.0.0.0", "::", ""))  # bound to every interface: not a name
_CACHE_SIZE = 256


def _host_name(authority: str) -> str:
    """``Example.COM:8000`` → ``example.com``; ``[::1]:8000`` → ``::1``; a bare IPv6 address as is."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1 : authority.find("]")] if "]" in authority else authority
    if authority.count(":") == 1:
        authority = authority.partition(":")[0]
    return authority.rstrip(".")


def parse_allowed_hosts(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """``--allowed-hosts a.example,b.example`` → the names, lower-cased, ports and brackets removed.

    Example:
        >>> parse_allowed_hosts("API.example.com, [::1]:8000,*")
        ('api.example.com', '::1', '*')
    """
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    names = []
    for item in items:
        item = item.strip()
        if item:
            names.append("*" if item == "*" else _host_name(item))
    return tuple(dict.fromkeys(names))


class RequestGuard:
    """Decides whether a request's Host, Origin and Content-Type are acceptable.

    Args:
        allowed_hosts: names answered besides the loopback names and ``bound_host``; ``*``
            answers every Host.
        bound_host: the address the server listens on.

    Example:
        >>> guard = RequestGuard((), "127.0.0.1")
        >>> guard.check("POST", "/v1/models/wine/predict", [(b"host", b"evil.example")]).status
        400
    """

    def __init__(self, allowed_hosts: Iterable[str] = (), bound_host: str = "127.0.0.1") -> None:
        given = parse_allowed_hosts(tuple(allowed_hosts))
        self.any_host = "*" in given
        names = [*LOOPBACK, *given]
        bound = _host_name(bound_host)
        if bound not in _WILDCARD_ADDRESSES:
            names.append(bound)
        self.names = frozenset(n for n in names if n != "*")
        self._hosts: dict[bytes | None, bool] = {}
        self._origins: dict[tuple[bytes, bytes | None], bool] = {}
        self._types: dict[bytes, str | None] = {}

    def check(
        self, method: str, path: str, headers: Iterable[tuple[bytes, bytes]]
    ) -> RequestError | None:
        """The error a request earns by its headers (400 Host, 403 Origin, 415 Content-Type), or
        None."""
        host = origin = content_type = None
        for name, value in headers:
            if name == b"host":
                host = value
            elif name == b"origin":
                origin = value
            elif name == b"content-type":
                content_type = value
        if not self.any_host and path not in EXEMPT_PATHS:
            allowed = self._hosts.get(host)
            if allowed is None:
                allowed = _remember(self._hosts, host, self._host_allowed(host))
            if not allowed:
                return self._bad_host(host)
        if method in _STATE_CHANGING:
            if origin is not None:
                key = (origin, host)
                allowed = self._origins.get(key)
                if allowed is None:
                    allowed = _remember(self._origins, key, self._origin_allowed(origin, host))
                if not allowed:
                    return _cross_origin(origin)
            if content_type is not None and method in _WITH_BODY:
                if content_type in self._types:
                    problem = self._types[content_type]
                else:
                    problem = _remember(self._types, content_type, _type_problem(content_type))
                if problem is not None:
                    return RequestError("Content-Type", problem, 415, code="unsupported_media_type")
        return None

    def _host_allowed(self, host: bytes | None) -> bool:
        return host is not None and _host_name(host.decode("latin-1")) in self.names

    def _origin_allowed(self, origin: bytes, host: bytes | None) -> bool:
        text = origin.decode("latin-1").strip().lower()
        scheme, sep, authority = text.partition("://")
        if not sep or scheme not in ("http", "https") or not authority or "/" in authority:
            return False  # "null" (a sandboxed frame, a file), or not an origin at all
        if host is not None and authority == host.decode("latin-1").strip().lower():
            return True  # same origin: the page came from this very server
        return _host_name(authority) in self.names

    def _bad_host(self, host: bytes | None) -> RequestError:
        if host is None:
            return RequestError(
                "Host", "is missing; send the name the server is reached by.", 400, code="bad_host"
            )
        shown = host.decode("latin-1")[:100]
        name = _host_name(shown)
        allowed = ", ".join(sorted(self.names))
        return RequestError(
            "Host",
            f"{shown!r} is not a name this server answers to (it answers to {allowed}, on any "
            f"port). If clients reach it by that name, start it with --allowed-hosts {name}.",
            400,
            code="bad_host",
        )


def _remember(cache: dict[Any, Any], key: Any, verdict: Any) -> Any:
    if len(cache) >= _CACHE_SIZE:  # bounded: random header values must not grow it forever
        cache.clear()
    cache[key] = verdict
    return verdict


def _cross_origin(origin: bytes) -> RequestError:
    shown = origin.decode("latin-1")[:100]
    return RequestError(
        "Origin",
        f"{shown!r} is another site: requests that change something are not accepted from web "
        "pages of other origins. Call the API from your own server, or add that host to "
        "--allowed-hosts.",
        403,
        code="cross_origin",
    )


def _type_problem(content_type: bytes) -> str | None:
    """Why a Content-Type is refused (415), or None for JSON in UTF-8."""
    text = content_type.decode("latin-1")
    media, _, parameters = text.partition(";")
    media = media.strip().lower()
    shown = text.strip()[:100]
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        return (
            f"is {shown!r}; the body must be JSON, sent as 'Content-Type: application/json' "
            "(with curl: -H 'Content-Type: application/json')."
        )
    for parameter in parameters.split(";"):
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return f"is {shown!r}; JSON bodies must be UTF-8 (charset=utf-8)."
    return None


class GuardMiddleware:
    """Pure ASGI middleware: answers a request that :class:`RequestGuard` refuses, before the
    body limits, the API keys and the routes see it.

    Args:
        app: the ASGI app to wrap.
        guard: the checks.
        respond: turns a RequestError into an ASGI response app.
    """

    def __init__(
        self, app: ASGIApp, *, guard: RequestGuard, respond: Callable[[RequestError], Any]
    ) -> None:
        self.app = app
        self.guard = guard
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            error = self.guard.check(scope["method"], scope["path"], scope["headers"])
            if error is not None:
                await self.respond(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)
