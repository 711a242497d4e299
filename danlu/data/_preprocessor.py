"""The preprocessor: imputation, scaling and encoding fitted on training rows, replayed anywhere.

:class:`Preprocessor` follows scikit-learn's estimator habits: the constructor only stores
settings, ``fit`` learns state (attributes ending in ``_``) from the *training* rows, and
``transform`` replays it on any raw rows — validation, test, or a request at serving time. Its
state is plain JSON (``to_dict`` / ``from_dict``) so it travels with the model; scikit-learn's
scalers are used to fit, and their learned centre and scale are kept as floats so the replay is
``(x - center) / scale`` with no pickled objects. With ``data.reduce`` it also owns a fitted
:class:`~danlu.data._reduce.FeatureReducer` (column selection or PCA), replayed after encoding.
Each text column owns a fitted :class:`~danlu.data._text.TextEncoder` (its tokenizer, saved as
the tokenizer's own JSON): its token ids fill ``max_length`` columns and are never scaled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from danlu.config import PrepareConfig, ReduceConfig, TextConfig
from danlu.data._datetime import (
    ISO,
    column_format,
    date_parts,
    datetime_seconds,
    fit_parts,
    parse_dates,
)
from danlu.data._detect import read_errors
from danlu.data._encoding import (
    _boolean_values,
    _category_codes,
    _category_values,
    _date_fill,
    _dense_matrix,
    _fit_scaler,
    _Layout,
    _mode,
    derive_columns,
    frequency_values,
    no_fill,
)
from danlu.data._reduce import FeatureReducer
from danlu.data._schema import (
    Feature,
    FeatureSchema,
    bool_token,
    category_str,
    encoded_columns,
    infer_kinds,
)
from danlu.data._target import TaskLike, TaskRef, resolve_task, target_codec
from danlu.data._text import TextEncoder
from danlu.data._values import coerce_numbers, numeric_values, preview, to_plain
from danlu.errors import DataError, NotFittedError
from danlu.logging import get_logger

__all__ = ["Preprocessor"]

logger = get_logger(__name__)

_FORMAT = "danlu.preprocessor"
# 2 added the feature reducer (data.reduce); target_kind is optional within 2. 3 added datetime
# features, frequency-encoded categories and errors: nan (options on the schema's features).
# 4 added text features (their tokenizers, and data.text).
_VERSION = 4
_READABLE_VERSIONS = (1, 2, 3, 4)


class Preprocessor:
    """Imputes, scales and encodes raw rows into a float32 matrix; encodes the target.

    Args:
        config: the recipe's ``data.prepare`` block (missing values, scaling, encoding).
        target: the target column.
        task: ``classification``, ``regression``, or a task object with ``name`` and
            ``target_kind`` (``classes``, ``values`` or ``label_sets``); kept as ``task`` (the
            name) and ``target_kind``.
        overrides: column → kind (``numeric``/``categorical``/``boolean``/``ignore``).
        image_shape: the image shape the encoded features form, if any (kept in the schema).
        classes: the known classes (or labels, for label sets); default: those of the fitted
            rows.
        reduce: the recipe's ``data.reduce`` block: a feature reducer fitted after encoding.
        text: the recipe's ``data.text`` block: how text columns are tokenized.
        tokenizer_dir: the pretrained model's directory, whose ``tokenizer.json`` tokenizes
            text columns when ``text.tokenizer`` is ``auto`` (None: train one on the rows).

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"x": [1.0, 3.0], "c": ["a", "b"], "y": [0.0, 2.0]})
        >>> pre = Preprocessor(target="y", task="regression").fit(df)
        >>> pre.transform(df).tolist()
        [[-1.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
        >>> pre.encode_target(df["y"]).tolist()
        [-1.0, 1.0]
    """

    def __init__(
        self,
        config: PrepareConfig | None = None,
        *,
        target: str,
        task: str | TaskLike,
        overrides: Mapping[str, str] | None = None,
        image_shape: Sequence[int] | None = None,
        classes: Sequence[Any] | None = None,
        reduce: ReduceConfig | None = None,
        text: TextConfig | None = None,
        tokenizer_dir: Path | None = None,
    ) -> None:
        self.config = config if config is not None else PrepareConfig.model_validate({})
        self.text = text if text is not None else TextConfig()
        self.tokenizer_dir = None if tokenizer_dir is None else Path(tokenizer_dir)
        self.target = target
        ref = resolve_task(task)
        self.task, self.target_kind = ref.name, ref.target_kind
        self.overrides = dict(overrides or {})
        self.image_shape = None if image_shape is None else tuple(int(s) for s in image_shape)
        self.classes = None if classes is None else tuple(to_plain(c) for c in classes)
        self.reduce = reduce
        self._schema: FeatureSchema | None = None  # set by fit / from_dict
        self.reducer_: FeatureReducer | None = None  # set by fit / from_dict with reduce
        self.text_: dict[str, TextEncoder] = {}  # text column → its tokenizer (fit / from_dict)
        self._layout_cache: tuple[Any, ...] | None = None  # (state objects..., _Layout)

    @property
    def schema_(self) -> FeatureSchema:
        """The fitted :class:`FeatureSchema` (raises NotFittedError before ``fit``)."""
        if self._schema is None:
            raise NotFittedError(
                "This Preprocessor is not fitted yet. Call fit(frame) with the training rows "
                "first, or rebuild a fitted one with Preprocessor.from_dict(...)."
            )
        return self._schema

    # ---- fitting -------------------------------------------------------------------------------

    def fit(self, frame: pd.DataFrame) -> Preprocessor:
        """Learn imputation values, scaling, categories and target encoding from training rows.

        Args:
            frame: the training rows, features and target.

        Returns:
            self.

        Raises:
            DataError: a column cannot be used as its kind, or has no values to learn from.
        """
        kinds = infer_kinds(frame, self.target, self._task_ref(), self.overrides)
        if all(kind == "ignore" for kind in kinds.values()):
            raise DataError(
                f"No feature columns are left: every column but the target '{self.target}' is "
                "ignored. Remove some 'ignore' entries from data.features."
            )
        text = [name for name, kind in kinds.items() if kind == "text"]
        if text and self.reduce is not None:
            raise DataError(
                f"data.reduce ({self.reduce.method}) works on numbers, and text column(s) "
                f"{preview(text)} are token ids. Remove data.reduce, or set data.features: "
                f"{{{text[0]}: ignore}} to train without the text."
            )
        fill: dict[str, Any] = {}
        features: list[Feature] = []
        dense: dict[str, np.ndarray] = {}  # scaled column → its filled training values
        encoders: dict[str, TextEncoder] = {}
        for name, kind in kinds.items():
            if kind == "ignore":
                continue
            if kind == "text":  # token ids: a tokenizer fitted on the training rows, no scaling
                encoders[name] = encoder = TextEncoder.fit(
                    self.read_column(frame[name], "text"),
                    self.text,
                    column=name,
                    tokenizer_dir=self.tokenizer_dir,
                )
                features.append(_text_feature(name, encoder))
                continue
            feature, fill[name], columns = self._fit_column(frame[name], name, kind)
            features.append(feature)
            dense.update(columns)
        names = list(dense)
        matrix = np.column_stack(list(dense.values())) if dense else np.empty((len(frame), 0))
        center, scale = _fit_scaler(self.config.scale, matrix)
        schema = self._fit_target(frame[self.target], features)
        # Assign the learned state last, so a failed fit leaves no half-fitted object behind.
        self.fill_ = fill
        self.center_ = {n: float(c) for n, c in zip(names, center, strict=True)}
        self.scale_ = {n: float(s) for n, s in zip(names, scale, strict=True)}
        self.text_ = encoders
        self._schema, self.reducer_ = schema, None
        if self.reduce is not None:
            try:
                self._fit_reducer(frame)
            except BaseException:
                self._schema = None
                raise
        return self

    def _fit_reducer(self, frame: pd.DataFrame) -> None:
        """Fit ``data.reduce`` on the encoded rows; the schema then describes its output."""
        assert self.reduce is not None and self._schema is not None
        schema = self._schema
        reducer = FeatureReducer(self.reduce).fit(
            self.transform_columns(self._read_frame(frame)),  # no reducer yet: the encoding
            self.encode_target(frame[self.target]),
            task=self._task_ref(),
            names=schema.encoded_names,
        )
        if schema.image_shape is not None:
            logger.warning(
                "data.reduce (%s) turns the %s image into %d plain feature columns, so the "
                "image layout is dropped: image models and image augmentations will refuse "
                "the data. Remove data.reduce to keep the image.",
                self.reduce.method,
                "x".join(str(s) for s in schema.image_shape),
                reducer.n_outputs_,
            )
        self._schema = replace(
            schema,
            image_shape=None,
            input_dim=reducer.n_outputs_,
            encoded_names=reducer.output_names_,
        )
        self.reducer_ = reducer

    def _fit_column(
        self, column: pd.Series, name: str, kind: str
    ) -> tuple[Feature, Any, dict[str, np.ndarray]]:
        """One feature fitted on its training values: ``(feature, fill value, scaled columns)``
        — the columns the scaler learns centre and scale of, by encoded name."""
        errors, kind = read_errors(kind), str(kind)  # the options, then the kind's plain name
        if kind == "datetime":
            fmt = column_format(column)
            values = datetime_seconds(column, fmt, errors)
            fill = self._fit_fill(name, kind, values)
            filled = self._filled(values, fill)
            parts, origin = fit_parts(filled)
            feature = Feature(name, "datetime", errors=errors, parts=parts, origin=origin,
                              date_format=fmt)  # fmt: skip
            derived = date_parts(filled, parts, origin)
            return feature, fill, {f"{name}.{p}": v for p, v in derived.items()}
        values = self.read_column(column, Feature(name, kind, errors=errors))
        fill = self._fit_fill(name, kind, values)
        filled = self._filled(values, fill)
        if kind == "numeric":
            return Feature(name, kind, errors=errors), fill, {name: filled}
        if kind == "boolean":
            return Feature(name, kind), fill, {}
        present = pd.Series(filled).dropna()
        categories = tuple(sorted(set(present)))
        if len(categories) <= self.config.max_categories:
            return Feature(name, kind, categories), fill, {}
        counts = present.value_counts()
        shares = tuple(float(counts[c]) / len(filled) for c in categories)
        feature = Feature(name, kind, categories, encoding="frequency", frequencies=shares)
        codes = _category_codes(filled, {c: i for i, c in enumerate(categories)}, fill, name)
        logger.info(
            "Categorical column '%s' has %d distinct training values (more than "
            "data.prepare.max_categories, %d): it is frequency-encoded, one column holding the "
            "share of training rows with the value.",
            name,
            len(categories),
            self.config.max_categories,
        )
        return feature, fill, {name: frequency_values(codes, shares)}

    def _fit_fill(self, name: str, kind: str, values: np.ndarray) -> Any:
        """The value that replaces a missing one in this column (None with ``missing: drop``)."""
        strategy, constant = self.config.missing, self.config.fill_value
        if strategy == "drop":
            return None
        if kind == "categorical" and strategy == "constant":
            return category_str(constant)
        token = bool_token(constant)
        if kind == "boolean" and strategy == "constant" and token is not None:
            return float(token)
        if kind == "datetime" and strategy == "constant":
            return _date_fill(name, constant, values)
        if kind == "numeric" and strategy == "constant":
            try:
                return float(constant)
            except ValueError:
                raise DataError(
                    f"data.prepare.fill_value {constant!r} cannot fill missing values of numeric "
                    f"column '{name}'. Use a number, or another missing strategy."
                ) from None
        if kind in ("numeric", "datetime") and strategy in ("mean", "median"):
            present = values[~np.isnan(values)]
            value = None if present.size == 0 else getattr(np, strategy)(present)
        else:  # most_frequent, and the only choice for categorical and boolean columns
            value = _mode(values)
        if value is None:
            raise DataError(
                f"Column '{name}' has no values in the training rows, so its missing "
                f"values cannot be filled. Set data.features: {{{name}: ignore}} or fix "
                "the data."
            )
        return value if kind == "categorical" else float(value)

    @staticmethod
    def _filled(values: np.ndarray, fill: Any) -> np.ndarray:
        if fill is None:  # missing: drop learns no fill value
            return values
        out = values.copy()
        if out.dtype == object:
            out[pd.isna(out)] = fill
        else:
            out[np.isnan(out)] = fill
        return out

    def _task_ref(self) -> TaskRef:
        return TaskRef(self.task, self.target_kind)

    def _fit_target(self, column: pd.Series, features: list[Feature]) -> FeatureSchema:
        fitted = target_codec(self.target_kind).fit(column, self.target, self.classes)
        encoded = encoded_columns(features, self.config.encode)
        return FeatureSchema(
            features=tuple(features),
            target=self.target,
            task=self.task,
            classes=fitted.classes,
            target_mean=fitted.target_mean,
            target_std=fitted.target_std,
            image_shape=self.image_shape,
            input_dim=len(encoded),
            encoded_names=encoded,
            target_kind=self.target_kind,
        )

    # ---- replay --------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        self.schema_  # noqa: B018 - raises NotFittedError before fit

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Encode raw rows into a float32 matrix of shape ``(n, input_dim)``.

        Missing values are filled with the values learned in ``fit``. Unseen categories become
        all zeros (one-hot) or ``k`` (ordinal, ``k`` known categories). Extra columns (such as
        the target) are ignored. With ``data.reduce``, the fitted reduction is applied last.

        Raises:
            NotFittedError: before ``fit``.
            DataError: a feature column is absent, a value cannot be read as its kind, or a value
                is missing with ``missing: drop``.
        """
        return self.transform_columns(self._read_frame(frame))

    def _read_frame(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Each feature column of ``frame`` read as its kind (:meth:`read_column`)."""
        schema = self.schema_
        absent = [f.name for f in schema.features if f.name not in frame.columns]
        if absent:
            raise DataError(
                f"The input rows lack feature column(s) {preview(absent)}. Every row needs the "
                f"columns the model was trained on: {preview(schema.feature_names)}."
            )
        return {f.name: self.read_column(frame[f.name], f) for f in schema.features}

    @staticmethod
    def read_column(column: pd.Series, kind: str | Feature) -> np.ndarray:
        """A raw column read as its feature kind, as :meth:`transform_columns` takes it:
        ``numeric``, ``boolean`` and ``datetime`` (seconds since the epoch) as float64 with NaN
        for missing values, ``categorical`` as category strings with None for missing values,
        ``text`` as the values themselves (strings; bytes and missing values are read when
        encoding, anything else is refused there).

        ``kind`` may be the fitted :class:`Feature`, whose options apply (``errors: nan``, the
        training date format).

        Raises:
            DataError: a value that is not a number (numeric), a date (datetime) or a true/false
                token (boolean), or an infinite number.
        """
        feature = kind if isinstance(kind, Feature) else Feature("", str(kind))
        name = feature.kind
        if name == "numeric":
            return numeric_values(column, feature.errors)
        if name == "datetime":
            return datetime_seconds(column, feature.date_format or ISO, feature.errors)
        if name == "boolean":
            return _boolean_values(column)
        if name == "text":
            return column.to_numpy(dtype=object)
        return _category_values(column)

    def parse_values(self, name: str, values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Raw values of numeric or datetime feature ``name`` as float64 (NaN where missing or
        unreadable) and where they do not parse: the server names the first bad one.

        Raises:
            NotFittedError: before ``fit``.
            DataError: ``name`` is not a numeric or datetime feature.
        """
        feature = next((f for f in self.schema_.features if f.name == name), None)
        if feature is None or feature.kind not in ("numeric", "datetime"):
            raise DataError(f"'{name}' is not a numeric or datetime feature of this model.")
        if feature.kind == "numeric":
            return coerce_numbers(values)
        return parse_dates(values, feature.date_format or ISO)

    def transform_columns(self, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> np.ndarray:
        """Encode feature columns already read as their kinds: the one replay of the fitted
        state (fill, centre and scale, categories, reducer) that :meth:`transform`, the
        streaming reader and the server share, without a DataFrame.

        Args:
            columns: feature name → its values, all of one length. Numeric and boolean: numbers
                (0/1 or true/false for booleans), NaN or None where missing. Categorical: the
                categories, numbers read as their string (``3.0`` → ``'3'``), None or NaN where
                missing. Text: strings (bytes are decoded as UTF-8, invalid bytes replaced),
                None or NaN for no text. Other keys are ignored.

        Returns:
            float32 ``(n, input_dim)``, as :meth:`transform` returns for the same rows.

        Raises:
            NotFittedError: before ``fit``.
            DataError: a feature is absent, the columns differ in length, a numeric or boolean
                value is not a number, a text value is not a string (the error names the
                column), or a value is missing with ``missing: drop``.

        Example:
            >>> import pandas as pd
            >>> df = pd.DataFrame({"x": [1.0, 3.0], "c": ["a", "b"], "y": [0.0, 2.0]})
            >>> pre = Preprocessor(target="y", task="regression").fit(df)
            >>> pre.transform_columns({"x": [3.0], "c": ["a"]}).tolist()
            [[1.0, 1.0, 0.0]]
        """
        layout = self._layout()
        n = self._column_length(columns)
        if layout.derived:  # dates → calendar features, frequent categories → their shares
            columns = derive_columns(columns, layout)
        if not layout.categorical and not layout.text:  # column j encodes feature j
            return self._encode_dense(_dense_matrix(columns, layout, n), layout)
        out = np.zeros((n, layout.width), dtype=np.float32)  # (n, encoded width)
        if layout.dense_names:
            dense = _dense_matrix(columns, layout, n)
            with np.errstate(over="ignore"):  # beyond float32's range: ±inf, as the model sees it
                out[:, layout.dense_cols] = self._scale_dense(dense, layout)
        ordinal = self.config.encode == "ordinal"
        for name, col, index, fill in layout.categorical:
            codes = _category_codes(columns[name], index, fill, name)  # (n,), -1: unseen
            if ordinal:
                out[:, col] = np.where(codes < 0, len(index), codes)
            else:
                seen = codes >= 0
                out[np.flatnonzero(seen), col + codes[seen]] = 1.0
        for name, col, width in layout.text:  # (n, max_length) token ids, as they are
            out[:, col : col + width] = self._encoder(name).encode(columns[name], name)
        return out if self.reducer_ is None else self.reducer_.transform(out)

    def _encoder(self, name: str) -> TextEncoder:
        encoder = self.text_.get(name)
        if encoder is None:  # a schema edited by hand, or a preprocessor built without fit
            raise DataError(
                f"Text feature '{name}' has no fitted tokenizer in this preprocessor. Fit it "
                "again, or rebuild it with Preprocessor.from_dict from a saved model."
            )
        return encoder

    def transform_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Encode raw rows of a model without categorical features given as one float64 matrix
        ``(n, features)`` in schema order (NaN where missing): :meth:`transform_columns`'s
        arithmetic in one numpy pass, for the server's all-numeric requests.

        Raises:
            NotFittedError: before ``fit``.
            DataError: the schema has categorical features, the matrix is not ``features``
                wide, or a value is missing with ``missing: drop``.
        """
        layout = self._layout()
        if (
            layout.categorical
            or layout.text
            or matrix.ndim != 2
            or matrix.shape[1] != len(layout.dense_names)
        ):
            raise DataError(
                f"transform_matrix takes rows of {len(layout.dense_names)} numeric or boolean "
                f"features; got shape {matrix.shape} for a schema with "
                f"{len(layout.categorical)} categorical and {len(layout.text)} text "
                "feature(s). Use transform_columns."
            )
        return self._encode_dense(matrix, layout)

    def _encode_dense(self, matrix: np.ndarray, layout: _Layout) -> np.ndarray:
        """Raw rows of a schema without categorical features → float32, reduced if fitted so.

        The usual rows (no missing value, nothing that scales beyond float32) pass one check
        and go straight to ``(x - center) / scale``: a server calls this for every request."""
        if np.abs(matrix).max(initial=0.0) < layout.bound:  # NaN fails the comparison
            out = ((matrix - layout.center) / layout.scale).astype(np.float32)  # (n, input_dim)
        else:
            with np.errstate(over="ignore"):  # beyond float32's range: ±inf, as the model sees
                out = self._scale_dense(matrix, layout).astype(np.float32)
        return out if self.reducer_ is None else self.reducer_.transform(out)

    def _column_length(self, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> int:
        names = self.schema_.feature_names
        absent = [name for name in names if name not in columns]
        if absent:
            raise DataError(
                f"The input columns lack feature(s) {preview(absent)}. Every row needs the "
                f"features the model was trained on: {preview(names)}."
            )
        lengths = {len(columns[name]) for name in names}
        if len(lengths) > 1:
            raise DataError(
                f"The input columns differ in length ({sorted(lengths)[:5]}); give every "
                "feature one value per row."
            )
        return lengths.pop() if lengths else 0

    def _scale_dense(self, matrix: np.ndarray, layout: _Layout) -> np.ndarray:
        """Fill, then ``(x - center) / scale`` (booleans: centre 0, scale 1), float64."""
        missing = np.isnan(matrix)
        if missing.any():
            absent = missing.any(axis=0) & np.isnan(layout.fill)  # missing, and no fill value
            if absent.any():
                j = int(np.flatnonzero(absent)[0])
                self._no_fill(layout.dense_names[j], missing[:, j])
            matrix = np.where(missing, layout.fill, matrix)
        return (matrix - layout.center) / layout.scale

    @staticmethod
    def _no_fill(name: str, missing: np.ndarray) -> None:
        no_fill(name, missing)

    def _layout(self) -> _Layout:
        """Where each feature's encoding goes, worked out once per fitted state (the state's
        objects are compared by identity: this runs for every request a server answers)."""
        cached = self._layout_cache
        schema = self.schema_
        if (
            cached is not None
            and cached[0] is schema
            and cached[1] is self.fill_
            and cached[2] is self.center_
            and cached[3] is self.scale_
            and cached[4] == self.config.encode
        ):
            return cached[5]
        layout = _Layout.of(schema, self.fill_, self.center_, self.scale_, self.config.encode)
        self._layout_cache = (
            schema,
            self.fill_,
            self.center_,
            self.scale_,
            self.config.encode,
            layout,
        )
        return layout

    def fit_transform(self, frame: pd.DataFrame) -> np.ndarray:
        """``fit(frame)`` then ``transform(frame)``."""
        return self.fit(frame).transform(frame)

    # ---- target --------------------------------------------------------------------------------

    def encode_target(self, series: pd.Series | Sequence[Any] | np.ndarray) -> np.ndarray:
        """Raw targets → what the model trains on, by target kind.

        ``classes``: int64 indices into ``classes``; ``values``: float32 ``(y - mean) / std``;
        ``label_sets``: float32 multi-hot of shape ``(n, len(classes))``.

        Raises:
            NotFittedError: before ``fit``.
            DataError: a missing value (label sets: a missing cell is no label), or a class or
                label the preprocessor does not know.
        """
        self._check_fitted()
        column = pd.Series(series, name=self.target).reset_index(drop=True)
        return target_codec(self.target_kind).encode(column, self.target, self.schema_)

    def decode_target(self, array: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Invert :meth:`encode_target`: indices → labels; values: un-standardize; label sets:
        multi-hot rows (a value above 0.5 is on) → tuples of labels.

        Raises:
            NotFittedError: before ``fit``.
            DataError: a class index out of range, or a multi-hot array of the wrong width.
        """
        self._check_fitted()
        return target_codec(self.target_kind).decode(np.asarray(array), self.schema_)

    # ---- persistence ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The fitted state as a JSON-serialisable dict (``json.dumps`` works on it).

        Example:
            >>> import json, pandas as pd
            >>> pre = Preprocessor(target="y", task="regression").fit(
            ...     pd.DataFrame({"x": [1.0, 2.0], "y": [0.0, 1.0]}))
            >>> isinstance(json.dumps(pre.to_dict()), str)
            True
        """
        self._check_fitted()
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "config": self.config.model_dump(mode="json"),
            "target": self.target,
            "task": self.task,
            "target_kind": self.target_kind,
            "overrides": {k: _spec(v) for k, v in self.overrides.items()},
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "classes": None if self.classes is None else [to_plain(c) for c in self.classes],
            "schema": self.schema_.to_dict(),
            "fill": {k: to_plain(v) for k, v in self.fill_.items()},
            "center": dict(self.center_),
            "scale": dict(self.scale_),
            "reducer": None if self.reducer_ is None else self.reducer_.to_dict(),
            "text": self.text.model_dump(mode="json"),
            "tokenizers": {name: encoder.to_str() for name, encoder in self.text_.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessor:
        """Rebuild a fitted preprocessor from :meth:`to_dict`'s output.

        Raises:
            DataError: the dict is not a danlu preprocessor or is malformed.
        """
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise DataError(
                "This is not a saved danlu preprocessor (its 'format' is not "
                f"'{_FORMAT}'). Pass the output of Preprocessor.to_dict()."
            )
        if data.get("version") not in _READABLE_VERSIONS:
            raise DataError(
                f"Saved preprocessor version {data.get('version')!r} is not supported (this danlu "
                f"reads versions {', '.join(map(str, _READABLE_VERSIONS))}). Re-export the model "
                "with this version of danlu."
            )
        try:
            schema = FeatureSchema.from_dict(data["schema"])
            # Files saved before target kinds carry none: the schema derives it from the task.
            kind = str(data.get("target_kind") or schema.target_kind)
            pre = cls(
                PrepareConfig.model_validate(data["config"]),
                target=data["target"],
                task=TaskRef(str(data["task"]), kind),
                overrides=data["overrides"],
                image_shape=data["image_shape"],
                classes=data["classes"],
                text=TextConfig.model_validate(data.get("text") or {}),  # absent before 4
            )
            pre._schema = schema
            pre.fill_ = dict(data["fill"])
            pre.center_ = {str(k): float(v) for k, v in data["center"].items()}
            pre.scale_ = {str(k): float(v) for k, v in data["scale"].items()}
            reducer = data.get("reducer")  # version 1 files have no reducer
            if reducer is not None:
                pre.reducer_ = FeatureReducer.from_dict(reducer)
                pre.reduce = pre.reducer_.config
            saved = data.get("tokenizers") or {}
            pre.text_ = {
                f.name: TextEncoder.from_str(
                    saved[f.name], max_length=f.max_length, source=f.tokenizer
                )
                for f in schema.features
                if f.kind == "text"
            }
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            raise DataError(
                f"The saved preprocessor is malformed ({type(exc).__name__}: {exc}). Re-export "
                "the model; do not edit the file by hand."
            ) from exc
        return pre

    def __repr__(self) -> str:
        state = "fitted" if self._schema is not None else "not fitted"
        return f"Preprocessor(target={self.target!r}, task={self.task!r}, {state})"


def _text_feature(name: str, encoder: TextEncoder) -> Feature:
    """A text column's feature: its token positions, padding id, vocabulary and tokenizer."""
    return Feature(
        name,
        "text",
        max_length=encoder.max_length,
        pad_id=encoder.pad_id,
        vocab_size=encoder.vocab_size,
        tokenizer=encoder.source,
    )


def _spec(kind: Any) -> Any:
    """An override as JSON: the kind, or ``{kind, errors}`` when it reads with ``errors: nan``."""
    if isinstance(kind, str) and read_errors(kind) != "raise":
        return {"kind": str(kind), "errors": read_errors(kind)}
    return kind if isinstance(kind, str | dict) else str(kind)
