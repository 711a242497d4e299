"""The dashboard's FastAPI application: pages rendered on the server (Jinja2, autoescaped), a
little JavaScript served from ``/static`` (uPlot and Apache ECharts vendored from npm, and
danlu's own ``app.js``), JSON routes the pages poll, and the safety rules of DESIGN.md:

- it listens on 127.0.0.1 unless told otherwise; on any other address every request needs a
  key (the ``X-Danlu-Key`` header, or the cookie that ``/login`` sets from a key typed once);
- every state-changing request (POST) needs a key of the right scope and passes a same-origin
  check (its ``Origin``, else its ``Referer``, must be this server);
- every page carries a Content-Security-Policy without inline script (``script-src 'self'``),
  ``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy``; the
  trust reports (self-contained HTML with no script) are framed from this origin only and
  sandboxed;
- user-supplied strings (run names, tags, params, column names) are escaped by Jinja2's
  autoescaping, and JSON handed to scripts goes through ``data-`` attributes or JSON routes,
  never into a ``<script>`` block.

Pages live in their own modules, each an ``APIRouter`` listed in :data:`ROUTERS`.
"""

from __future__ import annotations

import hmac
import importlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from danlu.errors import ConfigError

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse

    from danlu.store import ApiKey, Principal, Store

__all__ = [
    "KEY_COOKIE",
    "KEY_HEADER",
    "ROUTERS",
    "check_access",
    "create_app",
    "render",
    "require_key",
    "ui_principal",
]

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
KEY_HEADER = "X-Danlu-Key"
KEY_COOKIE = "danlu_key"
#: the page modules (each has ``router``), in the navigation's order
ROUTERS = (
    "danlu.ui._auth",
    "danlu.ui._runs",
    "danlu.ui._compare",
    "danlu.ui._studies",
    "danlu.ui._models",
    "danlu.ui._jobs",
    "danlu.ui._deployments",
)

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'self'; font-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
#: a stored trust report: inline styles and SVG, never a script; framed by our pages only
REPORT_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox; frame-ancestors 'self'"
)


def _require_ui() -> None:
    try:
        import fastapi  # noqa: F401
        import jinja2  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"danlu ui needs FastAPI and Jinja2 ({exc.name} is missing). Install them with: "
            "pip install 'danlu[ui]'"
        ) from None


def create_app(store: Store, *, require_keys: bool = False) -> FastAPI:
    """The dashboard over ``store``.

    Args:
        store: the store to show (SQLite or PostgreSQL), shared by every request.
        require_keys: every request needs a valid key (a non-loopback address).

    Example:
        >>> # uvicorn.run(create_app(SqlStore()), host="127.0.0.1", port=8080)
    """
    _require_ui()
    import jinja2
    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles
    from starlette.responses import PlainTextResponse

    app = FastAPI(title="danlu dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.state.require_keys = require_keys
    app.state.started = time.time()
    app.state.templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html"], default=True),
        undefined=jinja2.StrictUndefined,
    )
    app.state.templates.filters.update(when=_when, num=_num, seconds=_seconds)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        if require_keys and not _public(request.url.path) and _key(request) is None:
            return PlainTextResponse(
                "This dashboard needs a key: send the X-Danlu-Key header, or sign in at /login.",
                status_code=401,
            )
        response = await call_next(request)
        headers = response.headers
        headers.setdefault("Content-Security-Policy", PAGE_CSP)
        headers.setdefault("X-Frame-Options", "DENY")
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "same-origin"
        headers.setdefault("Cache-Control", "no-store")
        return response

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    for module in ROUTERS:
        app.include_router(importlib.import_module(module).router)
    return app


def _public(path: str) -> bool:
    return path in ("/login", "/healthz") or path.startswith("/static/")


def _key(request: Request) -> ApiKey | None:
    """The valid key the request carries (header first, then the sign-in cookie), or None."""
    secret = request.headers.get(KEY_HEADER) or request.cookies.get(KEY_COOKIE)
    if not secret:
        return None
    store: Store = request.app.state.store
    return store.verify_api_key(secret)


def same_origin(request: Request) -> bool:
    """The request comes from a page of this server: its ``Origin`` (else ``Referer``) names
    this host and port. A request carrying neither is refused (browsers send one on POST)."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source:
        return False
    parts = urlsplit(source)
    host = request.headers.get("host", "")
    return bool(parts.netloc) and hmac.compare_digest(parts.netloc.lower(), host.lower())


def require_key(request: Request, scope: str, secret: str | None = None) -> ApiKey:
    """A state-changing request's key: same origin, and a valid key of ``scope`` (``admin``
    keys may do everything). ``secret`` is the key typed into the form, when there is one.

    Raises:
        HTTPException: 403 for a cross-origin request or a missing / wrong / weaker key.
    """
    from fastapi import HTTPException

    if not same_origin(request):
        raise HTTPException(403, "Refused: the request does not come from this dashboard.")
    store: Store = request.app.state.store
    key = store.verify_api_key(secret) if secret else _key(request)
    if key is None:
        raise HTTPException(403, f"This action needs a valid {scope} key.")
    if key.scope not in (scope, "admin"):
        raise HTTPException(403, f"This action needs a {scope} key; the key given is {key.scope}.")
    return key


def _refuse(request: Request, reason: str, secret: str | None, subject: str) -> None:
    """Audit a state-changing request refused before a key was known, then raise 403."""
    import re

    from fastapi import HTTPException

    store = request.app.state.store
    found = re.match(r"dl_([0-9a-f]{16})_", secret or "")
    audit = getattr(store, "audit_denied", None)
    if audit is not None:
        audit(
            f"key {found.group(1)}" if found else "anonymous",
            "ui",
            subject[:100],
            reason=reason,
            via="ui",
            path=request.url.path[:200],
        )
    raise HTTPException(403, reason)


def ui_principal(request: Request, secret: str | None = None, *, subject: str = "*") -> Principal:
    """Who makes a state-changing request: same origin, and a valid key (typed into the form,
    else the header or the sign-in cookie) whose user is active. Refusals are audited.

    Raises:
        HTTPException: 403 for a cross-origin request or a missing, revoked or disabled key.
    """
    if not same_origin(request):
        _refuse(request, "Refused: the request does not come from this dashboard.", None, subject)
    store = request.app.state.store
    given = secret or request.headers.get(KEY_HEADER) or request.cookies.get(KEY_COOKIE)
    key = store.verify_api_key(given) if given else None
    if key is None:
        why = "revoked, unknown, or its user disabled" if given else "missing"
        _refuse(request, f"This action needs a valid key (the key is {why}).", given, subject)
    return store.key_principal(key, via="ui")  # type: ignore[no-any-return]


def check_access(
    request: Request, who: Principal, action: str, project: str, *, subject: str, **detail: Any
) -> Principal:
    """``who`` once allowed ``action`` on ``project`` (the store audits a refusal).

    Raises:
        HTTPException: 403 naming the role needed.
    """
    from fastapi import HTTPException

    from danlu.errors import AccessDeniedError

    try:
        return request.app.state.store.check_access(  # type: ignore[no-any-return]
            who, action, project, subject=subject, **detail
        )
    except AccessDeniedError as exc:
        raise HTTPException(403, str(exc)) from None


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page: ``template`` rendered with ``context`` (autoescaped)."""
    from fastapi.responses import HTMLResponse

    env = request.app.state.templates
    page = env.get_template(template).render(request=request, path=request.url.path, **context)
    return HTMLResponse(page, status_code=status)


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"
