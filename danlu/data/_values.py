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

__all__ = ["first_row", "numeric_values", "preview", "sort_labels", "sorted_labels", "to_plain"]


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


def numeric_values(column: pd.Series) -> np.ndarray:
    """A column as float64 with NaN for missing values.

    Raises:
        DataError: a value is not a number, or is infinite.
    """
    name = column.name
    if pd.api.types.is_bool_dtype(column.dtype):
        values = column.astype("float64").to_numpy(dtype="float64", na_value=np.nan)
    else:
        converted = pd.to_numeric(column, errors="coerce")
        bad = converted.isna().to_numpy() & column.notna().to_numpy()
        if bad.any():
            raise DataError(
                f"Numeric column '{name}' holds {int(bad.sum())} value(s) that are not numbers, "
                f"e.g. {column[bad].iloc[0]!r} at row {first_row(bad)}. Fix the data or set "
                f"data.features: {{{name}: categorical}}."
            )
        values = converted.to_numpy(dtype="float64", na_value=np.nan)
    infinite = np.isinf(values)
    if infinite.any():
        raise DataError(
            f"Numeric column '{name}' holds {int(infinite.sum())} infinite value(s), the first at "
            f"row {first_row(infinite)}. Replace them with finite numbers or leave them empty."
        )
    return values
