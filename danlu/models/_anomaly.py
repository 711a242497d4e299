"""Anomaly detectors for ``task: anomaly``: an autoencoder and Deep SVDD.

Both map prepared rows ``(N, d)`` to ``(N, 1 + d)``: column 0 is the anomaly score (larger is
more anomalous), columns 1… say which features drove it — the per-feature squared
reconstruction error for the autoencoder, gradient × input of the score for Deep SVDD. The
training loss is the mean score of the rows the task trains on, so minimising it fits the
autoencoder's reconstruction and pulls Deep SVDD's outputs towards its centre. Everything is
plain tensor algebra, so both export to ONNX unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, cast

from pydantic import Field

from danlu.errors import ConfigError
from danlu.models._common import Activation, ModelSpec, make_activation

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from danlu.data import FeatureSchema
    from danlu.tasks import Task

__all__ = ["AutoencoderSpec", "DeepSVDDSpec", "build_autoencoder", "build_deep_svdd"]


class AutoencoderSpec(ModelSpec):
    hidden: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [32, 8],
        description="Encoder widths, the last one the bottleneck; the decoder mirrors them.",
    )
    activation: Activation = "relu"


class DeepSVDDSpec(ModelSpec):
    hidden: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [64, 32],
        description="Hidden widths; no layer has a bias (a bias lets the network map every row "
        "to the centre, Ruff et al. 2018).",
    )
    rep_dim: Annotated[int, Field(gt=0)] = Field(16, description="Width of the representation.")
    negative_slope: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        0.1, description="Leaky ReLU slope of the hidden layers."
    )
    eps: Annotated[float, Field(gt=0.0)] = Field(
        0.1, description="Centre coordinates closer to 0 than this are moved to ±eps."
    )


def _check_task(name: str, schema: FeatureSchema, task: Task) -> None:
    if task.name != "anomaly":
        raise ConfigError(
            f"model type '{name}' scores anomalies; it needs task: anomaly, not '{task.name}'. "
            "Set task: anomaly or choose another model."
        )
    if task.output_dim(schema) != 1 + schema.input_dim:
        raise ConfigError(f"model type '{name}' expects 1 + input_dim outputs from its task.")


def build_autoencoder(spec: AutoencoderSpec, schema: FeatureSchema, task: Task) -> nn.Module:
    """An MLP autoencoder whose output is its reconstruction error, per row and per feature.

    Example:
        >>> # build_autoencoder(AutoencoderSpec(hidden=[16, 4]), schema, get_task("anomaly"))
    """
    import torch.nn as nn

    _check_task("autoencoder", schema, task)

    def stack(widths: list[int], last_plain: bool) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths, widths[1:], strict=False)):
            layers.append(nn.Linear(a, b))
            if not (last_plain and i == len(widths) - 2):
                layers.append(make_activation(spec.activation))
        return nn.Sequential(*layers)

    widths = [schema.input_dim, *spec.hidden]
    return _Autoencoder(stack(widths, last_plain=False), stack(widths[::-1], last_plain=True))


def build_deep_svdd(spec: DeepSVDDSpec, schema: FeatureSchema, task: Task) -> nn.Module:
    """Deep SVDD (Ruff et al., ICML 2018), one-class: a bias-free network whose score is the
    squared distance of its output to a centre fixed from the initial outputs.

    The centre is the mean initial output over the rows the model trains on, when the configured
    task carries them (``task.centre_rows``, set by ``AnomalyTask.configure``); otherwise (a
    task without them, e.g. streamed data) the mean output of the first training batch.

    Example:
        >>> # build_deep_svdd(DeepSVDDSpec(hidden=[32]), schema, get_task("anomaly"))
    """
    import torch

    _check_task("deep_svdd", schema, task)
    model = _DeepSVDD(schema.input_dim, spec.hidden, spec.rep_dim, spec.negative_slope, spec.eps)
    rows = getattr(task, "centre_rows", None)
    if rows is not None and len(rows):
        cast(Any, model).init_centre(torch.as_tensor(rows, dtype=torch.float32))
    return model


def _autoencoder_class() -> Any:
    import torch
    import torch.nn as nn

    class Autoencoder(nn.Module):
        def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
            super().__init__()
            self.encoder, self.decoder = encoder, decoder

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.flatten(1)  # (N, d)
            err = (self.decoder(self.encoder(x)) - x) ** 2  # (N, d)
            return torch.cat([err.mean(dim=1, keepdim=True), err], dim=1)  # (N, 1 + d)

    return Autoencoder


def _deep_svdd_class() -> Any:
    import torch
    import torch.nn as nn

    class DeepSVDD(nn.Module):
        centre: torch.Tensor  # (rep_dim,) buffers: saved with the weights
        centred: torch.Tensor  # () bool: the centre was fixed

        def __init__(
            self, d: int, hidden: list[int], rep_dim: int, slope: float, eps: float
        ) -> None:
            super().__init__()
            widths = [d, *hidden]
            self.hidden = nn.ModuleList(
                nn.Linear(a, b, bias=False) for a, b in zip(widths, widths[1:], strict=False)
            )
            self.out = nn.Linear(widths[-1], rep_dim, bias=False)
            self.slope, self.eps = slope, eps
            self.register_buffer("centre", torch.zeros(rep_dim))
            self.register_buffer("centred", torch.zeros((), dtype=torch.bool))

        def _represent(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
            """The representation (N, rep_dim) of flattened rows, and each hidden layer's
            pre-activation."""
            h, pre = x, []
            for layer in self.hidden:
                z = layer(h)
                pre.append(z)
                h = torch.where(z > 0, z, self.slope * z)  # leaky ReLU
            return self.out(h), pre

        @torch.no_grad()
        def init_centre(self, x: torch.Tensor, chunk: int = 4096) -> None:
            """Fix the centre from the network's initial outputs on every training row ``x``
            (N, ...): their mean, as Ruff et al. 2018 (before any update)."""
            total = torch.zeros_like(self.centre, dtype=torch.float64)
            for start in range(0, len(x), chunk):
                part = x[start : start + chunk].to(self.centre.device).flatten(1)
                total += self._represent(part)[0].sum(dim=0, dtype=torch.float64)
            self._fix_centre((total / len(x)).to(self.centre.dtype)[None])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.flatten(1)  # (N, d)
            f, pre = self._represent(x)  # (N, rep_dim)
            if self.training and not bool(self.centred):
                self._fix_centre(f.detach())
            diff = f - self.centre
            score = (diff**2).sum(dim=1, keepdim=True)  # (N, 1)
            # d score / d x by hand (the network is piecewise linear), so that gradient × input
            # is part of the exported graph: g = 2 (f - c) W_out, then back through each layer
            g = (2 * diff) @ self.out.weight  # (N, h_last)
            for layer, z in zip(reversed(self.hidden), reversed(pre), strict=True):
                weight = cast(torch.Tensor, layer.weight)  # (h_out, h_in)
                g = torch.where(z > 0, g, self.slope * g) @ weight  # (N, h_in)
            return torch.cat([score, g * x], dim=1)  # (N, 1 + d)

        def _fix_centre(self, f: torch.Tensor) -> None:
            """c = the mean of the initial outputs ``f`` (N, rep_dim) — every training row's, or
            else the first training batch's — before any update; coordinates near 0 move to
            ±eps (a centre at 0 is trivially reached by zero weights)."""
            c = f.mean(dim=0)
            near = c.abs() < self.eps
            c = torch.where(near & (c < 0), -self.eps, torch.where(near, self.eps, c))
            self.centre.copy_(c)
            self.centred.fill_(True)

    return DeepSVDD


def _Autoencoder(encoder: Any, decoder: Any) -> nn.Module:
    module: nn.Module = _autoencoder_class()(encoder, decoder)
    return module


def _DeepSVDD(d: int, hidden: list[int], rep_dim: int, slope: float, eps: float) -> nn.Module:
    module: nn.Module = _deep_svdd_class()(d, hidden, rep_dim, slope, eps)
    return module
