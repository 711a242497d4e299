"""Low-rank factorisation of Linear layers: ``W ≈ U_r·S_r·V_rᵀ`` from the truncated SVD, as two
Linear layers ``in → r`` (no bias) and ``r → out`` (the original bias).

A layer of ``in × out`` weights becomes ``r·(in + out)`` weights, so a layer is factorised only
where that is fewer. By the Eckart–Young theorem the product of the two factors is the best
rank-``r`` approximation of ``W``: its Frobenius error is the norm of the singular values left
out. The model card of a factorised model lists ``{module path: rank}`` under ``low_rank``, and
:func:`factorize_structure` rebuilds the same structure (without weights) before its tensors
are loaded (``_compressed.py``).

Imported lazily (it imports torch): ``danlu.compress`` and ``load_bundle`` reach it inside
functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from danlu.errors import StoreError

__all__ = ["LowRankLinear", "factorize", "factorize_structure", "keep_rank", "linear_layers"]


class LowRankLinear(nn.Module):
    """``second(first(x))``: a Linear layer of rank ``rank``, ``in → rank → out``.

    Example:
        >>> layer = LowRankLinear(64, 32, rank=4)
        >>> layer(torch.zeros(2, 64)).shape
        torch.Size([2, 32])
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False)  # (r, in) = √S_r·V_rᵀ
        self.second = nn.Linear(rank, out_features, bias=bias)  # (out, r) = U_r·√S_r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))  # (..., in) → (..., r) → (..., out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """The plain ``nn.Linear`` layers of ``model`` by module path (subclasses such as attention's
    output projection, whose weights other code reads directly, are left out)."""
    return {
        name: module
        for name, module in model.named_modules()
        if type(module) is nn.Linear and name  # noqa: E721 - exactly Linear, not a subclass
    }


def keep_rank(singular: torch.Tensor, *, rank: int | None, energy: float | None) -> int:
    """How many singular values to keep: ``rank`` (at most all of them), or the fewest whose
    squares hold ``energy`` of the sum of squares (``singular`` sorted, largest first)."""
    if rank is not None:
        return max(1, min(rank, len(singular)))
    if energy is None:
        raise ValueError("give rank or energy")
    power = singular.double() ** 2
    share = torch.cumsum(power, 0) / power.sum().clamp_min(1e-300)
    # the first index whose cumulative share reaches energy (a rounding margin at 1.0)
    return int(min(len(singular), int((share < energy - 1e-12).sum().item()) + 1))


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, module)


def factorize(
    model: nn.Module,
    *,
    rank: int | None = None,
    energy: float | None = None,
    min_features: int = 32,
) -> dict[str, int]:
    """Replace, in place, each ``nn.Linear`` whose smaller side is at least ``min_features`` by
    a :class:`LowRankLinear` of its truncated SVD, where that has fewer weights
    (``r·(in + out) < in·out``). Returns ``{module path: rank}`` of the layers replaced.

    Args:
        rank: keep this many singular values in every layer.
        energy: keep the fewest singular values holding this share of each layer's squared
            singular values (e.g. 0.9). Exactly one of ``rank`` and ``energy``.
        min_features: layers with ``min(in, out)`` below this are left whole.

    Example:
        >>> net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        >>> factorize(net, rank=8)
        {'0': 8}
    """
    if (rank is None) == (energy is None):
        raise ValueError("factorize needs exactly one of rank and energy")
    ranks: dict[str, int] = {}
    for path, layer in linear_layers(model).items():
        n_out, n_in = layer.weight.shape  # (out, in)
        if min(n_in, n_out) < min_features:
            continue
        weight = layer.weight.detach()
        u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)  # (out,k) (k,) (k,in)
        r = keep_rank(s, rank=rank, energy=energy)
        if r * (n_in + n_out) >= n_in * n_out:
            continue  # no smaller than the layer it replaces
        root = s[:r].sqrt()
        low = LowRankLinear(n_in, n_out, r, bias=layer.bias is not None)
        low = low.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            low.first.weight.copy_(root[:, None] * vh[:r])  # (r, in)
            low.second.weight.copy_(u[:, :r] * root[None, :])  # (out, r)
            if layer.bias is not None:
                assert low.second.bias is not None
                low.second.bias.copy_(layer.bias.detach())
        low.train(layer.training)
        _replace(model, path, low)
        ranks[path] = r
    return ranks


def factorize_structure(model: nn.Module, ranks: Mapping[str, Any], where: str) -> nn.Module:
    """Give ``model`` the factorised layers a card's ``low_rank`` lists, without their weights
    (they are loaded next); returns ``model``.

    Raises:
        StoreError: ``ranks`` is not a ``{path: rank}`` mapping, a path is not a plain Linear
            layer of the model, or a rank is not a whole number in 1 … min(in, out).
    """
    if not isinstance(ranks, Mapping):
        raise StoreError(
            f"{where}: the model card's low_rank must map module paths to ranks; got "
            f"{type(ranks).__name__}."
        )
    for path, rank in ranks.items():
        try:
            layer = model.get_submodule(str(path)) if path else None
        except AttributeError:
            layer = None
        if type(layer) is not nn.Linear:  # noqa: E721 - exactly what factorize replaces
            found = "nothing" if layer is None else type(layer).__name__
            raise StoreError(
                f"{where}: the model card's low_rank names {path!r}, which is {found} in this "
                "model, not a Linear layer: the card does not describe this architecture."
            )
        n_out, n_in = layer.weight.shape
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(n_in, n_out):
            raise StoreError(
                f"{where}: the model card's low_rank gives {path!r} rank {rank!r}; it must be a "
                f"whole number from 1 to {min(n_in, n_out)}."
            )
        low = LowRankLinear(n_in, n_out, rank, bias=layer.bias is not None)
        _replace(model, str(path), low.to(device=layer.weight.device, dtype=layer.weight.dtype))
    return model
