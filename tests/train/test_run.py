"""check_recipe: what a recipe may not combine, before anything runs."""

from __future__ import annotations

import pytest

from danlu.config import load_recipe
from danlu.errors import ConfigError
from danlu.train import check_recipe

BLOCKS = {
    "anomaly": ("anomaly", {"anomalous": [1]}),
    "forecast": ("forecasting", {"time": "t", "horizon": 2}),
    "recommend": ("recommendation", {"user": "u", "item": "i"}),
    "language_model": ("language_model", {"text": "text"}),
}


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_a_task_block_on_another_task_is_refused_naming_it(block):
    owner, settings = BLOCKS[block]
    recipe = load_recipe(
        {
            "name": "t",
            "task": "classification",
            "data": {"source": "builtin:wine", "target": "target"},
            "model": {"type": "mlp"},
            block: settings,
        }
    )
    with pytest.raises(ConfigError) as caught:
        check_recipe(recipe)
    message = str(caught.value)
    assert f"applies to task: {owner} only" in message
    assert f"Remove the {block} block, or set task: {owner}" in message
