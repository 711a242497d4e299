"""Atomic file writes: temp file in the same folder, fsync, rename, fsync the folder.

A process killed at any instant leaves either the old file or the new one, never half of one --
and its temp file. Temp files are named after their writer, ``.NAME.PID@HOST.RANDOM.tmp``, so
:func:`remove_stale_temps` can tell the leftovers of dead writers (removed) from the files live
writers are still writing (kept).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import tempfile
from collections.abc import Iterable
from pathlib import Path

from danlu.errors import StoreError
from danlu.logging import get_logger
from danlu.types import StrPath

__all__ = [
    "atomic_write_bytes",
    "atomic_write_chunks",
    "atomic_write_text",
    "remove_stale_temps",
]

log = get_logger(__name__)

# .NAME.PID@HOST.RANDOM.tmp -- RANDOM is tempfile's (letters, digits, "_")
_TEMP = re.compile(r"^\..+\.(?P<pid>[0-9]{1,10})@(?P<host>[A-Za-z0-9-]{1,63})\.\w+\.tmp$")
_CLOCK_SLACK_S = 2.0  # /proc start times are whole seconds (boot time) plus clock ticks


@functools.cache
def _host() -> str:
    """This machine's name as it appears in temp file names (letters, digits and '-')."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "localhost"


def _temp_prefix(path: Path) -> str:
    # the name is shortened so that the writer's pid and host still fit in a file name
    return f".{path.name[:100]}.{os.getpid()}@{_host()}."


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
    return atomic_write_chunks(path, (data,), durable=durable)


def atomic_write_chunks(path: StrPath, chunks: Iterable[bytes], *, durable: bool = True) -> Path:
    """Write the ``chunks`` one after the other to ``path`` atomically.

    The chunks may be produced lazily (an encrypting writer yields one chunk at a time), so a
    large file is never held twice in memory. An exception raised while producing them leaves
    the old file, if any, as it was.

    Example:
        >>> import tempfile, pathlib
        >>> p = atomic_write_chunks(pathlib.Path(tempfile.mkdtemp()) / "a.bin", [b"x", b"y"])
        >>> p.read_bytes()
        b'xy'
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise StoreError(f"Cannot write '{path}': {exc.strerror or exc}.") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, StoreError):
            raise StoreError(f"Cannot write '{path}': {exc.strerror or exc}.") from exc
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


def atomic_write_text(path: StrPath, text: str, *, durable: bool = True) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def _started_at(pid: int) -> float | None:
    """When process ``pid`` started (Unix time, from /proc), or None where that is unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        ticks = float(stat.rsplit(")", 1)[1].split()[19])  # field 22: start time, in ticks
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _writer_is_dead(pid: int, written_at: float) -> bool:
    """True only when the process that wrote a temp file at ``written_at`` surely ended.

    Unknown means alive: a temp file is removed only when its writer is known to be gone.
    """
    if os.name != "posix" or pid <= 0:
        return False  # os.kill(pid, 0) is no probe on Windows; pid 0 is a process group
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, OSError):
        return False  # alive under another user, or not a pid we can ask about
    started = _started_at(pid)  # alive: the same process, or a later one given the same pid
    return started is not None and started > written_at + _CLOCK_SLACK_S


def remove_stale_temps(folder: StrPath) -> list[Path]:
    """Remove the temp files that writers on this machine left in ``folder`` when they died.

    A temp file is removed only when its name says this host wrote it and its writer process has
    ended (or its pid now belongs to a process started after the file was written). Temp files
    of live writers, of other machines (a shared store) and of unknown writers are kept.
    Returns the removed paths.

    Example:
        >>> import tempfile
        >>> remove_stale_temps(tempfile.mkdtemp())
        []
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed  # no folder: nothing was left behind
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None or match["host"] != _host():
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            written_at = entry.stat(follow_symlinks=False).st_mtime
            if _writer_is_dead(int(match["pid"]), written_at):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except FileNotFoundError:
            continue  # its writer renamed or removed it meanwhile
        except OSError as exc:
            log.warning("cannot remove the stale temp file %s: %s", entry.path, exc)
    if removed:
        log.info("removed %d temp file(s) of dead writers in %s", len(removed), folder)
    return removed
