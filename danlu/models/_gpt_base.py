"""A GPT started from a registered base model, and LoRA adapters on it (``finetune: lora``).

``model: {type: gpt, base: bbc-lm@production, finetune: lora, lora: {r: 8}}`` fine-tunes a
trained language model on a narrower corpus: the base's tokenizer tokenizes the corpus
(:meth:`~danlu.tasks.LanguageModelTask.prepare_data`), the configured task carries the base's
weights (``task.base_state``) and :func:`adapt_gpt` loads them into the freshly built GPT, then
wraps it with peft's LoRA (the attention ``query`` / ``value`` Linears by default, as the
text-classification models' ``finetune: lora``), so only the adapters train.

The saved model is self-contained: its ``model.safetensors`` holds the whole peft-wrapped
state (base weights and adapters), and loading rebuilds the same wrapper from the model card's
options without reading the base again (a task loaded from a card carries no ``base_state``).

Example:
    >>> # model = adapt_gpt(build_gpt(spec, schema, task), spec, task)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from danlu.errors import ConfigError
from danlu.logging import get_logger

if TYPE_CHECKING:
    import torch.nn as nn

__all__ = ["adapt_gpt", "trainable_share"]

log = get_logger(__name__)


def trainable_share(model: nn.Module) -> tuple[int, int, float]:
    """(trainable parameters, all parameters, trainable share) of ``model``.

    Example:
        >>> import torch.nn as nn
        >>> trainable_share(nn.Linear(2, 2))
        (6, 6, 1.0)
    """
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total, trainable / max(total, 1)


def adapt_gpt(model: nn.Module, spec: Any, task: Any) -> nn.Module:
    """``model`` started from the base's weights (when ``task.base_state`` holds them) and
    wrapped with LoRA adapters when ``spec.finetune == "lora"``.

    Raises:
        ConfigError: the base's weights do not fit the model (another shape: the message names
            model.base and the first differing tensor).
    """
    state = getattr(task, "base_state", None)
    if state is not None:
        own = model.state_dict()
        wrong = [
            k for k, v in state.items() if k not in own or tuple(own[k].shape) != tuple(v.shape)
        ]
        missing = [k for k in own if k not in state]
        if wrong or missing:
            first = (wrong or missing)[0]
            raise ConfigError(
                f"model.base: the base model's weights do not fit this GPT (tensor {first!r} "
                "differs). Give the recipe the base's layers, heads, width, context and "
                "tie_weights."
            )
        model.load_state_dict(state)
        log.info("gpt: started from the base model %s", getattr(task, "base_ref", "") or "")
    if getattr(spec, "finetune", "none") != "lora":
        return model
    from danlu.models._text import LoraSpec, _with_lora

    lora = spec.lora if spec.lora is not None else LoraSpec()
    wrapped = _with_lora(model, lora)
    trainable, total, share = trainable_share(wrapped)
    log.info(
        "gpt LoRA (r=%d on %s): %s of %s parameters trainable (%.2f%%)",
        lora.r,
        ", ".join(lora.target_modules) if isinstance(lora.target_modules, list) else "all-linear",
        f"{trainable:,}",
        f"{total:,}",
        100 * share,
    )
    return wrapped
