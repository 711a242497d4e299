"""PreparedData: what the data layer hands to training — splits, schema, fitted preprocessor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from danlu.config import AugmentStep
from danlu.data._preprocessor import Preprocessor
from danlu.data._schema import FeatureSchema

if TYPE_CHECKING:
    from danlu.data._series import SeriesSplits
    from danlu.data._stream import TrainStream

__all__ = ["TEXT_CHARS", "PreparedData", "TextSplits", "raw_texts"]

#: The characters of a cell that the raw-text consumers (the report's TF-IDF baseline and its
#: text perturbations) read: as many as a served request may hold, so a 1 MB cell stays cheap.
TEXT_CHARS = 100_000


def raw_texts(frame: pd.DataFrame, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Each text column of ``frame`` as an object array of ``str`` (missing: ``""``; bytes
    decoded as UTF-8; at most :data:`TEXT_CHARS` characters), row-aligned with ``frame``.

    Strings are the frame's own objects, not copies.

    Raises:
        DataError: a value that is not text (a number, a list ...), naming column and row.

    Example:
        >>> raw_texts(pd.DataFrame({"body": ["a b", None], "n": [1, 2]}), ["body"])["body"]
        array(['a b', ''], dtype=object)
    """
    from danlu.data._text import clean_texts

    out = {}
    for column in columns:
        texts, _ = clean_texts(frame[column].to_numpy(dtype=object), column, TEXT_CHARS)
        array = np.empty(len(texts), dtype=object)
        array[:] = texts
        out[column] = array  # (n,) str
    return out


@dataclass(frozen=True)
class TextSplits:
    """The raw text of the text columns for the training and validation rows.

    The prepared matrices hold token ids, which a bag-of-words baseline cannot read and a typo
    cannot perturb; this keeps the strings (the test rows' are in ``test_frame``).

    Attributes:
        train: text column → (n_train,) object array of ``str``, the training rows before any
            resampling (``data.imbalance``), aligned with ``y_train``.
        y_train: the prepared targets of those rows (``x_train``'s may be resampled).
        val: text column → (n_val,) object array of ``str``, aligned with ``y_val``.
    """

    train: dict[str, np.ndarray]
    y_train: np.ndarray
    val: dict[str, np.ndarray]

    @property
    def columns(self) -> tuple[str, ...]:
        """The text columns, in feature order."""
        return tuple(self.train)


@dataclass(frozen=True)
class PreparedData:
    """Train / validation / test arrays ready for a model, and what is needed to replay them.

    Attributes:
        x_train: float32, shape (n_train, input_dim).
        y_train: by target kind: int64 class indices (``classes``), float32 standardized values
            (``values``), or float32 multi-hot rows of shape (n_train, n_labels) (``label_sets``).
        x_val: float32, shape (n_val, input_dim); may have zero rows.
        y_val: like ``y_train``.
        x_test: float32, shape (n_test, input_dim); may have zero rows.
        y_test: like ``y_train``.
        schema: the fitted :class:`FeatureSchema` (travels with the model).
        preprocessor: the fitted :class:`Preprocessor` (replays preprocessing on raw rows).
        raw_fingerprint: fingerprint of the rows as loaded.
        fingerprint: fingerprint of the prepared splits.
        report: what happened, as plain JSON types (rows loaded, dropped, per split ...).
        quality: the data quality report of the cleaned rows and their splits
            (``danlu.data.quality_report``), as plain JSON types.
        test_frame: the raw test rows (target removed), aligned with ``x_test`` row by row, so
            evaluation and serving can replay the preprocessing and compare.
        augment: the recipe's ``data.augment`` steps, applied by the engine to training batches.
        class_weight: ``data.imbalance: class_weight``'s loss weights ('balanced' or
            {label: weight}) for the trainer; None otherwise (``train.class_weight`` wins).
        stream: with ``data.stream``, the :class:`~danlu.data.TrainStream` that reads the splits
            from Parquet in chunks (the ``x_*`` / ``y_*`` arrays then have zero rows); else None.
        texts: with text columns, their raw strings for the training and validation rows
            (:class:`TextSplits`, for the trust report); else None.
        series: ``task: forecasting``: the clean series the windows were cut from
            (:class:`~danlu.data.SeriesSplits`, for classical models and backtests); else None.

    Example:
        >>> from danlu.config import DataConfig
        >>> from danlu.data import prepare_data
        >>> data = prepare_data(DataConfig(source="builtin:iris"), "classification")
        >>> data.n_features, data.n_classes, data.x_train.dtype.name
        (4, 3, 'float32')
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    schema: FeatureSchema
    preprocessor: Preprocessor
    raw_fingerprint: str
    fingerprint: str
    report: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    test_frame: pd.DataFrame = field(default_factory=pd.DataFrame)
    augment: tuple[AugmentStep, ...] = ()
    class_weight: str | dict[str, float] | None = None
    stream: TrainStream | None = None
    texts: TextSplits | None = None
    series: SeriesSplits | None = None

    @property
    def n_features(self) -> int:
        """The number of model inputs (columns after encoding, ``schema.input_dim``)."""
        return self.schema.input_dim

    @property
    def n_classes(self) -> int | None:
        """The number of classes (or labels, for label sets); None for numeric targets."""
        return self.schema.n_classes
