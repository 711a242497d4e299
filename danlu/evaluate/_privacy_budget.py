"""The privacy section: the differential-privacy budget a model trained with DP-SGD spent.

It reports what the training's accountant added up (``danlu.train._privacy``), read from the
model card (``model.json``'s ``privacy``): the ε spent at δ, the noise multiplier, the per-row
clipping norm, the Poisson sample rate and the steps. A model trained without ``train.privacy``
has no privacy section (like calibration for a regression model, the section does not apply);
the membership-inference section measures what any model leaks.
"""

from __future__ import annotations

import math
from typing import Any

from danlu.evaluate._context import EvalData, Section

__all__ = ["WEAK_EPSILON", "privacy_section"]

#: above this ε the guarantee is weak: flagged for a reviewer (ε ≤ 1 strong, ε ≤ 8 common)
WEAK_EPSILON = 10.0

_KEYS = (
    "epsilon",
    "delta",
    "target_epsilon",
    "noise_multiplier",
    "max_grad_norm",
    "sample_rate",
    "expected_batch_size",
    "rows",
    "steps",
    "accountant",
)


def privacy_section(data: EvalData) -> Section:
    """The (ε, δ) the model's DP-SGD training spent, and how (``data.privacy``).

    Example:
        >>> # data = EvalData.from_prepared(model, task, prepared, privacy=card["privacy"])
        >>> # privacy_section(data).data["epsilon"]  -> 2.99
    """
    record: dict[str, Any] = dict(data.privacy or {})
    figures = {key: record[key] for key in _KEYS if key in record}
    eps, delta = float(record["epsilon"]), float(record["delta"])
    rows = int(record.get("rows") or 0)
    section = Section(
        "privacy",
        "Privacy",
        data={"trained_with_dp": True, **figures},
        summary=f"trained with differential privacy (DP-SGD): ε = {eps:.3g} at δ = {delta:g}",
    )
    section.notes.append(
        f"(ε, δ)-differential privacy: adding or removing any one training row changes the "
        f"probability of any outcome of training by at most a factor e^ε = {math.exp(eps):.3g}, "
        f"except with probability δ. Each row's gradient was clipped to L2 norm "
        f"{record.get('max_grad_norm')}, Gaussian noise of {record.get('noise_multiplier', 0):.3g} × "
        f"that norm was added to every batch's sum, and batches were Poisson samples (each row in "
        f"with probability {record.get('sample_rate', 0):.4g})."
    )
    section.notes.append(
        f"The ε was added up by the {str(record.get('accountant', 'rdp')).upper()} accountant "
        f"over {record.get('steps')} steps; it bounds the training rows only (validation rows "
        f"choose the epoch kept by early stopping, and the preprocessing is fitted on the "
        f"training rows without noise)."
    )
    if len(trainings := record.get("trainings") or []) > 1:  # a variant fine-tuned with DP
        section.data["trainings"] = len(trainings)
        section.notes.append(
            f"The model was trained {len(trainings)} times on the same rows with DP-SGD (a "
            "compressed variant fine-tuned with train.privacy): ε is the total of all of them, "
            "one accountant over every training's steps."
        )
    if eps > WEAK_EPSILON:
        section.flags.append(
            f"ε = {eps:.3g} is a weak guarantee (above {WEAK_EPSILON:g}); lower "
            "train.privacy.target_epsilon for a meaningful bound."
        )
    if rows and delta > 1.0 / rows:
        section.flags.append(
            f"δ = {delta:g} is above 1 / training rows ({1.0 / rows:.3g}): a mechanism that "
            "publishes one row at random meets it; lower train.privacy.delta."
        )
    return section
