"""What the data stage needs to know about a recipe's model to prepare its text columns.

The data layer sits below the models, so it cannot ask which models read text or where a
pretrained model lives; every stage that prepares a recipe's data (training, cross-validation,
tuning, the report, the export's parity check, ``danlu check --data``) asks here and passes the
answer to :func:`~danlu.data.prepare_data`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from danlu.config import ModelConfig
from danlu.data import TEXT_MODEL_TYPES

__all__ = ["text_inputs"]


def text_inputs(model: ModelConfig) -> dict[str, Any]:
    """``prepare_data``'s text keywords for a recipe's model: ``text_models`` (the model reads
    text, so free-text columns become text features) and ``tokenizer_dir`` (the pretrained
    model's directory, whose ``tokenizer.json`` tokenizes them; None without ``pretrained``).

    Raises:
        ConfigError: ``model.pretrained`` names no model directory available offline.

    Example:
        >>> text_inputs(ModelConfig(type="mlp"))
        {'text_models': False, 'tokenizer_dir': None}
    """
    reads_text = model.type in TEXT_MODEL_TYPES
    pretrained = model.options().get("pretrained")
    tokenizer_dir: Path | None = None
    if reads_text and pretrained:
        from danlu.models._pretrained import resolve_pretrained

        tokenizer_dir = resolve_pretrained(str(pretrained))
    return {"text_models": reads_text, "tokenizer_dir": tokenizer_dir}
