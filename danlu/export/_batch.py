"""Batch prediction: a file of raw rows (no target needed) → a file of predictions, streamed.

``predict_file("digits@production", "new.csv", "predictions.csv")`` reads the file in chunks
(:mod:`._batch_io`), checks each chunk against the model's signature, reads every feature as its
kind, replays the version's saved preprocessing (``Preprocessor.transform_columns``, the one
encoding training and the server use), computes the raw outputs on ONNX Runtime when the version
has a parity-checked ONNX export (else on the torch model), decodes them with the version's task
(temperature and fitted decoding included) and writes the predictions chunk by chunk to a temp
file that is renamed over the output only when every row is done.

The input is checked before anything is predicted: the feature columns must all be there (the
error names the missing ones and the columns the model needs), and a chunk whose values do not
fit their kind (text in a numeric column, an unknown true/false spelling, an empty cell of a
model trained with ``missing: drop``) stops the run with the column, the row numbers (1 = the
first data row) and the values — before that chunk is predicted, and with no output file left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from danlu.errors import ConfigError, DataError, NotFoundError, StoreError
from danlu.export._batch_io import (
    BatchWriter,
    CsvOptions,
    atomic_output,
    category_lookup,
    file_format,
    null_mask,
    read_batches,
    source_columns,
    source_rows,
)
from danlu.export._onnx import onnx_outputs
from danlu.logging import get_logger

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from danlu.models import ModelBundle
    from danlu.store import Store

__all__ = ["DEFAULT_CHUNK_ROWS", "BatchPredictor", "BatchResult", "open_predictor", "predict_file"]

log = get_logger(__name__)

DEFAULT_CHUNK_ROWS = 65_536
RUNTIME_BATCH = 1024  # rows per call of the runtime
PREDICTION = "prediction"
_SHOWN = 5  # bad values quoted per column


@dataclass
class BatchResult:
    """What :func:`predict_file` did.

    Attributes:
        model: the version (``name:version``) or run that predicted.
        runtime: ``onnx`` or ``torch``.
        rows: rows predicted.
        chunks: chunks read.
        seconds: wall time from the first read to the renamed output.
        out: the output file (None: written to a stream).
        format: the output format.
        columns: the output's columns.
        unseen: categorical column → rows holding a category unknown to the model (encoded as
            unknown, as in serving).
    """

    model: str
    runtime: str
    rows: int = 0
    chunks: int = 0
    seconds: float = 0.0
    out: str | None = None
    format: str = "csv"
    columns: list[str] = field(default_factory=list)
    unseen: dict[str, int] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def _rows(mask: np.ndarray, values: Any, first: int) -> str:
    """``row 3 'abc', row 9 'x' and 4 more`` for the True rows of a chunk's mask."""
    import numpy as np

    where = np.flatnonzero(mask)
    shown = ", ".join(f"row {first + i + 1} {values[i]!r}" for i in where[:_SHOWN])
    more = len(where) - _SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


class BatchPredictor:
    """Predicts chunks of raw rows with one model (a registered version or a run's model).

    Args:
        bundle: the model (:func:`danlu.load_model`, or ``load_bundle`` of a run).
        onnx: the version's parity-checked ONNX bytes; None predicts with torch.
        threads: CPU threads for the runtime (None: the runtime's default).
        proba: also output one column per class (``proba_<class>``; multi-label scores:
            ``score_<label>``).
        keep: input columns copied to the output unchanged (ids; a target column).
        name: how errors name the model (``digits:3``).

    Example:
        >>> # predictor = BatchPredictor(danlu.load_model("wine:3"), proba=True)
        >>> # predictor.predict_batch(pyarrow.RecordBatch.from_pandas(frame), first=0)
    """

    def __init__(
        self,
        bundle: ModelBundle,
        *,
        onnx: bytes | None = None,
        threads: int | None = None,
        proba: bool = False,
        keep: Sequence[str] = (),
        name: str | None = None,
    ) -> None:
        self.bundle = bundle
        self.name = name or repr(bundle)
        self.keep = list(dict.fromkeys(keep))
        self.features = bundle.preprocessor.schema_.features
        self.classes = [_plain(c) for c in bundle.schema.classes or ()]
        self.scores = self._score_outputs() if proba else []
        if proba and not self.scores:
            raise ConfigError(
                f"--proba adds one column per class, and model {self.name} "
                f"({bundle.task.name}) has no class scores. Leave --proba out."
            )
        self.values = self._value_outputs()
        self.output_names = [PREDICTION, *self.values] + [
            f"{prefix}{c}" for _, prefix in self.scores for c in self.classes
        ]
        clash = sorted(set(self.keep) & set(self.output_names))
        if clash:
            raise ConfigError(
                f"--keep {clash[0]} would repeat an output column's name ({', '.join(clash)}); "
                "rename that input column or keep another."
            )
        self.runtime = "onnx" if onnx is not None else "torch"
        if onnx is not None:
            self._outputs = onnx_outputs(onnx, threads)
        else:
            if threads:
                import torch

                torch.set_num_threads(threads)
            self._outputs = bundle.outputs
        self.unseen: dict[str, int] = {}
        self._dense = all(f.kind in ("numeric", "boolean") for f in self.features)

    def _value_outputs(self) -> list[str]:
        """The other outputs holding one number per row (an anomaly's ``score``): a column each."""
        outputs = self.bundle.signature.get("outputs") or {}
        return [
            name
            for name, spec in outputs.items()
            if name != PREDICTION
            and isinstance(spec, dict)
            and spec.get("json_schema") == {"type": "number"}
        ]

    def _score_outputs(self) -> list[tuple[str, str]]:
        """(decoded output, column prefix) of each output holding one score per class."""
        outputs = self.bundle.signature.get("outputs") or {}
        found = []
        for name, spec in outputs.items():
            shape = spec.get("shape") if isinstance(spec, dict) else None
            if name != PREDICTION and self.classes and shape == [len(self.classes)]:
                prefix = "proba_" if name == "probabilities" else f"{name.removesuffix('s')}_"
                found.append((name, prefix))
        return found

    @property
    def needed(self) -> list[str]:
        """The input columns read: the features, then the kept columns."""
        names = [f.name for f in self.features]
        return names + [k for k in self.keep if k not in names]

    def check_columns(self, available: Sequence[str], source: str) -> None:
        """Refuse an input that lacks a feature column or a ``--keep`` column, naming them."""
        from danlu.registry import did_you_mean

        have = set(available)
        absent = [f.name for f in self.features if f.name not in have]
        if absent:
            hints = "".join(did_you_mean(a, list(available)) for a in absent[:3])
            needs = ", ".join(f"'{f.name}'" for f in self.features[:30])
            more = f" and {len(self.features) - 30} more" if len(self.features) > 30 else ""
            raise DataError(
                f"'{source}' lacks the column(s) {', '.join(repr(a) for a in absent)} that model "
                f"{self.name} takes as input.{hints} Add them (an empty cell takes the value "
                f"learned in training) or rename the file's columns. The model's inputs: "
                f"{needs}{more} (see `danlu models show`)."
            )
        missing = [k for k in self.keep if k not in have]
        if missing:
            raise ConfigError(
                f"--keep {missing[0]}: '{source}' has no column {missing[0]!r}."
                f"{did_you_mean(missing[0], list(available))}"
            )

    # ---- one chunk -----------------------------------------------------------------------

    def encode(self, batch: pa.RecordBatch, first: int) -> np.ndarray:
        """A chunk's features checked and preprocessed: float32 ``(rows, input_dim)``.

        Args:
            first: rows of the file before this chunk (for the row numbers of errors).

        Raises:
            DataError: every value of the chunk that does not fit its feature's kind, by column
                with row numbers.
        """
        return self._transform(self.read(batch, first), 0, batch.num_rows)

    def read(self, batch: pa.RecordBatch, first: int) -> dict[str, Any]:
        """A chunk's feature columns, each checked and read as its kind (``transform_columns``'
        input).

        Raises:
            DataError: every value of the chunk that does not fit its feature's kind, by column
                with row numbers.
        """
        pre = self.bundle.preprocessor
        problems: list[str] = []
        columns: dict[str, Any] = {}
        for f in self.features:
            array = batch.column(f.name)
            values = self._read(f, array, first, problems)
            if values is not None and pre.fill_.get(f.name) is None:
                missing = null_mask(array)
                if missing.any():
                    problems.append(
                        f"column '{f.name}' is empty at {_rows(missing, [''] * len(missing), first)}"
                        "; the model was trained with data.prepare.missing: drop, so it has no "
                        "value to fill in. Supply a value in every row."
                    )
            columns[f.name] = values
        if problems:
            end = first + batch.num_rows
            raise DataError(
                f"The input does not fit model {self.name}'s signature (rows {first + 1}–{end} "
                "checked; nothing was written):\n- " + "\n- ".join(problems)
            )
        return columns

    def _transform(self, columns: dict[str, Any], start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of read columns through the saved preprocessing, float32."""
        import numpy as np

        pre = self.bundle.preprocessor
        if self._dense:  # numbers only: one C-ordered matrix through the server's fast path
            matrix = np.empty((stop - start, len(columns)), dtype=np.float64)
            for j, values in enumerate(columns.values()):
                matrix[:, j] = values[start:stop]
            x = pre.transform_matrix(matrix)
        else:
            x = pre.transform_columns({k: v[start:stop] for k, v in columns.items()})
        return np.ascontiguousarray(x, np.float32)  # (rows, input_dim)

    def _read(self, feature: Any, array: Any, first: int, problems: list[str]) -> Any:
        """One feature column as ``transform_columns`` takes it, or None after a problem."""
        if feature.kind == "numeric" and feature.errors == "raise":
            return self._numbers(feature.name, array, first, problems)
        if feature.kind == "boolean":
            return self._booleans(feature.name, array, first, problems)
        if feature.kind == "categorical":
            return self._categories(feature, array)
        return self._other(feature, array, first, problems)

    def _numbers(self, name: str, array: Any, first: int, problems: list[str]) -> Any:
        import numpy as np
        import pandas as pd
        import pyarrow as pa

        kind = array.type
        if pa.types.is_float64(kind):
            values = np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.float64)
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
            values = np.asarray(array.cast(pa.float64()).to_numpy(zero_copy_only=False))
        elif pa.types.is_null(kind):
            values = np.full(len(array), np.nan)
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            text = array.to_pandas()
            converted = pd.to_numeric(text, errors="coerce")
            values = converted.to_numpy(dtype="float64", na_value=np.nan)
            bad = np.isnan(values) & text.notna().to_numpy()
            if bad.any():
                problems.append(
                    f"column '{name}' takes numbers; {int(bad.sum())} value(s) are not: "
                    f"{_rows(bad, text.to_numpy(), first)}. Fix them, or leave the cells empty "
                    "(an empty cell takes the value learned in training)."
                )
                return None
        else:
            problems.append(
                f"column '{name}' takes numbers; the file holds {kind} values there. Convert "
                "the column to numbers."
            )
            return None
        infinite = np.isinf(values)
        if infinite.any():
            problems.append(
                f"column '{name}' holds {int(infinite.sum())} infinite value(s): "
                f"{_rows(infinite, values, first)}. Use finite numbers or empty cells."
            )
            return None
        return values

    def _booleans(self, name: str, array: Any, first: int, problems: list[str]) -> Any:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        from danlu.data._schema import bool_token

        if pa.types.is_boolean(array.type) or pa.types.is_null(array.type):
            return np.asarray(array.cast(pa.float64()).to_numpy(zero_copy_only=False))
        encoded = pc.dictionary_encode(array)
        tokens = [bool_token(v) for v in encoded.dictionary.to_pylist()]
        lookup = np.asarray([np.nan if t is None else float(t) for t in tokens] + [np.nan])
        codes = np.asarray(encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False))
        unknown = np.asarray([t is None for t in tokens] + [False])[codes]
        if unknown.any():
            problems.append(
                f"column '{name}' takes true/false values; {int(unknown.sum())} are neither: "
                f"{_rows(unknown, array.to_pylist(), first)}. Write true/false, yes/no or 1/0."
            )
            return None
        return lookup[codes]

    def _categories(self, feature: Any, array: Any) -> Any:
        """Category strings (None where missing), one lookup per distinct value."""
        import numpy as np
        import pyarrow.compute as pc

        known = {c: i for i, c in enumerate(feature.categories)}
        encoded = pc.dictionary_encode(array)
        texts = category_lookup(encoded.dictionary.to_pylist(), known)
        lookup = np.asarray([*texts, None], dtype=object)
        codes = np.asarray(encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False))
        values = lookup[codes]
        unseen = np.asarray([t not in known for t in texts] + [False])[codes]
        if unseen.any():
            self.unseen[feature.name] = self.unseen.get(feature.name, 0) + int(unseen.sum())
        return values

    def _other(self, feature: Any, array: Any, first: int, problems: list[str]) -> Any:
        """A kind this module does not know in detail: the preprocessor reads it."""
        import pandas as pd

        try:
            return self.bundle.preprocessor.read_column(  # the feature: its options apply
                pd.Series(array.to_pandas(), name=feature.name), feature
            )
        except DataError as exc:
            rows = f"rows {first + 1}–{first + len(array)}"
            problems.append(f"column '{feature.name}' ({feature.kind}), {rows}: {exc}")
            return None

    def predict_batch(self, batch: pa.RecordBatch, first: int = 0) -> pa.Table:
        """A chunk of raw rows → its output table: the kept columns, ``prediction`` and, with
        ``proba``, one column per class."""
        import numpy as np
        import pyarrow as pa

        columns, n = self.read(batch, first), batch.num_rows
        # preprocessing and the runtime in blocks that stay in cache (measured: ORT runs an MLP
        # [512, 512] 25% slower on 16k-row batches than on 1k-row ones, and scaling a whole
        # chunk's float64 matrix costs more than the model [128, 64] itself)
        raw = [
            self._outputs(self._transform(columns, i, min(i + RUNTIME_BATCH, n)))
            for i in range(0, n, RUNTIME_BATCH)
        ] or [self._outputs(self._transform(columns, 0, 0))]  # no rows: an empty answer
        decoded = self.bundle.decode(raw[0] if len(raw) == 1 else np.concatenate(raw))
        arrays: list[Any] = [batch.column(k) for k in self.keep]
        names = list(self.keep)
        arrays.append(_label_array(decoded[PREDICTION]))
        names.append(PREDICTION)
        for output in self.values:
            arrays.append(pa.array(np.asarray(decoded[output], dtype=np.float64)))
            names.append(output)
        for output, prefix in self.scores:
            scores = np.asarray(decoded[output], dtype=np.float64)  # (rows, classes)
            for j, c in enumerate(self.classes):
                arrays.append(pa.array(scores[:, j]))
                names.append(f"{prefix}{c}")
        return pa.Table.from_arrays(arrays, names=names)


def _plain(value: Any) -> Any:
    from danlu.data import to_plain

    return to_plain(value)


def _label_array(values: Any) -> Any:
    """Decoded predictions as an Arrow array: numbers as numbers, labels as text or numbers,
    sets of labels as lists."""
    import numpy as np
    import pyarrow as pa

    values = np.asarray(values)
    if values.dtype != object:
        return pa.array(values.reshape(len(values), -1)[:, 0] if values.ndim > 1 else values)
    try:
        return pa.array(values, from_pandas=True)
    except (pa.ArrowException, TypeError, ValueError):
        return pa.array([None if v is None else str(v) for v in values])


def open_predictor(store: Store, target: str, **options: Any) -> BatchPredictor:
    """The batch predictor of ``target``: a registered model (``NAME``, ``NAME:VERSION``,
    ``NAME@ALIAS``) — on ONNX Runtime when its export passed the parity check — or a run id
    (its model, on torch). ``options`` go to :class:`BatchPredictor`.

    Raises:
        NotFoundError: no such model, version, alias or run.
    """
    from danlu.export._onnx import onnx_ready, read_onnx
    from danlu.export._predictor import load_version
    from danlu.models import load_bundle

    run = None
    if ":" not in target and "@" not in target:
        try:
            run = store.get_run(target)
        except (NotFoundError, StoreError):
            run = None
    if run is not None:
        bundle = load_bundle(store.run_reader(run.id), f"Run {run.id}")
        return BatchPredictor(bundle, name=f"run {run.id}", **options)
    mv = store.resolve(target)
    bundle = load_version(store, mv)
    onnx = None
    if onnx_ready(store, mv):
        try:
            onnx = read_onnx(store, mv)
        except StoreError as exc:
            log.warning("%s Predicting with torch instead.", exc)
    else:
        log.info("Model %s has no parity-checked ONNX export; predicting with torch.", mv.ref)
    return BatchPredictor(bundle, onnx=onnx, name=mv.ref, **options)


def predict_file(
    model: str | BatchPredictor,
    source: str | Path,
    out: str | Path | None = None,
    *,
    fmt: str | None = None,
    proba: bool = False,
    keep: Iterable[str] = (),
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    sep: str | None = None,
    encoding: str = "utf-8",
    threads: int | None = None,
    store: Store | None = None,
    stream: Callable[[], IO[bytes]] | None = None,
    on_chunk: Callable[[int, int | None], None] | None = None,
) -> BatchResult:
    """Predict every row of a CSV, Parquet or JSON Lines file, streamed in chunks.

    Args:
        model: a registered model (``NAME``, ``NAME:VERSION``, ``NAME@ALIAS``), a run id, or a
            :class:`BatchPredictor`.
        source: the input file (``.csv``, ``.parquet``, ``.jsonl``); it needs the model's
            feature columns; other columns (a target) are ignored unless kept.
        out: the output file; None writes to ``stream()`` (CSV or JSON Lines only).
        fmt: the output format (``csv``, ``parquet``, ``jsonl``); default: from ``out``'s
            suffix, else CSV.
        proba: add one column per class (``proba_<class>``).
        keep: input columns copied to the output (ids, or the target).
        chunk_rows: rows per chunk read, preprocessed and predicted at once.
        sep: an input CSV's separator (default: a tab for ``.tsv``, else a comma).
        encoding: an input CSV's text encoding.
        threads: CPU threads of the runtime.
        store: the store holding the model (default: ``SqlStore()``).
        stream: the binary stream written when ``out`` is None.
        on_chunk: called after each chunk with (rows done, total rows when known).

    Returns:
        What was done: rows, seconds, runtime, output columns.

    Raises:
        DataError: the input lacks a feature column, or a value does not fit its kind (by
            column, with row numbers); nothing is written then.
        ConfigError: an unknown format, Parquet to a stream, a ``--keep`` column not in the file.

    Example:
        >>> # result = predict_file("wine@production", "new_wines.csv", "scored.csv", proba=True)
        >>> # result.rows, result.runtime
    """
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be at least 1; got {chunk_rows}.")
    source = Path(source)
    out_path = None if out is None else Path(out)
    out_format = file_format(out_path, fmt, what="output file")
    in_format = file_format(source, what="input file")
    csv_options = CsvOptions.for_file(source, sep, encoding)
    if out_path is None and out_format == "parquet":
        raise ConfigError("Parquet output needs a file: add --out FILE.parquet.")
    if out_path is not None and out_path.resolve() == source.resolve():
        raise ConfigError(f"--out '{out_path}' is the input file; write to another file.")
    available = source_columns(source, in_format, csv_options)
    if isinstance(model, BatchPredictor):
        predictor = model
    elif store is not None:
        predictor = open_predictor(store, model, proba=proba, keep=list(keep), threads=threads)
    else:
        from danlu.store import SqlStore

        owned = SqlStore()
        try:
            predictor = open_predictor(owned, model, proba=proba, keep=list(keep), threads=threads)
        finally:
            owned.close()
    predictor.check_columns(available, str(source))
    reading = (source, in_format, csv_options, chunk_rows)
    return _run(predictor, reading, out_path, out_format, stream, on_chunk)


def _run(
    predictor: BatchPredictor,
    reading: tuple[Path, str, CsvOptions, int],
    out: Path | None,
    out_format: str,
    stream: Callable[[], IO[bytes]] | None,
    on_chunk: Callable[[int, int | None], None] | None,
) -> BatchResult:
    from danlu.data._stream import read_ahead

    if stream is None:
        import sys

        stream = lambda: sys.stdout.buffer  # noqa: E731
    source, in_format, csv_options, chunk_rows = reading
    started = time.perf_counter()
    total = source_rows(source, in_format)
    # parsed as numbers by the reader, unless junk in them reads as missing (errors: nan)
    numeric = [f.name for f in predictor.features if f.kind == "numeric" and f.errors == "raise"]
    result = BatchResult(predictor.name, predictor.runtime, format=out_format)
    batches = read_batches(source, in_format, predictor.needed, numeric, chunk_rows, csv_options)
    with atomic_output(out, stream) as (sink, commit):
        writer = BatchWriter(sink, out_format)
        for batch in read_ahead(batches, depth=2):
            if batch.num_rows == 0:
                continue
            writer.write(predictor.predict_batch(batch, result.rows))
            result.rows += batch.num_rows
            result.chunks += 1
            if on_chunk is not None:
                on_chunk(result.rows, total)
        if writer.schema is None:  # no rows: still a file with the header
            writer.write(_empty(predictor))
        writer.close()
        commit()
    result.seconds = time.perf_counter() - started
    result.out = None if out is None else str(out)
    result.columns = [str(n) for n in writer.schema.names]
    result.unseen = dict(predictor.unseen)
    return result


def _empty(predictor: BatchPredictor) -> Any:
    import pyarrow as pa

    names = [*predictor.keep, *predictor.output_names]
    return pa.table({name: pa.array([], pa.string()) for name in names})
