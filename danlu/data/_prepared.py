"""PreparedData: what the data layer hands to training — splits, schema, fitted preprocessor."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from danlu.config import AugmentStep
from danlu.data._preprocessor import Preprocessor
from danlu.data._schema import FeatureSchema

if TYPE_CHECKING:
    from danlu.data._stream import TrainStream

__all__ = ["PreparedData"]


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

    @property
    def n_features(self) -> int:
        """The number of model inputs (columns after encoding, ``schema.input_dim``)."""
        return self.schema.input_dim

    @property
    def n_classes(self) -> int | None:
        """The number of classes (or labels, for label sets); None for numeric targets."""
        return self.schema.n_classes
