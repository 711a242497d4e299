"""Recommenders for ``task: recommendation``: BPR matrix factorisation and a two-tower model.

Both map a user's code, (N, 1) float32 (the ordinal id the preprocessing gives; ``n_users`` for
a user not seen in training), to the score of every training item, (N, n_items). The unknown
user's vector is zero and never trained, so its scores are the item biases alone (serving
answers an unknown user with the popularity fallback before asking the model). Everything is an
embedding lookup and a matrix product, so both export to ONNX unchanged.

``two_tower`` adds feature columns (``recommend.user_features`` / ``item_features``): each
tower sums an id embedding and an MLP of the entity's features; the feature tables are buffers
of the model, saved with its weights. Their widths are read from the data when the model is
built for training and recorded in the model's options (``user_feature_dim``,
``item_feature_dim``), so a stored model is rebuilt with the same shapes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, cast

from pydantic import Field

from danlu.errors import ConfigError
from danlu.models._common import ModelSpec

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from danlu.data import FeatureSchema
    from danlu.tasks import Task

__all__ = ["BPRMFSpec", "TwoTowerSpec", "build_bpr_mf", "build_two_tower"]


class BPRMFSpec(ModelSpec):
    factors: Annotated[int, Field(gt=0, le=4096)] = Field(
        64, description="Width of the user and item vectors."
    )
    init_std: Annotated[float, Field(gt=0.0)] = Field(
        0.01, description="Standard deviation of the vectors' normal initialisation."
    )


class TwoTowerSpec(ModelSpec):
    factors: Annotated[int, Field(gt=0, le=4096)] = Field(
        64, description="Width of the user and item representations."
    )
    hidden: Annotated[int, Field(gt=0, le=8192)] = Field(
        128, description="Hidden width of each tower's feature MLP."
    )
    ids: bool = Field(
        True,
        description="Add a learned id embedding to each tower (false: features alone, which "
        "generalise to items with few interactions).",
    )
    init_std: Annotated[float, Field(gt=0.0)] = Field(
        0.01, description="Standard deviation of the id embeddings' initialisation."
    )
    user_feature_dim: Annotated[int, Field(ge=0)] = Field(
        0, description="Set from the data when training (the user feature table's width)."
    )
    item_feature_dim: Annotated[int, Field(ge=0)] = Field(
        0, description="Set from the data when training (the item feature table's width)."
    )


def _sizes(name: str, schema: FeatureSchema, task: Task) -> tuple[int, int]:
    if task.name != "recommendation":
        raise ConfigError(
            f"model type '{name}' scores items for users; it needs task: recommendation, not "
            f"'{task.name}'. Set task: recommendation or choose another model."
        )
    return len(schema.features[0].categories), len(schema.classes or ())


def _embedding(rows: int, width: int, std: float, pad: bool = True) -> nn.Embedding:
    import torch
    import torch.nn as nn

    table = nn.Embedding(rows, width)
    nn.init.normal_(table.weight, std=std)
    if pad:
        with torch.no_grad():
            table.weight[-1].zero_()  # the unknown user's row: no interaction trains it
    return table


def build_bpr_mf(spec: BPRMFSpec, schema: FeatureSchema, task: Task) -> nn.Module:
    """Matrix factorisation: ``score(u, i) = p_u · q_i + b_i``, trained with the BPR loss.

    Example:
        >>> # build_bpr_mf(BPRMFSpec(factors=32), prepared.schema, task)
    """
    import torch
    import torch.nn as nn

    n_users, n_items = _sizes("bpr_mf", schema, task)

    class BPRMF(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.users = _embedding(n_users + 1, spec.factors, spec.init_std)  # last: unknown
            self.items = _embedding(n_items, spec.factors, spec.init_std, pad=False)
            self.item_bias = nn.Parameter(torch.zeros(n_items))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            u = x[:, 0].long().clamp(0, n_users)  # (N,) codes; n_users: unknown
            return self.users(u) @ self.items.weight.T + self.item_bias  # (N, n_items)

    return BPRMF()


def build_two_tower(spec: TwoTowerSpec, schema: FeatureSchema, task: Task) -> nn.Module:
    """A user tower and an item tower, each an id embedding plus an MLP of the entity's feature
    columns; the score is the dot product of the two representations.

    Example:
        >>> # build_two_tower(TwoTowerSpec(factors=32), prepared.schema, task)
    """
    import torch
    import torch.nn as nn

    n_users, n_items = _sizes("two_tower", schema, task)
    user_table = getattr(task, "user_table", None)  # training: the data's; reloading: None
    item_table = getattr(task, "item_table", None)
    if user_table is not None:
        spec.user_feature_dim = int(user_table.shape[1])
    if item_table is not None:
        spec.item_feature_dim = int(item_table.shape[1])
    du, di = spec.user_feature_dim, spec.item_feature_dim
    if not spec.ids and not (du and di):
        raise ConfigError(
            "model.ids: false leaves a tower with nothing to read: two_tower without ids needs "
            "both recommend.user_features and recommend.item_features. Set model.ids: true."
        )

    def tower(width: int) -> nn.Module:
        return nn.Sequential(
            nn.Linear(width, spec.hidden), nn.ReLU(), nn.Linear(spec.hidden, spec.factors)
        )

    class TwoTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.users = _embedding(n_users + 1, spec.factors, spec.init_std) if spec.ids else None
            self.items = (
                _embedding(n_items, spec.factors, spec.init_std, pad=False) if spec.ids else None
            )
            self.user_mlp = tower(du) if du else None
            self.item_mlp = tower(di) if di else None
            ut = torch.zeros(n_users + 1, du) if user_table is None else torch.as_tensor(user_table)
            it = torch.zeros(n_items, di) if item_table is None else torch.as_tensor(item_table)
            self.register_buffer("user_features", ut.float())  # (n_users + 1, du)
            self.register_buffer("item_features", it.float())  # (n_items, di)
            self.item_bias = nn.Parameter(torch.zeros(n_items))

        def item_vectors(self) -> torch.Tensor:
            parts = []
            if self.items is not None:
                parts.append(self.items.weight)
            if self.item_mlp is not None:
                parts.append(self.item_mlp(cast("torch.Tensor", self.item_features)))
            return torch.stack(parts).sum(0)  # (n_items, F)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            u = x[:, 0].long().clamp(0, n_users)  # (N,)
            parts = []
            if self.users is not None:
                parts.append(self.users(u))
            if self.user_mlp is not None:
                table = cast("torch.Tensor", self.user_features)  # (n_users + 1, du)
                parts.append(self.user_mlp(table[u]))
            user = torch.stack(parts).sum(0)  # (N, F)
            return user @ self.item_vectors().T + self.item_bias  # (N, n_items)

    return TwoTower()
