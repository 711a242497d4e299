"""The server's entry in the store's deployments table, so the dashboard can find it.

At start-up ``danlu serve`` registers itself (its URL, host, port, pid and the model versions
it serves), then refreshes its heartbeat every :data:`HEARTBEAT_S` seconds with the models it
serves then (an admin may load, reload or unload some), and marks itself stopped on a clean
shutdown. All of it runs off the request path, in a task of its own whose store writes go to a
worker thread, through a store of its own. A failed write is logged and never stops serving:
the dashboard then shows the server as stale until a later heartbeat gets through.

The URL registered is where the dashboard reads ``/metrics``: ``$DANLU_SERVE_URL`` when set
(a server behind a proxy, or reached by a name), else ``http://HOST:PORT`` (``https://`` with
``--tls-cert``) of the address it listens on (for ``0.0.0.0`` or ``::``, the first ``--allowed-hosts`` name, else 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from danlu.errors import NotFoundError
from danlu.logging import get_logger
from danlu.serve._types import ModelPoolLike, ServeSettings

__all__ = ["HEARTBEAT_S", "URL_ENV", "DeploymentBeacon", "deployment_url", "served_models"]

log = get_logger(__name__)

HEARTBEAT_S = 10.0
URL_ENV = "DANLU_SERVE_URL"
PORT_WAIT_S = 60.0  # longest wait for uvicorn to bind an ephemeral port (--port 0)
STOP_WAIT_S = 5.0  # longest wait for the "stopped" write at shutdown


def deployment_url(settings: ServeSettings, port: int) -> str:
    """Where this server's ``/metrics`` answers, for the dashboard.

    Example:
        >>> deployment_url(ServeSettings(models=(), host="::1"), 8000)
        'http://[::1]:8000'
    """
    given = os.environ.get(URL_ENV)
    if given:
        return given.rstrip("/")
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        named = [h for h in settings.allowed_hosts if h and h != "*"]
        host = named[0] if named else "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{settings.scheme}://{host}:{port}"


def served_models(pool: ModelPoolLike) -> list[dict[str, Any]]:
    """Every primary and canary version the pool serves now: {name, version, ref, role}."""
    models = []
    for name in pool.names():
        try:
            primary = pool.primary(name)
            canary = pool.canary(name)
        except NotFoundError:  # unloaded meanwhile
            continue
        for served, role in ((primary, "primary"), (canary, "canary")):
            if served is not None:
                models.append(
                    {"name": name, "version": int(served.version), "ref": served.ref, "role": role}
                )
    return models


class DeploymentBeacon:
    """Registers the server, heartbeats, marks it stopped; never raises into the server.

    Args:
        pool: the served models (read at every heartbeat).
        settings: where the server listens.
        store_factory: opens a store of the beacon's own (closed when it stops).
        port: returns the bound port once uvicorn has one (``--port 0``), else None.
    """

    def __init__(
        self,
        pool: ModelPoolLike,
        settings: ServeSettings,
        store_factory: Callable[[], Any],
        port: Callable[[], int | None],
        every_s: float = HEARTBEAT_S,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.store_factory = store_factory
        self.port = port
        self.every_s = every_s
        self.id: str | None = None
        self._store: Any = None
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[None] | None = None  # the store write under way
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="danlu-deployment-beacon")

    async def stop(self) -> None:
        """Stop heartbeating and record a clean shutdown (bounded: STOP_WAIT_S)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        try:
            if self._inflight is not None and not self._inflight.done():
                # a write a thread is doing (a first registration, say) ends before "stopped"
                await asyncio.wait_for(asyncio.shield(self._inflight), STOP_WAIT_S)
        except Exception:  # noqa: BLE001, S110 - _beat logs its failures; stopping goes on
            pass
        try:
            if self.id is not None:
                await asyncio.wait_for(
                    asyncio.to_thread(self._store.stop_deployment, self.id), STOP_WAIT_S
                )
        except Exception as exc:  # noqa: BLE001 - shutdown goes on whatever the store says
            log.warning("Could not mark this server stopped in the deployments table: %s", exc)
        finally:
            store, self._store = self._store, None
            if store is not None and hasattr(store, "close"):
                await asyncio.to_thread(store.close)

    async def _run(self) -> None:
        port = await self._bound_port()
        if port is None:
            log.warning(
                "Not registering this server in the deployments table: its port is not known "
                "(--port 0 with --workers); the dashboard will not list it."
            )
            return
        url = deployment_url(self.settings, port)
        while True:
            await self._beat(url, port)
            await asyncio.sleep(self.every_s)

    async def _bound_port(self) -> int | None:
        if self.settings.port:
            return self.settings.port
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PORT_WAIT_S
        while loop.time() < deadline:
            port = self.port()
            if port:
                return port
            await asyncio.sleep(0.05)
        return None

    async def _beat(self, url: str, port: int) -> None:
        try:
            self._inflight = asyncio.ensure_future(asyncio.to_thread(self._write, url, port))
            await asyncio.shield(self._inflight)  # cancelling the task leaves the write to end
        except Exception as exc:  # noqa: BLE001 - a store that fails must not stop serving
            if not self._failing:
                log.warning(
                    "Could not write this server's row in the deployments table (%s); serving "
                    "goes on, and the dashboard shows it as stale until a write succeeds.",
                    exc,
                )
            self._failing = True
        else:
            if self._failing:
                log.info("The deployments table is written again.")
            self._failing = False

    def _write(self, url: str, port: int) -> None:
        """One heartbeat (in a worker thread); registers first, and again if the row is gone."""
        from danlu.store import host_name

        if self._store is None:
            self._store = self.store_factory()
        models = served_models(self.pool)
        if self.id is not None:
            try:
                self._store.heartbeat_deployment(self.id, models)
                return
            except NotFoundError:  # pruned while we ran: register anew
                self.id = None
        deployment = self._store.register_deployment(
            url=url, host=host_name(), port=port, pid=os.getpid(), models=models
        )
        self.id = deployment.id
        log.info("Registered in the deployments table as %s (%s).", deployment.id, url)
