"""One pass over a Parquet source: seeded splits by row number, exact moments, a reservoir sample.

Streaming cannot shuffle row positions and cut them like :func:`~danlu.data.split_indices`, so
each row's split comes from a seeded hash of its *global row number* (:func:`split_codes`), or of
its value in the ``split.group`` column (rows sharing a value share a split): the same on every
pass, in any reading order, and with no row held in memory. The pass then keeps, for
the training rows only:

* per numeric (and boolean) column: exact count, mean, variance (Chan et al.'s pairwise merge of
  per-chunk moments), min, max and missing count (:class:`Moments`);
* per categorical column: exact category counts, up to :data:`MAX_CATEGORIES` distinct values;
* for the target: class counts (over all splits, as the in-memory path reads classes from every
  row) or the moments of a numeric target;
* a seeded reservoir of ``sample_rows`` raw rows, for what one pass cannot give exactly
  (medians, robust scaling, most frequent numbers, feature reduction). The reservoir keeps the
  rows with the smallest hash keys, so it is the same whatever order the chunks come in.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from danlu.data._detect import read_errors
from danlu.data._parquet import ParquetLayout, iter_chunks
from danlu.data._schema import category_str
from danlu.data._target import TaskLike, resolve_task
from danlu.data._values import numeric_values, preview, to_plain
from danlu.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "MAX_CATEGORIES",
    "Moments",
    "SPLITS",
    "StreamStats",
    "collect_stats",
    "column_values",
    "row_uniform",
    "split_codes",
]

SPLITS = ("train", "val", "test")  # split code i is SPLITS[i]
MAX_CATEGORIES = 10_000  # distinct values counted per categorical column; beyond: sampled
_MAX_CLASSES = 10_000

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_SPLIT_SALT, _SAMPLE_SALT = 0x5EED_0001, 0x5EED_0002


def row_uniform(first: int, count: int, seed: int, salt: int = _SPLIT_SALT) -> np.ndarray:
    """A uniform number in [0, 1) per global row ``first .. first + count - 1`` (splitmix64).

    Example:
        >>> u = row_uniform(0, 4, seed=0)
        >>> bool(((u >= 0) & (u < 1)).all()), bool((u == row_uniform(0, 4, seed=0)).all())
        (True, True)
    """
    return _uniform(np.arange(first, first + count, dtype=np.uint64), seed, salt)


def _uniform(x: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """splitmix64 of the uint64 keys ``x``, as uniform numbers in [0, 1)."""
    key = np.uint64(((seed * 0x2545F4914F6CDD1D) ^ salt) % 2**64)
    x = x * _GOLDEN + key  # wraps modulo 2**64
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def group_uniform(groups: pa.Array, first: int, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per row from its group value (the same for equal values, in
    any chunk); a row without a value gets its row number's (a group of its own).

    Example:
        >>> import pyarrow as pa
        >>> u = group_uniform(pa.array(["a", "b", "a", None]), 0, seed=0)
        >>> bool(u[0] == u[2]), bool(u[0] != u[1])
        (True, True)
    """
    import pyarrow as pa

    text = groups.cast(pa.string()).to_numpy(zero_copy_only=False)  # one form for every chunk
    missing = np.asarray(groups.is_null())
    text[missing] = ""
    hashed = pd.util.hash_array(text.astype(object), categorize=False)
    u = _uniform(hashed.astype(np.uint64), seed, _SPLIT_SALT)
    if missing.any():
        u[missing] = row_uniform(first, len(u), seed)[missing]
    return u


def split_codes(
    first: int,
    count: int,
    *,
    test: float,
    val: float,
    seed: int,
    groups: pa.Array | None = None,
) -> np.ndarray:
    """Each row's split as a uint8 code (0 train, 1 val, 2 test), from its global row number,
    or from its value in ``groups`` (``split.group``'s column) when given.

    A row lands in test with probability ``test`` and in validation with probability ``val``,
    independently of every other row: the split sizes are near, not exactly, those fractions.

    Example:
        >>> codes = split_codes(0, 100_000, test=0.2, val=0.1, seed=0)
        >>> [round(float((codes == i).mean()), 2) for i in range(3)]
        [0.7, 0.1, 0.2]
    """
    u = row_uniform(first, count, seed) if groups is None else group_uniform(groups, first, seed)
    codes = np.zeros(count, dtype=np.uint8)
    codes[u < test + val] = 1
    codes[u < test] = 2
    return codes


@dataclass
class Moments:
    """Exact running count, mean, sum of squared deviations, min, max and missing count.

    Example:
        >>> m = Moments()
        >>> m.update(np.array([1.0, 2.0, np.nan])); m.update(np.array([3.0, 4.0]))
        >>> m.count, m.mean, m.var(), m.missing
        (4, 2.5, 1.25, 1)
    """

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    missing: int = 0

    def update(self, values: np.ndarray) -> None:
        """Add a chunk of float64 values (NaN = missing)."""
        nan = np.isnan(values)
        n_missing = int(nan.sum())
        present = values[~nan] if n_missing else values
        self.missing += n_missing
        if present.size:
            mean = float(present.mean())
            m2 = float(np.square(present - mean).sum())
            self.merge(int(present.size), mean, m2)
            self.min = min(self.min, float(present.min()))
            self.max = max(self.max, float(present.max()))

    def merge(self, count: int, mean: float, m2: float) -> None:
        """Merge a group's (count, mean, m2) into these moments (Chan, Golub & LeVeque)."""
        if count == 0:
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta * delta * self.count * count / total
        self.count = total

    def var(self, ddof: int = 0) -> float:
        """The variance (population variance with ``ddof=0``, as scikit-learn's scalers use)."""
        return self.m2 / (self.count - ddof) if self.count > ddof else 0.0

    def with_fill(self, value: float) -> Moments:
        """The moments once every missing value is replaced by ``value``."""
        out = Moments(self.count, self.mean, self.m2, self.min, self.max, 0)
        if self.missing:
            out.merge(self.missing, value, 0.0)
            out.min, out.max = min(out.min, value), max(out.max, value)
        return out

    def summary(self) -> dict[str, float | int | None]:
        """Plain JSON types for the data report."""
        present = self.count > 0
        return {
            "count": self.count,
            "missing": self.missing,
            "mean": self.mean if present else None,
            "std": math.sqrt(self.var()) if present else None,
            "min": self.min if present else None,
            "max": self.max if present else None,
        }


@dataclass
class StreamStats:
    """What one pass over a Parquet source learns (training rows unless said otherwise).

    Attributes:
        rows: rows per split (after ``missing: drop``), keyed ``train`` / ``val`` / ``test``.
        missing_dropped: rows dropped for a missing feature value (``missing: drop``), all splits.
        moments: numeric and boolean columns → exact :class:`Moments`.
        categories: categorical columns → category counts (strings, as the preprocessor encodes).
        truncated: categorical columns with more than :data:`MAX_CATEGORIES` distinct values.
        labels: class targets: label → count over every split.
        train_labels: class targets: label → count over the training rows.
        target: numeric targets: the target's :class:`Moments`.
        sample: the reservoir: up to ``sample_rows`` raw training rows.
    """

    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    missing_dropped: int = 0
    moments: dict[str, Moments] = field(default_factory=dict)
    categories: dict[str, Counter[str]] = field(default_factory=dict)
    truncated: set[str] = field(default_factory=set)
    labels: Counter[Any] = field(default_factory=Counter)
    train_labels: Counter[Any] = field(default_factory=Counter)
    target: Moments = field(default_factory=Moments)
    sample: pd.DataFrame = field(default_factory=pd.DataFrame)


def _is_number(dtype: pa.DataType) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_integer(dtype)
        or pa.types.is_floating(dtype)
        or pa.types.is_boolean(dtype)
        or pa.types.is_decimal(dtype)
    )


def column_values(array: pa.Array, kind: str, name: str) -> np.ndarray | None:
    """A numeric or boolean column as float64 with NaN for missing; None when not fast to get.

    Arrow numbers and booleans convert without pandas; numbers stored as strings go through
    :func:`numeric_values` (and its errors). Boolean spellings in strings return None: the
    caller then falls back to the preprocessor.
    """
    import pyarrow as pa

    if kind not in ("numeric", "boolean"):
        return None
    if _is_number(array.type) or pa.types.is_null(array.type):
        values = np.asarray(array.cast(pa.float64()).to_numpy(zero_copy_only=False), np.float64)
        if kind == "numeric" and np.isinf(values).any():
            numeric_values(pd.Series(values, name=name))  # raises its DataError (row, fix)
        return values
    if kind == "numeric":  # a kind read with errors: nan carries it (ColumnKind)
        return numeric_values(pd.Series(array.to_pandas(), name=name), read_errors(kind))
    return None


def _missing(array: pa.Array, values: np.ndarray | None) -> np.ndarray:
    if values is not None:
        return np.isnan(values)
    return np.asarray(pd.isna(array.to_pandas()))


def _label_counts(array: pa.Array) -> Counter[Any]:
    import pyarrow.compute as pc

    counts: Counter[Any] = Counter()
    for item in pc.value_counts(array).to_pylist():
        counts[to_plain(item["values"])] += int(item["counts"])
    return counts


def _check_target(array: pa.Array, first: int, name: str, kind: str, source: str) -> None:
    import pyarrow as pa

    numbers = _is_number(array.type)
    values = array.cast(pa.float64()).to_numpy(zero_copy_only=False) if numbers else None
    missing = _missing(array, None if values is None else np.asarray(values, np.float64))
    if missing.any():
        row = first + int(np.flatnonzero(missing)[0]) + 1
        raise DataError(
            f"Target column '{name}' has a missing value at row {row} of '{source}' (1 = first "
            "data row, counting over the files in name order). Every row needs a target: drop "
            "or fill those rows."
        )
    if kind == "values" and not (_is_number(array.type) and not pa.types.is_boolean(array.type)):
        raise DataError(
            f"A numeric target is needed, but column '{name}' of '{source}' holds "
            f"{array.type} values. Use a task with a class target (task: classification), or "
            "pick a numeric target column."
        )


class _Reservoir:
    """The ``size`` training rows with the smallest hash keys seen so far (order-independent)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.tables: list[pa.Table] = []
        self.keys: list[np.ndarray] = []
        self.held = 0
        self.threshold = math.inf  # rows with a key at or above it can never enter

    def offer(self, batch: pa.RecordBatch, keys: np.ndarray) -> None:
        import pyarrow as pa

        take = keys < self.threshold
        if not take.any():
            return
        self.tables.append(pa.Table.from_batches([batch.filter(pa.array(take))]))
        self.keys.append(keys[take])
        self.held += int(take.sum())
        if self.held > 2 * self.size:
            self._compact()

    def _compact(self) -> None:
        import pyarrow as pa

        keys = np.concatenate(self.keys)
        table = pa.concat_tables(self.tables)
        keep = np.argsort(keys, kind="stable")[: self.size]
        self.tables, self.keys = [table.take(pa.array(keep))], [keys[keep]]
        self.held = len(keep)
        if self.held == self.size:
            self.threshold = float(keys[keep[-1]])

    def frame(self) -> pd.DataFrame:
        if not self.tables:
            return pd.DataFrame()
        self._compact()
        return self.tables[0].to_pandas()


def collect_stats(
    layout: ParquetLayout,
    *,
    target: str,
    task: str | TaskLike,
    kinds: dict[str, str],
    test: float,
    val: float,
    seed: int,
    chunk_rows: int,
    sample_rows: int,
    drop_missing: bool,
    group: str | None = None,
) -> StreamStats:
    """Read every row once and learn the statistics of the training rows (see the module doc).

    Args:
        layout: the Parquet source.
        target: the target column.
        task: ``classification``, ``regression``, or a task object whose ``target_kind`` is
            ``classes`` or ``values``.
        kinds: every feature column's kind (``ignore`` columns are not read).
        test: fraction of rows for the test split (by row hash).
        val: fraction of rows for the validation split (by row hash).
        seed: the split (and reservoir) seed.
        chunk_rows: rows per chunk read.
        sample_rows: size of the reservoir sample.
        drop_missing: ``missing: drop``: leave out rows with a missing feature value, everywhere.
        group: ``split.group``: rows sharing a value of this column share a split.

    Raises:
        DataError: a missing target, a non-numeric numeric target, a value that does not fit
            its column's kind, too many classes, or a label-set target (not streamed).

    Example:
        >>> # stats = collect_stats(layout, target="y", task="classification", kinds={"x": "numeric"},
        >>> #                       test=0.2, val=0.1, seed=0, chunk_rows=65_536,
        >>> #                       sample_rows=10_000, drop_missing=False)
    """
    target_kind = resolve_task(task).target_kind
    if target_kind not in ("classes", "values"):
        raise DataError(
            "Streaming (data.stream) supports targets of one class or one number per row; "
            f"this task's target kind is {target_kind}. Remove data.stream."
        )
    features = [name for name, kind in kinds.items() if kind != "ignore"]
    stats = StreamStats()
    for name in features:
        if kinds[name] == "categorical":
            stats.categories[name] = Counter()
        else:
            stats.moments[name] = Moments()
    reservoir = _Reservoir(sample_rows)
    columns = [*features, target]
    extra = [group] if group is not None and group not in columns else []
    for first, batch in iter_chunks(layout.row_groups, [*columns, *extra], chunk_rows):
        n = batch.num_rows
        y = batch.column(target)
        _check_target(y, first, target, target_kind, layout.source)
        groups = None if group is None else batch.column(group)
        codes = split_codes(first, n, test=test, val=val, seed=seed, groups=groups)
        if extra:  # read to split by, not a feature: kept out of the sample
            batch = batch.select(columns)
        arrays = {name: batch.column(name) for name in features}
        values = {name: column_values(arrays[name], kinds[name], name) for name in features}
        keep = np.ones(n, dtype=bool)
        if drop_missing:
            for name in features:
                keep &= ~_missing(arrays[name], values[name])
            stats.missing_dropped += int(n - keep.sum())
        for i, split in enumerate(SPLITS):
            stats.rows[split] += int((keep & (codes == i)).sum())
        train = keep & (codes == 0)
        if target_kind == "classes":
            _count_labels(stats, y.filter(keep) if drop_missing else y, y.filter(train), target)
        else:
            stats.target.update(np.asarray(column_values(y, "numeric", target))[train])
        _add_features(stats, arrays, values, train)
        reservoir.offer(batch, _train_keys(first, n, seed, train))
    stats.sample = reservoir.frame()
    if stats.rows["train"] == 0:
        raise DataError(
            f"No training rows are left in '{layout.source}' ({layout.rows} rows, "
            f"{stats.missing_dropped} dropped for missing values). Lower data.split.test / val "
            "or use another data.prepare.missing strategy."
        )
    if target_kind == "classes":
        _check_classes(stats.labels, target, sum(stats.rows.values()))
    return stats


def _count_labels(stats: StreamStats, kept: pa.Array, train: pa.Array, target: str) -> None:
    """Add a chunk's class labels: ``kept`` (every split) and ``train`` (its training rows)."""
    stats.labels.update(_label_counts(kept))
    stats.train_labels.update(_label_counts(train))
    if len(stats.labels) > _MAX_CLASSES:
        raise DataError(
            f"Target column '{target}' has more than {_MAX_CLASSES} distinct values, "
            "which do not look like classes. If it is a quantity, use task: regression; "
            "if it is an id, pick another data.target."
        )


def _add_features(
    stats: StreamStats,
    arrays: dict[str, pa.Array],
    values: dict[str, np.ndarray | None],
    train: np.ndarray,
) -> None:
    """Add a chunk's training rows to each column's moments or category counts."""
    for name, column in values.items():
        if column is not None and name in stats.moments:
            stats.moments[name].update(column[train])
        elif name in stats.categories and name not in stats.truncated:
            counts = stats.categories[name]
            for label, count in _label_counts(arrays[name].filter(train)).items():
                if label is not None and not (isinstance(label, float) and math.isnan(label)):
                    counts[category_str(label)] += count
            if len(counts) > MAX_CATEGORIES:
                stats.truncated.add(name)


def _train_keys(first: int, n: int, seed: int, train: np.ndarray) -> np.ndarray:
    """Reservoir keys: a second seeded row hash; +inf for rows that are not training rows."""
    keys = row_uniform(first, n, seed, _SAMPLE_SALT)
    keys[~train] = math.inf
    return keys


def _check_classes(labels: Counter[Any], target: str, rows: int) -> None:
    if len(labels) < 2:
        only = preview([str(k) for k in labels]) or "no label"
        raise DataError(
            f"A class target needs at least two classes, but target column '{target}' holds only "
            f"{only} in all {rows} rows. Check data.target, or add rows of the other classes."
        )
    if len(labels) > 20 and rows < 3 * len(labels):
        raise DataError(
            f"Target column '{target}' does not look like classes: {len(labels)} classes in "
            f"{rows} rows. If it is a quantity, use task: regression; if it is an id, pick "
            "another data.target."
        )
