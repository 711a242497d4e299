"""Data larger than memory: a Parquet file or folder read in chunks, as a stream of batches.

With ``data.stream`` set, :func:`prepare_stream` replaces the in-memory path of
:func:`~danlu.data.prepare_data`:

1. list the files and row groups from the Parquet footers (no rows read), checking that every
   file agrees on the columns and their types;
2. one pass over every row (:func:`~danlu.data._stream_stats.collect_stats`): each row's split
   from a seeded hash of its global row number, exact moments and category counts of the
   training rows, class counts, and a seeded reservoir sample of training rows;
3. infer the feature kinds from the Parquet types and the sample, fit the :class:`Preprocessor` on
   the sample, then overwrite what the pass knows exactly (see :func:`_exact`);
4. hand the engine a :class:`TrainStream`: it reads row groups in a seeded order per epoch,
   shuffles rows within a bounded buffer, preprocesses whole chunks vectorised, and reads ahead
   in a background thread so that Parquet decoding overlaps training.

Memory is bounded by ``chunk_rows + shuffle_buffer`` encoded rows in the reader, plus a few
batches waiting in the read-ahead queue, plus the ``sample_rows`` raw rows of the sample while
the preprocessor is fitted; never by the size of the data.
"""

from __future__ import annotations

import hashlib
import json
import math
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from danlu.config import DataConfig
from danlu.data._augment import check_augment
from danlu.data._parquet import ParquetLayout, RowGroup, iter_chunks, parquet_layout
from danlu.data._prepared import PreparedData
from danlu.data._preprocessor import Preprocessor
from danlu.data._schema import feature_kinds, infer_kinds
from danlu.data._stream_exact import _check_supported, _exact, _static_kinds
from danlu.data._stream_stats import SPLITS, StreamStats, collect_stats, column_values, split_codes
from danlu.data._target import TaskLike, TaskRef, resolve_task, target_codec
from danlu.data._values import preview, sorted_labels
from danlu.errors import DataError
from danlu.logging import get_logger
from danlu.registry import did_you_mean

if TYPE_CHECKING:
    import pyarrow as pa


__all__ = ["TrainStream", "prepare_stream", "read_ahead"]

logger = get_logger(__name__)

T = TypeVar("T")

_DEFAULT_TARGET = "target"
_PREFETCH = 8  # batches waiting in the read-ahead queue


@dataclass
class _Failed:
    error: BaseException


def read_ahead(items: Iterable[T], depth: int = _PREFETCH) -> Iterator[T]:
    """Iterate ``items`` in a background thread, ``depth`` items ahead of the consumer.

    Parquet decoding and numpy release the GIL, so reading overlaps the consumer's work. An
    error in the thread is raised in the consumer; closing the iterator early stops the thread.

    Example:
        >>> list(read_ahead(iter(range(5)), depth=2))
        [0, 1, 2, 3, 4]
    """
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer, which raises it
            put(_Failed(exc))

    thread = threading.Thread(target=work, name="danlu-stream-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


class TrainStream:
    """Batches of preprocessed rows of one split, streamed from a Parquet source.

    Built by :func:`prepare_stream`; the engine iterates ``batches("train", batch_size,
    epoch=e)`` each epoch and ``batches("val")`` / ``batches("test")`` to evaluate.

    Attributes:
        rows: the number of rows of each split (exact, from the one-pass statistics).
        class_counts: class targets: training rows per class (in ``schema.classes`` order).
        peak_rows: the most encoded rows the reader has held at once (buffer + chunk).
        chunks_read: Parquet record batches decoded so far.

    Example:
        >>> # for xb, yb in data.stream.batches("train", 256, epoch=1): ...  # (B, D), (B,)
    """

    def __init__(
        self,
        layout: ParquetLayout,
        preprocessor: Preprocessor,
        *,
        rows: dict[str, int],
        class_counts: np.ndarray | None,
        test: float,
        val: float,
        seed: int,
        chunk_rows: int,
        shuffle_buffer: int,
        drop_missing: bool,
        group: str | None = None,
    ) -> None:
        self.layout = layout
        self.preprocessor = preprocessor
        self.rows = dict(rows)
        self.class_counts = class_counts
        self.test, self.val, self.seed = test, val, seed
        self.chunk_rows, self.shuffle_buffer = chunk_rows, shuffle_buffer
        self.drop_missing = drop_missing
        self.group = group
        self.peak_rows = 0
        self.chunks_read = 0
        schema = preprocessor.schema_
        self._features = [f.name for f in schema.features]
        self._columns = [*self._features, schema.target]
        self._read = self._columns + ([group] if group and group not in self._columns else [])
        self._classes = None if schema.classes is None else list(schema.classes)

    def __repr__(self) -> str:
        return (
            f"TrainStream({self.layout.source!r}, rows={self.rows}, chunk_rows="
            f"{self.chunk_rows}, shuffle_buffer={self.shuffle_buffer})"
        )

    def num_batches(self, split: str, batch_size: int) -> int:
        """Batches of ``batch_size`` in one pass over ``split`` (exact)."""
        return math.ceil(self.rows[split] / batch_size)

    def batches(
        self,
        split: str = "train",
        batch_size: int | None = None,
        *,
        epoch: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One pass over ``split`` as ``(x, y)`` numpy batches, read ahead in a background thread.

        ``train``: row groups in an order seeded by ``epoch``, rows shuffled within the buffer,
        every batch full but the last. ``val`` / ``test``: file order, one batch per chunk
        unless ``batch_size`` is given.

        Args:
            split: ``train``, ``val`` or ``test``.
            batch_size: rows per batch (required for ``train``).
            epoch: seeds the training order; the same epoch gives the same batches.
            shard: ``(rank, ranks)``: ``train`` reads only every ``ranks``-th row group of the
                epoch's order, from ``rank`` (each rank of a distributed run its own groups).
        """
        if split not in SPLITS:
            raise DataError(f"Unknown split '{split}'; use one of {', '.join(SPLITS)}.")
        if split == "train":
            if batch_size is None:
                raise DataError("Streaming training batches needs a batch_size.")
            return read_ahead(self._shuffled(batch_size, epoch, shard))
        return read_ahead(self._in_order(split, batch_size))

    # -- reading -------------------------------------------------------------------------------
    def _chunks(
        self, split: str, groups: Sequence[RowGroup]
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The rows of ``split`` in ``groups``, chunk by chunk, encoded: ``(x, y)``."""
        import pyarrow as pa

        code = SPLITS.index(split)
        for first, batch in iter_chunks(groups, self._read, self.chunk_rows):
            self.chunks_read += 1
            n = batch.num_rows
            by = None if self.group is None else batch.column(self.group)
            codes = split_codes(first, n, test=self.test, val=self.val, seed=self.seed, groups=by)
            mask = codes == code
            if self.drop_missing:
                for name in self._features:
                    mask &= ~np.asarray(batch.column(name).is_null(nan_is_null=True))
            if not mask.any():
                continue
            batch = batch.filter(pa.array(mask))
            yield self._encode(batch), self._encode_target(batch.column(self._columns[-1]))

    def _encode(self, batch: pa.RecordBatch) -> np.ndarray:
        """Preprocess a whole chunk: each column read from Arrow (numbers and booleans without
        pandas), then the preprocessor's one replay of its fitted state (``transform_columns``,
        which the server and ``Preprocessor.transform`` use too)."""
        import pandas as pd

        pre = self.preprocessor
        columns: dict[str, np.ndarray] = {}
        for f in pre.schema_.features:
            array = batch.column(f.name)
            # errors: nan and dates read through the preprocessor (its options, its format)
            values = column_values(array, f.kind, f.name) if f.errors == "raise" else None
            if values is None:  # categories, dates, and booleans spelled as strings
                values = pre.read_column(pd.Series(array.to_pandas(), name=f.name), f)
            columns[f.name] = values
        return pre.transform_columns(columns)

    def _encode_target(self, column: pa.Array) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.compute as pc

        pre = self.preprocessor
        if self._classes is None:  # a numeric target (label sets are never streamed)
            schema = pre.schema_
            y = np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False))
            mean, std = schema.target_mean or 0.0, schema.target_std or 1.0
            return ((y - mean) / std).astype(np.float32)
        try:
            codes = pc.index_in(column, value_set=pa.array(self._classes, type=column.type))
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            return pre.encode_target(column.to_pandas())  # labels arrow cannot match directly
        if codes.null_count:
            return pre.encode_target(column.to_pandas())  # raises with the unknown labels
        return np.asarray(codes.to_numpy(zero_copy_only=False), dtype=np.int64)

    def _in_order(
        self, split: str, batch_size: int | None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for x, y in self._chunks(split, self.layout.row_groups):
            self.peak_rows = max(self.peak_rows, len(x))
            step = batch_size or len(x)
            for start in range(0, len(x), step):
                yield x[start : start + step], y[start : start + step]

    def _shuffled(
        self, batch_size: int, epoch: int, shard: tuple[int, int] = (0, 1)
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Training batches: seeded row-group order, then a shuffle buffer of bounded size.

        Each chunk joins the buffer; once the buffer holds more than ``shuffle_buffer`` rows,
        the excess (rounded up to whole batches) leaves it as randomly chosen rows. So no more
        than ``shuffle_buffer + chunk_rows`` encoded rows are ever held, and every batch but
        the epoch's last is full, which makes the number of batches exact.
        """
        rng = np.random.default_rng([self.seed % 2**32, epoch])
        groups = [self.layout.row_groups[i] for i in rng.permutation(len(self.layout.row_groups))]
        groups = groups[shard[0] :: shard[1]]  # a rank's own row groups (all of them alone)
        buf_x: np.ndarray | None = None
        buf_y: np.ndarray | None = None
        for x, y in self._chunks("train", groups):
            if buf_x is not None and buf_y is not None and len(buf_x):
                x, y = np.concatenate([buf_x, x]), np.concatenate([buf_y, y])
            self.peak_rows = max(self.peak_rows, len(x))
            excess = len(x) - self.shuffle_buffer
            if excess <= 0:
                buf_x, buf_y = x, y
                continue
            leave = min(len(x), math.ceil(excess / batch_size) * batch_size)
            order = rng.permutation(len(x))
            out, keep = order[:leave], order[leave:]
            buf_x, buf_y = x[keep], y[keep]
            out_x, out_y = x[out], y[out]
            for start in range(0, leave, batch_size):
                yield out_x[start : start + batch_size], out_y[start : start + batch_size]
        if buf_x is not None and buf_y is not None and len(buf_x):
            order = rng.permutation(len(buf_x))
            out_x, out_y = buf_x[order], buf_y[order]
            for start in range(0, len(out_x), batch_size):
                yield out_x[start : start + batch_size], out_y[start : start + batch_size]


# -- preparation -------------------------------------------------------------------------------


def fingerprint_files(layout: ParquetLayout) -> str:
    """The sha256 of the files' names and bytes (read in blocks; nothing is held)."""
    digest = hashlib.sha256()
    for file in layout.files:
        digest.update(f"{file.name}\x1f{file.stat().st_size}\x1f".encode())
        with open(file, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def prepare_stream(config: DataConfig, task: str | TaskLike) -> PreparedData:
    """Prepare a Parquet file or folder for streaming: one pass of statistics, no rows held.

    The returned :class:`PreparedData` has empty ``x_*`` / ``y_*`` arrays (with the right
    width) and a :class:`TrainStream` in ``stream`` that the engine and the pipeline read.

    Args:
        config: the recipe's ``data`` block, with ``stream`` set.
        task: ``classification``, ``regression``, or a task object whose ``target_kind`` is
            ``classes`` or ``values`` (label sets are not streamed).

    Raises:
        DataError: the source is not Parquet, the files disagree, the target is unusable (label
            sets and lists of label columns included), or an option that needs every row in
            memory (outliers, resampling) is set.

    Example:
        >>> # cfg = DataConfig(source="data/events/", target="y", stream={"chunk_rows": 65536})
        >>> # data = prepare_stream(cfg, "classification")
        >>> # data.stream.rows["train"], data.x_train.shape  # (..., (0, input_dim))
    """
    ref = resolve_task(task)
    stream = config.stream
    if stream is None:
        raise DataError("prepare_stream needs data.stream to be set.")
    if ref.target_kind == "label_sets" or isinstance(config.target, list):
        what = (
            "data.target lists label columns, which make"
            if isinstance(config.target, list)
            else f"task '{ref.name}' has"
        )
        raise DataError(
            f"Streaming (data.stream) reads targets of one class or one number per row; {what} "
            "a label-set target (several labels per row), which it cannot stream. Remove "
            "data.stream to load the data into memory."
        )
    _check_supported(config)
    layout = parquet_layout(config.source)
    target = config.target or _DEFAULT_TARGET
    if target not in layout.columns:
        hint = "" if config.target else " and data.target is not set"
        raise DataError(
            f"Target column '{target}' is not in '{config.source}'{hint}."
            f"{did_you_mean(target, layout.columns)} Columns: {preview(layout.columns)}. Set "
            "data.target to one of them."
        )
    if config.split.group is not None and config.split.group not in layout.columns:
        from danlu.data._split import RecipeDataError

        raise RecipeDataError(
            ("data", "split", "group"),
            f"column '{config.split.group}' is not in '{config.source}'",
            config.split.group,
            f"{did_you_mean(config.split.group, layout.columns)} Columns: "
            f"{preview(layout.columns)}.".strip(),
        )
    overrides = feature_kinds(config.features)
    kinds = _static_kinds(layout, target, overrides)
    if all(kind == "ignore" for kind in kinds.values()):
        raise DataError(
            f"No feature columns are left in '{config.source}': every column but the target "
            f"'{target}' is ignored. Remove some 'ignore' entries from data.features."
        )
    split, prep = config.split, config.prepare
    stats = collect_stats(
        layout, target=target, task=ref, kinds=kinds, test=split.test, val=split.val,
        seed=split.seed, chunk_rows=stream.chunk_rows, sample_rows=stream.sample_rows,
        drop_missing=prep.missing == "drop", group=split.group,
    )  # fmt: skip
    # The sample decides what the Parquet types cannot (a yes/no string column is boolean).
    # Ignored columns were not read, so they are not in the sample.
    ignored = [name for name, kind in kinds.items() if kind == "ignore"]
    known = {k: v for k, v in overrides.items() if k not in ignored}
    kinds = infer_kinds(stats.sample, target, ref, known)
    classes = sorted_labels(list(stats.labels)) if ref.target_kind == "classes" else None
    image_shape = tuple(config.image_shape) if config.image_shape else None
    pre = Preprocessor(
        prep, target=target, task=ref, overrides=kinds, image_shape=image_shape,
        classes=classes, reduce=config.reduce,
    ).fit(stats.sample)  # fmt: skip
    pre, exact = _exact(pre, stats, ref.target_kind)
    coerced = [f.name for f in pre.schema_.features if f.errors == "nan"]
    if coerced and prep.missing == "drop":  # the pass counted rows before junk read as missing
        raise DataError(
            f"Streaming with data.prepare.missing: drop cannot drop the rows whose values in "
            f"{preview(coerced)} are read as missing (errors: nan): the rows were counted "
            "before. Use another data.prepare.missing strategy (median), or clean the data."
        )
    fitted = pre.schema_
    if image_shape is not None and fitted.image_shape is not None:
        if int(np.prod(image_shape)) != fitted.input_dim:
            raise DataError(
                f"data.image_shape {list(image_shape)} holds {int(np.prod(image_shape))} values, "
                f"but the prepared rows have {fitted.input_dim} feature columns. Make the "
                f"shape's product equal {fitted.input_dim}, or remove data.image_shape."
            )
    check_augment(config.augment, fitted.image_shape)
    class_counts = None
    if classes is not None:
        class_counts = np.array([stats.train_labels.get(c, 0) for c in classes], dtype=np.int64)
        absent = [str(c) for c, n in zip(classes, class_counts, strict=True) if n == 0]
        if absent:
            logger.warning(
                "Class %s has no training rows; the model cannot learn it. Add data of that class.",
                preview(absent),
            )
    reader = TrainStream(
        layout, pre, rows=stats.rows, class_counts=class_counts, test=split.test, val=split.val,
        seed=split.seed, chunk_rows=stream.chunk_rows, shuffle_buffer=stream.shuffle_buffer,
        drop_missing=prep.missing == "drop", group=split.group,
    )  # fmt: skip
    return _prepared(config, ref, layout, pre, stats, reader, exact, classes, ignored)


def _prepared(
    config: DataConfig,
    task: TaskRef,
    layout: ParquetLayout,
    pre: Preprocessor,
    stats: StreamStats,
    reader: TrainStream,
    exact: list[str],
    classes: Sequence[Any] | None,
    ignored: list[str],
) -> PreparedData:
    from danlu.data._imbalance import imbalance_class_weight

    fitted = pre.schema_
    stream = config.stream
    assert stream is not None
    raw_fingerprint = fingerprint_files(layout)
    recipe_part = {"split": config.split.model_dump(mode="json"), "stream": stream.model_dump()}
    fingerprint = hashlib.sha256(
        json.dumps(
            {"raw": raw_fingerprint, "pre": pre.to_dict(), **recipe_part}, sort_keys=True
        ).encode()
    ).hexdigest()
    report: dict[str, Any] = {
        "source": layout.source,
        "streamed": True,
        "files": len(layout.files),
        "row_groups": len(layout.row_groups),
        "rows_loaded": layout.rows,
        "missing_dropped": stats.missing_dropped,
        "duplicates_dropped": 0,
        "outliers_removed": 0,
        "rows": dict(stats.rows),
        "features": len(fitted.features),
        "ignored": ignored,
        "input_dim": fitted.input_dim,
        "stratified": False,
        "split_by": "group" if config.split.group else "random",
        "stream": {
            **stream.model_dump(),
            "exact": exact,
            "sampled": [
                "feature kinds",
                *(["median fill"] if config.prepare.missing == "median" else []),
                *(["robust scaling"] if config.prepare.scale == "robust" else []),
                *(
                    ["most frequent numeric fill"]
                    if config.prepare.missing == "most_frequent"
                    else []
                ),
                *(["feature reduction"] if config.reduce is not None else []),
                *(f"categories of {name}" for name in sorted(stats.truncated)),
            ],
            "sample_rows": len(stats.sample),
            "columns": {name: m.summary() for name, m in stats.moments.items()},
        },
    }
    d = fitted.input_dim
    empty_x = np.empty((0, d), dtype=np.float32)
    empty_y = target_codec(task.target_kind).empty(fitted)
    return PreparedData(
        empty_x, empty_y, empty_x, empty_y, empty_x, empty_y,
        schema=fitted,
        preprocessor=pre,
        raw_fingerprint=raw_fingerprint,
        fingerprint=fingerprint,
        report=report,
        augment=tuple(config.augment),
        class_weight=imbalance_class_weight(
            config.imbalance, classes, target_kind=task.target_kind
        ),
        stream=reader,
    )  # fmt: skip
