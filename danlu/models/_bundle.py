"""A trained model from its files: the model card (JSON), safetensors weights, preprocessing
(JSON) and optional calibration (JSON) — never a pickle. Runs and registered versions both hold
these files; the store hands them over through a ``read(file)`` function."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from danlu.errors import NotFoundError, StoreError

if TYPE_CHECKING:
    import torch

    from danlu.data import FeatureSchema, Preprocessor
    from danlu.tasks import Task

__all__ = ["ModelBundle", "load_bundle", "load_weights"]

_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol ≥ 2, and torch.save's zip archive


def load_weights(raw: bytes, where: str) -> dict[str, torch.Tensor]:
    """Tensors from safetensors bytes; a pickled file is refused, never unpickled.

    The bytes are parsed as safetensors first (which runs no code): a safetensors header of
    128 bytes begins with the same byte as a pickle (``0x80``), so the pickle test only words
    the error of a file that is not safetensors.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    try:
        return st_load(raw)
    except (SafetensorError, ValueError) as exc:
        if raw.startswith(_PICKLE_MAGIC):
            raise StoreError(
                f"{where} is a pickled file; danlu refuses to load pickled model files (they can run arbitrary code). Re-export the weights as safetensors."
            ) from None
        raise StoreError(f"{where} is not a valid safetensors file ({exc}).") from None


@dataclass
class ModelBundle:
    """A rebuilt model with what it needs to predict raw rows.

    Attributes:
        model: the network, weights loaded, in eval mode.
        task: its task.
        schema: its feature schema.
        preprocessor: the fitted preprocessing of raw rows.
        card: the model card (``model.json``): type, options, task, schema.
        temperature: the logits' temperature from ``calibration.json`` (1.0 when uncalibrated).
    """

    model: torch.nn.Module
    task: Task
    schema: FeatureSchema
    preprocessor: Preprocessor
    card: dict[str, Any]
    temperature: float = 1.0


def _card(raw: bytes, where: str) -> dict[str, Any]:
    """The model card, its shape checked: it is data from the store, not code."""
    try:
        card = json.loads(raw)
    except ValueError as exc:
        raise StoreError(f"{where}/model.json is not valid JSON ({exc}).") from None
    expected = {"type": str, "task": str, "options": dict, "schema": dict}
    wrong = [
        key
        for key, kind in expected.items()
        if not isinstance(card, dict) or not isinstance(card.get(key), kind)
    ]
    if wrong:
        raise StoreError(
            f"{where}/model.json is not a danlu model card: {', '.join(wrong)} missing or of the "
            "wrong type. Register the run again to rewrite it."
        )
    return card


def _check_registered(card: dict[str, Any], where: str) -> Task:
    """Check the card's architecture and task against the registries before anything is built.

    The card is read from the store, so its ``type`` is never imported as it stands: only a
    built-in architecture or a builder the operator allow-lists (``DANLU_ALLOWED_BUILDERS``).
    Its ``task`` must be a registered task; tasks are never imported from a path.
    """
    from danlu.models import MODELS
    from danlu.tasks import TASKS

    try:
        MODELS.get(card["type"], trusted=False)  # refuses an unlisted import path unimported
    except NotFoundError as exc:
        raise NotFoundError(f"{where}: {exc}") from None
    if card["task"] not in TASKS:
        raise NotFoundError(
            f"{where}: unknown task {card['task']!r} in model.json; a stored model's task must be "
            f"one of {', '.join(TASKS.names())}."
        )
    return TASKS.get(card["task"]).builder()


def load_bundle(read: Callable[[str], bytes | None], where: str) -> ModelBundle:
    """Rebuild a model from its files; ``read(file)`` returns the bytes, or None when absent.

    Only built-in architectures and tasks are rebuilt, plus builders whose module the operator
    allow-lists in ``DANLU_ALLOWED_BUILDERS``: an import path in ``model.json`` is never
    imported on its own say-so.

    Raises:
        StoreError: a required file is missing or malformed, or the weights are pickled or
            corrupt.
        NotFoundError: the card names an architecture or task that is neither built in nor
            allow-listed (nothing was imported).

    Example:
        >>> # bundle = load_bundle(lambda f: (run_dir / f).read_bytes(), "run 3f2a")
    """
    from danlu.config import ModelConfig
    from danlu.data import FeatureSchema, Preprocessor
    from danlu.models import build_model

    def required(file: str) -> bytes:
        raw = read(file)
        if raw is None:
            raise StoreError(f"{where} is missing its file '{file}'.")
        return raw

    card = _card(required("model.json"), where)
    task = _check_registered(card, where)
    schema = FeatureSchema.from_dict(card["schema"])
    config = ModelConfig.model_validate({**card["options"], "type": card["type"]})
    model = build_model(config, schema, task, trusted=False)
    model.load_state_dict(load_weights(required("model.safetensors"), f"{where}/model.safetensors"))
    preprocessor = Preprocessor.from_dict(json.loads(required("preprocessing.json")))
    calibration = read("calibration.json")
    temperature = float(json.loads(calibration)["temperature"]) if calibration else 1.0
    if not temperature > 0:
        raise StoreError(f"{where}/calibration.json holds a temperature ≤ 0 ({temperature}).")
    return ModelBundle(model.eval(), task, schema, preprocessor, card, temperature)
