"""Time series for ``task: forecasting``: checked, regularised, split by time, cut into windows.

A table of observations (a time column, a target, optionally a series id and covariates) becomes
one clean series per id on a regular time axis, then rows of windows: each row is one forecast
origin ``t`` of one series, its inputs the last ``lags`` values before ``t`` (oldest first:
``lag_L … lag_1``, plus covariates), its target the next ``horizon`` values.

Splits are by time within each series: the last ``test`` points are the test block, the ``val``
points before them the validation block, the rest trains. A training row's horizon never reaches
the validation block; a validation row's never reaches the test block; test rows are the origins
whose whole horizon lies in the test block. The lag columns and the target share one scaler,
the (transformed) target's mean and standard deviation over the training points only, so a
window and its forecast live on the same scale.

Bad series are refused with the series, the times at fault and the recipe key that fixes it:
duplicate timestamps, timestamps off the frequency's grid, gaps and missing values (unless
``forecast.missing: interpolate``), a horizon longer than the history, a series shorter than its
seasonal period. Unsorted rows are sorted (the report says so).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from danlu.data._fingerprint import fingerprint_arrays, fingerprint_frame
from danlu.data._prepared import PreparedData
from danlu.data._preprocessor import Preprocessor
from danlu.data._sources import load_source
from danlu.data._split import RecipeDataError
from danlu.data._target import TaskLike, resolve_task
from danlu.data._values import preview
from danlu.errors import DataError
from danlu.logging import get_logger

if TYPE_CHECKING:
    from danlu.config import DataConfig, ForecastConfig

__all__ = [
    "SeriesSplits",
    "forecast_window",
    "future_times",
    "mase_scale",
    "prepare_forecast_data",
    "season_for",
    "window_columns",
]

logger = get_logger(__name__)

#: seasonal period by the start of a pandas offset's name (checked in this order).
_SEASONS = (("QS", 4), ("Q", 4), ("MS", 12), ("ME", 12), ("M", 12), ("W", 52), ("D", 7),
            ("B", 5), ("h", 24), ("H", 24))  # fmt: skip
#: fewest training windows a capped ``lags: auto`` leaves per series.
_MIN_WINDOWS = 5
_SHOWN = 5  # timestamps quoted in an error


@dataclass(frozen=True)
class SeriesSplits:
    """The clean series behind a forecasting run, for models that fit whole series (ETS, ARIMA)
    and for rolling-origin backtests.

    Attributes:
        ids: each series' id (``"series"`` for a single series).
        times: each series' regular time axis, datetime64[ns] or int64, (n_i,).
        values: each series' target in original units (cleaned, interpolated where asked, not
            transformed), float64 (n_i,).
        train_end: exclusive end of each series' training block: ``values[:train_end]``.
        val_end: exclusive end of the validation block: ``values[train_end:val_end]``; the test
            block is ``values[val_end:]``.
        horizon, season, lags: the window's settings, in steps.
        frequency: the pandas offset alias (``MS``) or the integer step (``"1"``).
        quantiles: the quantile levels forecast, ascending, 0.5 among them; () for points.
        transform: ``none`` or ``log`` (``log1p`` before modelling).
        mase_scale: each series' MASE denominator over its training block.
        covariates: covariate column → each series' values (float64, aligned with ``times``).
    """

    ids: list[str]
    times: list[np.ndarray]
    values: list[np.ndarray]
    train_end: list[int]
    val_end: list[int]
    horizon: int
    season: int
    lags: int
    frequency: str
    quantiles: tuple[float, ...]
    transform: str
    mase_scale: list[float]
    covariates: dict[str, list[np.ndarray]] = field(default_factory=dict)


# ---- reading and checking the series ----------------------------------------------------------


def _key(loc: str) -> tuple[str, ...]:
    return ("forecast", loc)


def _times_of(column: pd.Series, name: str) -> np.ndarray:
    """The time column as int64 steps or datetime64[ns]."""
    if pd.api.types.is_integer_dtype(column):
        return column.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(column):
        values = column.to_numpy(dtype=np.float64)
        if np.isfinite(values).all() and (values == np.round(values)).all():
            return values.astype(np.int64)
    try:
        parsed = pd.to_datetime(column, format="mixed")
    except (ValueError, TypeError) as exc:
        raise RecipeDataError(
            _key("time"),
            f"column '{name}' holds neither datetimes nor integer steps ({exc})",
            name,
            "Point forecast.time at a datetime or integer column.",
        ) from None
    if parsed.isna().any():
        rows = np.flatnonzero(parsed.isna().to_numpy())[:_SHOWN].tolist()
        raise DataError(f"Time column '{name}' has missing values (rows {rows}). Remove them.")
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert(None)
    return parsed.to_numpy(dtype="datetime64[ns]")


def _show(times: np.ndarray) -> str:
    shown = [str(t)[:19] if isinstance(t, np.datetime64) else str(t) for t in times[:_SHOWN]]
    more = f" and {len(times) - _SHOWN} more" if len(times) > _SHOWN else ""
    return ", ".join(shown) + more


def _infer_frequency(times: Sequence[np.ndarray], given: str | int) -> str | int:
    """The step of the series: pandas' alias for datetimes, an int for integer steps."""
    datetimes = np.issubdtype(times[0].dtype, np.datetime64)
    if given != "auto":
        if datetimes and isinstance(given, int):
            raise RecipeDataError(
                _key("frequency"),
                "an integer step needs an integer time column; this one holds datetimes",
                given,
                "Use a pandas offset alias (MS, W-SUN, D, h ...) or auto.",
            )
        if not datetimes and isinstance(given, str):
            raise RecipeDataError(
                _key("frequency"),
                "a pandas offset needs a datetime time column; this one holds integers",
                given,
                "Use an integer step or auto.",
            )
        return given
    if not datetimes:
        steps = np.concatenate([np.diff(t) for t in times if len(t) > 1] or [np.ones(1)])
        values, counts = np.unique(steps[steps > 0], return_counts=True)
        return int(values[counts.argmax()]) if len(values) else 1
    votes: dict[str, int] = {}
    for t in times:  # runs of 5 points: a gap spoils only the runs it falls in
        for start in range(0, max(len(t) - 4, 1), 3):
            chunk = pd.DatetimeIndex(t[start : start + 5])
            if len(chunk) >= 3:
                freq = pd.infer_freq(chunk)
                if freq is not None:
                    votes[freq] = votes.get(freq, 0) + 1
    if not votes:
        raise RecipeDataError(
            _key("frequency"),
            "the time column's frequency cannot be inferred (no run of 3 evenly spaced points)",
            "auto",
            "Set forecast.frequency to a pandas offset alias (MS, W-SUN, D, h ...).",
        )
    return max(votes, key=lambda k: votes[k])


def season_for(frequency: str | int) -> int:
    """The usual seasonal period of a frequency: 12 monthly, 52 weekly, 7 daily, 24 hourly,
    4 quarterly, else 1.

    Example:
        >>> season_for("MS"), season_for("W-SUN"), season_for("QS-OCT"), season_for(1)
        (12, 52, 4, 1)
    """
    if isinstance(frequency, int) or str(frequency).isdigit():
        return 1
    name = pd.tseries.frequencies.to_offset(str(frequency)).name
    for prefix, season in _SEASONS:
        if name.startswith(prefix) and not name.startswith(("MIN", "min")):
            return season
    return 1


def _grid(times: np.ndarray, frequency: str | int) -> np.ndarray:
    """The regular axis from the first to the last time, at ``frequency``."""
    if isinstance(frequency, int):
        return np.arange(times[0], times[-1] + 1, frequency, dtype=np.int64)
    index = pd.date_range(pd.Timestamp(times[0]), pd.Timestamp(times[-1]), freq=frequency)
    return index.to_numpy(dtype="datetime64[ns]")


def _fill(values: np.ndarray, what: str, sid: str, times: np.ndarray, missing: str) -> int:
    """Interpolate ``values``' NaNs in place (or refuse); the count filled."""
    gaps = np.isnan(values)
    if not gaps.any():
        return 0
    if missing == "refuse":
        raise RecipeDataError(
            _key("missing"),
            f"series '{sid}' has {int(gaps.sum())} missing {what} value(s) at {_show(times[gaps])}",
            missing,
            "Fill them in the data, or set forecast.missing: interpolate.",
        )
    if gaps.all():
        raise DataError(f"Series '{sid}' has no {what} values at all. Remove it from the data.")
    filled = pd.Series(values).interpolate(method="linear", limit_direction="both")
    values[:] = filled.to_numpy(dtype=np.float64)
    return int(gaps.sum())


@dataclass
class _Series:
    sid: str
    times: np.ndarray
    values: np.ndarray
    covariates: dict[str, np.ndarray]


def _numbers(column: pd.Series, name: str) -> np.ndarray:
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(values) & column.notna().to_numpy()
    if bad.any():
        rows = np.flatnonzero(bad)[:_SHOWN].tolist()
        raise DataError(
            f"Column '{name}' holds values that are not numbers (rows {rows}: "
            f"{preview(column.iloc[rows].tolist())}); forecasting needs numbers. Fix the data."
        )
    return values


def _read_series(
    frame: pd.DataFrame, target: str, forecast: ForecastConfig, report: dict[str, Any]
) -> list[_Series]:
    """One sorted, duplicate-free series per id (ids in order of first appearance)."""
    covs = [*forecast.covariates.known, *forecast.covariates.observed]
    for loc, name in (
        (("forecast", "time"), forecast.time),
        (("forecast", "series_id"), forecast.series_id),
        *((("forecast", "covariates"), c) for c in covs),
    ):
        if name is not None and name not in frame.columns:
            raise RecipeDataError(
                loc,
                "no such column in the data",
                name,
                f"Columns: {preview(list(map(str, frame.columns)))}.",
            )
    if forecast.time == target or forecast.series_id == target:
        raise RecipeDataError(
            _key("time"), "the time / series column is the target itself", target, "Use another."
        )
    times = _times_of(frame[forecast.time], forecast.time)
    values = _numbers(frame[target], target)
    cov_values = {c: _numbers(frame[c], c) for c in covs}
    if forecast.series_id is None:
        ids = np.zeros(len(frame), dtype=np.int64)
        names = ["series"]
    else:
        codes, uniques = pd.factorize(frame[forecast.series_id].astype(str), sort=False)
        ids, names = codes, [str(u) for u in uniques]
    out, unsorted = [], []
    for code, sid in enumerate(names):
        rows = np.flatnonzero(ids == code)
        t = times[rows]
        order = np.argsort(t, kind="stable")
        if (order != np.arange(len(order))).any():
            unsorted.append(sid)
        t = t[order]
        dup = t[1:] == t[:-1]
        if dup.any():
            raise DataError(
                f"Series '{sid}' has duplicate timestamps in '{forecast.time}': "
                f"{_show(np.unique(t[1:][dup]))}. Each time may appear once per series: "
                "aggregate the rows (sum or mean) or set forecast.series_id to tell the series "
                "apart."
            )
        series = _Series(
            sid, t, values[rows][order], {c: v[rows][order] for c, v in cov_values.items()}
        )
        out.append(series)
    if unsorted:
        logger.info(
            "Forecasting: rows of series %s were out of time order; sorted.", preview(unsorted)
        )
        report["sorted"] = unsorted
    return out


def _regularise(series: _Series, frequency: str | int, missing: str) -> dict[str, int]:
    """Put ``series`` on its regular grid (gaps become NaN, then filled or refused)."""
    grid = _grid(series.times, frequency)
    position = np.searchsorted(grid, series.times)
    off = (position >= len(grid)) | (grid[np.minimum(position, len(grid) - 1)] != series.times)
    if off.any():
        raise RecipeDataError(
            _key("frequency"),
            f"series '{series.sid}' has timestamps off the {frequency} grid: "
            f"{_show(series.times[off])}",
            frequency,
            "Set forecast.frequency to the data's real step, or resample the data to it.",
        )
    filled: dict[str, int] = {}
    if len(grid) != len(series.times):
        absent = np.setdiff1d(grid, series.times)
        if missing == "refuse":
            raise RecipeDataError(
                _key("missing"),
                f"series '{series.sid}' is irregular: {len(absent)} timestamp(s) of its "
                f"{frequency} frequency are absent ({_show(absent)})",
                missing,
                "Add the rows, or set forecast.missing: interpolate to reindex and interpolate.",
            )

        def spread(v: np.ndarray) -> np.ndarray:
            full = np.full(len(grid), np.nan)
            full[position] = v
            return full

        series.values = spread(series.values)
        series.covariates = {c: spread(v) for c, v in series.covariates.items()}
        series.times = grid
        filled["gaps"] = len(absent)
    filled["target"] = _fill(series.values, "target", series.sid, series.times, missing)
    for c, v in series.covariates.items():
        _fill(v, f"'{c}'", series.sid, series.times, missing)
    return filled


# ---- windows ------------------------------------------------------------------------------------


def window_columns(meta: Mapping[str, Any]) -> list[str]:
    """The window's raw input columns, in order: ``lag_L … lag_1``, then each observed
    covariate's ``NAME_lag_L … NAME_lag_1``, then each known one's ``NAME_next_1 … _next_H``.

    Example:
        >>> window_columns({"lags": 2, "horizon": 1, "observed": ["t"], "known": ["h"]})
        ['lag_2', 'lag_1', 't_lag_2', 't_lag_1', 'h_next_1']
    """
    lags, horizon = int(meta["lags"]), int(meta["horizon"])
    cols = [f"lag_{k}" for k in range(lags, 0, -1)]
    for c in meta.get("observed", []):
        cols += [f"{c}_lag_{k}" for k in range(lags, 0, -1)]
    for c in meta.get("known", []):
        cols += [f"{c}_next_{h}" for h in range(1, horizon + 1)]
    return cols


def _transform(values: np.ndarray, transform: str, sid: str) -> np.ndarray:
    if transform == "none":
        return values
    if (values <= -1).any():
        raise RecipeDataError(
            _key("transform"),
            f"log1p needs values above -1; series '{sid}' has {float(values.min()):g}",
            transform,
            "Set forecast.transform: none.",
        )
    return np.log1p(values)


def forecast_window(
    meta: Mapping[str, Any],
    history: Sequence[float] | np.ndarray,
    covariates: Mapping[str, Sequence[float] | np.ndarray] | None = None,
) -> dict[str, float]:
    """One row of raw window inputs from a history in original units (serving's request).

    ``history`` holds at least ``lags`` values (the last ``lags`` are used); observed
    covariates give at least ``lags`` past values, known ones exactly ``horizon`` future values.

    Raises:
        DataError: a short history, a missing value, a value the transform cannot take, or a
            covariate missing, unknown or of the wrong length; the message names the field.

    Example:
        >>> forecast_window({"lags": 2, "horizon": 1, "transform": "none"}, [1.0, 2.0, 3.0])
        {'lag_2': 2.0, 'lag_1': 3.0}
    """
    lags, horizon = int(meta["lags"]), int(meta["horizon"])
    values = np.asarray(history, dtype=np.float64).reshape(-1)
    if len(values) < lags:
        raise DataError(
            f"history: needs at least {lags} values (the model's lags); got {len(values)}."
        )
    window = values[-lags:]
    if not np.isfinite(window).all():
        raise DataError("history: the last values hold NaN or infinity; give finite numbers.")
    if meta.get("transform") == "log":
        if (window <= -1).any():
            raise DataError("history: the model works on log1p(y); values must be above -1.")
        window = np.log1p(window)
    row = {f"lag_{k}": float(v) for k, v in zip(range(lags, 0, -1), window, strict=True)}
    given = dict(covariates or {})
    expected = {**{c: ("observed", lags) for c in meta.get("observed", [])},
                **{c: ("known", horizon) for c in meta.get("known", [])}}  # fmt: skip
    unknown = sorted(set(given) - set(expected))
    if unknown:
        raise DataError(
            f"covariates: unknown column(s) {preview(unknown)}; the model reads "
            f"{preview(sorted(expected)) if expected else 'none'}."
        )
    for c, (kind, need) in expected.items():
        if c not in given:
            raise DataError(f"covariates.{c}: missing; the model needs {need} {kind} values.")
        v = np.asarray(given[c], dtype=np.float64).reshape(-1)
        if (kind == "known" and len(v) != need) or len(v) < need:
            what = "exactly" if kind == "known" else "at least"
            raise DataError(f"covariates.{c}: needs {what} {need} values; got {len(v)}.")
        v = v[-need:] if kind == "observed" else v
        if not np.isfinite(v).all():
            raise DataError(f"covariates.{c}: holds NaN or infinity; give finite numbers.")
        names = (
            [f"{c}_lag_{k}" for k in range(lags, 0, -1)]
            if kind == "observed"
            else [f"{c}_next_{h}" for h in range(1, horizon + 1)]
        )
        row.update({n: float(x) for n, x in zip(names, v, strict=True)})
    return row


def future_times(meta: Mapping[str, Any], last: Any, steps: int) -> list[str | int]:
    """The ``steps`` times after ``last`` at the model's frequency (ISO strings or ints).

    Example:
        >>> future_times({"frequency": "MS"}, "1960-12-01", 2)
        ['1961-01-01T00:00:00', '1961-02-01T00:00:00']
    """
    frequency = str(meta["frequency"])
    if frequency.isdigit():
        return [int(last) + int(frequency) * k for k in range(1, steps + 1)]
    index = pd.date_range(pd.Timestamp(last), periods=steps + 1, freq=frequency)
    if index[0] != pd.Timestamp(last):  # an anchored offset rolls forward first
        index = pd.date_range(pd.Timestamp(last), periods=steps, freq=frequency)
        return [t.isoformat() for t in index]
    return [t.isoformat() for t in index[1:]]


def _windows(
    series: list[_Series],
    scaled: list[tuple[np.ndarray, np.ndarray]],
    meta: Mapping[str, Any],
    origins: list[range],
) -> tuple[pd.DataFrame, np.ndarray]:
    """The raw window frame (transformed lags, covariates) and the scaled targets (n, H)."""
    lags, horizon = int(meta["lags"]), int(meta["horizon"])
    columns = window_columns(meta)
    rows: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    for s, (v, z), span in zip(series, scaled, origins, strict=True):
        for t in span:
            parts = [v[t - lags : t]]
            parts += [s.covariates[c][t - lags : t] for c in meta.get("observed", [])]
            parts += [s.covariates[c][t : t + horizon] for c in meta.get("known", [])]
            rows.append(np.concatenate(parts))
            targets.append(z[t : t + horizon])
    matrix = np.vstack(rows) if rows else np.empty((0, len(columns)))
    y = np.vstack(targets).astype(np.float32) if targets else np.empty((0, horizon), np.float32)
    return pd.DataFrame(matrix, columns=columns), y


# ---- the whole preparation --------------------------------------------------------------------


def _lags(forecast: ForecastConfig, season: int, train_ends: list[int], sids: list[str]) -> int:
    horizon = forecast.horizon
    shortest = int(np.argmin(train_ends))
    room = train_ends[shortest] - horizon  # the most lags leaving one training window
    if room < 1:
        raise RecipeDataError(
            _key("horizon"),
            f"the horizon is longer than the history: series '{sids[shortest]}' keeps "
            f"{train_ends[shortest]} training points after the test and validation blocks, "
            f"too few for one window of at least 1 lag and {horizon} steps",
            horizon,
            "Shorten forecast.horizon (or forecast.test / forecast.val), or give more history.",
        )
    if forecast.lags != "auto":
        if forecast.lags > room:
            raise RecipeDataError(
                _key("lags"),
                f"series '{sids[shortest]}' keeps {train_ends[shortest]} training points: "
                f"{forecast.lags} lags and a {horizon}-step horizon leave no training window",
                forecast.lags,
                f"Use at most {room} lags, or lags: auto.",
            )
        return int(forecast.lags)
    wanted = max(2 * season, 2 * horizon)
    return max(1, min(wanted, room - (_MIN_WINDOWS - 1)) if room > _MIN_WINDOWS else room)


def _load(config: DataConfig, frame: pd.DataFrame | None) -> tuple[pd.DataFrame, str, str]:
    target = config.target
    if isinstance(target, list):
        raise RecipeDataError(
            ("data", "target"),
            "forecasting predicts one column",
            target,
            "Set data.target to one column; put other columns in forecast.covariates.",
        )
    raw = load_source(frame if frame is not None else config.source, target, read=config.read)
    return raw.frame, raw.target, raw.source


def prepare_forecast_data(
    config: DataConfig,
    forecast: ForecastConfig,
    task: str | TaskLike,
    *,
    frame: pd.DataFrame | None = None,
    cutoff: int | None = None,
) -> PreparedData:
    """Load a table of observations and prepare ``task: forecasting``'s windows and series.

    Args:
        config: the recipe's ``data`` block (``source``, ``target``, ``read``; the tabular
            split, imbalance and augmentation keys do not apply).
        forecast: the recipe's ``forecast`` block.
        task: the forecasting task (any object with ``name`` and ``target_kind = "values"``).
        frame: rows to use instead of reading ``config.source``.
        cutoff: keep only the first ``cutoff`` points of each series' (regular) time axis: a
            backtest fold's origin, everything after it unseen. Negative: drop the last
            ``-cutoff`` points of each series (series of different lengths cut at the same
            distance from their own end).

    Returns:
        PreparedData whose ``x_*`` are the scaled windows (n, input_dim), ``y_*`` the scaled
        next ``horizon`` values (n, H) float32, ``schema.forecast`` the window's settings and
        ``series`` the clean series (:class:`SeriesSplits`).

    Raises:
        DataError: a bad series (duplicates, irregular, missing values, too short), naming the
            series, the times at fault and the recipe key that fixes it.

    Example:
        >>> from danlu.config import DataConfig, ForecastConfig
        >>> data = prepare_forecast_data(
        ...     DataConfig(source="builtin:airline"),
        ...     ForecastConfig(time="month", horizon=12), "regression")
        >>> data.y_train.shape[1], data.series.season, data.series.lags, data.report["rows"]
        (12, 12, 24, {'train': 85, 'val': 12, 'test': 1})
    """
    ref = resolve_task(task)
    raw, target, source = _load(config, frame)
    report: dict[str, Any] = {"source": source, "rows_loaded": len(raw), "split_by": "time"}
    series = _read_series(raw, target, forecast, report)
    frequency = _infer_frequency([s.times for s in series], forecast.frequency)
    interpolated: dict[str, int] = {}
    for s in series:
        counts = _regularise(s, frequency, forecast.missing)
        if sum(counts.values()):
            interpolated[s.sid] = counts["target"]  # the gaps' points included
    if cutoff is not None:
        for s in series:
            s.times, s.values = s.times[:cutoff], s.values[:cutoff]
            s.covariates = {c: v[:cutoff] for c, v in s.covariates.items()}
    season = season_for(frequency) if forecast.season == "auto" else int(forecast.season)
    n_test, n_val, horizon = forecast.test_points, forecast.val_points, forecast.horizon
    sids = [s.sid for s in series]
    for s in series:
        if len(s.values) <= horizon:
            raise RecipeDataError(
                _key("horizon"),
                f"the horizon is longer than the history: series '{s.sid}' has "
                f"{len(s.values)} points",
                horizon,
                "Shorten forecast.horizon, or give more history.",
            )
        if n_test < horizon:
            raise RecipeDataError(
                _key("test"),
                f"the test block ({n_test} points) is shorter than the horizon, so no test "
                "forecast fits in it",
                forecast.test,
                f"Set forecast.test to at least {horizon}, or auto.",
            )
        if len(s.values) - n_test - n_val < season:
            raise RecipeDataError(
                _key("season"),
                f"series '{s.sid}' is shorter than its seasonal period: {len(s.values)} points, "
                f"{len(s.values) - n_test - n_val} of them for training, season {season}",
                forecast.season,
                "Give more history, shorten forecast.test / forecast.val, or set a shorter "
                "forecast.season.",
            )
    train_ends = [len(s.values) - n_test - n_val for s in series]
    lags = _lags(forecast, season, train_ends, sids)
    freq_str = str(frequency)
    transformed = [_transform(s.values, forecast.transform, s.sid) for s in series]
    train_points = np.concatenate([v[:e] for v, e in zip(transformed, train_ends, strict=True)])
    mean = float(train_points.mean())
    std = float(train_points.std()) or 1.0
    scales = [mase_scale(s.values[:e], season) for s, e in zip(series, train_ends, strict=True)]
    meta: dict[str, Any] = {
        "horizon": horizon, "lags": lags, "season": season, "frequency": freq_str,
        "quantiles": list(forecast.quantiles), "transform": forecast.transform,
        "time": forecast.time, "series_id": forecast.series_id,
        "known": list(forecast.covariates.known), "observed": list(forecast.covariates.observed),
        "last_time": {s.sid: _plain_time(s.times[-1]) for s in series},
        "mase_scale": float(np.mean(scales)),  # the row metrics' MASE denominator (pooled)
    }  # fmt: skip
    scaled = [(v, (v - mean) / std) for v in transformed]
    spans = {
        "train": [range(lags, e - horizon + 1) for e in train_ends],
        "val": [range(max(lags, e - horizon + 1), e + n_val - horizon + 1) for e in train_ends],
        "test": [range(len(s.values) - n_test, len(s.values) - horizon + 1) for s in series],
    }
    frames = {k: _windows(series, scaled, meta, spans[k]) for k in spans}
    columns = window_columns(meta)
    pre = _fit_preprocessor(config, target, ref, frames["train"][0], columns, mean, std, meta)
    arrays: list[np.ndarray] = []
    for part in ("train", "val", "test"):
        window, y = frames[part]
        arrays += [pre.transform(window), y]
    splits = SeriesSplits(
        ids=sids,
        times=[s.times for s in series],
        values=[s.values for s in series],
        train_end=train_ends,
        val_end=[e + n_val for e in train_ends],
        horizon=horizon,
        season=season,
        lags=lags,
        frequency=freq_str,
        quantiles=tuple(forecast.quantiles),
        transform=forecast.transform,
        mase_scale=scales,
        covariates={c: [s.covariates[c] for s in series] for c in series[0].covariates},
    )
    report.update(
        series=len(series),
        frequency=freq_str,
        season=season,
        lags=lags,
        horizon=horizon,
        points={
            "train": int(sum(train_ends)),
            "val": n_val * len(series),
            "test": n_test * len(series),
        },  # fmt: skip
        rows={"train": len(arrays[0]), "val": len(arrays[2]), "test": len(arrays[4])},
        input_dim=pre.schema_.input_dim,
        features=len(columns),
        transform=forecast.transform,
    )
    if interpolated:
        report["interpolated"] = interpolated
    x_train, y_train, x_val, y_val, x_test, y_test = arrays
    return PreparedData(
        x_train,
        y_train,
        x_val,
        y_val,
        x_test,
        y_test,
        schema=pre.schema_,
        preprocessor=pre,
        raw_fingerprint=fingerprint_frame(raw),
        fingerprint=fingerprint_arrays(*arrays),
        report=report,
        test_frame=frames["test"][0].reset_index(drop=True),
        series=splits,
    )


def _plain_time(value: Any) -> str | int:
    return (
        int(value)
        if np.issubdtype(np.asarray(value).dtype, np.integer)
        else str(pd.Timestamp(value).isoformat())
    )


def mase_scale(train_values: Sequence[float] | np.ndarray, season: int) -> float:
    """The MASE denominator of one series: the mean absolute seasonal difference in-sample.

    ``mean |y_t - y_{t-m}|`` over the training values, with ``m = season``; a series shorter than
    two seasons uses ``m = 1`` (the naive forecast). A constant series (every difference zero)
    falls back to the one-step differences, then to the mean absolute value, then to 1, so MASE
    stays finite. (Re-exported by ``danlu.tasks._forecast_metrics``.)

    Example:
        >>> mase_scale([1.0, 2.0, 4.0, 7.0], season=1)
        2.0
        >>> mase_scale([1.0, 2.0, 1.0, 2.0, 1.0], season=2)  # seasonal differences are all zero
        1.0
    """
    y = np.asarray(train_values, dtype=np.float64).reshape(-1)
    y = y[np.isfinite(y)]
    m = season if season >= 1 and len(y) >= 2 * season else 1
    for lag in (m, 1):
        if len(y) > lag:
            scale = float(np.abs(y[lag:] - y[:-lag]).mean())
            if scale > 0:
                return scale
    level = float(np.abs(y).mean()) if len(y) else 0.0
    return level if level > 0 else 1.0


def _fit_preprocessor(
    config: DataConfig,
    target: str,
    ref: Any,
    train: pd.DataFrame,
    columns: list[str],
    mean: float,
    std: float,
    meta: dict[str, Any],
) -> Preprocessor:
    """The window preprocessor: covariates scaled as the recipe says; every lag column and the
    target on the one target scale (mean, std of the training points)."""
    frame = train.assign(**{target: train["lag_1"] if len(train) else 0.0})
    pre = Preprocessor(
        config.prepare, target=target, task=ref, overrides=dict.fromkeys(columns, "numeric")
    ).fit(frame)
    for c in columns:
        if c.startswith("lag_"):
            pre.center_[c], pre.scale_[c] = mean, std
    # the fitted schema, with the shared target scale and the window's settings (pre._schema is
    # the preprocessor's own state: set here, before any transform caches a layout)
    pre._schema = replace(pre.schema_, target_mean=mean, target_std=std, forecast=meta)
    return pre
