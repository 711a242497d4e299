"""What a column really holds: the kind inference behind :func:`~danlu.data.infer_kinds`.

Pandas reads a CSV column that is numeric but for a few junk strings (``?``, ``n/a``,
``12,5``) as text, a date column as text, and a column of names as text: read as categories they
become hundreds of one-hot columns. :func:`detect_kind` looks at the values instead of the dtype:

- mostly numbers, with a few junk values → ``numeric``, the junk read as missing
  (``errors: nan``), reported with its rows;
- mostly date strings (or a datetime dtype) → ``datetime``;
- long strings of several words, nearly all distinct → free text: ``text`` when the recipe's
  model reads text (``model.type: transformer`` or ``text_cnn``), else ``ignore``; reported;
- anything else that is not a number or a boolean → ``categorical``.

The result is a :class:`ColumnKind`: the kind's name (a ``str``, so it goes wherever a kind
goes) carrying how to read the column (``errors``) and a sentence for the quality report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from danlu.data._datetime import guess_date_format, parse_dates
from danlu.data._values import ROWS_NOTE, bad_examples, coerce_numbers, to_plain

__all__ = ["ColumnKind", "JunkRows", "detect_kind"]

DIRTY_SHARE = 0.05  # a numeric column may hold at most this share of junk values ...
DIRTY_DISTINCT = 5  # ... of at most this many distinct spellings
MIN_NUMBERS = 10  # and at least this many numbers
DATE_SHARE = 0.95  # a date column: at least this share of its values parse as dates
TEXT_DISTINCT = 20  # free text: at least this many distinct values,
TEXT_UNIQUE_SHARE = 0.5  # nearly one per row,
TEXT_WORDS = 3.0  # of this many words on average


class ColumnKind(str):
    """A feature kind (``numeric``...) with how to read the column and why it was chosen.

    It is a ``str`` equal to the kind's name, so kinds dicts keep working unchanged; the
    preprocessor reads ``errors`` and the quality report ``note`` and ``flag``.

    Example:
        >>> k = ColumnKind("numeric", errors="nan", note="2 junk values")
        >>> k == "numeric", k.errors
        (True, 'nan')
    """

    errors: str
    note: str
    flag: str

    def __new__(cls, kind: str, *, errors: str = "raise", note: str = "", flag: str = "") -> Any:
        self = super().__new__(cls, kind)
        self.errors, self.note, self.flag = errors, note, flag
        return self

    def __reduce__(self) -> Any:  # copies keep the options
        return (_column_kind, (str(self), self.errors, self.note, self.flag))


def _column_kind(kind: str, errors: str, note: str, flag: str) -> ColumnKind:
    return ColumnKind(kind, errors=errors, note=note, flag=flag)


def read_errors(kind: str) -> str:
    """How a kind reads values that do not parse: ``raise`` (default) or ``nan``."""
    return getattr(kind, "errors", "raise")


@dataclass(frozen=True)
class JunkRows:
    """Values of a mostly-numeric (or mostly-date) column that do not parse."""

    count: int
    examples: str  # "'?' at row 3, 'n/a' at row 17"


def _junk(column: pd.Series, bad: np.ndarray) -> JunkRows:
    return JunkRows(int(bad.sum()), bad_examples(column, bad))


def _uniques(values: pd.Series) -> tuple[pd.Series, np.ndarray] | None:
    """The distinct non-missing values and how many rows hold each; None when unhashable."""
    try:
        counts = values.value_counts(dropna=True)
    except TypeError:  # lists or dicts read from JSON
        return None
    return pd.Series(counts.index, dtype=object), counts.to_numpy(dtype=np.int64)


def _dirty_numeric(name: str, column: pd.Series, uniques: pd.Series, counts: np.ndarray) -> Any:
    _, bad_unique = coerce_numbers(uniques)
    junk_rows = int(counts[bad_unique].sum())
    rows = int(counts.sum())
    if not bad_unique.any() or bad_unique.all():
        return None
    if junk_rows > DIRTY_SHARE * rows or bad_unique.sum() > DIRTY_DISTINCT:
        return None
    if rows - junk_rows < MIN_NUMBERS:
        return None
    _, bad = coerce_numbers(column)
    junk = _junk(column, bad)
    note = (
        f"Column '{name}' holds numbers except for {junk.count} value(s) that are not: "
        f"{junk.examples} ({ROWS_NOTE}). It is read as numeric and those values as missing "
        f"(filled by data.prepare.missing). Clean them, or confirm with data.features: "
        f"{{{name}: {{kind: numeric, errors: nan}}}}; {{{name}: categorical}} keeps the text."
    )
    return ColumnKind("numeric", errors="nan", note=note, flag="dirty-numeric")


def _dates(name: str, column: pd.Series, uniques: pd.Series, counts: np.ndarray) -> Any:
    fmt = guess_date_format(uniques.astype(str).tolist())
    if fmt is None:
        return None
    _, bad_unique = parse_dates(uniques.astype(str), fmt)
    if counts[~bad_unique].sum() < DATE_SHARE * counts.sum():
        return None
    how = "calendar features and days since the earliest training date"
    if not bad_unique.any():
        return ColumnKind("datetime", note=f"Column '{name}' holds dates: read as {how}.")
    _, bad = parse_dates(column, fmt)
    junk = _junk(column, bad)
    note = (
        f"Column '{name}' holds dates except for {junk.count} value(s) that are not: "
        f"{junk.examples} ({ROWS_NOTE}). It is read as {how}, those values as missing. Clean "
        f"them, or confirm with data.features: {{{name}: {{kind: datetime, errors: nan}}}}."
    )
    return ColumnKind("datetime", errors="nan", note=note, flag="dirty-datetime")


def _free_text(name: str, uniques: pd.Series, counts: np.ndarray, text_models: bool) -> Any:
    distinct, rows = len(uniques), int(counts.sum())
    if distinct < TEXT_DISTINCT or distinct < TEXT_UNIQUE_SHARE * rows:
        return None
    words = uniques.astype(str).str.split().str.len().mean()
    if not words >= TEXT_WORDS:
        return None
    found = f"Column '{name}' looks like free text ({distinct} distinct values in {rows} rows, "
    if text_models:
        note = (
            f"{found}{words:.1f} words on average): it is a text feature, tokenized into "
            f"data.text.max_length token ids. Set data.features: {{{name}: ignore}} to leave it "
            f"out, or {{{name}: categorical}} to use it as categories."
        )
        return ColumnKind("text", note=note)
    note = (
        f"{found}{words:.1f} words on average); it is ignored rather than one-hot encoded into "
        f"{distinct} columns, because this recipe's model does not read text. Use a text "
        f"model (model.type: transformer, or text_cnn) to read it as a text feature, derive "
        f"short categories from it, or set data.features: {{{name}: categorical}} to use it "
        "anyway (frequency-encoded above data.prepare.max_categories)."
    )
    return ColumnKind("ignore", note=note, flag="free-text")


def detect_kind(column: pd.Series, name: str, *, text_models: bool = False) -> str:
    """The kind of a column whose dtype is not numeric or boolean (see the module doc).

    Returns ``datetime``, ``boolean``, ``categorical``, or a :class:`ColumnKind` with a note
    (dirty numbers, dates, free text: ``text`` when ``text_models``, else ``ignore``).
    """
    from danlu.data._schema import FALSE_TOKENS, TRUE_TOKENS

    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        return ColumnKind("datetime", note=f"Column '{name}' holds date-times ({column.dtype}).")
    values = column.dropna()
    found = _uniques(values)
    if found is None:
        return "categorical"
    uniques, counts = found
    tokens = {str(to_plain(v)).strip().lower() for v in uniques}
    if len(tokens) == 2 and len(tokens & TRUE_TOKENS) == 1 and len(tokens & FALSE_TOKENS) == 1:
        return "boolean"
    if uniques.empty:
        return "categorical"
    for guess in (
        _dirty_numeric(name, column, uniques, counts),
        _dates(name, column, uniques, counts),
        _free_text(name, uniques, counts, text_models),
    ):
        if guess is not None:
            return guess  # type: ignore[no-any-return]
    return "categorical"
