"""Input drift: how far the rows a served model sees have moved from the rows it was trained on.

Training saves a *reference* (:func:`drift_reference`): for every raw feature, the bins of its
model input column(s) and the share of training rows in each bin. Serving keeps the last
``window`` model inputs in a ring buffer (:class:`DriftMonitor`) and compares their shares with the
reference by the population stability index (:func:`~danlu.data.psi`, the one the quality report
uses for train/test shift, with the same thresholds). Everything works on the *encoded* model
input (what the preprocessor outputs), so the server never keeps raw request values.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from danlu.data._psi import PSI_MAJOR, PSI_MODERATE, psi
from danlu.data._schema import FeatureSchema
from danlu.errors import DataError

__all__ = ["DriftMonitor", "drift_reference", "drift_status"]

_FORMAT = "danlu.drift_reference"
MIN_ROWS = 100  # below this a window's shares are too noisy to compare


def drift_status(value: float | None) -> str:
    """``ok`` (PSI < 0.1), ``moderate`` (< 0.25), ``drift``, or ``insufficient data`` for None.

    The thresholds are :data:`~danlu.data.PSI_MODERATE` and :data:`~danlu.data.PSI_MAJOR`.
    """
    if value is None:
        return "insufficient data"
    if value < PSI_MODERATE:
        return "ok"
    return "moderate" if value < PSI_MAJOR else "drift"


def _feature_columns(schema: FeatureSchema) -> list[tuple[str, str, list[int]]]:
    """(feature, kind, model input column indices) per raw feature, then reduced columns alone.

    A raw feature owns the encoded columns named like it (``age``) or one-hot from it
    (``colour=red``); a column no raw feature owns (PCA's ``pc1``, a date's ``date.month``) is a
    numeric feature itself. A text feature's token positions (``body#0`` …) are left out.
    """
    names = list(schema.encoded_names)
    owned: set[int] = set()
    out: list[tuple[str, str, list[int]]] = []
    for f in schema.features:
        if f.kind == "text":  # token ids are not binned: PSI of ids means nothing
            owned.update(i for i, n in enumerate(names) if n.startswith(f"{f.name}#"))
            continue
        prefix = f"{f.name}="
        cols = [i for i, n in enumerate(names) if n == f.name or n.startswith(prefix)]
        if cols:  # a frequency-encoded category is one number (its training share)
            out.append((f.name, "numeric" if f.frequency_encoded else f.kind, cols))
            owned.update(cols)
    out.extend((n, "numeric", [i]) for i, n in enumerate(names) if i not in owned)
    return out


def _bin_codes(entry: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
    """The bin of every row of ``x`` (model inputs) for one reference feature."""
    cols = entry["columns"]
    kind = entry["kind"]
    if kind == "numeric":
        edges = np.asarray(entry["edges"], dtype=np.float64)
        return np.searchsorted(edges, x[:, cols[0]].astype(np.float64), side="right")
    if kind == "boolean":
        return (x[:, cols[0]] > 0.5).astype(np.int64)
    k = len(entry["categories"])
    if entry.get("encoding") == "ordinal":  # one column holding the category code, k = unseen
        codes = np.rint(x[:, cols[0]]).astype(np.int64)
        return np.where((codes >= 0) & (codes < k), codes, k)
    block = x[:, cols]  # (n, k) one-hot
    hot = block.max(axis=1) > 0.5
    return np.where(hot, block.argmax(axis=1), k)  # k: "other" (unseen or missing category)


def _counts(codes: np.ndarray, n_bins: int) -> np.ndarray:
    return np.bincount(codes, minlength=n_bins)[:n_bins].astype(np.float64)


def drift_reference(x_train: np.ndarray, schema: FeatureSchema, bins: int = 10) -> dict[str, Any]:
    """The training reference a :class:`DriftMonitor` compares served inputs with (JSON-able).

    Per raw feature: numeric → the decile edges (``bins`` quantile bins) of its model input column
    and the share of training rows in each bin; categorical (one-hot) → the share of each category
    plus an ``other`` share (unseen categories); boolean → the share of 0 and 1.

    Args:
        x_train: the encoded training rows, ``(n, input_dim)`` (``PreparedData.x_train``).
        schema: the feature schema of those rows (``PreparedData.schema``).
        bins: quantile bins per numeric feature.

    Example:
        >>> from danlu.data import Feature, FeatureSchema
        >>> s = FeatureSchema((Feature("x", "numeric"),), "y", "regression", None, 0.0, 1.0,
        ...                   None, 1, ("x",))
        >>> ref = drift_reference(np.arange(100, dtype="float32").reshape(-1, 1), s)
        >>> ref["features"][0]["feature"], len(ref["features"][0]["expected"])
        ('x', 10)
    """
    x = np.asarray(x_train)
    if x.ndim != 2 or x.shape[1] != len(schema.encoded_names) or len(x) == 0:
        raise DataError(
            f"drift_reference needs the encoded training rows, shape (n > 0, "
            f"{len(schema.encoded_names)}); got {x.shape}. Pass PreparedData.x_train."
        )
    features: list[dict[str, Any]] = []
    for name, kind, cols in _feature_columns(schema):
        entry: dict[str, Any] = {"feature": name, "kind": kind, "columns": cols}
        if kind == "numeric":
            quantiles = np.quantile(x[:, cols[0]].astype(np.float64), np.linspace(0, 1, bins + 1))
            entry["edges"] = [float(e) for e in np.unique(quantiles[1:-1])]
            n_bins = len(entry["edges"]) + 1
        elif kind == "boolean":
            n_bins = 2
        else:
            feature = next(f for f in schema.features if f.name == name)
            onehot = len(cols) > 1 or schema.encoded_names[cols[0]] != name
            if onehot:  # the categories of the kept one-hot columns, in column order
                entry["categories"] = [schema.encoded_names[c][len(name) + 1 :] for c in cols]
            else:
                entry["categories"] = list(feature.categories)
                entry["encoding"] = "ordinal"
            n_bins = len(entry["categories"]) + 1
        entry["expected"] = (_counts(_bin_codes(entry, x), n_bins) / len(x)).tolist()
        features.append(entry)
    return {
        "format": _FORMAT,
        "version": 1,
        "rows": len(x),
        "input_dim": x.shape[1],
        "bins": bins,
        "features": features,
    }


class DriftMonitor:
    """PSI per feature of the last ``window`` model inputs against a training reference.

    ``observe`` copies rows into a ring buffer (O(rows), thread-safe); ``report`` bins the window.
    With ``reference=None`` (a model saved without ``drift_reference.json``) it only counts rows.

    Example:
        >>> from danlu.data import Feature, FeatureSchema
        >>> s = FeatureSchema((Feature("x", "numeric"),), "y", "regression", None, 0.0, 1.0,
        ...                   None, 1, ("x",))
        >>> train = np.random.default_rng(0).normal(size=(1000, 1))
        >>> monitor = DriftMonitor(drift_reference(train, s), window=500)
        >>> monitor.observe(train[:500] + 3.0)
        >>> monitor.report()["features"][0]["status"]
        'drift'
    """

    def __init__(self, reference: Mapping[str, Any] | None, window: int) -> None:
        if window < 1:
            raise DataError(f"The drift window must be at least 1 row; got {window}.")
        if reference is not None and reference.get("format") != _FORMAT:
            raise DataError(
                f"This is not a drift reference (its 'format' is not '{_FORMAT}'); build it "
                "with danlu.data.drift_reference(x_train, schema)."
            )
        self.reference = reference
        self.window = window
        self._buffer: np.ndarray | None = None  # (window, input_dim), allocated on first rows
        self._next = 0  # where the next row goes
        self._filled = 0  # rows held (≤ window)
        self._lock = threading.Lock()

    def observe(self, x: np.ndarray) -> None:
        """Add model input rows ``(n, input_dim)`` to the window (the oldest fall out)."""
        x = np.asarray(x, dtype=np.float32)
        x = x.reshape(len(x), -1)[-self.window :]  # only the last `window` rows can stay
        n = len(x)
        if n == 0:
            return
        with self._lock:
            if self._buffer is None or self._buffer.shape[1] != x.shape[1]:
                self._buffer = np.empty((self.window, x.shape[1]), dtype=np.float32)
                self._next = self._filled = 0
            head = min(n, self.window - self._next)  # rows until the end of the buffer
            self._buffer[self._next : self._next + head] = x[:head]
            self._buffer[: n - head] = x[head:]  # the rest wraps around to the start
            self._next = (self._next + n) % self.window
            self._filled = min(self._filled + n, self.window)

    def rows(self) -> np.ndarray:
        """A copy of the rows in the window, in no particular order."""
        with self._lock:
            if self._buffer is None:
                return np.empty((0, 0), dtype=np.float32)
            return self._buffer[: self._filled].copy()

    def report(self) -> dict[str, Any]:
        """``{"window": rows, "reference": bool, "features": [{"feature", "psi", "status"}]}``."""
        x = self.rows()
        if self.reference is None:
            return {"window": len(x), "reference": False, "features": []}
        features = []
        for entry in self.reference["features"]:
            value: float | None = None
            if len(x) >= MIN_ROWS and x.shape[1] == self.reference["input_dim"]:
                # the reference keeps shares; PSI compares counts (its smoothing is per row)
                expected = np.asarray(entry["expected"], dtype=np.float64)
                actual = _counts(_bin_codes(entry, x), len(expected))
                value = psi(expected * self.reference["rows"], actual)
            features.append(
                {"feature": entry["feature"], "psi": value, "status": drift_status(value)}
            )
        return {"window": len(x), "reference": True, "features": features}
