from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from danlu.tasks._forecast_metrics import forecast_metrics, mase_scale


def test_point_metrics_match_sklearn_and_definitions():
    rng = np.random.default_rng(0)
    true = rng.uniform(1, 10, size=(30, 4))
    pred = true + rng.normal(scale=0.5, size=true.shape)
    got = forecast_metrics(true, pred, scale=0.7)
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(true.ravel(), pred.ravel()))
    assert got["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(true.ravel(), pred.ravel())))
    assert got["mape"] == pytest.approx(
        skm.mean_absolute_percentage_error(true.ravel(), pred.ravel())
    )
    smape = np.mean(2 * np.abs(pred - true) / (np.abs(true) + np.abs(pred)))
    assert got["smape"] == pytest.approx(smape)
    assert got["mase"] == pytest.approx(got["mae"] / 0.7)


def test_mase_with_one_scale_per_row_and_zero_truths_in_mape():
    true = np.array([[0.0, 2.0], [4.0, 4.0]])
    pred = np.array([[1.0, 3.0], [4.0, 6.0]])
    got = forecast_metrics(true, pred, scale=np.array([1.0, 2.0]))
    assert got["mase"] == pytest.approx((1.0 / 1.0 + 1.0 / 2.0) / 2)
    assert got["mape"] == pytest.approx(np.mean([1 / 2, 0.0, 2 / 4]))  # the zero truth left out
    assert 0 <= got["smape"] <= 2


def test_quantile_metrics_pinball_coverage_nominal():
    true = np.array([[1.0, 2.0, 3.0]])
    quant = np.stack([true - 1, true, true + 1], axis=1)  # (1, 3, 3): every truth inside
    quant[0, 2, 2] = 2.5  # the last step's upper quantile falls below its truth
    got = forecast_metrics(true, quant[:, 1], scale=1.0, y_quant=quant, quantiles=[0.1, 0.5, 0.9])
    assert got["coverage"] == pytest.approx(2 / 3)
    assert got["nominal"] == pytest.approx(0.8)
    diff = true[:, None, :] - quant
    levels = np.array([0.1, 0.5, 0.9])[None, :, None]
    expected = np.maximum(levels * diff, (levels - 1) * diff).mean()
    assert got["pinball"] == pytest.approx(expected)
    assert got["pinball"] > 0


def test_mase_scale_seasonal_and_fallbacks():
    y = np.arange(24, dtype=float) + np.tile([0.0, 5.0], 12)
    assert mase_scale(y, season=2) == pytest.approx(2.0)  # y_t - y_{t-2} = 2 everywhere
    assert mase_scale(y[:3], season=2) == pytest.approx(np.abs(np.diff(y[:3])).mean())  # m = 1
    assert mase_scale([3.0, 3.0, 3.0], season=1) == pytest.approx(3.0)  # constant: mean |y|
    assert mase_scale([0.0, 0.0], season=1) == 1.0


def test_shapes_must_match():
    with pytest.raises(ValueError, match="same shape"):
        forecast_metrics(np.zeros((2, 3)), np.zeros((2, 2)), scale=1.0)
