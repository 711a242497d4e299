"""The ``train.privacy:`` block: differentially private training (DP-SGD, with Opacus)::

    train:
      privacy:
        target_epsilon: 3.0        # the (ε, δ) budget the whole training may spend ...
        delta: 1.0e-5
        max_grad_norm: 1.0         # each row's gradient is clipped to this L2 norm
        accountant: rdp            # rdp | prv
      # ... or a fixed noise instead of a target:  privacy: {noise_multiplier: 1.1}

Each row of the training split joins a batch with probability ``batch_size / rows`` (Poisson
sampling); each row's gradient is clipped, Gaussian noise is added to their sum, and the
accountant adds up the ε spent, step by step. The ε spent is recorded on the run, the model card
and the trust report.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["PrivacyConfig"]


class PrivacyConfig(BaseModel):
    """DP-SGD: per-row gradient clipping, Gaussian noise, Poisson-sampled batches, accounting."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    target_epsilon: Annotated[float, Field(gt=0.0, le=1000.0)] | None = Field(
        None,
        description="The ε the whole training may spend (with `delta`); the noise multiplier is "
        "computed from it, the sample rate and the epochs. Typical: 1 (strong) to 8 (weak).",
    )
    noise_multiplier: Annotated[float, Field(gt=0.0, le=1000.0)] | None = Field(
        None,
        description="Instead of target_epsilon: the noise's standard deviation in units of "
        "max_grad_norm; the ε spent is then whatever the training adds up to.",
    )
    delta: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(
        1e-5,
        description="The δ of (ε, δ)-DP: the chance the ε bound fails; keep it well below "
        "1 / training rows.",
    )
    max_grad_norm: Annotated[float, Field(gt=0.0, le=1e6)] = Field(
        1.0, description="Each row's gradient is clipped to this L2 norm before the noise."
    )
    accountant: Literal["rdp", "prv"] = Field(
        "rdp",
        description="How the ε spent is added up: rdp (Rényi DP, the usual bound) or prv (the "
        "privacy random variable accountant, tighter).",
    )

    @model_validator(mode="after")
    def _one_noise_setting(self) -> PrivacyConfig:
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ValueError(
                "set exactly one of target_epsilon (e.g. 3.0: the noise is computed from it) or "
                "noise_multiplier (e.g. 1.1: the ε spent is computed)"
            )
        return self
