"""Pieces shared by the built-in architectures."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = ["Activation", "ModelSpec", "make_activation"]

Activation = Literal["relu", "gelu", "silu", "tanh", "leaky_relu", "elu"]


class ModelSpec(BaseModel):
    """Base of every model's options: strict, so a typo'd option is an error."""

    model_config = ConfigDict(extra="forbid")


def make_activation(name: str):  # -> torch.nn.Module
    import torch.nn as nn

    return {
        "relu": nn.ReLU,
        "gelu": nn.GELU,
        "silu": nn.SiLU,
        "tanh": nn.Tanh,
        "leaky_relu": nn.LeakyReLU,
        "elu": nn.ELU,
    }[name]()
