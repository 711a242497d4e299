"""A generic name → builder registry.

One registry per kind of component (models, tasks, ...). A component registers once, by name,
together with the pydantic spec that validates its options. Users plug in their own components by
import path: ``model: {type: mypkg.models:build}``.

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
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from danlu.errors import NotFoundError

__all__ = ["Entry", "Registry", "closest", "did_you_mean", "import_object", "import_optional"]

T = TypeVar("T", bound=Callable[..., Any])

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


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

    def get(self, name: str) -> Entry[T]:
        """Look up ``name``; an import path ``pkg.module:fn`` loads a user builder.

        A user builder may carry its options' pydantic class as a ``spec`` attribute.

        Raises:
            NotFoundError: naming the valid choices and the nearest match.
        """
        if name in self._entries:
            return self._entries[name]
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
