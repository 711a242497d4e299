"""Dates and times as features: parsing, and the calendar features a date column expands into.

A ``datetime`` feature is read as seconds since 1970-01-01 UTC (float64, NaN where missing), so
that the preprocessor fills and stores it like a number; it is then expanded into calendar
features — year, month, day, day of week (Monday = 0), day of year, and hour and minute when the
training dates carry a time of day — plus the days elapsed since the earliest training date. The
expansion is plain numpy on the seconds, the same in training, streaming and serving.

Strings parse with the format the training column was written in (``%d/%m/%Y`` ...), decided
once when the preprocessor is fitted and saved with it, so ``01/02/2024`` means the same day in a
request as in training; ISO 8601 (``2024-05-01``, ``2024-05-01T12:30:00+02:00``) is always
understood too. Times with an offset are converted to UTC; times without one are taken as UTC.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "DATE_PARTS",
    "ISO",
    "TIME_PARTS",
    "column_format",
    "date_parts",
    "datetime_seconds",
    "guess_date_format",
    "parse_dates",
]

ISO = "ISO8601"
_SAMPLE = 200  # distinct values a format is chosen on
DATE_PARTS = ("year", "month", "day", "weekday", "yearday")
TIME_PARTS = ("hour", "minute")
ELAPSED = "days"  # days since the earliest training date
DAY = 86_400.0

# A string that may be a date: digits split by - / . (2024-05-01, 1/5/24), or a month name
# beside a day and year (May 1, 2024; 1 May 2024). Bare numbers ("2015", "3") never are.
_DATE_LIKE = re.compile(
    r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}|[A-Za-z]{3,9}\.? \d{1,2},? \d{2,4}|\d{1,2} [A-Za-z]{3,9}\.? \d{2,4}"
)


def guess_date_format(values: Sequence[str]) -> str | None:
    """The format the date strings ``values`` are written in (``ISO8601`` for ISO dates), or
    None when the first of them does not look like a date.

    Example:
        >>> [guess_date_format([v]) for v in ("2024-05-01", "13/02/2024", "2015")]
        ['ISO8601', '%d/%m/%Y', None]
    """
    from pandas.tseries.api import guess_datetime_format

    texts = [str(v).strip() for v in list(values)[:_SAMPLE]]
    if not texts or not _DATE_LIKE.search(texts[0]) or len(texts[0]) > 40:
        return None
    with warnings.catch_warnings():  # "Parsing dates in %d/%m/%Y format when dayfirst=False"
        warnings.simplefilter("ignore")
        guesses = {guess_datetime_format(texts[0], dayfirst=first) for first in (False, True)}
    candidates = sorted(ISO if g.startswith("%Y-%m-%d") else g for g in guesses if g)
    if len(candidates) < 2:
        return candidates[0] if candidates else None
    # 01/02/2024 reads either way: the format that reads most of the sample wins; on a tie ISO
    # 8601, else month first (pandas' default)
    return min(candidates, key=lambda fmt: (int(parse_dates(texts, fmt)[1].sum()), _rank(fmt)))


def _rank(fmt: str) -> tuple[bool, bool]:
    """Tie-break between formats: ISO 8601 first, then month before day."""
    return fmt != ISO, 0 <= fmt.find("%d") < fmt.find("%m")


def column_format(column: pd.Series) -> str:
    """The format of a date column: that of its first string (:func:`guess_date_format`),
    ``mixed`` (each value on its own) when none is recognised; ISO 8601 for native dates."""
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        return ISO
    present = column.dropna()
    if present.empty:
        return ISO
    return guess_date_format(present.astype(str).unique()[:_SAMPLE]) or "mixed"


def parse_dates(values: pd.Series | Sequence[Any], fmt: str = ISO) -> tuple[np.ndarray, np.ndarray]:
    """Dates, date-times, date strings or nulls as ``(seconds, bad)``.

    ``seconds``: float64 seconds since 1970-01-01 UTC, NaN where missing or unreadable; ``bad``:
    where a value is present but is not a date in format ``fmt`` nor in ISO 8601.
    """
    column = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    present = column.notna().to_numpy()
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        parsed = pd.to_datetime(column, utc=True)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas' format-inference chatter
            parsed = pd.to_datetime(column, format=fmt, errors="coerce", utc=True)
            failed = parsed.isna().to_numpy() & present
            if failed.any() and fmt != ISO:  # ISO 8601 is understood whatever the format
                retry = pd.to_datetime(column[failed], format=ISO, errors="coerce", utc=True)
                parsed = parsed.copy()
                parsed[failed] = retry
    seconds = _seconds(parsed)
    return seconds, present & np.isnan(seconds)


def _seconds(parsed: pd.Series) -> np.ndarray:
    """UTC timestamps → float64 seconds since the epoch, NaN for NaT."""
    naive = parsed.dt.tz_localize(None) if parsed.dt.tz is not None else parsed
    stamps = naive.to_numpy(dtype="datetime64[ms]")
    out = stamps.astype(np.int64).astype(np.float64) / 1000.0
    out[np.isnat(stamps)] = np.nan
    return out


def datetime_seconds(column: pd.Series, fmt: str = ISO, errors: str = "raise") -> np.ndarray:
    """A date column as float64 seconds since the epoch, NaN where missing.

    Raises:
        DataError: with ``errors='raise'``, a value that is not a date (naming its row).
    """
    from danlu.data._values import unreadable

    seconds, bad = parse_dates(column, fmt)
    if bad.any() and errors == "raise":
        unreadable(column, bad, "dates", "datetime")
    return seconds


def date_parts(seconds: np.ndarray, parts: Sequence[str], origin: float) -> dict[str, np.ndarray]:
    """The calendar features of timestamps (seconds since the epoch, no NaN): part → float64.

    Example:
        >>> s = np.array([0.0, 86_400.0 * 59 + 3_600.0 * 13.5])  # 1970-01-01, 1970-03-01 13:30
        >>> {k: v.tolist() for k, v in date_parts(s, ("month", "weekday", "hour", "days"),
        ...                                        0.0).items()}
        {'month': [1.0, 3.0], 'weekday': [3.0, 6.0], 'hour': [0.0, 13.0], 'days': [0.0, 59.5625]}
    """
    missing = np.isnan(seconds)
    seconds = np.where(missing, 0.0, seconds)  # NaN stays NaN in every part (set at the end)
    whole = np.floor(seconds / DAY)
    days = whole.astype("datetime64[D]")  # (n,)
    in_day = seconds - whole * DAY
    out: dict[str, np.ndarray] = {}
    for part in parts:
        value: Any
        if part == "year":
            value = days.astype("datetime64[Y]").astype(np.int64) + 1970
        elif part == "month":
            value = days.astype("datetime64[M]").astype(np.int64) % 12 + 1
        elif part == "day":
            value = (days - days.astype("datetime64[M]")).astype(np.int64) + 1
        elif part == "weekday":  # 1970-01-01 was a Thursday (3, with Monday = 0)
            value = (whole.astype(np.int64) + 3) % 7
        elif part == "yearday":
            value = (days - days.astype("datetime64[Y]")).astype(np.int64) + 1
        elif part == "hour":
            value = np.floor(in_day / 3600.0)
        elif part == "minute":
            value = np.floor(in_day % 3600.0 / 60.0)
        else:  # ELAPSED
            value = (seconds - origin) / DAY
        out[part] = np.where(missing, np.nan, np.asarray(value, dtype=np.float64))
    return out


def fit_parts(seconds: np.ndarray) -> tuple[tuple[str, ...], float]:
    """The calendar features a date column expands into, and its origin (earliest date).

    A part that does not vary over the training dates carries nothing and is left out: hour
    and minute unless the dates have a time of day, the day of monthly data. The days since
    the origin are always kept.

    Example:
        >>> monthly = np.array([0.0, 31.0, 59.0]) * DAY  # the 1st of Jan, Feb, Mar 1970
        >>> fit_parts(monthly)
        (('month', 'weekday', 'yearday', 'days'), 0.0)
    """
    present = seconds[~np.isnan(seconds)]
    origin = float(present.min()) if present.size else 0.0
    candidates = date_parts(present, (*DATE_PARTS, *TIME_PARTS), origin)
    varying = tuple(p for p, v in candidates.items() if v.size and np.ptp(v) > 0)
    return (*varying, ELAPSED), origin
