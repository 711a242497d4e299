"""The journal's write lock (``FlockJournalLock``): holders exclude each other, across processes
and within one; a holder killed with ``kill -9`` leaves no stale lock (the next one gets it at
once, where Optuna's O_EXCL lock file made it wait 30 s); a release cut short by Ctrl-C does not
lock its own process out."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from danlu.tune._storage import FlockJournalLock


def _free(lock: FlockJournalLock) -> bool:
    """Whether nobody holds ``lock`` now (a non-blocking try on a descriptor of our own)."""
    fd = os.open(lock.path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # also drops the lock if we got it
    return True


def test_two_holders_in_one_process_take_turns(tmp_path: Path) -> None:
    first, second = (FlockJournalLock(str(tmp_path / "journal.log")) for _ in range(2))
    first.acquire()
    got = threading.Event()

    def take() -> None:
        second.acquire()
        got.set()

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    assert not got.wait(0.3)  # waits while the first holds it
    first.release()
    assert got.wait(30)
    thread.join(30)
    assert not _free(second)
    second.release()
    assert _free(second)


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.log")
    code = (
        "import sys, time\n"
        "from danlu.tune._storage import FlockJournalLock\n"
        f"FlockJournalLock({path!r}).acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        lock = FlockJournalLock(path)
        assert not _free(lock)
        holder.send_signal(signal.SIGKILL)  # never releases it
        holder.wait(timeout=30)
        assert _free(lock)  # the kernel dropped it with its process
        assert lock.acquire()
        lock.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=30)
        if holder.stdout is not None:
            holder.stdout.close()


def test_a_release_cut_short_does_not_lock_its_own_process_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C lands as the release begins (Python runs signal handlers between bytecodes, so
    at a call's entry), before the descriptor is closed: the lock stays held, and the object's
    next acquire closes that descriptor first instead of waiting on its own lock for ever."""
    lock = FlockJournalLock(str(tmp_path / "journal.log"))
    lock.acquire()

    def interrupted(self: FlockJournalLock) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(FlockJournalLock, "_close", interrupted)
        with pytest.raises(KeyboardInterrupt):
            lock.release()
    assert not _free(lock)  # still held
    done = threading.Event()
    thread = threading.Thread(target=lambda: (lock.acquire(), done.set()), daemon=True)
    thread.start()
    assert done.wait(30), "the process locked itself out"
    thread.join(30)
    lock.release()
    assert _free(lock)
