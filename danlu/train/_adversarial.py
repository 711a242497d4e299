"""Adversarial training (``train.adversarial``): each training batch is attacked before the model
learns from it.

A share ``ratio`` of the batch's rows is replaced by adversarial versions of themselves: FGSM
(one signed-gradient step of ε, Goodfellow et al., 2015) or PGD (``steps`` signed steps from a
random start in the L∞ ε-ball, projected back after each, Madry et al., 2018). The rest of the
batch stays clean; with ``ratio: 1`` the model trains on adversarial rows only, Madry's min-max.

What moves: the continuous input columns only (numeric features, pixels, reduced components) —
the same columns, in the same units (the model's inputs after preprocessing) as the trust
report's robustness section attacks, so its PGD accuracy measures what was trained for. One-hot
and boolean columns and token ids never move: a one-hot column at 0.1 is not a value the model can
meet. A model with no continuous column, or with text columns, cannot be trained this way
(:func:`continuous_columns` raises a :class:`~danlu.errors.ConfigError`).

The model is in **eval mode while it is attacked** (and back in train mode for the update):
dropout is off, so the attack follows one deterministic function, and BatchNorm uses its running
statistics and does not fold the attack's ``steps`` extra forward passes into them (the
running statistics then describe the rows the model learns from). This is also how the trust
report attacks the model. The attack differentiates the loss with respect to the inputs only
(``torch.autograd.grad``), so the parameters' gradients of an accumulating step are untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from danlu.errors import ConfigError

if TYPE_CHECKING:
    from danlu.config import AdversarialConfig, ConfigIssue, Recipe
    from danlu.data import FeatureSchema, PreparedData

__all__ = [
    "Adversary",
    "adversarial_issues",
    "adversary_for",
    "continuous_columns",
    "make_adversary",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_FIX = "or remove train.adversarial"


def adversarial_issues(recipe: Recipe) -> list[ConfigIssue]:
    """What ``train.adversarial`` cannot be combined with (checked with the recipe, before any
    data is read); the input columns are checked once the data is prepared."""
    from danlu.config._loader import ConfigIssue

    train = recipe.train
    if train.adversarial is None:
        return []
    issues = []
    if recipe.model.type in ("gbdt", "auto"):
        issues.append(
            ConfigIssue(
                ("model", "type"),
                "adversarial training follows the loss's input gradient through a network; "
                "this model is not trained by the engine (a tree ensemble has no useful input "
                "gradient)",
                recipe.model.type,
                f"Choose a network (mlp, cnn, ...), {_FIX}.",
            )
        )
    if train.distributed is not None and train.distributed.strategy == "fsdp":
        issues.append(
            ConfigIssue(
                ("train", "distributed", "strategy"),
                "adversarial training attacks each rank's batch through the whole model, and "
                "FSDP shards its parameters across the ranks",
                "fsdp",
                f"Use strategy: ddp (every rank holds the whole model), {_FIX}.",
            )
        )
    if train.privacy is not None:
        issues.append(
            ConfigIssue(
                ("train", "adversarial"),
                "adversarial training and DP-SGD (train.privacy) cannot be combined: the attack's "
                "extra backward passes would be recorded as per-row gradients",
                "train.privacy",
                f"Keep one of them: remove train.privacy, {_FIX}.",
            )
        )
    return issues


def continuous_columns(schema: FeatureSchema) -> np.ndarray:
    """(D,) boolean: the model input columns adversarial training may move.

    Numeric features (pixels included) and reduced components (``pc1`` ...) are continuous;
    categorical and boolean one-hot columns, frequency codes and text token ids are not — the
    robustness section's definition (``danlu.evaluate.input_groups``).

    Raises:
        ConfigError: naming ``train.adversarial``, when the model has text columns or no
            continuous column.

    Example:
        >>> from danlu.data import Feature, FeatureSchema
        >>> s = FeatureSchema((Feature("x", "numeric"), Feature("c", "categorical", ("a", "b"))),
        ...                   "y", "regression", None, 0.0, 1.0, None, 3, ("x", "c=a", "c=b"))
        >>> continuous_columns(s).tolist()
        [True, False, False]
    """
    kinds = {f.name: f.kind for f in schema.features}
    text = [f.name for f in schema.features if f.kind == "text"]
    if text:
        raise ConfigError(
            f"train.adversarial: the model reads text columns ({', '.join(text)}) as token ids, "
            "which an ε-perturbation cannot move (an id at 3.1 is not a token). Adversarial "
            "training works on continuous (numeric or pixel) inputs; remove train.adversarial "
            "(the trust report's robustness section measures text perturbations: typos, word "
            "dropout, casing)."
        )
    mask = np.zeros(len(schema.encoded_names), dtype=bool)
    for i, name in enumerate(schema.encoded_names):
        base = name if name in kinds else name.split("=", 1)[0]
        mask[i] = kinds.get(base, "numeric") == "numeric"  # a reduced column (pc1 ...): numeric
    if not mask.any():
        found = ", ".join(f"{f.name} ({f.kind})" for f in schema.features)
        raise ConfigError(
            "train.adversarial: the model has no continuous input column to perturb — every "
            f"feature is categorical or boolean ({found}), and a one-hot column moved by ε is "
            "not a value the model can meet. Remove train.adversarial, or add numeric features "
            "(data.features: {COLUMN: numeric} for a number read as a category)."
        )
    return mask


class Adversary:
    """Replaces a share of each training batch by adversarial examples (``train.adversarial``).

    Args:
        config: the recipe's ``train.adversarial``.
        mask: (D,) boolean, the columns that may move (:func:`continuous_columns`).
        seed: seeds PGD's random starts (with the batch's position, so a resumed run attacks
            the same way).

    Example:
        >>> import torch
        >>> from danlu.config import AdversarialConfig
        >>> adversary = Adversary(AdversarialConfig(epsilon=0.1, steps=3),
        ...                       torch.tensor([True, False]), seed=0)
        >>> model, x, y = torch.nn.Linear(2, 2), torch.zeros(4, 2), torch.tensor([0, 1, 0, 1])
        >>> x_adv = adversary.perturb(model, x, y, torch.nn.CrossEntropyLoss(), position=0)
        >>> bool((x_adv[:, 0].abs() <= 0.1 + 1e-6).all()), bool((x_adv[:, 1] == 0).all())
        (True, True)
    """

    def __init__(self, config: AdversarialConfig, mask: torch.Tensor, seed: int = 0) -> None:
        self.config = config
        self.mask = mask.to(torch.bool)
        self.seed = seed

    def perturb(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        loss_fn: LossFn,
        position: int,
    ) -> torch.Tensor:
        """The batch with its first ``round(ratio · B)`` rows (at least one) replaced by their
        adversarial versions; the batch is shuffled, so they are a random share of the rows.

        Args:
            model: the model being trained (unwrapped: the attack needs no gradient sync);
                put in eval mode for the attack and restored to its mode afterwards.
            x: (B, D) inputs; y: the targets ``loss_fn`` takes.
            loss_fn: the training loss, ``loss_fn(model(x), y)``.
            position: the batch's position in the whole run (seeds PGD's random start).
        """
        cfg = self.config
        rows = len(x)
        k = rows if cfg.ratio >= 1.0 else min(rows, max(1, round(cfg.ratio * rows)))
        if k == 0:
            return x
        keep = self.mask.to(device=x.device, dtype=x.dtype).unsqueeze(0)  # (1, D)
        clean = x[:k].detach()  # (k, D)
        target = y[:k]
        was_training = model.training
        model.eval()
        try:
            if cfg.method == "fgsm":
                delta = cfg.epsilon * _input_gradient(model, clean, target, loss_fn).sign() * keep
            else:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + position)
                start = torch.rand(clean.shape, generator=generator, dtype=clean.dtype)
                delta = (2 * start.to(x.device) - 1) * cfg.epsilon * keep  # (k, D) in the ball
                for _ in range(cfg.steps):
                    grad = _input_gradient(model, clean + delta, target, loss_fn)
                    delta = (delta + cfg.alpha * grad.sign() * keep).clamp(
                        -cfg.epsilon, cfg.epsilon
                    )
        finally:
            model.train(was_training)
        adversarial = (clean + delta).detach()
        return adversarial if k == rows else torch.cat([adversarial, x[k:]])

    def describe(self) -> dict[str, Any]:
        """The settings as recorded on the run (``adversarial_*`` params)."""
        cfg = self.config
        return {
            "method": cfg.method,
            "epsilon": cfg.epsilon,
            "steps": cfg.steps if cfg.method == "pgd" else 1,
            "step_size": cfg.alpha,
            "ratio": cfg.ratio,
            "columns": int(self.mask.sum()),
        }


def make_adversary(
    config: AdversarialConfig, schema: FeatureSchema, seed: int, width: int
) -> Adversary:
    """The :class:`Adversary` of a fit: the continuous columns of ``schema`` (``width`` wide)."""
    mask = continuous_columns(schema)
    if len(mask) != width:  # e.g. a sequence model whose inputs are not the encoded columns
        raise ConfigError(
            f"train.adversarial: the model's input is {width} columns wide but its schema "
            f"encodes {len(mask)}, so the continuous columns cannot be told apart; remove "
            "train.adversarial for this model."
        )
    return Adversary(config, torch.from_numpy(mask), seed)


def _input_gradient(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
) -> torch.Tensor:
    """d loss / d x only: ``autograd.grad`` leaves the parameters' ``.grad`` untouched."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        loss = loss_fn(model(x).float(), y)
        (grad,) = torch.autograd.grad(loss, x)
    return grad  # (k, D)


def adversary_for(
    config: AdversarialConfig | None, data: PreparedData, seed: int
) -> Adversary | None:
    """The fit's :class:`Adversary` (None without ``train.adversarial``), checked against the
    prepared data's schema."""
    if config is None:
        return None
    width = data.x_train.shape[1] if data.x_train.ndim == 2 else len(data.schema.encoded_names)
    return make_adversary(config, data.schema, seed, width)
