"""Files for batch prediction: CSV, Parquet and JSON Lines read in chunks of rows, predictions
written chunk by chunk, and the output file renamed into place only once it is complete.

Readers yield ``pyarrow.RecordBatch`` chunks of the columns asked for, in file order, and never
hold more than one chunk (plus the reader's read-ahead) in memory:

- **CSV** through pyarrow's streaming reader, numeric features parsed straight to float64 and
  every other column as text (so a column's type cannot change between chunks). A value that
  is not a number makes the fast parse fail; the reader then opens the file again with those
  columns as text and carries on from the same row, so the caller can name the bad values with
  their row numbers.
- **Parquet** through ``ParquetFile.iter_batches``, the file's own types.
- **JSON Lines** through pandas' chunked reader (JSON values keep their JSON types; a column
  holding numbers and strings alike becomes text).
"""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from danlu.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "FORMATS",
    "BatchWriter",
    "CsvOptions",
    "atomic_output",
    "file_format",
    "read_batches",
    "source_columns",
    "source_rows",
]

FORMATS = ("csv", "parquet", "jsonl")
_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "csv",  # read with a tab separator (CsvOptions.for_file)
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
_SNIFF_BYTES = 1 << 16  # what the CSV reader's block size is estimated from
_MAX_BLOCK = 4 << 20  # CSV blocks parse fastest at a few MB (measured: 16 MB is ~2x slower)
# what pandas reads as missing in a CSV, so that a file reads here as it did in training
_NULLS = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND"]
_NULLS += ["1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


@dataclass(frozen=True)
class CsvOptions:
    """How an input CSV is written: its separator and its text encoding.

    Example:
        >>> CsvOptions.for_file("rows.tsv", None, "utf-8").sep
        '\\t'
    """

    sep: str = ","
    encoding: str = "utf-8"

    @classmethod
    def for_file(cls, path: str | Path, sep: str | None, encoding: str) -> CsvOptions:
        """The options of ``path``: ``sep`` as given, else a tab for ``.tsv``, else a comma."""
        if sep is None:
            sep = "\t" if Path(path).suffix.lower() == ".tsv" else ","
        sep = "\t" if sep in ("\\t", "tab") else sep
        if len(sep) != 1:
            raise ConfigError(f"--sep must be one character (or \\t for a tab); got {sep!r}.")
        import codecs

        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ConfigError(
                f"--encoding {encoding!r} is not a text encoding Python knows; use e.g. utf-8, "
                "latin-1 or cp1252."
            ) from None
        return cls(sep, encoding)


def file_format(path: str | Path | None, given: str | None = None, *, what: str = "file") -> str:
    """The format of ``path`` from ``given`` or its suffix: ``csv``, ``parquet`` or ``jsonl``.

    Example:
        >>> file_format("rows.parquet"), file_format("out.txt", "jsonl")
        ('parquet', 'jsonl')
    """
    if given is not None:
        if given not in FORMATS:
            raise ConfigError(
                f"--format must be one of {', '.join(FORMATS)}; got {given!r}. Write e.g. "
                "--format parquet."
            )
        return given
    if path is None:
        return "csv"
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise ConfigError(
            f"Cannot tell the format of the {what} '{path}' from its suffix {suffix or '(none)'}: "
            f"use .csv, .parquet or .jsonl, or name it with --format {'|'.join(FORMATS)}."
        )
    return _SUFFIXES[suffix]


def _open_error(path: Path, fmt: str, exc: BaseException) -> DataError:
    hint = "Check that the file is complete and in that format."
    if isinstance(exc, UnicodeDecodeError) or "invalid UTF8" in str(exc):
        hint = "The file is not UTF-8 text: name its encoding, e.g. --encoding latin-1."
    return DataError(f"Cannot read '{path}' as {fmt}: {type(exc).__name__}: {exc}. {hint}")


def source_columns(path: Path, fmt: str, options: CsvOptions = CsvOptions()) -> list[str]:
    """The column names of a data file, from its header (CSV), footer (Parquet) or first line
    (JSON Lines), without reading its rows."""
    if not path.is_file():
        raise DataError(f"There is no file '{path}'. Check the path.")
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(path).schema_arrow.names)
        encoding = (
            "utf-8-sig" if options.encoding.lower() in ("utf-8", "utf8") else options.encoding
        )
        with path.open(newline="", encoding=encoding) as file:
            if fmt == "csv":
                header = next(csv.reader(file, delimiter=options.sep), [])
                _check_separator(path, header, options)
                return header
            import json

            line = next((line for line in file if line.strip()), "{}")
            first = json.loads(line)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise _open_error(path, fmt, exc) from None
    except Exception as exc:  # pyarrow's own error types for a corrupt Parquet file
        raise _open_error(path, fmt, exc) from None
    if not isinstance(first, dict):
        raise DataError(
            f"The first line of '{path}' is not a JSON object; JSON Lines hold one object per "
            'line, e.g. {"x": 1.5, "colour": "red"}.'
        )
    return [str(k) for k in first]


def _check_separator(path: Path, header: list[str], options: CsvOptions) -> None:
    """One column whose name holds another separator: the file is delimited otherwise."""
    if len(header) != 1:
        return
    for sep, name in ((";", "';'"), ("\t", "'\\t'"), ("|", "'|'"), (",", "','")):
        if sep != options.sep and sep in header[0]:
            raise DataError(
                f"'{path}' reads as one column, {header[0][:60]!r}, which holds {name}: its "
                f"values look separated by {name}. Pass --sep {name}."
            )


def source_rows(path: Path, fmt: str) -> int | None:
    """The number of rows when the file says so without being read (Parquet), else None."""
    if fmt != "parquet":
        return None
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def read_batches(
    path: Path,
    fmt: str,
    columns: Sequence[str],
    numeric: Sequence[str],
    chunk_rows: int,
    options: CsvOptions = CsvOptions(),
) -> Iterator[pa.RecordBatch]:
    """Chunks of about ``chunk_rows`` rows of ``columns``, in file order.

    Args:
        numeric: the columns a CSV is parsed as float64 (the numeric features); every other CSV
            column is read as text.
    """
    if fmt == "parquet":
        yield from _parquet_batches(path, columns, chunk_rows)
    elif fmt == "csv":
        yield from _csv_batches(path, columns, numeric, chunk_rows, options)
    else:
        yield from _jsonl_batches(path, columns, chunk_rows)


def _parquet_batches(path: Path, columns: Sequence[str], chunk_rows: int) -> Iterator[Any]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
        yield from file.iter_batches(batch_size=chunk_rows, columns=list(columns))
    except (OSError, ValueError) as exc:
        raise _open_error(path, "parquet", exc) from None


def _block_size(path: Path, chunk_rows: int) -> int:
    """Bytes per CSV block for about ``chunk_rows`` rows (at most 4 MB), from the first lines'
    length."""
    with path.open("rb") as file:
        head = file.read(_SNIFF_BYTES)
    lines = max(1, head.count(b"\n") - 1)  # the header is not a row
    per_row = max(1, len(head) // lines)
    return max(per_row, min(chunk_rows * per_row, _MAX_BLOCK))


def _csv_reader(
    path: Path, columns: Sequence[str], numeric: Sequence[str], block_size: int, options: CsvOptions
) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    types = {name: pa.float64() if name in numeric else pa.string() for name in columns}
    return pcsv.open_csv(
        path,
        read_options=pcsv.ReadOptions(block_size=block_size, encoding=options.encoding),
        parse_options=pcsv.ParseOptions(delimiter=options.sep),
        convert_options=pcsv.ConvertOptions(
            include_columns=list(columns),
            column_types=types,
            null_values=_NULLS,
            strings_can_be_null=True,  # an empty cell is missing, quoted or not, as in pandas
        ),
    )


def _csv_batches(
    path: Path,
    columns: Sequence[str],
    numeric: Sequence[str],
    chunk_rows: int,
    options: CsvOptions,
) -> Iterator[Any]:
    """The CSV's chunks; on a value the fast float parse refuses, the rest of the file again
    with every column as text, from the first row not yet yielded."""
    import pyarrow as pa

    block = _block_size(path, chunk_rows)
    done = 0
    try:
        for batch in _csv_reader(path, columns, numeric, block, options):
            done += batch.num_rows
            yield batch
        return
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        if "conversion error" not in str(exc):
            raise _open_error(path, "csv", exc) from None
    skip = done  # the slow path: text columns, checked by the caller with row numbers
    try:
        for batch in _csv_reader(path, columns, (), block, options):
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                continue
            yield batch.slice(skip)
            skip = 0
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise _open_error(path, "csv", exc) from None


def _jsonl_batches(path: Path, columns: Sequence[str], chunk_rows: int) -> Iterator[Any]:
    import pandas as pd

    try:
        reader = pd.read_json(
            path,
            lines=True,
            chunksize=chunk_rows,
            dtype=False,  # JSON's own types, no date guessing
        )
        with reader:
            for frame in reader:
                yield _frame_batch(frame, columns)
    except ValueError as exc:
        raise _open_error(path, "jsonl", exc) from None


def _frame_batch(frame: Any, columns: Sequence[str]) -> Any:
    """A pandas chunk as a record batch: each column in its own Arrow type, a column of mixed
    types as text (None where missing), a column absent from these lines all null."""
    import pyarrow as pa

    arrays = []
    for name in columns:
        if name not in frame.columns:
            arrays.append(pa.nulls(len(frame)))
            continue
        series = frame[name]
        try:
            arrays.append(pa.array(series, from_pandas=True))
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            present = series.notna()
            arrays.append(
                pa.array([str(v) if p else None for v, p in zip(series, present, strict=True)])
            )
    return pa.RecordBatch.from_arrays(arrays, names=list(columns))


# -- writing ---------------------------------------------------------------------------------


class BatchWriter:
    """Writes tables of predictions chunk by chunk to a binary file in one format.

    Every chunk keeps the first chunk's column types (Parquet needs one schema per file); lists
    of labels are joined with ``|`` in a CSV, which has no lists.
    """

    def __init__(self, sink: IO[bytes], fmt: str) -> None:
        self.sink = sink
        self.fmt = fmt
        self.schema: Any = None
        self._writer: Any = None

    def write(self, table: pa.Table) -> None:
        import pyarrow as pa

        if self.fmt == "csv":
            table = _flat_lists(table)
        if self.schema is None:
            self.schema = table.schema
            self._open()
        elif not table.schema.equals(self.schema):
            try:
                table = table.cast(self.schema)
            except (pa.ArrowException, ValueError) as exc:
                raise DataError(
                    f"A column changes type within the file ({exc}); every row of a column "
                    "must be read as one type. Make the column's values consistent."
                ) from None
        if self.fmt == "jsonl":
            self._write_jsonl(table)
        else:
            self._writer.write_table(table)

    def _open(self) -> None:
        if self.fmt == "csv":
            import pyarrow.csv as pcsv

            self._writer = pcsv.CSVWriter(self.sink, self.schema)
        elif self.fmt == "parquet":
            import pyarrow.parquet as pq

            self._writer = pq.ParquetWriter(self.sink, self.schema)

    def _write_jsonl(self, table: pa.Table) -> None:
        frame = table.to_pandas(maps_as_pydicts="strict")
        if not len(frame):
            return
        text = frame.to_json(orient="records", lines=True, double_precision=15, force_ascii=False)
        self.sink.write(text.rstrip("\n").encode() + b"\n")

    def close(self) -> None:
        """Finish the file (a CSV with no rows still gets its header)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _flat_lists(table: pa.Table) -> pa.Table:
    """List columns (sets of labels) as text joined with ``|``, for a CSV."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for i, field in enumerate(table.schema):
        if pa.types.is_list(field.type) or pa.types.is_large_list(field.type):
            texts = pc.cast(table.column(i), pa.list_(pa.string()))
            table = table.set_column(i, field.name, pc.binary_join(texts, "|"))
    return table


@contextlib.contextmanager
def atomic_output(
    out: Path | None, stream: Callable[[], IO[bytes]]
) -> Iterator[tuple[IO[bytes], Callable[[], None]]]:
    """A binary file to write the output to, and a ``commit`` function.

    For a path: a temp file beside it, fsynced and renamed over ``out`` on ``commit()``;
    removed if the block ends without a commit (an error, Ctrl-C), so ``out`` is either the
    old file or the complete new one. For no path: ``stream()`` (stdout), written as it goes.
    """
    if out is None:
        sink = stream()
        yield sink, sink.flush
        return
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"The output folder '{folder}' does not exist; create it first.")
    fd, temp = tempfile.mkstemp(prefix=f".{out.name[:100]}.", suffix=".tmp", dir=folder)
    committed = False
    file = os.fdopen(fd, "wb")

    def commit() -> None:
        nonlocal committed
        file.flush()
        os.fsync(file.fileno())
        file.close()
        os.replace(temp, out)
        committed = True

    try:
        yield file, commit
    finally:
        if not committed:
            file.close()
            with contextlib.suppress(OSError):
                os.unlink(temp)


def null_mask(array: Any) -> Any:
    """Where an Arrow array is null (NaN counts as missing), as a numpy bool array."""
    import numpy as np

    return np.asarray(array.is_null(nan_is_null=True).to_numpy(zero_copy_only=False), dtype=bool)


def category_lookup(values: Sequence[Any], known: Mapping[str, int]) -> list[str]:
    """Each distinct raw value as the category string the preprocessor matches: numbers as
    :func:`~danlu.data.category_str` writes them, and text that reads as a known number
    (``'1.0'`` in a CSV for a category ``'1'`` learned from numbers) as that category."""
    from danlu.data._schema import category_str

    out = []
    for value in values:
        text = category_str(value)
        if text not in known and isinstance(value, str):
            try:
                number = category_str(float(value))
            except ValueError:
                number = text
            text = number if number in known else text
        out.append(text)
    return out
