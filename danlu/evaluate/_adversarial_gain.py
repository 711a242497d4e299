"""What adversarial training bought: the robustness section of a model trained with
``train.adversarial`` compares it with the same recipe trained without it.

The reference is the recipe minus ``train.adversarial`` (same data, split, model, seed and
training settings; nothing registered, evaluated or compressed), trained through the stage runner
(:func:`danlu.train.run_training`) as a child run of the evaluated run (stage
``adversarial-reference``); a later report of the same run reuses that child run's model instead
of training it again. Both models are then measured on the same test rows, with the same
attacks, in the same units as the rest of the section: clean, FGSM and PGD at the recipe's ε
(PGD with ``evaluate.robustness.pgd_steps`` steps, seeded alike). Each model is attacked as it is
served (the adversarially trained one with its fitted temperature, if any).

``evaluate.robustness.compare_standard: false`` turns the comparison off; the model's own clean,
FGSM and PGD figures at the recipe's ε are still reported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from danlu.evaluate._context import EvalData, Section
from danlu.logging import get_logger

if TYPE_CHECKING:
    import torch

    from danlu.config import Recipe, RobustnessConfig
    from danlu.store import Store
    from danlu.train._callbacks import Callback

__all__ = ["REFERENCE_STAGE", "adversarial_gain"]

logger = get_logger(__name__)

#: the stage of the reference run (the recipe trained without train.adversarial)
REFERENCE_STAGE = "adversarial-reference"


def adversarial_gain(
    section: Section,
    data: EvalData,
    config: RobustnessConfig,
    *,
    recipe: Recipe | None,
    store: Store | None,
    run_id: str | None,
    callbacks: Sequence[Callback] = (),
) -> Section:
    """Add the comparison with standard training to the robustness ``section`` (returned).

    ``section.data["adversarial_training"]`` gets ``epsilon``, ``pgd_steps``, ``models`` (one
    record per model: ``model``, ``run_id``, ``clean``, ``fgsm``, ``pgd``) and ``gain`` (the
    adversarially trained model's metric minus the reference's, for each). With
    ``compare_standard: false``, or when a reference cannot be had (no store, training failed),
    only the trained model's row is there, with a note (and a flag for a failure). Without
    ``recipe`` or its ``train.adversarial``, ``section`` is returned as it is.

    Example:
        >>> # section = adversarial_gain(robustness_section(data, cfg), data, cfg,
        >>> #                            recipe=recipe, store=store, run_id=run_id)
        >>> # section.data["adversarial_training"]["gain"]["pgd"]  # e.g. 0.41
    """
    adversarial = recipe.train.adversarial if recipe is not None else None
    if recipe is None or adversarial is None or "skipped" in section.data:
        return section
    from danlu.evaluate._robustness import _format_delta, _format_value, _metric_label

    metric, epsilon = data.task.headline, adversarial.epsilon
    described = (
        f"{adversarial.method.upper()}, ε={epsilon:g}"
        + (f", {adversarial.steps} steps" if adversarial.method == "pgd" else "")
        + f", ratio {adversarial.ratio:g}"
    )
    trained = _measure(data, config, epsilon)  # at the recipe's ε, whatever the curves' levels
    models: list[dict[str, Any]] = [
        {"model": f"adversarial training ({described})", "run_id": run_id, **trained}
    ]
    section.data["adversarial_training"] = {
        "epsilon": epsilon,
        "pgd_steps": config.pgd_steps,
        "models": models,
    }
    if not config.compare_standard:
        section.notes.append(
            f"Adversarial training ({described}) was not compared with standard training "
            "(evaluate.robustness.compare_standard: false)."
        )
        return section
    if store is None:
        section.notes.append(
            "Adversarial training was not compared with standard training: the comparison "
            "trains the recipe without train.adversarial and records it in a store, and none "
            "was given."
        )
        return section
    try:
        reference, reference_id, reused = _reference_model(recipe, store, run_id, callbacks)
    except Exception as exc:  # the report still stands without the comparison
        logger.warning("adversarial reference training failed: %s", exc, exc_info=True)
        section.flags.append(
            f"the standard-training reference could not be trained ({type(exc).__name__}: "
            f"{exc}); the gain of adversarial training is not measured"
        )
        return section

    standard = _measure(
        dataclasses.replace(data, model=reference.to(data.device).eval(), temperature=1.0),
        config,
        epsilon,
    )
    gain = {kind: trained[kind] - standard[kind] for kind in ("clean", "fgsm", "pgd")}
    models.append({"model": "standard training", "run_id": reference_id, **standard})
    section.data["adversarial_training"]["gain"] = gain
    label = _metric_label(metric)

    def signed(value: float) -> str:
        return ("+" if value >= 0 else "−") + _format_delta(metric, abs(value))

    section.notes.append(
        f"Adversarial training ({described}) against the same recipe trained without "
        f"train.adversarial (run {reference_id}"
        + (", trained for an earlier report" if reused else "")
        + f"; same data split and seed), on the same {min(len(data.x), config.samples)} test "
        f"rows: {label} under PGD at ε={epsilon:g} ({config.pgd_steps} steps) "
        f"{_format_value(metric, trained['pgd'])} vs {_format_value(metric, standard['pgd'])} "
        f"({signed(gain['pgd'])}); under FGSM {_format_value(metric, trained['fgsm'])} vs "
        f"{_format_value(metric, standard['fgsm'])} ({signed(gain['fgsm'])}); clean "
        f"{_format_value(metric, trained['clean'])} vs {_format_value(metric, standard['clean'])}"
        f" ({signed(gain['clean'])})."
    )
    phrase = (
        f"adversarial training: {label} under PGD at ε={epsilon:g} {signed(gain['pgd'])} over "
        f"standard training (clean {signed(gain['clean'])})"
    )
    section.summary = f"{section.summary}; {phrase}" if section.summary else phrase
    return section


def _measure(data: EvalData, config: RobustnessConfig, epsilon: float) -> dict[str, float]:
    """The headline metric clean, under FGSM and under PGD at ``epsilon``, on the robustness
    section's sample of test rows and its continuous columns."""
    from danlu.evaluate._robustness import _attacked, _continuous_columns, _sample_rows

    _, x, y = _sample_rows(data, config)
    mask = _continuous_columns(data, x.shape[1])
    metric = data.task.headline

    def score(inputs: Any) -> float:
        return float(data.task.metrics(data.outputs(inputs), y, data.schema)[metric])

    return {
        "clean": score(x),
        "fgsm": score(_attacked(data, x, y, "fgsm", epsilon, mask, config)),
        "pgd": score(_attacked(data, x, y, "pgd", epsilon, mask, config)),
    }


def _reference_model(
    recipe: Recipe, store: Store, run_id: str | None, callbacks: Sequence[Callback]
) -> tuple[torch.nn.Module, str, bool]:
    """The recipe's model trained without ``train.adversarial``: an earlier child run's when it
    was trained from the same recipe, else a new child run. Returns it, its run id and whether
    it was reused."""
    from danlu.config import load_recipe

    reference = recipe.model_copy(
        update={
            "train": recipe.train.model_copy(update={"adversarial": None}),
            "register": None,
            "evaluate": None,
            "tune": None,
            "compress": None,
        }
    )
    if run_id is not None:
        found = store.search_runs(
            f"parent_id = '{run_id}' and stage = '{REFERENCE_STAGE}' and status = 'finished'",
            order_by=["created_at DESC"],
            limit=5,
        )
        for run in found:
            earlier = load_recipe(run.recipe) if run.recipe else None
            if earlier is not None and all(
                getattr(earlier, block) == getattr(reference, block)
                for block in ("data", "task", "model", "train")
            ):
                from danlu.models import load_bundle

                bundle = load_bundle(store.run_reader(run.id), f"Run {run.id}")
                return bundle.model, run.id, True
    from danlu.train import run_training

    result = run_training(
        reference,
        store=store,
        stage=REFERENCE_STAGE,
        parent_id=run_id,
        run_name=f"{recipe.name}-standard",
        tags={"reference": "train.adversarial removed"},
        callbacks=callbacks,
    )
    return result.model, result.run_id, False
