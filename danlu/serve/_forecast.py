"""``POST /v1/models/{name}/forecast``: a forecasting model's next ``horizon`` values from a
recent history, with intervals.

The body is ``{"history": [numbers], "times": [...]?, "covariates": {name: [numbers]}?}``: the
most recent values of the series, oldest first (at least the model's ``lags``; only the last
``lags`` are read), their times (ISO dates or integer steps; the forecast's times follow the last
one at the model's frequency), and the covariates the model was trained with (observed ones:
their last ``lags`` values; known ones: their next ``horizon`` values). The window is built as in
training (``danlu.data.forecast_window``) and answered through the same micro-batched predict
path as ``/predict``, so its answer is the model's. The response::

    {"model": "airline", "version": 3, "ref": "airline:3", "horizon": 12,
     "forecast": [{"step": 1, "time": "1961-01-01T00:00:00", "mean": 442.1,
                   "lower": 417.0, "upper": 466.3, "quantiles": {"0.1": 417.0, ...}}, ...]}

A bad body is a 4xx naming the field: ``history`` (too short, not numbers, NaN), ``times``,
``covariates.NAME``; a model that does not forecast is a 422 naming ``name``.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from danlu.errors import DataError
from danlu.serve._codec import as_integer, decode_body
from danlu.serve._model_route import add_model_route
from danlu.serve._types import RequestError

if TYPE_CHECKING:
    from danlu.serve._state import ServerState
    from danlu.serve._types import ServedModelLike

__all__ = ["FORECAST_PATH", "MAX_HISTORY", "add_forecast_route"]

FORECAST_PATH = "/v1/models/{name}/forecast"
_KEYS = frozenset({"history", "times", "covariates"})
MAX_HISTORY = 100_000  # values in one history (the window reads the last `lags`)


def _numbers(values: Any, field: str) -> list[float]:
    if not isinstance(values, list) or not values:
        raise RequestError(field, "must be a non-empty list of numbers.")
    if len(values) > MAX_HISTORY:
        raise RequestError(
            field, f"holds {len(values):,} values; send at most {MAX_HISTORY:,}.", 413
        )
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise RequestError(f"{field}[{i}]", f"must be a number; got {type(v).__name__}.")
        if not math.isfinite(float(v)):
            raise RequestError(f"{field}[{i}]", "must be a finite number (no NaN or infinity).")
    return [float(v) for v in values]


def read_forecast_request(payload: Any) -> tuple[list[float], list[Any] | None, dict[str, Any]]:
    """``(history, times, covariates)`` of a decoded body, each checked.

    Raises:
        RequestError: naming the field at fault.

    Example:
        >>> read_forecast_request({"history": [1, 2.5]})
        ([1.0, 2.5], None, {})
    """
    if not isinstance(payload, dict):
        raise RequestError("body", 'must be a JSON object such as {"history": [1.0, 2.0]}.')
    unknown = sorted(set(payload) - _KEYS)
    if unknown:
        raise RequestError(
            unknown[0], "is not a key of a forecast request (history, times, covariates)."
        )
    if "history" not in payload:
        raise RequestError("history", "is required: the series' recent values, oldest first.")
    history = _numbers(payload["history"], "history")
    times = payload.get("times")
    if times is not None:
        if not isinstance(times, list) or len(times) != len(history):
            raise RequestError(
                "times", f"must be a list of {len(history)} times, one per history value."
            )
        times = [as_integer(t) if isinstance(t, float) else t for t in times]  # 3.0 is step 3
        for i, t in enumerate(times):
            if isinstance(t, bool) or not isinstance(t, str | int):
                raise RequestError(f"times[{i}]", "must be an ISO date string or an integer step.")
    covariates = payload.get("covariates") or {}
    if not isinstance(covariates, dict):
        raise RequestError("covariates", "must be an object: covariate name → list of numbers.")
    checked = {str(k): _numbers(v, f"covariates.{k}") for k, v in covariates.items()}
    return history, times, checked


def _field(exc: DataError) -> tuple[str, str]:
    """The field a window error names (``history: ...`` / ``covariates.x: ...``) and the rest."""
    text = str(exc)
    head, sep, rest = text.partition(": ")
    if sep and head.replace(".", "").replace("_", "").isalnum():
        return head, rest
    return "history", text


def _steps(
    out: dict[str, list[Any]], meta: dict[str, Any], times: list[Any] | None
) -> list[dict[str, Any]]:
    from danlu.data import future_times

    prediction = out["predictions"][0]  # (H,)
    horizon = len(prediction)
    lower = out.get("lower", [None])[0]
    upper = out.get("upper", [None])[0]
    quantiles = out.get("quantiles", [None])[0]  # (Q, H) or None
    levels = [str(q) for q in meta.get("quantiles") or []]
    when: list[Any] = [None] * horizon
    if times:
        try:
            when = list(future_times(meta, times[-1], horizon))
        except (ValueError, TypeError) as exc:
            raise RequestError(
                "times", f"the last time {times[-1]!r} cannot be read ({exc})."
            ) from None
    steps = []
    for h in range(horizon):
        step: dict[str, Any] = {"step": h + 1, "time": when[h], "mean": prediction[h]}
        if lower is not None and upper is not None:
            step.update(lower=lower[h], upper=upper[h])
        if quantiles is not None:
            step["quantiles"] = {level: quantiles[j][h] for j, level in enumerate(levels)}
        steps.append(step)
    return steps


async def forecast(state: ServerState, name: str, raw: bytes) -> dict[str, Any]:
    """The forecast of the model served as ``name`` for a raw request body.

    Raises:
        RequestError: a bad body (naming the field), or a model that does not forecast.
        NotFoundError: no model is served under ``name``.
    """
    from danlu.data import forecast_window

    served: ServedModelLike = state.pool.route(name)
    meta = served.signature.get("forecast")
    if served.signature.get("task") != "forecasting" or not isinstance(meta, dict):
        raise RequestError(
            "name",
            f"model '{name}' is a {served.signature.get('task')} model, not a forecasting one; "
            "use POST /v1/models/{name}/predict.",
        )
    history, times, covariates = read_forecast_request(decode_body(raw))
    try:
        row = forecast_window(meta, history, covariates)
    except DataError as exc:
        field, message = _field(exc)
        raise RequestError(field, message) from None
    x = served.parse({"rows": [row]}, 1)
    async with asyncio.timeout(state.settings.request_timeout_s):
        out = await served.predict(x)
    return {
        "model": name,
        "version": served.version,
        "ref": served.ref,
        "horizon": int(meta["horizon"]),
        "forecast": _steps(out, meta, times),
    }


def add_forecast_route(app: FastAPI, state: ServerState) -> None:
    """Declare ``POST /v1/models/{name}/forecast`` (the predict scope)."""
    add_model_route(app, state, FORECAST_PATH, forecast)
