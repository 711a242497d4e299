"""The rolling-origin backtest with many series of different lengths: each series' folds are
aligned on its own end (issue 21)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from danlu.config import load_recipe
from danlu.data import prepare_forecast_data
from danlu.models._classical import SeasonalNaiveSpec
from danlu.tasks import get_task
from danlu.train._backtest import backtest, series_origins

HORIZON = 6


@pytest.fixture(scope="module")
def shops():
    """Two monthly series: 'a' the 144 airline months, 'b' the first 120 of them doubled."""
    from danlu.data._series_sources import load_series_set

    one = load_series_set("airline")
    short = one.iloc[:120].assign(shop="b", passengers=one["passengers"].iloc[:120] * 2.0)
    frame = pd.concat([one.assign(shop="a"), short], ignore_index=True)
    recipe = load_recipe(
        {
            "name": "shops",
            "task": "forecasting",
            "data": {"source": "builtin:airline", "target": "passengers"},
            "forecast": {
                "time": "month",
                "series_id": "shop",
                "horizon": HORIZON,
                "lags": 12,
                "transform": "log",
                "quantiles": [],
            },
            "model": {"type": "mlp", "hidden": [8]},
            "train": {"epochs": 2, "batch_size": 16, "checkpoint": {"every": 0}},
        }
    )
    assert recipe.forecast is not None
    prepared = prepare_forecast_data(recipe.data, recipe.forecast, get_task("forecasting"),
                                     frame=frame)  # fmt: skip
    return frame, recipe, prepared.series


def test_each_series_forecasts_before_its_own_end(shops) -> None:
    """A fold's origin sits as far before each series' own test block; the seasonal naive
    forecast of each series repeats that series' season before its own origin; a negative
    cutoff cuts every series at the same distance from its end."""
    frame, recipe, series = shops
    assert series.ids == ["a", "b"] and series.val_end == [138, 114]
    result = backtest([("seasonal_naive", SeasonalNaiveSpec())], series, folds=2)
    assert result.origins == [102, 108]
    for fold, origin in enumerate(result.origins):
        own = series_origins(series, origin)
        assert own == [origin + 24, origin]
        for values, o, got in zip(series.values, own, result.forecasts[(0, fold)], strict=True):
            np.testing.assert_allclose(got, values[o - 12 : o - 12 + HORIZON], rtol=1e-9)
    forecast = recipe.forecast.model_copy(update={"test": HORIZON, "lags": 12, "season": 12})
    drop = len(series.values[0]) - (series_origins(series, 108)[0] + HORIZON)
    cut = prepare_forecast_data(recipe.data, forecast, get_task("forecasting"), frame=frame,
                                cutoff=-drop)  # fmt: skip
    assert [len(v) for v in cut.series.values] == [138, 114]


def test_neural_fold_sees_each_series_up_to_its_own_origin(shops) -> None:
    """The neural candidate's fold: series 'a' (longer) reads its own points just before its
    origin (changing them moves its forecast) and nothing after it (changing the rest moves
    no forecast)."""
    frame, recipe, series = shops
    candidates = [("mlp", recipe.model.options())]
    first = backtest(candidates, series, recipe=recipe, frame=frame, folds=1)
    (origin,) = first.origins
    own_a = series_origins(series, origin)[0]
    a_rows = np.flatnonzero(frame["shop"].to_numpy() == "a")

    def changed(start: int, stop: int | None):
        later = frame.copy()
        rows = a_rows[start:stop]
        later.loc[rows, "passengers"] = later.loc[rows, "passengers"] * 1.7 + 40
        values = [v.copy() for v in series.values]
        values[0][start:stop] = values[0][start:stop] * 1.7 + 40
        again = backtest(candidates, dataclasses.replace(series, values=values),
                         recipe=recipe, frame=later, folds=1)  # fmt: skip
        assert again.origins == first.origins
        return again.forecasts[(0, 0)]

    future = changed(own_a, None)
    np.testing.assert_allclose(future[0], first.forecasts[(0, 0)][0], rtol=1e-6)
    np.testing.assert_allclose(future[1], first.forecasts[(0, 0)][1], rtol=1e-6)
    recent = changed(own_a - 3, own_a)  # inside a's last window, after b's origin's date
    assert not np.allclose(recent[0], first.forecasts[(0, 0)][0], rtol=1e-3)
