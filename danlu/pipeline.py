"""Runs a recipe's stages in order. Today: prepare data → train → test metrics → register
(``danlu.train.run_training``); ``danlu tune`` searches the recipe's ``tune:`` block
(``danlu.tune``). Each later stage (evaluation, compression, export) chains on here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from danlu.config import Recipe

if TYPE_CHECKING:
    from danlu.train._run import Result, check_recipe, register_run
    from danlu.train._run import run_training as run

__all__ = ["Result", "check_recipe", "recipe_json_schema", "register_run", "run"]


def __getattr__(name: str) -> Any:
    """``Result``, ``check_recipe`` and ``register_run`` live in ``danlu.train`` (loaded lazily:
    importing this module must not import torch)."""
    if name in {"Result", "check_recipe", "register_run"}:
        from danlu.train import _run

        return getattr(_run, name)
    if name == "run":  # one stage so far: training; evaluation, compression, export chain on here
        from danlu.train._run import run_training

        return run_training
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def recipe_json_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe, with each registered model's options under ``model``."""
    from danlu.models import MODELS

    schema = Recipe.model_json_schema()
    variants = []
    for entry in MODELS:
        if entry.spec is None:
            continue
        spec = entry.spec.model_json_schema()
        spec["properties"] = {"type": {"const": entry.name}, **spec.get("properties", {})}
        spec["required"] = ["type", *spec.get("required", [])]
        spec.pop("title", None)
        variants.append(spec)
    variants.append(
        {
            "type": "object",
            "properties": {"type": {"type": "string", "pattern": r"^[\w.]+:\w+$"}},
            "required": ["type"],
            "description": "A user model: package.module:function.",
        }
    )
    schema["$defs"]["ModelConfig"] = {
        "description": schema["$defs"]["ModelConfig"].get("description", ""),
        "anyOf": variants,
    }
    return schema
