"""Classical forecasting models: ``model: {type: naive | seasonal_naive | ets | arima}``.

statsmodels fits the model on one series' history (on the transformed scale when
``forecast.transform: log``); the fitted model is then read out into an
:class:`AffineForecaster`, the torch module every later stage (evaluation, export, serving)
uses. With its parameters fixed, each of these models forecasts the next ``horizon`` values as
an *affine* map of the last ``lags`` observations: the Kalman filter of a fixed ARIMA (diffuse
start on the window) and of additive exponential smoothing (initial states concentrated out by
least squares on the window) are linear in the observations. So ``W`` and ``b`` are found by
probing statsmodels with the fitted parameters fixed on ``lags + 1`` windows, and checked on
the real window (:func:`fit_classical`; a readout that disagrees with statsmodels is refused).
Quantiles are the mean forecast plus a constant offset per step, calibrated on the model's own
forecast errors (:func:`forecast_errors`): the readout forecasts from every window of the fitted
history, and step ``h``'s offset for level ``q`` is the empirical ``q``-quantile of the step-``h``
errors minus their median (so the 0.5 level stays the point forecast). A step with fewer than
:data:`MIN_ORIGINS` such origins falls back to ``z_q`` times the standard error statsmodels
gives for that step (normal errors with the model's own variance, too narrow when the model is
wrong about its start or its shape). ``ClassicalFit.calibration`` records which was used.

Multiplicative seasonality (airline passengers) is additive after ``forecast.transform: log``.
Classical models ship for a single series; with many series they serve as the baselines of the
backtest and of ``model: {type: auto}``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from danlu.config import ConfigIssue
from danlu.errors import DataError
from danlu.models._common import ModelSpec

if TYPE_CHECKING:
    import torch

    from danlu.config import Recipe
    from danlu.data import FeatureSchema
    from danlu.tasks import Task

__all__ = [
    "ARIMASpec",
    "CLASSICAL_TYPES",
    "ClassicalFit",
    "ETSSpec",
    "NaiveSpec",
    "SPECS",
    "SeasonalNaiveSpec",
    "MIN_ORIGINS",
    "build_classical",
    "fit_classical",
    "forecast_errors",
    "is_classical",
]

#: the classical model types, simplest first (ties in ``type: auto`` go to the simpler).
CLASSICAL_TYPES = ("naive", "seasonal_naive", "ets", "arima")
PARITY_RTOL = 1e-5  # |readout − statsmodels| allowed, relative to the window's scale
#: a step's interval is calibrated empirically from at least this many forecast origins
MIN_ORIGINS = 20


class _ClassicalSpec(ModelSpec):
    """What every classical model refuses in the rest of the recipe."""

    def recipe_issues(self, recipe: Recipe) -> list[ConfigIssue]:
        kind = _KIND[type(self).__name__]
        if recipe.task != "forecasting":
            return [
                ConfigIssue(
                    ("model", "type"),
                    f"{kind} is a forecasting model",
                    kind,
                    "Use task: forecasting with a forecast: block, or another model type.",
                )
            ]
        forecast = getattr(recipe, "forecast", None)
        if recipe.model.type == kind and getattr(forecast, "series_id", None):
            return [
                ConfigIssue(
                    ("model", "type"),
                    f"{kind} is fitted on one series; this recipe has many (forecast.series_id)",
                    kind,
                    "Use a neural model (mlp, lstm, tcn) or model: {type: auto}; auto and the "
                    f"backtest still use {kind} as a baseline on each series.",
                )
            ]
        return []


class NaiveSpec(_ClassicalSpec):
    """``model: {type: naive}``: every step forecasts the last observed value."""


class SeasonalNaiveSpec(_ClassicalSpec):
    """``model: {type: seasonal_naive}``: each step repeats the value one season earlier."""


class ETSSpec(_ClassicalSpec):
    """``model: {type: ets}``: additive exponential smoothing (Holt-Winters) as a state space
    model; multiplicative seasonality: ``forecast.transform: log``."""

    trend: bool = Field(True, description="An additive trend component.")
    damped: bool = Field(False, description="Damp the trend (needs trend: true).")
    seasonal: Literal["auto", "add", "none"] = Field(
        "auto", description="add | none | auto (additive when forecast.season > 1)."
    )


class ARIMASpec(_ClassicalSpec):
    """``model: {type: arima}``: (seasonal) ARIMA; ``order: auto`` searches a small grid by
    AIC (differencing chosen by an ADF test)."""

    order: tuple[int, int, int] | Literal["auto"] = Field(
        "auto", description="(p, d, q), or auto: a small AIC search."
    )
    seasonal_order: tuple[int, int, int] | Literal["auto", "none"] = Field(
        "auto",
        description="(P, D, Q) with period forecast.season, none, or auto (searched when the "
        "season is above 1).",
    )


_KIND = {
    "NaiveSpec": "naive",
    "SeasonalNaiveSpec": "seasonal_naive",
    "ETSSpec": "ets",
    "ARIMASpec": "arima",
}
SPECS: dict[str, type[_ClassicalSpec]] = {
    "naive": NaiveSpec,
    "seasonal_naive": SeasonalNaiveSpec,
    "ets": ETSSpec,
    "arima": ARIMASpec,
}


def is_classical(model: Any) -> bool:
    """True for a model statsmodels fits (an untrained or fitted :class:`AffineForecaster`)."""
    return getattr(model, "classical_kind", None) is not None


# -- fitting (numpy + statsmodels; no torch) ------------------------------------------------------
@contextmanager
def _quiet() -> Iterator[None]:
    """statsmodels warns freely (convergence, frequency, interpolation): the fit's own checks
    (finite parameters, parity) decide instead.

    statsmodels' first import adds "always" filters for its own warnings in front of every
    other: it is imported before the filters are set, so that import cannot override them."""
    import statsmodels.tools.sm_exceptions  # noqa: F401

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            yield


@dataclass
class ClassicalFit:
    """A classical model fitted on one series and read out as an affine map of the window.

    All figures are on the transformed scale (``log1p`` with ``forecast.transform: log``).

    Attributes:
        kind: the model type.
        weight: (horizon, lags) — forecast = ``weight @ window + bias``; the window's oldest
            value first.
        bias: (horizon,).
        stderr: (horizon,) the forecast's standard error per step.
        params: the fitted parameters by name (and the chosen orders for ``arima``).
        aic: the fit's AIC (None for the naive models).
        parity: the readout against statsmodels' own forecast on the real window.
        forecast_window: ``window → forecast`` by statsmodels with the parameters fixed.
        errors: per step (``horizon`` arrays), the forecast errors ``truth − forecast`` of the
            fitted model from every window of the fitted history (:func:`forecast_errors`);
            empty when not computed.
    """

    kind: str
    weight: np.ndarray
    bias: np.ndarray
    stderr: np.ndarray
    params: dict[str, Any]
    aic: float | None
    parity: dict[str, float] = field(default_factory=dict)
    forecast_window: Callable[[np.ndarray], np.ndarray] | None = None
    errors: list[np.ndarray] = field(default_factory=list)

    def forecast(self, window: np.ndarray) -> np.ndarray:
        """The readout's forecast from ``window`` (its last ``lags`` values)."""
        lags = self.weight.shape[1]
        return self.weight @ np.asarray(window, dtype=np.float64)[-lags:] + self.bias

    def offsets(self, levels: tuple[float, ...] | list[float]) -> np.ndarray:
        """(Q, horizon) offsets added to the mean forecast for each level: per step, the
        empirical ``q``-quantile of the forecast errors when the step has :data:`MIN_ORIGINS`
        errors, else ``z_q ×`` the standard error (normal errors). The 0.5 level stays the
        point forecast (offset 0) and the interval always holds it: levels below 0.5 take at
        most 0, levels above at least 0.

        Example:
            >>> fit = ClassicalFit("naive", np.ones((2, 3)), np.zeros(2), np.ones(2), {}, None)
            >>> fit.offsets((0.5,)).tolist()  # no errors computed: the normal offsets
            [[0.0, 0.0]]
        """
        from scipy.stats import norm

        horizon = len(self.stderr)
        out = np.empty((len(levels), horizon))
        for h in range(horizon):
            errors = self.errors[h] if h < len(self.errors) else np.empty(0)
            if len(errors) >= MIN_ORIGINS:
                qs = np.quantile(errors, levels)
                lower = np.asarray(levels) < 0.5
                upper = np.asarray(levels) > 0.5
                # the point forecast stays the 0.5 level; the interval keeps the errors' bias
                # (a seasonal naive forecast of a growing series is too low) and holds it
                out[:, h] = np.where(
                    lower, np.minimum(qs, 0.0), np.where(upper, np.maximum(qs, 0.0), 0.0)
                )
            else:
                out[:, h] = [norm.ppf(q) * self.stderr[h] for q in levels]
        return out

    @property
    def calibration(self) -> dict[str, Any]:
        """How the intervals were made (``classical.json``): ``method`` empirical | normal |
        mixed (some steps each), the number of error origins per step, the errors' median."""
        counts = [len(e) for e in self.errors] or [0] * len(self.stderr)
        empirical = [c >= MIN_ORIGINS for c in counts]
        method = "empirical" if all(empirical) else "normal" if not any(empirical) else "mixed"
        return {
            "method": method,
            "min_origins": MIN_ORIGINS,
            "origins": counts,
            "empirical_steps": int(sum(empirical)),
            "median_error": [float(np.median(e)) if len(e) else None for e in self.errors],
        }

    def quantiles(self, window: np.ndarray, levels: tuple[float, ...]) -> np.ndarray:
        """(Q, horizon) quantile forecasts: the mean plus :meth:`offsets`."""
        return self.forecast(window) + self.offsets(levels)


def forecast_errors(
    forecast: Callable[[np.ndarray], np.ndarray], y: np.ndarray, lags: int, horizon: int
) -> list[np.ndarray]:
    """Per step ``h`` (``horizon`` arrays), the errors ``y[o + h] − forecast(y[o − lags:o])[h]``
    over every origin ``o`` of ``y`` with a full window before it and ``y[o + h]`` inside it.

    The model's parameters are those fitted on all of ``y``; the forecasts start from windows
    inside it, as the shipped model starts from the window before its origin.

    Example:
        >>> y = np.arange(10.0)
        >>> errors = forecast_errors(lambda w: np.repeat(w[-1], 2), y, lags=3, horizon=2)
        >>> [e.tolist() for e in errors]  # last value forecast on a unit slope
        [[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]]
    """
    y = np.asarray(y, dtype=np.float64)
    origins = range(lags, len(y))
    forecasts = [np.asarray(forecast(y[o - lags : o]), dtype=np.float64) for o in origins]
    errors: list[list[float]] = [[] for _ in range(horizon)]
    for o, f in zip(origins, forecasts, strict=True):
        for h in range(min(horizon, len(y) - o)):
            errors[h].append(float(y[o + h] - f[h]))
    return [np.asarray(e) for e in errors]


def fit_classical(
    spec: ModelSpec,
    values: np.ndarray,
    *,
    season: int,
    horizon: int,
    lags: int,
    probe: bool = True,
    calibrate: bool = True,
) -> ClassicalFit:
    """Fit ``spec``'s model on ``values`` (one series' history, transformed scale) with
    statsmodels and read it out as an affine map of the last ``lags`` values.

    ``probe=False`` skips the readout (``weight``/``bias`` are NaN): the backtest only needs
    ``forecast_window``. ``calibrate`` computes the forecast errors on ``values``
    (:func:`forecast_errors`, by the readout or statsmodels) that :meth:`ClassicalFit.offsets`
    calibrates the intervals with.

    Raises:
        DataError: a history too short for the model, a fit that failed, or a readout that
            disagrees with statsmodels.

    Example:
        >>> import numpy as np
        >>> y = np.log(100 + 10 * np.sin(np.arange(60) * np.pi / 6) + np.arange(60))
        >>> fit = fit_classical(SeasonalNaiveSpec(), y, season=12, horizon=6, lags=24)
        >>> bool(np.allclose(fit.forecast(y[-24:]), y[-12:-6]))
        True
    """
    kind = _KIND[type(spec).__name__]
    y = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(y)):
        raise DataError(f"model.type {kind}: the training series has missing or infinite values.")
    if len(y) < lags + 2:
        raise DataError(
            f"model.type {kind}: {len(y)} training points, fewer than forecast.lags + 2 = "
            f"{lags + 2}; lower forecast.lags or give a longer history."
        )
    with _quiet():
        if kind in ("naive", "seasonal_naive"):
            fit = _fit_naive(kind, y, season, horizon, lags)
        elif kind == "ets":
            assert isinstance(spec, ETSSpec)
            fit = _fit_ets(spec, y, season, horizon, lags)
        else:
            assert isinstance(spec, ARIMASpec)
            fit = _fit_arima(spec, y, season, horizon, lags)
        if probe and fit.forecast_window is not None:
            _read_out(fit, y, lags, horizon)
        if calibrate:
            readout = probe or fit.forecast_window is None  # the naive models' is exact
            forecast = fit.forecast if readout else fit.forecast_window
            assert forecast is not None
            fit.errors = forecast_errors(forecast, y, lags, horizon)
    if not (np.all(np.isfinite(fit.stderr)) and (not probe or np.all(np.isfinite(fit.weight)))):
        raise DataError(f"model.type {kind}: the fit gave non-finite forecasts; try another model.")
    return fit


def _fit_naive(kind: str, y: np.ndarray, season: int, horizon: int, lags: int) -> ClassicalFit:
    m = season if kind == "seasonal_naive" else 1
    if m > lags:
        raise DataError(
            f"model.type seasonal_naive needs forecast.lags ≥ forecast.season ({season}); "
            f"lags is {lags}."
        )
    weight = np.zeros((horizon, lags))
    for h in range(horizon):  # step h+1 repeats the value k·m steps back, k = ceil((h+1)/m)
        back = m * (h // m + 1)
        weight[h, lags - back + h] = 1.0
    residuals = y[m:] - y[:-m]
    sigma = float(np.sqrt(np.mean(residuals**2))) if len(residuals) else 0.0
    stderr = sigma * np.sqrt(np.arange(horizon) // m + 1.0)  # the random walk's spread
    return ClassicalFit(
        kind=kind,
        weight=weight,
        bias=np.zeros(horizon),
        stderr=stderr,
        params={"period": m, "sigma": sigma},
        aic=None,
        parity={"max_abs_diff": 0.0},
        forecast_window=lambda w: weight @ np.asarray(w, dtype=np.float64)[-lags:],
    )


def _ets_seasonal(spec: ETSSpec, season: int, n: int) -> int | None:
    if spec.seasonal == "none" or season <= 1:
        return None
    if n < 2 * season:  # the window's least squares start needs two seasons
        return None
    return season


def _fit_ets(spec: ETSSpec, y: np.ndarray, season: int, horizon: int, lags: int) -> ClassicalFit:
    from statsmodels.tsa.statespace.exponential_smoothing import ExponentialSmoothing

    seasonal = _ets_seasonal(spec, season, min(len(y), lags))
    if spec.seasonal == "add" and seasonal is None:
        raise DataError(
            f"model.type ets with seasonal: add needs forecast.season > 1 and forecast.lags ≥ "
            f"2·season (season {season}, lags {lags}); set model.seasonal: none."
        )
    options = {
        "trend": spec.trend,
        "damped_trend": spec.damped and spec.trend,
        "seasonal": seasonal,
        "initialization_method": "concentrated",
    }
    try:
        result = ExponentialSmoothing(y, **options).fit(disp=False, warn_convergence=False)
    except (ValueError, np.linalg.LinAlgError) as exc:
        raise DataError(f"model.type ets: statsmodels could not fit the series ({exc}).") from exc
    params = np.asarray(result.params, dtype=np.float64)

    def forecast_window(window: np.ndarray) -> np.ndarray:
        with _quiet():  # a perfectly fitted window warns
            model = ExponentialSmoothing(np.asarray(window, dtype=np.float64)[-lags:], **options)
            return np.asarray(model.filter(params).forecast(horizon), dtype=np.float64)

    model = ExponentialSmoothing(y[-lags:], **options)
    stderr = np.asarray(model.filter(params).get_forecast(horizon).se_mean, dtype=np.float64)
    names = list(getattr(result, "param_names", None) or result.model.param_names)
    return ClassicalFit(
        kind="ets",
        weight=np.full((horizon, lags), np.nan),
        bias=np.full(horizon, np.nan),
        stderr=stderr,
        params={
            **{n: float(v) for n, v in zip(names, params, strict=True)},
            "seasonal": seasonal or 0,
            "converged": bool((getattr(result, "mle_retvals", None) or {}).get("converged", True)),
        },
        aic=float(result.aic),
        forecast_window=forecast_window,
    )


def _differencing(y: np.ndarray, seasonal_d: int, season: int) -> int:
    """d for ``order: auto``: 1 when an ADF test (5%) does not reject a unit root."""
    from statsmodels.tsa.stattools import adfuller

    z = y[season:] - y[:-season] if seasonal_d and season > 1 else y
    if len(z) < 12 or np.ptp(z) == 0:
        return 0
    try:
        return int(adfuller(z, autolag="AIC")[1] > 0.05)
    except (ValueError, np.linalg.LinAlgError):
        return 1


def _fit_arima(
    spec: ARIMASpec, y: np.ndarray, season: int, horizon: int, lags: int
) -> ClassicalFit:
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    seasonal_ok = season > 1 and len(y) >= 2 * season + 2 and lags >= season + 2
    seasonal_grid: list[tuple[int, ...]]
    if spec.seasonal_order == "auto":
        seasonal_grid = [(0, 1, 1), (1, 1, 0)] if seasonal_ok else [(0, 0, 0)]
    elif spec.seasonal_order == "none":
        seasonal_grid = [(0, 0, 0)]
    else:
        if not seasonal_ok and any(spec.seasonal_order):
            raise DataError(
                f"model.type arima: a seasonal order needs forecast.season > 1, lags ≥ season + "
                f"2 and 2·season + 2 training points (season {season}, lags {lags}, {len(y)} "
                "points); set model.seasonal_order: none."
            )
        seasonal_grid = [tuple(spec.seasonal_order)]  # type: ignore[list-item]
    if spec.order == "auto":
        d = _differencing(y, seasonal_grid[0][1], season)
        grid = [(p, d, q) for p in range(3) for q in range(3) if 0 < p + q <= 2]
    else:
        grid = [(spec.order[0], spec.order[1], spec.order[2])]
    best: tuple[float, Any, tuple[int, int, int], tuple[int, ...]] | None = None
    failures = []
    for order in grid:
        for sorder in seasonal_grid:
            trend = "c" if order[1] + sorder[1] == 0 else "n"
            try:
                result = SARIMAX(
                    y,
                    order=order,
                    seasonal_order=(*sorder, season if any(sorder) else 0),
                    trend=trend,
                ).fit(disp=False, warn_convergence=False)  # filters are not thread-safe
            except (ValueError, np.linalg.LinAlgError) as exc:
                failures.append(f"{order}{sorder}: {exc}")
                continue
            if np.isfinite(result.aic) and (best is None or result.aic < best[0]):
                best = (float(result.aic), result, order, sorder)
    if best is None:
        raise DataError(
            "model.type arima: statsmodels fitted no order on this series "
            f"({'; '.join(failures[:3]) or 'non-finite AIC'}); try model.type ets."
        )
    aic, result, chosen, sorder = best
    params = np.asarray(result.params, dtype=np.float64)
    options = {
        "order": chosen,
        "seasonal_order": (*sorder, season if any(sorder) else 0),
        "trend": "c" if chosen[1] + sorder[1] == 0 else "n",
    }

    def forecast_window(window: np.ndarray) -> np.ndarray:
        with _quiet():
            model = SARIMAX(np.asarray(window, dtype=np.float64)[-lags:], **options)
            return np.asarray(model.filter(params).forecast(horizon), dtype=np.float64)

    stderr = np.asarray(
        SARIMAX(y[-lags:], **options).filter(params).get_forecast(horizon).se_mean,
        dtype=np.float64,
    )
    names = list(result.model.param_names)
    return ClassicalFit(
        kind="arima",
        weight=np.full((horizon, lags), np.nan),
        bias=np.full(horizon, np.nan),
        stderr=stderr,
        params={
            **{n: float(v) for n, v in zip(names, params, strict=True)},
            "order": list(chosen),
            "seasonal_order": [*sorder, season if any(sorder) else 0],
            "converged": bool((getattr(result, "mle_retvals", None) or {}).get("converged", True)),
        },
        aic=aic,
        forecast_window=forecast_window,
    )


def _read_out(fit: ClassicalFit, y: np.ndarray, lags: int, horizon: int) -> None:
    """``weight``/``bias`` from ``lags + 1`` probes of statsmodels around the real window, then
    the parity check on the real window and on a perturbed one."""
    assert fit.forecast_window is not None
    window = y[-lags:]
    scale = max(float(np.std(window)), 1e-8)
    base = fit.forecast_window(window)
    weight = np.empty((horizon, lags))
    for i in range(lags):
        probe = window.copy()
        probe[i] += scale
        weight[:, i] = (fit.forecast_window(probe) - base) / scale
    bias = base - weight @ window
    fit.weight, fit.bias = weight, bias
    other = window + np.random.default_rng(0).normal(0.0, scale, lags)
    diff = max(
        float(np.abs(fit.forecast(window) - base).max()),
        float(np.abs(fit.forecast(other) - fit.forecast_window(other)).max()),
    )
    tolerance = PARITY_RTOL * max(scale, float(np.abs(window).max()), 1.0)
    fit.parity = {"max_abs_diff": diff, "atol": tolerance}
    if not diff <= tolerance:
        raise DataError(
            f"model.type {fit.kind}: the affine readout disagrees with statsmodels' forecast "
            f"(max |difference| {diff:.3g} > {tolerance:.3g}); the model was not kept."
        )


# -- the torch module ---------------------------------------------------------------------------
def _affine_module() -> type[torch.nn.Module]:
    import torch

    class AffineForecaster(torch.nn.Module):
        """A classical model's forecast as an affine map of the standardized lag columns:
        ``mean = x @ weightᵀ + bias``; quantile ``q`` adds ``offset[q]`` per step. Outputs
        ``(n, Q·H)`` (quantile-major), or ``(n, H)`` without quantiles."""

        differentiable = True
        weight: torch.Tensor
        bias: torch.Tensor
        offset: torch.Tensor
        spec: Any

        def __init__(self, input_dim: int, horizon: int, n_quantiles: int, kind: str) -> None:
            super().__init__()
            self.classical_kind = kind
            self.horizon, self.n_quantiles = horizon, n_quantiles
            self.register_buffer("weight", torch.zeros(horizon, input_dim))
            self.register_buffer("bias", torch.zeros(horizon))
            self.register_buffer("offset", torch.zeros(max(n_quantiles, 1), horizon))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mean = x.to(self.weight.dtype) @ self.weight.T + self.bias
            if self.n_quantiles == 0:
                return mean
            out = mean.unsqueeze(1) + self.offset.unsqueeze(0)  # (n, Q, H)
            return out.flatten(1)  # not reshape(len(x), …): the batch stays dynamic in ONNX

        def load_fit(
            self,
            fit: ClassicalFit,
            lag_columns: list[int],
            mean: float,
            std: float,
            levels: tuple[float, ...],
        ) -> None:
            """Put ``fit`` (transformed units) into the standardized contract:
            ``x = (z − mean)/std`` in, ``(ŷ − mean)/std`` out."""
            weight = torch.zeros_like(self.weight, dtype=torch.float64)
            w = torch.as_tensor(fit.weight, dtype=torch.float64)
            weight[:, lag_columns] = w
            bias = (w.sum(1) * mean + torch.as_tensor(fit.bias) - mean) / std
            offsets = fit.offsets(levels) / std if levels else np.zeros((1, self.horizon))
            self.weight.copy_(weight.float())
            self.bias.copy_(bias.float())
            self.offset.copy_(torch.as_tensor(offsets).float())

    return AffineForecaster


def build_classical(spec: ModelSpec, schema: FeatureSchema, task: Task) -> torch.nn.Module:
    """The empty affine module for ``spec`` sized for the forecasting ``schema``; training fills
    it (``danlu/train/_classical.py``), loading a stored model replaces its buffers."""
    kind = _KIND[type(spec).__name__]
    horizon, n_quantiles = forecast_shape(schema, task)
    module: Any = _affine_module()(schema.input_dim, horizon, n_quantiles, kind)
    module.spec = spec  # what training fits with
    return module


def forecast_shape(schema: FeatureSchema, task: Task) -> tuple[int, int]:
    """(horizon, number of quantiles, 0 for point forecasts) of a forecasting schema."""
    settings = dict(schema.forecast or {})
    outputs = task.output_dim(schema)
    quantiles = tuple(settings.get("quantiles") or ())
    horizon = int(settings.get("horizon") or (outputs // max(len(quantiles), 1)))
    return horizon, (len(quantiles) if outputs == horizon * len(quantiles) > horizon else 0)


def lag_columns(schema: FeatureSchema, lags: int) -> list[int]:
    """The input columns holding the window (oldest first): the encoded columns named
    ``lag_<k>`` (k = lags … 1), else the first ``lags`` columns."""
    names = list(schema.encoded_names)
    found = {name: i for i, name in enumerate(names)}
    wanted = [f"lag_{k}" for k in range(lags, 0, -1)]
    if all(name in found for name in wanted):
        return [found[name] for name in wanted]
    return list(range(lags))
