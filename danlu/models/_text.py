"""Text models: a pretrained transformer (full, frozen or LoRA fine-tuning), a small transformer
trained from scratch, and a 1D-CNN.

Token ids arrive in the prepared matrix (see :class:`danlu.data.TextSlice`); the modules that read
them live in ``danlu.models._text_nets``, imported only when a text model is built. LoRA is
peft's (``LoraConfig`` + ``get_peft_model``); :func:`merge_adapters` folds the adapters into the
base weights for export.

Example:
    >>> # model: {type: transformer, pretrained: all-MiniLM-L6-v2, finetune: lora}
"""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, model_validator

from danlu.errors import ConfigError
from danlu.logging import get_logger
from danlu.models._common import ModelSpec

if TYPE_CHECKING:
    import torch.nn as nn

    from danlu.data import FeatureSchema, TextSlice
    from danlu.tasks import Task

__all__ = [
    "LoraSpec",
    "TextCNNSpec",
    "TransformerSpec",
    "build_text_cnn",
    "build_transformer",
    "count_parameters",
    "merge_adapters",
]

logger = get_logger(__name__)

Dropout = Annotated[float, Field(ge=0.0, lt=1.0)]

# The options of a transformer trained from scratch (a pretrained one's shape is its config.json).
_SCRATCH_OPTIONS = ("layers", "d_model", "heads", "feedforward")


class LoraSpec(ModelSpec):
    """peft's LoRA settings: rank, scale (``alpha / r``), dropout and the layers it adapts."""

    r: Annotated[int, Field(gt=0)] = 8
    alpha: Annotated[float, Field(gt=0)] = 16
    dropout: Dropout = 0.1
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["query", "value"],
        min_length=1,
        description="Names of the Linear layers to adapt (the last part of the module name, "
        "e.g. query, value for BERT), or all-linear.",
    )


class TransformerSpec(ModelSpec):
    """``type: transformer``: pretrained (``pretrained:`` set) or a small one from scratch."""

    pretrained: str | None = Field(
        None,
        description="A model directory, all-MiniLM-L6-v2, or a hub name in the local cache; "
        "unset: a transformer trained from scratch.",
    )
    pooling: Literal["cls", "mean"] = Field(
        "mean", description="cls: the first token's vector; mean: the mean over real tokens."
    )
    finetune: Literal["full", "frozen", "lora"] = Field(
        "full",
        description="pretrained only. full: train every weight; frozen: train the head only; "
        "lora: train LoRA adapters and the head.",
    )
    lora: LoraSpec | None = None
    gradient_checkpointing: bool = False
    dropout: Dropout = 0.1
    layers: Annotated[int, Field(ge=1)] = 2
    d_model: Annotated[int, Field(gt=0)] = 128
    heads: Annotated[int, Field(gt=0)] = 4
    feedforward: Annotated[int, Field(ge=0)] = Field(
        0, description="The feed-forward width; 0 for 4 × d_model."
    )

    @model_validator(mode="after")
    def _consistent(self) -> TransformerSpec:
        if self.lora is not None and self.finetune != "lora":
            raise ValueError(
                f"lora is set but finetune is {self.finetune}; set finetune: lora to use it"
            )
        if self.pretrained is None:
            if self.finetune != "full":
                raise ValueError(
                    f"finetune: {self.finetune} needs a pretrained model (set pretrained:); a "
                    "transformer trained from scratch trains every weight"
                )
        else:
            # Set to other than their defaults: a saved model card lists every option, so the
            # defaults of the from-scratch shape come back with a pretrained model's card.
            fields = type(self).model_fields
            given = [
                o
                for o in _SCRATCH_OPTIONS
                if o in self.model_fields_set and getattr(self, o) != fields[o].default
            ]
            if given:
                raise ValueError(
                    f"{', '.join(given)} shape a transformer trained from scratch; a pretrained "
                    "model's shape comes from its config.json: drop them"
                )
        if self.pretrained is None and self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of heads ({self.heads})")
        return self


class TextCNNSpec(ModelSpec):
    """``type: text_cnn``: embedding, 1D convolutions of several widths, max over time."""

    embedding: Annotated[int, Field(gt=0)] = 128
    channels: Annotated[int, Field(gt=0)] = 128
    kernels: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [3, 4, 5], min_length=1
    )
    dropout: Dropout = 0.3


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts of ``module`` (shared tensors counted once).

    Example:
        >>> import torch
        >>> count_parameters(torch.nn.Linear(3, 2))
        (8, 8)
    """
    params = list(module.parameters())  # .parameters() yields a shared tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merge_adapters(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every peft LoRA adapter merged into its base weights.

    The copy computes the same function (within float rounding) with plain ``nn.Linear`` layers,
    which is what export wants; ``module`` itself is left as it is. A module without adapters
    comes back as an unchanged copy.

    Example:
        >>> # merged = merge_adapters(model); torch.onnx.export(merged.eval(), ...)
    """
    merged = copy.deepcopy(module)
    try:
        from peft import PeftModel
    except ImportError:
        return merged  # no peft, so no adapters
    if isinstance(merged, PeftModel):
        return merged.merge_and_unload()
    for parent in list(merged.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, PeftModel):
                setattr(parent, name, child.merge_and_unload())
    return merged


def _text_slices(schema: FeatureSchema, model: str) -> tuple[TextSlice, ...]:
    slices = schema.text_slices()
    if not slices:
        raise ConfigError(
            f"model.type: {model} needs a text column, but this data has none "
            f"({schema.input_dim} tabular features). Mark a column as text with data.features: "
            "{COLUMN: text}, or use model.type: mlp or gbdt for tabular data."
        )
    return slices


def _head(inputs: int, outputs: int, dropout: float) -> nn.Module:
    import torch.nn as nn

    return nn.Sequential(nn.Dropout(dropout), nn.Linear(inputs, outputs))


def _log_parameters(model: nn.Module, what: str) -> None:
    trainable, total = count_parameters(model)
    logger.info(
        "%s: %s of %s parameters trainable (%.2f%%)",
        what,
        f"{trainable:,}",
        f"{total:,}",
        100.0 * trainable / max(total, 1),
    )


def _vocab(s: TextSlice, model: str) -> int:
    if s.vocab_size <= 0:
        raise ConfigError(
            f"model.type: {model}: text column '{s.name}' has no vocabulary size in the feature "
            "schema. Prepare the data with danlu (data.text), which records it."
        )
    return max(s.vocab_size, s.pad_id + 1)


def build_text_cnn(spec: TextCNNSpec, schema: FeatureSchema, task: Task) -> nn.Module:
    """One text CNN per text column; their pooled features and the tabular columns feed the head.

    Example:
        >>> # build_text_cnn(TextCNNSpec(kernels=[2, 3]), schema, get_task("classification"))
    """
    from danlu.models._text_nets import TextCNNEncoder, TextModel

    slices = _text_slices(schema, "text_cnn")
    encoders = [
        TextCNNEncoder(_vocab(s, "text_cnn"), s.pad_id, spec.embedding, spec.channels, spec.kernels)
        for s in slices
    ]
    tabular = schema.tabular_positions()
    width = len(slices) * spec.channels * len(spec.kernels) + len(tabular)
    model = TextModel(
        [(s.start, s.stop, s.pad_id) for s in slices],
        encoders,
        range(len(slices)),
        tabular,
        _head(width, task.output_dim(schema), spec.dropout),
    )
    _log_parameters(model, "text_cnn")
    return model


def build_transformer(spec: TransformerSpec, schema: FeatureSchema, task: Task) -> nn.Module:
    """A pretrained transformer (``spec.pretrained``) or a small one trained from scratch.

    Example:
        >>> # build_transformer(TransformerSpec(pretrained="all-MiniLM-L6-v2",
        >>> #                                   finetune="lora"), schema, task)
    """
    slices = _text_slices(schema, "transformer")
    if spec.pretrained is not None:
        return _build_pretrained(spec, schema, task, slices)
    from danlu.models._text_nets import ScratchTransformerEncoder, TextModel

    encoders = [
        ScratchTransformerEncoder(
            _vocab(s, "transformer"),
            s.pad_id,
            s.stop - s.start,
            spec.d_model,
            spec.heads,
            spec.layers,
            spec.feedforward or 4 * spec.d_model,
            spec.dropout,
            spec.pooling,
            spec.gradient_checkpointing,
        )
        for s in slices
    ]
    tabular = schema.tabular_positions()
    model = TextModel(
        [(s.start, s.stop, s.pad_id) for s in slices],
        encoders,
        range(len(slices)),
        tabular,
        _head(len(slices) * spec.d_model + len(tabular), task.output_dim(schema), spec.dropout),
    )
    _log_parameters(model, f"transformer ({spec.layers} layers, d_model {spec.d_model})")
    return model


def _build_pretrained(
    spec: TransformerSpec, schema: FeatureSchema, task: Task, slices: tuple[TextSlice, ...]
) -> nn.Module:
    from danlu.models._pretrained import resolve_pretrained
    from danlu.registry import import_optional

    assert spec.pretrained is not None
    directory = resolve_pretrained(spec.pretrained)
    transformers = import_optional("transformers", extra="llm")
    import torch

    from danlu.models._text_nets import PretrainedEncoder, TextModel

    hf_logging = transformers.utils.logging
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its tqdm bar would litter the run's output
    try:
        # A directory and local_files_only: the hub is never contacted.
        hf = transformers.AutoModel.from_pretrained(
            str(directory), local_files_only=True, use_safetensors=True, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"model.pretrained: the model in '{directory}' does not load with transformers' "
            f"AutoModel ({type(exc).__name__}: {exc}). Check that config.json names an encoder "
            "architecture this transformers version knows."
        ) from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    if getattr(hf, "pooler", None) is not None:
        hf.pooler = None  # unused (we pool ourselves); unused weights upset DDP
    config = hf.config
    _check_tokens(schema, slices, config, directory)
    max_positions = int(getattr(config, "max_position_embeddings", 0) or 0)
    spans = []
    for s in slices:
        stop = s.stop
        if max_positions and s.stop - s.start > max_positions:
            logger.warning(
                "Text column '%s' holds up to %d tokens but %s takes at most %d positions; "
                "the model reads the first %d tokens of each row. Set data.text.max_length: %d "
                "to stop preparing tokens it never reads.",
                s.name,
                s.stop - s.start,
                directory.name,
                max_positions,
                max_positions,
                max_positions,
            )
            stop = s.start + max_positions
        spans.append((s.start, stop, s.pad_id))
    if spec.finetune == "frozen":
        hf.requires_grad_(False)
    elif spec.finetune == "lora":
        hf = _with_lora(hf, spec.lora or LoraSpec())
    if spec.gradient_checkpointing:
        base = hf.get_base_model() if hasattr(hf, "get_base_model") else hf
        # Non-reentrant: gradients reach the adapters even though the inputs need none.
        kwargs = {"use_reentrant": False}
        if hasattr(base, "activation_checkpointing_enable"):  # transformers 5 renamed it
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    hidden = int(config.hidden_size)
    tabular = schema.tabular_positions()
    model = TextModel(
        spans,
        [PretrainedEncoder(hf, spec.pooling)],
        [0] * len(slices),
        tabular,
        _head(len(slices) * hidden + len(tabular), task.output_dim(schema), spec.dropout),
    )
    _log_parameters(model, f"transformer {directory.name} ({spec.finetune})")
    return model


def _check_tokens(
    schema: FeatureSchema, slices: tuple[TextSlice, ...], config: object, directory: object
) -> None:
    """The text columns were tokenized with the pretrained model's own tokenizer."""
    kinds = {f.name: f.tokenizer for f in schema.features}
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    for s in slices:
        made_by = kinds.get(s.name, "")
        if made_by and not made_by.startswith("pretrained:"):
            raise ConfigError(
                f"model.pretrained: text column '{s.name}' was tokenized with a {made_by} "
                "tokenizer trained on this data, whose ids mean nothing to the pretrained model. "
                "Set data.text.tokenizer: auto so the model's own tokenizer is used."
            )
        if vocab and s.vocab_size > vocab:
            raise ConfigError(
                f"model.pretrained: text column '{s.name}' holds ids up to {s.vocab_size - 1}, "
                f"but the model in '{directory}' embeds {vocab} ids. Tokenize it with that "
                "model's tokenizer (data.text.tokenizer: auto)."
            )


def _with_lora(hf: nn.Module, lora: LoraSpec) -> nn.Module:
    """``hf`` wrapped by peft with LoRA adapters; only the adapters train."""
    from danlu.registry import import_optional

    peft = import_optional("peft", extra="llm")
    import torch.nn as nn

    linear = sorted(
        {n.rsplit(".", 1)[-1] for n, m in hf.named_modules() if isinstance(m, nn.Linear)}
    )
    if lora.target_modules != "all-linear":
        names = [n for n, _ in hf.named_modules()]
        unmatched = [
            t for t in lora.target_modules if not any(n == t or n.endswith("." + t) for n in names)
        ]
        if unmatched:
            raise ConfigError(
                f"model.lora.target_modules: {', '.join(map(repr, unmatched))} "
                f"match{'es' if len(unmatched) == 1 else ''} no layer of the model. Its Linear "
                f"layers are named: {', '.join(linear)}."
            )
    config = peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
    )
    try:
        with warnings.catch_warnings():
            # peft reads transformers' deprecated alias; the notice is about peft, not the recipe
            warnings.filterwarnings(
                "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
            )
            return peft.get_peft_model(hf, config)
    except ValueError as exc:  # e.g. a target that is a LayerNorm, which LoRA cannot adapt
        raise ConfigError(
            f"model.lora.target_modules: peft cannot adapt them ({exc}). Choose Linear layers: "
            f"{', '.join(linear)}."
        ) from None
