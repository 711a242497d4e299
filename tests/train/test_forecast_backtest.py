"""Classical forecasting models (affine readout of statsmodels), the rolling-origin backtest,
``model: {type: auto}`` for forecasting and the forecasting report sections (issue 21)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from danlu.config import DataConfig, ForecastConfig
from danlu.data import prepare_forecast_data
from danlu.errors import ConfigError
from danlu.models._classical import (
    ARIMASpec,
    ETSSpec,
    NaiveSpec,
    SeasonalNaiveSpec,
    fit_classical,
)
from danlu.train._backtest import backtest, fold_origins


@pytest.fixture(scope="module")
def airline() -> np.ndarray:
    """log1p of the airline passengers, 1949-1958 (120 months)."""
    from danlu.data._series_sources import load_series_set

    frame = load_series_set("airline")
    return np.log1p(frame["passengers"].to_numpy(np.float64)[:120])


@pytest.mark.parametrize(
    "spec",
    [
        NaiveSpec(),
        SeasonalNaiveSpec(),
        ETSSpec(),
        ETSSpec(damped=True),
        ARIMASpec(order=(0, 1, 1), seasonal_order=(0, 1, 1)),
    ],
    ids=["naive", "seasonal_naive", "ets", "ets_damped", "arima"],
)
def test_affine_readout_matches_statsmodels(spec, airline: np.ndarray) -> None:
    """The readout W·window + b equals statsmodels' own forecast with the fitted parameters
    on windows it was not probed on, and the torch module (standardized in and out) too."""
    from danlu.models._classical import _affine_module

    lags, horizon = 36, 12
    fit = fit_classical(spec, airline[:96], season=12, horizon=horizon, lags=lags)
    assert fit.forecast_window is not None
    rng = np.random.default_rng(3)
    for window in (airline[-lags:], airline[-lags - 7 : -7] + rng.normal(0, 0.05, lags)):
        np.testing.assert_allclose(fit.forecast(window), fit.forecast_window(window), atol=1e-6)
    mean, std, levels = 5.4, 0.4, (0.1, 0.5, 0.9)
    module = _affine_module()(lags + 2, horizon, len(levels), fit.kind)
    module.load_fit(fit, list(range(lags)), mean, std, levels)
    window = airline[-lags:]
    x = np.zeros((1, lags + 2), dtype=np.float32)
    x[0, :lags] = (window - mean) / std
    x[0, lags:] = 7.0  # covariate columns: no weight in a classical model
    out = module(torch.from_numpy(x)).double().numpy().reshape(3, horizon) * std + mean
    np.testing.assert_allclose(out[1], fit.forecast_window(window), atol=2e-4)
    # the interval holds the mean (an edge of it may sit on the mean where every calibration
    # error has one sign: naive 12 months ahead on a growing series)
    assert np.all(out[0] <= out[1]) and np.all(out[1] <= out[2]) and np.all(out[0] < out[2])
    if fit.kind == "seasonal_naive":
        np.testing.assert_allclose(out[1], window[-12:], atol=2e-4)


def test_arima_auto_search_picks_lowest_aic(airline: np.ndarray) -> None:
    fit = fit_classical(ARIMASpec(), airline[:96], season=12, horizon=6, lags=30)
    manual = fit_classical(
        ARIMASpec(order=(0, 1, 1), seasonal_order=(0, 1, 1)),
        airline[:96],
        season=12,
        horizon=6,
        lags=30,
    )
    assert fit.aic is not None and manual.aic is not None
    assert fit.params["seasonal_order"][3] == 12  # a seasonal model on a seasonal series
    if fit.params["order"][1] == 1:  # the same differencing: (0,1,1)(0,1,1) was searched
        assert fit.aic <= manual.aic + 1e-6


def test_fold_origins_step_back_from_the_test_block() -> None:
    origins, step = fold_origins(120, 24, 5, min_origin=50)
    assert origins[-1] == 96 and origins[0] >= 50 and step == 11
    assert all(b - a == step for a, b in zip(origins, origins[1:], strict=False))
    with pytest.raises(ConfigError, match="forecast.backtest"):
        fold_origins(60, 24, 5, min_origin=50)


def _airline_data(horizon: int = 6, **forecast: object):
    config = ForecastConfig(time="month", horizon=horizon, transform="log", **forecast)
    data = DataConfig(source="builtin:airline", target="passengers")
    from danlu.tasks import get_task

    return data, config, prepare_forecast_data(data, config, get_task("forecasting"))


def test_backtest_folds_never_see_the_future() -> None:
    """Changing every value after a fold's origin changes none of that fold's forecasts —
    classical (statsmodels on the raw series) and neural (the data cut at the fold)."""
    import dataclasses

    from danlu.config import load_recipe
    from danlu.data._series_sources import load_series_set

    data_config, forecast, prepared = _airline_data(lags=12, quantiles=[])
    series = prepared.series
    recipe = load_recipe(
        {
            "name": "air",
            "task": "forecasting",
            "data": data_config.model_dump(),
            "forecast": forecast.model_dump(),
            "model": {"type": "mlp", "hidden": [8]},
            "train": {"epochs": 2, "batch_size": 16, "checkpoint": {"every": 0}},
        }
    )
    frame = load_series_set("airline")
    candidates = [("seasonal_naive", SeasonalNaiveSpec()), ("ets", ETSSpec())]
    candidates.append(("mlp", recipe.model.options()))
    first = backtest(candidates, series, recipe=recipe, frame=frame, folds=2)
    origin = first.origins[0]
    later = frame.copy()
    later.loc[origin:, "passengers"] = later.loc[origin:, "passengers"] * 3 + 50
    changed = [v.copy() for v in series.values]
    changed[0][origin:] = changed[0][origin:] * 3 + 50
    again = backtest(
        candidates,
        dataclasses.replace(series, values=changed),
        recipe=recipe,
        frame=later,
        folds=2,
    )
    assert again.origins == first.origins
    for index, (kind, _) in enumerate(candidates):
        np.testing.assert_allclose(again.forecasts[(index, 0)], first.forecasts[(index, 0)])
        if kind != "seasonal_naive":  # whose forecast here repeats points before the change
            # the second fold saw the change before its origin: its forecast moved
            assert not np.allclose(again.forecasts[(index, 1)], first.forecasts[(index, 1)])
    assert [s["type"] for s in first.summary] == ["seasonal_naive", "ets", "mlp"]
    assert all("mase" in s for s in first.summary)


def test_auto_ships_the_backtest_winner_with_its_table(tmp_path) -> None:
    import danlu
    from danlu.store import SqlStore

    store = SqlStore(home=tmp_path / "home")
    recipe = {
        "name": "air",
        "task": "forecasting",
        "data": {"source": "builtin:airline", "target": "passengers"},
        "forecast": {"time": "month", "horizon": 12, "transform": "log", "backtest": {"folds": 3}},
        "model": {
            "type": "auto",
            "candidates": [{"type": "naive"}, {"type": "seasonal_naive"}, {"type": "ets"}],
        },
        "train": {"checkpoint": {"every": 0}},
        "evaluate": {
            "calibration": None,
            "robustness": None,
            "explain": None,
            "membership": None,
            "cost": None,
            "baselines": False,
        },
    }
    result = danlu.run(recipe, store=store)
    table = json.loads((result.run_dir / "backtest.json").read_text())
    means = {s["type"]: s["mase"] for s in table["summary"]}
    best = min(means, key=lambda k: means[k])
    assert table["winner_type"] == best and len(table["origins"]) == 3
    card = json.loads((result.run_dir / "model.json").read_text())
    assert card["type"] == best
    assert getattr(result.model, "classical_kind", None) == best
    keys = [s.key for s in result.report.sections]
    assert {"backtest", "forecast", "residuals"} <= set(keys)
    residuals = next(s for s in result.report.sections if s.key == "residuals")
    assert 0.0 <= residuals.data["ljung_box_p"] <= 1.0 and residuals.figures
    forecast = next(s for s in result.report.sections if s.key == "forecast")
    assert len(forecast.data["forecast"]) == 12 and forecast.figures
    store.close()


def test_classical_model_refuses_many_series() -> None:
    from danlu.config import load_recipe
    from danlu.train._run import check_recipe

    recipe = load_recipe(
        {
            "name": "many",
            "task": "forecasting",
            "data": {"source": "builtin:airline", "target": "passengers"},
            "forecast": {"time": "month", "horizon": 6, "series_id": "shop"},
            "model": {"type": "ets"},
        }
    )
    with pytest.raises(ConfigError, match=r"ets is fitted on one series.*auto"):
        check_recipe(recipe)


def test_classical_module_exports_to_onnx(airline: np.ndarray) -> None:
    """The affine module exports with a dynamic batch and the same outputs."""
    from danlu.export._onnx import export_onnx, onnx_outputs
    from danlu.models._classical import _affine_module

    lags, horizon = 24, 6
    fit = fit_classical(ETSSpec(), airline, season=12, horizon=horizon, lags=lags)
    module = _affine_module()(lags, horizon, 3, fit.kind)
    module.load_fit(fit, list(range(lags)), 5.5, 0.4, (0.1, 0.5, 0.9))
    module.eval()
    rows = airline[np.arange(20)[:, None] + np.arange(lags)]
    x = ((rows - 5.5) / 0.4).astype(np.float32)
    graph = export_onnx(module, lags, x[:4])
    got = onnx_outputs(graph)(x)  # more rows than the export's example
    np.testing.assert_allclose(got, module(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_auto_with_many_series_ships_a_neural_model(tmp_path) -> None:
    """Classical models are the backtest's baselines on each series but never ship for many."""
    import danlu
    from danlu.data._series_sources import load_series_set
    from danlu.store import SqlStore

    one = load_series_set("airline")
    frame = __import__("pandas").concat(
        [one.assign(shop="a"), one.assign(shop="b", passengers=one["passengers"] * 1.5)]
    )
    frame.to_csv(tmp_path / "shops.csv", index=False)
    store = SqlStore(home=tmp_path / "home")
    result = danlu.run(
        {
            "name": "shops",
            "task": "forecasting",
            "data": {"source": str(tmp_path / "shops.csv"), "target": "passengers"},
            "forecast": {
                "time": "month",
                "series_id": "shop",
                "horizon": 6,
                "lags": 12,
                "transform": "log",
                "backtest": {"folds": 2},
            },
            "model": {
                "type": "auto",
                "candidates": [{"type": "seasonal_naive"}, {"type": "mlp", "hidden": [8]}],
            },
            "train": {"epochs": 2, "checkpoint": {"every": 0}},
        },
        store=store,
    )
    table = json.loads((result.run_dir / "backtest.json").read_text())
    naive = next(s for s in table["summary"] if s["type"] == "seasonal_naive")
    assert naive["baseline_only"] and "mase" in naive  # scored on both series, not shippable
    assert table["winner_type"] == "mlp"
    assert json.loads((result.run_dir / "model.json").read_text())["type"] == "mlp"
    store.close()


def test_report_of_one_model_backtests_it_against_the_baselines(tmp_path) -> None:
    """A run of one model type: the report backtests it against seasonal naive and ETS (stored
    as backtest.json); `danlu evaluate RUN` rebuilds the forecasting sections from the store."""
    import danlu
    from danlu.evaluate import evaluate_run
    from danlu.store import SqlStore

    store = SqlStore(home=tmp_path / "home")
    off = {k: None for k in ("calibration", "robustness", "explain", "membership", "cost")}
    result = danlu.run(
        {
            "name": "air",
            "task": "forecasting",
            "data": {"source": "builtin:airline", "target": "passengers"},
            "forecast": {"time": "month", "horizon": 12, "transform": "log"},
            "model": {"type": "naive"},
            "train": {"checkpoint": {"every": 0}},
            "evaluate": {**off, "baselines": False},
        },
        store=store,
    )
    section = next(s for s in result.report.sections if s.key == "backtest")
    models = {row["model"]: row for row in section.data["models"]}
    assert set(models) == {"naive", "seasonal_naive", "ets"}
    assert models["naive"]["shipped"] == "yes" and models["ets"]["shipped"] == ""
    assert models["ets"]["mase"] < models["naive"]["mase"]  # the report shows the better model
    assert (result.run_dir / "backtest.json").is_file()
    again = evaluate_run(result.run_id, store=store)
    keys = [s.key for s in again.sections]
    assert {"backtest", "forecast", "residuals"} <= set(keys)
    store.close()


def test_ets_is_seasonal_on_a_two_season_window(airline: np.ndarray) -> None:
    """lags: auto gives two seasons for horizon ≤ season; ETS must keep its seasonality there."""
    fit = fit_classical(ETSSpec(), airline, season=12, horizon=12, lags=24)
    assert fit.params["seasonal"] == 12
    flat = fit_classical(ETSSpec(seasonal="none"), airline, season=12, horizon=12, lags=24)
    assert flat.params["seasonal"] == 0
    # a seasonal forecast repeats the pattern: its steps move far more than a trend line's
    assert np.ptp(np.diff(fit.forecast(airline))) > 5 * np.ptp(np.diff(flat.forecast(airline)))
