"""Ranking metrics of a recommender: Recall@K, NDCG@K, HitRate@K, MRR and catalogue coverage.

Every function takes the scores of every item for each evaluated row, ``(n, n_items)``, and the
rows' held-out items. Items the user interacted with in earlier stages (``exclude``, a boolean
mask per row) are taken out of the ranking — a recommender is not credited for recommending what
the user already has. Ties are broken by item index, as a stable sort would, so a constant
scorer gains nothing from ties.

Full ranking (the default) ranks a held-out item against every other item; sampled ranking
against ``negatives`` items drawn per row among those the user never interacted with — cheaper,
and optimistic (Krichene & Rendle, 2020): the report says which was used.

Rows are grouped into queries, one per (user, stage): a user with several held-out items (a
random split) is one query whose relevant set holds them all; with leave-last-out each query
holds one item. Metrics are means over queries.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["coverage", "item_positions", "query_metrics", "top_k"]


def item_positions(scores: np.ndarray, items: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """0-based position of each row's item in its row's ranking of the non-excluded items.

    Args:
        scores: (n, n_items) float scores.
        items: (n,) the held-out item of each row.
        exclude: (n, n_items) bool, items left out of each row's ranking (never the row's own).

    Example:
        >>> item_positions(np.array([[0.1, 0.9, 0.5]]), np.array([2]),
        ...                np.array([[False, True, False]])).tolist()
        [0]
    """
    n = len(items)
    target = scores[np.arange(n), items][:, None]  # (n, 1)
    index = np.arange(scores.shape[1])[None, :]  # (1, n_items)
    ahead = (scores > target) | ((scores == target) & (index < items[:, None]))  # (n, n_items)
    ahead &= ~exclude
    return ahead.sum(axis=1).astype(np.int64)


def _dcg_discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def query_metrics(positions: np.ndarray, queries: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per query: recall, ndcg, hit_rate (at ``k``) and reciprocal rank, from each row's
    position in the ranking where its query's other relevant items compete too.

    Args:
        positions: (n,) 0-based positions (:func:`item_positions`, others relevant included).
        queries: (n,) query id of each row (0..Q-1).
        k: the cut-off.

    Returns:
        name → (Q,) values, and ``rows``: (n,) each row's query value of NDCG@k.

    Example:
        >>> out = query_metrics(np.array([0, 3]), np.array([0, 1]), k=2)
        >>> out["hit_rate"].tolist(), out["recall"].tolist()
        ([1.0, 0.0], [1.0, 0.0])
    """
    q = int(queries.max()) + 1 if len(queries) else 0
    size = np.bincount(queries, minlength=q).astype(np.float64)  # relevant items per query
    hits = np.bincount(queries, weights=(positions < k).astype(np.float64), minlength=q)
    gains = np.where(positions < k, 1.0 / np.log2(positions + 2.0), 0.0)
    dcg = np.bincount(queries, weights=gains, minlength=q)
    ideal_cum = np.r_[0.0, np.cumsum(_dcg_discounts(k))]  # IDCG of m relevant items, m ≤ k
    idcg = ideal_cum[np.minimum(size, k).astype(np.int64)]
    best = np.full(q, np.iinfo(np.int64).max)
    np.minimum.at(best, queries, positions)
    ndcg = np.divide(dcg, idcg, out=np.zeros(q), where=idcg > 0)
    return {
        "recall": hits / np.maximum(np.minimum(size, k), 1.0),
        "ndcg": ndcg,
        "hit_rate": (hits > 0).astype(np.float64),
        "mrr": 1.0 / (best.astype(np.float64) + 1.0),
        "rows": ndcg[queries] if q else np.zeros(0),
    }


def top_k(scores: np.ndarray, exclude: np.ndarray | None, k: int) -> np.ndarray:
    """Each row's ``k`` best items (best first; ties by item index), excluded items left out:
    (n, k) int64.

    Example:
        >>> top_k(np.array([[0.1, 0.9, 0.5]]), np.array([[False, True, False]]), 2).tolist()
        [[2, 0]]
    """
    masked = scores.astype(np.float64, copy=True)
    if exclude is not None:
        masked[exclude] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-masked, k - 1, axis=1)[:, :k] if k < scores.shape[1] else None
    if part is None:
        part = np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    rows = np.arange(len(scores))[:, None]
    order = np.lexsort((part, -masked[rows, part]), axis=1)
    return np.asarray(part[rows, order], dtype=np.int64)


def coverage(top: np.ndarray, n_items: int) -> float:
    """Catalogue coverage: the share of items recommended to at least one row.

    Example:
        >>> coverage(np.array([[0, 1], [1, 2]]), 4)
        0.75
    """
    return float(len(np.unique(top)) / max(n_items, 1))


def popular_share(top: np.ndarray, popularity: np.ndarray, share: float = 0.1) -> float:
    """The share of recommendations among the ``share`` most popular items (training counts).

    Example:
        >>> popular_share(np.array([[0, 1]]), np.array([10.0, 1.0, 1.0, 1.0]), 0.25)
        0.5
    """
    n = len(popularity)
    head = np.argsort(-popularity, kind="stable")[: max(int(np.ceil(share * n)), 1)]
    return float(np.isin(top, head).mean()) if top.size else float("nan")


def summarize(values: dict[str, np.ndarray], k: int) -> dict[str, Any]:
    """Means over queries, named with the cut-off: ``recall_at_k`` …"""
    return {
        "recall_at_k": float(values["recall"].mean()) if len(values["recall"]) else float("nan"),
        "ndcg_at_k": float(values["ndcg"].mean()) if len(values["ndcg"]) else float("nan"),
        "hit_rate_at_k": float(values["hit_rate"].mean())
        if len(values["hit_rate"])
        else float("nan"),
        "mrr": float(values["mrr"].mean()) if len(values["mrr"]) else float("nan"),
    }
