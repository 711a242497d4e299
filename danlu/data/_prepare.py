"""``prepare_data``: from the recipe's ``data:`` block to train / validation / test arrays.

The order matters and is the point of this module:

1. load the rows and check the target by its kind (``danlu.data._target``): no missing values and
   a number per row for ``values`` (``missing_target: drop`` drops the rows without one, counted);
   two or more classes, and not more than a sane number for the rows, for ``classes``; at least
   one label for ``label_sets`` (whose cells are parsed into sorted tuples of labels first);
2. infer the schema and drop ignored columns;
3. drop rows with missing features (``missing: drop``) and, only when asked, exact duplicates
   (``dedupe``) *before* splitting;
4. split: at random, keeping every set of identical rows (equal features) in one split, so that
   no copy of a test row is trained on and no row is deleted; or by ``split.group``; or by time
   (``split: {by: time, column: ...}``). Then remove outliers from the *training* rows only
   (the model must still be judged on ordinary and unusual test rows alike);
5. fit the preprocessor on the training rows only (no statistic of validation or test rows leaks
   into training) and transform every split with it; ``data.reduce`` is part of it;
6. resample the encoded *training* arrays for ``data.imbalance`` (validation and test rows keep
   their real class balance; single-label class targets only).

Text columns (``data.features: {COL: text}``, or free text when the recipe's model reads text)
become token ids (``danlu.data._text``): the tokenizer is the pretrained model's own
(``tokenizer_dir``) or trained on the training rows in step 5; nothing scales, reduces, augments
or interpolates (SMOTE) them.

``task`` is ``"classification"``, ``"regression"`` or any task object with ``name`` and
``target_kind`` (:class:`~danlu.data.TaskLike`); only its target kind matters here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from danlu.config import DataConfig
from danlu.data._augment import check_augment
from danlu.data._checks import check_data
from danlu.data._fingerprint import fingerprint_arrays, fingerprint_frame
from danlu.data._imbalance import SMOTE_METHODS, imbalance_class_weight, resample_training
from danlu.data._prepared import PreparedData, TextSplits, raw_texts
from danlu.data._preprocessor import Preprocessor
from danlu.data._quality import quality_report
from danlu.data._schema import (
    FeatureSchema,
    feature_kinds,
    infer_kinds,
    infer_schema,
    missing_rows,
)
from danlu.data._sources import RawData, load_source
from danlu.data._split import (
    RecipeDataError,
    column_split_indices,
    group_ids,
    kfold_indices,
    row_groups,
    split_indices,
    time_split_indices,
)
from danlu.data._target import TaskLike, TaskRef, check_task_fit, resolve_task, target_codec
from danlu.data._values import numeric_values, preview
from danlu.errors import DataError
from danlu.logging import get_logger

__all__ = ["SplitRows", "outlier_rows", "prepare_data", "row_accounting", "split_rows"]

logger = get_logger(__name__)

_DEFAULT_THRESHOLD = {"zscore": 3.0, "iqr": 1.5}


#: How log and error messages name each target kind.
TARGET_KIND_WORDS = {
    "classes": "one class per row",
    "values": "a number per row",
    "label_sets": "a set of labels per row",
}


def normalized_target(raw: RawData, task: TaskRef) -> RawData:
    """``raw`` with its target cells in canonical form (label sets: sorted tuples of labels).

    Raises:
        DataError: listed 0/1 label columns for a task whose target is not label sets, or a
            label-set cell that cannot be read.
    """
    kind = task.target_kind
    if raw.label_columns and kind != "label_sets":
        raise DataError(
            f"data.target lists {len(raw.label_columns)} label columns "
            f"({preview(raw.label_columns)}), which make a label-set target, but task "
            f"'{task.name}' needs {TARGET_KIND_WORDS[kind]}. Name one target column in "
            "data.target, or use a task whose target kind is label_sets."
        )
    column = raw.frame[raw.target]
    canonical = target_codec(kind).normalize(column, raw.target)
    if canonical is column:
        return raw
    return replace(raw, frame=raw.frame.assign(**{raw.target: canonical}))


def outlier_rows(
    frame: pd.DataFrame,
    columns: Sequence[str],
    method: str = "zscore",
    threshold: float | None = None,
) -> np.ndarray:
    """A boolean mask of the rows of ``frame`` with an outlying value in any of ``columns``.

    ``zscore``: ``|x - mean| / std > threshold`` (default 3.0); ``iqr``: ``x`` outside
    ``[q1 - t * iqr, q3 + t * iqr]`` (default t = 1.5). Statistics come from ``frame`` itself;
    missing values are never outliers; columns with zero spread are skipped.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"x": [1.0, 2.0, 3.0, 2.0, 100.0]})
        >>> outlier_rows(df, ["x"], "iqr").tolist()
        [False, False, False, False, True]
    """
    if method not in _DEFAULT_THRESHOLD:
        raise DataError(
            f"Unknown outlier method '{method}'. Valid methods: {', '.join(_DEFAULT_THRESHOLD)}."
        )
    threshold = threshold or _DEFAULT_THRESHOLD[method]
    flagged = np.zeros(len(frame), dtype=bool)
    for name in columns:
        values = numeric_values(frame[name])
        present = values[~np.isnan(values)]
        if present.size == 0:
            continue
        with np.errstate(invalid="ignore"):  # NaN comparisons are False: missing is no outlier
            if method == "zscore":
                std = float(np.std(present))
                if std > 0:
                    flagged |= np.abs(values - float(np.mean(present))) / std > threshold
            else:
                q1, q3 = np.percentile(present, [25, 75])
                spread = float(q3 - q1)
                if spread > 0:
                    flagged |= (values < q1 - threshold * spread) | (
                        values > q3 + threshold * spread
                    )
    return flagged


def _drop(frame: pd.DataFrame, mask: np.ndarray, why: str) -> tuple[pd.DataFrame, int]:
    count = int(mask.sum())
    if count:
        logger.info("Dropped %d of %d rows: %s.", count, len(frame), why)
    return frame.loc[~mask], count


@dataclass(frozen=True)
class SplitRows:
    """The cleaned rows and their split, before any statistic is fitted (see :func:`split_rows`).

    Attributes:
        frame: the rows left after ``missing: drop`` and ``dedupe``, index 0..n-1.
        target: the target column.
        kinds: every column's kind but the target's (``ignore`` included).
        schema: the schema inferred from all rows (categories, classes).
        features: the feature columns, in order.
        image_shape: the image shape of one row, if any.
        classes: the sorted classes (``classes`` targets) or label vocabulary (``label_sets``)
            of all rows; None for ``values``.
        stratify: whether the split kept class proportions.
        rows_loaded: rows before cleaning.
        missing_dropped: rows dropped for a missing feature value.
        duplicates_dropped: exact duplicates dropped.
        target_dropped: rows dropped for a missing target (``missing_target: drop``).
        split_by: how the rows were split: ``random``, ``group`` or ``time``.
        groups: each row's group (sets of identical rows, or ``split.group``), None when
            every row is alone (or the split is by time).
        train_idx: row positions in ``frame`` of the training split (sorted, int64).
        val_idx: likewise, validation.
        test_idx: likewise, test.
        task: the task's name and target kind.
    """

    frame: pd.DataFrame
    target: str
    kinds: dict[str, str]
    schema: FeatureSchema
    features: list[str]
    image_shape: tuple[int, ...] | None
    classes: tuple[Any, ...] | None
    stratify: bool
    rows_loaded: int
    missing_dropped: int
    duplicates_dropped: int
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    task: TaskRef
    target_dropped: int = 0
    split_by: str = "random"
    groups: np.ndarray | None = None


def split_rows(
    raw: RawData, config: DataConfig, task: str | TaskLike, *, text_models: bool = False
) -> SplitRows:
    """Check the target, infer kinds, drop missing / duplicate rows, and split: steps 1-4 above.

    ``prepare_data`` and ``inspect_data`` share it, so ``danlu data inspect`` sees the very
    splits that training uses. ``text_models``: the recipe's model reads text, so free-text
    columns are inferred ``text`` (else ``ignore``).

    Example:
        >>> from danlu.config import DataConfig
        >>> from danlu.data import load_source
        >>> rows = split_rows(load_source("builtin:iris"), DataConfig(source="builtin:iris"),
        ...                   "classification")
        >>> len(rows.frame), len(rows.train_idx), len(rows.test_idx)
        (150, 105, 30)
    """
    ref = resolve_task(task)
    return _split_rows(normalized_target(raw, ref), config, ref, text_models)


def _split_rows(
    raw: RawData, config: DataConfig, task: TaskRef, text_models: bool = False
) -> SplitRows:
    """:func:`split_rows` of rows whose target is already normalized."""
    prep = config.prepare
    frame, target = raw.frame, raw.target
    rows_loaded = len(frame)
    codec = target_codec(task.target_kind)
    target_dropped = 0
    if prep.missing_target == "drop":
        mask = frame[target].isna().to_numpy()
        frame, target_dropped = _drop(frame, mask, "the target is missing (missing_target: drop)")
        frame = frame.reset_index(drop=True)
    codec.check(frame[target], target)
    image_shape = tuple(config.image_shape) if config.image_shape else raw.image_shape
    # kinds from the rows as loaded: the rows a junk value is reported at are the file's
    overrides = config.features
    if config.split.by == "column" and config.split.column is not None:
        # the column naming the split is not an input (it is unknown for a row to predict)
        overrides = {config.split.column: "ignore", **(overrides or {})}
    kinds = infer_kinds(raw.frame, target, task, overrides, text_models=text_models)
    schema = infer_schema(frame, target, task, kinds, encode=prep.encode, image_shape=image_shape)
    features = list(schema.feature_names)
    if not features:
        raise DataError(
            f"No feature columns are left in '{raw.source}': every column but the target "
            f"'{target}' is ignored. Remove some 'ignore' entries from data.features."
        )
    split = config.split
    for key, name in (("column", split.column), ("group", split.group)):
        if name is not None and name not in frame.columns:
            from danlu.registry import did_you_mean

            columns = [str(c) for c in frame.columns]
            raise RecipeDataError(
                ("data", "split", key),
                f"column '{name}' is not in '{raw.source}'",
                name,
                f"{did_you_mean(name, columns)} Columns: {preview(columns)}.".strip(),
            )

    # Both drops happen before the split; dedupe only when asked (copies are kept together).
    missing_dropped = duplicates_dropped = 0
    if prep.missing == "drop":
        mask = missing_rows(frame, features, kinds)  # junk read as missing (errors: nan) too
        frame, missing_dropped = _drop(frame, mask, "a feature value is missing (missing: drop)")
    if prep.dedupe:
        mask = frame.duplicated(subset=[*features, target]).to_numpy()
        frame, duplicates_dropped = _drop(frame, mask, "exact duplicates of earlier rows (dedupe)")
    frame = frame.reset_index(drop=True)
    if len(frame) == 0:
        raise DataError(
            f"No rows are left in '{raw.source}' after dropping {missing_dropped} row(s) with "
            f"missing values and {duplicates_dropped} duplicate(s). Use another missing strategy."
        )
    codec.check(frame[target], target)
    check_task_fit(frame[target], target, task)
    classes = codec.labels(frame[target])
    stratify = _stratify(split.stratify if split.by != "time" else False, task.target_kind)
    y = frame[target].to_numpy()
    groups: np.ndarray | None = None
    split_by = "random"
    if split.by == "time":
        assert split.column is not None
        split_by = "time"
        order = _time_order(frame[split.column], split.column)
        train_idx, val_idx, test_idx = time_split_indices(order, test=split.test, val=split.val)
    elif split.by == "column":
        assert split.column is not None
        split_by = "column"
        train_idx, val_idx, test_idx = column_split_indices(
            frame[split.column], y, val=split.val, stratify=bool(stratify), seed=split.seed
        )
    else:
        if split.group is not None:
            split_by, groups = "group", _group_ids(frame[split.group])
        else:
            groups = row_groups(frame[features])
        if groups.max(initial=-1) + 1 == len(frame):
            groups = None  # every row alone: the plain split
        train_idx, val_idx, test_idx = split_indices(
            y, test=split.test, val=split.val, stratify=stratify, seed=split.seed,
            groups=groups, strict_groups=split.group is not None,
        )  # fmt: skip
        if groups is not None and split.group is None:
            copies = len(frame) - int(groups.max()) - 1
            logger.info(
                "%d row(s) repeat an earlier row's features; each set of copies is kept in one "
                "split, so no copy of a test row is trained on (nothing is deleted).",
                copies,
            )
    return SplitRows(
        frame=frame, target=target, kinds=kinds, schema=schema, features=features,
        image_shape=image_shape, classes=classes, stratify=bool(stratify),
        rows_loaded=rows_loaded, missing_dropped=missing_dropped,
        duplicates_dropped=duplicates_dropped,
        train_idx=train_idx, val_idx=val_idx, test_idx=test_idx, task=task,
        target_dropped=target_dropped, split_by=split_by, groups=groups,
    )  # fmt: skip


def _group_ids(column: pd.Series) -> np.ndarray:
    """Group ids of ``split.group``'s values; a row without a value is a group of its own."""
    missing = int(column.isna().sum())
    if missing:
        logger.info(
            "%d row(s) have no value in the group column '%s'; each is a group of its own.",
            missing,
            column.name,
        )
    return group_ids(column)


def _time_order(column: pd.Series, name: str) -> np.ndarray:
    """The column as sortable numbers: numbers as they are, dates and times as nanoseconds."""
    missing = column.isna().to_numpy()
    if missing.any():
        raise RecipeDataError(
            ("data", "split", "column"),
            f"column '{name}' has {int(missing.sum())} missing value(s) (the first at row "
            f"{int(np.argmax(missing)) + 1}), and a row without a time cannot be ordered",
            name,
            "Fill or drop those rows first, or order by another column.",
        )
    dtype = column.dtype
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        return column.to_numpy(dtype="float64")
    if isinstance(dtype, pd.DatetimeTZDtype):
        column = column.dt.tz_convert("UTC").dt.tz_localize(None)
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        return column.to_numpy().astype("datetime64[ns]").astype(np.int64)
    parsed = pd.to_datetime(column.astype(str), errors="coerce", format="mixed", utc=True)
    bad = parsed.isna().to_numpy()
    if bad.any():
        first = int(np.argmax(bad))
        raise RecipeDataError(
            ("data", "split", "column"),
            f"column '{name}' holds {column.iloc[first]!r} at row {first + 1} "
            f"({int(bad.sum())} value(s) in all), which is neither a date/time nor a number",
            name,
            "Order by a column of dates, times or numbers, or clean those values.",
        )
    return parsed.dt.tz_localize(None).to_numpy().astype("datetime64[ns]").astype(np.int64)


def row_accounting(report: dict[str, Any]) -> dict[str, Any]:
    """Where every loaded row went, from a data report (:func:`prepare_data`'s ``report``).

    ``loaded`` rows; ``dropped`` per step (``missing_target``, ``missing_values``, ``duplicates``,
    ``outliers``: training rows only); ``used`` per split; ``copies_kept_together``: rows that
    repeat another row's features and were kept in its split. ``loaded`` equals the dropped
    plus the used rows.

    Example:
        >>> from danlu.config import DataConfig
        >>> rows = row_accounting(prepare_data(DataConfig(source="builtin:iris"),
        ...                                    "classification").report)
        >>> rows["loaded"], sum(rows["dropped"].values()), sum(rows["used"].values())
        (150, 0, 150)
    """
    return {
        "loaded": int(report.get("rows_loaded", 0)),
        "dropped": {
            "missing_target": int(report.get("target_dropped", 0)),
            "missing_values": int(report.get("missing_dropped", 0)),
            "duplicates": int(report.get("duplicates_dropped", 0)),
            "outliers": int(report.get("outliers_removed", 0)),
        },
        "used": {k: int(v) for k, v in report.get("rows", {}).items()},
        "copies_kept_together": int(report.get("copies_kept_together", 0)),
    }


def _stratify(asked: bool | None, kind: str) -> bool:
    """Whether to stratify: by default for class targets, never for other kinds (logged)."""
    if kind == "classes":
        return True if asked is None else asked
    if asked:
        logger.warning(
            "data.split.stratify is ignored: stratifying needs a single-label class target, and "
            "this target holds %s. The rows are split at random (seeded by data.split.seed).",
            TARGET_KIND_WORDS[kind],
        )
    elif kind == "label_sets":
        logger.info(
            "The rows are split at random (seeded by data.split.seed), not stratified: "
            "stratifying needs a single-label class target, and this target holds %s.",
            TARGET_KIND_WORDS[kind],
        )
    return False


def cv_splits(
    config: DataConfig,
    task: str | TaskLike,
    k: int,
    *,
    frame: pd.DataFrame | None = None,
    text_models: bool = False,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``k`` cross-validation folds of the cleaned rows, as ``(train, val, test)`` positions.

    Each fold holds one k-th of the rows out as its test split (stratified for class targets
    when every class has k rows); the validation split, the recipe's ``split.val`` share of all
    rows, is carved from the remaining rows, so early stopping never sees the held-out fold.
    Sets of identical rows, and the groups of ``split.group``, stay whole in one fold. Pass each
    triple to ``prepare_data(..., indices=...)`` (with the same ``frame`` and
    ``text_models``, if any).

    Example:
        >>> from danlu.config import DataConfig
        >>> folds = cv_splits(DataConfig(source="builtin:wine"), "classification", 5)
        >>> [len(te) for _, _, te in folds]
        [36, 36, 36, 35, 35]
    """
    if config.stream is not None:
        raise DataError(
            "Cross-validation needs the rows in memory; data.stream reads them in chunks. "
            "Remove evaluate.cross_validation or data.stream."
        )
    if config.split.by == "time":
        raise DataError(
            "Cross-validation shuffles rows into folds, which a split by time (data.split.by: "
            "time) must not do: later rows would train a model tested on earlier ones. Remove "
            "evaluate.cross_validation, or split at random."
        )
    source = frame if frame is not None else config.source
    raw = load_source(source, config.target, read=config.read)
    rows = split_rows(raw, config, task, text_models=text_models)
    y = rows.frame[rows.target].to_numpy()
    groups, seed = rows.groups, config.split.seed
    folds = []
    for rest, test_idx in kfold_indices(y, k, stratify=rows.stratify, seed=seed, groups=groups):
        share = min(config.split.val * len(y) / max(len(rest), 1), 0.5)
        train_pos, val_pos, _ = split_indices(
            y[rest], test=0.0, val=share, stratify=rows.stratify, seed=seed,
            groups=None if groups is None else groups[rest], strict_groups=False,
        )  # fmt: skip
        folds.append((rest[train_pos], rest[val_pos], test_idx))
    return folds


def _refuse_forecasting(task: TaskRef) -> None:
    """Forecasting rows are windows cut from time-ordered series: another preparation."""
    if task.name == "forecasting":
        raise DataError(
            "task: forecasting prepares its data from the recipe's forecast block: call "
            "prepare_forecast_data(config, forecast, task) (danlu.run does)."
        )


def _refuse_streamed_text(config: DataConfig) -> None:
    forced = [n for n, kind in feature_kinds(config.features).items() if kind == "text"]
    if forced:
        raise DataError(
            f"data.stream does not read text columns yet, and data.features makes "
            f"{preview(forced)} text. Remove data.stream (the rows are read into memory)."
        )


def _text_columns(config: DataConfig, schema: FeatureSchema) -> list[str]:
    """The text features; SMOTE and friends, which interpolate rows, are refused with them."""
    text = [f.name for f in schema.features if f.kind == "text"]
    if text and config.imbalance.method in SMOTE_METHODS:
        raise DataError(
            f"data.imbalance: {config.imbalance.method} makes new rows between neighbours, and "
            f"text column(s) {preview(text)} are token ids, which cannot be interpolated. Use "
            "class_weight or oversample with text."
        )
    return text


def _text_report(schema: FeatureSchema) -> dict[str, Any]:
    """The data report's ``text`` entry: each text column's token positions and tokenizer."""
    text = {
        f.name: {"max_length": f.max_length, "tokenizer": f.tokenizer, "vocab_size": f.vocab_size}
        for f in schema.features
        if f.kind == "text"
    }
    return {"text": text} if text else {}


def prepare_data(
    config: DataConfig,
    task: str | TaskLike,
    *,
    indices: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    frame: pd.DataFrame | None = None,
    text_models: bool = False,
    tokenizer_dir: Path | None = None,
) -> PreparedData:
    """Load, clean, split and encode the data a recipe's ``data:`` block describes.

    Args:
        config: the recipe's ``data`` block.
        task: ``classification``, ``regression``, or a task object with ``name`` and
            ``target_kind`` (``classes``, ``values`` or ``label_sets``). The encoded targets are
            int64 class indices, float32 standardized values, or float32 multi-hot ``(N, L)``.
        indices: (train, val, test) row positions of the cleaned rows to use instead of the
            recipe's split (one cross-validation fold, from :func:`cv_splits`).
        frame: rows to use instead of reading ``config.source`` (``danlu.run(recipe,
            data=frame)``); its fingerprint is the data fingerprint.
        text_models: the recipe's model reads text (``model.type: transformer`` or
            ``text_cnn``): free-text columns are inferred ``text`` instead of ``ignore``.
        tokenizer_dir: the pretrained model's directory; with ``data.text.tokenizer: auto`` its
            ``tokenizer.json`` tokenizes the text columns (None: one is trained on the
            training rows).

    Returns:
        The prepared splits with the fitted schema and preprocessor, fingerprints and a report.

    Raises:
        DataError: the source, target, features, split or image shape cannot be used as asked.
        NotFoundError: an unknown built-in data set.

    Example:
        >>> from danlu.config import DataConfig
        >>> data = prepare_data(DataConfig(source="builtin:digits"), "classification")
        >>> data.x_train.shape[1], data.schema.image_shape, data.report["rows"]["test"]
        (64, (1, 8, 8), 360)
    """
    ref = resolve_task(task)
    kind = ref.target_kind
    _refuse_forecasting(ref)
    if frame is not None and config.stream is not None:
        raise DataError(
            "data.stream reads a Parquet source in chunks, but the rows were passed as a "
            "DataFrame, which is in memory already. Remove data.stream to use it."
        )
    if config.stream is not None:  # larger than memory: Parquet read in chunks, never all at once
        _refuse_streamed_text(config)
        if indices is not None:  # a fold's rows cannot be picked out of a stream
            raise DataError(
                "Cross-validation folds (indices) need the rows in memory; data.stream reads "
                "them in chunks. Remove evaluate.cross_validation or data.stream."
            )
        from danlu.data._stream import prepare_stream

        return prepare_stream(config, ref)
    prep = config.prepare
    source = frame if frame is not None else config.source
    raw = normalized_target(load_source(source, config.target, read=config.read), ref)
    if config.checks is not None:  # the recipe's expectations come first: fail before any work
        check_data(raw.frame, config.checks, raw.source)
    raw_fingerprint = fingerprint_frame(raw.frame)
    rows = _split_rows(raw, config, ref, text_models)
    if indices is not None:
        train_idx, val_idx, test_idx = (np.sort(np.asarray(i, dtype=np.int64)) for i in indices)
        rows = replace(rows, train_idx=train_idx, val_idx=val_idx, test_idx=test_idx)
    frame, target, kinds, schema, image_shape = (
        rows.frame, rows.target, rows.kinds, rows.schema, rows.image_shape
    )  # fmt: skip
    features, classes, stratify, split = rows.features, rows.classes, rows.stratify, config.split
    rows_loaded, missing_dropped = rows.rows_loaded, rows.missing_dropped
    duplicates_dropped = rows.duplicates_dropped
    train_idx, val_idx, test_idx = rows.train_idx, rows.val_idx, rows.test_idx
    train = frame.iloc[train_idx]

    outliers_removed = 0
    if prep.outliers is not None:
        numeric = [f.name for f in schema.features if f.kind == "numeric"]
        flagged = outlier_rows(train, numeric, prep.outliers.method, prep.outliers.threshold)
        train, outliers_removed = _drop(train, flagged, f"{prep.outliers.method} outliers")
        if len(train) == 0:
            raise DataError(
                f"Outlier removal ({prep.outliers.method}) flagged every training row. Raise "
                "data.prepare.outliers.threshold or remove data.prepare.outliers."
            )
        if outliers_removed > 0.1 * len(flagged):
            logger.warning(
                "Outlier removal (%s) dropped %d of %d training rows; consider a higher threshold.",
                prep.outliers.method,
                outliers_removed,
                len(flagged),
            )
    if classes is not None:
        seen = target_codec(kind).labels(train[target]) or ()
        absent = sorted(set(map(str, classes)) - set(map(str, seen)))
        if absent:
            what = "Class" if kind == "classes" else "Label"
            logger.warning(
                "%s %s has no training rows; the model cannot learn it. Add data with it.",
                what,
                preview(absent),
            )

    text = _text_columns(config, schema)
    class_weight = imbalance_class_weight(config.imbalance, classes, target_kind=kind)
    pre = Preprocessor(
        prep, target=target, task=ref, overrides=kinds, image_shape=image_shape, classes=classes,
        reduce=config.reduce, text=config.text, tokenizer_dir=tokenizer_dir,
    ).fit(train)  # fmt: skip
    fitted = pre.schema_
    # data.reduce drops the image layout (fitted.image_shape is None then): nothing to check.
    if (
        image_shape is not None
        and fitted.image_shape is not None
        and int(np.prod(image_shape)) != fitted.input_dim
    ):
        where = "data.image_shape" if config.image_shape else f"the image shape of '{raw.source}'"
        others = [str(f.name) for f in fitted.features if f.kind != "numeric"]
        hint = (
            f" Columns that are not numbers: {preview(others)}; mark them 'ignore' in "
            "data.features (a column naming each row's split: data.split: {by: column, "
            "column: NAME})."
            if others
            else ""
        )
        raise DataError(
            f"{where} {list(image_shape)} holds {int(np.prod(image_shape))} values, but the "
            f"prepared rows have {fitted.input_dim} feature columns. Make the shape's product "
            f"equal {fitted.input_dim}, or remove data.image_shape.{hint}"
        )
    check_augment(config.augment, fitted.image_shape, text)
    val, test = frame.iloc[val_idx], frame.iloc[test_idx]
    arrays = (
        pre.transform(train), pre.encode_target(train[target]),
        pre.transform(val), pre.encode_target(val[target]),
        pre.transform(test), pre.encode_target(test[target]),
    )  # fmt: skip
    texts = (  # the raw strings, for the report's text baseline (before any resampling)
        TextSplits(raw_texts(train, text), arrays[1], raw_texts(val, text)) if text else None
    )
    # Only the training arrays are resampled, after encoding: validation and test stay real.
    x_train, y_train, imbalance = resample_training(
        arrays[0], arrays[1], config.imbalance, classes, split.seed, target_kind=kind
    )
    arrays = (x_train, y_train, *arrays[2:])
    report = {
        "source": raw.source,
        "rows_loaded": rows_loaded,
        "target_dropped": rows.target_dropped,
        "missing_dropped": missing_dropped,
        "duplicates_dropped": duplicates_dropped,
        "outliers_removed": outliers_removed,
        "rows": {"train": len(train), "val": len(val), "test": len(test)},
        "split_by": rows.split_by,
        "copies_kept_together": (
            len(frame) - int(rows.groups.max()) - 1
            if rows.groups is not None and rows.split_by == "random"
            else 0
        ),
        "features": len(features),
        "ignored": [c for c, kind in kinds.items() if kind == "ignore"],
        "input_dim": fitted.input_dim,
        "stratified": bool(stratify),
    }
    if config.imbalance.method != "none":
        report["imbalance"] = imbalance
    if pre.reducer_ is not None:
        report["reduce"] = pre.reducer_.summary()
    report.update(_text_report(fitted))
    quality = {"source": raw.source, **quality_report(
        frame, target, ref, train_idx=train_idx, test_idx=test_idx, features=features, kinds=kinds,
        schema=fitted, text_encoders=pre.text_,
    )}  # fmt: skip
    for warning in quality["warnings"]:  # alerts (leakage, shift ...) are warnings; notes info
        level = logging.WARNING if warning in quality["alerts"] else logging.INFO
        logger.log(level, "Data quality: %s", warning)
    return PreparedData(
        *arrays,
        schema=fitted,
        preprocessor=pre,
        raw_fingerprint=raw_fingerprint,
        fingerprint=fingerprint_arrays(*arrays),
        report=report,
        quality=quality,
        test_frame=test.drop(columns=[target]).reset_index(drop=True),
        augment=tuple(config.augment),
        class_weight=class_weight,
        texts=texts,
    )
