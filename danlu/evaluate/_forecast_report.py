"""The trust report's forecasting sections: the rolling-origin backtest table, the forecast of
the test block with its interval, and residual diagnostics.

- **Backtest**: every candidate's metrics per fold and their mean (``danlu/train/_backtest.py``),
  the one ``model: {type: auto}`` chose by, or — for a run of one model type — that model
  against the seasonal naive and ETS baselines over the same folds.
- **Forecast**: the history before the test block, the test block's true values and the model's
  forecast from the block's first origin with the interval between its outer quantiles (SVG).
- **Residuals**: the one-step-ahead errors on the training and validation windows (transformed
  scale): their autocorrelation up to two seasons with the ±1.96/√n band of white noise, and the
  Ljung-Box test's p-value (statsmodels). A small p-value says the model leaves structure in the
  series (a missed seasonality, a trend) that a better model could use.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from danlu.evaluate._context import Section

if TYPE_CHECKING:
    import torch

    from danlu.data import PreparedData

__all__ = ["backtest_section", "forecast_plot_section", "forecast_sections", "residual_section"]

_ALPHA = 0.05  # the Ljung-Box level below which the residuals are flagged


def _decode(outputs: np.ndarray, data: PreparedData) -> np.ndarray:
    """Raw model outputs (n, Q·H) → (n, Q, H) in original units."""
    series = data.series
    assert series is not None
    horizon = int(series.horizon)
    schema = data.schema
    mean, std = float(schema.target_mean or 0.0), float(schema.target_std or 1.0)
    z = outputs.reshape(len(outputs), -1, horizon).astype(np.float64) * std + mean
    return np.expm1(z) if series.transform == "log" else z


def _median_index(data: PreparedData, n_levels: int) -> int:
    levels = [float(q) for q in data.series.quantiles] if data.series is not None else []
    return levels.index(0.5) if n_levels > 1 and 0.5 in levels else 0


def _outputs(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    import torch

    model.eval()
    with torch.inference_mode():
        return model(torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))).float().numpy()


def _fmt(value: Any) -> Any:
    return round(float(value), 4) if isinstance(value, float) and math.isfinite(value) else value


def backtest_section(table: dict[str, Any], *, shipped: str | None = None) -> Section:
    """The backtest table (``BacktestResult.to_dict()``): each candidate's mean metrics over
    the folds, the per-fold MASE, and which model ships.

    Example:
        >>> # backtest_section(json.loads(store.read_artifact(run_id, "backtest.json")))
    """
    folds = int(table.get("folds") or len(table.get("origins", [])))
    winner = table.get("winner")
    rows = []
    for s in table.get("summary", []):
        row: dict[str, Any] = {"model": s["type"]}
        for metric in ("mase", "mape", "smape", "mae", "rmse", "coverage"):
            if metric in s:
                row[metric] = _fmt(s[metric])
        per_fold = [r["mase"] for r in table.get("rows", []) if r["candidate"] == s["candidate"]]
        row["mase per fold"] = ", ".join(f"{v:.3g}" for v in per_fold) or "—"
        row["seconds"] = s.get("seconds")
        if "skipped" in s:
            row["skipped"] = s["skipped"]
        if s.get("baseline_only"):
            row["baseline only"] = "yes (fitted per series; ships for one series)"
        if shipped is not None:
            row["shipped"] = "yes" if s["type"] == shipped else ""
        else:
            row["shipped"] = "yes" if s["candidate"] == winner else ""
        rows.append(row)
    scored = [r for r in rows if "mase" in r]
    summary = None
    if scored:
        best = min(scored, key=lambda r: r["mase"])
        summary = (
            f"backtest over {folds} rolling origins: best mean MASE {best['mase']:.3g} "
            f"({best['model']})"
        )
    section = Section(
        "backtest",
        "Backtest",
        data={
            "folds": folds,
            "origins": table.get("origins"),
            "horizon": table.get("horizon"),
            "step": table.get("step"),
            "models": rows,
        },
        summary=summary,
    )
    section.notes.append(
        f"Rolling-origin backtest over the history before the test block: {folds} folds with "
        f"origins {table.get('origins')} (points from the series' start), {table.get('step')} "
        f"apart; each fold refits every model on the points before its origin only (its scaling "
        f"too) and forecasts the next {table.get('horizon')} points. MASE divides the error by "
        "the in-sample seasonal naive error of the fold's own history (below 1: better than "
        "the seasonal naive forecast there)."
    )
    skipped = [r for r in rows if "skipped" in r]
    if skipped:
        section.notes.append(
            "Skipped models could not be fitted on every fold (usually too short a history for "
            "their window and validation block) and took no part in the choice."
        )
    if shipped is not None and shipped not in {r["model"] for r in rows}:
        section.notes.append(f"The shipped model ({shipped}) was not backtested.")
    return section


def forecast_plot_section(model: torch.nn.Module, data: PreparedData) -> Section:
    """The forecast from the test block's first origin with its interval, on the first series."""
    from danlu.evaluate._plots import figure, svg

    series = data.series
    assert series is not None
    horizon = int(series.horizon)
    start = int(series.val_end[0])
    decoded = _decode(_outputs(model, data.x_test[:1]), data)[0]  # (Q, H)
    mid = _median_index(data, len(decoded))
    values, times = series.values[0], series.times[0]
    steps = times[start : start + horizon]
    truth = values[start : start + horizon]
    shown = max(0, start - 3 * horizon)
    fig, ax = figure(6.4, 3.2)
    ax.plot(times[shown:start], values[shown:start], color="#1d2327", lw=1.2, label="history")
    ax.plot(steps, truth, color="#1d2327", lw=1.2, ls="--", label="test block (true)")
    ax.plot(steps, decoded[mid], color="#1f77b4", lw=1.6, label="forecast")
    levels = [float(q) for q in series.quantiles]
    interval = None
    if len(decoded) > 1:
        ax.fill_between(steps, decoded[0], decoded[-1], color="#1f77b4", alpha=0.18, lw=0)
        interval = f"{levels[0]:g}–{levels[-1]:g} quantiles"
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(f"series {series.ids[0]}", fontsize=10)
    fig.autofmt_xdate()
    inside = None
    if interval is not None:
        inside = float(np.mean((truth >= decoded[0]) & (truth <= decoded[-1])))
    section = Section(
        "forecast",
        "Forecast",
        data={
            "series": series.ids[0],
            "origin": str(times[start - 1]) if start else None,
            "forecast": [_fmt(float(v)) for v in decoded[mid]],
            "truth": [_fmt(float(v)) for v in truth],
            **({"lower": [_fmt(float(v)) for v in decoded[0]]} if interval else {}),
            **({"upper": [_fmt(float(v)) for v in decoded[-1]]} if interval else {}),
            **({"interval_coverage": inside} if inside is not None else {}),
        },
        summary=(
            f"{inside:.0%} of the test block inside the {interval} interval"
            if inside is not None
            else None
        ),
    )
    caption = f"Forecast of the test block ({horizon} steps)"
    section.figures[caption + (f" with the {interval} interval" if interval else "")] = svg(fig)
    if len(series.ids) > 1:
        section.notes.append(f"The first of {len(series.ids)} series is shown.")
    return section


def residual_section(model: torch.nn.Module, data: PreparedData) -> Section:
    """ACF and Ljung-Box test of the one-step-ahead errors on the training + validation rows."""
    from statsmodels.stats.diagnostic import acorr_ljungbox
    from statsmodels.tsa.stattools import acf

    from danlu.evaluate._plots import figure, svg

    series = data.series
    assert series is not None
    x = np.concatenate([data.x_train, data.x_val])
    y = np.concatenate([data.y_train, data.y_val])
    schema = data.schema
    out = _outputs(model, x).reshape(len(x), -1, int(series.horizon))
    step1 = out[:, _median_index(data, out.shape[1]), 0].astype(np.float64)
    residuals = (step1 - y[:, 0]) * float(schema.target_std or 1.0)  # transformed units
    n = len(residuals)
    section = Section("residuals", "Residual diagnostics", data={"n": n})
    if n < 8 or float(np.std(residuals)) == 0.0:
        section.data["skipped"] = f"{n} one-step residuals: too few (or constant) to test"
        return section
    nlags = int(min(max(2 * int(series.season), 10), n // 2))
    lb_lag = int(min(max(int(series.season), 10), n // 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = acf(residuals, nlags=nlags, fft=False)[1:]
        p_value = float(acorr_ljungbox(residuals, lags=[lb_lag])["lb_pvalue"].iloc[0])
    band = 1.96 / math.sqrt(n)
    outside = [k + 1 for k, v in enumerate(values) if abs(v) > band]
    fig, ax = figure(6.0, 2.6)
    ax.bar(np.arange(1, nlags + 1), values, width=0.6, color="#1f77b4")
    ax.axhline(band, color="#e8870e", ls="--", lw=1)
    ax.axhline(-band, color="#e8870e", ls="--", lw=1)
    ax.axhline(0, color="#1d2327", lw=0.8)
    ax.set_xlabel("lag")
    ax.set_ylabel("autocorrelation")
    section.figures[f"ACF of the one-step residuals (±1.96/√n band, n = {n})"] = svg(fig)
    section.data.update(
        {
            "acf": [_fmt(float(v)) for v in values],
            "band": _fmt(band),
            "lags_outside_band": outside,
            "ljung_box_lag": lb_lag,
            "ljung_box_p": _fmt(p_value),
            "residual_std": _fmt(float(np.std(residuals))),
        }
    )
    section.summary = f"Ljung-Box p = {p_value:.3g} at lag {lb_lag}: the one-step residuals " + (
        "look like white noise" if p_value >= _ALPHA else "are autocorrelated"
    )
    section.notes.append(
        "One-step-ahead errors of the model on its training and validation windows "
        f"({'log1p' if series.transform == 'log' else 'original'} scale), in time order. "
        "Bars outside the dashed band (±1.96/√n) are autocorrelations white noise would reach "
        "1 time in 20; the Ljung-Box test asks whether the first lags together are."
    )
    if p_value < _ALPHA:
        section.flags.append(
            f"the residuals are autocorrelated (Ljung-Box p = {p_value:.3g} < {_ALPHA}; lags "
            f"{outside[:6]} outside the band): the model leaves structure a better model could "
            "use (seasonality, trend, a longer window)."
        )
    return section


def forecast_sections(
    model: torch.nn.Module,
    data: PreparedData,
    backtest: dict[str, Any] | None,
    *,
    shipped: str | None = None,
) -> list[Section]:
    """The backtest (when given), forecast and residual sections, in that order."""
    sections = []
    if backtest is not None:
        sections.append(backtest_section(backtest, shipped=shipped))
    if len(data.x_test):
        sections.append(forecast_plot_section(model, data))
    sections.append(residual_section(model, data))
    return sections
