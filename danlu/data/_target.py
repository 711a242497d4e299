"""Target kinds: what one row's target is, and how it is checked, fitted, encoded and decoded.

The data layer knows kinds of *target*, never names of tasks. A task tells it which kind it
trains on through its ``target_kind`` (see :class:`TaskLike`); the strings ``"classification"``
and ``"regression"`` still work and mean ``classes`` and ``values``.

=============== ============================================ =====================================
kind            a row's target                               encoded as
=============== ============================================ =====================================
``classes``     one label                                    int64 index into the sorted classes
``values``      one number                                   float32 ``(y - mean) / std``, with the
                                                             training mean and std
``label_sets``  a set of labels (possibly empty)             float32 multi-hot ``(N, L)`` over the
                                                             sorted label vocabulary ``classes``
=============== ============================================ =====================================

A label-set cell may be a list, tuple, set or numpy array of labels; a JSON list string such as
``'["a", "b"]'``; a string of labels separated by ``|`` such as ``"a|b"`` (spaces around each
label are stripped); or a single scalar label. An empty string, ``"[]"``, an empty list or a
missing cell (an empty CSV field) is a row with no label. ``data.target`` may also list several
0/1 columns, one per label; :func:`~danlu.data.load_source` packs them into one label-set column.

Each kind is one :class:`TargetCodec`; the rest of the data layer asks :func:`target_codec` for
it instead of testing the task's name.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from danlu.data._values import (
    first_row,
    numeric_values,
    preview,
    sort_labels,
    sorted_labels,
    to_plain,
)
from danlu.errors import DataError
from danlu.logging import get_logger
from danlu.registry import did_you_mean

__all__ = [
    "LABEL_SEPARATOR",
    "TARGET_KINDS",
    "TASK_TARGET_KINDS",
    "FittedTarget",
    "TargetCodec",
    "TargetFit",
    "TaskLike",
    "TaskRef",
    "check_task_fit",
    "label_set",
    "resolve_task",
    "target_codec",
]

_log = get_logger(__name__)

TARGET_KINDS = ("classes", "values", "label_sets")
#: The task names the data layer has always accepted as strings, and their target kinds.
TASK_TARGET_KINDS = {"classification": "classes", "regression": "values"}
#: Separates the labels of a label-set cell written as one string: ``"sports|politics"``.
LABEL_SEPARATOR = "|"
# A class target is refused when it has more than 20 classes with fewer than 3 rows per class
# on average, or more than 100 classes with fewer than 10: a quantity or an id, not classes.
_CLASS_LIMITS = ((20, 3.0), (100, 10.0))
# Regression over this few distinct integers (e.g. 0/1/2 codes) gets a warning.
_FEW_CODES = 10


@runtime_checkable
class TaskLike(Protocol):
    """What the data layer needs of a task: its name and the kind of target it trains on.

    Any object with these two attributes works (``danlu.tasks.Task`` subclasses, or a
    ``SimpleNamespace(name="multilabel", target_kind="label_sets")``).
    """

    @property
    def name(self) -> str: ...

    @property
    def target_kind(self) -> str: ...


@dataclass(frozen=True)
class TaskRef:
    """A task as the data layer keeps it: its name and its target kind (one of TARGET_KINDS).

    Example:
        >>> resolve_task("regression")
        TaskRef(name='regression', target_kind='values')
    """

    name: str
    target_kind: str


def resolve_task(task: str | TaskLike) -> TaskRef:
    """``task`` as a :class:`TaskRef`: a known task name, or any object with ``name`` and
    ``target_kind``.

    Raises:
        DataError: an unknown task name, an object without those attributes, or an unknown
            target kind.

    Example:
        >>> from types import SimpleNamespace
        >>> resolve_task(SimpleNamespace(name="multilabel", target_kind="label_sets")).target_kind
        'label_sets'
    """
    if isinstance(task, str):
        kind = TASK_TARGET_KINDS.get(task)
        if kind is None:
            names = tuple(TASK_TARGET_KINDS)
            raise DataError(
                f"The data layer prepares tabular data for tasks {', '.join(names)}; got task "
                f"'{task}'.{did_you_mean(task, names)} Another task is passed as a task object "
                f"whose target_kind is one of {', '.join(TARGET_KINDS)}."
            )
        return TaskRef(task, kind)
    name, kind = getattr(task, "name", None), getattr(task, "target_kind", None)
    if not isinstance(name, str) or not name:
        raise DataError(
            f"A task must be {' or '.join(repr(t) for t in TASK_TARGET_KINDS)}, or an object "
            f"with a 'name' and a 'target_kind'; got {task!r}."
        )
    if kind not in TARGET_KINDS:
        raise DataError(
            f"Task '{name}' declares target_kind {kind!r}, which the data layer does not know."
            f"{did_you_mean(str(kind), TARGET_KINDS)} Valid kinds: {', '.join(TARGET_KINDS)}."
        )
    return TaskRef(name, str(kind))


class FittedTarget(Protocol):
    """The learned target state a codec encodes with (a :class:`FeatureSchema` is one)."""

    @property
    def classes(self) -> tuple[Any, ...] | None: ...

    @property
    def target_mean(self) -> float | None: ...

    @property
    def target_std(self) -> float | None: ...


@dataclass(frozen=True)
class TargetFit:
    """What :meth:`TargetCodec.fit` learns: classes (or labels), or the mean and std."""

    classes: tuple[Any, ...] | None = None
    target_mean: float | None = None
    target_std: float | None = None


def _require_targets(column: pd.Series, target: str, where: str = "") -> None:
    missing = column.isna().to_numpy()
    if missing.any():
        raise DataError(
            f"Target column '{target}' has {int(missing.sum())} missing value(s) in "
            f"{len(column)} rows{where}, the first at row {first_row(missing)} (1 = first data "
            "row). Every row needs a target: fill those rows, or set "
            "data.prepare.missing_target: drop to drop them (the count is reported)."
        )


def _unknown(
    target: str, unknown: set[str], row: int, known: Sequence[Any], what: str
) -> DataError:
    """The error for target labels that the fitted classes (or label vocabulary) lack."""
    return DataError(
        f"Target column '{target}' holds label(s) {preview(sorted(unknown))} (first at row "
        f"{row}) that are not among the known {what} {preview([str(c) for c in known])}. Add "
        "rows with those labels to the training data or remove them."
    )


class TargetCodec(ABC):
    """How one kind of target is checked, learned, encoded and decoded (stateless)."""

    #: the kind, one of TARGET_KINDS.
    kind: ClassVar[str]
    #: dtype name of the encoded target.
    dtype: ClassVar[str]

    def normalize(self, column: pd.Series, target: str) -> pd.Series:
        """The column with each cell in its canonical, hashable form (unchanged by default)."""
        return column

    @abstractmethod
    def check(self, column: pd.Series, target: str) -> None:
        """Raise DataError unless ``column`` (every row, cleaned) can be this kind of target."""

    def labels(self, column: pd.Series) -> tuple[Any, ...] | None:
        """The sorted classes / label vocabulary of ``column``; None for numbers."""
        return None

    @abstractmethod
    def fit(
        self, column: pd.Series, target: str, classes: Sequence[Any] | None = None
    ) -> TargetFit:
        """Learn the encoding from training rows; ``classes`` (if given) wins over the rows'."""

    @abstractmethod
    def encode(self, column: pd.Series, target: str, fitted: FittedTarget) -> np.ndarray:
        """Raw targets → the array a model trains on."""

    @abstractmethod
    def decode(self, array: np.ndarray, fitted: FittedTarget) -> np.ndarray:
        """Invert :meth:`encode`."""

    def empty(self, fitted: FittedTarget) -> np.ndarray:
        """An encoded target with zero rows."""
        return np.empty(0, dtype=self.dtype)


class ClassesCodec(TargetCodec):
    """One label per row → int64 index into the sorted classes."""

    kind = "classes"
    dtype = "int64"

    def check(self, column: pd.Series, target: str) -> None:
        _require_targets(column, target)
        try:
            labels = column.unique()
        except TypeError:  # unhashable cells: lists, i.e. several labels per row
            raise DataError(
                f"Target column '{target}' holds lists such as {column.iloc[0]!r}, but this task "
                "needs one class per row. For several labels per row use a task whose target "
                "kind is label_sets."
            ) from None
        if len(labels) < 2:
            raise DataError(
                f"A class target needs at least two classes, but target column '{target}' holds "
                f"only {labels[0]!r} in all {len(column)} rows. Check data.target, or add rows of "
                "the other classes."
            )
        # Many classes with a few rows each cannot be learned nor tested: a quantity or an id.
        n, k = len(column), len(labels)
        for most, rows_per_class in _CLASS_LIMITS:
            if k > most and n < rows_per_class * k:
                numeric = pd.api.types.is_numeric_dtype(column.dtype)
                raise DataError(
                    f"Target column '{target}' does not look like classes: {k} classes in {n} "
                    f"rows ({n / k:.1f} rows per class; danlu asks for at least "
                    f"{rows_per_class:g} rows per class on average above {most} classes). "
                    + (
                        "Its values are numbers: use task: regression to predict them."
                        if numeric
                        else "If it is a quantity, use task: regression; if it is an id, pick "
                        "another data.target."
                    )
                )

    def labels(self, column: pd.Series) -> tuple[Any, ...]:
        return sorted_labels(column)

    def fit(
        self, column: pd.Series, target: str, classes: Sequence[Any] | None = None
    ) -> TargetFit:
        _require_targets(column, target, " to fit")
        known = sorted_labels(column) if classes is None else tuple(classes)
        return TargetFit(classes=known)

    def encode(self, column: pd.Series, target: str, fitted: FittedTarget) -> np.ndarray:
        _require_targets(column, target)
        classes = fitted.classes or ()
        index = {c: i for i, c in enumerate(classes)}
        codes = np.fromiter((index.get(to_plain(v), -1) for v in column), np.int64, len(column))
        unknown = codes < 0
        if unknown.any():
            labels = {str(v) for v in column[unknown]}
            raise _unknown(target, labels, first_row(unknown), classes, "classes")
        return codes

    def decode(self, array: np.ndarray, fitted: FittedTarget) -> np.ndarray:
        classes = fitted.classes or ()
        k = len(classes)
        if array.size and (array.min() < 0 or array.max() >= k):
            raise DataError(
                f"Class indices must lie in 0..{k - 1} (there are {k} classes); got values from "
                f"{array.min()} to {array.max()}."
            )
        return np.asarray(classes)[array.astype(np.int64)]


class ValuesCodec(TargetCodec):
    """A number per row → float32 standardized with the training mean and std."""

    kind = "values"
    dtype = "float32"

    def check(self, column: pd.Series, target: str) -> None:
        _require_targets(column, target)
        dtype = column.dtype
        if not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
            raise DataError(
                f"A numeric target is needed, but column '{target}' holds {dtype} values such "
                f"as {column.iloc[0]!r}. Use a task with a class target (task: classification), "
                "or pick a numeric target column."
            )

    def fit(
        self, column: pd.Series, target: str, classes: Sequence[Any] | None = None
    ) -> TargetFit:
        _require_targets(column, target, " to fit")
        y = numeric_values(column)
        std = float(np.std(y))
        return TargetFit(target_mean=float(np.mean(y)), target_std=std if std > 0 else 1.0)

    def encode(self, column: pd.Series, target: str, fitted: FittedTarget) -> np.ndarray:
        _require_targets(column, target)
        mean, std = fitted.target_mean or 0.0, fitted.target_std or 1.0
        return ((numeric_values(column) - mean) / std).astype(np.float32)

    def decode(self, array: np.ndarray, fitted: FittedTarget) -> np.ndarray:
        mean, std = fitted.target_mean or 0.0, fitted.target_std or 1.0
        return array.astype("float64") * std + mean


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _one_label(item: Any, cell: Any) -> Any:
    item = to_plain(item)
    if isinstance(item, bool | int | str) or (isinstance(item, float) and math.isfinite(item)):
        return item
    raise DataError(
        f"A label set holds {item!r}, which is not a label (labels are strings or numbers), "
        f"in {cell!r}."
    )


def label_set(value: Any) -> tuple[Any, ...]:
    """One label-set cell as a sorted tuple of distinct labels (see the module doc for forms).

    Raises:
        DataError: a JSON string that is not a list, or an element that is not a label.

    Example:
        >>> label_set("b|a"), label_set('["a", "c"]'), label_set(["c", "a", "c"]), label_set("")
        (('a', 'b'), ('a', 'c'), ('a', 'c'), ())
    """
    if isinstance(value, list | tuple | set | frozenset | np.ndarray):
        items = value.ravel().tolist() if isinstance(value, np.ndarray) else list(value)
        return sort_labels(_one_label(item, value) for item in items)
    value = to_plain(value)
    if _is_missing(value):
        return ()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"The label set {value!r} starts with '[' but is not a JSON list ({exc}). "
                    'Write it as ["a", "b"] or as a|b.'
                ) from None
            if not isinstance(parsed, list):  # pragma: no cover - '[' always parses to a list
                raise DataError(f"The label set {value!r} is not a JSON list.")
            return sort_labels(_one_label(item, value) for item in parsed)
        return sort_labels(p.strip() for p in text.split(LABEL_SEPARATOR) if p.strip())
    return (_one_label(value, value),)


class LabelSetsCodec(TargetCodec):
    """A set of labels per row → float32 multi-hot ``(N, L)`` over the sorted label vocabulary."""

    kind = "label_sets"
    dtype = "float32"

    def normalize(self, column: pd.Series, target: str) -> pd.Series:
        sets = np.empty(len(column), dtype=object)
        for i, value in enumerate(column):
            try:
                sets[i] = label_set(value)
            except DataError as exc:
                raise DataError(f"Target column '{target}', row {i + 1}: {exc}") from None
        return pd.Series(sets, index=column.index, name=column.name, dtype=object)

    def check(self, column: pd.Series, target: str) -> None:
        if not self.labels(column):
            raise DataError(
                f"Target column '{target}' holds no label in any of its {len(column)} rows, so "
                "there is nothing to learn. Check data.target; label sets are lists, JSON lists "
                f"or strings such as 'a{LABEL_SEPARATOR}b'."
            )

    def labels(self, column: pd.Series) -> tuple[Any, ...]:
        return sort_labels(label for labels in self.normalize(column, "") for label in labels)

    def fit(
        self, column: pd.Series, target: str, classes: Sequence[Any] | None = None
    ) -> TargetFit:
        known = self.labels(column) if classes is None else tuple(to_plain(c) for c in classes)
        if not known:
            self.check(column, target)
        return TargetFit(classes=known)

    def encode(self, column: pd.Series, target: str, fitted: FittedTarget) -> np.ndarray:
        sets = self.normalize(pd.Series(column), target)
        classes = fitted.classes or ()
        index = {c: i for i, c in enumerate(classes)}
        out = np.zeros((len(sets), len(classes)), dtype=np.float32)  # (N, L)
        unknown: set[str] = set()
        first_unknown = 0
        for row, labels in enumerate(sets):
            for label in labels:
                j = index.get(label)
                if j is None:
                    first_unknown = first_unknown or row + 1
                    unknown.add(str(label))
                else:
                    out[row, j] = 1.0
        if unknown:
            raise _unknown(target, unknown, first_unknown, classes, "labels")
        return out

    def decode(self, array: np.ndarray, fitted: FittedTarget) -> np.ndarray:
        classes = np.asarray(fitted.classes or (), dtype=object)
        if array.ndim != 2 or array.shape[1] != len(classes):
            raise DataError(
                f"Label sets decode from an array of shape (rows, {len(classes)}), one column "
                f"per label; got shape {array.shape}."
            )
        on = array.astype("float64") > 0.5
        out = np.empty(len(array), dtype=object)
        for i, row in enumerate(on):
            out[i] = tuple(classes[row])
        return out

    def empty(self, fitted: FittedTarget) -> np.ndarray:
        return np.empty((0, len(fitted.classes or ())), dtype=self.dtype)


def check_task_fit(column: pd.Series, target: str, task: TaskRef) -> None:
    """Warn when the task looks wrong for the target: a regression over a few integer codes.

    (A class target with far too many classes is refused by the classes codec's ``check``.)

    Example:
        >>> check_task_fit(pd.Series([0.5, 1.5, 2.5]), "y", resolve_task("regression"))
    """
    if task.target_kind != "values":
        return
    values = numeric_values(column)
    values = values[~np.isnan(values)]
    if values.size < 3 * _FEW_CODES or not np.all(values == np.round(values)):
        return
    distinct = np.unique(values)
    if 2 <= len(distinct) <= _FEW_CODES:
        shown = ", ".join(f"{v:g}" for v in distinct)
        _log.warning(
            "Target column '%s' holds only %d distinct whole numbers (%s) in %d rows. If they "
            "are categories (codes, ratings, counts of a few kinds), use task: classification; "
            "regression treats them as amounts.",
            target,
            len(distinct),
            shown,
            values.size,
        )


_CODECS: dict[str, TargetCodec] = {
    codec.kind: codec for codec in (ClassesCodec(), ValuesCodec(), LabelSetsCodec())
}


def target_codec(kind: str) -> TargetCodec:
    """The codec of a target kind.

    Example:
        >>> target_codec("label_sets").encode(
        ...     pd.Series(["a|b", ""]), "y", TargetFit(classes=("a", "b"))).tolist()
        [[1.0, 1.0], [0.0, 0.0]]
    """
    try:
        return _CODECS[kind]
    except KeyError:
        raise DataError(
            f"Unknown target kind '{kind}'.{did_you_mean(kind, TARGET_KINDS)} Valid kinds: "
            f"{', '.join(TARGET_KINDS)}."
        ) from None
