"""A writer process caught in the middle of an atomic write, for the temp-file clean-up tests.

``blocked_writer(code)`` runs ``code`` in a fresh interpreter whose ``os.fsync`` never returns: the
temp file is written and still waiting to be renamed, as in a checkpoint write that a SIGKILL
interrupts. Kill the process to make it a dead writer; leave it running to have a live one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

_PRELUDE = textwrap.dedent(
    """
    import os, sys, time

    def _stuck(fd):
        print("ready", flush=True)
        time.sleep(600)

    os.fsync = _stuck
    """
)


def blocked_writer(code: str) -> subprocess.Popen[str]:
    """Start ``code`` and return once it is stuck inside its first fsync."""
    child = subprocess.Popen(
        [sys.executable, "-c", _PRELUDE + textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if line.strip() != "ready":
        child.kill()
        raise AssertionError(f"the writer did not reach fsync (said {line!r})")
    return child


def kill(child: subprocess.Popen[str]) -> None:
    """SIGKILL, as the attack did: no clean-up code runs."""
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    if child.stdout is not None:
        child.stdout.close()
