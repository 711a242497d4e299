"""The torch modules of the text models (imported only when a text model is built).

A text column reaches the model as ``max_length`` columns of the float matrix ``x`` holding token
ids, right-padded with the tokenizer's ``pad_id``. :class:`TextModel` reads each column's ids,
trims the batch to its longest row (dynamic padding), encodes and pools each column, joins the
tabular columns and applies the head. The trimming is written with tensor ops only (no Python
ints taken from tensors), so ``torch.onnx.export`` traces it with a dynamic sequence length.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "EncoderLayer",
    "PretrainedEncoder",
    "ScratchTransformerEncoder",
    "TextCNNEncoder",
    "TextModel",
    "pool",
    "trim_to_longest",
]


def trim_to_longest(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the padding columns every row of the batch has.

    ``ids``, ``mask``: (B, L) → (B, T), T = the last real token of the longest row + 1, but at
    least 2 (when L ≥ 2). The length is a tensor and the columns are picked with
    ``index_select``, so an exported graph (TorchScript or torch.export) keeps T dynamic. The
    floor of 2 costs one masked column on a batch of one-token rows and spares torch.export a
    T = 1 special case (broadcasting in attention), which it cannot decide on a traced length.
    """
    width = ids.shape[1]
    positions = torch.arange(1, width + 1, device=ids.device)  # (L,)
    longest = (mask.long() * positions).amax(dim=(0, 1))  # () last real token + 1
    longest = longest.clamp(min=min(2, width))
    # A tensor end: the tracer records it, so the exported graph keeps T dynamic.
    keep = torch.arange(longest, device=ids.device)  # type: ignore[call-overload]  # (T,)
    at_least_two = keep.shape[0] >= 2  # a SymBool under torch.export, a tensor under tracing
    if width >= 2 and not isinstance(at_least_two, torch.Tensor):
        torch._check(at_least_two)  # tells torch.export what the clamp guarantees
    return ids.index_select(1, keep), mask.index_select(1, keep)


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(B, T, H) → (B, H): the first position (``cls``) or the mean over real tokens (``mean``)."""
    if how == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    total = (hidden * weights).sum(1)  # (B, H)
    return total / weights.sum(1).clamp(min=1.0)  # an empty row pools to zeros, not NaN


class TextModel(nn.Module):
    """Text columns → encoders → pooled vectors; joined with the tabular columns → head.

    Args:
        spans: per text column ``(start, stop, pad_id)`` in ``x`` (``stop`` already clipped to
            what the encoder can take).
        encoders: the distinct encoders; ``which[i]`` is the encoder of column ``i`` (a
            pretrained model is one encoder shared by every text column).
        tabular: the positions of the non-text columns in ``x`` (may be empty).
        head: maps the joined vector to the task's outputs.
    """

    tabular: torch.Tensor

    def __init__(
        self,
        spans: Sequence[tuple[int, int, int]],
        encoders: Sequence[nn.Module],
        which: Sequence[int],
        tabular: Sequence[int],
        head: nn.Module,
    ) -> None:
        super().__init__()
        self.spans = tuple(spans)
        self.encoders = nn.ModuleList(encoders)
        self.which = tuple(which)
        self.has_tabular = bool(tabular)
        # Not persistent: it is derived from the schema, so weights files stay the same.
        self.register_buffer("tabular", torch.tensor(list(tabular), dtype=torch.long), False)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        for (start, stop, pad_id), k in zip(self.spans, self.which, strict=True):
            ids = x[:, start:stop].long()  # (B, L) token ids stored as float32
            mask = ids != pad_id  # (B, L) True on real tokens
            ids, mask = trim_to_longest(ids, mask)  # (B, T)
            parts.append(self.encoders[k](ids, mask))  # (B, H_k)
        if self.has_tabular:
            parts.append(x.index_select(1, self.tabular))  # (B, n_tabular)
        return self.head(torch.cat(parts, 1))


class PretrainedEncoder(nn.Module):
    """A Hugging Face encoder (optionally LoRA-wrapped by peft) followed by pooling."""

    def __init__(self, model: nn.Module, pooling: str) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling

    def token_embedding(self) -> nn.Module:
        """The layer that maps token ids to vectors (through a peft wrapper, if any)."""
        layer = self.model.get_input_embeddings()  # type: ignore[operator]  # a transformers model
        assert isinstance(layer, nn.Module)
        return layer

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, attention_mask=mask.long())
        return pool(out.last_hidden_state, mask, self.pooling)  # (B, H)


class EncoderLayer(nn.Module):
    """A pre-norm transformer encoder layer: self-attention, then a GELU feed-forward block.

    ``nn.TransformerEncoderLayer`` computes the same function, but its attention reshapes with
    the traced sequence length baked in, so its ONNX export breaks on any other length; this
    one reshapes with ``-1`` and calls ``scaled_dot_product_attention``.
    """

    def __init__(self, d_model: int, heads: int, feedforward: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.attention_dropout = dropout
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.feedforward = nn.Sequential(
            nn.Linear(d_model, feedforward),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(feedforward, d_model),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """``h`` (B, T, C); ``attend`` (B, T), True on the positions keys may come from."""
        q, k, v = self.qkv(self.norm1(h)).chunk(3, dim=-1)  # 3 × (B, T, C)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(  # (B, heads, T, C / heads)
            q,
            k,
            v,
            attn_mask=attend[:, None, None, :],  # (B, 1, 1, T)
            dropout_p=self.attention_dropout if self.training else 0.0,
        )
        h = h + self.dropout(self.out(a.transpose(1, 2).flatten(2)))  # (B, T, C)
        return h + self.dropout(self.feedforward(self.norm2(h)))


class ScratchTransformerEncoder(nn.Module):
    """Token + learned position embeddings, pre-norm encoder layers, pooling."""

    def __init__(
        self,
        vocab_size: int,
        pad_id: int,
        max_positions: int,
        d_model: int,
        heads: int,
        layers: int,
        feedforward: int,
        dropout: float,
        pooling: str,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.positions = nn.Embedding(max_positions, d_model)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, heads, feedforward, dropout) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.pooling = pooling
        self.checkpointing = checkpointing

    def token_embedding(self) -> nn.Module:
        """The layer that maps token ids to vectors (positions are added after it)."""
        return self.tokens

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(ids.shape[1], device=ids.device)  # (T,)
        h = self.dropout(self.tokens(ids) + self.positions(steps))  # (B, T, C)
        # A row with no tokens at all still attends to its first position (else softmax of
        # nothing is NaN); pooling ignores it through ``mask``.
        attend = mask | (steps == 0)  # (B, T)
        for layer in self.layers:
            if self.checkpointing and self.training:
                from torch.utils.checkpoint import checkpoint

                h = checkpoint(layer, h, attend, use_reentrant=False)
            else:
                h = layer(h, attend)
        return pool(self.norm(h), mask, self.pooling)  # (B, C)


class TextCNNEncoder(nn.Module):
    """Embedding, parallel 1D convolutions of several widths, ReLU, max over time (Kim, 2014).

    Each convolution's windows start at a real token; the positions past a row's end read as
    zero vectors, whatever the batch's padded length, so a row's output does not depend on
    the other rows of its batch.
    """

    def __init__(
        self, vocab_size: int, pad_id: int, embedding: int, channels: int, kernels: Sequence[int]
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, embedding, padding_idx=pad_id)
        self.convs = nn.ModuleList(nn.Conv1d(embedding, channels, k) for k in kernels)
        self.widths = tuple(kernels)

    def token_embedding(self) -> nn.Module:
        """The layer that maps token ids to vectors."""
        return self.tokens

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.tokens(ids) * mask.unsqueeze(-1)  # (B, T, E), padding zeroed
        h = h.transpose(1, 2)  # (B, E, T)
        keep = mask.unsqueeze(1).to(h.dtype)  # (B, 1, T)
        pooled = []
        for conv, width in zip(self.convs, self.widths, strict=True):
            c = F.relu(conv(F.pad(h, (0, width - 1))))  # (B, C, T): one window per position
            pooled.append((c * keep).amax(2))  # (B, C); ReLU ≥ 0, so masked windows never win
        return torch.cat(pooled, 1)  # (B, C · len(kernels))
