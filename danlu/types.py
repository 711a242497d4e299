"""Type aliases shared across danlu's layers."""

from __future__ import annotations

from os import PathLike
from typing import Any, TypeAlias

__all__ = ["JSONDict", "Metrics", "StrPath"]

StrPath: TypeAlias = str | PathLike[str]
JSONDict: TypeAlias = dict[str, Any]
Metrics: TypeAlias = dict[str, float]
