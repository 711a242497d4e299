"""Classical forecasters' intervals calibrated on their own forecast errors over the fitted
history (never the test block), with the normal intervals as the fallback (issue 21)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm

from danlu.models._classical import (
    MIN_ORIGINS,
    ETSSpec,
    SeasonalNaiveSpec,
    fit_classical,
    forecast_errors,
)

LEVELS = (0.1, 0.5, 0.9)


@pytest.fixture(scope="module")
def passengers():
    from danlu.data._series_sources import load_series_set

    return load_series_set("airline")


def test_offsets_are_the_empirical_quantiles_of_the_errors(passengers) -> None:
    """Per step, the offsets are the quantiles of the fitted model's errors from every window
    of its history; the 0.5 level is the point forecast and the interval holds it."""
    y = np.log1p(passengers["passengers"].to_numpy(np.float64)[:120])
    lags, horizon = 24, 12
    fit = fit_classical(ETSSpec(), y, season=12, horizon=horizon, lags=lags)
    errors = forecast_errors(fit.forecast, y, lags, horizon)
    assert [len(e) for e in fit.errors] == [len(y) - lags - h for h in range(horizon)]
    for h in range(horizon):
        np.testing.assert_allclose(fit.errors[h], errors[h], atol=1e-8)
    offsets = fit.offsets(LEVELS)
    for h in range(horizon):
        low, high = np.quantile(errors[h], [0.1, 0.9])
        assert offsets[0, h] == pytest.approx(min(low, 0.0), abs=1e-8)
        assert offsets[2, h] == pytest.approx(max(high, 0.0), abs=1e-8)
    assert np.all(offsets[1] == 0.0) and np.all(offsets[0] < offsets[2])
    assert fit.calibration["method"] == "empirical"
    # wider than ETS's own (initial states taken as known) on this series
    assert np.all(offsets[2] - offsets[0] > 2 * norm.ppf(0.9) * fit.stderr)


def test_short_history_falls_back_to_normal_intervals(passengers) -> None:
    """Steps with fewer than MIN_ORIGINS errors use z_q × the standard error; the record says
    which steps were calibrated."""
    y = np.log1p(passengers["passengers"].to_numpy(np.float64))
    lags, horizon = 24, 6
    short = fit_classical(SeasonalNaiveSpec(), y[: lags + MIN_ORIGINS - 2], season=12,
                          horizon=horizon, lags=lags)  # fmt: skip
    assert short.calibration["method"] == "normal"
    normal = np.stack([norm.ppf(q) * short.stderr for q in LEVELS])
    np.testing.assert_allclose(short.offsets(LEVELS), normal)
    # step 1 has MIN_ORIGINS + 2 origins, step 6 MIN_ORIGINS - 3: mixed
    mixed = fit_classical(SeasonalNaiveSpec(), y[: lags + MIN_ORIGINS + 2], season=12,
                          horizon=horizon, lags=lags)  # fmt: skip
    info = mixed.calibration
    assert info["method"] == "mixed" and info["origins"][0] == MIN_ORIGINS + 2
    steps = info["empirical_steps"]
    assert 0 < steps < horizon
    offsets = mixed.offsets(LEVELS)
    late = np.stack([norm.ppf(q) * mixed.stderr[steps:] for q in LEVELS])
    np.testing.assert_allclose(offsets[:, steps:], late)
    assert offsets[2, 0] == pytest.approx(max(float(np.quantile(mixed.errors[0], 0.9)), 0.0))


def _trained(frame, horizon: int):
    from danlu.config import DataConfig, ForecastConfig, ModelConfig, TrainConfig
    from danlu.data import prepare_forecast_data
    from danlu.models import build_model
    from danlu.tasks import get_task
    from danlu.train._classical import ClassicalTrainer

    data = DataConfig(source="builtin:airline", target="passengers")
    forecast = ForecastConfig(time="month", horizon=horizon, transform="log")
    task = get_task("forecasting")
    prepared = prepare_forecast_data(data, forecast, task, frame=frame)
    model = build_model(ModelConfig.model_validate({"type": "ets"}), prepared.schema, task)
    trainer = ClassicalTrainer(TrainConfig()).fit(model, task, prepared)
    return trainer, prepared


def test_shipped_intervals_never_read_the_test_block(passengers) -> None:
    """The trained module's offsets come from the history before the test block (changing the
    test block changes nothing), are constants of the affine map (the same for any window),
    are recorded in classical.json's record, and cover the airline test block (last 12
    months) at least as well as the normal intervals did."""
    horizon = 12
    trainer, prepared = _trained(passengers, horizon)
    info = trainer.native["intervals"]
    assert info["method"] == "empirical" and min(info["origins"]) >= MIN_ORIGINS
    changed = passengers.copy()
    changed.loc[len(changed) - horizon :, "passengers"] *= 5.0
    other, _ = _trained(changed, horizon)
    np.testing.assert_array_equal(other.model.offset.numpy(), trainer.model.offset.numpy())

    x = torch.as_tensor(np.concatenate([prepared.x_train[:3], prepared.x_test]))
    with torch.inference_mode():
        out = trainer.model(x).double().numpy().reshape(len(x), len(LEVELS), horizon)
    spread = out - out[:, 1:2]
    np.testing.assert_allclose(spread, np.broadcast_to(spread[:1], spread.shape), atol=1e-5)

    schema, series = prepared.schema, prepared.series
    mean, std = float(schema.target_mean), float(schema.target_std)
    truth = np.log1p(series.values[0][series.val_end[0] :])
    band = out[-1] * std + mean  # the test row, transformed units
    inside = float(np.mean((band[0] <= truth) & (truth <= band[2])))
    # the normal intervals of the same fit
    history = np.log1p(series.values[0][: series.val_end[0]])
    fit = fit_classical(ETSSpec(), history, season=12, horizon=horizon, lags=int(series.lags))
    lower, upper = (band[1] + norm.ppf(q) * fit.stderr for q in (0.1, 0.9))
    before = float(np.mean((lower <= truth) & (truth <= upper)))
    assert inside >= before and inside > 0.5
