"""danlu — a self-hosted model factory.

From a dataset and one YAML recipe to a trained, tracked PyTorch model::

    import danlu
    result = danlu.run("examples/digits_cnn.yaml")
    print(result.metrics["accuracy"])

Importing ``danlu`` is cheap: torch and friends load when a stage needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Result", "__version__", "load_model", "load_recipe", "run"]

if TYPE_CHECKING:
    from danlu.config import load_recipe
    from danlu.export import load_model
    from danlu.pipeline import Result, run


def __getattr__(name: str) -> Any:
    if name in {"run", "Result"}:
        from danlu import pipeline

        return getattr(pipeline, name)
    if name == "load_model":
        from danlu.export import load_model

        return load_model
    if name == "load_recipe":
        from danlu.config import load_recipe

        return load_recipe
    raise AttributeError(f"module 'danlu' has no attribute '{name}'")
