"""Multi-layer perceptron for tabular features."""

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
    return nn.Sequential(*layers)
