"""Dynamic micro-batching: requests queue per model and run together, off the event loop.

One request of one row is mostly Python overhead; 32 rows cost the model little more than one.
:class:`MicroBatcher` holds a bounded queue of requests; one consumer task takes the first request,
gathers more until the batch holds ``max_batch_size`` rows or ``max_wait_ms`` have passed since
the first, runs the concatenated rows in a single worker thread (so the event loop stays free and
the model is never called concurrently) and hands each request its own slice of the outputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from danlu.logging import get_logger
from danlu.serve._types import QueueFull

__all__ = ["MicroBatcher"]

logger = get_logger(__name__)


@dataclass(slots=True)
class _Request:
    x: np.ndarray  # (n, d)
    future: asyncio.Future[np.ndarray]


class MicroBatcher:
    """Batch concurrent ``submit`` calls into calls of ``run_batch``.

    Args:
        run_batch: ``(rows, d) → (rows, out)``; called from one worker thread, never concurrently.
        max_batch_size: most rows per call (a larger request runs alone).
        max_wait_ms: how long the first request of a batch waits for company.
        max_queue: requests waiting before ``submit`` raises :class:`QueueFull`.
        name: the model's name, for errors and the worker thread's name.
        on_batch: called on the event loop after each batch with (rows, inference seconds).

    Example:
        >>> import asyncio, numpy as np
        >>> async def main():
        ...     batcher = MicroBatcher(lambda x: x * 2, max_batch_size=8, max_wait_ms=1)
        ...     batcher.start()
        ...     out = await asyncio.gather(*(batcher.submit(np.full((1, 2), i)) for i in range(3)))
        ...     await batcher.stop()
        ...     return [o.tolist() for o in out]
        >>> asyncio.run(main())
        [[[0, 0]], [[2, 2]], [[4, 4]]]
    """

    def __init__(
        self,
        run_batch: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int = 32,
        max_wait_ms: float = 2.0,
        max_queue: int = 1024,
        name: str = "model",
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(
                "MicroBatcher needs max_batch_size ≥ 1, max_queue ≥ 1 and max_wait_ms ≥ 0; got "
                f"{max_batch_size}, {max_queue} and {max_wait_ms}."
            )
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.name = name
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Request] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._running: list[_Request] = []  # the batch in the worker thread now
        self._carry: _Request | None = None  # taken from the queue, starts the next batch
        self._pending = 0  # requests queued or being answered
        self._stopped = False

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the consumer task (call from the event loop that will submit)."""
        if self._consumer is not None:
            return
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"danlu-{self.name}")
        self._consumer = asyncio.get_running_loop().create_task(
            self._consume(), name=f"danlu-batcher-{self.name}"
        )

    async def stop(self, drain: bool = True) -> None:
        """Stop; with ``drain`` every queued request is answered first, else they fail."""
        if self._stopped or self._queue is None or self._consumer is None:
            self._stopped = True
            return
        queue = self._queue
        if drain:
            # Requests may still arrive while draining (a caller that picked this model just
            # before a swap); keep serving until none is pending when we look.
            while self._pending > 0:
                await queue.join()
        self._stopped = True  # from here on, no await before the queue is emptied
        self._consumer.cancel()
        closed = RuntimeError(f"Model '{self.name}' was unloaded before answering.")
        left = [*self._running, *([self._carry] if self._carry else [])]
        while not queue.empty():
            left.append(queue.get_nowait())
        for request in left:
            if not request.future.done():
                request.future.set_exception(closed)
        with contextlib.suppress(asyncio.CancelledError):
            await self._consumer
        assert self._executor is not None
        self._executor.shutdown(wait=False, cancel_futures=True)

    def depth(self) -> int:
        """Requests waiting in the queue (not counting the batch running now)."""
        return 0 if self._queue is None else self._queue.qsize()

    # ---- requests ---------------------------------------------------------------------------

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """Queue ``x`` (n, d) and wait for its outputs (n, out).

        Raises:
            QueueFull: the queue holds ``max_queue`` requests, or the batcher has stopped.
            ValueError: ``x`` is not a non-empty 2-D array.
            Exception: whatever ``run_batch`` raised for the batch this request was in.
        """
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"submit needs a non-empty (rows, features) array; got {x.shape}.")
        if self._queue is None or self._stopped:
            raise QueueFull(self.name, retry_after=0.1)
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Request(x, future))
        except asyncio.QueueFull:
            raise QueueFull(self.name) from None
        self._pending += 1
        return await future

    # ---- the consumer ----------------------------------------------------------------------

    async def _consume(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            first = self._carry if self._carry is not None else await queue.get()
            self._carry = None
            if first.future.done():  # the client gave up (timeout) while it waited
                self._done(1)
                continue
            batch, rows, width = [first], len(first.x), first.x.shape[1]
            deadline = loop.time() + self.max_wait
            while rows < self.max_batch_size:
                try:
                    request = queue.get_nowait()
                except asyncio.QueueEmpty:
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        break
                    try:
                        request = await asyncio.wait_for(queue.get(), timeout)
                    except TimeoutError:
                        break
                if request.future.done():
                    self._done(1)
                    continue
                if rows + len(request.x) > self.max_batch_size or request.x.shape[1] != width:
                    self._carry = request  # it starts the next batch
                    break
                batch.append(request)
                rows += len(request.x)
            try:
                await self._run(batch, rows)
            finally:
                self._done(len(batch))

    def _done(self, n: int) -> None:
        """Mark ``n`` requests taken from the queue as answered."""
        assert self._queue is not None
        self._pending -= n
        for _ in range(n):
            self._queue.task_done()

    async def _run(self, batch: list[_Request], rows: int) -> None:
        """Run one batch in the worker thread; hand out outputs, or its error, to its requests."""
        x = batch[0].x if len(batch) == 1 else np.concatenate([r.x for r in batch])
        self._running = batch
        loop = asyncio.get_running_loop()
        try:
            out, seconds = await loop.run_in_executor(self._executor, _timed, self.run_batch, x)
            if len(out) != rows:
                raise RuntimeError(
                    f"Model '{self.name}' returned {len(out)} output rows for {rows} input rows."
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("A batch of %d rows of model '%s' failed: %s", rows, self.name, exc)
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        finally:
            self._running = []
        start = 0
        for request in batch:
            end = start + len(request.x)
            if not request.future.done():
                request.future.set_result(out[start:end])
            start = end
        if self.on_batch is not None:
            try:
                self.on_batch(rows, seconds)
            except Exception:  # a metrics hook must never stop the batcher
                logger.exception("on_batch hook of model '%s' failed", self.name)


def _timed(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> tuple[np.ndarray, float]:
    """``run(x)`` and the seconds it took (measured in the worker thread)."""
    start = time.perf_counter()
    out = run(x)
    return np.asarray(out), time.perf_counter() - start
