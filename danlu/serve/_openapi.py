"""The OpenAPI side of ``danlu serve``: the response shapes the routes declare, the error codes,
and the spec itself — with one predict path per served model whose request body is built from the
model's signature (pydantic models turned into JSON Schema)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from danlu.errors import NotFoundError
from danlu.serve._auth import ADMIN, PREDICT, PUBLIC, route_scopes
from danlu.serve._guard import EXEMPT_PATHS
from danlu.serve._outputs import (
    CLASSES,
    PREDICTION,
    response_classes,
    response_key,
    response_outputs,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

    from danlu.serve._limits import RowLimits
    from danlu.serve._types import ModelPoolLike, ServedModelLike

__all__ = [
    "ERROR_CODES",
    "AliasRequest",
    "AliasSet",
    "DriftReport",
    "ErrorBody",
    "FailedModel",
    "LoadRequest",
    "ModelInfo",
    "ModelList",
    "ModelSummary",
    "Status",
    "Unloaded",
    "build_openapi",
    "declare_errors",
    "errors",
    "model_operation",
    "predict_response_schema",
    "schema_prefix",
]

_FLOAT_MAX = 1.7976931348623157e308
_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "too_many_requests",
    500: "internal",
    501: "not_implemented",
    503: "unavailable",
    504: "timeout",
}


# -- response shapes (OpenAPI) --------------------------------------------------------------------
class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(BaseModel):
    status: int
    code: str
    field: str | None = None
    message: str
    request_id: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class CanaryInfo(_Open):
    ref: str
    version: int
    share: float | None = None


class ModelSummary(_Open):
    name: str
    version: int
    ref: str
    runtime: str
    task: str | None = None
    canary: CanaryInfo | None = None


class FailedModel(BaseModel):
    name: str
    ref: str
    role: str  # model | canary
    error: str


class ModelList(BaseModel):
    models: list[ModelSummary]
    failed: list[FailedModel] = []  # named at start-up, not loadable


class ModelInfo(ModelSummary):
    signature: dict[str, Any]
    metrics: dict[str, float | None]
    queue_depth: int


class DriftReport(_Open):
    model: str
    version: int
    features: list[dict[str, Any]] = []
    canary: dict[str, Any] | None = None


class Status(_Open):
    status: str
    models: list[str] | None = None
    failed: list[str] | None = None


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ref: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}(:[0-9]{1,9}|@[A-Za-z][A-Za-z0-9._-]{0,99})?$",
        description="NAME (latest), NAME:VERSION or NAME@ALIAS, e.g. wine@production",
    )
    name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
        description="the name to serve it under (default: the model's own), e.g. wine-tuned",
    )


class AliasRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alias: str = Field(
        pattern=r"^[A-Za-z][A-Za-z0-9._-]{0,99}$",
        description="a name starting with a letter, e.g. production",
    )
    version: int = Field(ge=1, le=2**31 - 1, description="the version the alias points at")


class Unloaded(BaseModel):
    model: str
    unloaded: bool


class AliasSet(BaseModel):
    model: str
    alias: str
    version: int
    serving: ModelSummary | None = None


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody, "description": ERROR_CODES[code]} for code in codes}


# -- the spec ---------------------------------------------------------------------------------------
MAX_ENUMERATED_ROWS = 4096  # past this, "equally long columns" is said in words only


def _model_request_schemas(
    name: str, signature: dict[str, Any], max_rows: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The predict body of one model (``{"rows": [Row]}`` or ``{"columns": {...}}``, and for a
    sequence model ``{"rows": [{"series": [[...]]}]}``), as a
    requestBody schema and the component schemas it refers to — pydantic models built from the
    model's signature, so that a body valid under the schema is one the server answers.

    JSON Schema has no keyword for "these arrays are equally long"; the columns form says it as
    one ``anyOf`` branch per row count n (every column has exactly n values), up to
    ``max_rows`` (the model's row limit; at most MAX_ENUMERATED_ROWS)."""
    from typing import Annotated

    from pydantic import create_model
    from pydantic.json_schema import models_json_schema

    prefix = schema_prefix(name)
    # what ServedModel.parse accepts: a number where a float is expected, 0/1 for a boolean, a
    # number for a category, and null where training learned a fill value
    finite = Annotated[float, Field(allow_inf_nan=False, ge=-_FLOAT_MAX, le=_FLOAT_MAX)]
    row: dict[str, Any] = {}
    columns: dict[str, Any] = {}
    for i, feature in enumerate(signature.get("inputs") or ()):
        kind_type: Any
        kind_type, what = _input_type(feature, finite)
        if feature.get("nullable", True):  # False: trained with missing: drop (no fill value)
            kind_type = kind_type | None
            what += " (null: the value learned in training)"
        alias = str(feature.get("name"))
        row[f"f{i}"] = (kind_type, Field(alias=alias, description=what))
        columns[f"f{i}"] = (
            list[kind_type],
            Field(
                alias=alias, min_length=1, max_length=max_rows, description=f"one per row: {what}"
            ),
        )
    forbid = ConfigDict(extra="forbid")
    row_model = create_model(f"{prefix}_Row", __config__=forbid, **row)
    columns_model = create_model(f"{prefix}_Columns", __config__=forbid, **columns)
    by_rows = create_model(
        f"{prefix}_RowsRequest",
        __config__=forbid,
        rows=(list[row_model], Field(min_length=1, max_length=max_rows)),
    )
    by_columns = create_model(
        f"{prefix}_ColumnsRequest",
        __config__=forbid,
        columns=(columns_model, Field(description="feature → its values; all lists equally long")),
    )
    forms: list[Any] = [by_rows, by_columns]
    sequence = signature.get("sequence")
    if isinstance(sequence, dict):
        forms.append(_series_request(prefix, signature, sequence, finite, max_rows))
    refs, top = models_json_schema(
        [(form, "validation") for form in forms], ref_template="#/components/schemas/{model}"
    )
    body = {"oneOf": [refs[(form, "validation")] for form in forms]}
    defs = top.get("$defs", {})
    if columns and max_rows <= MAX_ENUMERATED_ROWS:
        defs[f"{prefix}_Columns"]["oneOf"] = [
            {"additionalProperties": {"minItems": n, "maxItems": n}} for n in range(1, max_rows + 1)
        ]
    return body, defs


def _series_request(
    prefix: str, signature: dict[str, Any], sequence: dict[str, Any], finite: Any, max_rows: int
) -> Any:
    """The request of a sequence model that sends each row's series as one array:
    ``{"rows": [{"series": [[...length] × channels]}]}`` (one channel: ``[...length]`` too)."""
    from typing import Annotated

    from pydantic import create_model

    channels, length = int(sequence["channels"]), int(sequence["length"])
    inputs = signature.get("inputs") or ()
    # null is accepted where every step learned a fill (the server checks step by step)
    step: Any = finite
    if inputs and all(f.get("nullable", True) for f in inputs):
        step = finite | None
    steps = Annotated[list[step], Field(min_length=length, max_length=length)]
    nested = Annotated[list[steps], Field(min_length=channels, max_length=channels)]
    what = (
        f"{channels} series (channels) of {length} steps each"
        if channels > 1
        else f"the series: {length} numbers, or a list holding that one list"
    )
    kind: Any = nested if channels > 1 else steps | nested
    row = create_model(
        f"{prefix}_SeriesRow",
        __config__=ConfigDict(extra="forbid"),
        series=(kind, Field(description=what)),
    )
    return create_model(
        f"{prefix}_SeriesRequest",
        __config__=ConfigDict(extra="forbid"),
        rows=(
            list[row],
            Field(
                min_length=1,
                max_length=max_rows,
                description="one row per sequence; the steps in the order of the features "
                f"{', '.join(str(f.get('name')) for f in list(inputs)[:3])}...",
            ),
        ),
    )


def _input_type(feature: dict[str, Any], finite: Any) -> tuple[Any, str]:
    """The type one value of an input may have in a request body, and its description."""
    from typing import Annotated, Literal

    kind = feature.get("kind")
    if kind == "boolean":
        return bool | Literal[0, 1], "true or false"
    if kind == "categorical":
        known = [str(c) for c in feature.get("categories") or ()]
        listed = ", ".join(known[:50]) + (", ..." if len(known) > 50 else "")
        return str | finite, f"one of the known categories: {listed}" if known else "a category"
    if kind == "datetime":
        own = feature.get("date_format")
        what = "a date-time in ISO 8601 (a date alone, 2024-05-01, is accepted too" + (
            f"; so is the training data's format, {own})" if own else ")"
        )
        return Annotated[str, Field(json_schema_extra={"format": "date-time"})], what
    if kind == "text":
        from danlu.serve._parse import MAX_TEXT_CHARS

        limit = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
        return (
            limit,
            f"a text (at most {MAX_TEXT_CHARS:,} characters; the model reads its first tokens)",
        )
    if feature.get("errors") == "nan":
        return finite | str, "a finite number (a string that is not a number counts as missing)"
    return finite, "a finite number"


def _security(scope: str) -> list[dict[str, list[str]]]:
    keys: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
    return keys if scope == ADMIN else [*keys, {}]  # {}: no key needed (no keys, loopback)


def declare_errors(operation: dict[str, Any], *codes: int) -> None:
    """Add error responses (ErrorBody) an operation may answer, where it declares none yet."""
    responses = operation.setdefault("responses", {})
    for code in codes:
        responses.setdefault(
            str(code),
            {
                "description": ERROR_CODES[code],
                "content": {"application/json": {"schema": _ERROR_REF}},
            },
        )


def build_openapi(
    app: FastAPI,
    pool: ModelPoolLike,
    row_limits: RowLimits,
    cache: dict[Any, dict[str, Any]],
    *,
    generate_max_tokens: int = 1024,
) -> dict[str, Any]:
    """The app's OpenAPI document, with one predict path per served model (cached per set of
    served versions): its request body and its response, both built from the model's signature;
    and, for a model whose task answers one, its ``/generate``, ``/forecast`` or ``/recommend``
    path (``_openapi_tasks``).

    Every operation declares every status it can answer besides 500: the route's own, and those
    of the checks in front of every route — 400 for a Host not allowed (but /healthz and
    /readyz), 403 for a cross-site Origin and 415 for a body that is not JSON (on the methods
    that change something), 401 and 503 (keys cannot be checked) where a key may be needed, and
    400/408/413 where a body is read."""
    from fastapi.openapi.utils import get_openapi

    from danlu.serve._openapi_tasks import task_operation

    served = []
    for name in sorted(pool.names()):
        try:
            served.append((name, pool.primary(name)))
        except NotFoundError:  # unloaded meanwhile
            continue
    key = tuple((name, model.ref) for name, model in served)
    if key in cache:
        return cache[key]

    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)  # our 422 body is ErrorBody
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    schemas.update(models_json_schema_of(ErrorBody)[1])
    paths = schema.setdefault("paths", {})
    for name, model in served:
        path, operation = _predict_operation(name, model, row_limits, schemas)
        paths[path] = {"post": operation}
        task = task_operation(name, model, schemas, generate_max_tokens=generate_max_tokens)
        if task is not None:
            paths[task[0]] = {"post": task[1]}
    scopes = route_scopes(app)
    for path, item in paths.items():
        scope = scopes.get(path, PREDICT if path.startswith("/v1/models/") else PUBLIC)
        for method, operation in item.items():
            _declare_checks(path, method.upper(), operation, scope)
    cache.clear()
    cache[key] = schema
    return schema


def _predict_operation(
    name: str, model: ServedModelLike, row_limits: RowLimits, schemas: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The predict path of one served model and its operation; the component schemas its request
    and response refer to go into ``schemas``."""
    prefix = schema_prefix(name)
    limit = row_limits.of(model.signature, model.ref)
    body, defs = _model_request_schemas(name, model.signature, limit)
    schemas.update(defs)
    schemas[f"{prefix}_PredictResponse"] = predict_response_schema(model.signature)
    response_ref = {"$ref": f"#/components/schemas/{prefix}_PredictResponse"}
    operation = model_operation(
        name, model.ref, "predict", body, response_ref, answered="predictions"
    )
    operation["description"] = (
        f"At most {limit} rows per request ({row_limits.why(model.signature, model.ref)})."
    )
    declare_errors(operation, 400, 401, 403, 404, 408, 413, 415, 422, 503, 504)
    return f"/v1/models/{name}/predict", operation


def model_operation(
    name: str,
    ref: str,
    route: str,
    body: dict[str, Any],
    answer: dict[str, Any],
    *,
    answered: str = "the answer",
) -> dict[str, Any]:
    """The operation of one served model's ``route`` (predict, generate, ...): its JSON request
    body and its 200 answer, by the version named in ``X-Model-Version``."""
    return {
        "tags": [route],
        "summary": f"{route.capitalize()} with {name} ({ref})",
        "operationId": f"{route}_{schema_prefix(name)}",
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {
            "200": {
                "description": f"{answered} by the version that answered (also in X-Model-Version)",
                "content": {"application/json": {"schema": answer}},
                "headers": {"X-Model-Version": {"schema": {"type": "string"}}},
            }
        },
    }


def predict_response_schema(signature: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of a model's predict answer: ``model``, ``version``, ``ref``, and one list
    per output of its signature (``predictions`` and the task's others, such as
    ``probabilities`` or ``scores``), each item that output's ``json_schema`` for one row (for
    versions registered without one: a schema derived from the output's type), and, when an
    output holds one score per class, ``classes``: the class each of its columns stands for. JSON has no NaN
    or infinity: a number the model could not compute is answered as null, so the numbers of
    the schema may be null.

    Example:
        >>> schema = predict_response_schema({"outputs": {"prediction": {"type": "float"}}})
        >>> schema["properties"]["predictions"]["items"]
        {'type': 'number'}
    """
    outputs = {response_key(name): row for name, row in response_outputs(signature).items()}
    properties: dict[str, Any] = {
        "model": {"type": "string", "description": "the name the model is served under"},
        "version": {"type": "integer", "description": "the version that answered"},
        "ref": {"type": "string", "description": "NAME:VERSION of the version that answered"},
    }
    for key, row in outputs.items():
        items = _nullable_numbers(row)
        properties[key] = {"type": "array", "items": items, "description": "one per row"}
    required = ["model", "version", "ref", *outputs]
    classes = response_classes(signature)
    if classes is not None:
        scored = ", ".join(k for k in outputs if k != response_key(PREDICTION))
        properties[CLASSES] = {
            "type": "array",
            "items": {"enum": classes},
            "minItems": len(classes),
            "maxItems": len(classes),
            "description": f"the class each column of {scored} stands for, in column order",
            "example": classes,
        }
        required.append(CLASSES)
    return {
        "title": "PredictResponse",
        "type": "object",
        "properties": properties,
        "required": required,
    }


def _nullable_numbers(schema: Any) -> Any:
    """``schema`` with every ``number`` (and ``integer``) type also allowing null."""
    if isinstance(schema, list):
        return [_nullable_numbers(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _nullable_numbers(v) for k, v in schema.items() if k != "type"}
    kind = schema.get("type")
    if kind in ("number", "integer"):
        out["type"] = [kind, "null"]
    elif kind is not None:
        out["type"] = kind
    return out


def _declare_checks(path: str, method: str, operation: dict[str, Any], scope: str) -> None:
    """Declare on an operation the statuses of the checks in front of every route."""
    for status, response in operation.get("responses", {}).items():
        if status == "422":
            response["content"] = {"application/json": {"schema": _ERROR_REF}}
    if path not in EXEMPT_PATHS:
        declare_errors(operation, 400)  # a Host not allowed
    if method in ("POST", "PUT", "PATCH", "DELETE"):
        declare_errors(operation, 403)  # a cross-site Origin
    if method in ("POST", "PUT", "PATCH"):
        declare_errors(operation, 415)  # a body that is not JSON
    if "requestBody" in operation:
        declare_errors(operation, 400, 408, 413)
    if scope != PUBLIC:
        operation["security"] = _security(scope)
        declare_errors(operation, 401, 503)


def schema_prefix(name: str) -> str:
    """A served name as a component-schema and operation-id prefix."""
    return re.sub(r"[^A-Za-z0-9]", "_", name)


def models_json_schema_of(model: type[BaseModel]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the model's own schema, every schema it defines) with refs into components."""
    from pydantic.json_schema import models_json_schema

    refs, top = models_json_schema(
        [(model, "serialization")], ref_template="#/components/schemas/{model}"
    )
    return refs[(model, "serialization")], top.get("$defs", {})
