"""Forecast accuracy metrics in the target's original units: MAE, RMSE, MAPE, sMAPE, MASE, and
the pinball loss and interval coverage of quantile forecasts.

Shared by the forecasting task (its rows are forecast origins, each with ``horizon`` values) and
the classical models' backtest, so both report the same numbers the same way. ``mase_scale``
lives with the series in the data layer (which computes it per series) and is re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from danlu.data._series import mase_scale

if TYPE_CHECKING:
    import numpy as np

__all__ = ["forecast_metrics", "mase_scale"]


def forecast_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    scale: float | np.ndarray,
    y_quant: np.ndarray | None = None,
    quantiles: Sequence[float] | np.ndarray | None = None,
) -> dict[str, float]:
    """Accuracy of forecasts ``y_pred`` against ``y_true``, both (n, H) in original units.

    Args:
        y_true: the true values, (n, H) (a 1-D array is one forecast).
        y_pred: the point forecasts, shaped like ``y_true``.
        scale: the MASE denominator (:func:`mase_scale`): a scalar, or one per row (n,) when the
            rows come from several series.
        y_quant: quantile forecasts (n, Q, H), for ``pinball``, ``coverage`` and ``nominal``.
        quantiles: the Q quantile levels of ``y_quant``, ascending.

    Returns:
        ``mae``, ``rmse``, ``mape`` (a fraction: 0.064 is 6.4%; truths equal to zero are left
        out), ``smape`` (a fraction between 0 and 2), ``mase``; with quantiles also ``pinball``
        (the mean pinball loss over levels, steps and rows), ``coverage`` (the share of truths
        inside [first, last] quantile) and ``nominal`` (last minus first level: the coverage a
        calibrated interval has).

    Example:
        >>> import numpy as np
        >>> got = forecast_metrics(np.array([[10.0, 20.0]]), np.array([[11.0, 18.0]]), scale=2.0)
        >>> round(got["mae"], 3), round(got["mape"], 3), round(got["mase"], 3)
        (1.5, 0.1, 0.75)
    """
    import numpy as np

    true = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(y_pred, dtype=np.float64)
    if true.ndim == 1:
        true, pred = true[None, :], pred.reshape(1, -1)
    if true.shape != pred.shape:
        raise ValueError(f"y_true {true.shape} and y_pred {pred.shape} must have the same shape")
    err = pred - true
    abs_err = np.abs(err)
    nonzero = true != 0
    mape = float((abs_err[nonzero] / np.abs(true[nonzero])).mean()) if nonzero.any() else np.nan
    denom = np.abs(true) + np.abs(pred)
    smape_terms = np.where(denom > 0, 2 * abs_err / np.where(denom > 0, denom, 1.0), 0.0)
    scales = np.broadcast_to(np.asarray(scale, dtype=np.float64).reshape(-1), (len(true),))
    out = {
        "mae": float(abs_err.mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "mape": mape,
        "smape": float(smape_terms.mean()),
        "mase": float((abs_err.mean(axis=1) / scales).mean()),
    }
    if y_quant is not None and quantiles is not None:
        q = np.asarray(quantiles, dtype=np.float64).reshape(-1)
        yq = np.asarray(y_quant, dtype=np.float64).reshape(len(true), len(q), -1)  # (n, Q, H)
        diff = true[:, None, :] - yq  # (n, Q, H)
        levels = q[None, :, None]
        out["pinball"] = float(np.maximum(levels * diff, (levels - 1) * diff).mean())
        inside = (true >= yq[:, 0, :]) & (true <= yq[:, -1, :])
        out["coverage"] = float(inside.mean())
        out["nominal"] = float(q[-1] - q[0])
    return out
