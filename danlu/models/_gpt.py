"""``model: {type: gpt}``: a small decoder-only transformer language model (``task:
language_model``).

The torch module lives in ``danlu.models._gpt_nets`` (imported only when one is built): pre-norm
blocks, causal self-attention through ``torch.nn.functional.scaled_dot_product_attention``,
learned positions, a final LayerNorm and a head tied to the token embedding. Its ``forward`` is the
engine's: (B, T+1) token ids → (B, T) negative log-likelihoods, so the generic Trainer trains it;
``logits(ids, cache)`` with a key/value cache is what generation (``danlu.models._generate``) calls.

Example:
    >>> # model: {type: gpt, layers: 4, heads: 4, width: 256, context: 128}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, model_validator

from danlu.errors import ConfigError
from danlu.models._common import ModelSpec
from danlu.models._text import LoraSpec, _log_parameters

if TYPE_CHECKING:
    import torch.nn as nn

    from danlu.data import FeatureSchema
    from danlu.tasks import Task

__all__ = ["GPTSpec", "build_gpt", "context_of", "is_language_model"]


class GPTSpec(ModelSpec):
    """``type: gpt``: depth, width, heads and context (block size in tokens) of the model."""

    layers: Annotated[int, Field(ge=1)] = 4
    heads: Annotated[int, Field(ge=1)] = 4
    width: Annotated[int, Field(gt=0)] = Field(256, description="The model width (d_model).")
    context: Annotated[int, Field(ge=2)] = Field(
        128, description="The block size: the most tokens the model reads at once."
    )
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    tie_weights: bool = Field(True, description="The LM head shares the token embedding.")
    finetune: Literal["none", "lora"] = Field(
        "none", description="none: train every weight; lora: train LoRA adapters on base."
    )
    lora: LoraSpec | None = None
    base: str | None = Field(
        None,
        description="A registered language model (NAME@ALIAS or NAME:VERSION) to start from, "
        "e.g. for LoRA fine-tuning.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> GPTSpec:
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be a multiple of heads ({self.heads})")
        if self.lora is not None and self.finetune != "lora":
            raise ValueError(
                f"lora is set but finetune is {self.finetune}; set finetune: lora to use it"
            )
        return self


def is_language_model(module: object) -> bool:
    """Whether ``module`` is a GPT (through a peft wrapper, if any): it has ``logits`` and a
    ``context``, what generation needs.

    Example:
        >>> is_language_model(object())
        False
    """
    inner = _unwrap(module)
    return callable(getattr(inner, "logits", None)) and isinstance(
        getattr(inner, "context", None), int
    )


def context_of(module: object) -> int:
    """The most tokens a language model reads at once (its ``context``), through a peft wrapper.

    Example:
        >>> context_of(object())
        0
    """
    return int(getattr(_unwrap(module), "context", 0) or 0)


def _unwrap(module: object) -> object:
    """The GPT inside a peft wrapper (``get_base_model``), or ``module`` itself."""
    get_base = getattr(module, "get_base_model", None)
    return get_base() if callable(get_base) else module


def build_gpt(spec: GPTSpec, schema: FeatureSchema, task: Task) -> nn.Module:
    """A GPT whose vocabulary is ``task.output_dim(schema)`` (the tokenizer's vocabulary).

    Example:
        >>> # build_gpt(GPTSpec(width=32, layers=2, context=16), schema, get_task("language_model"))
    """
    vocab = int(task.output_dim(schema))
    if vocab < 2:
        raise ConfigError(
            f"model.type: gpt needs a vocabulary of token ids, but the task gives {vocab} "
            "output(s). Use it with task: language_model, whose data holds token blocks."
        )
    from danlu.models._gpt_nets import GPT

    model = GPT(
        vocab,
        context=spec.context,
        width=spec.width,
        layers=spec.layers,
        heads=spec.heads,
        dropout=spec.dropout,
        tie_weights=spec.tie_weights,
    )
    _log_parameters(model, f"gpt ({spec.layers} layers, width {spec.width}, vocab {vocab})")
    from danlu.models._gpt_base import adapt_gpt

    # model.base's weights (when the configured task carries them) and LoRA adapters (finetune)
    return adapt_gpt(model, spec, task)
