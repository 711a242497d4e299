"""Knowledge distillation as a compression method: a smaller student (``compress.distill.student``,
any model the recipe can build) trained on the teacher's soft targets.

The student trains through the engine's own distillation (``train.distill``, in
``danlu/train/_distill.py``), in a child run of the run being compressed: the parent recipe with
``model`` replaced by the student and ``train.distill`` naming the teacher (by default the model
this run trained), on the data already prepared. Tracking, early stopping, checkpoints and
``--resume`` apply as to any run, and the child run holds a complete model (its own card).
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from danlu.compress._types import Variant
from danlu.errors import ConfigError
from danlu.logging import get_logger
from danlu.store._crypt import read_bytes

if TYPE_CHECKING:
    from danlu.compress._types import CompressJob

__all__ = ["distill_recipe", "distill_variants"]

log = get_logger(__name__)

NAME = "distilled"


def distill_recipe(job: CompressJob) -> dict[str, Any]:
    """The child run's recipe: the parent's with ``model`` = the student, ``train.distill`` set
    (and ``train.epochs`` = ``compress.distill.epochs`` when given; no ``data.augment`` with
    ``compress.distill.augment: false``), trained in this process;
    ``tune``, ``compress`` and ``register`` removed (the child is trained, not tuned, compressed
    or registered by itself)."""
    from danlu.config import recipe_to_dict

    config = job.config.distill
    assert config is not None
    recipe = recipe_to_dict(job.recipe)
    for key in ("tune", "compress", "register"):
        recipe.pop(key, None)
    train = dict(recipe.get("train") or {})
    train["distill"] = {
        "teacher": config.teacher or job.run_id,
        "alpha": config.alpha,
        "temperature": config.temperature,
    }
    if config.epochs is not None:
        train["epochs"] = config.epochs
    train.pop("distributed", None)  # the student trains in this process
    recipe["train"] = train
    if not config.augment:
        recipe["data"] = {**recipe["data"], "augment": []}
    recipe["model"] = dict(config.student)
    return recipe


def _parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def distill_variants(job: CompressJob) -> list[Variant]:
    """The distilled student of ``job``'s model, trained in a child run (tag
    ``compression: distilled``).

    Raises:
        ConfigError: the student block is not a model the recipe can build, or the teacher
            (``compress.distill.teacher``) is not found or has other inputs / outputs than the
            student (the message names the key and both shapes).

    Example:
        >>> # [variant] = distill_variants(job); variant.details["parameter_ratio"]
    """
    from danlu.models._compressed import COMPRESSED_CARD_KEYS
    from danlu.train import run_training

    config = job.config.distill
    if config is None:
        return []
    recipe = distill_recipe(job)
    data = job.data if config.augment else dataclasses.replace(job.data, augment=())
    teacher_ref = recipe["train"]["distill"]["teacher"]
    try:
        result = run_training(
            recipe,
            store=job.store,
            callbacks=job.callbacks,
            stage="compress",
            parent_id=job.run_id,
            tags={"compression": NAME},
            prepared=data,  # the same rows and preprocessing as the teacher's
            run_name=f"{job.recipe.name}-{NAME}",
        )
    except ConfigError as exc:  # the student's block or the teacher: name the compress key
        message = str(exc)
        if "train.distill.teacher" in message:
            message = message.replace("train.distill.teacher", "compress.distill.teacher")
        else:
            message = f"compress.distill.student: {message}"
        raise ConfigError(message) from None
    card = json.loads(read_bytes(job.store.artifact_path(result.run_id, "model.json")))
    student = result.model.cpu().eval()
    if config.teacher is None:
        teacher_params, teacher_name = _parameters(job.model), f"run {job.run_id}"
    else:  # another model than the one compressed: its size from its files
        from danlu.train._distill import load_teacher

        bundle, teacher_name = load_teacher(job.store, config.teacher)
        teacher_params = _parameters(bundle.model)
    student_params = _parameters(student)
    log.info(
        "Distilled %s (%d parameters) into a %s student (%d) in run %s",
        teacher_name,
        teacher_params,
        card["type"],
        student_params,
        result.run_id,
    )
    return [
        Variant(
            name=NAME,
            method="distill",
            runtime="onnx",
            model=student,
            card={
                "type": card["type"],
                "options": card["options"],
                # a compressed parent's reshaping does not apply to the student's network
                **{key: None for key in COMPRESSED_CARD_KEYS if job.card.get(key)},
            },
            run_id=result.run_id,
            details={
                "teacher": teacher_name,
                "teacher_ref": teacher_ref,
                "alpha": config.alpha,
                "temperature": config.temperature,
                "augment": config.augment,
                "student": {"type": card["type"], **card["options"]},
                "student_parameters": student_params,
                "teacher_parameters": teacher_params,
                "parameter_ratio": student_params / max(teacher_params, 1),
                "epochs_run": result.history[-1]["epoch"] if result.history else 0,
            },
        )
    ]
