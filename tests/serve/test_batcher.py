"""The micro-batcher: batching, ordering, failures, backpressure, cancellation and draining."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from danlu.serve._batcher import MicroBatcher
from danlu.serve._types import QueueFull


def _rows(i: int, n: int = 1, d: int = 3) -> np.ndarray:
    """``n`` rows that say who sent them: request ``i``, row ``r`` holds ``i * 100 + r``."""
    return np.repeat((i * 100 + np.arange(n, dtype=np.float32))[:, None], d, axis=1)


class Recorder:
    """A run_batch that doubles its input and records each batch's size and thread."""

    def __init__(self, fail_when: float | None = None) -> None:
        self.sizes: list[int] = []
        self.threads: set[int] = set()
        self.fail_when = fail_when
        self.active = 0
        self.overlapped = False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.active += 1
        self.overlapped |= self.active > 1
        self.sizes.append(len(x))
        self.threads.add(threading.get_ident())
        try:
            if self.fail_when is not None and (x == self.fail_when).any():
                raise ValueError("poisoned batch")
            return x[:, :1] * 2  # (n, 1): each row's identity, doubled
        finally:
            self.active -= 1


def test_concurrent_requests_get_their_own_rows_in_order() -> None:
    record = Recorder()
    batches: list[tuple[int, float]] = []

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(
            record,
            max_batch_size=16,
            max_wait_ms=5,
            name="m",
            on_batch=lambda r, s: batches.append((r, s)),
        )
        batcher.start()
        out = await asyncio.gather(*(batcher.submit(_rows(i, 1 + i % 4)) for i in range(60)))
        await batcher.stop()
        return out

    outputs = asyncio.run(main())
    for i, out in enumerate(outputs):
        assert out.shape == (1 + i % 4, 1)
        assert out[:, 0].tolist() == (_rows(i, 1 + i % 4)[:, 0] * 2).tolist()
    assert max(record.sizes) <= 16 and sum(record.sizes) == sum(1 + i % 4 for i in range(60))
    assert len(record.sizes) < 60  # requests were batched together
    assert not record.overlapped and len(record.threads) == 1
    assert threading.get_ident() not in record.threads  # inference ran off the event loop
    assert [rows for rows, _ in batches] == record.sizes
    assert all(seconds >= 0 for _, seconds in batches)


def test_a_request_larger_than_the_batch_runs_alone() -> None:
    record = Recorder()

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(record, max_batch_size=4, max_wait_ms=5)
        batcher.start()
        out = await asyncio.gather(
            batcher.submit(_rows(1)), batcher.submit(_rows(2, 10)), batcher.submit(_rows(3))
        )
        await batcher.stop()
        return out

    out = asyncio.run(main())
    assert out[1][:, 0].tolist() == (_rows(2, 10)[:, 0] * 2).tolist()
    assert 10 in record.sizes and all(s <= 4 for s in record.sizes if s != 10)


def test_max_wait_flushes_a_lone_request() -> None:
    async def main() -> np.ndarray:
        batcher = MicroBatcher(lambda x: x, max_batch_size=1000, max_wait_ms=1)
        batcher.start()
        out = await asyncio.wait_for(batcher.submit(_rows(7)), timeout=10)
        await batcher.stop()
        return out

    assert asyncio.run(main())[0, 0] == 700


def test_a_failing_batch_fails_only_its_requests() -> None:
    record = Recorder(fail_when=500.0)

    async def main() -> tuple[list[object], list[np.ndarray]]:
        batcher = MicroBatcher(record, max_batch_size=4, max_wait_ms=20)
        batcher.start()
        # Requests 4..7 share a batch with the poisoned request 5; requests 0..3 fill the one before.
        first = await asyncio.gather(
            *(batcher.submit(_rows(i)) for i in range(8)), return_exceptions=True
        )
        later = await asyncio.gather(*(batcher.submit(_rows(i)) for i in range(10, 14)))
        await batcher.stop()
        return first, later

    first, later = asyncio.run(main())
    failed = [i for i, r in enumerate(first) if isinstance(r, ValueError)]
    assert 5 in failed and set(failed) <= {4, 5, 6, 7}
    assert all(isinstance(first[i], np.ndarray) for i in range(4))
    assert [o[0, 0] for o in later] == [2000.0, 2200.0, 2400.0, 2600.0]  # the batcher kept serving


def test_queue_full_is_raised_at_once() -> None:
    gate = threading.Event()

    def slow(x: np.ndarray) -> np.ndarray:
        gate.wait(10)
        return x

    async def main() -> None:
        batcher = MicroBatcher(slow, max_batch_size=1, max_wait_ms=0, max_queue=2, name="m")
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(_rows(0)))
        await asyncio.sleep(0.05)  # the consumer took it and blocks in the worker
        queued = [asyncio.ensure_future(batcher.submit(_rows(i))) for i in (1, 2)]
        await asyncio.sleep(0)
        assert batcher.depth() == 2
        with pytest.raises(QueueFull, match="'m' is at capacity"):
            await batcher.submit(_rows(3))
        gate.set()
        out = await asyncio.gather(running, *queued)
        assert [o[0, 0] for o in out] == [0, 100, 200]
        await batcher.stop()

    asyncio.run(main())


def test_a_cancelled_request_does_not_break_the_others() -> None:
    gate = threading.Event()
    record = Recorder()

    def slow(x: np.ndarray) -> np.ndarray:
        gate.wait(10)
        return record(x)

    async def main() -> None:
        batcher = MicroBatcher(slow, max_batch_size=2, max_wait_ms=0)
        batcher.start()
        blocker = asyncio.ensure_future(batcher.submit(_rows(0)))
        await asyncio.sleep(0.05)
        waiting = [asyncio.ensure_future(batcher.submit(_rows(i))) for i in range(1, 5)]
        await asyncio.sleep(0)
        waiting[1].cancel()  # a client timed out while its request waited
        with pytest.raises(asyncio.TimeoutError):  # and one more, through wait_for
            await asyncio.wait_for(batcher.submit(_rows(9)), timeout=0.01)
        gate.set()
        out = await asyncio.gather(blocker, waiting[0], waiting[2], waiting[3])
        assert [o[0, 0] for o in out] == [0, 200, 600, 800]
        assert waiting[1].cancelled()
        await batcher.stop()

    asyncio.run(main())
    assert sum(record.sizes) == 4  # the cancelled rows never ran


def test_stop_drains_queued_requests_then_refuses_new_ones() -> None:
    gate = threading.Event()

    def slow(x: np.ndarray) -> np.ndarray:
        gate.wait(10)
        return x

    async def main() -> None:
        batcher = MicroBatcher(slow, max_batch_size=2, max_wait_ms=0)
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(_rows(i))) for i in range(7)]
        await asyncio.sleep(0.05)
        stopping = asyncio.ensure_future(batcher.stop(drain=True))
        await asyncio.sleep(0.05)
        late = asyncio.ensure_future(batcher.submit(_rows(8)))  # arrives while draining
        await asyncio.sleep(0)
        assert not stopping.done()
        gate.set()
        await asyncio.wait_for(stopping, timeout=10)
        out = await asyncio.gather(*pending, late)
        assert [o[0, 0] for o in out] == [0, 100, 200, 300, 400, 500, 600, 800]
        with pytest.raises(QueueFull):
            await batcher.submit(_rows(9))

    asyncio.run(main())


def test_stop_without_drain_fails_what_is_queued() -> None:
    gate = threading.Event()

    def slow(x: np.ndarray) -> np.ndarray:
        gate.wait(10)
        return x

    async def main() -> None:
        batcher = MicroBatcher(slow, max_batch_size=1, max_wait_ms=0)
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(_rows(i))) for i in range(3)]
        await asyncio.sleep(0.05)
        await batcher.stop(drain=False)
        gate.set()
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)

    asyncio.run(main())


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(lambda x: x, max_batch_size=0)

    async def main() -> None:
        batcher = MicroBatcher(lambda x: x)
        batcher.start()
        with pytest.raises(ValueError, match="non-empty"):
            await batcher.submit(np.zeros(3))
        await batcher.stop()

    asyncio.run(main())
