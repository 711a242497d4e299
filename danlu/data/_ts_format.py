"""A reader for the ``.ts`` files of the UCR/UEA time-series classification archive.

A ``.ts`` file is a header of ``@key value`` lines (``@problemName``, ``@univariate``,
``@dimensions``, ``@seriesLength``, ``@classLabel true 1 2`` ...), ``#`` comments, then ``@data``
and one example per line: each dimension's values comma-separated, dimensions separated by ``:``,
the class label last (``0.1,0.2,0.3:1.0,0.9,0.8:walking``). ``?`` is a missing value.

Only what danlu's sequence models take is read: series of one length, without time stamps.
:func:`ts_frame` lays an example out as one flat row, dimension by dimension
(``d0_t0 … d0_t{L-1}, d1_t0 …``; ``t0 …`` for one dimension), so that the row viewed as
``(channels, length)`` is the series.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from danlu.errors import DataError
from danlu.types import StrPath

__all__ = ["TsData", "read_ts", "ts_columns", "ts_frame"]


@dataclass(frozen=True)
class TsData:
    """The examples of one ``.ts`` file.

    Attributes:
        values: ``(examples, dimensions, length)`` float64; NaN where the file has ``?``.
        labels: one class label per example, as written in the file.
        problem: the ``@problemName``, or the file's stem when absent.
        class_labels: the labels the header declares (``@classLabel true ...``), else ``()``.
    """

    values: np.ndarray
    labels: tuple[str, ...]
    problem: str
    class_labels: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[int, int]:
        """``(dimensions, length)`` of one example."""
        return int(self.values.shape[1]), int(self.values.shape[2])


def _fail(path: Path, line: int, problem: str) -> DataError:
    return DataError(f"'{path}' line {line}: {problem}")


def _number(text: str, path: Path, line: int) -> float:
    text = text.strip()
    if text in ("?", "NaN", "nan", ""):
        return float("nan")
    try:
        return float(text)
    except ValueError:
        raise _fail(
            path, line, f"'{text[:30]}' is not a number (nor '?' for a missing value)."
        ) from None


def read_ts(path: StrPath) -> TsData:
    """Read a ``.ts`` file of equal-length series with class labels.

    Raises:
        DataError: the file is missing, has no ``@data`` section or no examples, declares time
            stamps or unequal lengths, or a line's dimensions, length, values or label do not
            agree with the header and the first example.

    Example:
        >>> import tempfile
        >>> text = "@problemName Toy\\n@univariate true\\n@classLabel true a b\\n@data\\n1,2,3:a\\n4,5,6:b\\n"
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = (Path(d) / "toy.ts").write_text(text)
        ...     ts = read_ts(Path(d) / "toy.ts")
        >>> ts.values.shape, ts.labels, ts.problem
        ((2, 1, 3), ('a', 'b'), 'Toy')
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"The .ts file '{path}' does not exist.")
    header: dict[str, str] = {}
    rows: list[np.ndarray] = []
    labels: list[str] = []
    in_data = False
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                if not line.startswith("@"):
                    raise _fail(path, number, "expected a '@key value' header line before @data.")
                key, _, value = line[1:].partition(" ")
                key = key.lower()
                if key == "data":
                    in_data = True
                    _check_header(header, path, number)
                else:
                    header[key] = value.strip()
                continue
            *dims, label = line.split(":")
            if not dims:
                raise _fail(path, number, "an example needs its values, ':' and a class label.")
            series = [[_number(v, path, number) for v in d.split(",")] for d in dims]
            lengths = {len(s) for s in series}
            if len(lengths) != 1:
                raise _fail(path, number, f"dimensions of different lengths {sorted(lengths)}.")
            example = np.asarray(series, dtype=np.float64)  # (dimensions, length)
            if rows and example.shape != rows[0].shape:
                raise _fail(
                    path, number, f"an example of shape {example.shape} (dimensions, length) "
                    f"after examples of shape {rows[0].shape}; only equal-length series are read.",
                )  # fmt: skip
            rows.append(example)
            labels.append(label.strip())
    if not in_data:
        raise DataError(f"'{path}' has no @data line: it is not a .ts file.")
    if not rows:
        raise DataError(f"'{path}' has no examples after @data.")
    values = np.stack(rows)
    _check_declared(header, values.shape, path)
    declared = header.get("classlabel", "").split()
    class_labels = tuple(declared[1:]) if declared[:1] == ["true"] else ()
    unknown = sorted(set(labels) - set(class_labels)) if class_labels else []
    if unknown:
        raise DataError(
            f"'{path}': label(s) {unknown[:5]} are not among the declared @classLabel "
            f"{list(class_labels)}."
        )
    return TsData(values, tuple(labels), header.get("problemname") or path.stem, class_labels)


def _check_header(header: dict[str, str], path: Path, line: int) -> None:
    if header.get("timestamps", "false").lower() == "true":
        raise _fail(path, line, "@timeStamps true is not supported; give plain values.")
    if header.get("equallength", "true").lower() == "false":
        raise _fail(path, line, "@equalLength false: only series of one length are read.")
    if header.get("classlabel", "true").split()[:1] == ["false"]:
        raise _fail(path, line, "@classLabel false: the examples have no class to learn.")


def _check_declared(header: dict[str, str], shape: tuple[int, ...], path: Path) -> None:
    """The read shape agrees with ``@dimensions``, ``@univariate`` and ``@seriesLength``."""
    dims, length = shape[1], shape[2]
    expected = {
        "dimensions": header.get("dimensions"),
        "serieslength": header.get("serieslength"),
    }
    if header.get("univariate", "").lower() == "true":
        expected["dimensions"] = expected["dimensions"] or "1"
    for key, found in (("dimensions", dims), ("serieslength", length)):
        value = expected[key]
        if value is not None and value.isdigit() and int(value) != found:
            raise DataError(
                f"'{path}': the header declares @{key} {value} but the examples have {found}."
            )


def ts_columns(dimensions: int, length: int) -> list[str]:
    """Column names of a flattened example: ``t0 …`` for one dimension, else ``d0_t0 …``.

    Example:
        >>> ts_columns(1, 3), ts_columns(2, 2)
        (['t0', 't1', 't2'], ['d0_t0', 'd0_t1', 'd1_t0', 'd1_t1'])
    """
    if dimensions == 1:
        return [f"t{i}" for i in range(length)]
    return [f"d{d}_t{i}" for d in range(dimensions) for i in range(length)]


def ts_frame(data: TsData, target: str = "target") -> pd.DataFrame:
    """One flat row per example (dimension by dimension) and the label in ``target``.

    Labels that are all integers (the UCR archive's ``1``, ``2`` …) become integers.
    """
    n, dims, length = data.values.shape
    frame = pd.DataFrame(data.values.reshape(n, dims * length), columns=ts_columns(dims, length))
    labels = pd.Series(data.labels)
    if all(label.lstrip("-").isdigit() for label in data.labels):
        labels = labels.astype("int64")
    frame[target] = labels.to_numpy()
    return frame
