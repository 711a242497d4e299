"""Multi-layer perceptron for tabular features, and for forecasting windows (normalised per
window: see ``danlu.models._window``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from danlu.models._common import Activation, ModelSpec, make_activation

if TYPE_CHECKING:
    import torch.nn as nn

    from danlu.data import FeatureSchema
    from danlu.tasks import Task

__all__ = ["MLPSpec", "build_mlp"]


class MLPSpec(ModelSpec):
    hidden: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [128, 64])
    activation: Activation = "relu"
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    batch_norm: bool = False
    window_norm: bool = Field(
        True,
        description="task: forecasting: normalise each window by its own mean / std (RevIN); "
        "no effect on other tasks.",
    )


def build_mlp(spec: MLPSpec, schema: FeatureSchema, task: Task) -> nn.Module:
    """``input_dim → hidden[0] → … → output`` with activation, optional batch norm and dropout.

    Example:
        >>> # build_mlp(MLPSpec(hidden=[32]), schema, get_task("classification"))
    """
    import torch.nn as nn

    layers: list[nn.Module] = []
    width = schema.input_dim
    for size in spec.hidden:
        layers.append(nn.Linear(width, size))
        if spec.batch_norm:
            layers.append(nn.BatchNorm1d(size))
        layers.append(make_activation(spec.activation))
        if spec.dropout > 0:
            layers.append(nn.Dropout(spec.dropout))
        width = size
    layers.append(nn.Linear(width, task.output_dim(schema)))
    net = nn.Sequential(*layers)
    if schema.forecast and spec.window_norm:  # forecasting windows: see danlu.models._window
        from danlu.models._window import WindowNorm, window_layout

        return WindowNorm(net, window_layout(schema, "mlp")[0])
    return net
