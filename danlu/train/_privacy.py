"""Differentially private training (DP-SGD) with Opacus: ``train.privacy``.

DP-SGD changes three things in the engine, and nothing else:

1. **Batches are Poisson-sampled.** Each training row joins each batch on its own with probability
   ``q = batch_size / rows`` (so batches vary in size), drawn with the run's shuffle generator;
   an epoch is the engine's usual ``ceil(rows / batch_size)`` batches. The accountant's privacy
   amplification by subsampling assumes exactly this.
2. **Gradients are per row, clipped and noised.** Opacus' ``GradSampleModule`` computes each row's
   gradient; its ``DPOptimizer`` clips each to ``max_grad_norm``, adds Gaussian noise of standard
   deviation ``noise_multiplier · max_grad_norm`` to their sum and divides by the expected batch
   size, then steps the wrapped optimizer.
3. **Every step is accounted.** The accountant (RDP or PRV) records each step's noise and sample
   rate; its history is the :class:`PrivateTraining` callback's state, saved in every checkpoint,
   so a resumed run spends exactly the ε an uninterrupted one does.

With ``target_epsilon`` the noise multiplier is the smallest that keeps the planned steps
(``epochs × batches per epoch``) within (ε, δ) (Opacus' ``get_noise_multiplier``); early
stopping only spends less. What the loop hooks here: :func:`make_private` in the fit's set-up,
:func:`poisson_batches` for the epoch's batches, :func:`empty_batch` for a batch that drew no
row (it still takes its noisy step), and :func:`privacy_record` for the run, model card and
trust report.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from danlu.errors import ConfigError
from danlu.logging import get_logger
from danlu.train._callbacks import Callback

if TYPE_CHECKING:
    from danlu.config import PrivacyConfig, Recipe
    from danlu.config._loader import ConfigIssue
    from danlu.train._loop import Trainer

__all__ = [
    "PrivateTraining",
    "composed_record",
    "empty_batch",
    "make_private",
    "poisson_batches",
    "privacy_issues",
    "privacy_record",
    "smallest_epsilon",
    "spent_epsilon",
]

log = get_logger(__name__)

#: the largest noise multiplier danlu looks at when a target ε is too small (Opacus' own limit)
MAX_NOISE = 1e6
_FIX = "remove train.privacy"


def privacy_issues(recipe: Recipe) -> list[ConfigIssue]:
    """What ``train.privacy`` cannot be combined with, one issue per conflict (checked with the
    recipe, before any data is read)."""
    from danlu.config._loader import ConfigIssue

    train = recipe.train
    if train.privacy is None:
        return []
    issues = []

    def refuse(loc: tuple[str | int, ...], problem: str, found: Any, fix: str) -> None:
        issues.append(ConfigIssue(loc, f"with train.privacy (DP-SGD): {problem}", found, fix))

    if recipe.model.type in ("gbdt", "auto"):
        refuse(
            ("model", "type"),
            "DP-SGD trains a network with per-row gradients; this model is not trained by SGD",
            recipe.model.type,
            f"Choose a network (mlp, cnn, ...), or {_FIX}.",
        )
    if train.grad_accumulation > 1:
        refuse(
            ("train", "grad_accumulation"),
            "DP-SGD's batches are Poisson samples whose noise is added once per optimizer step",
            train.grad_accumulation,
            "Set train.grad_accumulation to 1 and raise train.batch_size instead.",
        )
    if train.grad_clip is not None:
        refuse(
            ("train", "grad_clip"),
            "DP-SGD already clips each row's gradient (train.privacy.max_grad_norm)",
            train.grad_clip,
            "Remove train.grad_clip; set train.privacy.max_grad_norm.",
        )
    if train.distributed is not None:
        refuse(
            ("train", "distributed"),
            "DP-SGD (Poisson sampling and its accountant) runs in one process",
            "train.distributed",
            f"Remove train.distributed, or {_FIX}.",
        )
    if train.l1 > 0:
        refuse(
            ("train", "l1"),
            "the L1 penalty's gradient bypasses DP-SGD's per-row clipping",
            train.l1,
            "Set train.l1 to 0 (train.optimizer.weight_decay regularises under DP).",
        )
    if train.precision != "fp32":
        refuse(
            ("train", "precision"),
            "DP-SGD computes per-row gradients in fp32",
            train.precision,
            "Set train.precision to fp32.",
        )
    if recipe.data.stream is not None:
        refuse(
            ("data", "stream"),
            "Poisson sampling draws from every training row in memory; streamed data is read "
            "in chunks",
            "data.stream",
            f"Remove data.stream (load the data into memory), or {_FIX}.",
        )
    for i, step in enumerate(recipe.data.augment or []):
        if step.kind == "mixup":
            refuse(
                ("data", "augment", i),
                "mixup blends rows, so one row's gradient is no longer its own (DP-SGD bounds "
                "each row's)",
                "mixup",
                "Remove the mixup step (per-row augmentations such as noise are fine).",
            )
    return issues


def _unsupported_layers(model: torch.nn.Module) -> list[str]:
    """Each trainable layer Opacus cannot compute per-row gradients for, as 'path (Type): why'."""
    from opacus.utils.module_utils import trainable_modules
    from opacus.validators import ModuleValidator

    problems = []
    for name, module in trainable_modules(model):
        validator = ModuleValidator.VALIDATORS.get(type(module))
        if validator is None:
            continue
        for error in validator(module):
            why = str(error).split(".")[0].strip()
            problems.append(f"layer '{name or '(the model)'}' ({type(module).__name__}): {why}")
    return problems


def _layer_fix(model: torch.nn.Module) -> str:
    norms = {type(m).__name__ for m in model.modules() if "BatchNorm" in type(m).__name__}
    if norms:
        return (
            "Build the model without batch normalisation: `model: {batch_norm: false}` (mlp, "
            "cnn), or a model with GroupNorm / LayerNorm instead"
        )
    return "Use layers Opacus supports (Linear, Conv, Embedding, LayerNorm, GroupNorm, DPLSTM ...)"


def check_layers(model: torch.nn.Module) -> None:
    """Raise ConfigError naming each layer DP-SGD cannot train (BatchNorm mixes the rows of a
    batch, so no row has a gradient of its own), with the fix."""
    problems = _unsupported_layers(model)
    if problems:
        raise ConfigError(
            "train.privacy: DP-SGD cannot train this model: "
            + "; ".join(problems)
            + f". {_layer_fix(model)}; or {_FIX}."
        )


@contextlib.contextmanager
def _quiet_accounting() -> Iterator[None]:
    """Opacus' RDP accountant warns when the best Rényi order is the largest it tries (large
    noise, small ε): the bound is then a little loose (conservative), never wrong."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the", category=UserWarning)
        yield


@functools.lru_cache(maxsize=64)
def _rdp_of_one_step(noise_multiplier: float, sample_rate: float) -> tuple[float, ...]:
    """One step's Rényi DP at each of the RDP accountant's orders (steps add up linearly, so a
    run's is ``steps ×`` this: computed once per run, not once per epoch)."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp

    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=orders)
    return tuple(float(v) for v in rdp)


def spent_epsilon(accountant: Any, delta: float) -> float:
    """The ε ``accountant`` has added up at ``delta`` (0 before any step); for RDP exactly
    Opacus' ``get_epsilon``, from each step's RDP computed once."""
    if not accountant.history:
        return 0.0
    with _quiet_accounting():
        if accountant.mechanism() != "rdp":
            return float(accountant.get_epsilon(delta=delta))
        import numpy as np
        from opacus.accountants.analysis.rdp import get_privacy_spent

        rdp = sum(
            n * np.asarray(_rdp_of_one_step(float(sigma), float(q)))
            for sigma, q, n in accountant.history
        )
        eps, _ = get_privacy_spent(orders=accountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
        return float(eps)


def smallest_epsilon(delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """The smallest ε (at ``delta``) that ``steps`` steps at ``sample_rate`` can be accounted
    at: the ε of the largest noise multiplier danlu (and Opacus) will use."""
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = [(MAX_NOISE, sample_rate, steps)]
    with _quiet_accounting():
        return float(acc.get_epsilon(delta=delta))


def _noise_for(config: PrivacyConfig, sample_rate: float, steps: int, where: str) -> float:
    """The noise multiplier: the recipe's, or the smallest that meets ``target_epsilon``."""
    if config.noise_multiplier is not None:
        return float(config.noise_multiplier)
    from opacus.accountants.utils import get_noise_multiplier

    assert config.target_epsilon is not None
    try:
        with _quiet_accounting():
            noise = get_noise_multiplier(
                target_epsilon=config.target_epsilon,
                target_delta=config.delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=config.accountant,
            )
        return float(noise)
    except ValueError as exc:  # Opacus: "The privacy budget is too low."
        floor = smallest_epsilon(config.delta, sample_rate, steps, config.accountant)
        raise ConfigError(
            f"train.privacy.target_epsilon: {config.target_epsilon:g} cannot be reached with "
            f"{where} at δ = {config.delta:g} ({config.accountant} accountant): the smallest "
            f"reachable ε is {math.ceil(floor * 1000) / 1000:g}. Set target_epsilon to at "
            f"least that, or raise train.privacy.delta, or train fewer epochs / smaller "
            f"batches (fewer, less likely steps per row)."
        ) from exc


@dataclass
class _Plan:
    rows: int
    batch_size: int
    steps_per_epoch: int
    epochs: int

    @property
    def sample_rate(self) -> float:
        return min(1.0, self.batch_size / self.rows)

    @property
    def steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def describe(self) -> str:
        return (
            f"{self.rows} training rows, train.batch_size {self.batch_size} (sample rate "
            f"{self.sample_rate:.4g}) and {self.epochs} epochs ({self.steps} steps)"
        )


class PrivateTraining(Callback):
    """DP-SGD's state in one fit: the per-row-gradient model, the noisy optimizer and the
    accountant; a callback so the accountant's history is saved in every checkpoint and the ε
    spent is logged after every epoch (``privacy_epsilon``).

    Made by :func:`make_private`; ``epsilon`` is the ε spent so far.
    """

    def __init__(
        self,
        config: PrivacyConfig,
        net: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        accountant: Any,
        noise_multiplier: float,
        plan: _Plan,
    ) -> None:
        self.config = config
        self.net = net  # the GradSampleModule the loop runs forward / backward through
        self.optimizer = optimizer  # the DPOptimizer around the recipe's optimizer
        self.accountant = accountant
        self.noise_multiplier = noise_multiplier
        self.plan = plan

    @property
    def sample_rate(self) -> float:
        return self.plan.sample_rate

    @property
    def steps(self) -> int:
        """Optimizer steps accounted so far (in this fit and the sessions it resumed)."""
        return int(sum(n for _, _, n in self.accountant.history))

    @property
    def epsilon(self) -> float:
        """The ε spent so far at ``delta`` (0 before the first step)."""
        return spent_epsilon(self.accountant, self.config.delta)

    def record(self) -> dict[str, Any]:
        """What the run, the model card and the trust report keep of the training's privacy."""
        return {
            "epsilon": self.epsilon,
            "delta": self.config.delta,
            "target_epsilon": self.config.target_epsilon,
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.config.max_grad_norm,
            "sample_rate": self.sample_rate,
            "expected_batch_size": self.plan.batch_size,
            "rows": self.plan.rows,
            "steps": self.steps,
            "accountant": self.config.accountant,
        }

    # -- callback hooks ----------------------------------------------------------------------
    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if trainer.tracker is not None:
            eps = {"privacy_epsilon": self.epsilon, "privacy_steps": float(self.steps)}
            trainer.tracker.log_metrics(eps, step=epoch, epoch=epoch)

    def on_fit_end(self, trainer: Trainer) -> None:
        record = self.record()
        log.info(
            "DP-SGD: ε = %.3g spent at δ = %g over %d steps (noise multiplier %.3g)",
            record["epsilon"],
            record["delta"],
            record["steps"],
            record["noise_multiplier"],
        )
        if trainer.tracker is not None:
            numbers = {
                f"privacy_{k}": float(v)
                for k, v in record.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
            trainer.tracker.log_metrics(numbers, step=trainer.epoch)
        # the trained model leaves without Opacus' hooks and per-row gradient attributes
        cleanup = getattr(self.net, "_close", None)
        if cleanup is not None:
            cleanup()

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [tuple(step) for step in self.accountant.history],
            "mechanism": self.accountant.mechanism(),
            "noise_multiplier": self.noise_multiplier,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["mechanism"] != self.accountant.mechanism():
            raise ConfigError(
                f"train.privacy.accountant: the checkpoint was accounted with "
                f"{state['mechanism']!r}, this run with {self.accountant.mechanism()!r}; "
                "resume with the same recipe."
            )
        self.accountant.history = [tuple(step) for step in state["history"]]


def make_private(
    trainer: Trainer,
    config: PrivacyConfig,
    net: torch.nn.Module,
    *,
    rows: int,
    batch_size: int,
    steps_per_epoch: int,
    streaming: bool = False,
) -> PrivateTraining:
    """Wrap ``net`` (per-row gradients) and ``trainer.optimizer`` (clipping, noise, accounting),
    and add the :class:`PrivateTraining` callback to the trainer; returns it.

    Raises:
        ConfigError: the recipe combines DP with what it cannot do, the model has a layer
            Opacus cannot train (named, with the fix), or ``target_epsilon`` is below the
            smallest ε these rows, batches and epochs can reach (which the message gives).
    """
    cfg = trainer.config
    if streaming or trainer.strategy.distributed or cfg.grad_accumulation > 1:
        raise ConfigError(
            "train.privacy: DP-SGD runs in one process on data in memory, one batch per step; "
            "remove data.stream, train.distributed and train.grad_accumulation, or "
            f"{_FIX}."
        )
    if cfg.grad_clip is not None or cfg.l1 > 0:
        raise ConfigError(
            "train.privacy: DP-SGD clips each row's gradient itself and cannot take "
            "train.grad_clip or train.l1; remove them."
        )
    try:
        from opacus import GradSampleModule
        from opacus.accountants import create_accountant
        from opacus.optimizers import DPOptimizer
    except ImportError as exc:
        raise ConfigError(
            "train.privacy needs Opacus: pip install 'danlu[privacy]' (or pip install opacus)."
        ) from exc

    model = trainer.model
    model.train()
    check_layers(model)
    plan = _Plan(rows, batch_size, steps_per_epoch, cfg.epochs)
    noise = _noise_for(config, plan.sample_rate, plan.steps, plan.describe())
    # Opacus' per-row hooks sit on the first layer too, whose input needs no gradient; torch
    # warns about that on every backward pass, and it is expected here.
    warnings.filterwarnings(
        "ignore", message="Full backward hook is firing when gradients", category=UserWarning
    )
    try:
        private_net = GradSampleModule(net, batch_first=True, loss_reduction="mean")
    except NotImplementedError as exc:  # a layer with buffers Opacus cannot handle
        raise ConfigError(
            f"train.privacy: DP-SGD cannot train this model: {exc}. {_layer_fix(model)}; or {_FIX}."
        ) from exc
    optimizer = DPOptimizer(
        trainer.optimizer,
        noise_multiplier=noise,
        max_grad_norm=config.max_grad_norm,
        expected_batch_size=batch_size,
        loss_reduction="mean",
    )
    accountant = create_accountant(mechanism=config.accountant)
    optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=plan.sample_rate))
    private = PrivateTraining(config, private_net, optimizer, accountant, noise, plan)
    trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, PrivateTraining)]
    trainer.callbacks.append(private)
    if noise > 50:
        log.warning(
            "DP-SGD: noise multiplier %.3g for ε = %s; training will learn little. Raise "
            "train.privacy.target_epsilon or train.batch_size, or lower train.epochs.",
            noise,
            config.target_epsilon,
        )
    return private


def poisson_batches(
    rows: int,
    sample_rate: float,
    batches: int,
    generator: torch.Generator,
    start: int = 0,
) -> Iterator[torch.Tensor]:
    """``batches`` index tensors, each row in each with probability ``sample_rate`` on its own
    (so a batch may be empty); the first ``start`` are drawn and skipped (a resumed epoch)."""
    for batch in range(batches):
        draw = torch.rand(rows, generator=generator)  # (N,) on the generator's device (CPU)
        if batch >= start:
            yield (draw < sample_rate).nonzero().squeeze(1)  # (B,) with B ~ Binomial(N, q)


def empty_batch(private: PrivateTraining, device: torch.device) -> torch.Tensor:
    """A batch that drew no row: zero per-row gradients, so the optimizer step still adds its
    noise (skipping it would reveal that no row was drawn); returns the batch's loss sum, 0."""
    params = [p for group in private.optimizer.param_groups for p in group["params"]]
    for p in (p for p in params if p.requires_grad):
        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
    return torch.zeros((), device=device)


def composed_record(first: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    """The privacy record of a model trained with DP-SGD (``first``) and trained again on the
    same rows with DP-SGD (``then``: a compressed variant's fine-tuning): the accountant of both
    trainings' steps, so ``epsilon`` is the total spent (``trainings`` lists each one)."""
    from opacus.accountants import create_accountant

    accountant = create_accountant(mechanism=then["accountant"])
    parts = [*first.get("trainings", [first]), then]
    accountant.history = [
        (float(p["noise_multiplier"]), float(p["sample_rate"]), int(p["steps"])) for p in parts
    ]
    single = [{k: v for k, v in p.items() if k != "trainings"} for p in parts]
    return {
        **then,
        "epsilon": spent_epsilon(accountant, float(then["delta"])),
        "steps": sum(int(p["steps"]) for p in parts),
        "trainings": single,
    }


def privacy_record(trainer: Any) -> dict[str, Any] | None:
    """The privacy record of a trained :class:`~danlu.train.Trainer` (None without DP)."""
    for cb in getattr(trainer, "callbacks", ()):
        if isinstance(cb, PrivateTraining):
            return cb.record()
    return None
