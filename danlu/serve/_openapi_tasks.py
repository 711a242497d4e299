"""The OpenAPI operations of the routes only some models answer, beside ``/predict``:
``/generate`` (a language model), ``/forecast`` (a forecaster) and ``/recommend`` (a
recommender). Each served model of that task gets its own path, as it gets its own predict path,
with the request body built from its signature (pydantic models turned into JSON Schema): a
forecaster's history is at least its ``lags`` values long and names its covariates, a
recommender's ``k`` stops at its catalogue, a language model's ``max_tokens`` at the server's
cap. What JSON Schema cannot say (a prompt's length in tokens, ``times`` as long as
``history``) is said in the descriptions, and answered with a 4xx naming the field."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from danlu.serve._openapi import _FLOAT_MAX, declare_errors, model_operation, schema_prefix

if TYPE_CHECKING:
    from danlu.serve._types import ServedModelLike

__all__ = ["task_operation"]

_FORBID = ConfigDict(extra="forbid")
Finite = Annotated[float, Field(allow_inf_nan=False, ge=-_FLOAT_MAX, le=_FLOAT_MAX)]


def _finite(*, gt: float | None = None, ge: float | None = None, le: float) -> Any:
    """A finite number above ``gt`` (or from ``ge``) up to ``le``."""
    return Annotated[float, Field(allow_inf_nan=False, gt=gt, ge=ge, le=le)]


# a number the model could not compute is answered as null (JSON has no NaN)
Number = float | None
Id = Annotated[str, Field(min_length=1, pattern=r"\S")] | int


class _Answer(BaseModel):
    model: str = Field(description="the name the model is served under")
    version: int = Field(description="the version that answered (also in X-Model-Version)")
    ref: str = Field(description="NAME:VERSION of the version that answered")


class GenerateResponse(_Answer):
    text: str = Field(description="the generated continuation of the prompt")
    finish_reason: Literal["length", "stop", "eos", "cancelled", "error"] = Field(
        description="length: max_tokens reached; stop: a stop string; eos: the end-of-text token"
    )
    prompt_tokens: int = Field(description="the prompt's tokens the model read")
    truncated_prompt_tokens: int = Field(description="the prompt's oldest tokens left unread")
    completion_tokens: int
    seconds: float
    tokens_per_second: float
    runtime: Literal["torch"] = Field(description="generation always runs the torch model")


class RecommendResponse(_Answer):
    user: str = Field(description="the user's id, as a string")
    k: int = Field(description="the number of items asked for")
    items: list[str] = Field(description="the best item ids, best first (fewer than k when the user has seen nearly every item)")  # fmt: skip
    scores: list[Number] = Field(description="their scores, larger is better")
    fallback: Literal["popularity", "item_knn"] | None = Field(
        description="null: the model answered; else a user it does not know, answered by "
        "popularity or, given items, by item-kNN on them"
    )
    unknown_items: list[str] = Field(description="ids of items that are not in the catalogue")


def task_operation(
    name: str,
    model: ServedModelLike,
    schemas: dict[str, Any],
    *,
    generate_max_tokens: int,
) -> tuple[str, dict[str, Any]] | None:
    """The path and operation of the task route the model served as ``name`` answers, if its
    task has one (None otherwise); the component schemas they refer to go into ``schemas``,
    named after the served name as the predict path's are."""
    signature = model.signature
    task = signature.get("task")
    prefix = schema_prefix(name)
    if task == "language_model" and isinstance(signature.get("generate"), dict):
        return _generate(name, model, schemas, prefix, generate_max_tokens)
    if task == "forecasting" and isinstance(signature.get("forecast"), dict):
        return _forecast(name, model, schemas, prefix)
    if task == "recommendation":
        return _recommend(name, model, schemas, prefix)
    return None


def _components(schemas: dict[str, Any], *models: type[BaseModel]) -> list[dict[str, Any]]:
    """Put the models (and every schema they define) into ``schemas``; their refs, in order."""
    from pydantic.json_schema import models_json_schema

    refs, top = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    schemas.update(top.get("$defs", {}))
    return [refs[(m, "validation")] for m in models]


def _generate(
    name: str, model: ServedModelLike, schemas: dict[str, Any], prefix: str, cap: int
) -> tuple[str, dict[str, Any]]:
    from danlu.serve._generate import MAX_STOP_CHARS, MAX_STOPS

    context = int(model.signature.get("context") or 0)
    stop = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
    request = create_model(
        f"{prefix}_GenerateRequest",
        __config__=_FORBID,
        prompt=(
            str,
            Field(
                description=f"the text to continue; at most {context} tokens (a longer prompt "
                "is a 413 naming prompt: send its newest text)"
            ),
        ),
        max_tokens=(Annotated[int, Field(ge=1, le=cap)], Field(default=min(64, cap))),
        temperature=(
            _finite(ge=0, le=_FLOAT_MAX),
            Field(default=1.0, description="0: greedy"),
        ),
        top_k=(Annotated[int, Field(ge=1)] | None, None),
        top_p=(_finite(gt=0, le=1) | None, None),
        repetition_penalty=(
            _finite(gt=0, le=_FLOAT_MAX),
            Field(default=1.0, description="1: none"),
        ),
        stop=(
            stop | Annotated[list[stop], Field(max_length=MAX_STOPS)],
            Field(default=[], description="the text ends before the first of these"),
        ),
        seed=(
            Annotated[int, Field(ge=0)] | None,
            Field(default=None, description="for sampling that repeats"),
        ),
        stream=(
            bool,
            Field(default=False, description="true: text/event-stream, a data event per piece"),
        ),
    )
    body, answer = _components(schemas, request, GenerateResponse)
    operation = model_operation(name, model.ref, "generate", body, answer)
    operation["description"] = (
        "The prompt's continuation, drawn with the model's key/value cache (on torch). "
        'With "stream": true the answer is text/event-stream: one `data: {"text": "..."}` '
        'event per piece of text as it is drawn, then `data: {"done": true, ...}` holding '
        "the JSON answer's fields but text. A client that disconnects stops the generation."
    )
    operation["responses"]["200"]["content"]["text/event-stream"] = {
        "schema": {"type": "string", "description": "server-sent events (see above)"}
    }
    declare_errors(operation, 404, 413, 422, 501, 503, 504)
    return f"/v1/models/{name}/generate", operation


def _forecast(
    name: str, model: ServedModelLike, schemas: dict[str, Any], prefix: str
) -> tuple[str, dict[str, Any]]:
    from danlu.serve._forecast import MAX_HISTORY

    meta = model.signature["forecast"]
    lags, horizon = int(meta["lags"]), int(meta["horizon"])
    log = meta.get("transform") == "log"
    fields: dict[str, Any] = {}
    values: Any
    for c in meta.get("observed") or ():
        values = Annotated[list[Finite], Field(min_length=lags, max_length=MAX_HISTORY)]
        what = f"at least its last {lags} values (the lags), oldest first"
        fields[f"c{len(fields)}"] = (values, Field(alias=c, description=what))
    for c in meta.get("known") or ():
        values = Annotated[list[Finite], Field(min_length=horizon, max_length=horizon)]
        what = f"its {horizon} values over the horizon (known in advance)"
        fields[f"c{len(fields)}"] = (values, Field(alias=c, description=what))
    covariates = create_model(f"{prefix}_Covariates", __config__=_FORBID, **fields)
    # a model that reads covariates needs each of them; one that reads none takes {} or null
    given: tuple[Any, Any] = (covariates, Field(description="covariate name → values"))
    if not fields:
        given = (covariates | None, Field(default=None, description="the model reads none"))
    request = create_model(
        f"{prefix}_ForecastRequest",
        __config__=_FORBID,
        history=(
            Annotated[list[Finite], Field(min_length=lags, max_length=MAX_HISTORY)],
            Field(
                description=f"the series' recent values, oldest first: at least {lags} (the "
                "model reads the last of them)"
                + ("; those it reads above -1 (it works on log1p)" if log else "")
            ),
        ),
        times=(
            list[Annotated[str, Field(min_length=1)] | int] | None,
            Field(
                default=None,
                description="one time per history value (ISO dates, or integer steps); the "
                "forecast's times follow the last one",
            ),
        ),
        covariates=given,
    )
    outputs = model.signature.get("outputs") or {}
    interval = "lower" in outputs and "upper" in outputs
    levels = [str(q) for q in meta.get("quantiles") or ()]
    step_fields: dict[str, Any] = {
        "step": (int, Field(description="1 is the next value")),
        "time": (str | int | None, Field(description="the step's time (null: no times sent)")),
        "mean": (Number, Field(description="the point forecast")),
    }
    if interval:
        step_fields["lower"] = (Number, Field(description="the prediction interval's bounds"))
        step_fields["upper"] = (Number, ...)
    if levels:
        by_level: dict[str, Any] = {
            f"q{i}": (Number, Field(alias=level)) for i, level in enumerate(levels)
        }
        quantiles = create_model(f"{prefix}_Quantiles", **by_level)
        step_fields["quantiles"] = (quantiles, Field(description="each quantile's value"))
    step = create_model(f"{prefix}_ForecastStep", **step_fields)
    response = create_model(
        f"{prefix}_ForecastResponse",
        __base__=_Answer,
        horizon=(int, Field(description="the steps forecast")),
        forecast=(Annotated[list[step], Field(min_length=horizon, max_length=horizon)], ...),
    )
    body, answer = _components(schemas, request, response)
    operation = model_operation(name, model.ref, "forecast", body, answer)
    operation["description"] = (
        f"The next {horizon} values of the series after the history sent, in its own units."
    )
    declare_errors(operation, 404, 413, 422, 503, 504)
    return f"/v1/models/{name}/forecast", operation


def _recommend(
    name: str, model: ServedModelLike, schemas: dict[str, Any], prefix: str
) -> tuple[str, dict[str, Any]]:
    from danlu.serve._recommend import MAX_ITEMS, MAX_K

    meta = model.signature.get("recommend") or {}
    catalogue = int(meta.get("catalogue") or MAX_K)
    request = create_model(
        f"{prefix}_RecommendRequest",
        __config__=_FORBID,
        user=(Id, Field(description="the user's id, as in the training data")),
        k=(
            Annotated[int, Field(ge=1, le=min(MAX_K, catalogue))] | None,
            Field(
                default=None,
                description="how many items (default: the recipe's recommend.k"
                + (f", {meta['k']})" if "k" in meta else ")"),
            ),
        ),
        exclude_seen=(
            bool,
            Field(default=True, description="leave out the items the user interacted with"),
        ),
        items=(
            Annotated[list[Id], Field(max_length=MAX_ITEMS)] | None,
            Field(
                default=None,
                description="the user's recent item ids: a user the model does not know is "
                "answered by item-kNN on them",
            ),
        ),
    )
    body, answer = _components(schemas, request, RecommendResponse)
    operation = model_operation(name, model.ref, "recommend", body, answer)
    operation["description"] = (
        f"The user's best items of the {catalogue} in the catalogue; a user the model was not "
        "trained on gets a fallback, flagged."
        if meta.get("catalogue")
        else "The user's best items; a user the model was not trained on gets a fallback."
    )
    declare_errors(operation, 404, 413, 422, 503, 504)
    return f"/v1/models/{name}/recommend", operation
