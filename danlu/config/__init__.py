"""Recipes: the pydantic schema, YAML loading with line numbers, ``--set`` overrides, errors."""

from __future__ import annotations

from danlu.config._loader import (
    ConfigIssue,
    RecipeSource,
    apply_overrides,
    load_recipe,
    parse_override,
    raise_issues,
    recipe_to_dict,
    recipe_to_yaml,
)
from danlu.config._schema import (
    SCHEMA_VERSION,
    CheckpointConfig,
    DataConfig,
    EarlyStoppingConfig,
    ModelConfig,
    OptimizerConfig,
    PrepareConfig,
    Recipe,
    RegisterConfig,
    SchedulerConfig,
    SplitConfig,
    TrainConfig,
)

__all__ = [
    "SCHEMA_VERSION",
    "CheckpointConfig",
    "ConfigIssue",
    "DataConfig",
    "EarlyStoppingConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PrepareConfig",
    "Recipe",
    "RecipeSource",
    "RegisterConfig",
    "SchedulerConfig",
    "SplitConfig",
    "TrainConfig",
    "apply_overrides",
    "load_recipe",
    "parse_override",
    "raise_issues",
    "recipe_to_dict",
    "recipe_to_yaml",
]
