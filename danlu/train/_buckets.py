"""Length-bucketed batches: rows of similar token count share a batch, so a text model pads less.

A text model cuts each batch down to its longest row (``danlu/models/_text_nets.py``), so a batch
costs what its longest text costs. A plain shuffle puts a long text in nearly every batch; the
engine instead orders an epoch as the bucketing samplers of fairseq and AllenNLP do:

1. the seeded shuffle, as for any data;
2. chunks of :data:`CHUNK_BATCHES` batches, each sorted by its rows' token counts (a stable
   sort: equal lengths keep the shuffled order);
3. each chunk cut into batches, and the full batches' order shuffled with the same generator
   (a last, partial batch stays last).

Every row is still seen once per epoch, which rows meet in a batch still changes from epoch to
epoch (chunks are drawn from a fresh shuffle), and the order is a function of the generator's
state alone, so a resumed epoch replays it exactly. Evaluation predicts in length order, in
chunks of :data:`EVAL_CHUNK_ROWS` rows, and puts the outputs back in the rows' order.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> lengths = torch.tensor([9, 1, 8, 2, 7, 3, 6, 4])
    >>> order = bucketed_order(torch.randperm(8, generator=g), lengths, 2, g)
    >>> sorted(order.tolist()) == list(range(8))
    True
    >>> [sorted(lengths[b].tolist()) for b in order.split(2)]
    [[8, 9], [6, 7], [1, 2], [3, 4]]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from danlu.data import FeatureSchema

__all__ = ["CHUNK_BATCHES", "EVAL_CHUNK_ROWS", "bucketed_order", "token_lengths"]

#: Batches per sorted chunk: enough for batches of even length, few enough that an epoch's
#: batches still mix rows from all over the data.
CHUNK_BATCHES = 50
#: Rows per forward pass when a text model predicts in length order.
EVAL_CHUNK_ROWS = 256


def token_lengths(x: np.ndarray | torch.Tensor, schema: FeatureSchema) -> torch.Tensor | None:
    """Each row's real tokens (ids other than padding, summed over the text columns): (N,)
    int64 on the CPU; None when the schema has no text column."""
    slices = schema.text_slices()
    if not slices:
        return None
    x_t = torch.as_tensor(x)
    total = torch.zeros(len(x_t), dtype=torch.int64, device=x_t.device)
    for text in slices:
        total += (x_t[:, text.start : text.stop] != text.pad_id).sum(1)
    return total.cpu()


def bucketed_order(
    order: torch.Tensor,
    lengths: torch.Tensor,
    batch_rows: int,
    generator: torch.Generator,
    chunk_batches: int = CHUNK_BATCHES,
) -> torch.Tensor:
    """The shuffled index ``order`` (N,) rearranged into length buckets (see the module).

    Args:
        order: an epoch's shuffled row index (N,).
        lengths: every row's token count (N_rows,), indexed by ``order``'s values.
        batch_rows: rows per batch over all ranks (``batch_size × world_size``: a rank's share
            of one such batch, taken by ``Strategy.shard``'s stride, is that rank's batch).
        generator: draws the batches' order (the epoch's shuffle generator).
        chunk_batches: batches per sorted chunk.

    Returns:
        The same rows (N,), in batches of similar length, a partial batch last.
    """
    n = len(order)
    chunk = torch.arange(n) // (batch_rows * chunk_batches)  # (N,) each position's chunk
    by_length = lengths[order].to(torch.int64)
    key = chunk * (int(by_length.max()) + 1 if n else 1) + by_length  # chunk first, then length
    ordered = order[torch.argsort(key, stable=True)]
    full = n // batch_rows
    batches = ordered[: full * batch_rows].view(full, batch_rows)  # (full, batch_rows)
    shuffled = batches[torch.randperm(full, generator=generator)].reshape(-1)
    return torch.cat([shuffled, ordered[full * batch_rows :]])
