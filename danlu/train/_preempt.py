"""Graceful preemption: SIGTERM stops a run at the next safe point, with a checkpoint, exit 75.

A scheduler (danlu's job queue, Slurm, Kubernetes) asks a process to give its slot back with
SIGTERM. Inside :func:`preemptible` (the :class:`~danlu.train.Runner` wraps every run in it, the
``danlu run`` command its whole work) SIGTERM raises :class:`~danlu.errors.Preempted` at once,
so preparing data or evaluating simply stops (before the run opens nothing is recorded; after,
the run is marked ``interrupted``). Inside :func:`safe_points` (the training loop) it only sets
a flag: the loop finishes the current batch, writes a checkpoint that holds its position inside
the epoch, and raises ``Preempted`` itself (:func:`stop_requested` is its per-batch check). A
second SIGTERM raises at once wherever it lands; SIGINT keeps Python's own handling
(``KeyboardInterrupt``).

Signal handlers belong to the main thread: elsewhere (a tuning trial on a thread) both context
managers do nothing, and ``safe_points`` does nothing outside ``preemptible`` either. The handler
that was there before is put back when the outermost ``preemptible`` block ends.

Example:
    >>> with preemptible():
    ...     with safe_points():
    ...         for batch in range(3):
    ...             if stop_requested():  # checkpoint, then raise Preempted
    ...                 break
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from danlu.errors import Preempted
from danlu.logging import get_logger

__all__ = ["preemptible", "safe_points", "stop_requested"]

log = get_logger(__name__)


class _State:
    depth = 0  # nested preemptible() blocks (main thread only)
    safe = 0  # nested safe_points() blocks: SIGTERM is deferred to the loop's next check
    requested = False  # SIGTERM came inside safe points; the loop has not stopped yet
    previous: Any = None  # the SIGTERM handler before the outermost block


_STATE = _State()


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if _STATE.safe and not _STATE.requested:
        _STATE.requested = True
        log.warning("SIGTERM: stopping after the current batch, with a checkpoint")
        return
    _STATE.requested = False  # the raise below answers it
    raise Preempted("The run was preempted (SIGTERM).")


def stop_requested() -> bool:
    """True once SIGTERM came inside :func:`safe_points`: checkpoint and raise ``Preempted``."""
    return _STATE.requested


@contextlib.contextmanager
def preemptible() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`~danlu.errors.Preempted` (nested blocks share
    one handler; the previous handler is restored when the outermost block ends)."""
    if not _in_main_thread():
        yield
        return
    if _STATE.depth == 0:
        _STATE.requested = False
        _STATE.previous = signal.signal(signal.SIGTERM, _on_sigterm)
    _STATE.depth += 1
    try:
        yield
    finally:
        _STATE.depth -= 1
        if _STATE.depth == 0:
            signal.signal(signal.SIGTERM, _STATE.previous)
            _STATE.previous = None
            _STATE.requested = False


@contextlib.contextmanager
def safe_points() -> Iterator[None]:
    """Within the block SIGTERM only sets :func:`stop_requested`; the caller checks it at its
    safe points (after each batch) and stops there. A request still pending when the block
    ends without an error (the signal came after the last check) raises ``Preempted`` then.

    Only inside :func:`preemptible`: elsewhere (a bare ``Trainer.fit``, a tuning trial) SIGTERM
    keeps whatever handling the process gave it.
    """
    if not _in_main_thread() or _STATE.depth == 0:
        yield
        return
    _STATE.safe += 1
    try:
        yield
    except BaseException:  # the loop's own Preempted (or any error): the request is answered
        _STATE.safe -= 1
        _STATE.requested = _STATE.requested and _STATE.safe > 0
        raise
    _STATE.safe -= 1
    if _STATE.safe == 0 and _STATE.requested:
        _STATE.requested = False
        raise Preempted("The run was preempted (SIGTERM) after its training ended.")
