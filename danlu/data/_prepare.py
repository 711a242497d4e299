"""``prepare_data``: from the recipe's ``data:`` block to train / validation / test arrays.

The order matters and is the point of this module:

1. load the rows and check the target (no missing values; numeric for regression; two or more
   classes for classification);
2. infer the schema and drop ignored columns;
3. drop rows with missing features (``missing: drop``) and exact duplicates (``dedupe``) *before*
   splitting, so that no copy of a test row is trained on;
4. split, then remove outliers from the *training* rows only (the model must still be judged on
   ordinary and unusual test rows alike);
5. fit the preprocessor on the training rows only (no statistic of validation or test rows leaks
   into training) and transform every split with it; ``data.reduce`` is part of it;
6. resample the encoded *training* arrays for ``data.imbalance`` (validation and test rows keep
   their real class balance).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from danlu.config import DataConfig
from danlu.data._augment import check_augment
from danlu.data._checks import check_data
from danlu.data._fingerprint import fingerprint_arrays, fingerprint_frame
from danlu.data._imbalance import imbalance_class_weight, resample_training
from danlu.data._prepared import PreparedData
from danlu.data._preprocessor import Preprocessor, first_row, numeric_values
from danlu.data._quality import quality_report
from danlu.data._schema import (
    FeatureSchema,
    check_task,
    infer_kinds,
    infer_schema,
    preview,
    sorted_labels,
)
from danlu.data._sources import RawData, load_source
from danlu.data._split import kfold_indices, split_indices
from danlu.errors import DataError
from danlu.logging import get_logger

__all__ = ["SplitRows", "outlier_rows", "prepare_data", "split_rows"]

logger = get_logger(__name__)

_DEFAULT_THRESHOLD = {"zscore": 3.0, "iqr": 1.5}


def _check_target(column: pd.Series, target: str, task: str) -> None:
    missing = column.isna().to_numpy()
    if missing.any():
        raise DataError(
            f"Target column '{target}' has {int(missing.sum())} missing value(s) in "
            f"{len(column)} rows, the first at row {first_row(missing)} (1 = first data row). "
            "Every row needs a target: drop or fill those rows."
        )
    if task == "regression":
        if not pd.api.types.is_numeric_dtype(column.dtype) or pd.api.types.is_bool_dtype(
            column.dtype
        ):
            raise DataError(
                f"Regression needs a numeric target, but column '{target}' holds {column.dtype} "
                f"values such as {column.iloc[0]!r}. Use task: classification, or pick a numeric "
                "target column."
            )
        return
    labels = column.unique()
    if len(labels) < 2:
        raise DataError(
            f"Classification needs at least two classes, but target column '{target}' holds only "
            f"{labels[0]!r} in all {len(column)} rows. Check data.target, or add rows of the "
            "other classes."
        )
    # Many classes with a row or two each cannot be learned nor tested: a quantity or an id.
    if len(labels) > 20 and len(column) < 3 * len(labels):
        raise DataError(
            f"Target column '{target}' does not look like classes: {len(labels)} classes in "
            f"{len(column)} rows ({len(column) / len(labels):.1f} rows per class). If it is a "
            "quantity, use task: regression; if it is an id, pick another data.target."
        )


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
        classes: the sorted class labels (classification), else None.
        stratify: whether the split kept class proportions.
        rows_loaded: rows before cleaning.
        missing_dropped: rows dropped for a missing feature value.
        duplicates_dropped: exact duplicates dropped.
        train_idx: row positions in ``frame`` of the training split (sorted, int64).
        val_idx: likewise, validation.
        test_idx: likewise, test.
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


def split_rows(raw: RawData, config: DataConfig, task: str) -> SplitRows:
    """Check the target, infer kinds, drop missing / duplicate rows, and split: steps 1-4 above.

    ``prepare_data`` and ``inspect_data`` share it, so ``danlu data inspect`` sees the very
    splits that training uses.

    Example:
        >>> from danlu.config import DataConfig
        >>> from danlu.data import load_source
        >>> rows = split_rows(load_source("builtin:iris"), DataConfig(source="builtin:iris"),
        ...                   "classification")
        >>> len(rows.frame), len(rows.train_idx), len(rows.test_idx)
        (149, 104, 30)
    """
    check_task(task)
    prep = config.prepare
    frame, target = raw.frame, raw.target
    _check_target(frame[target], target, task)
    image_shape = tuple(config.image_shape) if config.image_shape else raw.image_shape
    kinds = infer_kinds(frame, target, task, config.features)
    schema = infer_schema(frame, target, task, kinds, encode=prep.encode, image_shape=image_shape)
    features = list(schema.feature_names)
    if not features:
        raise DataError(
            f"No feature columns are left in '{raw.source}': every column but the target "
            f"'{target}' is ignored. Remove some 'ignore' entries from data.features."
        )
    rows_loaded = len(frame)

    # Both drops happen before the split, so no duplicate of a test row can land in training.
    missing_dropped = duplicates_dropped = 0
    if prep.missing == "drop":
        mask = frame[features].isna().any(axis=1).to_numpy()
        frame, missing_dropped = _drop(frame, mask, "a feature value is missing (missing: drop)")
    if prep.dedupe:
        mask = frame.duplicated(subset=[*features, target]).to_numpy()
        frame, duplicates_dropped = _drop(frame, mask, "exact duplicates of earlier rows")
    frame = frame.reset_index(drop=True)
    if len(frame) == 0:
        raise DataError(
            f"No rows are left in '{raw.source}' after dropping {missing_dropped} row(s) with "
            f"missing values and {duplicates_dropped} duplicate(s). Use another missing strategy."
        )
    _check_target(frame[target], target, task)
    classes = sorted_labels(frame[target]) if task == "classification" else None

    stratify = config.split.stratify if config.split.stratify is not None else classes is not None
    if stratify and classes is None:
        logger.warning("data.split.stratify is ignored for regression: it needs classes.")
        stratify = False
    split = config.split
    train_idx, val_idx, test_idx = split_indices(
        frame[target].to_numpy(), test=split.test, val=split.val, stratify=stratify, seed=split.seed
    )
    return SplitRows(
        frame=frame, target=target, kinds=kinds, schema=schema, features=features,
        image_shape=image_shape, classes=classes, stratify=bool(stratify),
        rows_loaded=rows_loaded, missing_dropped=missing_dropped,
        duplicates_dropped=duplicates_dropped,
        train_idx=train_idx, val_idx=val_idx, test_idx=test_idx,
    )  # fmt: skip


def cv_splits(
    config: DataConfig, task: str, k: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``k`` cross-validation folds of the cleaned rows, as ``(train, val, test)`` positions.

    Each fold holds one k-th of the rows out as its test split (stratified for classification
    when every class has k rows); the validation split, the recipe's ``split.val`` share of all
    rows, is carved from the remaining rows, so early stopping never sees the held-out fold.
    Pass each triple to ``prepare_data(..., indices=...)``.

    Example:
        >>> from danlu.config import DataConfig
        >>> folds = cv_splits(DataConfig(source="builtin:iris"), "classification", 5)
        >>> [len(te) for _, _, te in folds]
        [30, 30, 30, 30, 29]
    """
    if config.stream is not None:
        raise DataError(
            "Cross-validation needs the rows in memory; data.stream reads them in chunks. "
            "Remove evaluate.cross_validation or data.stream."
        )
    rows = split_rows(load_source(config.source, config.target), config, task)
    y = rows.frame[rows.target].to_numpy()
    folds = []
    for rest, test_idx in kfold_indices(y, k, stratify=rows.stratify, seed=config.split.seed):
        share = min(config.split.val * len(y) / max(len(rest), 1), 0.5)
        train_pos, val_pos, _ = split_indices(
            y[rest], test=0.0, val=share, stratify=rows.stratify, seed=config.split.seed
        )
        folds.append((rest[train_pos], rest[val_pos], test_idx))
    return folds


def prepare_data(
    config: DataConfig,
    task: str,
    *,
    indices: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> PreparedData:
    """Load, clean, split and encode the data a recipe's ``data:`` block describes.

    Args:
        config: the recipe's ``data`` block.
        task: ``classification`` or ``regression``.
        indices: (train, val, test) row positions of the cleaned rows to use instead of the
            recipe's split (one cross-validation fold, from :func:`cv_splits`).

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
    check_task(task)
    if config.stream is not None:  # larger than memory: Parquet read in chunks, never all at once
        if indices is not None:  # a fold's rows cannot be picked out of a stream
            raise DataError(
                "Cross-validation folds (indices) need the rows in memory; data.stream reads "
                "them in chunks. Remove evaluate.cross_validation or data.stream."
            )
        from danlu.data._stream import prepare_stream

        return prepare_stream(config, task)
    prep = config.prepare
    raw = load_source(config.source, config.target)
    if config.checks is not None:  # the recipe's expectations come first: fail before any work
        check_data(raw.frame, config.checks, raw.source)
    raw_fingerprint = fingerprint_frame(raw.frame)
    rows = split_rows(raw, config, task)
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
        absent = sorted(set(map(str, classes)) - {str(v) for v in train[target].unique()})
        if absent:
            logger.warning(
                "Class %s has no training rows; the model cannot learn it. Add data of that class.",
                preview(absent),
            )

    class_weight = imbalance_class_weight(config.imbalance, classes)
    pre = Preprocessor(
        prep, target=target, task=task, overrides=kinds, image_shape=image_shape, classes=classes,
        reduce=config.reduce,
    ).fit(train)  # fmt: skip
    fitted = pre.schema_
    # data.reduce drops the image layout (fitted.image_shape is None then): nothing to check.
    if (
        image_shape is not None
        and fitted.image_shape is not None
        and int(np.prod(image_shape)) != fitted.input_dim
    ):
        where = "data.image_shape" if config.image_shape else f"the image shape of '{raw.source}'"
        raise DataError(
            f"{where} {list(image_shape)} holds {int(np.prod(image_shape))} values, but the "
            f"prepared rows have {fitted.input_dim} feature columns. Make the shape's product "
            f"equal {fitted.input_dim}, or remove data.image_shape."
        )
    check_augment(config.augment, fitted.image_shape)
    val, test = frame.iloc[val_idx], frame.iloc[test_idx]
    arrays = (
        pre.transform(train), pre.encode_target(train[target]),
        pre.transform(val), pre.encode_target(val[target]),
        pre.transform(test), pre.encode_target(test[target]),
    )  # fmt: skip
    # Only the training arrays are resampled, after encoding: validation and test stay real.
    x_train, y_train, imbalance = resample_training(
        arrays[0], arrays[1], config.imbalance, classes, split.seed
    )
    arrays = (x_train, y_train, *arrays[2:])
    report = {
        "source": raw.source,
        "rows_loaded": rows_loaded,
        "missing_dropped": missing_dropped,
        "duplicates_dropped": duplicates_dropped,
        "outliers_removed": outliers_removed,
        "rows": {"train": len(train), "val": len(val), "test": len(test)},
        "features": len(features),
        "ignored": [c for c, kind in kinds.items() if kind == "ignore"],
        "input_dim": fitted.input_dim,
        "stratified": bool(stratify),
    }
    if config.imbalance.method != "none":
        report["imbalance"] = imbalance
    if pre.reducer_ is not None:
        report["reduce"] = pre.reducer_.summary()
    quality = {"source": raw.source, **quality_report(
        frame, target, task, train_idx=train_idx, test_idx=test_idx, features=features, kinds=kinds
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
    )
