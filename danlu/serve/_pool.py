"""The models a server answers for: loading, routing (canaries), hot swap and alias watching.

A model is served under its registry name, or under a name of its own given as ``NAME=MODEL``
(``digits-tuned=digits@tuned``), so two versions of one model can be served side by side. Its
reference (``digits@production``, ``wine:3`` or ``digits`` for the latest) is kept:
:meth:`ModelPool.reload` resolves it again and, when the version changed, loads the new version
*beside* the old one, swaps the dict entry (one assignment: a request routed before the swap
finishes on the old version, one routed after goes to the new) and then drains the old one. A
version that fails to load leaves the old one serving; at start-up, a model that fails to load is
listed in :attr:`ModelPool.failed` and the others serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from danlu.errors import ConfigError, NotFoundError
from danlu.logging import get_logger
from danlu.serve._model import ServedModel
from danlu.serve._types import BatchHook, ModelLoadError, ServeSettings
from danlu.store import parse_model_ref

if TYPE_CHECKING:
    from danlu.store import ModelVersion, Store

__all__ = ["ModelPool", "served_models"]

logger = get_logger(__name__)

_SERVED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # as the registry's model names


def served_models(specs: Iterable[str]) -> list[tuple[str, str]]:
    """``MODEL`` or ``NAME=MODEL`` → (the name it is served under, the model reference).

    Raises:
        ConfigError: a name that is not a valid model name, or two models under one name.

    Example:
        >>> served_models(["digits@staging", "digits-tuned=digits@tuned"])
        [('digits', 'digits@staging'), ('digits-tuned', 'digits@tuned')]
    """
    served: dict[str, str] = {}
    for spec in specs:
        name, sep, ref = spec.partition("=")
        if not sep:
            name, ref = parse_model_ref(spec)[0], spec
        elif not _SERVED_NAME.match(name):
            raise ConfigError(
                f"{spec!r}: {name[:100]!r} is not a name to serve a model under; use letters, "
                "digits, '.', '_' and '-', starting with a letter or digit (NAME=MODEL)."
            )
        else:
            parse_model_ref(ref)  # ConfigError for a malformed reference
        if name in served:
            raise ConfigError(
                f"{served[name]!r} and {ref!r} would both be served as '{name}'. Give the second a "
                f"name of its own with NAME=MODEL, e.g. danlu serve {served[name]} "
                f"{name}-2={ref}; it then answers at /v1/models/{name}-2/predict."
            )
        served[name] = ref
    return list(served.items())


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
        self._specs = served_models(settings.models)
        self._expected = {name for name, _ in self._specs}  # ready needs these
        self._started = False
        self._stopping = False
        # models of the settings that failed to load at start-up: {"name", "ref", "error"}
        self.failed: list[dict[str, str]] = []

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every model and canary of the settings, then start the alias watcher.

        A model or canary that fails to load is logged and listed in :attr:`failed`; the others
        serve.

        Raises:
            ModelLoadError: no model of the settings could be loaded.
        """
        for name, ref in self._specs:
            try:
                await self.load(ref, name=name)
            except (ModelLoadError, NotFoundError) as exc:
                self._fail(name, ref, exc)
        if self._specs and not self._primary:
            reasons = [f["error"] for f in self.failed]
            if len(reasons) == 1:
                raise ModelLoadError(reasons[0])
            raise ModelLoadError("None of the models could be loaded. " + " ".join(reasons))
        for failed in self.failed:
            logger.error(
                "%s The others serve; GET /v1/models lists '%s' as failed.",
                failed["error"],
                failed["name"],
            )
        for canary in self.settings.canaries:
            if canary.name not in self._primary and canary.name in self._failed_names():
                continue  # its model failed: already said
            try:
                await self._load_canary(canary.name, canary.ref, canary.share)
            except (ModelLoadError, NotFoundError) as exc:
                self._fail(canary.name, canary.ref, exc, canary=True)
                logger.error("%s '%s' serves without its canary.", exc, canary.name)
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

    def _fail(self, name: str, ref: str, exc: Exception, *, canary: bool = False) -> None:
        role = "canary" if canary else "model"
        error = str(exc) if isinstance(exc, ModelLoadError) else f"Model '{name}' ({ref}): {exc}"
        self.failed.append({"name": name, "ref": ref, "role": role, "error": error})
        if not canary:
            self._expected.discard(name)

    def _failed_names(self) -> set[str]:
        return {f["name"] for f in self.failed}

    async def _get_store(self) -> Store:
        if self._store is None:
            self._store = await asyncio.to_thread(self.store_factory)
        return self._store

    async def _resolve(self, ref: str) -> ModelVersion:
        store = await self._get_store()
        return await asyncio.to_thread(store.resolve, ref)

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
            failed = next((f for f in self.failed if f["name"] == name), None)
            if failed is not None and failed["role"] == "model":
                raise NotFoundError(
                    f"Model '{name}' is not served: it failed to load at start-up. "
                    f"{failed['error']} Load a version that works with POST /v1/admin/models."
                )
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

    async def load(self, ref: str, name: str | None = None) -> ServedModel:
        """Serve ``ref`` (``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS``) under ``name`` (by
        default the model's registry name).

        A name already served switches to ``ref`` through a hot swap (:meth:`reload`).

        Raises:
            ConfigError: ``ref`` is not a model reference, or ``name`` not a valid name.
            NotFoundError: no such model, version or alias.
            ModelLoadError: the version fails to load (a ``StoreError``).
        """
        name = served_models([f"{name}={ref}" if name else ref])[0][0]
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
            model = await self._load_version(name, ref, mv)
            self._refs[name] = ref
            self._primary[name] = model
            self.failed = [f for f in self.failed if f["name"] != name or f["role"] != "model"]
            self._expected.add(name)
            logger.info(
                "Serving %s as '%s' (%s, %s runtime).", model.ref, name, ref, model.runtime_name
            )
            return model

    async def _load_version(
        self, name: str, ref: str, mv: ModelVersion, keeps: str | None = None
    ) -> ServedModel:
        """Load ``mv`` to serve under ``name``; any failure is a ModelLoadError saying which
        model, which version and why (and what ``keeps`` serving, if anything)."""
        store = await self._get_store()
        try:
            model = await ServedModel.load(store, mv, self.settings, on_batch=self.on_batch)
        except Exception as exc:
            still = f", so {keeps} keeps serving" if keeps else ""
            raise ModelLoadError(
                f"Model '{name}': version {mv.version} (from '{ref}') failed to load{still}: {exc}"
            ) from exc
        model.name = name  # metrics and logs use the name it is served under
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
        registry_name = parse_model_ref(self._refs[name])[0]  # NAME=MODEL: MODEL's name
        if ref.isdigit():
            ref = f"{registry_name}:{ref}"
        if parse_model_ref(ref)[0] != registry_name:
            raise ConfigError(
                f"The canary '{ref}' is a version of another model than '{registry_name}' "
                f"(served as '{name}'); write it as {name}:VERSION=SHARE%."
            )
        mv = await self._resolve(ref)
        model = await self._load_version(name, ref, mv)
        old = self._canary.get(name)
        self._canary[name], self._share[name] = model, share
        if old is not None:
            await old.close()
        return model

    async def reload(self, name: str) -> ServedModel:
        """Resolve ``name``'s reference again; hot-swap to the version it now names.

        Raises:
            NotFoundError: ``name`` is not served, or its reference no longer resolves.
            ModelLoadError: the new version fails to load (the old one keeps serving).
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
        new = await self._load_version(name, ref, mv, keeps=old.ref)
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
