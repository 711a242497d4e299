"""The feature schema: which columns are features, of which kind, and how they are encoded.

The schema travels with the model (as JSON) so that serving applies exactly the preprocessing used
in training. :func:`infer_schema` decides each column's kind from its values; ``data.features`` in
the recipe overrides it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from danlu.data._datetime import (
    DATE_PARTS,
    ELAPSED,
    column_format,
    datetime_seconds,
    parse_dates,
)
from danlu.data._detect import ColumnKind, detect_kind, read_errors
from danlu.data._target import (
    TARGET_KINDS,
    TaskLike,
    resolve_task,
    target_codec,
)
from danlu.data._values import coerce_numbers, numeric_values, preview, to_plain
from danlu.errors import DataError
from danlu.logging import get_logger
from danlu.registry import did_you_mean

__all__ = ["KINDS", "Feature", "FeatureSchema", "TextSlice", "infer_schema"]

logger = get_logger(__name__)

KINDS = ("numeric", "categorical", "boolean", "datetime", "ignore", "text")

# Strings read as booleans. A column is boolean when its values are exactly one of each set.
TRUE_TOKENS = frozenset({"true", "yes", "y", "t", "1", "1.0", "on"})
FALSE_TOKENS = frozenset({"false", "no", "n", "f", "0", "0.0", "off"})


def category_str(value: Any) -> str:
    """The string form of a categorical value; ``3.0`` and ``3`` both become ``'3'``.

    Integral floats appear when pandas reads an integer column that has missing values.
    """
    value = to_plain(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def bool_token(value: Any) -> bool | None:
    """True / False for a recognised boolean spelling, None otherwise."""
    token = str(to_plain(value)).strip().lower()
    if token in TRUE_TOKENS:
        return True
    if token in FALSE_TOKENS:
        return False
    return None


@dataclass(frozen=True)
class Feature:
    """One raw input column.

    Attributes:
        name: the column name.
        kind: ``numeric``, ``categorical``, ``boolean`` or ``datetime``.
        categories: the known categories of a categorical column (sorted strings), else ``()``.
        errors: numeric / datetime: ``nan`` reads a value that does not parse as missing;
            ``raise`` (default) refuses it.
        encoding: categorical: ``frequency`` when the column has more categories than
            ``data.prepare.max_categories`` (one column: the category's share of training
            rows); ``""``: the recipe's ``data.prepare.encode``.
        frequencies: frequency encoding: the share of training rows of each category.
        parts: datetime: the calendar features it expands into (``year``, ``month`` ...).
        origin: datetime: the earliest training date (seconds since the epoch), from which
            the ``days`` feature counts.
        date_format: datetime: the format of the training strings (``ISO8601``, ``%d/%m/%Y``).
        max_length: text: the token positions the column takes in the encoded matrix (token
            ids as float32, exact below 2**24, right-padded with ``pad_id``).
        pad_id: text: the tokenizer's padding id (positions holding it are not attended).
        vocab_size: text: the tokenizer's vocabulary size (ids are ``0 … vocab_size - 1``).
        tokenizer: text: where the tokenizer came from — ``pretrained:DIR_NAME`` (the model's
            own), ``wordpiece`` or ``bpe`` (trained on the training split).
    """

    name: str
    kind: str
    categories: tuple[str, ...] = ()
    errors: str = "raise"
    encoding: str = ""
    frequencies: tuple[float, ...] = ()
    parts: tuple[str, ...] = ()
    origin: float | None = None
    date_format: str = ""
    max_length: int = 0
    pad_id: int = 0
    vocab_size: int = 0
    tokenizer: str = ""

    @property
    def frequency_encoded(self) -> bool:
        return self.kind == "categorical" and self.encoding == "frequency"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "categories": list(self.categories),
        }
        extra = {
            "errors": self.errors if self.errors != "raise" else None,
            "encoding": self.encoding or None,
            "frequencies": list(self.frequencies) or None,
            "parts": list(self.parts) or None,
            "origin": self.origin,
            "date_format": self.date_format or None,
            "max_length": self.max_length or None,
            "pad_id": self.pad_id if self.kind == "text" else None,
            "vocab_size": self.vocab_size or None,
            "tokenizer": self.tokenizer or None,
        }
        return {**out, **{k: v for k, v in extra.items() if v is not None}}  # only what is set

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Feature:
        """Rebuild a feature from :meth:`to_dict` (files saved before the options have none)."""
        origin = data.get("origin")
        return cls(
            str(data["name"]),
            str(data["kind"]),
            tuple(str(c) for c in data["categories"]),
            errors=str(data.get("errors") or "raise"),
            encoding=str(data.get("encoding") or ""),
            frequencies=tuple(float(f) for f in data.get("frequencies") or ()),
            parts=tuple(str(p) for p in data.get("parts") or ()),
            origin=None if origin is None else float(origin),
            date_format=str(data.get("date_format") or ""),
            max_length=int(data.get("max_length") or 0),
            pad_id=int(data.get("pad_id") or 0),
            vocab_size=int(data.get("vocab_size") or 0),
            tokenizer=str(data.get("tokenizer") or ""),
        )


@dataclass(frozen=True)
class FeatureSchema:
    """What a model's inputs and outputs mean; JSON round-trips via ``to_dict`` / ``from_dict``.

    Attributes:
        features: the raw input columns, in order (ignored columns are not listed).
        target: the target column.
        task: the task's name (``classification``, ``regression``, or another task's).
        classes: ``classes`` targets: the original labels, sorted; model output ``i`` is
            ``classes[i]``. ``label_sets`` targets: the label vocabulary, sorted; column ``i`` of
            the multi-hot target is ``classes[i]``. None for ``values``.
        target_mean: ``values`` targets: the training mean (y is fed as (y - mean) / std).
        target_std: ``values`` targets: the training standard deviation of the target.
        image_shape: the shape the encoded features form as an image, e.g. ``(1, 8, 8)``.
        input_dim: the number of columns after encoding.
        encoded_names: the name of each encoded column (``colour=red`` for one-hot).
        target_kind: ``classes``, ``values`` or ``label_sets`` (see ``danlu.data._target``);
            when not given it is derived from ``task``: ``classification`` → ``classes``,
            anything else → ``values`` (what schemas saved before target kinds meant).
        forecast: ``task: forecasting``: the window's settings the model was trained with
            (horizon, lags, quantiles, transform, frequency, season, time column, covariates,
            and the last training times), which serving reads to turn a history into a
            forecast; None for other tasks.

    Example:
        >>> s = FeatureSchema((Feature("x", "numeric"),), "y", "regression", None, 0.0, 1.0,
        ...                   None, 1, ("x",))
        >>> FeatureSchema.from_dict(s.to_dict()) == s
        True
    """

    features: tuple[Feature, ...]
    target: str
    task: str
    classes: tuple[Any, ...] | None = None
    target_mean: float | None = None
    target_std: float | None = None
    image_shape: tuple[int, ...] | None = None
    input_dim: int = 0
    encoded_names: tuple[str, ...] = field(default=())
    target_kind: str = ""
    forecast: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.target_kind:  # frozen: set the derived default through object.__setattr__
            object.__setattr__(self, "target_kind", _legacy_target_kind(self.task))
        elif self.target_kind not in TARGET_KINDS:
            raise DataError(
                f"FeatureSchema.target_kind must be one of {', '.join(TARGET_KINDS)}; got "
                f"{self.target_kind!r}."
            )

    @property
    def n_classes(self) -> int | None:
        """The number of classes (or of labels, for label sets); None for numeric targets."""
        return None if self.classes is None else len(self.classes)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The raw input column names, in order."""
        return tuple(f.name for f in self.features)

    def text_slices(self) -> tuple[TextSlice, ...]:
        """Where each text column's token ids sit in the encoded matrix, in feature order."""
        out, position = [], 0
        for f in self.features:
            width = len(encoded_columns((f,), "onehot" if self._onehot() else "ordinal"))
            if f.kind == "text":
                out.append(TextSlice(f.name, position, position + width, f.pad_id, f.vocab_size))
            position += width
        return tuple(out)

    def tabular_positions(self) -> tuple[int, ...]:
        """The encoded columns that are not token ids (numbers, categories, dates)."""
        tokens = {i for t in self.text_slices() for i in range(t.start, t.stop)}
        return tuple(i for i in range(self.input_dim) if i not in tokens)

    def _onehot(self) -> bool:
        """Whether categories were one-hot encoded (read from the encoded names' width)."""
        return len(encoded_columns(self.features, "onehot")) == self.input_dim

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``json.dumps`` works on it)."""
        return {
            "features": [f.to_dict() for f in self.features],
            "target": self.target,
            "task": self.task,
            "classes": None if self.classes is None else [to_plain(c) for c in self.classes],
            "target_mean": self.target_mean,
            "target_std": self.target_std,
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "input_dim": self.input_dim,
            "encoded_names": list(self.encoded_names),
            "target_kind": self.target_kind,
            **({} if self.forecast is None else {"forecast": dict(self.forecast)}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSchema:
        """Rebuild a schema from :meth:`to_dict`'s output.

        Raises:
            DataError: a key is missing or malformed.
        """
        try:
            features = tuple(Feature.from_dict(f) for f in data["features"])
            classes = data["classes"]
            shape = data["image_shape"]
            return cls(
                features=features,
                target=str(data["target"]),
                task=str(data["task"]),
                classes=None if classes is None else tuple(classes),
                target_mean=None if data["target_mean"] is None else float(data["target_mean"]),
                target_std=None if data["target_std"] is None else float(data["target_std"]),
                image_shape=None if shape is None else tuple(int(s) for s in shape),
                input_dim=int(data["input_dim"]),
                encoded_names=tuple(str(n) for n in data["encoded_names"]),
                target_kind=str(data.get("target_kind") or ""),  # absent before target kinds
                forecast=data.get("forecast"),  # forecasting models only
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"The feature schema is malformed ({type(exc).__name__}: {exc}). It must be the "
                "output of FeatureSchema.to_dict(); re-export the model if the file was edited."
            ) from exc


def _legacy_target_kind(task: str) -> str:
    """The target kind a schema saved without one meant: classes for classification, else values."""
    return "classes" if task == "classification" else "values"


@dataclass(frozen=True)
class TextSlice:
    """A text column's token ids in the encoded matrix: ``x[:, start:stop]`` (B, max_length)."""

    name: str
    start: int
    stop: int
    pad_id: int
    vocab_size: int


def encoded_columns(features: Sequence[Feature], encode: str) -> tuple[str, ...]:
    """The encoded column names of ``features``: one-hot expands each category in place, a
    date each calendar feature (``date.year``), a text column its token positions
    (``body#0`` …); a frequency-encoded column stays one."""
    names: list[str] = []
    for f in features:
        if f.kind == "text":
            names.extend(f"{f.name}#{i}" for i in range(f.max_length))
        elif f.kind == "categorical" and encode == "onehot" and not f.frequency_encoded:
            names.extend(f"{f.name}={c}" for c in f.categories)
        elif f.kind == "datetime":
            names.extend(f"{f.name}.{p}" for p in f.parts or default_parts())
        else:
            names.append(f.name)
    return tuple(names)


def default_parts() -> tuple[str, ...]:
    """The calendar features of a date column before fitting decides on a time of day."""
    return (*DATE_PARTS, ELAPSED)


def _infer_kind(column: pd.Series, text_models: bool = False) -> str:
    if pd.api.types.is_bool_dtype(column.dtype):
        return "boolean"
    if pd.api.types.is_numeric_dtype(column.dtype):
        return "numeric"
    if isinstance(column.dtype, pd.PeriodDtype | pd.IntervalDtype):
        logger.warning(
            "Column '%s' holds periods or intervals (%s), which danlu does not encode; it is "
            "ignored. Derive numeric columns from it (e.g. the interval's start) to use it.",
            column.name,
            column.dtype,
        )
        return "ignore"
    kind = detect_kind(column, str(column.name), text_models=text_models)
    note = getattr(kind, "note", "")
    if getattr(kind, "flag", ""):  # a guess the user should know about (dirty, free text)
        logger.warning("%s", note)
    elif note:
        logger.info("%s", note)
    return kind


def feature_kinds(overrides: Mapping[str, Any] | None) -> dict[str, str]:
    """``data.features`` as column → kind: a kind as it is (a :class:`ColumnKind` keeps its
    options), ``{kind, errors}`` as a kind carrying ``errors``."""
    out: dict[str, str] = {}
    for name, spec in (overrides or {}).items():
        if isinstance(spec, str):
            out[name] = spec
            continue
        if isinstance(spec, Mapping):
            kind, errors = spec.get("kind"), spec.get("errors") or "raise"
        else:  # a FeatureSpec
            kind, errors = getattr(spec, "kind", spec), getattr(spec, "errors", "raise")
        out[name] = ColumnKind(str(kind), errors=str(errors)) if errors != "raise" else str(kind)
    return out


def _check_forced(column: pd.Series, kind: str) -> None:
    """A column the recipe forces numeric or datetime (``errors: raise``) must parse: the
    error names the rows of ``column``, the whole data when called from :func:`infer_kinds`."""
    if read_errors(kind) != "raise" or pd.api.types.is_numeric_dtype(column.dtype):
        return
    if kind == "numeric":
        numeric_values(column)
    elif kind == "datetime" and not pd.api.types.is_datetime64_any_dtype(column.dtype):
        datetime_seconds(column, column_format(column))


def missing_rows(frame: pd.DataFrame, features: Sequence[str], kinds: Mapping[str, str]) -> Any:
    """Rows with a missing feature value (what ``missing: drop`` drops), counting a value
    that a kind read with ``errors: nan`` turns into a missing one.

    Example:
        >>> df = pd.DataFrame({"x": ["1", "?", "3"], "c": ["a", None, "b"]})
        >>> missing_rows(df, ["x"], {"x": ColumnKind("numeric", errors="nan")}).tolist()
        [False, True, False]
    """
    mask = np.array(frame[list(features)].isna().any(axis=1), dtype=bool)
    for name in features:
        kind = kinds.get(name, "")
        if read_errors(kind) == "nan" and not pd.api.types.is_numeric_dtype(frame[name].dtype):
            column = frame[name]
            bad = (
                coerce_numbers(column)[1]
                if kind == "numeric"
                else parse_dates(column, column_format(column))[1]
            )
            mask |= bad
    return mask


def check_overrides(
    overrides: Mapping[str, Any] | None, columns: Sequence[str], target: str
) -> dict[str, str]:
    """Validate ``data.features`` overrides against the frame's columns."""
    checked: dict[str, str] = {}
    for name, kind in feature_kinds(overrides).items():
        if kind not in KINDS:
            raise DataError(
                f"data.features sets column '{name}' to kind '{kind}', which is not a kind."
                f"{did_you_mean(kind, KINDS)} Valid kinds: {', '.join(KINDS)}."
            )
        if name == target:
            raise DataError(
                f"data.features names the target column '{name}'; the target is not a feature. "
                "Remove it from data.features."
            )
        if name not in columns:
            raise DataError(
                f"data.features names column '{name}', which is not in the data."
                f"{did_you_mean(name, list(columns))} Columns: {preview(columns)}."
            )
        checked[name] = kind
    return checked


def infer_kinds(
    frame: pd.DataFrame,
    target: str,
    task: str | TaskLike,
    overrides: Mapping[str, Any] | None = None,
    *,
    text_models: bool = False,
) -> dict[str, str]:
    """The kind of every column but the target (``ignore`` included), overrides winning.

    ``overrides``: column → a kind or ``{kind, errors}`` (``data.features``). A column forced
    ``numeric`` or ``datetime`` without ``errors: nan`` must parse (the error names its rows).
    A kind that was guessed with a caveat (dirty numbers, dates, free text) is a
    :class:`~danlu.data._detect.ColumnKind` carrying its note. ``text_models``: the recipe's
    model reads text, so free text is inferred ``text`` (else ``ignore``).
    """
    resolve_task(task)
    columns = [str(c) for c in frame.columns]
    if target not in columns:
        raise DataError(
            f"Target column '{target}' is not in the data.{did_you_mean(target, columns)} "
            f"Columns: {preview(columns)}. Set data.target to one of them."
        )
    kinds = check_overrides(overrides, columns, target)
    for name, kind in kinds.items():
        if not isinstance(kind, ColumnKind) or not kind.note:  # inferred ones were read already
            _check_forced(frame[name], kind)
    return {
        name: kinds.get(name) or _infer_kind(frame[name], text_models)
        for name in columns
        if name != target
    }


def infer_schema(
    frame: pd.DataFrame,
    target: str,
    task: str | TaskLike,
    overrides: Mapping[str, Any] | None = None,
    *,
    encode: str = "onehot",
    max_categories: int | None = None,
    image_shape: Sequence[int] | None = None,
) -> FeatureSchema:
    """Infer each column's kind and describe ``frame`` as a :class:`FeatureSchema`.

    Kinds: bool dtype, or strings that are exactly one true and one false spelling
    (``yes``/``no``, ``true``/``false``, ``1``/``0`` ...) → ``boolean``; other numbers →
    ``numeric``; strings / objects / categories → ``categorical``. ``overrides`` (the recipe's
    ``data.features``) win; ``ignore`` drops a column. Categories and classes are read from
    ``frame``; the target statistics are left to :class:`Preprocessor` (fitted on training rows).

    Args:
        frame: the raw rows, target included.
        target: the target column.
        task: ``classification``, ``regression``, or a task object (``name``, ``target_kind``).
        overrides: column → kind, winning over inference.
        encode: ``onehot`` or ``ordinal`` (decides ``input_dim`` and ``encoded_names``).
        image_shape: the image shape the features form, if any.

    Raises:
        DataError: the target or an overridden column is absent, or a kind is unknown.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"a": [1.0, 2.0], "c": ["x", "y"], "b": ["yes", "no"], "t": [0, 1]})
        >>> s = infer_schema(df, "t", "classification")
        >>> [(f.name, f.kind) for f in s.features], s.input_dim, s.classes
        ([('a', 'numeric'), ('c', 'categorical'), ('b', 'boolean')], 4, (0, 1))
    """
    ref = resolve_task(task)
    kinds = infer_kinds(frame, target, ref, overrides)
    features: list[Feature] = []
    for name, kind in kinds.items():
        if kind == "ignore":
            continue
        categories: tuple[str, ...] = ()
        encoding = ""
        if kind == "categorical":
            categories = tuple(sorted({category_str(v) for v in frame[name].dropna().unique()}))
            if max_categories is not None and len(categories) > max_categories:
                encoding = "frequency"
        features.append(Feature(name, str(kind), categories, encoding=encoding))
    return FeatureSchema(
        features=tuple(features),
        target=target,
        task=ref.name,
        classes=target_codec(ref.target_kind).labels(frame[target]),
        image_shape=None if image_shape is None else tuple(int(s) for s in image_shape),
        input_dim=len(encoded_columns(features, encode)),
        encoded_names=encoded_columns(features, encode),
        target_kind=ref.target_kind,
    )
