"""Low-rank factorisation as a compression method: the model's large Linear layers replaced by
their truncated SVD (``danlu.models._lowrank``), to a rank or an energy threshold, then
fine-tuned by the engine in a child run (``_finetune.py``).

Convolutions are left whole; a model with no Linear layer worth factorising (each smaller than
``min_features`` on a side, or one that the kept rank would not make smaller) gives a skipped
variant with the reason.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from danlu.compress._types import Variant
from danlu.logging import get_logger

if TYPE_CHECKING:
    from torch import nn

    from danlu.compress._types import CompressJob
    from danlu.config import LowRankConfig

__all__ = ["lowrank_variants"]

log = get_logger(__name__)


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _variant_name(config: LowRankConfig) -> str:
    return f"low-rank-{config.rank if config.rank is not None else config.energy}"


def _why_nothing(model: nn.Module, config: LowRankConfig) -> str:
    """Why :func:`factorize` replaced no layer, in the recipe's terms."""
    from danlu.models._lowrank import linear_layers

    layers = {path: tuple(layer.weight.shape[::-1]) for path, layer in linear_layers(model).items()}
    if not layers:
        return "the model has no Linear layer to factorise (low-rank factorises Linear layers)"
    shown = ", ".join(f"{path} {i}×{o}" for path, (i, o) in list(layers.items())[:6])
    large = [path for path, shape in layers.items() if min(shape) >= config.min_features]
    if not large:
        return (
            f"no Linear layer has both sides ≥ compress.low_rank.min_features "
            f"({config.min_features}): {shown}; lower min_features to factorise them"
        )
    target = f"rank {config.rank}" if config.rank is not None else f"energy {config.energy}"
    return (
        f"at {target} no factorised layer would have fewer weights than the layer itself "
        f"({', '.join(large[:6])}); lower compress.low_rank.rank or energy"
    )


def lowrank_variants(job: CompressJob) -> list[Variant]:
    """The model with its large Linear layers factorised by SVD and fine-tuned
    (``compress.low_rank.finetune_epochs``, in a child run).

    Returns one variant, ``low-rank-<rank or energy>``: its card's ``low_rank`` lists each
    factorised layer's rank (with those of a model factorised before), so ``load_bundle``
    rebuilds it; skipped with the reason when nothing is worth factorising.

    Example:
        >>> # [variant] = lowrank_variants(job); variant.details["ranks"]
    """
    from danlu.compress._finetune import finetune
    from danlu.models._lowrank import factorize

    config = job.config.low_rank
    if config is None:
        return []
    name = _variant_name(config)
    model = copy.deepcopy(job.model).cpu().eval()
    before = _parameters(model)
    ranks = factorize(
        model, rank=config.rank, energy=config.energy, min_features=config.min_features
    )
    if not ranks:
        return [Variant.skipped(name, "low_rank", _why_nothing(job.model, config))]
    after = _parameters(model)
    # a model factorised before keeps its layers' ranks: parents come first, as they were made
    earlier: dict[str, Any] = dict(job.card.get("low_rank") or {})
    card = {"low_rank": {**earlier, **ranks}}
    model, run_id = finetune(job, model, name=name, epochs=config.finetune_epochs, card=card)
    log.info(
        "Factorised %d Linear layers (%s): %d → %d parameters", len(ranks), ranks, before, after
    )
    return [
        Variant(
            name=name,
            method="low_rank",
            runtime="onnx",
            model=model.cpu().eval(),
            card=card,
            run_id=run_id,
            details={
                "ranks": ranks,
                "rank": config.rank,
                "energy": config.energy,
                "finetune_epochs": config.finetune_epochs,
                "parameters_before": before,
                "parameters_after": after,
                "parameter_ratio": after / max(before, 1),
            },
        )
    ]
