"""Atomic file writes: temp file in the same folder, fsync, rename, fsync the folder.

A process killed at any instant leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from danlu.errors import StoreError
from danlu.types import StrPath

__all__ = ["atomic_write_bytes", "atomic_write_text"]


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: StrPath, data: bytes, *, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically.

    Args:
        durable: fsync the file and its folder so the write survives a power cut, not only a
            killed process.

    Example:
        >>> import tempfile, pathlib
        >>> p = atomic_write_bytes(pathlib.Path(tempfile.mkdtemp()) / "a.bin", b"x")
        >>> p.read_bytes()
        b'x'
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise StoreError(f"Cannot write '{path}': {exc.strerror or exc}.") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise StoreError(f"Cannot write '{path}': {exc.strerror or exc}.") from exc
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


def atomic_write_text(path: StrPath, text: str, *, durable: bool = True) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"), durable=durable)
