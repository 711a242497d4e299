"""Atomic writes and the clean-up of temp files that killed writers leave behind (issue 13)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from danlu.store import atomic_write_bytes, remove_stale_temps
from danlu.store._atomic import _host
from tests.store._writers import blocked_writer, kill


def _temps(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and _temps(tmp_path) == []


def test_temp_files_name_their_writer(tmp_path: Path) -> None:
    writer = blocked_writer(f"""
        from danlu.store import atomic_write_bytes
        atomic_write_bytes({str(tmp_path / "a.bin")!r}, b"x" * 1000)
    """)
    try:
        [temp] = _temps(tmp_path)
        assert re.fullmatch(rf"\.a\.bin\.{writer.pid}@{re.escape(_host())}\.\w+\.tmp", temp.name)
    finally:
        kill(writer)


def test_only_dead_writers_temps_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.safetensors"
    atomic_write_bytes(target, b"the good one")
    code = f"""
        from danlu.store import atomic_write_bytes
        atomic_write_bytes({str(target)!r}, b"half" * 10_000)
    """
    dead, live = blocked_writer(code), blocked_writer(code)
    kill(dead)
    try:
        foreign = tmp_path / f".checkpoint.safetensors.{dead.pid}@another-host.abc123de.tmp"
        legacy = tmp_path / ".checkpoint.safetensors.k2j4h5g6.tmp"  # writer unknown
        for other in (foreign, legacy):
            other.write_bytes(b"?")
        by_pid = {
            pid: next(tmp_path.glob(f".checkpoint.safetensors.{pid}@{_host()}.*.tmp"))
            for pid in (dead.pid, live.pid)
        }

        assert remove_stale_temps(tmp_path) == [by_pid[dead.pid]]
        assert not by_pid[dead.pid].exists()
        assert by_pid[live.pid].exists(), "a live writer's temp file was removed"
        assert foreign.exists() and legacy.exists()  # not provably dead: kept
        assert target.read_bytes() == b"the good one"
    finally:
        kill(live)
    assert remove_stale_temps(tmp_path) == [by_pid[live.pid]]  # dead now


def test_a_reused_pid_does_not_keep_an_older_temp_alive(tmp_path: Path) -> None:
    """The pid in the name is alive but belongs to a process started after the file was last
    written (here: this test's own process), so the writer is gone: a container restarted
    gives its processes the same pids."""
    mine = tmp_path / f".a.bin.{os.getpid()}@{_host()}.abcdefgh.tmp"
    old = tmp_path / f".b.bin.{os.getpid()}@{_host()}.abcdefgh.tmp"
    mine.write_bytes(b"being written")
    old.write_bytes(b"left by a writer that had this pid before")
    long_ago = time.time() - 10 * 365 * 86400
    os.utime(old, (long_ago, long_ago))
    assert remove_stale_temps(tmp_path) == [old]
    assert mine.exists()


def test_missing_folder_is_nothing_to_clean(tmp_path: Path) -> None:
    assert remove_stale_temps(tmp_path / "missing") == []
