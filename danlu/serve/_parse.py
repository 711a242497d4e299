"""Request validation: a decoded JSON body checked against a model's inputs, then encoded.

:class:`RequestParser` runs on the event loop for every request, so it checks raw JSON values
itself, one feature at a time with numpy where it can, and names the first bad field
(``rows[2].alcohol``, ``columns.colour[0]``). What a valid value *encodes to* is not decided here:
the checked columns go to the model's :class:`~danlu.data.Preprocessor` (``transform_columns``,
or ``transform_matrix`` for the usual all-numeric rows), the same replay of the fitted state that
training and ``danlu.load_model`` use — without a DataFrame (a frame costs about a millisecond per
request; this costs tens of microseconds).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from danlu.serve._types import RequestError

if TYPE_CHECKING:
    from danlu.data import Preprocessor

__all__ = ["RequestParser", "show"]

_NUMBER = (int, float)
_FLOAT_INT = frozenset((float, int))
_PAYLOAD_KEYS = ("rows", "columns")
#: The longest text value a request may send, in characters (the model reads only its first
#: ``max_length`` tokens; this bounds the work of tokenizing what it will not read).
MAX_TEXT_CHARS = 100_000
_SHAPE = '{"rows": [{feature: value, ...}, ...]} or {"columns": {feature: [values]}}'
SERIES = "series"  # the key of a row that sends a sequence model's series as one array

Field: TypeAlias = Callable[[int, str], str]  # (row, feature) → the field an error names
Columns: TypeAlias = tuple[int, list[list[Any]], Field]  # rows, each feature's values, Field


@dataclass(frozen=True, slots=True)
class _Input:
    """One raw feature: its kind, whether null is accepted (training learned a fill), and
    whether a value that does not parse counts as missing (``errors: nan``)."""

    name: str
    kind: str  # numeric | boolean | categorical | datetime | text
    nullable: bool
    coerce: bool = False


def _series_request(rows: Any) -> bool:
    """Whether a rows list sends series arrays (its first row is ``{"series": ...}``)."""
    return (
        type(rows) is list and bool(rows) and type(rows[0]) is dict and rows[0].keys() == {SERIES}
    )


def show(value: Any) -> str:
    """A short, safe rendering of a client's value for an error message."""
    if isinstance(value, str):
        return f"the string {value[:40]!r}" + ("..." if len(value) > 40 else "")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return repr(value)[:40]


class RequestParser:
    """Checks predict bodies against the features of ``preprocessor`` and encodes them.

    Args:
        preprocessor: the model's fitted preprocessing.
        ref: the model version, for error messages (``wine:3``).

    Example:
        >>> # RequestParser(bundle.preprocessor, "wine:3").parse({"rows": [row]}, max_rows=64)
    """

    def __init__(
        self, preprocessor: Preprocessor, ref: str, sequence: tuple[int, int] | None = None
    ) -> None:
        self.preprocessor = preprocessor
        self.ref = ref
        #: (channels, length) of a sequence model whose raw inputs are its steps: a row may then
        #: be {"series": [[...length numbers] × channels]} (ModelBundle.sequence_shape)
        self.sequence = sequence
        fill = preprocessor.fill_
        self.inputs = tuple(
            _Input(
                f.name, f.kind, f.kind == "text" or fill.get(f.name) is not None, f.errors == "nan"
            )
            for f in preprocessor.schema_.features
        )
        self._names = frozenset(i.name for i in self.inputs)
        self._order = tuple(i.name for i in self.inputs)
        self._numeric = tuple(j for j, i in enumerate(self.inputs) if i.kind == "numeric")
        # every input numeric: the rows encode as one matrix (transform_matrix)
        self._all_numeric = bool(self.inputs) and len(self._numeric) == len(self.inputs)
        self._check_kind = {
            "boolean": self._booleans,
            "categorical": self._categories,
            "datetime": self._dates,
            "text": self._texts,
        }

    def parse(self, payload: Any, max_rows: int) -> np.ndarray:
        """Validate a decoded JSON body and encode it: ``(n, input_dim)`` float32.

        Accepts ``{"rows": [{feature: value}, ...]}`` or ``{"columns": {feature: [values]}}``;
        a sequence model also ``{"rows": [{"series": [[...L] × C]}, ...]}``.

        Raises:
            RequestError: naming the field (``rows[2].alcohol``, ``rows[0].series[1]``); 413 for more than ``max_rows``.
        """
        if not isinstance(payload, dict):
            raise RequestError("body", f"must be a JSON object: {_SHAPE}; got {show(payload)}.")
        unknown = [k for k in payload if k not in _PAYLOAD_KEYS]
        if unknown:
            raise RequestError(
                str(unknown[0])[:100], f"is not a known key; send exactly one of {_SHAPE}."
            )
        if len(payload) != 1:
            raise RequestError("body", f"send exactly one of 'rows' or 'columns': {_SHAPE}.")
        if "rows" in payload and self.sequence is not None and _series_request(payload["rows"]):
            return self.preprocessor.transform_matrix(self._series_rows(payload["rows"], max_rows))
        if "rows" in payload:
            matrix = self._numeric_rows(payload["rows"], max_rows) if self._all_numeric else None
            if matrix is not None:
                return self.preprocessor.transform_matrix(matrix)
            _, values, field = self._from_rows(payload["rows"], max_rows)
        else:
            _, values, field = self._from_columns(payload["columns"], max_rows)
        numbers = self._numbers(values, field)  # each numeric input's column, checked
        if self._all_numeric:
            return self.preprocessor.transform_matrix(np.array(numbers, dtype=np.float64).T)
        checked = dict(zip((self._order[j] for j in self._numeric), numbers, strict=True))
        for inp, column in zip(self.inputs, values, strict=True):
            if inp.kind != "numeric":
                checked[inp.name] = self._check_kind[inp.kind](inp, column, field)
        return self.preprocessor.transform_columns(checked)

    # ---- the body's shape ------------------------------------------------------------------

    def _check_count(self, key: str, n: int, max_rows: int) -> None:
        if n == 0:
            raise RequestError(key, "empty: send at least one row.")
        if n > max_rows:
            raise RequestError(
                key,
                f"holds {n} rows; one request may carry at most {max_rows}. Split it into "
                "smaller requests.",
                status=413,
            )

    def _key_problem(self, where: str, keys: Sequence[str]) -> RequestError:
        """The error for a row or columns object whose keys are not exactly the features."""
        given = set(keys)
        extra = [str(k) for k in keys if k not in self._names]
        if extra:
            takes = ", ".join(i.name for i in self.inputs[:20])
            more = f" and {len(self.inputs) - 20} more" if len(self.inputs) > 20 else ""
            return RequestError(
                f"{where}.{extra[0][:100]}",
                f"is not a feature of model {self.ref}; it takes {len(self.inputs)} "
                f"features: {takes}{more}.",
            )
        missing = next(i.name for i in self.inputs if i.name not in given)
        series = ""
        if self.sequence is not None:
            series = f' (or send the row as {{"{SERIES}": [{self._series_shape()}]}})'
        return RequestError(
            f"{where}.{missing}",
            f"is missing; every row needs all {len(self.inputs)} features of model {self.ref}"
            f"{series}.",
        )

    # ---- a sequence model's rows as arrays ---------------------------------------------------

    def _series_shape(self) -> str:
        channels, length = self.sequence or (1, 0)
        one = f"[{length} numbers]"
        return one if channels == 1 else f"{channels} lists of {length} numbers"

    def _series_rows(self, rows: list[Any], max_rows: int) -> np.ndarray:
        """Rows ``{"series": [[...L] × C]}`` (one channel: ``[...L]`` too) as the raw matrix
        ``(n, C·L)``, dimension by dimension (the order of the step columns); every value a
        finite number, or null where the step's column learned a fill."""
        self._check_count("rows", len(rows), max_rows)
        channels, length = self.sequence or (1, 0)
        matrix = np.empty((len(rows), channels * length), dtype=np.float64)
        for i, row in enumerate(rows):
            if type(row) is not dict or row.keys() != {SERIES}:
                raise RequestError(
                    f"rows[{i}]",
                    f'must be {{"{SERIES}": [...]}} as rows[0] is; send every row of a request '
                    f"the same way; got {show(row)}.",
                )
            matrix[i] = self._one_series(row[SERIES], f"rows[{i}].{SERIES}")
        return matrix

    def _one_series(self, value: Any, where: str) -> np.ndarray:
        channels, length = self.sequence or (1, 0)
        takes = (
            f"model {self.ref} takes "
            + ("one series" if channels == 1 else f"{channels} series (channels)")
            + f" of {length} steps: [{self._series_shape()}]"
        )
        if type(value) is not list:
            raise RequestError(where, f"must be a list; {takes}; got {show(value)}.")
        nested = bool(value) and type(value[0]) is list
        if channels == 1 and not nested:
            value = [value]  # one channel: the plain list of steps
            prefix = [where]
        else:
            prefix = [f"{where}[{c}]" for c in range(len(value))]
        if len(value) != channels:
            raise RequestError(where, f"holds {len(value)} series; {takes}.")
        out = np.empty((channels, length), dtype=np.float64)
        for c, steps in enumerate(value):
            if type(steps) is not list:
                raise RequestError(prefix[c], f"must be a list of numbers; got {show(steps)}.")
            if len(steps) != length:
                raise RequestError(prefix[c], f"holds {len(steps)} values; {takes}.")
            fast = _finite_floats(steps) if set(map(type, steps)) <= _FLOAT_INT else None
            out[c] = fast if fast is not None else self._series_values(steps, c * length, prefix[c])
        return out.reshape(-1)

    def _series_values(self, steps: list[Any], first: int, where: str) -> np.ndarray:
        """One channel's steps that are not all finite numbers, checked value by value: null
        where the step's column learned a fill (NaN), else the first bad value is named."""
        values = np.empty(len(steps), dtype=np.float64)
        for t, v in enumerate(steps):
            inp = self.inputs[first + t]
            if v is None:
                if not inp.nullable:
                    raise RequestError(
                        f"{where}[{t}]",
                        f"is null, and the model learned no fill value for step {inp.name} (it "
                        "was trained with missing: drop); send a number.",
                    )
                values[t] = np.nan
            elif isinstance(v, _NUMBER) and not isinstance(v, bool):
                try:
                    number = float(v)
                except OverflowError:
                    number = math.inf
                if not math.isfinite(number):
                    raise RequestError(
                        f"{where}[{t}]", f"must be a finite number; got {show(v)} (out of range)."
                    )
                values[t] = number
            else:
                raise RequestError(f"{where}[{t}]", f"must be a number; got {show(v)}.")
        return values

    def _from_rows(self, rows: Any, max_rows: int) -> Columns:
        if not isinstance(rows, list):
            raise RequestError("rows", f"must be a list of objects; got {show(rows)}.")
        self._check_count("rows", len(rows), max_rows)
        names, n_names = self._names, len(self._names)
        for i, row in enumerate(rows):
            if type(row) is not dict:
                raise RequestError(
                    f"rows[{i}]", f"must be an object of feature values; got {show(row)}."
                )
            if len(row) != n_names or row.keys() != names:
                raise self._key_problem(f"rows[{i}]", list(row))
        values = [[row[name] for row in rows] for name in self._order]
        return len(rows), values, lambda i, name: f"rows[{i}].{name}"

    def _numeric_rows(self, rows: Any, max_rows: int) -> np.ndarray | None:
        """The usual request of an all-numeric model — rows holding exactly its features, each
        a finite JSON number — as one raw float64 matrix ``(n, features)`` (a third of the
        general path's time for one row); None for anything else, which the general path then
        checks and explains."""
        if type(rows) is not list or not 0 < len(rows) <= max_rows:
            return None
        names, n_names, order = self._names, len(self._names), self._order
        flat: list[Any] = []
        for row in rows:
            if type(row) is not dict or len(row) != n_names or row.keys() != names:
                return None
            flat.extend(map(row.__getitem__, order))
        if not set(map(type, flat)) <= _FLOAT_INT:  # no bool, str, None, list ...
            return None
        try:
            matrix = np.array(flat, dtype=np.float64).reshape(len(rows), n_names)
        except OverflowError:  # an integer beyond float range
            return None
        return matrix if np.isfinite(matrix).all() else None

    def _from_columns(self, columns: Any, max_rows: int) -> Columns:
        if not isinstance(columns, dict):
            raise RequestError(
                "columns", f"must be an object of feature → list of values; got {show(columns)}."
            )
        if len(columns) != len(self._names) or columns.keys() != self._names:
            raise self._key_problem("columns", list(columns))
        lengths = set()
        for name in self._order:
            column = columns[name]
            if not isinstance(column, list):
                raise RequestError(
                    f"columns.{name}", f"must be a list of values; got {show(column)}."
                )
            lengths.add(len(column))
        if len(lengths) > 1:
            raise RequestError(
                "columns",
                f"the lists must all be the same length; got lengths {sorted(lengths)[:10]}.",
            )
        n = lengths.pop()
        self._check_count("columns", n, max_rows)
        values = [columns[name] for name in self._order]
        return n, values, lambda i, name: f"columns.{name}[{i}]"

    # ---- values, by kind: each returns the column as transform_columns takes it -------------

    def _null(self, inp: _Input, i: int, field: Field) -> None:
        if not inp.nullable:
            raise RequestError(
                field(i, inp.name),
                "is null, and the model learned no fill value for it (it was trained with "
                "missing: drop); send a value.",
            )

    def _numbers(self, values: list[list[Any]], field: Field) -> Any:
        """The numeric inputs' columns, checked: finite numbers, or null where a fill was
        learned. The usual case (every value a finite number) is one numpy conversion, (k, n)
        float64; anything else goes feature by feature to name the first bad value."""
        columns = [values[j] for j in self._numeric]
        if all(type(v) is float or type(v) is int for column in columns for v in column):
            try:
                block = np.array(columns, dtype=np.float64)
            except OverflowError:  # an integer beyond float range
                block = None
            if block is not None and np.isfinite(block).all():
                return block
        return [
            self._number_column(self.inputs[j], column, field)
            for j, column in zip(self._numeric, columns, strict=True)
        ]

    def _number_column(self, inp: _Input, column: list[Any], field: Field) -> Any:
        if inp.coerce and any(type(v) is str for v in column):  # errors: nan: junk is missing
            return self._parsed(inp, column, field).tolist()
        for i, v in enumerate(column):
            if v is None:
                self._null(inp, i, field)
            elif isinstance(v, _NUMBER) and not isinstance(v, bool):
                try:
                    finite = math.isfinite(float(v))
                except OverflowError:
                    finite = False
                if not finite:
                    raise RequestError(
                        field(i, inp.name),
                        f"must be a finite number; got {show(v)} (out of range).",
                    )
            else:
                raise RequestError(field(i, inp.name), f"must be a number; got {show(v)}.")
        return column

    def _parsed(self, inp: _Input, column: list[Any], field: Field) -> np.ndarray:
        """A numeric (strings allowed) or datetime column read by the model's preprocessor:
        float64, NaN where missing; a value that does not parse is an error naming it, or
        (``errors: nan``) missing; a missing value needs a learned fill."""
        for i, v in enumerate(column):
            if not (v is None or type(v) is str or (inp.kind == "numeric" and type(v) in _NUMBER)):
                what = "a number or a string" if inp.kind == "numeric" else "a date string"
                raise RequestError(field(i, inp.name), f"must be {what}; got {show(v)}.")
        values, bad = self.preprocessor.parse_values(inp.name, column)
        if bad.any() and not inp.coerce:
            i = int(np.flatnonzero(bad)[0])
            raise RequestError(
                field(i, inp.name),
                f"must be a date or date-time (ISO 8601, e.g. 2024-05-01 or "
                f"2024-05-01T12:30:00Z); got {show(column[i])}.",
            )
        missing = np.isnan(values)
        if missing.any() and not inp.nullable:
            i = int(np.flatnonzero(missing)[0])
            if bad[i]:  # junk that reads as missing (errors: nan), and no fill to take its place
                raise RequestError(
                    field(i, inp.name),
                    f"is not a number ({show(column[i])}), so it reads as missing, and the model "
                    "learned no fill value (it was trained with missing: drop); send a number.",
                )
            self._null(inp, i, field)
        return values

    def _dates(self, inp: _Input, column: list[Any], field: Field) -> Any:
        """Date or date-time strings (ISO 8601, or the training data's format), or null where a
        fill was learned: read as seconds since the epoch, as transform_columns takes them."""
        return self._parsed(inp, column, field)

    def _booleans(self, inp: _Input, column: list[Any], field: Field) -> Any:
        """``true``/``false`` or 0/1, or null where a fill was learned."""
        for i, v in enumerate(column):
            if v is None:
                self._null(inp, i, field)
            elif not (v is True or v is False or (type(v) in _NUMBER and v in (0, 1))):
                raise RequestError(field(i, inp.name), f"must be true or false; got {show(v)}.")
        return column

    def _texts(self, inp: _Input, column: list[Any], field: Field) -> Any:
        """Strings (null: no text), each at most MAX_TEXT_CHARS characters; the preprocessor
        tokenizes them with the model's own tokenizer."""
        for i, v in enumerate(column):
            if v is None:
                continue
            if type(v) is not str:
                raise RequestError(field(i, inp.name), f"must be a string (text); got {show(v)}.")
            if len(v) > MAX_TEXT_CHARS:
                raise RequestError(
                    field(i, inp.name),
                    f"is {len(v):,} characters long; send at most {MAX_TEXT_CHARS:,} (the model "
                    "reads only the first tokens of a text).",
                )
        return column

    def _categories(self, inp: _Input, column: list[Any], field: Field) -> Any:
        """Strings or finite numbers (a number is its string: 3 and 3.0 are '3'), or null where
        a fill was learned."""
        for i, v in enumerate(column):
            if v is None:
                self._null(inp, i, field)
            elif not (type(v) is str or type(v) is int or (type(v) is float and math.isfinite(v))):
                raise RequestError(
                    field(i, inp.name),
                    f"must be a category (a string or a number); got {show(v)}.",
                )
        return column


def _finite_floats(values: list[Any]) -> np.ndarray | None:
    """``values`` (ints and floats only) as float64 when every one is finite; None otherwise
    (NaN, infinity, an integer beyond float range), for the value-by-value check to name it."""
    try:
        array = np.array(values, dtype=np.float64)
    except OverflowError:  # an integer beyond float range
        return None
    return array if np.isfinite(array).all() else None
