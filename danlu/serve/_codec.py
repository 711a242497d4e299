"""The JSON codec of the server: strict decoding of request bodies, compact encoding of answers.

A predict body is decoded strictly: UTF-8 only, JSON without NaN/Infinity literals, nesting at
most :data:`MAX_DEPTH` deep, and no object with a key twice (JSON readers disagree on which of
the two counts). Each refusal is a :class:`~danlu.serve._types.RequestError` naming ``body`` or
the repeated key. Answers are encoded without spaces; a NaN or infinity becomes null.
"""

from __future__ import annotations

import json
import math
from collections import deque
from typing import Any

from starlette.responses import Response

from danlu.serve._types import RequestError

__all__ = [
    "MAX_DEPTH",
    "as_integer",
    "decode_body",
    "dumps",
    "json_response",
    "refuse_duplicate_keys",
]

MAX_DEPTH = 32  # JSON nesting a request body may have ({"rows": [{...}]} needs 3)


def _reject_constant(literal: str) -> Any:
    raise RequestError(
        "body",
        f"contains {literal}, which is not a JSON number; send finite numbers "
        "(null where a value is missing)",
        400,
    )


# The bound the OpenAPI schema declares, 1.7976931348623157e308, read as an exact decimal: a
# JSON integer past it violates the schema even where it still rounds to the largest float.
_INT_LIMIT = 17976931348623157 * 10**292


def _parse_int(literal: str) -> Any:
    """A JSON integer; one beyond the schema's bound (the largest finite float, as written)
    becomes ±infinity, as a number literal that large does, so the row's parse refuses it
    naming its field."""
    value = int(literal)  # more digits than Python converts: ValueError, a 400 naming the body
    if -_INT_LIMIT <= value <= _INT_LIMIT:
        return value
    return -math.inf if value < 0 else math.inf


def as_integer(value: Any) -> int | None:
    """A decoded JSON value as an integer, if it is one: JSON Schema's "integer" (the OpenAPI
    document's) counts 25.0 as the integer 25, and so do the routes; not a bool, not 2.5.

    Example:
        >>> as_integer(25.0), as_integer(25), as_integer(2.5), as_integer(True)
        (25, 25, None, None)
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists/dicts more than ``limit`` levels (iterative: no recursion)."""
    if not isinstance(value, dict | list):
        return False
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def decode_body(body: bytes) -> dict[str, Any]:
    """Decode a predict body strictly; raises RequestError naming ``body`` (400, or 422 for a
    well-formed body that is not a JSON object), or naming a key an object has twice (400).

    Example:
        >>> decode_body(b'{"rows": [{"x": 1.5}]}')
        {'rows': [{'x': 1.5}]}
    """
    if not body:
        raise RequestError("body", 'is empty; send a JSON object such as {"rows": [{...}]}', 400)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(
            "body", f"is not valid UTF-8 (bad byte at offset {exc.start})", 400
        ) from None
    try:
        payload = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise RequestError(
            "body",
            f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} "
            f"(character {exc.pos})",
            400,
        ) from None
    except RecursionError:  # the C decoder stops at the interpreter's recursion limit
        raise RequestError(
            "body", f"nests arrays or objects deeper than {MAX_DEPTH} levels", 400
        ) from None
    except RequestError:  # NaN or Infinity (_reject_constant)
        raise
    except ValueError:  # an integer literal over Python's 4300-digit conversion limit
        raise RequestError(
            "body", "contains a number with too many digits; send at most 4300 digits", 400
        ) from None
    # only a body with many brackets can be deep: skip the walk for the usual small request
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and _too_deep(payload, MAX_DEPTH):
        raise RequestError("body", f"nests arrays or objects deeper than {MAX_DEPTH} levels", 400)
    # a key twice in one object: the decoder keeps the last one silently. When every colon of
    # the body belongs to a key counted here, there is none (1.5 µs for a 64-feature row,
    # against 4 µs for decoding with object_pairs_hook); any other body is decoded again, its
    # pairs kept, to find one
    if text.count(":") != _key_count(payload):
        refuse_duplicate_keys(text)
    if not isinstance(payload, dict):
        raise RequestError(
            "body", 'must be a JSON object: {"rows": [{...}, ...]} or {"columns": {...}}', 422
        )
    return payload


def _key_count(payload: Any) -> int:
    """The keys of a predict body: its own and those of the objects one level in (the rows, the
    columns); -1 for a body that is not an object."""
    if type(payload) is not dict:
        return -1
    count = len(payload)
    for value in payload.values():
        if type(value) is dict:
            count += len(value)
        elif type(value) is list:
            count += sum(len(item) for item in value if type(item) is dict)
    return count


class _Duplicated(dict[str, Any]):
    """A decoded object that had ``key`` twice."""

    key = ""


def _keep_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            marked = _Duplicated(obj)
            marked.key = key
            return marked
        seen.add(key)
    return obj  # pragma: no cover - a shorter dict means a repeated key


def refuse_duplicate_keys(text: str | bytes) -> None:
    """Raise RequestError (400, naming the key and where it is) when an object in the JSON
    ``text`` has a key twice; text that is not JSON is left to the caller to report.

    Example:
        >>> refuse_duplicate_keys('{"rows": [{"x": 1, "y": 2}]}')  # fine: returns None
        >>> # refuse_duplicate_keys('{"rows": [{"x": 1, "x": 2}]}') raises, field "rows[0].x"
    """
    try:
        payload = _PAIRS_DECODER.decode(text.decode("utf-8") if isinstance(text, bytes) else text)
    except (ValueError, RecursionError):
        return
    queue: deque[tuple[Any, str]] = deque([(payload, "")])
    while queue:  # breadth first: the shallowest repeat is named
        value, path = queue.popleft()
        if isinstance(value, dict):
            if isinstance(value, _Duplicated):
                raise RequestError(
                    f"{path}.{value.key}" if path else value.key,
                    "appears twice in one object; send each key once (JSON readers disagree on "
                    "which of the two counts).",
                    400,
                    code="duplicate_key",
                )
            queue.extend((v, f"{path}.{k}" if path else k) for k, v in value.items())
        elif isinstance(value, list):
            queue.extend((v, f"{path}[{i}]") for i, v in enumerate(value))


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as null (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """json.dumps' fallback for numpy values."""
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# built once: json.loads/json.dumps with options build a new decoder/encoder on every call
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_parse_int)
_PAIRS_DECODER = json.JSONDecoder(object_pairs_hook=_keep_pairs)
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"), default=_plain)


def dumps(content: Any) -> bytes:
    """``content`` as compact JSON bytes; numpy values as lists and numbers, NaN and infinities
    as null.

    Example:
        >>> dumps({"p": [0.5, float("nan")]})
        b'{"p":[0.5,null]}'
    """
    try:
        text = _ENCODER.encode(content)
    except ValueError:  # a NaN somewhere: the slow path
        text = json.dumps(
            _finite(json.loads(json.dumps(content, default=_plain))), separators=(",", ":")
        )
    return text.encode()


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response of ``content`` (encoded by :func:`dumps`)."""
    return Response(dumps(content), status, headers, media_type="application/json")
