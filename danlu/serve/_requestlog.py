"""Sampled request logging (``danlu serve --log-sample 0.01``): a share of the answered requests'
rows and predictions go to the store, for later labelling and evaluation.

The server records one run (stage ``serve``, experiment ``serve``) per process. Sampled rows are
buffered in memory and written as CSV artifacts ``requests/NAME-vVERSION-SEQ.csv`` (the model's
feature columns plus ``prediction``; a list of labels as JSON text) every ``flush_seconds``, when
a buffer reaches ``flush_rows``, and at shutdown. Add the true target column to such a file and
``danlu evaluate NAME:VERSION --data FILE`` scores the model on live traffic.

The rows are the clients' own values, so every text cell that a spreadsheet would run as a
formula (``=``, ``+``, ``-``, ``@``, a tab or a carriage return first) is written with a leading
``'`` (:func:`danlu.store.csv_safe`); ``danlu evaluate --data`` takes it off again
(:func:`danlu.store.csv_restore_frame`), so the values round-trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from danlu.logging import get_logger

__all__ = ["RequestLog"]

log = get_logger(__name__)


def _rows(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The request's rows as dicts, from either body shape (already validated by the model)."""
    if "rows" in payload:
        return [dict(row) for row in payload["rows"]]
    columns = payload["columns"]
    names = list(columns)
    length = len(columns[names[0]]) if names else 0
    return [{name: columns[name][i] for name in names} for i in range(length)]


def _csv_rows(rows: list[dict[str, Any]]) -> list[dict[Any, Any]]:
    """Rows as CSV cells: lists (label sets) as JSON text, formulas neutralised, names too."""
    from danlu.store import csv_safe

    def cell(value: Any) -> Any:
        return csv_safe(json.dumps(value) if isinstance(value, list | tuple) else value)

    return [{csv_safe(k): cell(v) for k, v in row.items()} for row in rows]


class RequestLog:
    """Samples answered requests and writes them to the store in CSV chunks.

    Example:
        >>> # log = RequestLog(SqlStore, share=0.01, models=["digits@production"])
        >>> # log.start(); log.record("digits", 3, payload, predictions); await log.stop()
    """

    def __init__(
        self,
        store_factory: Callable[[], Any],
        share: float,
        models: Sequence[str],
        *,
        flush_rows: int = 1000,
        flush_seconds: float = 10.0,
        seed: int | None = None,
    ) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"The logged share must lie in (0, 1]; got {share}.")
        self.store_factory = store_factory
        self.share = share
        self.models = list(models)
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._random = random.Random(seed)
        self._buffers: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self._sequence: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._store: Any = None
        self.run_id: str | None = None
        self._task: asyncio.Task[None] | None = None
        self.logged = 0

    async def start(self) -> None:
        """Open the store, create the serve run, start the periodic flush."""

        def create() -> str:
            from danlu.store import host_name

            self._store = self.store_factory()
            run = self._store.create_run(
                experiment="serve",
                name=f"serve-{host_name()}",
                stage="serve",
                host=host_name(),
                tags={"models": " ".join(self.models), "log_sample": f"{self.share:g}"},
            )
            return str(run.id)

        self.run_id = await asyncio.to_thread(create)
        self._task = asyncio.create_task(self._flush_every())
        log.info("Logging %.3g of requests to run %s.", self.share, self.run_id)

    def record(
        self, name: str, version: int, payload: Mapping[str, Any], predictions: Sequence[Any]
    ) -> bool:
        """Keep this request's rows with probability ``share``; returns whether it was kept."""
        if self._random.random() >= self.share:
            return False
        rows = _rows(payload)
        for row, prediction in zip(rows, predictions, strict=False):
            row["prediction"] = prediction
        key = (name, int(version))
        with self._lock:
            buffer = self._buffers.setdefault(key, [])
            buffer.extend(rows)
            full = len(buffer) >= self.flush_rows
        if full:  # written off the event loop; this request does not wait for it
            asyncio.get_running_loop().run_in_executor(None, self.flush)
        return True

    def flush(self) -> int:
        """Write every buffered row; returns how many rows were written."""
        import pandas as pd

        with self._lock:
            taken = {k: v for k, v in self._buffers.items() if v}
            self._buffers = {}
            chunks = []
            for key in taken:
                self._sequence[key] = self._sequence.get(key, 0) + 1
                chunks.append((key, self._sequence[key]))
        written = 0
        for (name, version), sequence in chunks:
            frame = pd.DataFrame(_csv_rows(taken[(name, version)]))
            buffer = io.StringIO()
            frame.to_csv(buffer, index=False, lineterminator="\r\n")  # RFC 4180: CR quoted
            artifact = f"requests/{name}-v{version}-{sequence:05d}.csv"
            try:
                self._store.log_artifact(self.run_id, artifact, buffer.getvalue().encode())
            except Exception as exc:  # logging must never take the server down
                log.warning("Could not write %s (%s); %d rows dropped.", artifact, exc, len(frame))
                continue
            written += len(frame)
        self.logged += written
        return written

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            await asyncio.to_thread(self.flush)
            await asyncio.to_thread(self._store.heartbeat, self.run_id)  # the run is alive

    async def stop(self) -> None:
        """Write what is left and finish the run."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._store is None or self.run_id is None:
            return
        await asyncio.to_thread(self.flush)
        await asyncio.to_thread(self._store.set_status, self.run_id, "finished")
