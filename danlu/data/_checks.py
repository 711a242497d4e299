"""Data checks: the expectations of the recipe's ``data.checks`` block, evaluated on the raw rows.

Every expectation is evaluated and every failure is reported at once, in one
:class:`~danlu.errors.DataCheckError`, so a user fixes the data (or the expectation) in one pass.
The checks run right after loading, before anything is cleaned, split or trained: a failing check
leaves no run behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from danlu.config import ChecksConfig, ColumnCheck
from danlu.data._schema import bool_token, category_str
from danlu.data._values import preview
from danlu.errors import DataCheckError
from danlu.registry import did_you_mean

__all__ = ["Violation", "check_data", "find_violations"]

_EXAMPLES = 3  # offending values shown per violation


@dataclass(frozen=True)
class Violation:
    """One failed expectation.

    Attributes:
        column: the column it is about, or None for the whole table (``min_rows``).
        check: the expectation's key (``min_rows``, ``present``, ``type``, ``min`` ...).
        expected: what the expectation asks for.
        found: what the data holds (counts, first offending row, example values).
        fix: what to do about it.
    """

    column: str | None
    check: str
    expected: str
    found: str
    fix: str

    def line(self) -> str:
        """The violation as one sentence, e.g. for an error message."""
        where = f"column '{self.column}'" if self.column is not None else "data"
        return f"{where}, {self.check}: expected {self.expected}; found {self.found}. {self.fix}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        return {
            "column": self.column,
            "check": self.check,
            "expected": self.expected,
            "found": self.found,
            "fix": self.fix,
        }


def _offending(column: pd.Series, mask: np.ndarray, what: str) -> str:
    """``3 values <what> (first at row 7; e.g. -1, -2, -5)``: counts, first row, examples."""
    count = int(mask.sum())
    rows = np.flatnonzero(mask)
    examples = pd.unique(column.to_numpy()[mask])[:_EXAMPLES]
    shown = ", ".join(repr(_plain(v)) for v in examples)
    noun = "value" if count == 1 else "values"
    return f"{count} {noun} {what} (first at row {int(rows[0]) + 1}; e.g. {shown})"


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _is_number_dtype(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(
        column.dtype
    )


def _as_numbers(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(values as float64 with NaN, mask of present values that are not numbers)."""
    if pd.api.types.is_bool_dtype(column.dtype):
        values = column.astype("float64").to_numpy(dtype="float64", na_value=np.nan)
        return values, np.zeros(len(column), dtype=bool)
    converted = pd.to_numeric(column, errors="coerce")
    values = converted.to_numpy(dtype="float64", na_value=np.nan)
    not_number = np.isnan(values) & column.notna().to_numpy()
    return values, not_number


def _type_violation(name: str, column: pd.Series, expected: str) -> Violation | None:
    present = column.notna().to_numpy()
    fix = (
        f"Fix those rows, or change data.checks.columns.{name}.type if the column is meant to "
        "hold them."
    )
    mask: np.ndarray
    if expected in ("numeric", "integer"):
        values, mask = _as_numbers(column)
        if pd.api.types.is_bool_dtype(column.dtype):
            mask = present.copy()
        if not mask.any() and expected == "integer":
            with np.errstate(invalid="ignore"):
                mask = present & (np.floor(values) != values)
            what = "with a fractional part"
        else:
            what = "not numeric"
        wanted = "numbers" if expected == "numeric" else "whole numbers"
    elif expected == "boolean":
        if pd.api.types.is_bool_dtype(column.dtype):
            return None
        mask = present.copy()
        mask[present] = [bool_token(v) is None for v in column[present]]
        what, wanted = "not true/false", "true/false values (true/false, yes/no, 1/0)"
    elif expected == "string":
        mask = present.copy()
        mask[present] = [not isinstance(v, str) for v in column[present]]
        what, wanted = "not text", "text values"
    else:  # categorical: labels (text, whole numbers, booleans), not measurements
        mask = np.zeros(len(column), dtype=bool)
        if pd.api.types.is_float_dtype(column.dtype):
            values = column.to_numpy(dtype="float64", na_value=np.nan)
            with np.errstate(invalid="ignore"):
                mask = present & (np.floor(values) != values)
        elif column.dtype == object:
            mask[present] = [
                isinstance(v, float | np.floating) and not float(v).is_integer()
                for v in column[present]
            ]
        what, wanted = (
            "with a fractional part (a measurement)",
            "category labels (text or whole numbers)",
        )
    if not mask.any():
        return None
    return Violation(
        name, "type", f"{expected}: {wanted}", f"{_offending(column, mask, what)}", fix
    )


def _range_violations(name: str, column: pd.Series, spec: ColumnCheck) -> list[Violation]:
    values, not_number = _as_numbers(column)
    if not_number.any():
        bounds = "min" if spec.min is not None else "max"
        return [
            Violation(
                name,
                bounds,
                "numbers to compare with the bounds",
                _offending(column, not_number, "not numeric"),
                f"Fix those rows, or remove data.checks.columns.{name}.min/max.",
            )
        ]
    found: list[Violation] = []
    with np.errstate(invalid="ignore"):  # NaN compares False: missing values are not out of range
        if spec.min is not None:
            low = values < spec.min
            if low.any():
                found.append(
                    Violation(
                        name,
                        "min",
                        f"every value >= {spec.min:g}",
                        _offending(column, low, f"below {spec.min:g}"),
                        f"Fix or drop those rows, or lower data.checks.columns.{name}.min.",
                    )
                )
        if spec.max is not None:
            high = values > spec.max
            if high.any():
                found.append(
                    Violation(
                        name,
                        "max",
                        f"every value <= {spec.max:g}",
                        _offending(column, high, f"above {spec.max:g}"),
                        f"Fix or drop those rows, or raise data.checks.columns.{name}.max.",
                    )
                )
    return found


def _allowed_violation(name: str, column: pd.Series, allowed: Sequence[Any]) -> Violation | None:
    keys = {category_str(v) for v in allowed}
    present = column.notna().to_numpy()
    mask = present.copy()
    mask[present] = [category_str(v) not in keys for v in column[present]]
    if not mask.any():
        return None
    return Violation(
        name,
        "allowed",
        f"only {preview(sorted(keys), 10)}",
        _offending(column, mask, "not in the list"),
        f"Fix those rows, or add the values to data.checks.columns.{name}.allowed.",
    )


def _missing_violation(name: str, column: pd.Series, limit: float) -> Violation | None:
    missing = column.isna().to_numpy()
    fraction = float(missing.mean()) if len(column) else 0.0
    if fraction <= limit:
        return None
    return Violation(
        name,
        "max_missing",
        f"at most {limit:.1%} missing",
        f"{int(missing.sum())} of {len(column)} missing ({fraction:.1%}; first at row "
        f"{int(np.flatnonzero(missing)[0]) + 1})",
        f"Fill or drop those rows, or raise data.checks.columns.{name}.max_missing.",
    )


def _unique_violation(name: str, column: pd.Series) -> Violation | None:
    repeated = (column.duplicated(keep="first") & column.notna()).to_numpy()
    if not repeated.any():
        return None
    return Violation(
        name,
        "unique",
        "every value distinct",
        _offending(column, repeated, "repeating an earlier row"),
        f"Remove the duplicate rows, or set data.checks.columns.{name}.unique: false.",
    )


def _column_violations(name: str, column: pd.Series, spec: ColumnCheck) -> list[Violation]:
    found = [
        spec.type and _type_violation(name, column, spec.type),
        spec.allowed is not None and _allowed_violation(name, column, spec.allowed),
        spec.max_missing is not None and _missing_violation(name, column, spec.max_missing),
        spec.unique and _unique_violation(name, column),
    ]
    violations = [v for v in found if isinstance(v, Violation)]
    if spec.min is not None or spec.max is not None:
        violations.extend(_range_violations(name, column, spec))
    return violations


def find_violations(frame: pd.DataFrame, checks: ChecksConfig) -> list[Violation]:
    """Evaluate every expectation of ``checks`` on ``frame``; return each failure (none: passed).

    Example:
        >>> import pandas as pd
        >>> from danlu.config import ChecksConfig
        >>> checks = ChecksConfig(min_rows=5, columns={"age": {"min": 0}})
        >>> [v.check for v in find_violations(pd.DataFrame({"age": [3, -1]}), checks)]
        ['min_rows', 'min']
    """
    found: list[Violation] = []
    if checks.min_rows is not None and len(frame) < checks.min_rows:
        found.append(
            Violation(
                None,
                "min_rows",
                f"at least {checks.min_rows} rows",
                f"{len(frame)} rows",
                "Add data, or lower data.checks.min_rows.",
            )
        )
    columns = [str(c) for c in frame.columns]
    for name, spec in checks.columns.items():
        if name not in columns:
            if spec.present:
                found.append(
                    Violation(
                        name,
                        "present",
                        "the column in the data",
                        f"no such column; columns are {preview(columns, 10)}",
                        (
                            f"{did_you_mean(name, columns)} Add the column, fix the name, or set "
                            f"data.checks.columns.{name}.present: false if it is optional."
                        ).strip(),
                    )
                )
            continue
        found.extend(_column_violations(name, frame[name], spec))
    return found


def check_data(frame: pd.DataFrame, checks: ChecksConfig, source: str) -> None:
    """Raise one :class:`~danlu.errors.DataCheckError` listing every failed expectation.

    Args:
        frame: the rows as loaded (row 1 is the first data row).
        checks: the recipe's ``data.checks`` block.
        source: where the rows came from (named in the message).

    Raises:
        DataCheckError: one or more expectations failed; ``.violations`` holds them.

    Example:
        >>> import pandas as pd
        >>> from danlu.config import ChecksConfig
        >>> check_data(pd.DataFrame({"x": [1, 2]}), ChecksConfig(min_rows=2), "demo.csv")
    """
    violations = find_violations(frame, checks)
    if not violations:
        return
    count = len(violations)
    lines = "\n".join(f"  - {v.line()}" for v in violations)
    raise DataCheckError(
        f"Data checks failed for '{source}' ({len(frame)} rows): {count} "
        f"violation{'s' if count != 1 else ''} of data.checks (row 1 = first data row):\n{lines}",
        violations=violations,
    )
