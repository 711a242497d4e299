"""Training for classical forecasting models (``model: {type: naive | seasonal_naive | ets |
arima}``), behind the :class:`~danlu.train.Trainer`'s interface like
:class:`~danlu.train.BoostingTrainer` is for trees.

statsmodels fits the model on the series' history before the test block (training and
validation points: a classical model has no epochs to stop early, and its orders are chosen by
AIC in-sample, so the validation block is history like the rest), on the transformed scale
(``forecast.transform``). The fit is read out into the model's affine map
(:func:`~danlu.models._classical.fit_classical`, checked against statsmodels on the real
window) and put into the standardized contract of the forecasting task. The fit counts as one
epoch: its training loss (the task's own loss on the training windows) is logged like a
network's and fed to the callbacks. The history has no validation figures: the validation
points were part of the fit. The intervals are calibrated on the fitted model's own forecast
errors from every window of that history (``classical.json``: ``intervals``); the test block
is never read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from danlu.config import TrainConfig
from danlu.errors import DataError
from danlu.logging import get_logger
from danlu.train._callbacks import Callback

if TYPE_CHECKING:
    from danlu.data import FeatureSchema, PreparedData
    from danlu.store import Tracker
    from danlu.tasks import Task

__all__ = ["ClassicalTrainer", "forward_transform", "is_classical"]

log = get_logger(__name__)


def is_classical(model: torch.nn.Module) -> bool:
    """True for a classical forecasting model (fitted by statsmodels, not the torch loop)."""
    from danlu.models._classical import is_classical as check

    return check(model)


def forward_transform(values: np.ndarray, transform: str) -> np.ndarray:
    """The forecasting transform of original values (``log``: log1p)."""
    values = np.asarray(values, dtype=np.float64)
    return np.log1p(values) if transform == "log" else values


class ClassicalTrainer:
    """Fits a classical forecasting model with statsmodels; the Trainer's interface (``fit``,
    ``predict_outputs``, ``history_``, ``epoch``, ``best_epoch``, ``model``).

    Example:
        >>> # trainer = ClassicalTrainer(recipe.train).fit(model, get_task("forecasting"), data)
        >>> # trainer.native["params"], trainer.native["parity"]
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        callbacks: Sequence[Callback] = (),
        tracker: Tracker | None = None,
        checkpoint_path: Any = None,  # accepted for the Trainer's signature; one fit, no resume
    ) -> None:
        self.config = config
        self.callbacks = list(callbacks)
        self.tracker = tracker
        self.should_stop = False
        self.num_batches = 0
        self.history_: list[dict[str, float]] = []
        self.epoch = 0
        self.best_epoch = 0
        self.native: dict[str, Any] = {}  # statsmodels' parameters, AIC, parity of the readout
        self.model: torch.nn.Module
        self.task: Task
        self.schema: FeatureSchema

    def fit(
        self, model: torch.nn.Module, task: Task, data: PreparedData, *, resume: bool = False
    ) -> ClassicalTrainer:
        """Fit ``model.spec`` on the series of ``data``; returns ``self``."""
        import statsmodels

        from danlu.models._classical import fit_classical, lag_columns

        kind = getattr(model, "classical_kind", "?")
        series = getattr(data, "series", None)
        if series is None:
            raise DataError(f"model.type {kind} forecasts a series: use task: forecasting.")
        if len(series.ids) != 1:
            raise DataError(
                f"model.type {kind} is fitted on one series; this data has {len(series.ids)} "
                "(forecast.series_id). Use a neural model (mlp, lstm, tcn) or model: {type: "
                f"auto}}: auto and the backtest still use {kind} as a baseline on each series."
            )
        schema = data.schema
        assert schema.target_mean is not None and schema.target_std is not None
        self.task, self.schema = task, schema
        for cb in self.callbacks:
            cb.on_fit_start(self)  # type: ignore[arg-type]
        history = series.values[0][: series.val_end[0]]
        z = forward_transform(history, series.transform)
        fit = fit_classical(
            model.spec,  # type: ignore[arg-type]
            z,
            season=int(series.season),
            horizon=int(series.horizon),
            lags=int(series.lags),
        )
        levels = tuple(float(q) for q in series.quantiles)
        model.load_fit(  # type: ignore[operator]
            fit,
            lag_columns(schema, int(series.lags)),
            float(schema.target_mean),
            float(schema.target_std),
            levels if getattr(model, "n_quantiles", 0) else (),
        )
        model.eval()
        self.model = model
        self.native = {
            "library": f"statsmodels {statsmodels.__version__}",
            "type": kind,
            "fitted_points": len(z),
            "transform": series.transform,
            "params": fit.params,
            "aic": fit.aic,
            "stderr": [float(s) for s in fit.stderr],
            "intervals": fit.calibration,
            "parity": fit.parity,
        }
        self.native["parity"]["module"] = self._module_parity(fit, z, schema, series)
        row = {"epoch": 1.0, "train_loss": self._loss(data)}
        self.history_ = [row]
        self.epoch = self.best_epoch = 1
        if self.tracker is not None:
            self.tracker.log_metrics(row, step=1, epoch=1)
        for cb in self.callbacks:
            cb.on_epoch_start(self, 1)  # type: ignore[arg-type]
            cb.on_epoch_end(self, 1, row)  # type: ignore[arg-type]
        for cb in self.callbacks:
            cb.on_fit_end(self)  # type: ignore[arg-type]
        if self.tracker is not None:
            self.tracker.flush()
        return self

    def _module_parity(self, fit: Any, z: np.ndarray, schema: Any, series: Any) -> float:
        """The torch module's point forecast on the real window (standardized in, decoded
        out) against the readout's; raises when they are apart."""
        from danlu.models._classical import lag_columns

        lags, horizon = int(series.lags), int(series.horizon)
        mean, std = float(schema.target_mean), float(schema.target_std)
        x = np.zeros((1, schema.input_dim), dtype=np.float32)
        x[0, lag_columns(schema, lags)] = (z[-lags:] - mean) / std
        with torch.inference_mode():
            out = self.model(torch.from_numpy(x)).double().numpy().reshape(1, -1, horizon)
        levels = [float(q) for q in series.quantiles]
        point = out[0, levels.index(0.5)] if out.shape[1] > 1 else out[0, 0]
        got = point * std + mean
        want = fit.forecast(z)
        diff = float(np.abs(got - want).max())
        if not diff <= 1e-3 * max(1.0, float(np.abs(want).max())):
            raise DataError(
                f"model.type {fit.kind}: the torch module's forecast differs from statsmodels' "
                f"by {diff:.3g}; the model was not kept. Please report this with the recipe."
            )
        return diff

    def _loss(self, data: PreparedData) -> float:
        """The task's loss on the training windows (standardized units)."""
        if not len(data.x_train):
            return float("nan")
        loss_fn = self.task.make_loss(None)
        outputs = self.predict_outputs(data.x_train)
        target = torch.as_tensor(data.y_train).to(getattr(torch, self.task.target_dtype))
        with torch.inference_mode():
            return float(loss_fn(outputs, target))

    @torch.inference_mode()
    def predict_outputs(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Raw model outputs for ``x``, float32 on the CPU."""
        x_t = torch.as_tensor(x)
        parts = [self.model(x_t[i : i + 8192]).float() for i in range(0, len(x_t), 8192)]
        return torch.cat(parts) if parts else torch.empty(0)
