"""A 1-D convolutional network for sequences: one or more series of equal length per row.

The rows arrive flat, ``(B, C·L)``, dimension by dimension (what ``builtin:gunpoint`` and the other
time-series built-ins hold) and are viewed as ``(B, C, L)`` using the data's shape:
``data.image_shape: [C, L]`` (or ``[L]``), else one series of all the features. The default is the
fully convolutional network that is a standard baseline on the UCR archive (Wang, Yan and Oates,
2017): three conv → batch norm → ReLU blocks of 128, 256, 128 channels and kernels 8, 5, 3, then
global average pooling over time and a linear head. Convolutions pad to keep the length (explicit
padding, so even kernels export to ONNX as a plain Pad + Conv).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, model_validator

from danlu.errors import ConfigError
from danlu.models._common import Activation, ModelSpec, make_activation

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from danlu.data import FeatureSchema
    from danlu.tasks import Task

__all__ = ["CNN1DSpec", "build_cnn1d", "sequence_shape"]


class CNN1DSpec(ModelSpec):
    channels: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [128, 256, 128], description="Output channels of each conv block."
    )
    kernel_sizes: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [8, 5, 3],
        description="Kernel of each conv block: one per entry of channels, or one for all.",
    )
    batch_norm: bool = True
    activation: Activation = "relu"
    global_pool: Literal["avg", "max"] = Field(
        "avg", description="Pooling over time after the conv blocks: avg (GAP) or max."
    )
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        0.0, description="Dropout before the linear head."
    )

    @model_validator(mode="after")
    def _one_kernel_per_block(self) -> CNN1DSpec:
        if len(self.kernel_sizes) not in (1, len(self.channels)):
            raise ValueError(
                f"kernel_sizes needs one entry per entry of channels ({len(self.channels)}) or "
                f"a single one; got {len(self.kernel_sizes)}"
            )
        return self


def sequence_shape(schema: FeatureSchema) -> tuple[int, int]:
    """``(channels, length)`` of one row: the data's shape, else one series of every feature.

    Raises:
        ConfigError: the shape is an image's ``(C, H, W)``, or does not hold ``input_dim`` values.
    """
    shape = schema.image_shape
    if shape is None:
        return 1, schema.input_dim
    if len(shape) == 1:
        full = (1, int(shape[0]))
    elif len(shape) == 2:
        full = (int(shape[0]), int(shape[1]))
    else:
        raise ConfigError(
            f"model.type: cnn1d reads sequences (channels, length), but the data is an image of "
            f"shape {list(shape)}. Use model.type: cnn for images, or set data.image_shape to "
            "[channels, length]."
        )
    if full[0] * full[1] != schema.input_dim:
        raise ConfigError(
            f"model.type: cnn1d: the sequence shape {list(full)} (channels, length) holds "
            f"{full[0] * full[1]} values but the prepared data has {schema.input_dim} features. "
            "Set data.image_shape to [channels, length], or mark the columns that are not part "
            "of the series 'ignore' in data.features (e.g. a split column: use "
            "data.split.by: column)."
        )
    return full


def _build(spec: CNN1DSpec, shape: tuple[int, int], outputs: int) -> nn.Module:
    import torch.nn as nn

    one = len(spec.kernel_sizes) == 1
    kernels = spec.kernel_sizes * len(spec.channels) if one else spec.kernel_sizes

    class CNN1D(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shape = shape
            # read by danlu.load_model, the server and the trust report: rows are sequences
            self.sequence_shape = shape
            blocks: list[nn.Module] = []
            channels = shape[0]
            for out_channels, kernel in zip(spec.channels, kernels, strict=True):
                # 'same' length: (k-1)//2 on the left, the rest on the right
                blocks.append(nn.ConstantPad1d(((kernel - 1) // 2, kernel // 2), 0.0))
                blocks.append(nn.Conv1d(channels, out_channels, kernel, bias=not spec.batch_norm))
                if spec.batch_norm:
                    blocks.append(nn.BatchNorm1d(out_channels))
                blocks.append(make_activation(spec.activation))
                channels = out_channels
            self.features = nn.Sequential(*blocks)
            self.pool = spec.global_pool
            self.head = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(channels, outputs))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.view(x.shape[0], *self.shape)  # (B, C·L) → (B, C, L)
            h = self.features(x)  # (B, C', L)
            pooled = h.mean(dim=2) if self.pool == "avg" else h.amax(dim=2)  # (B, C')
            return self.head(pooled)

    return CNN1D()


def build_cnn1d(spec: CNN1DSpec, schema: FeatureSchema, task: Task) -> nn.Module:
    """Conv blocks over time (conv → BN → activation), global pooling and a linear head.

    Example:
        >>> # model: {type: cnn1d, channels: [32, 64], kernel_sizes: [7, 5], dropout: 0.1}
    """
    return _build(spec, sequence_shape(schema), task.output_dim(schema))
