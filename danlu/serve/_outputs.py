"""What a served model answers, whatever its task: the decoded outputs as JSON, and their schema.

A task's ``predict`` decodes raw outputs into ``{"prediction": ..., other outputs...}`` (numpy
arrays, one value per row); its signature names each output with its ``type`` and a JSON Schema
of one row's value. The response carries the prediction as ``predictions`` and every other
output of the signature under its own name (``probabilities``, ``scores``...), each a list with
one JSON value per row. When an output holds one score per class (a classifier's probabilities,
a multi-label model's label scores), ``classes`` names those columns, in their order
(:func:`response_classes`). Versions registered before signatures carried ``json_schema`` get one
derived from the output's ``type`` (:func:`row_schema`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "CLASSES",
    "PREDICTION",
    "json_rows",
    "response_classes",
    "response_key",
    "response_outputs",
    "row_schema",
]

PREDICTION = "prediction"  # the decoded output every task has; answered as "predictions"
CLASSES = "classes"  # the response key naming the columns of per-class scores


def response_key(output: str) -> str:
    """The response's key for a decoded output: ``predictions`` for the prediction, else the
    output's own name.

    Example:
        >>> response_key("prediction"), response_key("scores")
        ('predictions', 'scores')
    """
    return "predictions" if output == PREDICTION else output


def response_outputs(signature: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The outputs a version answers: decoded output name → JSON Schema of one row's value, the
    prediction first.

    Example:
        >>> response_outputs({"outputs": {"prediction": {"type": "float"}}})
        {'prediction': {'type': 'number'}}
    """
    outputs = signature.get("outputs")
    declared: Mapping[str, Any] = outputs if isinstance(outputs, Mapping) else {}
    result = {PREDICTION: row_schema(declared.get(PREDICTION))}
    for name, output in declared.items():
        if name != PREDICTION and isinstance(name, str):
            result[name] = row_schema(output)
    return result


def response_classes(signature: Mapping[str, Any]) -> list[Any] | None:
    """The class (or label) names the columns of a version's per-class scores stand for, in
    column order: the prediction's ``classes`` when another output holds one score per class
    (``probabilities``, ``scores``); None when no output does (regression).

    Example:
        >>> response_classes({"outputs": {
        ...     "prediction": {"type": "label", "classes": ["ham", "spam"]},
        ...     "probabilities": {"type": "float", "shape": [2]}}})
        ['ham', 'spam']
    """
    outputs = signature.get("outputs")
    if not isinstance(outputs, Mapping):
        return None
    prediction = outputs.get(PREDICTION)
    classes = prediction.get("classes") if isinstance(prediction, Mapping) else None
    if not isinstance(classes, list) or not classes:
        return None
    for name, output in outputs.items():
        if name != PREDICTION and isinstance(output, Mapping):
            if output.get("shape") == [len(classes)]:
                return list(classes)
    return None


def row_schema(output: Any) -> dict[str, Any]:
    """The JSON Schema of one row's value of an output the signature describes: its
    ``json_schema``, or for signatures without one (versions registered before it), the shape
    its ``type`` implies: ``label`` (one of ``classes``), ``labels`` (a list of them), ``float``
    (a number, or a list of ``shape[0]`` numbers); ``{}`` (any value) for anything else.

    Example:
        >>> row_schema({"type": "float", "shape": [2]})["maxItems"]
        2
    """
    if not isinstance(output, Mapping):
        return {}
    given = output.get("json_schema")
    if isinstance(given, Mapping):
        return dict(given)
    kind, classes, shape = output.get("type"), output.get("classes"), output.get("shape")
    label: dict[str, Any] = {"enum": list(classes)} if isinstance(classes, list) else {}
    if kind == "label":
        return label
    if kind == "labels":
        return {"type": "array", "items": label}
    if kind == "float" and isinstance(shape, list) and len(shape) == 1:
        k = shape[0]
        return {"type": "array", "items": {"type": "number"}, "minItems": k, "maxItems": k}
    if kind == "float":
        return {"type": "number"}
    return {}


_JSON_SCALARS = frozenset((str, int, float, bool, type(None)))


def _plain(value: Any) -> Any:
    """A decoded value as JSON types: numpy scalars and arrays, tuples and sets become Python
    numbers and lists."""
    kind = type(value)
    if kind in _JSON_SCALARS:
        return value
    if kind is list or kind is tuple:
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def json_rows(values: Any) -> list[Any]:
    """One decoded output of a batch as one JSON value per row: a numeric array through
    ``tolist`` (rows of a 2-D array become lists), an object array (labels, lists of labels)
    value by value where a value is not a JSON scalar already.

    Example:
        >>> json_rows(np.asarray([[0.25, 0.75]], dtype=np.float32))
        [[0.25, 0.75]]
    """
    if isinstance(values, np.ndarray):
        rows: list[Any] = values.tolist()
        if values.dtype != object:
            return rows
    else:
        rows = list(values)
    if set(map(type, rows)) <= _JSON_SCALARS:  # labels: strings or numbers already
        return rows
    return [_plain(v) for v in rows]
