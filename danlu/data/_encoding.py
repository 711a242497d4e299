"""The column-level encoding the :class:`~danlu.data.Preprocessor` replays: raw values of each
feature kind as arrays, the encoded layout (which columns are numeric, one-hot or ordinal), the
dense matrix and category codes, and fitted scalers kept as plain floats."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler

from danlu.data._datetime import ISO, date_parts, datetime_seconds, parse_dates
from danlu.data._schema import (
    FALSE_TOKENS,
    TRUE_TOKENS,
    FeatureSchema,
    bool_token,
    category_str,
)
from danlu.data._values import first_row, to_plain
from danlu.errors import DataError
from danlu.logging import get_logger

logger = get_logger("danlu.data._preprocessor")


def _boolean_values(column: pd.Series) -> np.ndarray:
    """A boolean column as float64 0/1 with NaN for missing values."""
    if pd.api.types.is_bool_dtype(column.dtype):
        return column.astype("float64").to_numpy(dtype="float64", na_value=np.nan)
    out = np.full(len(column), np.nan)
    present = column.notna().to_numpy()
    tokens = [bool_token(v) for v in column[present]]
    unknown = [v for v, t in zip(column[present], tokens, strict=True) if t is None]
    if unknown:
        raise DataError(
            f"Boolean column '{column.name}' holds {unknown[0]!r}, which is not a true/false "
            "value. "
            f"Use one of {sorted(TRUE_TOKENS)} or {sorted(FALSE_TOKENS)}, or set data.features: "
            f"{{{column.name}: categorical}}."
        )
    out[present] = np.asarray(tokens, dtype="float64")
    return out


def _category_values(column: pd.Series) -> np.ndarray:
    """A categorical column as an object array of strings, None for missing values."""
    out = np.full(len(column), None, dtype=object)
    present = column.notna().to_numpy()
    out[present] = [category_str(v) for v in column[present]]
    return out


def _mode(values: np.ndarray) -> Any:
    """The most frequent value (the smallest one on ties); None when there are none."""
    present = pd.Series(values).dropna()
    if present.empty:
        return None
    return to_plain(present.mode().iloc[0])


@dataclass(frozen=True)
class _Layout:
    """Where the fitted preprocessor puts each feature in the encoded row (before a reducer).

    Numeric and boolean features ("dense") encode as ``(x - center) / scale`` in one column
    each (a boolean: centre 0, scale 1); categorical ones as one-hot columns or one ordinal code.
    """

    width: int  # encoded columns
    dense_names: tuple[str, ...]
    dense_cols: np.ndarray  # (dense,) int64: each dense feature's column
    center: np.ndarray  # (dense,) float64
    scale: np.ndarray  # (dense,) float64
    fill: np.ndarray  # (dense,) float64; NaN: no fill value (missing: drop)
    bound: float  # raw values below this in magnitude scale to within float32's range
    categorical: tuple[tuple[str, int, dict[str, int], str | None], ...]  # name, first column,
    # category → position, fill
    # features computed before encoding: ("datetime", name, parts, origin, fill seconds,
    # format, errors) and ("frequency", name, category → position, shares + [0], fill)
    derived: tuple[tuple[Any, ...], ...] = ()
    # text features: (name, first column, max_length): token ids, never scaled
    text: tuple[tuple[str, int, int], ...] = ()

    @classmethod
    def of(
        cls,
        schema: FeatureSchema,
        fill: Mapping[str, Any],
        center: Mapping[str, float],
        scale: Mapping[str, float],
        encode: str,
    ) -> _Layout:
        dense: list[tuple[str, int, float, float, float]] = []
        categorical = []
        derived: list[tuple[Any, ...]] = []
        text: list[tuple[str, int, int]] = []
        col = 0
        for f in schema.features:
            value = fill.get(f.name)
            if f.kind == "text":
                text.append((f.name, col, f.max_length))
                col += f.max_length
                continue
            if f.kind == "datetime":
                when = np.nan if value is None else float(value)
                derived.append(("datetime", f.name, f.parts, f.origin or 0.0, when,
                                f.date_format or ISO, f.errors))  # fmt: skip
                for part in f.parts:
                    name = f"{f.name}.{part}"
                    dense.append((name, col, center[name], scale[name], np.nan))
                    col += 1
                continue
            if f.frequency_encoded:
                index = {c: i for i, c in enumerate(f.categories)}
                shares = np.asarray([*f.frequencies, 0.0], dtype=np.float64)  # -1: unseen
                derived.append(("frequency", f.name, index, shares,
                                None if value is None else str(value)))  # fmt: skip
                dense.append((f.name, col, center[f.name], scale[f.name], np.nan))
                col += 1
                continue
            if f.kind == "categorical":
                index = {c: i for i, c in enumerate(f.categories)}
                categorical.append((f.name, col, index, None if value is None else str(value)))
                col += len(f.categories) if encode == "onehot" else 1
                continue
            numeric = f.kind == "numeric"
            dense.append(
                (
                    f.name,
                    col,
                    center[f.name] if numeric else 0.0,
                    scale[f.name] if numeric else 1.0,
                    np.nan if value is None else float(value),
                )
            )
            col += 1
        names, cols, centers, scales, fills = zip(*dense, strict=True) if dense else ((),) * 5
        centre_of = np.asarray(centers, dtype=np.float64)
        scale_of = np.asarray(scales, dtype=np.float64)
        # |x| < bound ⇒ |(x - center) / scale| < float32's largest value, with a margin of 2
        room = 0.5 * float(np.finfo(np.float32).max) * np.abs(scale_of) - np.abs(centre_of)
        return cls(
            width=col,
            dense_names=tuple(names),
            dense_cols=np.asarray(cols, dtype=np.int64),
            center=centre_of,
            scale=scale_of,
            fill=np.asarray(fills, dtype=np.float64),
            bound=float(room.min()) if len(room) else float("inf"),
            categorical=tuple(categorical),
            derived=tuple(derived),
            text=tuple(text),
        )


def frequency_values(codes: np.ndarray, shares: Sequence[float]) -> np.ndarray:
    """Category codes (-1: unseen) → the share of training rows of each, 0 for unseen."""
    table = np.asarray([*shares, 0.0], dtype=np.float64)
    return table[codes]


def derive_columns(
    columns: Mapping[str, Sequence[Any] | np.ndarray], layout: _Layout
) -> dict[str, Any]:
    """``columns`` with the features computed before encoding added: each date's calendar
    features (``date.year`` ...) and each frequency-encoded category's share (under its own
    name). Dates may come as seconds (:meth:`Preprocessor.read_column`) or as raw values
    (strings, as a server receives them)."""
    out = dict(columns)
    for item in layout.derived:
        if item[0] == "datetime":
            _, name, parts, origin, fill, fmt, errors = item
            seconds = _date_seconds(columns[name], name, fmt, errors)
            missing = np.isnan(seconds)
            if missing.any():
                if np.isnan(fill):
                    no_fill(name, missing)
                seconds = np.where(missing, fill, seconds)
            out.update({f"{name}.{p}": v for p, v in date_parts(seconds, parts, origin).items()})
        else:
            _, name, index, shares, fill = item
            out[name] = shares[_category_codes(columns[name], index, fill, name)]
    return out


def _date_seconds(values: Sequence[Any] | np.ndarray, name: str, fmt: str, errors: str) -> Any:
    """A date feature's values as seconds: already so (float64), or parsed now."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        return values
    column = pd.Series(values if isinstance(values, np.ndarray) else list(values), name=name)
    return datetime_seconds(column, fmt, errors)


def _date_fill(name: str, constant: Any, values: np.ndarray) -> float:
    """``missing: constant`` for a date column: ``fill_value`` read as a date; a value that is
    not a date falls back to the median training date (logged)."""
    if isinstance(constant, str):
        seconds, _ = parse_dates([constant])
        if not np.isnan(seconds[0]):
            return float(seconds[0])
    present = values[~np.isnan(values)]
    if present.size == 0:
        raise DataError(
            f"Column '{name}' has no dates in the training rows, so its missing values cannot "
            f"be filled. Set data.features: {{{name}: ignore}} or fix the data."
        )
    logger.warning(
        "data.prepare.fill_value %r is not a date, so missing values of date column '%s' are "
        "filled with its median training date. Set fill_value to a date (2020-01-31) to choose.",
        constant,
        name,
    )
    return float(np.median(present))


def _dense_matrix(
    columns: Mapping[str, Sequence[Any] | np.ndarray], layout: _Layout, n: int
) -> np.ndarray:
    """The numeric and boolean columns as one raw float64 matrix ``(n, dense features)``: one
    numpy conversion for the usual case, column by column (naming a bad one) otherwise."""
    names = layout.dense_names
    try:
        stacked = np.array([columns[name] for name in names], dtype=np.float64)  # (dense, n)
    except (ValueError, TypeError, OverflowError):
        stacked = None
    if stacked is not None and stacked.shape == (len(names), n):
        return stacked.T
    matrix = np.empty((n, len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        try:
            matrix[:, j] = np.asarray(columns[name], dtype=np.float64)
        except (ValueError, TypeError, OverflowError) as exc:
            raise DataError(
                f"Column '{name}' holds a value that is not a number ({exc}). Read raw values "
                "with Preprocessor.read_column first."
            ) from None
    return matrix


def _category_codes(
    values: Sequence[Any] | np.ndarray, index: Mapping[str, int], fill: str | None, name: str
) -> np.ndarray:
    """Each value's position among the known categories, -1 for an unseen one; a missing value
    (None, NaN) takes ``fill``, and without one is a DataError."""
    codes = np.empty(len(values), dtype=np.int64)
    get = index.get
    for i, value in enumerate(values):
        if type(value) is not str:
            if value is None or value is pd.NA or (isinstance(value, float) and value != value):
                if fill is None:
                    missing = np.asarray([v is None or pd.isna(v) for v in values])
                    no_fill(name, missing)
                value = fill
            else:
                value = category_str(value)
        codes[i] = get(value, -1)
    return codes


_SCALERS = {"standard": StandardScaler, "minmax": MinMaxScaler, "robust": RobustScaler}


def _fit_scaler(method: str, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(center, scale) per column so that the scaled value is ``(x - center) / scale``."""
    d = matrix.shape[1]
    if method == "none" or d == 0:
        return np.zeros(d), np.ones(d)
    scaler = _SCALERS[method]().fit(matrix)
    if method == "standard":
        center, scale = scaler.mean_, scaler.scale_
    elif method == "minmax":
        center, scale = scaler.data_min_, scaler.data_range_
    else:
        center, scale = scaler.center_, scaler.scale_
    scale = np.where(np.isfinite(scale) & (scale != 0), scale, 1.0)
    return np.asarray(center, dtype="float64"), np.asarray(scale, dtype="float64")


def no_fill(name: str, missing: np.ndarray) -> None:
    """Raise the error for missing values in a column that learned no fill value."""
    raise DataError(
        f"Column '{name}' has {int(missing.sum())} missing value(s), the first at row "
        f"{first_row(missing)}, and data.prepare.missing is 'drop', so no fill value was "
        "learned. Supply a value for every feature, or train with another missing strategy."
    )
