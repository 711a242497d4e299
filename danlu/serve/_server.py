"""Running the app under uvicorn: safe binding, slow-client limits, graceful shutdown, workers.

On SIGTERM (or Ctrl-C) readiness goes false first, then uvicorn stops accepting connections,
requests in flight finish (bounded by the request timeout), the pool drains and stops, and the
process exits 0. ``workers > 1`` runs that many processes through uvicorn's factory mode; the
settings travel in ``$DANLU_SERVE_SETTINGS`` (JSON).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
from collections.abc import Callable, Generator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

from danlu.errors import ConfigError, MissingExtraError
from danlu.logging import get_logger
from danlu.serve._types import Canary, ServeSettings

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

__all__ = [
    "SETTINGS_ENV",
    "app_factory",
    "build_app",
    "check_binding",
    "check_tls",
    "serve",
    "settings_from_json",
    "settings_to_json",
    "store_factory_for",
    "uvicorn_config",
    "uvicorn_options",
]

log = get_logger(__name__)

SETTINGS_ENV = "DANLU_SERVE_SETTINGS"
KEEP_ALIVE_S = 5  # idle time between requests before the connection is closed


def settings_to_json(settings: ServeSettings) -> str:
    """ServeSettings as JSON (for the worker processes)."""
    return json.dumps(dataclasses.asdict(settings))


def settings_from_json(text: str) -> ServeSettings:
    """The inverse of :func:`settings_to_json`.

    Example:
        >>> s = ServeSettings(models=("wine",), canaries=(Canary("wine", "wine:2", 0.1),))
        >>> settings_from_json(settings_to_json(s)) == s
        True
    """
    data = json.loads(text)
    data["models"] = tuple(data["models"])
    data["allowed_hosts"] = tuple(data.get("allowed_hosts", ()))
    data["canaries"] = tuple(Canary(**c) for c in data.get("canaries", ()))
    return ServeSettings(**data)


def check_binding(settings: ServeSettings, store: Any) -> None:
    """Refuse to listen beyond loopback while no API key exists (anyone on the network could
    call the models)."""
    if settings.loopback:
        return
    if not store.has_api_keys() and getattr(store, "read_only", False):
        raise ConfigError(
            f"Refusing to listen on {settings.host}: no API keys were given, so anyone who can "
            "reach this address could use the model. Give them with --keys-file FILE (or "
            "$DANLU_API_KEYS_FILE): one key of 32+ characters per line; or serve on --host "
            "127.0.0.1."
        )
    if not store.has_api_keys():
        raise ConfigError(
            f"Refusing to listen on {settings.host}: no API keys exist, so anyone who can reach "
            "this address could use the models. Create one with: danlu keys create --scope predict "
            "(clients send it as 'Authorization: Bearer <key>'), or serve on --host 127.0.0.1."
        )


def check_tls(settings: ServeSettings) -> None:
    """Refuse a TLS setting uvicorn would fail on later, or less clearly: a certificate without
    its key (or the reverse), a file that is missing or unreadable, a key that is not the
    certificate's.

    Example:
        >>> check_tls(ServeSettings(models=()))  # no TLS: nothing to check
    """
    import ssl

    cert, key = settings.tls_certfile, settings.tls_keyfile
    if not cert and not key:
        return
    if not cert or not key:
        given, missing = ("--tls-cert", "--tls-key") if cert else ("--tls-key", "--tls-cert")
        raise ConfigError(
            f"{given} was given without {missing}: HTTPS needs both the certificate (PEM) and "
            "its private key (PEM), e.g. --tls-cert server.crt --tls-key server.key."
        )
    for option, path in (("--tls-cert", cert), ("--tls-key", key)):
        try:
            with open(path, "rb") as handle:
                handle.read(1)
        except OSError as exc:
            raise ConfigError(
                f"{option} '{path}' cannot be read: {exc.strerror or exc}. Give the path of a "
                "readable PEM file."
            ) from None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            f"--tls-cert '{cert}' and --tls-key '{key}' do not make a usable certificate and "
            f"key ({exc}): both must be PEM, unencrypted, and the key the certificate's own."
        ) from None


def _check_models(settings: ServeSettings, store: Any) -> list[Any]:
    """Fail before uvicorn starts when two models would be served under one name or a model or
    canary reference does not resolve; the model versions of ``settings.models``."""
    from danlu.serve._pool import served_models

    versions = [store.resolve(ref) for _, ref in served_models(settings.models)]
    for canary in settings.canaries:
        store.resolve(canary.ref)
    return versions


def size_body_limit(settings: ServeSettings, versions: list[Any]) -> ServeSettings:
    """``settings`` with ``max_body_bytes`` worked out when it was left open: large enough for
    ``max_rows`` rows of the widest of these model versions at VALUE_BYTES a value, and at least
    1 MB. A cap given that holds fewer rows of a model is kept, with a warning: that model's
    requests are limited to the rows that fit (its OpenAPI ``maxItems`` says so).

    Example:
        >>> size_body_limit(ServeSettings(models=()), []).max_body_bytes
        1000000
    """
    from danlu.serve._limits import VALUE_BYTES, RowLimits, body_bytes_for
    from danlu.serve._types import DEFAULT_MAX_BODY

    def features(mv: Any) -> list[str]:
        return [str(f.get("name")) for f in (mv.signature or {}).get("inputs") or ()]

    if settings.max_body_bytes is None:
        need = [body_bytes_for(settings.max_rows, features(mv)) for mv in versions]
        return dataclasses.replace(settings, max_body_bytes=max([DEFAULT_MAX_BODY, *need]))
    limits = RowLimits(settings.max_rows, settings.max_body_bytes)
    for mv in versions:
        rows = limits.of(mv.signature or {}, mv.ref)
        if rows < settings.max_rows:
            log.warning(
                "--max-body %d holds %d rows of %s's %d features at %d bytes a value, fewer than "
                "--max-rows %d: its requests are limited to %d rows. Leave --max-body out to size "
                "it for --max-rows.",
                settings.max_body_bytes,
                rows,
                mv.ref,
                len(features(mv)),
                VALUE_BYTES,
                settings.max_rows,
                rows,
            )
    return settings


def _warn_about_hosts(settings: ServeSettings) -> None:
    if settings.host in ("0.0.0.0", "::") and not settings.allowed_hosts:
        log.warning(
            "Listening on every interface (%s), but answering only requests addressed to "
            "localhost, 127.0.0.1 or ::1 (the Host header). Name the addresses clients use with "
            "--allowed-hosts, e.g. --allowed-hosts models.example.com,10.0.0.5.",
            settings.host,
        )


def build_app(settings: ServeSettings, store_factory: Callable[[], Any]) -> FastAPI:
    """The app with a :class:`~danlu.serve._pool.ModelPool` of ``settings.models``."""
    from danlu.serve._app import create_app
    from danlu.serve._pool import ModelPool

    return create_app(ModelPool(store_factory, settings), store_factory, settings)


def _default_store() -> Any:
    from danlu.store import SqlStore

    return SqlStore()


def store_factory_for(settings: ServeSettings) -> Callable[[], Any]:
    """What the server reads models and API keys from: the store (``$DANLU_DB_URL`` /
    ``$DANLU_HOME``), or, for ``danlu serve --package DIR``, the packaged version in ``DIR``
    with the keys of ``--keys-file`` (``extra["package"]``, ``extra["keys_file"]``).

    Example:
        >>> store_factory_for(ServeSettings(models=())).__name__
        '_default_store'
    """
    package = settings.extra.get("package")
    if not package:
        return _default_store
    keys_file = settings.extra.get("keys_file")

    def packaged_store() -> Any:
        from danlu.store import PackagedStore, read_keys_file

        return PackagedStore(package, keys=read_keys_file(keys_file) if keys_file else ())

    return packaged_store


def app_factory() -> FastAPI:
    """uvicorn's factory for worker processes: settings from ``$DANLU_SERVE_SETTINGS``; the store
    of ``$DANLU_DB_URL`` / ``$DANLU_HOME``."""
    text = os.environ.get(SETTINGS_ENV)
    if not text:
        raise ConfigError(f"${SETTINGS_ENV} is not set; start the server with `danlu serve`.")
    settings = settings_from_json(text)
    return build_app(settings, store_factory_for(settings))


def uvicorn_options(settings: ServeSettings) -> dict[str, Any]:
    """uvicorn's options for ``settings``: keep-alive and header deadlines, a bounded header
    size, shutdown bounded by the request timeout, no access log (the metrics count requests)."""
    from danlu.serve._limits import HEADER_TIMEOUT_S, MAX_HEADER_BYTES, header_deadline_protocol

    header_timeout = float(settings.extra.get("header_timeout_s", HEADER_TIMEOUT_S))
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.extra.get("log_level", "info"),
        "access_log": bool(settings.extra.get("access_log", False)),
        "timeout_keep_alive": KEEP_ALIVE_S,
        "timeout_graceful_shutdown": int(settings.request_timeout_s) + 5,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "limit_concurrency": None,
        "server_header": False,
        "proxy_headers": False,  # client addresses are not taken from headers anyone can send
        "lifespan": "on",
        "ws": "none",  # no websocket routes: do not even load a websocket library
        "http": header_deadline_protocol(header_timeout) or "auto",
        **(
            {"ssl_certfile": settings.tls_certfile, "ssl_keyfile": settings.tls_keyfile}
            if settings.tls_certfile
            else {}
        ),
    }


def uvicorn_config(app: Any, settings: ServeSettings, **overrides: Any) -> uvicorn.Config:
    """A ``uvicorn.Config`` of :func:`uvicorn_options`, with ``overrides``."""
    import uvicorn

    return uvicorn.Config(app, **{**uvicorn_options(settings), **overrides})


def _server_class() -> Any:
    import uvicorn

    class DanluServer(uvicorn.Server):
        """uvicorn's server, with readiness turned off before it stops accepting, and a clean
        exit (status 0) after a graceful shutdown instead of re-raising the signal."""

        def __init__(
            self,
            config: uvicorn.Config,
            on_exit: Callable[[], None],
            on_bound: Callable[[int], None] | None = None,
        ) -> None:
            super().__init__(config)
            self._on_exit = on_exit
            self._on_bound = on_bound

        async def startup(self, sockets: list[Any] | None = None) -> None:
            await super().startup(sockets)
            if self._on_bound is not None and self.servers and self.servers[0].sockets:
                self._on_bound(self.servers[0].sockets[0].getsockname()[1])  # for --port 0

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            self._on_exit()  # /readyz answers 503 from now on
            super().handle_exit(sig, frame)

        @contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            signals = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return DanluServer


def make_server(app: FastAPI, settings: ServeSettings, **overrides: Any) -> uvicorn.Server:
    """A uvicorn server for ``app`` whose shutdown first turns readiness off."""
    from danlu.serve._app import server_state

    state = server_state(app)

    def on_bound(port: int) -> None:
        state.bound_port = port

    server: uvicorn.Server = _server_class()(
        uvicorn_config(app, settings, **overrides), state.begin_drain, on_bound
    )
    return server


def serve(settings: ServeSettings, store_factory: Callable[[], Any]) -> None:
    """Serve ``settings.models`` until SIGTERM or Ctrl-C.

    Raises ConfigError when asked to listen beyond loopback with no API key configured or when
    two models would be served under one name, NotFoundError when a model reference does not
    resolve, and ModelLoadError when no model could be loaded (with several models, one that
    fails is logged and listed as failed, and the others serve).

    Example:
        >>> # serve(ServeSettings(models=("wine@production",)), SqlStore)
    """
    try:
        import uvicorn
    except ImportError:
        raise MissingExtraError.for_package("uvicorn", "serve") from None
    from danlu.serve._app import server_state
    from danlu.serve._limits import header_deadline_protocol

    if settings.workers < 1:
        raise ConfigError(f"--workers must be at least 1; got {settings.workers}.")
    check_tls(settings)
    # a server process freezes its start-up heap for the garbage collector (see _app.py)
    # ... and registers itself in the store's deployments table (see _beacon.py); a packaged
    # model has no registry to register in
    store = store_factory()
    register = not getattr(store, "read_only", False)
    settings = dataclasses.replace(
        settings, extra={"gc_freeze": True, "register": register, **settings.extra}
    )
    try:
        check_binding(settings, store)
        settings = size_body_limit(settings, _check_models(settings, store))
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()
    _warn_about_hosts(settings)

    if settings.workers > 1:
        os.environ[SETTINGS_ENV] = settings_to_json(settings)
        options = uvicorn_options(settings)
        if options["http"] is not header_deadline_protocol():
            options["http"] = "auto"  # only the default deadline's class pickles into workers
        # each worker runs uvicorn's own server: there readiness turns off in the app's lifespan
        # shutdown, once the worker has stopped accepting
        uvicorn.run(
            "danlu.serve._server:app_factory", factory=True, workers=settings.workers, **options
        )
        return
    app = build_app(settings, store_factory)
    state = server_state(app)
    state.reports_startup_error = True  # raised below, so uvicorn need not log it
    server = make_server(app, settings)
    try:
        server.run()
    except SystemExit:  # uvicorn exits (status 3) when the app's start-up fails
        if state.startup_error is None:
            raise
    if state.startup_error is not None:  # no model could be loaded: which and why
        raise state.startup_error
    if not server.started:
        raise ConfigError("The server did not start; the log above says why.")
