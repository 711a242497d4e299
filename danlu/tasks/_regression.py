"""Regression: one output on a standardized target, MSE loss, metrics in original units."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from danlu.errors import ConfigError
from danlu.tasks._base import Explained, Task

if TYPE_CHECKING:
    import numpy as np
    import torch

    from danlu.config import ConfigIssue, LossConfig, Recipe
    from danlu.data import FeatureSchema

__all__ = ["RegressionTask"]


def _unscale(values: Any, schema: FeatureSchema) -> Any:
    return values * (schema.target_std or 1.0) + (schema.target_mean or 0.0)


class RegressionTask(Task):
    """A single linear output trained on ``(y - mean) / std``; reported back in y's units."""

    name = "regression"
    input_kinds = frozenset({"numeric", "categorical", "image", "text"})
    target_kind = "values"
    target_dtype = "float32"
    epoch_metrics = ("mae", "rmse", "r2")
    headline = "r2"
    headline_mode = "max"
    headline_label = "R²"
    report_metrics = ("r2", "mae", "rmse")
    row_score_label = "squared error"

    def output_dim(self, schema: FeatureSchema) -> int:
        return 1

    def check_recipe(self, recipe: Recipe) -> list[ConfigIssue]:
        from dataclasses import replace

        fix = "Remove train.loss (regression trains with MSE)."
        return [  # say what regression trains with instead
            replace(issue, fix=fix) if issue.loc == ("train", "loss", "name") else issue
            for issue in super().check_recipe(recipe)
        ]

    def make_loss(
        self, class_weights: torch.Tensor | None = None, loss: LossConfig | None = None
    ) -> torch.nn.Module:
        import torch

        if loss is not None and loss.name != "default":
            raise ConfigError(
                f"train.loss '{loss.name}' applies to classification only; regression trains "
                "with MSE. Remove train.loss."
            )

        class _MSE(torch.nn.Module):
            def forward(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return torch.nn.functional.mse_loss(outputs.squeeze(-1), y)  # (N, 1) → (N,)

        return _MSE()

    def quick_metrics(
        self, outputs: torch.Tensor, y: torch.Tensor, schema: FeatureSchema
    ) -> dict[str, float]:
        pred = _unscale(outputs.squeeze(-1).double(), schema)
        true = _unscale(y.double(), schema)
        err = pred - true
        ss_tot = ((true - true.mean()) ** 2).sum().clamp_min(1e-12)
        return {
            "mae": err.abs().mean().item(),
            "rmse": err.pow(2).mean().sqrt().item(),
            "r2": (1 - err.pow(2).sum() / ss_tot).item(),
        }

    def metrics(self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> dict[str, Any]:
        import numpy as np
        from sklearn import metrics as skm

        pred = _unscale(outputs.reshape(-1).astype(np.float64), schema)
        true = _unscale(y.astype(np.float64), schema)
        return {
            "mae": float(skm.mean_absolute_error(true, pred)),
            "rmse": float(np.sqrt(skm.mean_squared_error(true, pred))),
            "r2": float(skm.r2_score(true, pred)),
            "mape": float(skm.mean_absolute_percentage_error(true, pred)),
        }

    def predict(
        self, outputs: np.ndarray, schema: FeatureSchema, temperature: float = 1.0
    ) -> dict[str, np.ndarray]:
        return {"prediction": _unscale(outputs.reshape(-1).astype("float64"), schema)}

    def row_scores(self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> np.ndarray:
        return -((outputs.reshape(-1) - y) ** 2)  # negative squared error, standardized units

    def metric(self, name: str, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> float:
        if name in {"mae", "rmse", "r2"}:  # alone, without sklearn's checks (bootstrap resamples)
            import numpy as np

            pred = _unscale(outputs.reshape(-1).astype(np.float64), schema)
            true = _unscale(y.astype(np.float64), schema)
            err = pred - true
            if name == "mae":
                return float(np.abs(err).mean())
            if name == "rmse":
                return float(np.sqrt((err**2).mean()))
            total = float(((true - true.mean()) ** 2).sum())
            if len(true) < 2 or total == 0:
                raise ValueError("R² is undefined on fewer than 2 distinct targets")
            return 1.0 - float((err**2).sum()) / total
        return super().metric(name, outputs, y, schema)

    def baselines(self, seed: int) -> dict[str, Any]:
        from sklearn.dummy import DummyRegressor
        from sklearn.ensemble import HistGradientBoostingRegressor
        from sklearn.linear_model import LinearRegression

        return {
            "mean (dummy)": DummyRegressor(strategy="mean"),
            "linear regression": LinearRegression(),
            "HistGradientBoosting": HistGradientBoostingRegressor(random_state=seed),
        }

    def baseline_outputs(self, estimator: Any, x: np.ndarray, schema: FeatureSchema) -> np.ndarray:
        return estimator.predict(x).reshape(-1, 1)  # standardized values, like the model's

    def explain(
        self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema, temperature: float = 1.0
    ) -> Explained:
        import numpy as np

        value = self.predict(outputs, schema)["prediction"]  # original units
        true = _unscale(np.asarray(y, dtype=np.float64).reshape(-1), schema)
        return Explained(
            targets=None,
            confidence=-np.abs(value - true),
            predictions=[float(v) for v in value],
            truths=[float(v) for v in true],
            what="the standardized output",
            notes=[
                "Regression has no confidence: rows are ranked by -|residual| in the target's "
                "units (reported as 'confidence'), so 'most confident' are the best-predicted rows."
            ],
        )

    def output_signature(self, schema: FeatureSchema) -> dict[str, Any]:
        return {
            "prediction": {
                "type": "float",
                "target": schema.target,
                "json_schema": {"type": "number"},
            }
        }
