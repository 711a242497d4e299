"""On-the-fly augmentation of training batches (``data.augment``), in plain torch ops.

Images (rows that form ``image_shape``): rotate, shift, scale (zoom), shear — combined into one
random affine warp per sample (``affine_grid`` + ``grid_sample``) — then horizontal flip and cutout.
Any numeric data: Gaussian noise and mixup. The engine applies the augmenter to training batches
only; validation, test and prediction never see it.

Randomness comes from a generator seeded by ``(seed, step)``, so a batch's augmentation depends on
nothing but the run's seed and the batch's position: a resumed run augments exactly like an
uninterrupted one, with no extra state in the checkpoint.

torch is imported inside the functions that need it: importing ``danlu.data`` stays torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from danlu.config import IMAGE_ONLY_AUGMENTS, AugmentStep
from danlu.errors import DataError

if TYPE_CHECKING:
    import torch

__all__ = ["Augmenter", "Mix", "check_augment"]

_GEOMETRIC = ("rotate", "shift", "scale", "shear")


def check_augment(
    steps: Sequence[AugmentStep], image_shape: Sequence[int] | None, text: Sequence[str] = ()
) -> None:
    """Raise DataError when a step does not fit the data (an image augmentation on tabular rows;
    noise or mixup on rows holding token ids of the ``text`` columns, which must stay ids).

    Example:
        >>> check_augment([AugmentStep(noise=0.1)], None)  # noise fits any numeric data
        >>> check_augment([AugmentStep(rotate=10)], None)  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        danlu.errors.DataError: data.augment[0] (rotate) needs image data ...
    """
    for i, step in enumerate(steps):
        if text:
            shown = ", ".join(f"'{name}'" for name in text)
            raise DataError(
                f"data.augment[{i}] ({step.kind}) changes the numbers of a row, and the rows "
                f"hold token ids of text column(s) {shown}, which must stay whole ids. Remove "
                "data.augment for text data."
            )
        if step.kind in IMAGE_ONLY_AUGMENTS and image_shape is None:
            raise DataError(
                f"data.augment[{i}] ({step.kind}) needs image data, but these rows are tabular "
                "(no image shape). Use noise or mixup for tabular data, or set data.image_shape "
                "(e.g. [1, 8, 8]) if the columns are pixels."
            )
        if step.kind in IMAGE_ONLY_AUGMENTS and image_shape is not None and len(image_shape) != 3:
            raise DataError(
                f"data.augment[{i}] ({step.kind}) needs images shaped (channels, height, width); "
                f"the image shape is {list(image_shape)}. Set data.image_shape to three numbers."
            )


@dataclass(frozen=True)
class Mix:
    """A mixup draw: the batch became ``lam * x + (1 - lam) * x[perm]``; mix the loss the same way."""

    lam: float
    perm: torch.Tensor  # (B,) int64


class Augmenter:
    """Applies a recipe's ``data.augment`` steps to a training batch.

    Args:
        steps: the validated steps (``AugmentStep``), in any order; they run in a fixed order:
            the affine warp, flip, cutout, noise, mixup.
        image_shape: ``(C, H, W)`` of one row, required by the image steps.
        seed: the run's seed.

    Example:
        >>> import torch
        >>> aug = Augmenter([AugmentStep(rotate=15), AugmentStep(noise=0.1)], (1, 8, 8), seed=0)
        >>> x = torch.rand(4, 64)
        >>> out, mix = aug(x, step=0)
        >>> out.shape, mix is None, torch.equal(out, aug(x, step=0)[0])
        (torch.Size([4, 64]), True, True)
    """

    def __init__(
        self, steps: Sequence[AugmentStep], image_shape: Sequence[int] | None, seed: int
    ) -> None:
        check_augment(steps, image_shape)
        self.steps = list(steps)
        self.image_shape = None if image_shape is None else tuple(int(s) for s in image_shape)
        self.seed = seed
        by_kind = {s.kind: s for s in self.steps}  # one step per kind; the last one wins
        self._geometric = {k: by_kind[k] for k in _GEOMETRIC if k in by_kind}
        self._hflip = by_kind.get("hflip")
        self._cutout = by_kind.get("cutout")
        self._noise = by_kind.get("noise")
        self._mixup = by_kind.get("mixup")

    def __bool__(self) -> bool:
        return bool(self.steps)

    def __call__(self, x: torch.Tensor, step: int) -> tuple[torch.Tensor, Mix | None]:
        """Augment a batch ``x`` of shape (B, D); ``step`` is the batch's global position."""
        import torch

        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + step) % (2**63))
        b = x.shape[0]
        if self.image_shape is not None and (self._geometric or self._hflip or self._cutout):
            img = x.reshape(b, *self.image_shape)  # (B, C, H, W)
            if self._geometric:
                img = self._warp(img, gen)
            if self._hflip is not None:
                flip = _chosen(b, self._hflip.p, gen, x.device)
                img = torch.where(flip[:, None, None, None], img.flip(-1), img)
            if self._cutout is not None:
                img = self._erase(img, self._cutout, gen)
            x = img.reshape(b, -1)
        if self._noise is not None:
            noise = torch.randn(x.shape, generator=gen).to(x.device, x.dtype)
            keep = _chosen(b, _p(self._noise), gen, x.device)[:, None]
            x = x + torch.where(keep, noise * float(self._noise.noise or 0.0), 0.0)
        mix = None
        if self._mixup is not None and b > 1:
            use = float(torch.rand((), generator=gen)) < self._mixup.p
            if use:
                alpha = float(self._mixup.mixup or 1.0)
                lam = _beta(alpha, gen)
                perm = torch.randperm(b, generator=gen).to(x.device)
                x = lam * x + (1.0 - lam) * x[perm]
                mix = Mix(lam, perm)
        return x, mix

    def _warp(self, img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One random affine warp per sample: rotation, zoom, shear, then shift."""
        import torch
        import torch.nn.functional as F

        b = img.shape[0]

        def uniform(limit: float) -> torch.Tensor:  # (B,) in [-limit, limit]
            return (torch.rand(b, generator=gen, dtype=torch.float64) * 2 - 1) * limit

        g = self._geometric
        angle = uniform(math.radians(g["rotate"].rotate or 0.0)) if "rotate" in g else None
        zoom = 1 + uniform(g["scale"].scale or 0.0) if "scale" in g else None
        shear = uniform(math.radians(g["shear"].shear or 0.0)) if "shear" in g else None
        # affine_grid maps output to input coordinates in [-1, 1]: a shift of s × size is 2s.
        shift = (
            torch.stack([uniform(2 * (g["shift"].shift or 0.0)) for _ in range(2)], 1)
            if "shift" in g
            else None
        )
        theta = torch.zeros(b, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        if angle is not None:
            cos, sin = angle.cos(), angle.sin()
            rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
            theta[:, :, :2] = rot @ theta[:, :, :2]
        if shear is not None:
            sh = torch.zeros(b, 2, 2, dtype=torch.float64)
            sh[:, 0, 0] = sh[:, 1, 1] = 1.0
            sh[:, 0, 1] = shear.tan()
            theta[:, :, :2] = sh @ theta[:, :, :2]
        if zoom is not None:
            theta[:, :, :2] = theta[:, :, :2] / zoom[:, None, None]
        if shift is not None:
            theta[:, :, 2] = shift
        if "p" in next(iter(g.values())).model_fields_set:  # warp only some samples when asked
            keep = ~_chosen(b, next(iter(g.values())).p, gen, torch.device("cpu"))
            theta[keep] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
        grid = F.affine_grid(
            theta.to(img.dtype).to(img.device), list(img.shape), align_corners=False
        )
        # "border" repeats the edge pixels: the background, whatever the scaling made of it.
        return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _erase(self, img: torch.Tensor, step: AugmentStep, gen: torch.Generator) -> torch.Tensor:
        """Cutout: a square of ``cutout × side`` set to 0 (the scaled mean/min) in chosen samples."""
        import torch

        b, _, h, w = img.shape
        side_h = max(1, round((step.cutout or 0.0) * h))
        side_w = max(1, round((step.cutout or 0.0) * w))
        top = torch.randint(0, h - side_h + 1, (b,), generator=gen)
        left = torch.randint(0, w - side_w + 1, (b,), generator=gen)
        rows = torch.arange(h)[None, :]  # (1, H)
        cols = torch.arange(w)[None, :]  # (1, W)
        in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side_h)  # (B, H)
        in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side_w)  # (B, W)
        chosen = _chosen(b, step.p, gen, torch.device("cpu"))
        mask = (in_rows[:, :, None] & in_cols[:, None, :] & chosen[:, None, None]).to(img.device)
        return img.masked_fill(mask[:, None, :, :], 0.0)  # (B, C, H, W)


def _p(step: AugmentStep) -> float:
    """The step's probability when set explicitly, else 1 (noise and warps apply to all)."""
    return step.p if "p" in step.model_fields_set else 1.0


def _chosen(b: int, p: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """(B,) bool: which samples get the step."""
    import torch

    return (torch.rand(b, generator=gen) < p).to(device)


def _beta(alpha: float, gen: torch.Generator) -> float:
    """A Beta(alpha, alpha) draw seeded from ``gen`` (torch's Beta distribution takes no generator)."""
    import numpy as np
    import torch

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    return float(np.random.default_rng(seed).beta(alpha, alpha))
