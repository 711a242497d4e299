"""The torch modules of the GPT language model (imported only when a GPT is built).

:class:`GPT` is a decoder-only transformer: token and learned position embeddings, pre-norm blocks
(LayerNorm → causal self-attention through ``scaled_dot_product_attention`` → residual, LayerNorm
→ MLP → residual), a final LayerNorm and a language-model head tied to the token embedding.

Two entry points:

- ``forward(x)``: the engine's. ``x`` (B, T+1) token ids (float32 from the prepared matrix, or
  int64) → (B, T) float32, the negative log-likelihood in nats of each target ``x[:, 1:]``
  given the tokens before it. The generic Trainer trains it unchanged.
- ``logits(ids, cache=None)``: ``ids`` (B, t) int64 → ``(logits (B, t, V), cache)``; the cache
  holds each layer's keys and values, so the next call feeds only the new token(s) and costs one
  position's work per layer.
- ``decoder(batch=1)``: generation's. A :class:`Decoder` with the keys and values of every layer
  preallocated for the whole context and written in place, and the weights read once: its
  ``feed(ids)`` runs the same arithmetic as ``logits(ids, cache, last_only=True)`` as a flat
  functional pass (no module calls, one query/key/value product per layer when the three are plain
  Linear layers), what makes a one-token step cheap on a CPU.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["GPT", "Block", "CausalSelfAttention", "Decoder", "KVCache"]

# Per layer: (keys, values), each (B, heads, t, head_width).
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; ``query``/``key``/``value``/``out`` are the Linear
    layers (LoRA's ``target_modules: [query, value]`` default finds them)."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        self.dropout = dropout
        self.out_drop = nn.Dropout(dropout)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, w = t.shape
        return t.view(b, n, self.heads, w // self.heads).transpose(1, 2)  # (B, h, n, hw)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fresh: bool, n: int
    ) -> torch.Tensor:
        drop = self.dropout if self.training else 0.0
        # (no Python branch on a traced size when nothing is cached: the engine's forward exports)
        if fresh:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        if n == 1:  # one new token: it sees everything cached
            return F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        # New queries at positions p..p+n-1 see every cached key and the new keys up to
        # themselves: a causal mask aligned to the bottom right.
        total = k.shape[2]
        rows = torch.arange(total - n, total, device=q.device).unsqueeze(1)
        mask = torch.arange(total, device=q.device).unsqueeze(0) <= rows  # (n, total)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)

    def forward(
        self, h: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, n, w = h.shape
        q, k, v = self._split(self.query(h)), self._split(self.key(h)), self._split(self.value(h))
        if past is not None:
            k = torch.cat([past[0], k], 2)
            v = torch.cat([past[1], v], 2)
        if q.dtype == torch.bfloat16 and q.device.type == "cpu":
            # under bf16 autocast on a CPU: attention in fp32, whose kernels (the backward above
            # all) run several times faster there than bf16's; the projections stay bf16
            with torch.autocast("cpu", enabled=False):
                y = self._attend(q.float(), k.float(), v.float(), past is None, n)
        else:
            y = self._attend(q, k, v, past is None, n)
        y = y.transpose(1, 2).reshape(b, n, w)
        return self.out_drop(self.out(y)), (k, v)


class Block(nn.Module):
    """Pre-norm decoder block: ``h + attn(ln(h))``, then ``h + mlp(ln(h))``."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.ln_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout)
        )

    def forward(
        self, h: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        a, kv = self.attn(self.ln_attn(h), past)
        h = h + a
        return h + self.mlp(self.ln_mlp(h)), kv


class GPT(nn.Module):
    """A decoder-only transformer language model.

    Args:
        vocab_size: the tokenizer's vocabulary size.
        context: the most positions it reads (learned position embeddings).
        width, layers, heads, dropout: its shape.
        tie_weights: the head's weight is the token embedding's.

    Example:
        >>> import torch
        >>> gpt = GPT(300, context=16, width=32, layers=2, heads=4, dropout=0.0)
        >>> gpt(torch.randint(0, 300, (3, 17))).shape
        torch.Size([3, 16])
    """

    def __init__(
        self,
        vocab_size: int,
        context: int,
        width: int,
        layers: int,
        heads: int,
        dropout: float = 0.1,
        tie_weights: bool = True,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.context = context
        self.tokens = nn.Embedding(vocab_size, width)
        self.positions = nn.Embedding(context, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual outputs
            if name.endswith(("attn.out.weight", "mlp.2.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers))
        if tie_weights:
            self.head.weight = self.tokens.weight
        # blocks per evaluation pass (the engine reads it): about 8M logits, 32 MB in fp32
        self.eval_chunk_rows = max(8, (1 << 23) // (context * vocab_size))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def logits(
        self, ids: torch.Tensor, cache: KVCache | None = None, *, last_only: bool = False
    ) -> tuple[torch.Tensor, KVCache]:
        """``ids`` (B, t) int64 → (logits (B, t, V), the cache with these t positions added).

        With ``cache`` the ids continue the cached sequence (positions start after it). The
        cached length plus ``t`` must not pass ``context``: the caller slides its window
        (see :func:`danlu.models._generate.generate`). ``last_only``: the logits of the last
        position only, (B, 1, V) (what generation reads; the head is not run on the others).
        """
        start = 0 if not cache else int(cache[0][0].shape[2])
        if start + ids.shape[1] > self.context:
            raise ValueError(
                f"{start + ids.shape[1]} positions passed the model's context of {self.context} "
                "tokens"
            )
        return self._logits(ids, cache, start, last_only)

    def _logits(
        self, ids: torch.Tensor, cache: KVCache | None, start: int, last_only: bool
    ) -> tuple[torch.Tensor, KVCache]:
        pos = torch.arange(start, start + ids.shape[1], device=ids.device)
        h = self.drop(self.tokens(ids) + self.positions(pos))
        new: KVCache = []
        for i, block in enumerate(self.blocks):
            h, kv = block(h, cache[i] if cache else None)
            new.append(kv)
        if last_only:
            h = h[:, -1:]
        return self.head(self.norm(h)), new

    def decoder(self, batch: int = 1) -> Decoder:
        """A :class:`Decoder` for ``batch`` sequences (generation's fast cached path).

        Example:
            >>> import torch
            >>> gpt = GPT(300, context=16, width=32, layers=2, heads=4, dropout=0.0).eval()
            >>> ids = torch.randint(0, 300, (1, 6))
            >>> with torch.inference_mode():
            ...     dec = gpt.decoder()
            ...     step = dec.feed(ids[:, :5]); step = dec.feed(ids[:, 5:])
            ...     torch.allclose(step, gpt.logits(ids, last_only=True)[0], atol=1e-5)
            True
        """
        return Decoder(self, batch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T+1) token ids → (B, T) NLL in nats of ``x[:, 1:]`` given the tokens before."""
        ids = x.long()
        inputs, targets = ids[:, :-1], ids[:, 1:]
        logits, _ = self._logits(inputs, None, 0, False)  # T ≤ context: the data's blocks
        # -log softmax at the target: cross_entropy(reduction="none") written out, which both
        # ONNX exporters take (the torch.export one mis-decomposes the fused op's reshape)
        logp = torch.log_softmax(logits.float(), dim=-1)
        return -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _plain(module: nn.Module) -> bool:
    """A bare ``nn.Linear`` (not a peft LoRA layer, which must run its adapters)."""
    return type(module) is nn.Linear


class Decoder:
    """The cached decoding of a :class:`GPT` in eval mode, for generation: ``feed(ids)`` adds
    ``ids`` (B, n) to the sequence and returns the last position's logits (B, 1, V).

    Keys and values live in one preallocated tensor per layer, (2, B, heads, context, head
    width), written in place (no concatenation per token); the weights are read once when the
    decoder is made, with the query, key and value weights stacked into one product per layer
    where all three are plain ``nn.Linear`` layers (a LoRA-wrapped projection is called as a
    module, so its adapters apply). ``reset()`` empties the cache (the window jumped). Use it
    under ``torch.inference_mode()`` (as generation does): it computes no gradients.
    """

    def __init__(self, gpt: GPT, batch: int = 1) -> None:
        first = gpt.tokens.weight
        self.context, self.length = gpt.context, 0
        self.tokens, self.positions = gpt.tokens.weight, gpt.positions.weight
        self.norm = (gpt.norm.weight, gpt.norm.bias, gpt.norm.eps)
        self.head = gpt.head
        self.head_weight = gpt.head.weight if _plain(gpt.head) else None
        # per layer: (ln 1, fused qkv or None, attention, out, ln 2, mlp, heads, width)
        self.layers: list[tuple[Any, ...]] = []
        block: Any
        for block in gpt.blocks:
            attn = block.attn
            q, k, v = attn.query, attn.key, attn.value
            fused = None
            if _plain(q) and _plain(k) and _plain(v):
                with torch.no_grad():
                    fused = (
                        torch.cat([q.weight, k.weight, v.weight]),
                        torch.cat([q.bias, k.bias, v.bias]),
                    )
            width = q.in_features
            self.layers.append(
                (
                    (block.ln_attn.weight, block.ln_attn.bias, block.ln_attn.eps),
                    fused,
                    attn,
                    attn.out if not _plain(attn.out) else (attn.out.weight, attn.out.bias),
                    (block.ln_mlp.weight, block.ln_mlp.bias, block.ln_mlp.eps),
                    (block.mlp[0].weight, block.mlp[0].bias, block.mlp[2].weight, block.mlp[2].bias)
                    if _plain(block.mlp[0]) and _plain(block.mlp[2])
                    else block.mlp,
                    attn.heads,
                    width,
                )
            )
        heads, width = self.layers[0][6], self.layers[0][7]
        self.cache = torch.zeros(
            len(self.layers), 2, batch, heads, gpt.context, width // heads,
            dtype=first.dtype, device=first.device,
        )  # fmt: skip
        self._kv = [  # each (B, heads, ctx, hw)
            (self.cache.select(0, i).select(0, 0), self.cache.select(0, i).select(0, 1))
            for i in range(len(self.layers))
        ]

    def reset(self) -> None:
        """Forget the sequence (the cache is overwritten from position 0)."""
        self.length = 0

    def feed(self, ids: torch.Tensor) -> torch.Tensor:
        """Add ``ids`` (B, n) int64 after the sequence so far; the logits of the last position,
        (B, 1, V). Raises ValueError when the sequence would pass the context."""
        b, n = ids.shape
        p, end = self.length, self.length + n
        if end > self.context:
            raise ValueError(f"{end} positions passed the model's context of {self.context} tokens")
        mask = None
        if n > 1 and p > 0:  # the new queries see the cache and the new keys up to themselves
            rows = torch.arange(p, end, device=ids.device).unsqueeze(1)
            mask = torch.arange(end, device=ids.device).unsqueeze(0) <= rows
        # torch.* ops called directly (not their torch.nn.functional wrappers): a one-token step
        # is mostly per-call overhead
        h = torch.embedding(self.tokens, ids) + self.positions[p:end]
        for i, (ln1, fused, attn, out, ln2, mlp, heads, width) in enumerate(self.layers):
            x = torch.layer_norm(h, (width,), ln1[0], ln1[1], ln1[2])
            if fused is not None:
                qkv = F.linear(x, fused[0], fused[1]).view(b, n, 3, heads, width // heads)
            else:
                qkv = torch.stack([attn.query(x), attn.key(x), attn.value(x)], 2).view(
                    b, n, 3, heads, width // heads
                )
            if n == 1:  # (B, 1, 3, heads, hw) holds the same order as (B, 3, heads, 1, hw)
                q, k, v = qkv.view(b, 3, heads, 1, width // heads).unbind(1)
            else:
                q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, n, head width)
            keys, values = self._kv[i]
            keys.narrow(2, p, n).copy_(k)  # in place: narrow/copy_ cost less than slicing
            values.narrow(2, p, n).copy_(v)
            k, v = keys.narrow(2, 0, end), values.narrow(2, 0, end)
            if n > 1 and p == 0:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            # (B, heads, n, hw) → (B, n, width); with n = 1 a reshape alone keeps the order
            y = y.reshape(b, 1, width) if n == 1 else y.transpose(1, 2).reshape(b, n, width)
            h = h + (F.linear(y, out[0], out[1]) if isinstance(out, tuple) else out(y))
            x = torch.layer_norm(h, (width,), ln2[0], ln2[1], ln2[2])
            if isinstance(mlp, tuple):
                h = h + F.linear(F.gelu(F.linear(x, mlp[0], mlp[1])), mlp[2], mlp[3])
            else:
                h = h + mlp(x)
        self.length = end
        h = torch.layer_norm(h[:, -1:], (h.shape[-1],), self.norm[0], self.norm[1], self.norm[2])
        return F.linear(h, self.head_weight) if self.head_weight is not None else self.head(h)
