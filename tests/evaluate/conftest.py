"""A trained model and its prepared data, ready for the report's sections (cached per session)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="session")
def make_eval_data(tmp_path_factory):
    """``make_eval_data(source, task, model, epochs, **data)`` trains a small model once per
    argument set and returns a fresh :class:`danlu.evaluate.EvalData` on its test split."""
    cache: dict[Any, Any] = {}

    def make(
        source: str = "builtin:breast_cancer",
        task: str = "classification",
        model: dict[str, Any] | None = None,
        epochs: int = 5,
        **data: Any,
    ):
        from danlu.config import load_recipe
        from danlu.data import prepare_data
        from danlu.evaluate import EvalData
        from danlu.store import SqlStore
        from danlu.train import run_training

        key = (source, task, repr(model), epochs, repr(sorted(data.items())))
        if key not in cache:
            recipe = load_recipe(
                {
                    "name": "evaluate-test",
                    "data": {"source": source, **data},
                    "task": task,
                    "model": model or {"type": "mlp", "hidden": [32], "dropout": 0.0},
                    "train": {"epochs": epochs, "checkpoint": {"every": 0}, "seed": 0},
                }
            )
            prepared = prepare_data(recipe.data, recipe.task)
            store = SqlStore(home=tmp_path_factory.mktemp("evaluate-home"))
            result = run_training(recipe, prepared=prepared, store=store)
            store.close()
            cache[key] = (result, prepared)
        result, prepared = cache[key]
        return EvalData.from_prepared(result.model.eval(), result.task, prepared)

    return make
