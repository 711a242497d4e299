"""The ``train.adversarial:`` block: adversarial training on the continuous inputs::

    train:
      adversarial:
        method: pgd          # pgd (Madry et al., 2018) | fgsm (Goodfellow et al., 2015)
        epsilon: 0.1         # L∞ radius, in the model's input units after preprocessing
        steps: 10            # pgd: iterations of the attack (fgsm: one step of ε)
        step_size: 0.025     # pgd: each iteration's step (default 2.5·ε / steps)
        ratio: 1.0           # share of each batch replaced by its adversarial version

Each training batch is attacked before the model learns from it: ``ratio`` of its rows are
replaced by adversarial versions within ε of them (1.0: Madry-style training on adversarial rows
only; 0.5: half clean, half adversarial, as in Goodfellow et al.). Only continuous (numeric /
pixel) columns move, in the same units as the trust report's robustness section.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["AdversarialConfig"]


class AdversarialConfig(BaseModel):
    """Adversarial training: each batch partly or wholly replaced by FGSM / PGD examples."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    method: Literal["pgd", "fgsm"] = Field(
        "pgd",
        description="pgd: projected gradient descent in the L∞ ball from a random start "
        "(Madry et al., 2018); fgsm: one signed-gradient step of ε (Goodfellow et al., 2015), "
        "cheaper, weaker against PGD.",
    )
    epsilon: Annotated[float, Field(gt=0.0, le=100.0)] = Field(
        description="The L∞ radius of the perturbation, in the model's input units after "
        "preprocessing (the robustness section's ε): 0.1 is a tenth of a standard deviation "
        "under standard scaling, a tenth of the range under minmax."
    )
    steps: Annotated[int, Field(ge=1, le=1000)] = Field(
        10, description="pgd: iterations of the attack per batch (each one forward + backward)."
    )
    step_size: Annotated[float, Field(gt=0.0, le=100.0)] | None = Field(
        None, description="pgd: the size of each iteration's step; default 2.5·epsilon / steps."
    )
    ratio: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        1.0,
        description="Share of each training batch replaced by adversarial examples: 1.0 trains "
        "on adversarial rows only (Madry), 0.5 mixes clean and adversarial rows.",
    )

    @model_validator(mode="after")
    def _pgd_only_keys(self) -> AdversarialConfig:
        if self.method == "fgsm":
            given = sorted({"steps", "step_size"} & self.model_fields_set)
            if given:
                raise ValueError(
                    f"{' and '.join(given)} only apply to method pgd (fgsm takes one step of "
                    "epsilon); remove them or set method: pgd"
                )
        return self

    @property
    def alpha(self) -> float:
        """The step of one attack iteration: ``step_size``, else 2.5·ε / steps (pgd), ε (fgsm)."""
        if self.method == "fgsm":
            return self.epsilon
        return self.step_size if self.step_size is not None else 2.5 * self.epsilon / self.steps
