"""Reading raw cell values: plain scalars, numbers, sorted labels, and how errors point at them.

The bottom of the data layer: the schema, the target kinds and the preprocessor all read cells
through these, so every module parses a number or names a row the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from danlu.errors import DataError

__all__ = [
    "bad_examples",
    "coerce_numbers",
    "first_row",
    "numeric_values",
    "preview",
    "sort_labels",
    "sorted_labels",
    "to_plain",
    "unreadable",
]


def to_plain(value: Any) -> Any:
    """A numpy scalar as the matching Python scalar (JSON-serialisable); other values unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def preview(names: Sequence[str], limit: int = 20) -> str:
    """``a, b, c`` — or the first ``limit`` names and how many more."""
    shown = ", ".join(f"'{n}'" for n in list(names)[:limit])
    more = len(names) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def first_row(mask: np.ndarray) -> int:
    """The 1-based number of the first True row of ``mask`` (1 = the first data row)."""
    return int(np.flatnonzero(mask)[0]) + 1


def sort_labels(labels: Iterable[Any]) -> tuple[Any, ...]:
    """Distinct labels, sorted (by their string form when the types do not compare).

    Example:
        >>> sort_labels(["b", "a", "b"]), sort_labels([2, "a"])
        (('a', 'b'), (2, 'a'))
    """
    distinct = set(labels)
    try:
        return tuple(sorted(distinct))
    except TypeError:
        return tuple(sorted(distinct, key=str))


def sorted_labels(values: Sequence[Any] | np.ndarray | pd.Series) -> tuple[Any, ...]:
    """The distinct non-missing labels, sorted (by string when the types do not compare)."""
    return sort_labels(to_plain(v) for v in pd.Series(values).dropna().unique())


ROWS_NOTE = "row 1 = the first data row, line 2 of a CSV file with a header"


def bad_examples(column: pd.Series, bad: np.ndarray, limit: int = 5) -> str:
    """``'?' at row 3, 'n/a' at row 17`` for the first ``limit`` flagged values (1-based rows)."""
    rows = np.flatnonzero(bad)
    shown = ", ".join(f"{column.iloc[i]!r} at row {i + 1}" for i in rows[:limit])
    more = len(rows) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def unreadable(column: pd.Series, bad: np.ndarray, what: str, kind: str) -> None:
    """Raise the error for values of a ``kind`` column that are not ``what`` (a number, a
    date): which, at which rows, and the two fixes."""
    name = column.name
    raise DataError(
        f"{kind.capitalize()} column '{name}' holds {int(bad.sum())} value(s) that are not "
        f"{what}: {bad_examples(column, bad)} ({ROWS_NOTE}). Clean those values, or read them "
        f"as missing with data.features: {{{name}: {{kind: {kind}, errors: nan}}}} (they are "
        f"then filled by data.prepare.missing); data.features: {{{name}: categorical}} keeps "
        "the values as categories."
    )


def coerce_numbers(values: pd.Series | Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(float64 numbers with NaN, bad)``: ``bad`` marks values present but not numbers."""
    column = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    if pd.api.types.is_bool_dtype(column.dtype):
        numbers = column.astype("float64").to_numpy(dtype="float64", na_value=np.nan)
        return numbers, np.zeros(len(column), dtype=bool)
    converted = pd.to_numeric(column, errors="coerce")
    bad = converted.isna().to_numpy() & column.notna().to_numpy()
    return converted.to_numpy(dtype="float64", na_value=np.nan), bad


def numeric_values(column: pd.Series, errors: str = "raise") -> np.ndarray:
    """A column as float64 with NaN for missing values.

    ``errors='nan'`` reads a value that is not a number as missing; infinite numbers are always
    an error (an infinity is not a missing value).

    Raises:
        DataError: a value is not a number (``errors='raise'``), or is infinite.
    """
    name = column.name
    values, bad = coerce_numbers(column)
    if bad.any() and errors == "raise":
        unreadable(column, bad, "numbers", "numeric")
    infinite = np.isinf(values)
    if infinite.any():
        raise DataError(
            f"Numeric column '{name}' holds {int(infinite.sum())} infinite value(s), the first at "
            f"row {first_row(infinite)}. Replace them with finite numbers or leave them empty."
        )
    return values
