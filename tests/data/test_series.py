"""Time series for task: forecasting: checks (each bad input refused or repaired as the recipe
says), time-ordered windows without leakage, the one target scale, cutoffs and the built-ins."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from danlu.config import DataConfig, ForecastConfig, load_recipe
from danlu.data import SeriesSplits, forecast_window, future_times, prepare_forecast_data
from danlu.data._series import season_for
from danlu.errors import ConfigError, DataError
from danlu.tasks import get_task

TASK = get_task("forecasting")


def monthly(n: int = 60, start: str = "2000-01-01", sid: str | None = None) -> pd.DataFrame:
    t = np.arange(n)
    frame = pd.DataFrame(
        {
            "month": pd.date_range(start, periods=n, freq="MS"),
            "y": 100 + t + 10 * np.sin(2 * np.pi * t / 12),
        }
    )
    if sid is not None:
        frame.insert(0, "store", sid)
    return frame


def prepare(frame: pd.DataFrame, **forecast: object):
    config = ForecastConfig.model_validate({"time": "month", "horizon": 6, **forecast})
    return prepare_forecast_data(DataConfig(source="x.csv", target="y"), config, TASK, frame=frame)


def test_windows_are_time_ordered_and_never_cross_into_later_blocks():
    frame = monthly(60)
    data = prepare(frame, lags=12, val=6, test=6)
    s = data.series
    assert isinstance(s, SeriesSplits) and s.season == 12 and s.frequency == "MS"
    assert (s.train_end, s.val_end) == ([48], [54])
    # train origins 12..42: the last training row's horizon ends at point 47 (train_end - 1)
    assert data.report["rows"] == {"train": 31, "val": 6, "test": 1}
    mean, std = data.schema.target_mean, data.schema.target_std
    values = frame["y"].to_numpy()
    assert mean == pytest.approx(values[:48].mean()) and std == pytest.approx(values[:48].std())
    last_train = data.y_train[-1] * std + mean
    np.testing.assert_allclose(last_train, values[42:48], rtol=1e-5)
    # every lag column shares the target's scale: the window is the raw values, scaled alike
    np.testing.assert_allclose(data.x_train[0] * std + mean, values[0:12], rtol=1e-5)
    np.testing.assert_allclose(data.y_test[0] * std + mean, values[54:60], rtol=1e-5)
    np.testing.assert_allclose(data.x_test[0] * std + mean, values[42:54], rtol=1e-5)
    assert data.y_train.dtype == np.float32 and data.y_train.shape[1] == 6


def test_unsorted_rows_are_sorted_and_reported():
    frame = monthly(48)
    shuffled = frame.sample(frac=1.0, random_state=0)
    data = prepare(shuffled, lags=6)
    assert data.report["sorted"] == ["series"]
    np.testing.assert_allclose(data.series.values[0], frame["y"].to_numpy())


def test_duplicate_timestamps_are_refused_naming_series_and_time():
    frame = pd.concat([monthly(48, sid="a"), monthly(48, sid="b").iloc[[5]]], ignore_index=True)
    frame.loc[frame.index[-1], "store"] = "a"
    with pytest.raises(DataError, match=r"Series 'a' has duplicate timestamps.*2000-06-01"):
        prepare(frame, series_id="store", lags=6)


def test_gaps_are_refused_or_interpolated_per_the_recipe():
    frame = monthly(48).drop(index=[20, 21]).reset_index(drop=True)
    with pytest.raises(DataError, match=r"irregular: 2 timestamp.*2001-09-01.*forecast.missing"):
        prepare(frame, lags=6)
    data = prepare(frame, lags=6, missing="interpolate")
    values = data.series.values[0]
    assert len(values) == 48 and data.report["interpolated"] == {"series": 2}
    full = monthly(48)["y"].to_numpy()
    assert values[20] == pytest.approx(full[19] + (full[22] - full[19]) / 3)


def test_timestamps_off_the_frequency_grid_are_refused():
    frame = monthly(48)
    frame.loc[10, "month"] = pd.Timestamp("2000-11-15")
    with pytest.raises(DataError, match=r"off the MS grid: 2000-11-15.*forecast.frequency"):
        prepare(frame, lags=6, frequency="MS")


def test_missing_target_values_are_refused_or_interpolated():
    frame = monthly(48)
    frame.loc[[3, 30], "y"] = np.nan
    with pytest.raises(DataError, match=r"2 missing target value\(s\) at 2000-04-01"):
        prepare(frame, lags=6)
    data = prepare(frame, lags=6, missing="interpolate")
    assert not np.isnan(data.series.values[0]).any()
    assert not np.isnan(data.x_train).any()


def test_a_horizon_longer_than_the_history_is_refused():
    with pytest.raises(DataError, match=r"forecast.horizon.*longer than the history"):
        prepare(monthly(30), horizon=40)
    with pytest.raises(DataError, match=r"horizon is longer than the history"):
        prepare(monthly(30), horizon=12, season=1)  # test + val take 24 of 30: no window left


def test_a_series_shorter_than_its_seasonal_period_is_refused():
    assert prepare(monthly(20), horizon=3, lags=2).series.season == 12  # 14 training points
    # the monthly season is 12; 20 points less 6 + 6 held out leave 8 < 12
    with pytest.raises(DataError, match=r"shorter than its seasonal period.*season 12"):
        prepare(monthly(20), horizon=6)


def test_a_series_shorter_than_its_seasonal_period_names_the_series():
    frame = pd.concat([monthly(60, sid="big"), monthly(20, sid="small")], ignore_index=True)
    with pytest.raises(DataError, match=r"series 'small' is shorter than its seasonal period"):
        prepare(frame, series_id="store")


def test_many_series_share_one_scale_and_keep_their_own_splits():
    frame = pd.concat([monthly(48, sid="a"), monthly(60, sid="b")], ignore_index=True)
    frame.loc[frame["store"] == "b", "y"] += 50
    data = prepare(frame, series_id="store", lags=6)
    s = data.series
    assert s.ids == ["a", "b"] and s.train_end == [36, 48] and len(s.mase_scale) == 2
    assert data.report["rows"]["test"] == 2  # one test origin per series (test = horizon)
    both = np.concatenate([s.values[0][:36], s.values[1][:48]])
    assert data.schema.target_mean == pytest.approx(both.mean())


def test_a_cutoff_hides_everything_after_the_fold_origin():
    frame = monthly(60)
    full = prepare(frame, lags=6)
    config = ForecastConfig(time="month", horizon=6, lags=6)
    cut = prepare_forecast_data(
        DataConfig(source="x.csv", target="y"), config, TASK, frame=frame, cutoff=48
    )
    assert len(cut.series.values[0]) == 48 and cut.series.val_end == [42]
    assert cut.schema.target_mean == pytest.approx(frame["y"].to_numpy()[:36].mean())
    assert full.series.val_end == [54]


def test_log_transform_and_covariates():
    frame = monthly(48)
    frame["promo"] = (np.arange(48) % 5 == 0).astype(float)
    frame["temp"] = np.linspace(0, 1, 48)
    data = prepare(
        frame, lags=6, transform="log", covariates={"known": ["promo"], "observed": ["temp"]}
    )
    names = data.schema.encoded_names
    assert names[:6] == tuple(f"lag_{k}" for k in range(6, 0, -1))
    assert names[6:12] == tuple(f"temp_lag_{k}" for k in range(6, 0, -1))
    assert names[12:] == tuple(f"promo_next_{h}" for h in range(1, 7))
    assert data.schema.target_mean == pytest.approx(np.log1p(frame["y"].to_numpy()[:36]).mean())
    meta = data.schema.forecast
    row = forecast_window(meta, frame["y"].tolist(), {"temp": [0.5] * 6, "promo": [1.0] * 6})
    assert row["lag_1"] == pytest.approx(np.log1p(frame["y"].iloc[-1]))
    with pytest.raises(DataError, match=r"covariates.promo: needs exactly 6"):
        forecast_window(meta, frame["y"].tolist(), {"temp": [0.5] * 6, "promo": [1.0]})
    with pytest.raises(DataError, match=r"covariates.temp: missing"):
        forecast_window(meta, frame["y"].tolist(), {"promo": [1.0] * 6})


def test_frequency_and_season_inference():
    assert (season_for("MS"), season_for("W-SAT"), season_for("D"), season_for("h")) == (
        12,
        52,
        7,
        24,
    )
    assert season_for("QS-OCT") == 4 and season_for("YS") == 1 and season_for(5) == 1
    assert future_times({"frequency": "7"}, 2000, 2) == [2007, 2014]


def test_integer_time_axis():
    frame = pd.DataFrame({"month": np.arange(0, 80, 2), "y": np.arange(40.0)})
    data = prepare(frame, lags=4, horizon=3)
    assert data.series.frequency == "2" and data.series.season == 1
    assert data.schema.forecast["last_time"] == {"series": 78}


@pytest.mark.parametrize(
    ("name", "forecast", "season"),
    [
        ("airline", {"time": "month", "horizon": 12}, 12),
        ("shampoo_sales", {"time": "month", "horizon": 3}, 12),
        ("co2", {"time": "date", "horizon": 52, "missing": "interpolate"}, 52),
        ("sunspots", {"time": "year", "horizon": 11, "season": 11}, 11),
        ("macrodata", {"time": "quarter", "horizon": 4}, 4),
    ],
)
def test_builtin_series_prepare(name, forecast, season):
    config = ForecastConfig.model_validate(forecast)
    data = prepare_forecast_data(DataConfig(source=f"builtin:{name}"), config, TASK)
    assert data.series.season == season and data.report["rows"]["test"] == 1
    assert not np.isnan(data.x_train).any() and len(data.x_train) >= 5


def test_co2_has_gaps_that_need_interpolate():
    config = ForecastConfig(time="date", horizon=52)
    with pytest.raises(DataError, match=r"forecast.missing"):
        prepare_forecast_data(DataConfig(source="builtin:co2"), config, TASK)


def _recipe(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return load_recipe(path)


def test_recipe_errors_name_the_forecast_block(tmp_path):
    from danlu.train import check_recipe

    base = "name: r\ndata: {source: 'builtin:airline', target: passengers}\nmodel: {type: mlp}\n"
    with pytest.raises(ConfigError, match=r"forecast: task: forecasting needs a forecast block"):
        check_recipe(_recipe(tmp_path, base + "task: forecasting\n"))
    other = base + "task: regression\nforecast: {time: month, horizon: 3}\n"
    with pytest.raises(ConfigError, match=r"applies to task: forecasting only"):
        check_recipe(_recipe(tmp_path, other))
    lstm = "name: r\ndata: {source: 'builtin:diabetes'}\ntask: regression\nmodel: {type: lstm}\n"
    with pytest.raises(ConfigError, match=r"forecasts windows of a series"):
        check_recipe(_recipe(tmp_path, lstm))
    cv = base + "task: forecasting\nforecast: {time: month, horizon: 3}\n"
    cv += "evaluate: {cross_validation: 3}\ndata: {source: 'builtin:airline', target: passengers, "
    cv += "split: {by: time, column: month}}\n"
    with pytest.raises(ConfigError) as info:
        check_recipe(_recipe(tmp_path, cv.replace(base.splitlines()[1] + "\n", "")))
    assert "evaluate.cross_validation" in str(info.value) and "data.split" in str(info.value)
    bad = base + "task: forecasting\nforecast: {time: month, horizon: 3, frequency: XYZ}\n"
    with pytest.raises(ConfigError, match=r"not a pandas frequency"):
        _recipe(tmp_path, bad)


def test_a_missing_package_gives_an_install_hint(monkeypatch):
    from danlu.data import _series_sources
    from danlu.errors import MissingExtraError

    monkeypatch.setattr(_series_sources, "_package_file", lambda package, relative: None)
    with pytest.raises(MissingExtraError, match=r"pip install 'danlu\[datasets\]'.*statsmodels"):
        _series_sources.load_series_set("sunspots")


def test_the_tabular_preparation_refuses_forecasting():
    from danlu.data import prepare_data

    with pytest.raises(DataError, match="prepare_forecast_data"):
        prepare_data(DataConfig(source="builtin:airline"), TASK)
