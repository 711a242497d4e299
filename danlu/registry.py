"""A generic name → builder registry.

One registry per kind of component (models, tasks, ...). A component registers once, by name,
together with the pydantic spec that validates its options. Users plug in their own components by
import path: ``model: {type: mypkg.models:build}``.

An import path is code to run, so where the name comes from matters. A recipe is written by the
user who runs it: its import paths are imported as they are. A name read out of a stored artifact
(a registered model's ``model.json``) is data anyone with write access to the store could have
changed: :meth:`Registry.get` with ``trusted=False`` imports it only when the operator allow-lists
its module in ``DANLU_ALLOWED_BUILDERS`` (comma-separated module prefixes), and refuses it before
importing anything otherwise.

Example:
    >>> models = Registry("model")
    >>> @models.register("tiny")
    ... def build_tiny(spec, schema, task):
    ...     return "a model"
    >>> models.get("tiny").name
    'tiny'
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from danlu.errors import NotFoundError

__all__ = [
    "ALLOWED_BUILDERS_ENV",
    "Entry",
    "Registry",
    "allowed_builder_modules",
    "closest",
    "did_you_mean",
    "import_object",
    "import_optional",
    "is_allowed_import",
]

T = TypeVar("T", bound=Callable[..., Any])

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_MODULE_PREFIX = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")

ALLOWED_BUILDERS_ENV = "DANLU_ALLOWED_BUILDERS"


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component: its name, its builder and the spec class of its options."""

    name: str
    builder: T
    spec: Any = None  # a pydantic model class validating the options, when the builder has one


def closest(name: str, choices: list[str] | tuple[str, ...]) -> str | None:
    """The nearest valid name to ``name``, or None when nothing is close."""
    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """A " Did you mean 'x'?" suffix, or "" when nothing is close."""
    match = closest(name, choices)
    return f" Did you mean '{match}'?" if match else ""


def import_object(path: str, what: str = "object") -> Any:
    """Import ``pkg.module:name`` and return the object.

    Raises:
        NotFoundError: the path is malformed, the module cannot be imported, or it lacks the name.
    """
    if not _IMPORT_PATH.match(path):
        raise NotFoundError(
            f"'{path}' is not a valid import path for a {what}; use 'package.module:name'."
        )
    module_name, attr = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise NotFoundError(
            f"Cannot import module '{module_name}' for {what} '{path}': {exc}. "
            "Check that the package is installed and on PYTHONPATH."
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise NotFoundError(
            f"Module '{module_name}' has no attribute '{attr}' ({what} '{path}')."
        ) from None


def allowed_builder_modules() -> tuple[str, ...]:
    """The module prefixes of ``$DANLU_ALLOWED_BUILDERS`` (``mypkg.models,other.pkg``).

    Raises:
        NotFoundError: an entry is not a dotted module name (a typo would otherwise allow nothing,
            or more than meant, without a word).
    """
    raw = os.environ.get(ALLOWED_BUILDERS_ENV, "")
    prefixes = tuple(p.strip() for p in raw.split(",") if p.strip())
    bad = [p for p in prefixes if not _MODULE_PREFIX.match(p)]
    if bad:
        raise NotFoundError(
            f"{ALLOWED_BUILDERS_ENV} holds {', '.join(map(repr, bad))}, which is not a module "
            "name; give dotted module prefixes separated by commas, e.g. "
            f"{ALLOWED_BUILDERS_ENV}=mypkg.models,other.pkg."
        )
    return prefixes


def is_allowed_import(path: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``pkg.mod:fn`` lies in a module equal to, or under, one of ``prefixes``.

    Example:
        >>> is_allowed_import("mypkg.models.cnn:build", ("mypkg.models",))
        True
        >>> is_allowed_import("mypkg.modelsx:build", ("mypkg.models",))
        False
    """
    module = path.partition(":")[0]
    return any(module == p or module.startswith(p + ".") for p in prefixes)


class Registry(Generic[T]):
    """Maps names to builders for one kind of component."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, spec: Any = None) -> Callable[[T], T]:
        """Decorator registering ``builder`` under ``name`` (once: a second registration fails)."""

        def decorator(builder: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = Entry(name, builder, spec)
            return builder

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[n] for n in self.names())

    def get(self, name: str, *, trusted: bool = True) -> Entry[T]:
        """Look up ``name``; an import path ``pkg.module:fn`` loads a user builder.

        A user builder may carry its options' pydantic class as a ``spec`` attribute.

        Args:
            trusted: False when ``name`` was read from a stored artifact rather than written by
                the user running danlu: an import path is then imported only when its module is
                allow-listed in ``$DANLU_ALLOWED_BUILDERS``, and refused before any import
                otherwise.

        Raises:
            NotFoundError: naming the valid choices and the nearest match, or the allow-list to
                set for an untrusted import path.
        """
        if name in self._entries:
            return self._entries[name]
        if ":" in name and not trusted:
            self._check_allowed(name)
        if ":" in name:
            builder = import_object(name, what=self.kind)
            if not callable(builder):
                raise NotFoundError(f"{self.kind} '{name}' is not callable.")
            return Entry(name, builder, getattr(builder, "spec", None))
        raise NotFoundError(
            f"Unknown {self.kind} '{name}'.{did_you_mean(name, self.names())} "
            f"Valid {self.kind}s: {', '.join(self.names())}; "
            "or give your own as 'package.module:function'."
        )

    def _check_allowed(self, name: str) -> None:
        """Refuse an import path read from an artifact unless the operator allow-lists it."""
        if not _IMPORT_PATH.match(name):
            raise NotFoundError(
                f"Unknown {self.kind} {name!r}: it is neither a built-in {self.kind} "
                f"({', '.join(self.names())}) nor a 'package.module:function' path."
            )
        if is_allowed_import(name, allowed_builder_modules()):
            return
        module = name.partition(":")[0]
        raise NotFoundError(
            f"Refusing {self.kind} {name!r} read from a stored artifact: danlu loads a stored "
            f"{self.kind} only from its built-in {self.kind}s ({', '.join(self.names())}) or "
            f"from modules the operator allow-lists, and '{module}' is not allow-listed. If you "
            f"trust this code, set {ALLOWED_BUILDERS_ENV}={module} (comma-separated module "
            "prefixes) and load it again."
        )


def import_optional(module: str, extra: str) -> Any:
    """Import an optional dependency, or raise an error that says which extra installs it.

    Example:
        >>> import_optional("json", extra="core").__name__
        'json'
    """
    from danlu.errors import MissingExtraError

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != module.split(".")[0]:
            raise  # the package is there but one of *its* imports failed: show the real error
        raise MissingExtraError.for_package(module.split(".")[0], extra) from None
