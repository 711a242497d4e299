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

from danlu.data._schema import (
    FALSE_TOKENS,
    TRUE_TOKENS,
    FeatureSchema,
    bool_token,
    category_str,
)
from danlu.data._values import first_row, to_plain
from danlu.errors import DataError


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
        col = 0
        for f in schema.features:
            value = fill.get(f.name)
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
        )


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
