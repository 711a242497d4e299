"""Parquet files and folders: find the files, check that they agree, list their row groups.

A Parquet *source* is one ``.parquet`` file or a folder of them. In a folder only the files whose
name ends in ``.parquet`` are read, sorted by name; names starting with ``.`` or ``_`` are skipped
(Spark and Hive write ``_SUCCESS`` and ``.crc`` files beside the data). Every file must hold the
same columns with the same types: a column that is ``int64`` in one file and ``string`` in the
next would silently change meaning half-way through training, so it is an error naming both.

:func:`parquet_layout` reads only the files' footers (the metadata), never their rows, and numbers
every row globally (file by file, row group by row group) so that a row keeps its number whatever
order the row groups are later read in.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from danlu.data._values import preview
from danlu.errors import DataError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

__all__ = [
    "ParquetLayout",
    "RowGroup",
    "iter_chunks",
    "parquet_layout",
    "read_parquet",
]


@dataclass(frozen=True)
class RowGroup:
    """One row group of one file.

    Attributes:
        file: the file holding it.
        index: its index within the file.
        rows: its number of rows.
        start: the global number of its first row (0-based, counting over all files in order).
    """

    file: Path
    index: int
    rows: int
    start: int


@dataclass(frozen=True)
class ParquetLayout:
    """The files of a Parquet source, their common schema and their row groups.

    Attributes:
        source: the source string as given.
        files: the data files, sorted by name.
        schema: the common Arrow schema (pandas index columns left out).
        row_groups: every row group of every file, in file order.
    """

    source: str
    files: tuple[Path, ...]
    schema: pa.Schema
    row_groups: tuple[RowGroup, ...]

    @property
    def rows(self) -> int:
        """Total number of rows (from the metadata)."""
        return sum(g.rows for g in self.row_groups)

    @property
    def columns(self) -> list[str]:
        """The column names, in schema order."""
        return list(self.schema.names)


def _data_files(source: str) -> tuple[Path, ...]:
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"Parquet source '{source}' does not exist (looked in {path.resolve()}). Check "
            "data.source; relative paths are read from the current directory."
        )
    if path.is_file():
        if path.suffix.lower() != ".parquet":
            raise DataError(
                f"'{source}' is not a Parquet file (its suffix is '{path.suffix or '(none)'}'). "
                "Streaming (data.stream) reads a .parquet file or a folder of .parquet files."
            )
        return (path,)
    files = tuple(
        sorted(
            p
            for p in path.iterdir()
            if p.suffix.lower() == ".parquet" and p.is_file() and not p.name.startswith((".", "_"))
        )
    )
    if not files:
        others = sorted(p.name for p in path.iterdir())
        raise DataError(
            f"Folder '{source}' holds no .parquet files (it holds {preview(others) or 'nothing'}). "
            "Point data.source at a folder of .parquet files or at one file."
        )
    return files


def _open(file: Path) -> pq.ParquetFile:
    import pyarrow.parquet as pq

    if not os.access(file, os.R_OK):
        raise DataError(
            f"Cannot read Parquet file '{file}': permission denied. Give this user read access."
        )
    try:
        return pq.ParquetFile(file)
    except Exception as exc:  # pyarrow raises its own error types for corrupt files
        raise DataError(
            f"Cannot read Parquet file '{file}': {type(exc).__name__}: {exc}. Check that the file "
            "is complete and really Parquet, or move it out of the folder."
        ) from exc


def _data_schema(handle: pq.ParquetFile) -> pa.Schema:
    """The file's Arrow schema without the index columns pandas may have written."""
    schema = handle.schema_arrow
    keep = [f for f in schema if not f.name.startswith("__index_level_")]
    import pyarrow as pa

    return pa.schema(keep)


def parquet_layout(source: str) -> ParquetLayout:
    """Find and check the files of a Parquet source and list their row groups (footers only).

    Args:
        source: a ``.parquet`` file or a folder of them.

    Raises:
        DataError: the path does not exist, holds no Parquet file, a file cannot be read, or the
            files disagree on the columns or on a column's type (the message names both files).

    Example:
        >>> # layout = parquet_layout("data/events/")
        >>> # layout.rows, len(layout.files), layout.columns[:3]
    """
    files = _data_files(source)
    groups: list[RowGroup] = []
    schema: pa.Schema | None = None
    first = files[0]
    start = 0
    for file in files:
        handle = _open(file)
        file_schema = _data_schema(handle)
        if schema is None:
            schema = file_schema
        else:
            _check_same(schema, first, file_schema, file)
        meta = handle.metadata
        for i in range(meta.num_row_groups):
            rows = meta.row_group(i).num_rows
            if rows:
                groups.append(RowGroup(file, i, rows, start))
                start += rows
    assert schema is not None
    if start == 0:
        raise DataError(
            f"'{source}' has zero rows (columns: {preview(schema.names)}). It needs data rows."
        )
    if len(set(schema.names)) != len(schema.names):
        dupes = sorted({c for c in schema.names if schema.names.count(c) > 1})
        raise DataError(
            f"'{source}' has duplicate column names: {preview(dupes)}. Rename them so each "
            "column name is unique."
        )
    return ParquetLayout(source, files, schema, tuple(groups))


def _check_same(expected: pa.Schema, first: Path, schema: pa.Schema, file: Path) -> None:
    import pyarrow as pa

    missing = [n for n in expected.names if n not in schema.names]
    extra = [n for n in schema.names if n not in expected.names]
    if missing or extra:
        what = "; ".join(
            part
            for part in (
                f"it lacks {preview(missing)}" if missing else "",
                f"it has extra {preview(extra)}" if extra else "",
            )
            if part
        )
        raise DataError(
            f"Parquet file '{file}' does not have the columns of '{first}': {what}. Every file "
            "of a Parquet folder must hold the same columns; rewrite it or move it out."
        )
    for name in expected.names:
        a, b = expected.field(name).type, schema.field(name).type
        # A column that is entirely empty in one file is written as type null: it fits any type.
        if a != b and not pa.types.is_null(a) and not pa.types.is_null(b):
            raise DataError(
                f"Column '{name}' changes type between Parquet files: {a} in '{first}' but {b} "
                f"in '{file}'. Every file must give a column the same type; rewrite '{file}' "
                f"with '{name}' cast to {a} (or all files to one type)."
            )


def read_parquet(source: str) -> pd.DataFrame:
    """Read a whole Parquet file or folder into one frame (files in name order).

    Raises:
        DataError: as :func:`parquet_layout`, or a file cannot be decoded.

    Example:
        >>> # frame = read_parquet("data/events/")
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    layout = parquet_layout(source)
    tables = []
    for file in layout.files:
        try:
            tables.append(pq.read_table(file, columns=layout.columns))
        except Exception as exc:  # pyarrow raises its own error types for corrupt files
            raise DataError(
                f"Cannot read Parquet file '{file}': {type(exc).__name__}: {exc}. Check that the "
                "file is complete."
            ) from exc
    table = pa.concat_tables(tables, promote_options="default")
    return table.to_pandas()


def iter_chunks(
    groups: Sequence[RowGroup], columns: Sequence[str], chunk_rows: int
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Read ``groups`` in the order given, in record batches of at most ``chunk_rows`` rows.

    Yields ``(first_row, batch)``: the global number of the batch's first row and the batch.
    Only one file is open at a time.

    Raises:
        DataError: a file cannot be opened or decoded (the message names it).

    Example:
        >>> # for first, batch in iter_chunks(layout.row_groups, layout.columns, 65_536): ...
    """
    current: tuple[Path, pq.ParquetFile] | None = None
    for group in groups:
        if current is None or current[0] != group.file:
            current = (group.file, _open(group.file))
        first = group.start
        try:
            batches = current[1].iter_batches(
                batch_size=chunk_rows, row_groups=[group.index], columns=list(columns)
            )
            for batch in batches:
                yield first, batch
                first += batch.num_rows
        except DataError:
            raise
        except Exception as exc:  # pyarrow raises its own error types for corrupt files
            raise DataError(
                f"Cannot read row group {group.index} of Parquet file '{group.file}': "
                f"{type(exc).__name__}: {exc}. Check that the file is complete."
            ) from exc
