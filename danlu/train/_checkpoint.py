"""Checkpoints as one safetensors file: tensors in the body, everything else as JSON in its header.

Nothing is pickled. Arbitrary state trees (optimizer and scheduler state dicts, callback state,
RNG states) are split into tensors and a JSON skeleton that points at them; tuples and dicts with
non-string keys are tagged so they come back exactly as they were saved. One file written
atomically means a killed process leaves the previous checkpoint intact; the temp file it leaves
beside it is removed when a run starts writing checkpoints there, or resumes from one.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from danlu.errors import StoreError
from danlu.store import remove_stale_temps
from danlu.store._crypt import read_bytes, write_bytes

__all__ = [
    "CheckpointWriter",
    "capture_rng",
    "checkpoint_from_bytes",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
]

_HEADER_KEY = "danlu_state"
_FORMAT = 1


def _encode(obj: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and "__tensor__" not in obj:
            return {k: _encode(v, tensors, f"{key}.{k}") for k, v in obj.items()}
        return {
            "__items__": [
                [k, _encode(v, tensors, f"{key}.{i}")] for i, (k, v) in enumerate(obj.items())
            ]
        }
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot checkpoint a value of type {type(obj).__name__} at '{key}'")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {k: _decode(v, tensors) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _snapshot(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], Any]:
    tensors: dict[str, torch.Tensor] = {}
    return tensors, _encode(state, tensors, "s")  # tensors are copied: training may go on


def _write(path: Path, tensors: dict[str, torch.Tensor], skeleton: Any) -> Path:
    header = json.dumps({"format": _FORMAT, "state": skeleton})
    return write_bytes(path, st_save(tensors, metadata={_HEADER_KEY: header}))


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (any tree of tensors, numbers, strings, lists, dicts, tuples) atomically."""
    return _write(path, *_snapshot(state))


class CheckpointWriter:
    """Saves checkpoints off the training thread.

    The state is copied at once (so the next batches cannot change it); serialising, writing and
    fsyncing happen on one background thread while training continues. At most one write is in
    flight: the next ``save`` (and ``wait``) first waits for the previous one and re-raises its
    error, so a failed write is never silent.
    """

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="danlu-checkpoint")
        self._pending: Any = None
        self._cleaned: set[Path] = set()

    def save(self, path: Path, state: dict[str, Any]) -> None:
        self.wait()
        folder = Path(path).parent
        if folder not in self._cleaned:  # once: what killed writers left here before this run
            self._cleaned.add(folder)
            remove_stale_temps(folder)
        self._pending = self._pool.submit(_write, path, *_snapshot(state))

    def wait(self) -> None:
        """Block until the last checkpoint is on disk; raise if writing it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (never unpickles).

    Resuming starts here, so the temp files of killed writers beside it are removed first.
    """
    remove_stale_temps(Path(path).parent)
    try:
        raw = read_bytes(path)
    except FileNotFoundError:
        raise StoreError(f"No checkpoint at '{path}'.") from None
    except OSError as exc:
        raise StoreError(f"'{path}' is not a readable danlu checkpoint ({exc}).") from exc
    return checkpoint_from_bytes(raw, path)


def checkpoint_from_bytes(raw: bytes, path: Path | str = "<bytes>") -> dict[str, Any]:
    """The state in a checkpoint file's bytes (a distributed run's rank 0 reads the file and
    every rank decodes what it sent); ``path`` names it in errors."""
    try:
        tensors = st_load(raw)
        # The header is the first 8 bytes (length) + JSON; safetensors exposes metadata via safe_open,
        # but parsing it here avoids a second read of the file.
        size = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + size])["__metadata__"][_HEADER_KEY]
        payload = json.loads(header)
    except (OSError, KeyError, ValueError, SafetensorError) as exc:
        raise StoreError(f"'{path}' is not a readable danlu checkpoint ({exc}).") from exc
    if payload.get("format") != _FORMAT:
        raise StoreError(
            f"'{path}' has checkpoint format {payload.get('format')}; this danlu reads {_FORMAT}."
        )
    return _decode(payload["state"], tensors)


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """Every random state the loop depends on: python, numpy, torch (CPU, CUDA), the shuffler."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "shuffle": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    generator.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
