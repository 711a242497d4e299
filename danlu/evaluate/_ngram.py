"""Count-based language-model baselines on token ids: add-one unigram, interpolated Kneser-Ney.

Both are fitted on a token stream (the training split's blocks, joined back) and score the same
packed blocks the neural model scores, target by target with the same in-block history, so
their per-token negative log-likelihoods ``(n, T)`` go through the task's metrics unchanged
(perplexity, bits per byte) and pair with the model's row by row.

:class:`KneserNey` is interpolated Kneser-Ney (Chen & Goodman 1998, one discount per order,
``D = n1 / (n1 + 2 n2)`` from the counts of n-grams seen once and twice): the order that a
target's history reaches uses raw counts, every lower order the continuation counts (how many
distinct tokens precede the n-gram), and order 1 interpolates with the uniform distribution, so
every token of the vocabulary has a probability and they sum to 1. N-grams are packed into
int64 keys (``bits`` per token) and looked up with ``searchsorted``: fitting a million tokens
takes seconds, with numpy only.

Example:
    >>> import numpy as np
    >>> kn = KneserNey(order=3, vocab_size=5).fit(np.array([0, 1, 2, 1, 2, 3, 0, 1, 2]))
    >>> round(float(kn.prob(np.array([[0, 1, 2]]))[0].sum()), 6)  # P(w | 0 1) over w sums to 1
    1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["KneserNey", "Unigram", "block_nll", "training_stream"]


def training_stream(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The token stream that packed blocks were cut from: the first block's first id, then
    every block's real targets (``y > 0``), (L,) int64.

    Example:
        >>> training_stream(np.array([[0., 1, 2], [2, 3, 9]]), np.array([[1., 1], [1, 0]])).tolist()
        [0, 1, 2, 3]
    """
    x = np.asarray(x).astype(np.int64)
    if not len(x):
        return np.zeros(0, dtype=np.int64)
    targets = x[:, 1:][np.asarray(y) > 0]  # row-major: block by block
    return np.concatenate([x[:1, 0], targets])


class Unigram:
    """Add-one smoothed unigram: ``P(w) = (count(w) + 1) / (N + V)``.

    Example:
        >>> Unigram(4).fit(np.array([0, 1, 1])).prob(np.zeros((1, 0), np.int64)).tolist()
        [[0.2857142857142857, 0.42857142857142855, 0.14285714285714285, 0.14285714285714285]]
    """

    name = "unigram (add-one)"

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = int(vocab_size)

    def fit(self, stream: np.ndarray) -> Unigram:
        counts = np.bincount(np.asarray(stream, np.int64), minlength=self.vocab_size)
        self.log_p_ = np.log((counts[: self.vocab_size] + 1.0) / (len(stream) + self.vocab_size))
        return self

    def prob(self, histories: np.ndarray) -> np.ndarray:
        """P(w | history) for every w: (n, V) (the history is not read)."""
        return np.tile(np.exp(self.log_p_), (len(histories), 1))

    def nll(self, histories: list[np.ndarray], targets: np.ndarray) -> np.ndarray:
        return -self.log_p_[np.asarray(targets, np.int64)]


@dataclass
class _Table:
    """One order's n-gram counts: sorted keys and counts, and per history (the key without its
    last token) the total count and the number of distinct next tokens."""

    keys: np.ndarray  # (G,) int64 sorted
    counts: np.ndarray  # (G,) float64
    hist: np.ndarray  # (H,) int64 sorted history keys
    total: np.ndarray  # (H,) float64
    types: np.ndarray  # (H,) float64
    discount: float

    @classmethod
    def of(cls, keys: np.ndarray, counts: np.ndarray, bits: int) -> _Table:
        hist_of = keys >> bits
        hist, start = np.unique(hist_of, return_index=True)  # keys sorted: histories contiguous
        total = np.add.reduceat(counts, start) if len(keys) else np.zeros(0)
        types = np.diff(np.append(start, len(keys))).astype(np.float64)
        n1, n2 = float((counts == 1).sum()), float((counts == 2).sum())
        discount = n1 / (n1 + 2 * n2) if n1 + n2 > 0 and n1 > 0 else 0.75
        return cls(keys, counts, hist, total, types, min(max(discount, 0.05), 0.95))

    def lookup(self, sorted_keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
        if not len(sorted_keys):
            return np.zeros(len(query))
        at = np.minimum(np.searchsorted(sorted_keys, query), len(sorted_keys) - 1)
        return np.where(sorted_keys[at] == query, values[at], 0.0)

    def count(self, query: np.ndarray) -> np.ndarray:
        return self.lookup(self.keys, self.counts, query)

    def history(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (
            self.lookup(self.hist, self.total, query),
            self.lookup(self.hist, self.types, query),
        )


class KneserNey:
    """Interpolated Kneser-Ney n-gram model over token ids ``0 … vocab_size - 1``.

    Args:
        order: the n of the n-gram (the history holds ``order - 1`` tokens at most).
        vocab_size: the vocabulary size V (order 1 interpolates with ``1 / V``).

    The order is lowered (with ``order_used`` saying so) when ``order`` n-grams of
    ``ceil(log2 V)``-bit ids do not fit 62 bits.
    """

    name = "Kneser-Ney n-gram"

    def __init__(self, order: int = 5, vocab_size: int = 4096) -> None:
        self.order, self.vocab_size = int(order), int(vocab_size)
        self.bits = max(1, math.ceil(math.log2(max(self.vocab_size, 2))))
        self.order_used = max(1, min(self.order, 62 // self.bits))
        self.name = f"Kneser-Ney {self.order_used}-gram"

    def _keys(self, stream: np.ndarray, k: int) -> np.ndarray:
        """The packed key of each k-gram of ``stream`` (ending at positions k-1 …)."""
        keys = np.zeros(len(stream) - k + 1, dtype=np.int64)
        for j in range(k):
            keys = (keys << self.bits) | stream[j : len(stream) - k + 1 + j]
        return keys

    def fit(self, stream: np.ndarray) -> KneserNey:
        """Count every n-gram of ``stream`` up to the order: raw counts (the order a history
        reaches) and continuation counts (the orders below it)."""
        stream = np.asarray(stream, dtype=np.int64)
        self.raw_: dict[int, _Table] = {}
        self.cont_: dict[int, _Table] = {}
        uniques: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for k in range(1, self.order_used + 1):
            if len(stream) < k:
                keys, counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
            else:
                keys, counts = np.unique(self._keys(stream, k), return_counts=True)
            uniques[k] = (keys, counts)
            self.raw_[k] = _Table.of(keys, counts.astype(np.float64), self.bits)
        for k in range(1, self.order_used):
            longer = uniques[k + 1][0]  # distinct (k+1)-grams → their last k tokens
            suffix = longer & ((1 << (self.bits * k)) - 1)
            keys, counts = np.unique(suffix, return_counts=True)
            self.cont_[k] = _Table.of(keys, counts.astype(np.float64), self.bits)
        return self

    def _p(self, hist_keys: list[np.ndarray], targets: np.ndarray, top: np.ndarray) -> np.ndarray:
        """P(target | history) for each row; ``hist_keys[j]`` packs the last j history tokens,
        ``top`` is each row's highest order (raw counts there, continuation counts below)."""
        targets = np.asarray(targets, dtype=np.int64)
        p = np.full(len(targets), 1.0 / self.vocab_size)
        for k in range(1, self.order_used + 1):
            rows = top >= k
            if not rows.any():
                break
            table_raw = self.raw_[k]
            table = self.cont_.get(k, table_raw)
            use_raw = top[rows] == k
            h = hist_keys[k - 1][rows]
            key = (h << self.bits) | targets[rows]
            count = np.where(use_raw, table_raw.count(key), table.count(key))
            total_raw, types_raw = table_raw.history(h)
            total_cont, types_cont = table.history(h)
            total = np.where(use_raw, total_raw, total_cont)
            types = np.where(use_raw, types_raw, types_cont)
            discount = np.where(use_raw, table_raw.discount, table.discount)
            lower = p[rows]
            seen = total > 0
            mixed = np.where(
                seen,
                np.maximum(count - discount, 0.0) / np.maximum(total, 1.0)
                + discount * types / np.maximum(total, 1.0) * lower,
                lower,
            )
            p[rows] = mixed
        return p

    def block_nll(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-token NLL (nats) of each block's targets given the tokens before them in the
        block (as the neural model sees them), (n, T); 0 where ``y`` is 0 (padding)."""
        x = np.asarray(x).astype(np.int64)
        n, width = x.shape
        t_len = width - 1
        out = np.zeros((n, t_len))
        m = self.order_used - 1
        for t in range(t_len):  # target x[:, t + 1], history x[:, : t + 1]
            reach = min(t + 1, m)  # history tokens available to the n-gram
            hist_keys = [np.zeros(n, dtype=np.int64)]
            key = np.zeros(n, dtype=np.int64)
            for j in range(1, reach + 1):  # key of the last j tokens: prepend token t + 1 - j
                key = key | (x[:, t + 1 - j] << (self.bits * (j - 1)))
                hist_keys.append(key.copy())
            top = np.full(n, reach + 1)
            p = self._p(hist_keys, x[:, t + 1], top)
            out[:, t] = -np.log(np.maximum(p, 1e-300))
        return np.where(np.asarray(y) > 0, out, 0.0)

    def prob(self, histories: np.ndarray) -> np.ndarray:
        """P(w | history) for every w of the vocabulary, (n, V), for rows of history tokens
        (n, h) (the last ``order - 1`` are read)."""
        histories = np.asarray(histories, dtype=np.int64)
        n = len(histories)
        reach = min(histories.shape[1], self.order_used - 1)
        out = np.zeros((n, self.vocab_size))
        for i in range(n):
            hist_keys = [np.zeros(self.vocab_size, dtype=np.int64)]
            key = 0
            for j in range(1, reach + 1):
                key |= int(histories[i, -j]) << (self.bits * (j - 1))
                hist_keys.append(np.full(self.vocab_size, key, dtype=np.int64))
            top = np.full(self.vocab_size, reach + 1)
            out[i] = self._p(hist_keys, np.arange(self.vocab_size), top)
        return out


def block_nll(model: Unigram | KneserNey, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A baseline's per-token NLL of packed blocks, (n, T), 0 on padding."""
    if isinstance(model, KneserNey):
        return model.block_nll(x, y)
    x = np.asarray(x).astype(np.int64)
    nll = -model.log_p_[x[:, 1:]]
    return np.where(np.asarray(y) > 0, nll, 0.0)
