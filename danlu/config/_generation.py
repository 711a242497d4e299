"""``task: generation`` recipes without a label column.

A generative model of images needs no label: ``data.target`` only colours the report's
latent-space plot. ``data.target: null`` (or ``data.target`` left out for a file source) means
unlabelled images: the recipe then names the constant label column
:data:`~danlu.config.UNLABELLED_TARGET` that the data layer adds to the rows (a built-in's own
label column is dropped, never a feature), as for unlabelled anomaly data. A built-in source with
``data.target`` left out keeps its own label column (``builtin:digits``: the digit)::

    task: generation
    data: {source: builtin:digits, target: null, prepare: {scale: minmax}}
    model: {type: vae, latent: 8}
"""

from __future__ import annotations

from pydantic import BaseModel

from danlu.config._anomaly import UNLABELLED_TARGET

__all__ = ["unlabelled_generation"]

_BUILTIN = "builtin:"


def unlabelled_generation(data: object) -> object:
    """A raw ``task: generation`` recipe without labels, rewritten so ``data.target`` names
    :data:`~danlu.config.UNLABELLED_TARGET`. Without labels means ``data.target: null``, or
    ``data.target`` left out for a source that is not a built-in. Other recipes are returned as
    they are.

    Example:
        >>> out = unlabelled_generation({"task": "generation", "data": {"source": "x.csv"}})
        >>> out["data"]["target"]
        '_unlabelled'
        >>> kept = {"task": "generation", "data": {"source": "builtin:digits"}}
        >>> unlabelled_generation(kept) is kept
        True
    """
    if not isinstance(data, dict) or data.get("task") != "generation":
        return data
    given = data.get("data")
    if isinstance(given, BaseModel):
        target, explicit = getattr(given, "target", None), "target" in given.model_fields_set
        source = getattr(given, "source", None)
    elif isinstance(given, dict):
        target, explicit, source = given.get("target"), "target" in given, given.get("source")
    else:
        return data
    if target is not None:
        return data
    if not explicit and isinstance(source, str) and source.startswith(_BUILTIN):
        return data  # the built-in's own label column colours the plot
    if isinstance(given, BaseModel):
        rewritten: object = given.model_copy(update={"target": UNLABELLED_TARGET})
    else:
        rewritten = {**given, "target": UNLABELLED_TARGET}
    return {**data, "data": rewritten}
