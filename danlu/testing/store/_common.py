"""What the parts of the store conformance suite share: the ``open_store`` factory's type, a
few registered versions, and small helpers."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from danlu.store import Run, Store

OpenStore = Callable[..., Store]


def ids(runs: list[Run]) -> list[str]:
    return [r.id for r in runs]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def register_versions(store: Store, name: str = "digits", n: int = 1, **kw: Any) -> list[int]:
    """Register ``n`` versions of ``name`` (weights ``weights-<i>``, a card); their numbers."""
    versions = []
    for i in range(n):
        version = store.create_model_version(
            name,
            run_id=kw.get("run_id"),
            files={"model.safetensors": f"weights-{i}".encode(), "card/README.md": b"card"},
            signature={"inputs": [{"name": "x", "shape": [-1, 64]}]},
            metrics={"accuracy": 0.9 + i / 100},
            tags={"i": str(i)},
            actor=kw.get("actor", "danlu"),
        )
        versions.append(version.version)
    return versions
