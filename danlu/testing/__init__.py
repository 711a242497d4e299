"""Tiny fixtures for danlu's own tests and for plug-in authors' tests.

Imported only by tests; never by the library itself.
"""

from __future__ import annotations

import copy
from typing import Any

from danlu.data import FeatureSchema

__all__ = ["tiny_schema", "wine_recipe"]

_WINE: dict[str, Any] = {
    "name": "wine",
    "data": {"source": "builtin:wine"},
    "task": "classification",
    "model": {"type": "mlp", "hidden": [16]},
    "train": {"epochs": 4, "batch_size": 16},
}


def wine_recipe(**train: Any) -> dict[str, Any]:
    """A small real recipe (scikit-learn's wine, an MLP) that trains in well under a second.

    Example:
        >>> wine_recipe(epochs=2)["train"]["epochs"]
        2
    """
    recipe = copy.deepcopy(_WINE)
    recipe["train"].update(train)
    return recipe


def tiny_schema(
    task: str = "classification",
    *,
    input_dim: int = 2,
    classes: tuple[Any, ...] | None = (0, 1),
    image_shape: tuple[int, ...] | None = None,
    target_mean: float | None = None,
    target_std: float | None = None,
) -> FeatureSchema:
    """A feature schema without data behind it, for testing model builders and tasks."""
    return FeatureSchema(
        features=(),
        target="target",
        task=task,
        classes=classes if task == "classification" else None,
        target_mean=target_mean,
        target_std=target_std,
        image_shape=image_shape,
        input_dim=input_dim,
        encoded_names=tuple(f"x{i}" for i in range(input_dim)),
    )
