"""Neural forecasters on windows: per-window normalisation (RevIN) and the recurrent and
temporal-convolutional networks of ``task: forecasting``.

A forecasting row holds the last ``L`` values of a series (``lag_L … lag_1``), then each
observed covariate's last ``L`` values, then each known covariate's next ``H`` values (see
``danlu.data.window_columns``). Each window is normalised by its own mean and standard
deviation before the network, and the network's outputs are mapped back with them
(``z = (x - m) / s``, ``out = net(z) * s + m``; Kim et al., 2022, "Reversible instance
normalization"), so a model trained on one level of a series still forecasts another: the
windows of a trending series never leave the range the network saw. The statistics are plain
tensor operations, so the models export to ONNX.

- ``mlp`` (``danlu/models/_mlp.py``) is wrapped in :class:`WindowNorm` for forecasting.
- ``lstm`` (``cell: lstm | gru``): the window as a sequence of ``L`` steps (the value and the
  observed covariates at each step), its last hidden state and the known covariates to a linear
  head of ``Q·H`` outputs.
- ``tcn``: dilated causal 1-D convolutions (dilations 1, 2, 4 … with residual connections; Bai,
  Kolter and Koltun, 2018) over the same sequence; the last step's channels to the head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from danlu.errors import ConfigError
from danlu.models._common import ModelSpec

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from danlu.config import ConfigIssue, Recipe
    from danlu.data import FeatureSchema
    from danlu.tasks import Task

__all__ = ["LSTMSpec", "TCNSpec", "WindowNorm", "build_lstm", "build_tcn", "window_layout"]


def window_layout(schema: FeatureSchema, model: str) -> tuple[int, int, int, int]:
    """``(lags, observed, known, horizon)`` of a forecasting schema: the window length, the
    number of observed and known covariates, and the horizon.

    Raises:
        ConfigError: the data is not a forecasting window (``model`` names who asks).
    """
    meta = schema.forecast
    if not meta:
        raise ConfigError(
            f"model.type: {model} forecasts windows of a series; it needs task: forecasting "
            "with a forecast: block. Use mlp (or gbdt) for tabular rows."
        )
    lags, horizon = int(meta["lags"]), int(meta["horizon"])
    observed, known = len(meta.get("observed", [])), len(meta.get("known", []))
    if schema.input_dim != lags * (1 + observed) + horizon * known:
        raise ConfigError(
            f"model.type: {model}: the window holds {schema.input_dim} columns, not the "
            f"{lags} lags (+ covariates) of its forecast settings. Prepare the data again."
        )
    return lags, observed, known, horizon


def _window_norm_class() -> Any:
    import torch
    import torch.nn as nn

    class WindowNorm(nn.Module):
        """Normalise each window by its own mean and std; de-normalise the outputs.

        ``x`` is ``(B, D)``: its first ``lags`` columns are the target's window (on the target's
        scale), which sets ``m`` and ``s``; the remaining columns (covariates) pass unchanged.
        The wrapped network's outputs (the target's future values or quantiles, on the same
        scale) come back as ``out * s + m``.
        """

        def __init__(self, net: nn.Module, lags: int, eps: float = 1e-3) -> None:
            super().__init__()
            self.net, self.lags, self.eps = net, lags, eps

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            window = x[:, : self.lags]  # (B, L)
            m = window.mean(dim=1, keepdim=True)  # (B, 1)
            s = torch.sqrt(((window - m) ** 2).mean(dim=1, keepdim=True) + self.eps**2)  # (B, 1)
            z = torch.cat([(window - m) / s, x[:, self.lags :]], dim=1)  # (B, D)
            return self.net(z) * s + m  # (B, Q*H)

    return WindowNorm


def WindowNorm(net: nn.Module, lags: int) -> nn.Module:  # noqa: N802 - a module factory
    """``net`` wrapped in per-window normalisation over the first ``lags`` columns."""
    module: nn.Module = _window_norm_class()(net, lags)
    return module


def _sequence(x: torch.Tensor, lags: int, observed: int) -> torch.Tensor:
    """The window's past as a sequence ``(B, L, 1 + observed)``: the value and each observed
    covariate at each step, oldest first."""
    import torch

    blocks = [x[:, i * lags : (i + 1) * lags] for i in range(1 + observed)]  # each (B, L)
    return torch.stack(blocks, dim=2)  # (B, L, 1 + observed)


class _ForecastOnly(ModelSpec):
    def recipe_issues(self, recipe: Recipe) -> list[ConfigIssue]:
        """A window model on a task other than forecasting."""
        from danlu.config import ConfigIssue

        if recipe.task == "forecasting":
            return []
        return [
            ConfigIssue(
                ("model", "type"),
                "this model forecasts windows of a series (task: forecasting)",
                recipe.model.type,
                "Use task: forecasting with a forecast: block, or model type mlp.",
            )
        ]


class LSTMSpec(_ForecastOnly):
    cell: Literal["lstm", "gru"] = Field("lstm", description="The recurrent cell: lstm or gru.")
    hidden: Annotated[int, Field(gt=0, le=4096)] = Field(64, description="Hidden units.")
    layers: Annotated[int, Field(ge=1, le=8)] = Field(1, description="Stacked recurrent layers.")
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        0.0, description="Dropout between stacked layers and before the head."
    )
    window_norm: bool = Field(
        True, description="Normalise each window by its own mean / std (RevIN)."
    )


class TCNSpec(_ForecastOnly):
    channels: Annotated[int, Field(gt=0, le=4096)] = Field(32, description="Channels per block.")
    blocks: Annotated[int, Field(ge=1, le=12)] = Field(
        3, description="Residual blocks; block i dilates by 2**i."
    )
    kernel_size: Annotated[int, Field(ge=2, le=16)] = Field(3, description="Convolution kernel.")
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(0.0, description="Dropout per block.")
    window_norm: bool = Field(
        True, description="Normalise each window by its own mean / std (RevIN)."
    )


def build_lstm(spec: LSTMSpec, schema: FeatureSchema, task: Task) -> nn.Module:
    """A recurrent forecaster (LSTM or GRU) over the window, per-window normalised.

    Example:
        >>> # model: {type: lstm, cell: gru, hidden: 32}
    """
    import torch
    import torch.nn as nn

    lags, observed, known, horizon = window_layout(schema, "lstm")
    out_dim = task.output_dim(schema)
    rnn_class = nn.LSTM if spec.cell == "lstm" else nn.GRU

    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = rnn_class(
                1 + observed,
                spec.hidden,
                num_layers=spec.layers,
                batch_first=True,
                dropout=spec.dropout if spec.layers > 1 else 0.0,
            )
            self.drop = nn.Dropout(spec.dropout)
            self.head = nn.Linear(spec.hidden + known * horizon, out_dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seq = _sequence(x, lags, observed)  # (B, L, 1 + observed)
            states, _ = self.rnn(seq)  # (B, L, hidden)
            last = self.drop(states[:, -1])  # (B, hidden)
            future = x[:, lags * (1 + observed) :]  # (B, known * H)
            return self.head(torch.cat([last, future], dim=1))  # (B, Q*H)

    net = Recurrent()
    return WindowNorm(net, lags) if spec.window_norm else net


def build_tcn(spec: TCNSpec, schema: FeatureSchema, task: Task) -> nn.Module:
    """A temporal convolutional network: dilated causal convolutions with residuals.

    Example:
        >>> # model: {type: tcn, channels: 32, blocks: 3}
    """
    import torch
    import torch.nn as nn

    lags, observed, known, horizon = window_layout(schema, "tcn")
    out_dim = task.output_dim(schema)
    k = spec.kernel_size

    class CausalBlock(nn.Module):
        def __init__(self, c_in: int, dilation: int) -> None:
            super().__init__()
            self.pad = (k - 1) * dilation  # left padding only: step t sees steps <= t
            self.conv1 = nn.Conv1d(c_in, spec.channels, k, dilation=dilation)
            self.conv2 = nn.Conv1d(spec.channels, spec.channels, k, dilation=dilation)
            self.skip = nn.Conv1d(c_in, spec.channels, 1) if c_in != spec.channels else None
            self.drop = nn.Dropout(spec.dropout)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, L) → (B, channels, L)
            h = self.drop(torch.relu(self.conv1(nn.functional.pad(x, (self.pad, 0)))))
            h = self.drop(torch.relu(self.conv2(nn.functional.pad(h, (self.pad, 0)))))
            return torch.relu(h + (x if self.skip is None else self.skip(x)))

    class TCN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.Sequential(
                *(CausalBlock(1 + observed if i == 0 else spec.channels, 2**i)
                  for i in range(spec.blocks))
            )  # fmt: skip
            self.head = nn.Linear(spec.channels + known * horizon, out_dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seq = _sequence(x, lags, observed).transpose(1, 2)  # (B, 1 + observed, L)
            last = self.blocks(seq)[:, :, -1]  # (B, channels): the last step sees the window
            future = x[:, lags * (1 + observed) :]  # (B, known * H)
            return self.head(torch.cat([last, future], dim=1))  # (B, Q*H)

    net = TCN()
    return WindowNorm(net, lags) if spec.window_norm else net
