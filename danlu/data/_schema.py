"""The feature schema: which columns are features, of which kind, and how they are encoded.

The schema travels with the model (as JSON) so that serving applies exactly the preprocessing used
in training. :func:`infer_schema` decides each column's kind from its values; ``data.features`` in
the recipe overrides it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from danlu.data._target import (
    TARGET_KINDS,
    TaskLike,
    resolve_task,
    target_codec,
)
from danlu.data._values import preview, to_plain
from danlu.errors import DataError
from danlu.logging import get_logger
from danlu.registry import did_you_mean

__all__ = ["KINDS", "Feature", "FeatureSchema", "infer_schema"]

logger = get_logger(__name__)

KINDS = ("numeric", "categorical", "boolean", "ignore")

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
        kind: ``numeric``, ``categorical`` or ``boolean``.
        categories: the known categories of a categorical column (sorted strings), else ``()``.
    """

    name: str
    kind: str
    categories: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "categories": list(self.categories)}


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
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSchema:
        """Rebuild a schema from :meth:`to_dict`'s output.

        Raises:
            DataError: a key is missing or malformed.
        """
        try:
            features = tuple(
                Feature(str(f["name"]), str(f["kind"]), tuple(str(c) for c in f["categories"]))
                for f in data["features"]
            )
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
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"The feature schema is malformed ({type(exc).__name__}: {exc}). It must be the "
                "output of FeatureSchema.to_dict(); re-export the model if the file was edited."
            ) from exc


def _legacy_target_kind(task: str) -> str:
    """The target kind a schema saved without one meant: classes for classification, else values."""
    return "classes" if task == "classification" else "values"


def encoded_columns(features: Sequence[Feature], encode: str) -> tuple[str, ...]:
    """The encoded column names of ``features``: one-hot expands each category in place."""
    names: list[str] = []
    for f in features:
        if f.kind == "categorical" and encode == "onehot":
            names.extend(f"{f.name}={c}" for c in f.categories)
        else:
            names.append(f.name)
    return tuple(names)


def _infer_kind(column: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(column.dtype):
        return "boolean"
    if pd.api.types.is_numeric_dtype(column.dtype):
        return "numeric"
    if pd.api.types.is_datetime64_any_dtype(column.dtype) or isinstance(
        column.dtype, pd.PeriodDtype | pd.IntervalDtype
    ):
        logger.warning(
            "Column '%s' holds dates or intervals (%s), which danlu does not encode yet; it is "
            "ignored. Derive numeric columns from it (e.g. day of week) to use it.",
            column.name,
            column.dtype,
        )
        return "ignore"
    values = column.dropna()
    tokens = {str(to_plain(v)).strip().lower() for v in values.unique()}
    if len(tokens) == 2 and len(tokens & TRUE_TOKENS) == 1 and len(tokens & FALSE_TOKENS) == 1:
        return "boolean"
    return "categorical"


def check_overrides(
    overrides: Mapping[str, str] | None, columns: Sequence[str], target: str
) -> dict[str, str]:
    """Validate ``data.features`` overrides against the frame's columns."""
    checked: dict[str, str] = {}
    for name, kind in (overrides or {}).items():
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
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The kind of every column but the target (``ignore`` included), overrides winning."""
    resolve_task(task)
    columns = [str(c) for c in frame.columns]
    if target not in columns:
        raise DataError(
            f"Target column '{target}' is not in the data.{did_you_mean(target, columns)} "
            f"Columns: {preview(columns)}. Set data.target to one of them."
        )
    kinds = check_overrides(overrides, columns, target)
    return {name: kinds.get(name) or _infer_kind(frame[name]) for name in columns if name != target}


def infer_schema(
    frame: pd.DataFrame,
    target: str,
    task: str | TaskLike,
    overrides: Mapping[str, str] | None = None,
    *,
    encode: str = "onehot",
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
        if kind == "categorical":
            categories = tuple(sorted({category_str(v) for v in frame[name].dropna().unique()}))
            _warn_high_cardinality(name, len(categories), len(frame))
        features.append(Feature(name, kind, categories))
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


def _warn_high_cardinality(name: str, n_categories: int, n_rows: int) -> None:
    if n_categories > 100 and n_categories > 0.5 * n_rows:
        logger.warning(
            "Categorical column '%s' has %d distinct values in %d rows; it looks like an id or "
            "free text. Set data.features: {%s: ignore} if it carries no signal.",
            name,
            n_categories,
            n_rows,
            name,
        )
