"""A small convolutional network for image-shaped inputs (e.g. digits' 8×8)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from danlu.errors import ConfigError
from danlu.models._common import Activation, ModelSpec, make_activation

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from danlu.data import FeatureSchema
    from danlu.tasks import Task

__all__ = ["CNNSpec", "build_cnn"]


class CNNSpec(ModelSpec):
    channels: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [32, 64])
    kernel: Annotated[int, Field(gt=0)] = 3
    convs_per_stage: Annotated[int, Field(ge=1, le=4)] = 1
    pool: Literal["max", "avg", "none"] = "max"
    batch_norm: bool = True
    activation: Activation = "relu"
    hidden: Annotated[int, Field(ge=0)] = Field(
        128, description="Dense layer before the head; 0 for none."
    )
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.25


def _build(spec: CNNSpec, shape: tuple[int, ...], outputs: int) -> nn.Module:
    import torch.nn as nn

    class CNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shape = shape
            stages: list[nn.Module] = []
            channels, (height, width) = shape[0], shape[1:]
            for out_channels in spec.channels:
                for _ in range(spec.convs_per_stage):
                    stages.append(
                        nn.Conv2d(channels, out_channels, spec.kernel, padding=spec.kernel // 2)
                    )
                    if spec.batch_norm:
                        stages.append(nn.BatchNorm2d(out_channels))
                    stages.append(make_activation(spec.activation))
                    channels = out_channels
                if spec.pool != "none" and min(height, width) >= 2:
                    stages.append(nn.MaxPool2d(2) if spec.pool == "max" else nn.AvgPool2d(2))
                    height, width = height // 2, width // 2
            self.features = nn.Sequential(*stages)
            flat = channels * height * width
            head: list[nn.Module] = [nn.Flatten(), nn.Dropout(spec.dropout)]
            if spec.hidden:
                head += [
                    nn.Linear(flat, spec.hidden),
                    make_activation(spec.activation),
                    nn.Dropout(spec.dropout),
                ]
                flat = spec.hidden
            head.append(nn.Linear(flat, outputs))
            self.head = nn.Sequential(*head)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.view(x.shape[0], *self.shape)  # (B, D) → (B, C, H, W)
            return self.head(self.features(x))

    return CNN()


def build_cnn(spec: CNNSpec, schema: FeatureSchema, task: Task) -> nn.Module:
    """Conv stages (conv → BN → activation, then pooling) and a dense head.

    The prepared features arrive flat, ``(B, C·H·W)``, and are viewed as ``data.image_shape``.
    """
    shape = schema.image_shape
    if shape is None or len(shape) not in (2, 3):
        raise ConfigError(
            f"model.type: cnn needs image-shaped inputs, but this data has {schema.input_dim} tabular "
            "features and no image shape. Set data.image_shape (e.g. [1, 8, 8]) if the features are "
            "pixels, or use model.type: mlp for tabular data."
        )
    full = tuple(shape) if len(shape) == 3 else (1, *shape)
    if full[0] * full[1] * full[2] != schema.input_dim:
        raise ConfigError(
            f"model.type: cnn: data.image_shape {list(shape)} holds {full[0] * full[1] * full[2]} values "
            f"but the prepared data has {schema.input_dim} features. Fix data.image_shape."
        )
    return _build(spec, full, task.output_dim(schema))
