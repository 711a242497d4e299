"""API keys, checked in one place: every route declares a scope, one middleware enforces it.

Scopes: ``public`` (health, readiness, the docs), ``predict`` (``/v1/models...``) and ``admin``
(``/v1/admin/...``). An endpoint says which it needs with :func:`requires`; :func:`route_scopes`
refuses an app with a route that declares none (``create_app`` calls it), and at request time a
route without a scope is treated as admin, so a route added later cannot be reached without the
strongest key.

Predict routes need a key only when keys exist in the store or the server listens beyond
loopback; admin routes always need an admin key, so with no keys configured the admin API is
closed. Keys are verified by the store (which compares hashes); results are cached for a few
seconds so a request does not cost a database round trip.

Users and roles (docs/access.md): a key belongs to a user and carries a role on a project. A
route about one model (``/v1/models/{name}...``, ``/v1/admin/models/{name}...``) is checked on
that model's project: ``predict`` for predict routes, ``serve`` (the admin role) for admin
routes, through the store's ``check_access``, which audits every refusal; a refused admin
request without a valid key (401) is audited here. Loading a model by reference (``POST
/v1/admin/models``) is checked by its endpoint, on the project of the model it names.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from danlu.errors import DanluError
from danlu.logging import get_logger

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "ADMIN",
    "PREDICT",
    "PUBLIC",
    "AuthError",
    "AuthMiddleware",
    "Authenticator",
    "UnscopedRouteError",
    "requires",
    "route_scopes",
]

log = get_logger(__name__)

PUBLIC = "public"
PREDICT = "predict"
ADMIN = "admin"
SCOPES = (PUBLIC, PREDICT, ADMIN)
ADMIN_PREFIX = "/v1/admin"
SCOPE_KEY = "danlu.api_key"  # the verified ApiKey, in the ASGI scope of an authorised request
_ATTR = "__danlu_scope__"
_MAX_SECRET = 512  # longer "keys" are refused without asking the store
_KEY_ID = re.compile(r"dl_([0-9a-f]{16})_")
_MODEL_PATH = re.compile(r"^/v1/(?:admin/)?models/([^/]+)")

F = TypeVar("F", bound=Callable[..., Any])


class ApiKeyLike(Protocol):
    id: str
    name: str
    scope: str
    role: str
    project: str

    @property
    def active(self) -> bool: ...


class KeyStore(Protocol):
    """What auth needs from the store."""

    def verify_api_key(self, secret: str) -> ApiKeyLike | None: ...

    def has_api_keys(self, scope: str | None = None) -> bool: ...


class AuthError(DanluError, PermissionError):
    """A request without a valid key (401) or with a key of too small a scope (403)."""

    def __init__(self, status: int, message: str, field: str = "Authorization") -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message


class UnscopedRouteError(DanluError, RuntimeError):
    """A route was added without declaring who may call it."""


def requires(scope: str) -> Callable[[F], F]:
    """Declare the scope an endpoint needs (``public``, ``predict`` or ``admin``).

    Example:
        >>> @requires("admin")
        ... async def reload(name: str) -> dict: ...
    """
    if scope not in SCOPES:
        raise ValueError(f"Unknown scope {scope!r}; use one of {', '.join(SCOPES)}.")

    def mark(endpoint: F) -> F:
        setattr(endpoint, _ATTR, scope)
        return endpoint

    return mark


def _docs_paths(app: Any) -> set[str]:
    names = ("openapi_url", "docs_url", "redoc_url", "swagger_ui_oauth2_redirect_url")
    return {p for p in (getattr(app, n, None) for n in names) if p}


def _declared(route: Any, docs: set[str]) -> str | None:
    scope = getattr(getattr(route, "endpoint", None), _ATTR, None)
    if scope is None and getattr(route, "path", None) in docs:
        return PUBLIC  # FastAPI's own /docs and /openapi.json
    return scope


def route_scopes(app: Any) -> dict[str, str]:
    """Every route's path and the scope it needs; raises UnscopedRouteError when a route declares
    none, an admin path is not admin-only, or one path is given two scopes.

    Example:
        >>> # route_scopes(create_app(pool, SqlStore, settings))["/v1/admin/models"]
        >>> # 'admin'
    """
    docs = _docs_paths(app)
    scopes: dict[str, str] = {}
    problems = []
    for route in app.routes:
        path = getattr(route, "path", None)
        if path is None:
            problems.append(f"{route!r} has no path")
            continue
        scope = _declared(route, docs)
        if scope is None:
            problems.append(f"{path} declares no scope (decorate its endpoint with @requires)")
        elif path.startswith(ADMIN_PREFIX) and scope != ADMIN:
            problems.append(f"{path} is under {ADMIN_PREFIX} but declares scope {scope!r}")
        elif scopes.get(path, scope) != scope:
            problems.append(f"{path} is declared both {scopes[path]!r} and {scope!r}")
        else:
            scopes[path] = scope
    if problems:
        raise UnscopedRouteError("Unprotected routes: " + "; ".join(problems) + ".")
    return scopes


class _ScopeTable:
    """Which scope a request path needs, from the app's routes (read on first use)."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._routes: list[tuple[re.Pattern[str], str]] | None = None
        self._seen: dict[str, str] = {}

    def scope_for(self, path: str) -> str:
        found = self._seen.get(path)
        if found is not None:
            return found
        if self._routes is None:
            docs = _docs_paths(self._app)
            self._routes = [
                (route.path_regex, _declared(route, docs) or ADMIN)  # undeclared: strongest
                for route in self._app.routes
                if hasattr(route, "path_regex")
            ]
        scope = ADMIN if path.startswith(ADMIN_PREFIX) else PUBLIC  # no route: 404 (or 401)
        for regex, declared in self._routes:
            if regex.match(path):
                scope = ADMIN if path.startswith(ADMIN_PREFIX) else declared
                break
        if len(self._seen) > 4096:  # bounded: random paths must not grow it forever
            self._seen.clear()
        self._seen[path] = scope
        return scope


class _TtlCache:
    """A bounded LRU of values that expire."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[bytes, tuple[float, Any]] = OrderedDict()

    def get(self, key: bytes) -> tuple[bool, Any]:
        item = self._items.get(key)
        if item is None:
            return False, None
        if item[0] < time.monotonic():
            del self._items[key]
            return False, None
        self._items.move_to_end(key)
        return True, item[1]

    def put(self, key: bytes, value: Any, ttl: float) -> None:
        self._items[key] = (time.monotonic() + ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()


class Authenticator:
    """Decides whether a request may use a route of a given scope.

    Args:
        store: returns the store (called in a worker thread; may open it on first call).
        loopback: the server listens on loopback only (predict keys optional when no keys exist).
        ttl_s: how long a verified key (and "keys exist") is trusted before asking again; a
            revoked key stops working within this delay.
        negative_ttl_s: how long an unknown secret is remembered as unknown.
        max_entries: most secrets cached.
    """

    def __init__(
        self,
        store: Callable[[], KeyStore],
        *,
        loopback: bool,
        ttl_s: float = 5.0,
        negative_ttl_s: float = 2.0,
        max_entries: int = 1024,
    ) -> None:
        self._store = store
        self.loopback = loopback
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self._keys = _TtlCache(max_entries)
        self._has_keys: tuple[float, bool] | None = None
        self._inflight: dict[bytes, asyncio.Future[Any]] = {}

    async def _once(self, token: bytes, call: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``call`` once for concurrent askers of the same thing, in a task of its own so
        that one asker giving up (a cancelled request) does not fail the others."""
        task = self._inflight.get(token)
        if task is None:
            task = asyncio.ensure_future(call())
            self._inflight[token] = task

            def done(finished: asyncio.Future[Any]) -> None:
                self._inflight.pop(token, None)
                if not finished.cancelled():
                    finished.exception()  # retrieved, even when every asker has gone

            task.add_done_callback(done)
        return await asyncio.shield(task)

    async def keys_exist(self) -> bool:
        """Whether any API key is configured (cached for ``ttl_s``)."""
        cached = self._has_keys
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]

        async def ask() -> bool:
            try:
                found = await asyncio.to_thread(lambda: bool(self._store().has_api_keys()))
            except Exception:  # fail closed: a store we cannot read means keys are required
                log.exception("Could not check for API keys; requiring one.")
                return True
            self._has_keys = (time.monotonic() + self.ttl_s, found)
            return found

        return bool(await self._once(b"has-keys", ask))

    async def keys_required_for_predict(self) -> bool:
        return not self.loopback or await self.keys_exist()

    async def verify(self, secret: str) -> ApiKeyLike | None:
        """The active key with this secret, or None (cached; asks the store in a thread)."""
        token = hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()
        hit, key = self._keys.get(token)
        if hit:
            return key  # type: ignore[no-any-return]

        async def ask() -> ApiKeyLike | None:
            try:
                found = await asyncio.to_thread(lambda: self._store().verify_api_key(secret))
            except Exception as exc:
                log.exception("Could not verify an API key.")
                raise AuthError(503, "API keys cannot be checked right now; retry.") from exc
            if found is not None and not found.active:
                found = None
            self._keys.put(token, found, self.ttl_s if found else self.negative_ttl_s)
            return found

        return await self._once(b"key:" + token, ask)  # type: ignore[no-any-return]

    def forget(self) -> None:
        """Drop every cached answer (after keys change)."""
        self._keys.clear()
        self._has_keys = None

    async def authorize(
        self,
        headers: list[tuple[bytes, bytes]],
        scope: str,
        path: str = "",
        method: str = "GET",
    ) -> Any:
        """The key allowing this request (None when none is needed); raises AuthError."""
        if scope == PUBLIC:
            return None
        secret, field = _secret(headers)
        if secret is None:
            if scope == PREDICT and not await self.keys_required_for_predict():
                return None
            need = "an admin" if scope == ADMIN else "an"
            await self._audit_unknown(scope, path, method, "no API key", None)
            raise AuthError(
                401,
                f"This route needs {need} API key: send 'Authorization: Bearer <key>' or "
                f"'X-API-Key: <key>' (create one with: danlu keys create --user NAME "
                f"--project PROJECT --role {'admin' if scope == ADMIN else 'predictor'}).",
                field,
            )
        key = await self.verify(secret) if 0 < len(secret) <= _MAX_SECRET else None
        if key is None:
            await self._audit_unknown(scope, path, method, "unknown or revoked key", secret)
            raise AuthError(
                401,
                "The API key is not valid (unknown, revoked, or its user is disabled).",
                field,
            )
        match = _MODEL_PATH.match(path)
        check = getattr(self._store(), "check_access", None)
        if check is None:  # a key store without users and roles: the key's scope alone
            if scope == ADMIN and key.scope != ADMIN:
                raise AuthError(
                    403,
                    f"The API key '{key.name}' has scope '{key.scope}'; this route needs an "
                    "admin key.",
                    field,
                )
            return key
        action = "serve" if scope == ADMIN else "predict"
        if match is not None:
            await self.allowed(key, action, None, match.group(1), field, path=path, method=method)
        elif scope == ADMIN and key.role != ADMIN:
            # not about one model (a load by reference): a key below admin is refused here (and
            # audited); an admin key is checked by the endpoint on the model it names
            await self.allowed(key, action, key.project, "*", field, path=path, method=method)
        return key

    async def allowed(
        self,
        key: ApiKeyLike,
        action: str,
        project: str | None,
        model: str,
        field: str = "Authorization",
        **detail: Any,
    ) -> None:
        """Check ``key`` may do ``action`` on ``project`` (None: the project of ``model``);
        allowed answers are cached for ``ttl_s``; a refusal is audited by the store and raised
        as a 403 AuthError."""
        if getattr(self._store(), "check_access", None) is None:
            return  # a key store without users and roles: the middleware checked the scope
        token = f"allow:{key.id}:{action}:{project}:{model}".encode("utf-8", "surrogateescape")
        hit, _ = self._keys.get(token)
        if hit:
            return

        async def ask() -> str | None:
            def run() -> str | None:
                from danlu.errors import AccessDeniedError

                store: Any = self._store()
                where = project if project is not None else store.model_project(model)
                try:
                    store.check_access(
                        store.key_principal(key, via="http"),
                        action,
                        where,
                        subject=model[:100],
                        **detail,
                    )
                except AccessDeniedError as exc:
                    return str(exc)
                return None

            try:
                refused = await asyncio.to_thread(run)
            except Exception as exc:
                log.exception("Could not check an API key's role.")
                raise AuthError(503, "API keys cannot be checked right now; retry.") from exc
            if refused is None:
                self._keys.put(token, True, self.ttl_s)
            return refused

        refused = await self._once(token, ask)
        if refused is not None:
            raise AuthError(403, refused, field)

    async def _audit_unknown(
        self, scope: str, path: str, method: str, reason: str, secret: str | None
    ) -> None:
        """Audit a refused admin request that carries no valid key (never predict routes: a
        flood of bad prediction calls must not become a flood of database writes)."""
        if scope != ADMIN:
            return
        audit = getattr(self._store(), "audit_denied", None)
        if audit is None:
            return
        found = _KEY_ID.match(secret or "")
        actor = f"key {found.group(1)}" if found else "anonymous"
        model = _MODEL_PATH.match(path)
        try:
            await asyncio.to_thread(
                audit,
                actor,
                "serve",
                model.group(1)[:100] if model else "*",
                reason=reason,
                via="http",
                path=path[:200],
                method=method,
            )
        except Exception:
            log.exception("Could not audit a refused admin request.")


def _secret(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, str]:
    """The key a request carries (``Authorization: Bearer`` or ``X-API-Key``) and its header."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() != "bearer":
                return "", "Authorization"  # present but not a bearer token: invalid
            return token.strip(), "Authorization"
        if name == b"x-api-key":
            return value.decode("latin-1").strip(), "X-API-Key"
    return None, "Authorization"


class AuthMiddleware:
    """Pure ASGI middleware: classifies each request by its route's scope and checks its key.

    The verified key is left in ``scope["danlu.api_key"]`` for the endpoint (the audit actor).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes_of: Any,
        authenticator: Authenticator,
        respond: Callable[[AuthError], Any],
    ) -> None:
        self.app = app
        self.table = _ScopeTable(routes_of)
        self.auth = authenticator
        self.respond = respond  # AuthError -> an ASGI response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        needed = self.table.scope_for(scope["path"])
        if needed != PUBLIC:
            try:
                key = await self.auth.authorize(
                    scope["headers"], needed, scope["path"], scope.get("method", "GET")
                )
            except AuthError as exc:
                await self.respond(exc)(scope, receive, send)
                return
            scope[SCOPE_KEY] = key
        await self.app(scope, receive, send)
