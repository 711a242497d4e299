"""A trained model from its files: the model card (JSON), safetensors weights, preprocessing
(JSON) and optional calibration (JSON) — never a pickle. Runs and registered versions both hold
these files; the store hands them over through a ``read(file)`` function."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from danlu.errors import StoreError

if TYPE_CHECKING:
    import torch

    from danlu.data import FeatureSchema, Preprocessor
    from danlu.tasks import Task

__all__ = ["ModelBundle", "load_bundle", "load_weights"]

_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol ≥ 2, and torch.save's zip archive


def load_weights(raw: bytes, where: str) -> dict[str, torch.Tensor]:
    """Tensors from safetensors bytes; a pickled file is refused, never unpickled."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    if raw.startswith(_PICKLE_MAGIC):
        raise StoreError(
            f"{where} is a pickled file; danlu refuses to load pickled model files (they can run arbitrary code). Re-export the weights as safetensors."
        )
    try:
        return st_load(raw)
    except (SafetensorError, ValueError) as exc:
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


def load_bundle(read: Callable[[str], bytes | None], where: str) -> ModelBundle:
    """Rebuild a model from its files; ``read(file)`` returns the bytes, or None when absent.

    Raises:
        StoreError: a required file is missing, or the weights are pickled or corrupt.

    Example:
        >>> # bundle = load_bundle(lambda f: (run_dir / f).read_bytes(), "run 3f2a")
    """
    from danlu.config import ModelConfig
    from danlu.data import FeatureSchema, Preprocessor
    from danlu.models import build_model
    from danlu.tasks import get_task

    def required(file: str) -> bytes:
        raw = read(file)
        if raw is None:
            raise StoreError(f"{where} is missing its file '{file}'.")
        return raw

    card = json.loads(required("model.json"))
    schema = FeatureSchema.from_dict(card["schema"])
    task = get_task(card["task"])
    model = build_model(ModelConfig(type=card["type"], **card["options"]), schema, task)
    model.load_state_dict(load_weights(required("model.safetensors"), f"{where}/model.safetensors"))
    preprocessor = Preprocessor.from_dict(json.loads(required("preprocessing.json")))
    calibration = read("calibration.json")
    temperature = float(json.loads(calibration)["temperature"]) if calibration else 1.0
    if not temperature > 0:
        raise StoreError(f"{where}/calibration.json holds a temperature ≤ 0 ({temperature}).")
    return ModelBundle(model.eval(), task, schema, preprocessor, card, temperature)
