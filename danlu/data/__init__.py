"""The data layer: sources, schema inference, cleaning, encoding, splits and fingerprints.

The pipeline calls one function, :func:`prepare_data`, which turns the recipe's ``data:`` block
into train / validation / test arrays plus the fitted :class:`Preprocessor` and
:class:`FeatureSchema` that travel with the model. The data layer knows kinds of *target*
(``classes``, ``values``, ``label_sets``; see :data:`TARGET_KINDS`), never names of tasks: a task
is passed as ``"classification"`` / ``"regression"`` or as any object with ``name`` and
``target_kind`` (:class:`TaskLike`). Everything here works on pandas frames and
numpy arrays; torch is imported only inside the augmentation functions, which run per batch.

Example:
    >>> from danlu.config import DataConfig
    >>> from danlu.data import prepare_data
    >>> data = prepare_data(DataConfig(source="builtin:wine"), "classification")
    >>> data.n_features, data.n_classes
    (13, 3)
"""

from __future__ import annotations

from danlu.data._augment import Augmenter, Mix, check_augment
from danlu.data._checks import Violation, check_data, find_violations
from danlu.data._drift import DriftMonitor, drift_reference, drift_status
from danlu.data._fingerprint import fingerprint_arrays, fingerprint_frame
from danlu.data._imbalance import imbalance_class_weight, resample_training
from danlu.data._inspect import infer_task, inspect_data
from danlu.data._prepare import cv_splits, outlier_rows, prepare_data, row_accounting
from danlu.data._prepared import PreparedData
from danlu.data._preprocessor import Preprocessor
from danlu.data._psi import PSI_MAJOR, PSI_MODERATE, psi
from danlu.data._quality import quality_report
from danlu.data._quality_html import quality_html
from danlu.data._reduce import FeatureReducer
from danlu.data._schema import Feature, FeatureSchema, TextSlice, infer_schema
from danlu.data._series import (
    SeriesSplits,
    forecast_window,
    future_times,
    prepare_forecast_data,
    window_columns,
)
from danlu.data._sources import (
    DATAFRAME_PREFIX,
    BuiltinDataset,
    RawData,
    list_builtin,
    load_source,
)
from danlu.data._split import RecipeDataError, kfold_indices, split_indices, time_split_indices
from danlu.data._stream import TrainStream, prepare_stream
from danlu.data._target import TARGET_KINDS, TaskLike, TaskRef, label_set, resolve_task
from danlu.data._text import TEXT_MODEL_TYPES, TextEncoder
from danlu.data._values import to_plain

__all__ = [
    "SeriesSplits",
    "forecast_window",
    "future_times",
    "prepare_forecast_data",
    "window_columns",
    "DATAFRAME_PREFIX",
    "PSI_MAJOR",
    "PSI_MODERATE",
    "TARGET_KINDS",
    "TEXT_MODEL_TYPES",
    "Augmenter",
    "BuiltinDataset",
    "DriftMonitor",
    "Feature",
    "FeatureReducer",
    "FeatureSchema",
    "PreparedData",
    "Preprocessor",
    "RawData",
    "TaskLike",
    "TaskRef",
    "TextEncoder",
    "TextSlice",
    "TrainStream",
    "Violation",
    "Mix",
    "check_augment",
    "cv_splits",
    "row_accounting",
    "drift_reference",
    "drift_status",
    "check_data",
    "find_violations",
    "fingerprint_arrays",
    "fingerprint_frame",
    "imbalance_class_weight",
    "infer_schema",
    "infer_task",
    "inspect_data",
    "kfold_indices",
    "time_split_indices",
    "RecipeDataError",
    "label_set",
    "list_builtin",
    "load_source",
    "outlier_rows",
    "prepare_data",
    "prepare_stream",
    "psi",
    "to_plain",
    "quality_html",
    "quality_report",
    "resample_training",
    "resolve_task",
    "split_indices",
]
