"""``POST /v1/models/{name}/recommend``: a recommender's best items for a user.

The body is ``{"user": ID, "k": 10?, "exclude_seen": true?, "items": [ID, ...]?}``: the user's
id as in the training data (a string or an integer), how many items (default the recipe's
``recommend.k``, at most the catalogue and :data:`MAX_K`), whether to leave out the items the
user interacted with in the data, and optionally the user's recent items (cold start: a user the
model does not know is answered by item-kNN on them). The answer::

    {"model": "movies", "version": 1, "ref": "movies:1", "user": "42", "k": 10,
     "items": ["318", "858", ...], "scores": [4.1, 3.9, ...],
     "fallback": null, "unknown_items": []}

A user the model was not trained on gets the most popular items (``"fallback":
"popularity"``), or with ``items`` the item-kNN answer (``"fallback": "item_knn"``); item ids
not in the catalogue are listed in ``unknown_items``. The scores come from the served runtime
(ONNX Runtime or torch) — the same raw outputs ``/predict`` decodes — and the ranking from
``danlu.tasks._recommendation.recommend``, so ``danlu.load_model(ref)`` answers the same. A
bad body is a 4xx naming the field (``user``, ``k``, ``exclude_seen``, ``items``); a model that
does not recommend is a 422 naming ``name``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from danlu.serve._codec import as_integer, decode_body
from danlu.serve._model_route import add_model_route
from danlu.serve._types import RequestError

if TYPE_CHECKING:
    from danlu.serve._state import ServerState

__all__ = ["MAX_ITEMS", "MAX_K", "RECOMMEND_PATH", "add_recommend_route", "read_recommend_request"]

RECOMMEND_PATH = "/v1/models/{name}/recommend"
MAX_K = 1000  # items in one answer
MAX_ITEMS = 10_000  # recent items in one request
_KEYS = frozenset({"user", "k", "exclude_seen", "items"})


def _id(value: Any, field: str) -> str | int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 42.0 is the integer 42, as JSON Schema's "integer" has it
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RequestError(field, f"must be an id (a string or an integer); got {value!r}.")
    if isinstance(value, str) and not value.strip():
        raise RequestError(field, "must be a non-empty id.")
    return value


def read_recommend_request(payload: Any) -> tuple[str | int, int | None, bool, list[Any] | None]:
    """``(user, k, exclude_seen, items)`` of a decoded body, each checked (``k`` against
    :data:`MAX_K`; the catalogue's size is checked by the model).

    Raises:
        RequestError: naming the field at fault.

    Example:
        >>> read_recommend_request({"user": 42, "k": 5})
        (42, 5, True, None)
    """
    if not isinstance(payload, dict):
        raise RequestError("body", 'must be a JSON object such as {"user": "42", "k": 10}.')
    unknown = sorted(set(payload) - _KEYS)
    if unknown:
        raise RequestError(
            unknown[0], "is not a key of a recommend request (user, k, exclude_seen, items)."
        )
    if "user" not in payload:
        raise RequestError("user", "is required: the id of the user to recommend items to.")
    user = _id(payload["user"], "user")
    k = payload.get("k")
    if k is not None:
        number = as_integer(k)
        if number is None or not 1 <= number <= MAX_K:
            raise RequestError("k", f"must be an integer from 1 to {MAX_K}; got {k!r}.")
        k = number
    exclude_seen = payload.get("exclude_seen", True)
    if not isinstance(exclude_seen, bool):
        raise RequestError("exclude_seen", f"must be true or false; got {exclude_seen!r}.")
    items = payload.get("items")
    if items is not None:
        if not isinstance(items, list):
            raise RequestError("items", "must be a list of item ids (the user's recent items).")
        if len(items) > MAX_ITEMS:
            raise RequestError(
                "items", f"holds {len(items):,} ids; send at most {MAX_ITEMS:,}.", 413
            )
        items = [_id(v, f"items[{i}]") for i, v in enumerate(items)]
    return user, k, exclude_seen, items


async def recommend_items(state: ServerState, name: str, raw: bytes) -> dict[str, Any]:
    """The answer of the model served as ``name`` to a raw request body.

    Raises:
        RequestError: a bad body (naming the field), or a model that does not recommend.
        NotFoundError: no model is served under ``name``.
    """
    from danlu.tasks._recommendation import recommend

    served = state.pool.route(name)
    if served.signature.get("task") != "recommendation":
        raise RequestError(
            "name",
            f"model '{name}' is a {served.signature.get('task')} model, not a recommender; "
            "use POST /v1/models/{name}/predict.",
        )
    user, k, exclude_seen, items = read_recommend_request(decode_body(raw))
    bundle, runtime = getattr(served, "bundle", None), getattr(served, "runtime", None)
    if bundle is None or runtime is None:  # a served model without a predictor (tests' fakes)
        raise RequestError("name", f"model '{name}' cannot rank items here.")
    catalogue = len(bundle.schema.classes or ())
    if k is not None and k > catalogue:
        raise RequestError("k", f"must be at most {catalogue}, the number of items; got {k}.")
    async with asyncio.timeout(state.settings.request_timeout_s):
        answer = await asyncio.to_thread(
            recommend, bundle, user, k, exclude_seen=exclude_seen, items=items,
            scores=runtime.outputs,
        )  # fmt: skip
    return {"model": name, "version": served.version, "ref": served.ref, **answer}


def add_recommend_route(app: FastAPI, state: ServerState) -> None:
    """Declare ``POST /v1/models/{name}/recommend`` (the predict scope)."""
    add_model_route(app, state, RECOMMEND_PATH, recommend_items)
