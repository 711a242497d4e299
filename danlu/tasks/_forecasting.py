"""Forecasting: from the last ``lags`` values of a series, the next ``horizon`` values.

Each row is one forecast origin of one series (``danlu.data.prepare_forecast_data`` cuts the
windows): inputs the scaled window, target the next ``H`` values on the same scale. Without
quantiles the model outputs ``H`` values trained with MSE; with ``forecast.quantiles`` it outputs
``Q*H`` values read as ``(Q, H)`` — one row of ``H`` per quantile level, ascending, 0.5 among
them — trained with the mean pinball loss, and the 0.5 quantile is the point forecast. Outputs
are decoded to original units (un-scaled, then ``expm1`` with ``forecast.transform: log``).
Metrics: MAE, RMSE, MAPE, sMAPE, MASE (the headline, smaller is better), and with quantiles the
pinball loss and the coverage of the [first, last] quantile interval.

The classical baselines (naive, seasonal naive, ETS, ARIMA) fit whole series, not rows: they
come from the backtest, not from :meth:`baselines`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from danlu.errors import ConfigError
from danlu.tasks._base import Explained, Task

if TYPE_CHECKING:
    import numpy as np
    import torch

    from danlu.config import ConfigIssue, LossConfig, Recipe
    from danlu.data import FeatureSchema, PreparedData

__all__ = ["ForecastingTask", "forecast_meta"]


def forecast_meta(schema: FeatureSchema) -> dict[str, Any]:
    """The window settings a forecasting schema carries (``schema.forecast``).

    Raises:
        ConfigError: the schema is not a forecasting model's.
    """
    if not schema.forecast:
        raise ConfigError(
            "This model's schema carries no forecast settings: it was not trained with "
            "task: forecasting. Train it with a recipe's forecast: block."
        )
    return dict(schema.forecast)


def _shape(schema: FeatureSchema) -> tuple[int, int]:
    """(Q, H): quantile levels (1 for point forecasts) and horizon."""
    meta = forecast_meta(schema)
    return max(len(meta.get("quantiles") or []), 1), int(meta["horizon"])


def _levels(schema: FeatureSchema) -> list[float]:
    return [float(q) for q in forecast_meta(schema).get("quantiles") or []]


def _decode(values: Any, schema: FeatureSchema) -> Any:
    """Scaled (transformed) values → original units; numpy or torch."""
    out = values * (schema.target_std or 1.0) + (schema.target_mean or 0.0)
    if forecast_meta(schema).get("transform") == "log":
        return out.expm1() if hasattr(out, "expm1") else _np().expm1(out)
    return out


def _np() -> Any:
    import numpy as np

    return np


def _median_index(schema: FeatureSchema) -> int:
    levels = _levels(schema)
    return levels.index(0.5) if levels else 0


class ForecastingTask(Task):
    """The next ``horizon`` values of a series from its last ``lags`` (quantiles optional)."""

    name = "forecasting"
    input_kinds = frozenset({"numeric"})
    target_kind = "values"
    target_dtype = "float32"
    epoch_metrics = ("mae", "rmse", "mase")
    headline = "mase"
    headline_mode = "min"
    headline_label = "MASE"
    report_metrics = ("mase", "mae", "rmse", "mape", "smape")
    row_score_label = "absolute error over the horizon"
    smaller_is_better = Task.smaller_is_better | frozenset({"mase", "mape", "smape", "pinball"})

    def __init__(self) -> None:
        #: the quantile levels of the schema the model was built for (the loss reads them).
        self.quantile_levels: list[float] = []

    def output_dim(self, schema: FeatureSchema) -> int:
        self.quantile_levels = _levels(schema)
        q, h = _shape(schema)
        return q * h

    def prepare_data(self, recipe: Recipe, frame: Any = None) -> PreparedData | None:
        """The windows of the recipe's time-ordered series (``prepare_forecast_data``)."""
        from danlu.data import prepare_forecast_data

        if recipe.forecast is None:  # check_recipe refused it; a bare task cannot window
            return None
        return prepare_forecast_data(recipe.data, recipe.forecast, self, frame=frame)

    def check_recipe(self, recipe: Recipe) -> list[ConfigIssue]:
        from danlu.config import ConfigIssue

        issues = super().check_recipe(recipe)
        if recipe.forecast is None:
            issues.append(
                ConfigIssue(
                    ("forecast",),
                    "task: forecasting needs a forecast block (the time column and the horizon)",
                    None,
                    "Add e.g. forecast: {time: month, horizon: 12}.",
                )
            )
        if recipe.train.loss.name != "default":
            issues.append(
                ConfigIssue(
                    ("train", "loss", "name"),
                    "forecasting trains with MSE, or the pinball loss with forecast.quantiles",
                    recipe.train.loss.name,
                    "Remove train.loss.",
                )
            )
        split = recipe.data.split
        if split.by != "random" or split.group is not None or split.column is not None:
            issues.append(
                ConfigIssue(
                    ("data", "split"),
                    "forecasting splits each series by time itself (forecast.test, forecast.val)",
                    split.by,
                    "Remove data.split; set forecast.test / forecast.val instead.",
                )
            )
        if recipe.evaluate is not None and recipe.evaluate.cross_validation is not None:
            issues.append(
                ConfigIssue(
                    ("evaluate", "cross_validation"),
                    "shuffled folds would train on the future; forecasting backtests over "
                    "rolling origins instead",
                    recipe.evaluate.cross_validation,
                    "Remove evaluate.cross_validation; set forecast.backtest.folds.",
                )
            )
        if recipe.data.augment:
            issues.append(
                ConfigIssue(
                    ("data", "augment"),
                    "augmentations would change the series' values",
                    len(recipe.data.augment),
                    "Remove data.augment.",
                )
            )
        return issues

    def make_loss(
        self, class_weights: torch.Tensor | None = None, loss: LossConfig | None = None
    ) -> torch.nn.Module:
        import torch

        if loss is not None and loss.name != "default":
            raise ConfigError(
                f"train.loss '{loss.name}' does not apply to forecasting, which trains with MSE "
                "or the pinball loss (forecast.quantiles). Remove train.loss."
            )
        task = self

        class _ForecastLoss(torch.nn.Module):
            """MSE (point forecasts) or the mean pinball loss over levels (quantiles)."""

            def forward(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                n, h = y.shape  # (N, H)
                q = outputs.shape[1] // h
                if q == 1:
                    return torch.nn.functional.mse_loss(outputs, y)
                levels = task.quantile_levels
                if len(levels) != q:
                    raise ConfigError(
                        f"The model outputs {q} quantiles of {h} steps, but the task knows "
                        f"levels {levels}: build the model from this task and the data's schema."
                    )
                pred = outputs.reshape(n, q, h)  # (N, Q, H)
                diff = y.unsqueeze(1) - pred  # (N, Q, H)
                level = torch.tensor(levels, dtype=outputs.dtype, device=outputs.device)
                level = level.view(1, q, 1)
                return torch.maximum(level * diff, (level - 1) * diff).mean()

        return _ForecastLoss()

    def quick_metrics(
        self, outputs: torch.Tensor, y: torch.Tensor, schema: FeatureSchema
    ) -> dict[str, float]:
        self.quantile_levels = _levels(schema)
        q, h = _shape(schema)
        point = outputs.reshape(len(y), q, h)[:, _median_index(schema)].double()
        err = _decode(point, schema) - _decode(y.double(), schema)
        mae = err.abs().mean().item()
        return {
            "mae": mae,
            "rmse": err.pow(2).mean().sqrt().item(),
            "mase": mae / float(forecast_meta(schema).get("mase_scale") or 1.0),
        }

    def _decoded(self, outputs: np.ndarray, schema: FeatureSchema) -> np.ndarray:
        """(n, Q, H) in original units, quantiles sorted along Q (no crossing)."""
        import numpy as np

        q, h = _shape(schema)
        values = _decode(np.asarray(outputs, dtype=np.float64).reshape(-1, q, h), schema)
        return np.sort(values, axis=1)

    def metrics(self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> dict[str, Any]:
        import numpy as np

        from danlu.tasks._forecast_metrics import forecast_metrics

        decoded = self._decoded(outputs, schema)
        true = _decode(np.asarray(y, dtype=np.float64).reshape(len(decoded), -1), schema)
        levels = _levels(schema)
        scale = float(forecast_meta(schema).get("mase_scale") or 1.0)
        point = decoded[:, _median_index(schema)]
        if not levels:
            return forecast_metrics(true, point, scale=scale)
        return forecast_metrics(true, point, scale=scale, y_quant=decoded, quantiles=levels)

    def predict(
        self, outputs: np.ndarray, schema: FeatureSchema, temperature: float = 1.0
    ) -> dict[str, np.ndarray]:
        decoded = self._decoded(outputs, schema)  # (n, Q, H)
        out = {"prediction": decoded[:, _median_index(schema)]}
        if _levels(schema):
            out.update(lower=decoded[:, 0], upper=decoded[:, -1], quantiles=decoded)
        return out

    def row_scores(self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> np.ndarray:
        import numpy as np

        q, h = _shape(schema)
        point = np.asarray(outputs).reshape(len(y), q, h)[:, _median_index(schema)]
        return -np.abs(point - np.asarray(y).reshape(len(y), h)).mean(axis=1)

    def baselines(self, seed: int) -> dict[str, Any]:
        return {}  # naive, seasonal naive, ETS and ARIMA fit series: the backtest compares them

    def baseline_outputs(self, estimator: Any, x: np.ndarray, schema: FeatureSchema) -> np.ndarray:
        import numpy as np

        return np.asarray(estimator.predict(x)).reshape(len(x), -1)

    def baseline_target(self, y: np.ndarray) -> np.ndarray:
        return y

    def explain(
        self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema, temperature: float = 1.0
    ) -> Explained:
        import numpy as np

        pred = self.predict(outputs, schema)["prediction"]  # (n, H) original units
        true = _decode(np.asarray(y, dtype=np.float64).reshape(pred.shape), schema)
        return Explained(
            targets=np.zeros(len(pred), dtype=np.int64),  # the first step's forecast
            confidence=-np.abs(pred - true).mean(axis=1),
            predictions=[[float(v) for v in row] for row in pred],
            truths=[[float(v) for v in row] for row in true],
            what="the first step's forecast",
            notes=[
                "Forecasts have no confidence: windows are ranked by -mean |error| over the "
                "horizon, so 'most confident' are the best-forecast windows."
            ],
        )

    def signature(self, schema: FeatureSchema) -> dict[str, Any]:
        """The base signature plus ``forecast``: the window's settings (horizon, lags,
        quantiles, transform, frequency, covariates) that ``POST .../forecast`` builds a window
        from a history with."""
        return {**super().signature(schema), "forecast": forecast_meta(schema)}

    def output_signature(self, schema: FeatureSchema) -> dict[str, Any]:
        q, h = _shape(schema)
        steps = {"type": "array", "items": {"type": "number"}, "minItems": h, "maxItems": h}
        out: dict[str, Any] = {
            "prediction": {
                "type": "float",
                "shape": [h],
                "target": schema.target,
                "json_schema": steps,
                "description": f"the next {h} values (the median forecast)",
            }
        }
        levels = _levels(schema)
        if levels:
            for name, level in (("lower", levels[0]), ("upper", levels[-1])):
                out[name] = {
                    "type": "float",
                    "shape": [h],
                    "quantile": level,
                    "json_schema": steps,
                }
            out["quantiles"] = {
                "type": "float",
                "shape": [q, h],
                "levels": levels,
                "json_schema": {"type": "array", "items": steps, "minItems": q, "maxItems": q},
            }
        return out
