"""Rebuilding a compressed model from its card: the architecture the recipe builds, reshaped as
its card says before its weights are loaded — factorised Linear layers (``low_rank``), channels
and neurons removed by structured pruning (``resized``), int8 Linear layers of torch's dynamic
quantization (``quantize``). Each is data in the card, never code; an unknown value is refused.

``danlu compress`` writes these keys (``danlu.compress``); :func:`~danlu.models.load_bundle`
calls :func:`load_compressed` for every card that has one of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from danlu.errors import StoreError

if TYPE_CHECKING:
    import torch

__all__ = ["COMPRESSED_CARD_KEYS", "load_compressed"]

#: the model-card keys that change how the network is rebuilt
COMPRESSED_CARD_KEYS = ("low_rank", "resized", "quantize")


def load_compressed(
    model: torch.nn.Module, card: dict[str, Any], tensors: dict[str, torch.Tensor], where: str
) -> torch.nn.Module:
    """``model`` (as built from the card's type and options) reshaped as the card says, with
    ``tensors`` loaded into it; returns the model to use (a quantized one may be a new module).

    Raises:
        StoreError: a key has a value this version of danlu does not know, or the tensors do
            not fit the reshaped model.
    """
    if card.get("low_rank"):
        from danlu.models._lowrank import factorize_structure

        factorize_structure(model, card["low_rank"], where=where)
    if card.get("resized"):
        from danlu.models._resize import resize_to_state

        resize_to_state(model, tensors, where=where)
    quantize = card.get("quantize")
    if quantize:
        from danlu.models._quantized import load_quantized

        return load_quantized(model, tensors, quantize, where=where)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise StoreError(
            f"{where} does not fit the compressed model its card describes: {exc}"
        ) from None
    return model
