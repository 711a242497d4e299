"""The exact packages a packaged server installs: the closure of what serving needs, pinned to the
versions installed here (the versions the model was checked with).

The closure is read from the installed distributions' metadata (``importlib.metadata``), with
environment markers evaluated for this interpreter, so the lock fits an image whose Python has
this minor version on Linux. danlu itself is not in the lock: it is installed from its own wheel
without dependencies, so nothing beyond the lock (torch, optuna, ... for training) comes along.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass

from danlu.errors import ConfigError

__all__ = [
    "CPU_TORCH_INDEX",
    "SERVER_EXTRAS",
    "Pin",
    "lock_text",
    "locked_packages",
]

#: uvicorn's fast event loop and HTTP parser, which ``danlu serve`` uses when they are installed
#: (what serving itself needs: :func:`danlu.serve.serving_requirements`)
SERVER_EXTRAS = ("httptools", "uvloop")
#: Where pip finds the CPU build of torch (PyPI's is the CUDA build, several GB).
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
_SKIP = {"danlu", "pip", "setuptools", "wheel"}


@dataclass(frozen=True, order=True)
class Pin:
    """One locked distribution: its canonical name and exact version."""

    name: str
    version: str

    @property
    def line(self) -> str:
        return f"{self.name}=={self.version}"


def _canonical(name: str) -> str:
    from packaging.utils import canonicalize_name

    return str(canonicalize_name(name))


def locked_packages(roots: Iterable[str]) -> list[Pin]:
    """Every distribution ``roots`` need, transitively, at the version installed here.

    Args:
        roots: requirement strings (``"uvicorn"``, ``"fastapi[standard]"``).

    Raises:
        ConfigError: a needed distribution is not installed here (the lock pins what is
            installed, so install it first), naming it and who needs it.

    Example:
        >>> pins = locked_packages(["typer"])
        >>> "typer" in {p.name for p in pins} and "click" in {p.name for p in pins}
        True
    """
    from importlib import metadata

    from packaging.requirements import InvalidRequirement, Requirement

    seen: dict[str, tuple[Pin, frozenset[str]]] = {}
    todo: list[tuple[Requirement, str]] = [(Requirement(r), "danlu's server") for r in roots]
    while todo:
        req, needed_by = todo.pop()
        name = _canonical(req.name)
        if name in _SKIP:
            continue
        extras = frozenset(req.extras)
        if name in seen and extras <= seen[name][1]:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise ConfigError(
                f"{req.name} (needed by {needed_by}) is not installed here, so its version cannot "
                f"be locked. Install it (pip install '{req}') and package again."
            ) from None
        pin = Pin(_canonical(dist.metadata["Name"]), dist.version)
        extras = extras | (seen[name][1] if name in seen else frozenset())
        seen[name] = (pin, extras)
        for text in dist.requires or ():
            try:
                child = Requirement(text)
            except InvalidRequirement:
                continue
            marker = child.marker
            if marker is not None and not any(
                marker.evaluate({"extra": extra}) for extra in (extras or {""})
            ):
                continue
            todo.append((child, pin.name))
    return sorted(pin for pin, _ in seen.values())


def lock_text(pins: Iterable[Pin], *, torch: bool = False, cuda: bool = False) -> str:
    """``requirements.lock``: a header, then one ``name==version`` per line.

    With ``torch`` (a version served by the torch runtime) torch is pinned at the version
    installed here, as the CPU build from PyTorch's index unless ``cuda``.

    Example:
        >>> print(lock_text([Pin("numpy", "2.1.0")]).splitlines()[-1])
        numpy==2.1.0
    """
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    lines = [
        "# The exact packages of this packaged server (danlu package), pinned to the versions",
        f"# the model was checked with; for CPython {python} on Linux. Installed with --no-deps:",
        "# nothing outside this list is installed.",
    ]
    pins = sorted(pins)
    if torch and not cuda:
        lines.append(f"--extra-index-url {CPU_TORCH_INDEX}")
    for pin in pins:
        if pin.name == "torch":
            base = pin.version.split("+", 1)[0]
            lines.append(f"torch=={base}" if cuda else f"torch=={base}+cpu")
        else:
            lines.append(pin.line)
    return "\n".join(lines) + "\n"
