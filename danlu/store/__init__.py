"""Run tracking and artifacts. Today: a run folder per run; the store issue adds the database."""

from __future__ import annotations

from danlu.store._atomic import atomic_write_bytes, atomic_write_text
from danlu.store._tracker import (
    RunFolderTracker,
    Tracker,
    danlu_home,
    flatten_params,
    validate_name,
)

__all__ = [
    "RunFolderTracker",
    "Tracker",
    "atomic_write_bytes",
    "atomic_write_text",
    "danlu_home",
    "flatten_params",
    "validate_name",
]
