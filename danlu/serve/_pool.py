"""The models a server answers for: loading, routing (canaries), hot swap and alias watching.

A model is served under its registry name. Its reference (``digits@production``, ``wine:3`` or
``digits`` for the latest) is kept: :meth:`ModelPool.reload` resolves it again and, when the
version changed, loads the new version *beside* the old one, swaps the dict entry (one
assignment: a request routed before the swap finishes on the old version, one routed after goes
to the new) and then drains the old one. A version that fails to load leaves the old one serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from danlu.errors import ConfigError, NotFoundError, StoreError
from danlu.logging import get_logger
from danlu.serve._model import BatchHook, ServedModel
from danlu.serve._types import ServeSettings
from danlu.store import parse_model_ref

if TYPE_CHECKING:
    from danlu.store import ModelVersion, Store

__all__ = ["ModelPool"]

logger = get_logger(__name__)


class ModelPool:
    """Every model a server answers for, by name.

    Args:
        store_factory: builds the store (called once, in a worker thread).
        settings: the server's settings (models, canaries, batching, poll interval ...).
        on_batch: called after every micro-batch of every model: (model, rows, seconds).
        seed: seeds the canary draw.

    Example:
        >>> # pool = ModelPool(SqlStore, ServeSettings(models=("wine@production",)))
        >>> # await pool.start()
        >>> # await pool.route("wine").predict(x)
    """

    def __init__(
        self,
        store_factory: Callable[[], Store],
        settings: ServeSettings,
        *,
        on_batch: BatchHook | None = None,
        seed: int = 0,
    ) -> None:
        self.store_factory = store_factory
        self.settings = settings
        self.on_batch = on_batch
        self._store: Store | None = None
        self._refs: dict[str, str] = {}  # name → the reference it follows
        self._primary: dict[str, ServedModel] = {}
        self._canary: dict[str, ServedModel] = {}
        self._share: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._rng = random.Random(seed)
        self._watcher: asyncio.Task[None] | None = None
        self._expected = {parse_model_ref(r)[0] for r in settings.models}  # ready needs these
        self._started = False
        self._stopping = False

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every model and canary of the settings, then start the alias watcher."""
        for ref in self.settings.models:
            await self.load(ref)
        for canary in self.settings.canaries:
            await self._load_canary(canary.name, canary.ref, canary.share)
        self._started = True
        if self.settings.poll_seconds > 0 and self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch(), name="danlu-alias-watcher"
            )

    async def stop(self) -> None:
        """Stop watching, then drain and close every model (readiness turns false first)."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        models = [*self._primary.values(), *self._canary.values()]
        self._primary, self._canary = {}, {}
        await asyncio.gather(*(m.close() for m in models), return_exceptions=True)

    @property
    def ready(self) -> bool:
        """Every model of the settings is loaded and the pool is not stopping."""
        return (
            self._started
            and not self._stopping
            and all(name in self._primary for name in self._expected)
        )

    async def _get_store(self) -> Store:
        if self._store is None:
            self._store = await asyncio.to_thread(self.store_factory)
        return self._store

    async def _resolve(self, ref: str) -> ModelVersion:
        name, version, alias = parse_model_ref(ref)
        store = await self._get_store()
        return await asyncio.to_thread(store.get_model_version, name, version, alias=alias)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    # ---- routing ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The served model names."""
        return list(self._primary)

    def primary(self, name: str) -> ServedModel:
        """The main version served under ``name``.

        Raises:
            NotFoundError: no model of that name is served.
        """
        model = self._primary.get(name)
        if model is None:
            served = ", ".join(self._primary) or "none"
            raise NotFoundError(
                f"Model '{name}' is not served here; served models: {served}. Load it with "
                "POST /v1/admin/models or start the server with it."
            )
        return model

    def canary(self, name: str) -> ServedModel | None:
        """The canary version of ``name``, if it has one."""
        return self._canary.get(name)

    def route(self, name: str) -> ServedModel:
        """The version that answers the next request for ``name`` (a canary takes its share).

        Call it right before ``predict`` with no ``await`` between, so a swap cannot close the
        version picked in between.

        Raises:
            NotFoundError: no model of that name is served.
        """
        model = self.primary(name)
        canary = self._canary.get(name)
        if canary is not None and self._rng.random() < self._share[name]:
            return canary
        return model

    # ---- loading and swapping --------------------------------------------------------------

    async def load(self, ref: str) -> ServedModel:
        """Serve ``ref`` (``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS``) under its name.

        A name already served switches to ``ref`` through a hot swap (:meth:`reload`).

        Raises:
            ConfigError: ``ref`` is not a model reference.
            NotFoundError: no such model, version or alias.
            StoreError: the version fails to load.
        """
        name = parse_model_ref(ref)[0]
        async with self._lock(name):
            if name in self._primary:
                previous = self._refs[name]
                self._refs[name] = ref
                try:
                    return await self._swap(name)
                except BaseException:
                    self._refs[name] = previous
                    raise
            mv = await self._resolve(ref)
            model = await ServedModel.load(
                await self._get_store(), mv, self.settings, on_batch=self.on_batch
            )
            self._refs[name] = ref
            self._primary[name] = model
            logger.info("Serving %s as '%s' (%s runtime).", model.ref, ref, model.runtime_name)
            return model

    async def _load_canary(self, name: str, ref: str, share: float) -> ServedModel:
        if name not in self._primary:
            raise ConfigError(
                f"The canary for '{name}' needs '{name}' itself to be served; add it to the "
                "models to serve."
            )
        if not 0.0 <= share <= 1.0:
            raise ConfigError(
                f"The canary share of '{name}' must lie between 0 and 1 (0% and 100%); got {share}."
            )
        if ref.isdigit():
            ref = f"{name}:{ref}"
        if parse_model_ref(ref)[0] != name:
            raise ConfigError(
                f"The canary '{ref}' is a version of another model than '{name}'; write it as "
                f"{name}:VERSION=SHARE%."
            )
        mv = await self._resolve(ref)
        model = await ServedModel.load(
            await self._get_store(), mv, self.settings, on_batch=self.on_batch
        )
        old = self._canary.get(name)
        self._canary[name], self._share[name] = model, share
        if old is not None:
            await old.close()
        return model

    async def reload(self, name: str) -> ServedModel:
        """Resolve ``name``'s reference again; hot-swap to the version it now names.

        Raises:
            NotFoundError: ``name`` is not served, or its reference no longer resolves.
            StoreError: the new version fails to load (the old one keeps serving).
        """
        self.primary(name)  # NotFoundError for an unknown name
        async with self._lock(name):
            return await self._swap(name)

    async def _swap(self, name: str) -> ServedModel:
        """Load the version the name's reference names beside the old one, swap, drain the old."""
        old = self.primary(name)
        ref = self._refs[name]
        mv = await self._resolve(ref)
        if mv.version == old.version:
            return old
        try:
            new = await ServedModel.load(
                await self._get_store(), mv, self.settings, on_batch=self.on_batch
            )
        except Exception as exc:
            raise StoreError(
                f"Model '{name}': version {mv.version} (from '{ref}') failed to load, so "
                f"{old.ref} keeps serving. {exc}"
            ) from exc
        self._primary[name] = new  # the swap: one assignment, no await in between
        logger.info("Model '%s' now served by %s (was %s).", name, new.ref, old.ref)
        await old.close()  # its queued requests are answered first
        return new

    async def unload(self, name: str) -> None:
        """Stop serving ``name`` (and its canary) once their queued requests are answered.

        Raises:
            NotFoundError: ``name`` is not served.
        """
        self.primary(name)
        async with self._lock(name):
            models = [self._primary.pop(name)]
            canary = self._canary.pop(name, None)
            if canary is not None:
                models.append(canary)
            self._refs.pop(name, None)
            self._share.pop(name, None)
            self._expected.discard(name)
            await asyncio.gather(*(m.close() for m in models))

    # ---- the alias watcher -----------------------------------------------------------------

    async def check_aliases(self) -> list[str]:
        """Reload every model whose alias moved; the names reloaded (errors are logged)."""
        moved = []
        for name, ref in list(self._refs.items()):
            if parse_model_ref(ref)[2] is None or name not in self._primary:
                continue
            try:
                mv = await self._resolve(ref)
                if mv.version != self._primary[name].version:
                    await self.reload(name)
                    moved.append(name)
            except Exception as exc:
                logger.warning("Could not follow the alias of '%s' (%s): %s", name, ref, exc)
        return moved

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            try:
                await self.check_aliases()
            except Exception:  # never let the watcher die
                logger.exception("The alias watcher failed; it keeps watching.")
