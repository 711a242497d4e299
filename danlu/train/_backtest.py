"""Rolling-origin backtesting of forecasting models, and ``model: {type: auto}`` for
``task: forecasting``.

The backtest runs on the history before the test block (training and validation points), so
choosing a model by it never sees the test block. Fold ``i`` of ``k`` has an origin ``o_i``; the
last fold's origin leaves one horizon before the test block, the earlier ones step back by
``step`` points (the horizon, shortened when the history is too short for ``k`` folds of it).
Each fold fits every candidate on the points before its origin only — a classical model with
statsmodels directly (its parameters fitted there, then the same window forecast the shipped
model makes), a neural model through the :class:`~danlu.train.Trainer` with the recipe's train
settings on data prepared with ``cutoff = o_i + horizon`` (so the scaler is fitted on that
fold's training rows and nothing after the fold's horizon exists) — and forecasts the horizon
after the origin, scored by :func:`~danlu.tasks._forecast_metrics.forecast_metrics` against the
true values (MASE scaled by the fold's own training history).

With many series of different lengths the folds are aligned on each series' own end: the
origins are counted on the shortest history before the test block, and each series' fold
origin sits as many points before its own test block (:func:`series_origins`), so every
series forecasts the same stretch before its end and none of them sees past its origin.

A candidate that cannot be fitted on a fold (too little history for its window and validation
block, a fit that failed) is recorded as skipped with the reason and takes no part in the
choice: every candidate chosen among was scored on the same folds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from danlu.errors import ConfigError, DanluError
from danlu.logging import get_logger
from danlu.models._auto import FORECAST_CANDIDATES

if TYPE_CHECKING:
    from danlu.train._auto import ChosenModel
    from danlu.train._runner import Context

__all__ = [
    "BacktestResult",
    "FORECAST_CANDIDATES",
    "SIMPLICITY",
    "backtest",
    "fold_origins",
    "select_forecaster",
    "series_origins",
]

log = get_logger(__name__)

#: simplest first: ties on the mean MASE go to the simpler model.
SIMPLICITY = ("naive", "seasonal_naive", "ets", "arima", "mlp", "tcn", "lstm", "gru")
_METRICS = ("mae", "rmse", "mape", "smape", "mase", "pinball", "coverage")
_TIE = 1e-9


@dataclass
class BacktestResult:
    """The backtest table: one row per (candidate, fold), each candidate's mean, the winner."""

    origins: list[int]
    horizon: int
    step: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    winner: int | None = None
    seconds: float = 0.0
    #: (candidate, fold) → each series' point forecast (original units); not serialized
    forecasts: dict[tuple[int, int], list[np.ndarray]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "origins": self.origins,
            "horizon": self.horizon,
            "step": self.step,
            "folds": len(self.origins),
            "metric": "mase",
            "winner": self.winner,
            "winner_type": None if self.winner is None else self.summary[self.winner]["type"],
            "seconds": round(self.seconds, 3),
            "summary": self.summary,
            "rows": self.rows,
        }


def fold_origins(
    history: int, horizon: int, folds: int, *, min_origin: int
) -> tuple[list[int], int]:
    """The folds' origins (indices into the series: the fold trains on ``[:origin]`` and
    forecasts ``[origin:origin + horizon]``) and the step between them.

    ``history`` is the length before the test block. The last origin is ``history - horizon``;
    the step is the horizon, shortened so the first origin is at least ``min_origin``.

    Raises:
        ConfigError: when not even one fold fits.

    Example:
        >>> fold_origins(120, 24, 5, min_origin=50)
        ([52, 63, 74, 85, 96], 11)
        >>> fold_origins(132, 12, 3, min_origin=30)
        ([96, 108, 120], 12)
    """
    last = history - horizon
    if last < min_origin:
        raise ConfigError(
            f"forecast.backtest: the history before the test block ({history} points) leaves "
            f"no fold: each needs {min_origin} points before its origin and {horizon} after; "
            "lower forecast.lags / forecast.horizon or forecast.backtest.folds, or give more data."
        )
    step = horizon if folds <= 1 else max(1, min(horizon, (last - min_origin) // (folds - 1)))
    count = min(folds, (last - min_origin) // step + 1)
    return [last - step * (count - 1 - i) for i in range(count)], step


def series_origins(series: Any, origin: int) -> list[int]:
    """Each series' own origin for a fold whose ``origin`` is counted on the shortest history
    before the test block: as many points before the series' own test block.

    Example:
        >>> from types import SimpleNamespace
        >>> series_origins(SimpleNamespace(val_end=[120, 100, 130]), 80)
        [100, 80, 110]
    """
    history = min(int(e) for e in series.val_end)
    return [int(e) - (history - origin) for e in series.val_end]


# -- one candidate on one fold ---------------------------------------------------------------------
@dataclass
class _Forecast:
    """One fold's forecasts of one candidate for every series, original units."""

    point: list[np.ndarray]  # per series (H,)
    quantiles: list[np.ndarray] | None  # per series (Q, H)
    seconds: float


def _inverse(values: np.ndarray, transform: str) -> np.ndarray:
    return np.expm1(values) if transform == "log" else values


def _classical_forecast(spec: Any, series: Any, origin: int) -> _Forecast:
    """Fit on each series' points before ``origin`` with statsmodels; forecast the horizon from
    the window before the origin (what the shipped affine model computes), with the intervals
    calibrated on the forecast errors before the origin as the shipped model's are."""
    from danlu.models._classical import fit_classical
    from danlu.train._classical import forward_transform

    started = time.perf_counter()
    points, quants = [], []
    levels = [float(q) for q in series.quantiles]
    for values, own in zip(series.values, series_origins(series, origin), strict=True):
        z = forward_transform(values[:own], series.transform)
        fit = fit_classical(
            spec,
            z,
            season=int(series.season),
            horizon=int(series.horizon),
            lags=int(series.lags),
            probe=False,
        )
        assert fit.forecast_window is not None
        mean = fit.forecast_window(z)
        points.append(_inverse(mean, series.transform))
        if levels:
            q = mean + fit.offsets(levels)
            quants.append(_inverse(q, series.transform))
    return _Forecast(points, quants if levels else None, time.perf_counter() - started)


def _neural_forecast(
    block: dict[str, Any], recipe: Any, series: Any, origin: int, frame: Any
) -> _Forecast:
    """Prepare the data cut at each series' own ``origin + horizon`` (the fold's horizon is its
    test block; a negative cutoff, so a series is cut at the same distance from its end),
    train through the Trainer with the recipe's train settings, forecast the test rows."""
    import torch

    from danlu.config import ModelConfig
    from danlu.data import prepare_forecast_data
    from danlu.models import build_model
    from danlu.tasks import get_task
    from danlu.train._loop import Trainer, seed_everything

    started = time.perf_counter()
    horizon = int(series.horizon)
    # the fold's horizon is its test block; the window is the shipped model's (lags: auto
    # would shrink on a shorter history)
    forecast = recipe.forecast.model_copy(
        update={"test": horizon, "lags": int(series.lags), "season": int(series.season)}
    )
    task = get_task(recipe.task)
    # every series loses the points after its own fold's horizon: its test block and the
    # stretch between the fold and it (the same count for each: aligned on their ends)
    drop = len(series.values[0]) - (series_origins(series, origin)[0] + horizon)
    prepared = prepare_forecast_data(recipe.data, forecast, task, frame=frame, cutoff=-drop)
    task = task.configure(recipe, prepared)
    if not len(prepared.y_train):
        raise ConfigError(f"no training window before origin {origin}")
    seed_everything(recipe.train.seed)
    model = build_model(ModelConfig.model_validate(block), prepared.schema, task)
    trainer = Trainer(recipe.train).fit(model, task, prepared)
    with torch.inference_mode():
        outputs = trainer.predict_outputs(prepared.x_test).double().numpy()
    schema = prepared.schema
    mean, std = float(schema.target_mean or 0.0), float(schema.target_std or 1.0)
    levels = [float(q) for q in series.quantiles]
    n_q = max(len(levels), 1)
    decoded = _inverse(outputs.reshape(len(outputs), n_q, horizon) * std + mean, series.transform)
    if len(decoded) != len(series.values):
        raise ConfigError(
            f"the fold at origin {origin} has {len(decoded)} test windows for "
            f"{len(series.values)} series"
        )
    median = levels.index(0.5) if levels else 0
    points = [d[median] for d in decoded]
    quants = [d for d in decoded] if levels else None
    return _Forecast(points, quants, time.perf_counter() - started)


def _score(forecast: _Forecast, series: Any, origin: int) -> dict[str, float]:
    """The fold's metrics over every series (MASE scaled by each series' own history)."""
    from danlu.tasks._forecast_metrics import forecast_metrics, mase_scale

    horizon = int(series.horizon)
    pairs = list(zip(series.values, series_origins(series, origin), strict=True))
    truth = np.stack([v[o : o + horizon] for v, o in pairs])
    pred = np.stack(forecast.point)
    scale = np.array([mase_scale(v[:o], int(series.season)) for v, o in pairs])
    extra: dict[str, Any] = {}
    if forecast.quantiles is not None:
        extra = {
            "y_quant": np.stack(forecast.quantiles),
            "quantiles": np.asarray([float(q) for q in series.quantiles]),
        }
    return forecast_metrics(truth, pred, scale=scale, **extra)


# -- the backtest ------------------------------------------------------------------------------
def backtest(
    candidates: Sequence[tuple[str, Any]],
    series: Any,
    *,
    recipe: Any = None,
    frame: Any = None,
    folds: int = 5,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    baseline_only: Sequence[str] = (),
) -> BacktestResult:
    """Rolling-origin backtest of ``candidates`` (``(type, validated options)``) on ``series``
    (a :class:`~danlu.data.SeriesSplits`), over the history before its test block.

    Neural candidates need ``recipe`` (its data, forecast and train blocks); classical ones
    need only the series. Returns the table and the winner: the lowest mean MASE among the
    candidates scored on every fold (ties: the simpler, :data:`SIMPLICITY`); the types in
    ``baseline_only`` are scored but never chosen.

    Example:
        >>> # result = backtest([("seasonal_naive", SeasonalNaiveSpec())], prepared.series)
        >>> # result.summary[0]["mase"]
    """
    from danlu.models._classical import CLASSICAL_TYPES

    started = time.perf_counter()
    history = min(int(e) for e in series.val_end)
    horizon, lags = int(series.horizon), int(series.lags)
    classical_min = lags + 2
    neural = any(kind not in CLASSICAL_TYPES for kind, _ in candidates)
    val = 0
    if neural and recipe is not None:
        val = horizon if recipe.forecast.val == "auto" else int(recipe.forecast.val)
    neural_min = lags + horizon + val + 8  # a few training windows besides the validation block
    min_origin = neural_min if neural and history - horizon >= neural_min else classical_min
    origins, step = fold_origins(history, horizon, folds, min_origin=min_origin)
    result = BacktestResult(origins, horizon, step)
    for index, (kind, options) in enumerate(candidates):
        block = options.model_dump(mode="json") if hasattr(options, "model_dump") else options
        block = {**dict(block or {}), "type": kind}
        scores: list[dict[str, float]] = []
        skipped: str | None = None
        seconds = 0.0
        for fold, origin in enumerate(origins):
            row: dict[str, Any] = {"candidate": index, "type": kind, "fold": fold + 1}
            row["origin"] = origin
            try:
                if kind in CLASSICAL_TYPES:
                    forecast = _classical_forecast(options, series, origin)
                elif recipe is None:
                    raise ConfigError("a neural candidate needs the recipe")
                elif origin < neural_min:
                    raise ConfigError(
                        f"{neural_min} points are needed before the origin (lags {lags}, "
                        f"horizon {horizon}, validation {val}, 8 training windows); fold "
                        f"{fold + 1}'s origin is {origin}"
                    )
                else:
                    forecast = _neural_forecast(block, recipe, series, origin, frame)
            except DanluError as exc:
                skipped = f"fold {fold + 1}: {exc}"
                log.info("backtest: %s skipped (%s)", kind, skipped)
                break
            result.forecasts[(index, fold)] = forecast.point
            metrics = _score(forecast, series, origin)
            seconds += forecast.seconds
            row.update({k: float(v) for k, v in metrics.items() if k in _METRICS})
            row["seconds"] = round(forecast.seconds, 4)
            scores.append(row)
            result.rows.append(row)
            if on_row is not None:
                on_row(row)
        summary: dict[str, Any] = {"candidate": index, "type": kind, "options": block}
        if kind in baseline_only:
            summary["baseline_only"] = True
        if skipped is None:
            for metric in _METRICS:
                values = [s[metric] for s in scores if metric in s]
                if values:
                    summary[metric] = float(np.mean(values))
        else:
            summary["skipped"] = skipped
            result.rows = [r for r in result.rows if r["candidate"] != index]
        summary["seconds"] = round(seconds, 3)
        result.summary.append(summary)
    result.winner = _winner(result.summary)
    result.seconds = time.perf_counter() - started
    return result


def _simplicity(kind: str) -> int:
    return SIMPLICITY.index(kind) if kind in SIMPLICITY else len(SIMPLICITY)


def _winner(summary: list[dict[str, Any]]) -> int | None:
    scored = [
        s
        for s in summary
        if "skipped" not in s and not s.get("baseline_only") and np.isfinite(s.get("mase", np.nan))
    ]
    if not scored:
        return None
    best = min(s["mase"] for s in scored)
    tied = [s for s in scored if s["mase"] <= best + _TIE * max(1.0, abs(best))]
    return int(min(tied, key=lambda s: (_simplicity(s["type"]), s["candidate"]))["candidate"])


# -- model: {type: auto} for forecasting -------------------------------------------------------------
def select_forecaster(ctx: Context) -> ChosenModel:
    """Backtest the candidates of ``ctx.recipe.model``, train the best on the run's whole
    training data (a child run, as tabular auto does) and make it the run's model.

    The table is logged as ``backtest.json`` and kept in ``details["backtest"]``."""
    from danlu.train._auto import ChosenModel, train_candidate

    assert ctx.task is not None and ctx.data is not None and ctx.tracker is not None
    series = getattr(ctx.data, "series", None)
    if series is None:
        raise ConfigError("model.type auto for forecasting needs the prepared series.")
    candidates: list[tuple[str, Any]] = list(getattr(ctx.model, "candidates", []))
    forecast = ctx.recipe.forecast
    folds = int(forecast.backtest.folds) if forecast is not None else 5
    # classical models ship for one series: with many they are the backtest's baselines only
    from danlu.models._classical import CLASSICAL_TYPES

    baseline_only = CLASSICAL_TYPES if len(series.ids) > 1 else ()
    result = backtest(
        candidates, series, recipe=ctx.recipe, folds=folds, baseline_only=baseline_only
    )
    if result.winner is None:
        reasons = "; ".join(f"{s['type']}: {s.get('skipped', 'no score')}" for s in result.summary)
        raise ConfigError(f"model.type auto: no candidate could be backtested ({reasons}).")
    table = result.to_dict()
    kind, options = candidates[result.winner]
    log.info(
        "model selection: %s wins the backtest (mean MASE %.4g over %d folds)",
        kind,
        result.summary[result.winner]["mase"],
        len(result.origins),
    )
    _, chosen = train_candidate(ctx, result.winner, kind, options, kind)
    values = {
        f"backtest_{s['candidate'] + 1}_mase": float(s["mase"])
        for s in result.summary
        if "mase" in s
    }
    values["candidate_winner"] = float(result.winner + 1)
    ctx.tracker.log_metrics(values, step=0)
    ctx.store.set_tags(ctx.run_id, {"model.chosen": kind})
    ctx.log_artifact("backtest.json", json.dumps(table, indent=1))
    selection = {
        "metric": "backtest_mase",
        "mode": "min",
        "winner": result.winner + 1,
        "winner_type": kind,
        "candidates": [
            {
                "candidate": s["candidate"] + 1,
                "type": s["type"],
                "options": s["options"],
                "validation": s.get("mase"),
                "test": chosen.metrics.get("mase") if s["candidate"] == result.winner else None,
                "seconds": s["seconds"],
                "best_epoch": chosen.best_epoch if s["candidate"] == result.winner else None,
                "run_id": chosen.run_id if s["candidate"] == result.winner else None,
                **({"skipped": s["skipped"]} if "skipped" in s else {}),
            }
            for s in result.summary
        ],
        "backtest": table,
    }
    ctx.model, ctx.task = chosen.model, chosen.task
    ctx.options, ctx.model_type = options, kind
    return ChosenModel(chosen, selection)


def report_backtest(recipe: Any, options: Any, series: Any, model_type: str) -> dict[str, Any]:
    """The trust report's backtest for a run of one model type: that model against the
    seasonal naive and ETS baselines over the same folds (``BacktestResult.to_dict()``)."""
    from danlu.models._classical import SPECS

    candidates: list[tuple[str, Any]] = [(model_type, options)]
    candidates += [(k, SPECS[k]()) for k in ("seasonal_naive", "ets") if k != model_type]
    folds = int(recipe.forecast.backtest.folds) if recipe.forecast is not None else 5
    return backtest(candidates, series, recipe=recipe, folds=folds).to_dict()
