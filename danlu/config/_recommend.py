"""The ``recommend:`` block of ``task: recommendation`` recipes: which columns of an interactions
table are the user, the item, the rating and the time, how the interactions are split, and how
the ranking is evaluated::

    task: recommendation
    data: {source: examples/data/movielens.parquet}
    recommend:
      user: userId
      item: movieId
      time: timestamp          # leave_last_out: each user's last interaction is the test one
      rating: rating           # optional; with min_rating, lower ratings are not interactions
      min_rating: 4
      split: leave_last_out    # or random (recommend.test / recommend.val shares)
      duplicates: error        # error | aggregate: one interaction per (user, item)
      k: 10                    # Recall@K, NDCG@K, HitRate@K and the served default
      negatives: 4             # sampled negative items per positive in each training batch
      loss: bpr                # or softmax: cross-entropy over every item's score
      evaluation: full         # full: rank every item | sampled: the item among 100 negatives
      item_features: [genres]  # two_tower: item columns it reads ('a|b' strings: multi-hot)
    model: {type: bpr_mf, factors: 64}

Interactions are implicit feedback: a (user, item) pair either happened or not. Users and items
are identified by the values of their columns read as strings (``1`` and ``1.0`` are the same
id); the id maps of the training users and items travel with the model.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["RecommendConfig"]


class RecommendConfig(BaseModel):
    """The interactions table's columns, its split and the ranking's evaluation."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    user: str = Field(description="The user id column.")
    item: str = Field(description="The item id column.")
    time: str | None = Field(
        None,
        description="The interaction time column (numbers or dates); leave_last_out orders "
        "each user's interactions by it.",
    )
    rating: str | None = Field(
        None, description="A rating column (optional); read with min_rating and duplicates."
    )
    min_rating: float | None = Field(
        None,
        description="Keep only interactions whose rating is at least this (needs rating); the "
        "others are dropped (counted in the data report).",
    )
    split: Literal["leave_last_out", "random"] = Field(
        "leave_last_out",
        description="leave_last_out: each user's last interaction (by time) is a test row and "
        "the one before a validation row; random: test / val shares of all interactions.",
    )
    test: Annotated[float, Field(gt=0.0, lt=0.5)] = Field(
        0.1, description="split: random: the share of interactions held out for testing."
    )
    val: Annotated[float, Field(ge=0.0, lt=0.5)] = Field(
        0.1, description="split: random: the share of interactions held out for validation."
    )
    duplicates: Literal["error", "aggregate"] = Field(
        "error",
        description="Several rows for one (user, item) pair: error (refused, with the count "
        "and an example), or aggregate (one interaction: the latest time, the highest rating).",
    )
    k: Annotated[int, Field(ge=1, le=1000)] = Field(
        10, description="The cut-off of Recall@K, NDCG@K, HitRate@K and the served default."
    )
    negatives: Annotated[int, Field(ge=1, le=1000)] = Field(
        4, description="Negative items sampled per positive in each training batch (BPR)."
    )
    loss: Literal["bpr", "softmax"] = Field(
        "bpr",
        description="bpr: -log σ(s_pos - s_neg) over `negatives` sampled items (Rendle et al., "
        "2009); softmax: cross-entropy of the positive among every item's score (the model "
        "scores them all anyway; usually the stronger ranker, Rendle 2021).",
    )
    evaluation: Literal["full", "sampled"] = Field(
        "full",
        description="full: each held-out item is ranked against every item the user has not "
        "interacted with; sampled: against eval_negatives sampled ones (faster, optimistic).",
    )
    eval_negatives: Annotated[int, Field(ge=1, le=100_000)] = Field(
        100, description="evaluation: sampled: negative items ranked with each held-out item."
    )
    user_features: list[str] = Field(
        default_factory=list,
        description="User columns a two_tower model reads (numbers: standardized; text: "
        "one-hot, 'a|b' strings multi-hot).",
    )
    item_features: list[str] = Field(
        default_factory=list,
        description="Item columns a two_tower model reads (numbers: standardized; text: "
        "one-hot, 'a|b' strings multi-hot).",
    )
