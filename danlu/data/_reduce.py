"""Feature reduction: column selection or PCA, fitted on training rows, replayed as plain JSON.

:class:`FeatureReducer` works on the *encoded and scaled* matrix the preprocessor produces. It
is fitted with scikit-learn on the training rows only, and keeps what it learned as plain
numbers, so the replay needs no pickled estimator:

- ``variance``: ``VarianceThreshold`` → the indices of the columns kept;
- ``mutual_info``: ``mutual_info_classif`` / ``mutual_info_regression`` → the top ``k`` indices;
- ``model``: a seeded ``ExtraTrees`` forest's impurity importances → the top ``k`` indices;
- ``pca``: ``PCA`` → the mean, the components matrix and the explained variance ratios, replayed
  as ``(x - mean) @ components.T``.

:class:`~danlu.data.Preprocessor` owns one when the recipe has ``data.reduce``, so serving and
``load_model`` replay the reduction with the rest of the preprocessing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import ValidationError

from danlu.config import ReduceConfig
from danlu.data._target import TaskLike, resolve_task
from danlu.errors import DataError, NotFittedError

__all__ = ["FeatureReducer"]

_FORMAT = "danlu.reducer"


class FeatureReducer:
    """Keeps the most useful encoded columns, or projects them on principal components.

    Args:
        config: the recipe's ``data.reduce`` block.
        seed: seeds the forest of ``model`` and the neighbour noise of ``mutual_info``.

    Example:
        >>> import numpy as np
        >>> from danlu.config import ReduceConfig
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(50, 4)).astype(np.float32)
        >>> red = FeatureReducer(ReduceConfig(method="pca", n_components=2)).fit(
        ...     x, None, task="regression", names=["a", "b", "c", "d"])
        >>> red.transform(x).shape, red.output_names_
        ((50, 2), ('pc1', 'pc2'))
    """

    def __init__(self, config: ReduceConfig, *, seed: int = 0) -> None:
        self.config = config
        self.seed = seed
        # Learned state, set by fit / from_dict.
        self.n_inputs_: int | None = None
        self.input_names_: tuple[str, ...] = ()
        self.kept_: list[int] | None = None  # selection: the kept column indices
        self.mean_: np.ndarray | None = None  # pca: (d,)
        self.components_: np.ndarray | None = None  # pca: (n_components, d)
        self.explained_variance_ratio_: np.ndarray | None = None  # pca: (n_components,)
        self.scores_: list[float] | None = None  # mutual_info / model: the score of each column

    # ---- fitting -------------------------------------------------------------------------------

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray | None,
        *,
        task: str | TaskLike,
        names: Sequence[str],
    ) -> FeatureReducer:
        """Learn which columns to keep (or the PCA projection) from the training rows.

        Args:
            x: the encoded training matrix, shape (n, d).
            y: the encoded training target (class indices, standardized values, or multi-hot
                label sets of shape (n, L)); needed by ``mutual_info`` and ``model``.
            task: ``classification``, ``regression``, or a task object with a ``target_kind``;
                the target kind picks the classifier or regressor (label sets: a multi-output
                classifier, and mutual information averaged over the labels).
            names: the ``d`` encoded column names.

        Returns:
            self.

        Raises:
            DataError: more components / columns asked for than there are, a threshold that
                removes every column, too few training rows, or a target the method cannot use.
        """
        x = np.asarray(x, dtype=np.float64)
        n, d = x.shape
        method = self.config.method
        if n < 2:
            raise DataError(
                f"data.reduce method '{method}' needs at least 2 training rows to learn from; "
                f"got {n}. Add rows or remove data.reduce."
            )
        kept: list[int] | None = None
        mean = components = ratios = None
        self.scores_ = None
        if method == "variance":
            kept = self._fit_variance(x, names)
        elif method == "pca":
            mean, components, ratios = self._fit_pca(x)
        else:
            kind = resolve_task(task).target_kind
            kept = self._fit_top_k(x, self._target(y, kind, method), kind, d)
        # Assign the learned state last, so a failed fit leaves no half-fitted object behind.
        self.kept_ = kept
        self.mean_, self.components_, self.explained_variance_ratio_ = mean, components, ratios
        self.input_names_ = tuple(str(n) for n in names)
        self.n_inputs_ = d
        return self

    def _fit_variance(self, x: np.ndarray, names: Sequence[str]) -> list[int]:
        from sklearn.feature_selection import VarianceThreshold

        threshold = self.config.threshold
        variances = x.var(axis=0)
        if not (variances > threshold).any():
            raise DataError(
                f"data.reduce variance threshold {threshold} removes every one of the "
                f"{x.shape[1]} encoded columns: the largest training variance is "
                f"{float(variances.max()):.4g} (column '{names[int(variances.argmax())]}'). "
                f"Lower data.reduce.threshold below {float(variances.max()):.4g}; with "
                "data.prepare.scale: standard every varying column has variance 1."
            )
        selector = VarianceThreshold(threshold).fit(x)
        return [int(i) for i in selector.get_support(indices=True)]

    def _fit_pca(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from sklearn.decomposition import PCA

        n, d = x.shape
        wanted = self.config.n_components
        if isinstance(wanted, int) and wanted > d:
            raise DataError(
                f"data.reduce.n_components is {wanted}, but the prepared data has only {d} "
                f"feature column(s) after encoding, so PCA can find at most {d} components. Use "
                f"n_components <= {d}, or a ratio of explained variance such as 0.95."
            )
        if isinstance(wanted, int) and wanted > n:
            raise DataError(
                f"data.reduce.n_components is {wanted}, but there are only {n} training rows, "
                f"so PCA can find at most {n} components. Use n_components <= {n} or add rows."
            )
        pca = PCA(n_components=wanted, svd_solver="full").fit(x)
        return pca.mean_, pca.components_, pca.explained_variance_ratio_

    @staticmethod
    def _target(y: np.ndarray | None, kind: str, method: str) -> np.ndarray:
        if y is None or len(y) == 0:
            raise DataError(
                f"data.reduce method '{method}' ranks columns by how well they predict the "
                "target, but no target values were given. Use method: variance or pca."
            )
        if kind == "classes" and len(np.unique(y)) < 2:
            raise DataError(
                f"data.reduce method '{method}' ranks columns by how well they tell the classes "
                f"apart, but the training rows hold a single class. Add rows of the other "
                "classes, or use method: variance or pca."
            )
        return np.asarray(y)

    def _fit_top_k(self, x: np.ndarray, y: np.ndarray, kind: str, d: int) -> list[int]:
        scores = self._scores(x, y, kind, d)
        self.scores_ = [float(s) for s in scores]
        # The k best, ties broken by column order; kept in their original order.
        best = np.argsort(-scores, kind="stable")[: self.config.k]
        return sorted(int(i) for i in best)

    def _scores(self, x: np.ndarray, y: np.ndarray, kind: str, d: int) -> np.ndarray:
        k = int(self.config.k or 0)
        method = self.config.method
        if k > d:
            raise DataError(
                f"data.reduce.k is {k}, but the prepared data has only {d} feature column(s) "
                f"after encoding. Use k <= {d} (k = {d} keeps every column)."
            )
        classify = kind != "values"
        if kind == "label_sets":  # (n, L) multi-hot: each label is a 0/1 class column
            y = np.asarray(y, dtype=np.int64)
        try:
            if method == "mutual_info":
                from sklearn.feature_selection import mutual_info_classif, mutual_info_regression

                score = mutual_info_classif if classify else mutual_info_regression
                columns = y.T if y.ndim == 2 else y[None]  # one score per label, averaged
                scores = np.mean([score(x, c, random_state=self.seed) for c in columns], axis=0)
            else:
                from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor

                forest = ExtraTreesClassifier if classify else ExtraTreesRegressor
                model = forest(n_estimators=200, random_state=self.seed, n_jobs=1).fit(x, y)
                scores = model.feature_importances_
        except ValueError as exc:
            raise DataError(
                f"data.reduce method '{method}' could not score the {d} columns on the "
                f"{len(x)} training rows: {exc}. Add training rows, or use method: pca."
            ) from exc
        return np.asarray(scores, dtype=np.float64)

    # ---- replay --------------------------------------------------------------------------------

    @property
    def output_names_(self) -> tuple[str, ...]:
        """The names of the output columns: kept encoded names, or ``pc1..pcN`` for PCA."""
        self._check_fitted()
        if self.kept_ is None:
            return tuple(f"pc{i + 1}" for i in range(len(self._pca()[1])))
        return tuple(self.input_names_[i] for i in self.kept_)

    def _pca(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, components, explained variance ratios) of a fitted PCA reducer."""
        mean, components, ratios = self.mean_, self.components_, self.explained_variance_ratio_
        if mean is None or components is None or ratios is None:
            raise NotFittedError("This FeatureReducer holds no PCA state; it selects columns.")
        return mean, components, ratios

    @property
    def n_outputs_(self) -> int:
        """The number of output columns."""
        return len(self.output_names_)

    def _check_fitted(self) -> None:
        if self.n_inputs_ is None:
            raise NotFittedError(
                "This FeatureReducer is not fitted yet. Call fit(x, y, ...) with the training "
                "rows first, or rebuild a fitted one with FeatureReducer.from_dict(...)."
            )

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Reduce an encoded matrix of shape ``(n, n_inputs_)`` to ``(n, n_outputs_)`` float32.

        Raises:
            NotFittedError: before ``fit``.
            DataError: ``x`` has another number of columns than the reducer was fitted on.
        """
        self._check_fitted()
        if x.ndim != 2 or x.shape[1] != self.n_inputs_:
            raise DataError(
                f"The feature reducer was fitted on {self.n_inputs_} encoded columns but got an "
                f"array of shape {tuple(x.shape)}. Pass rows encoded by the same preprocessor."
            )
        if self.kept_ is not None:
            return np.ascontiguousarray(x[:, self.kept_], dtype=np.float32)
        mean, components, _ = self._pca()
        centred = np.asarray(x, dtype=np.float64) - mean  # (n, d)
        return (centred @ components.T).astype(np.float32)  # (n, n_components)

    def summary(self) -> dict[str, Any]:
        """What the reduction kept, as plain JSON types (for the data report)."""
        self._check_fitted()
        out: dict[str, Any] = {
            "method": self.config.method,
            "input_dim_before": self.n_inputs_,
            "input_dim_after": self.n_outputs_,
        }
        if self.kept_ is None:
            ratios = self._pca()[2]
            out["explained_variance_ratio"] = [round(float(r), 6) for r in ratios]
            out["explained_variance"] = round(float(np.sum(ratios)), 6)
        else:
            out["kept"] = list(self.output_names_)
        return out

    # ---- persistence ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The fitted state as a JSON-serialisable dict (lists of floats, no pickles)."""
        self._check_fitted()
        out: dict[str, Any] = {
            "format": _FORMAT,
            "config": self.config.model_dump(mode="json"),
            "seed": self.seed,
            "input_names": list(self.input_names_),
            "kept": None if self.kept_ is None else list(self.kept_),
            "mean": None,
            "components": None,
            "explained_variance_ratio": None,
        }
        if self.kept_ is None:
            mean, components, ratios = self._pca()
            out["mean"], out["components"] = mean.tolist(), components.tolist()
            out["explained_variance_ratio"] = ratios.tolist()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureReducer:
        """Rebuild a fitted reducer from :meth:`to_dict`'s output.

        Raises:
            DataError: the dict is not a saved reducer or is malformed.
        """
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise DataError(
                f"This is not a saved danlu feature reducer (its 'format' is not '{_FORMAT}'). "
                "Pass the output of FeatureReducer.to_dict()."
            )
        try:
            reducer = cls(ReduceConfig.model_validate(data["config"]), seed=int(data["seed"]))
            names = tuple(str(n) for n in data["input_names"])
            kept = data["kept"]
            if kept is None:
                components = np.asarray(data["components"], dtype=np.float64)
                if components.ndim != 2 or components.shape[1] != len(names):
                    raise ValueError("the components do not match the input columns")
                reducer.mean_ = np.asarray(data["mean"], dtype=np.float64)
                reducer.components_ = components
                reducer.explained_variance_ratio_ = np.asarray(
                    data["explained_variance_ratio"], dtype=np.float64
                )
            else:
                reducer.kept_ = [int(i) for i in kept]
                if any(not 0 <= i < len(names) for i in reducer.kept_):
                    raise ValueError("a kept column index is out of range")
            reducer.input_names_ = names
            reducer.n_inputs_ = len(names)
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            raise DataError(
                f"The saved feature reducer is malformed ({type(exc).__name__}: {exc}). Re-export "
                "the model; do not edit the file by hand."
            ) from exc
        return reducer

    def __repr__(self) -> str:
        state = "fitted" if self.n_inputs_ is not None else "not fitted"
        return f"FeatureReducer(method={self.config.method!r}, {state})"
