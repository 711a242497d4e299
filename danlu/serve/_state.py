"""What the routes of one app share: the store (opened lazily), the pool, the metrics, the key
checks, and whether the server is draining."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from danlu.errors import DanluError
from danlu.serve._auth import Authenticator
from danlu.serve._metrics import ServeMetrics
from danlu.serve._types import ModelPoolLike, ServeSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["LazyStore", "ServerState", "server_state"]


class LazyStore:
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

    pool: ModelPoolLike
    settings: ServeSettings
    metrics: ServeMetrics
    auth: Authenticator
    store: LazyStore
    draining: bool = False
    startup_error: DanluError | None = None  # why the models could not be served
    reports_startup_error: bool = False  # serve() says why itself: uvicorn need not log it
    bound_port: int | None = None  # the port uvicorn listens on (set once it has bound it)

    def begin_drain(self) -> None:
        self.draining = True


def server_state(app: FastAPI) -> ServerState:
    """The app's :class:`ServerState` (``server_state(app).begin_drain()`` on SIGTERM)."""
    state: ServerState = app.state.danlu
    return state
