"""Schemathesis over a live server's OpenAPI spec: no 5xx, and every response as documented.

The spec is read from a real ``danlu serve`` process (its own, from ``conftest.py``: the admin
routes below may load or unload models), so each model's predict body is generated from the
pydantic models built from its signature. Bounded: at most 30 examples per operation, no
deadline, a few seconds in all.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode

from tests.serve.conftest import LIVE_OPTIONS, LiveRegistry, LiveServer, start_server

MAX_EXAMPLES = 30  # per operation, both generation modes together


@pytest.fixture(scope="module")
def schemathesis_server(
    live_registry: LiveRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    log_dir = tmp_path_factory.mktemp("schemathesis-server")
    args = ("wine@production", "digits@production", *LIVE_OPTIONS, "--timeout", "10")
    with start_server(live_registry.home, *args, log_dir=log_dir) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(schemathesis_server: LiveServer, live_registry: LiveRegistry) -> Any:
    schema = schemathesis.openapi.from_url(f"{schemathesis_server.url}/openapi.json", timeout=30)
    config = schema.config
    # every request carries the admin key (below; it may call every route): schemathesis must
    # not add random keys of its own, which would only test the 401 path
    config.generation.update(with_security_parameters=False)
    return schema


@schemathesis.check
def schema_valid_predictions_are_answered(ctx: Any, response: Any, case: Any) -> bool | None:
    """A predict body that the spec accepts is answered 200, with two exceptions the spec
    format cannot express, both legitimate rejections:

    - columns of unequal lengths: JSON Schema cannot say "these arrays are equally long", so a
      schema-valid ``{"columns": ...}`` body can still be refused with 422 naming ``columns``;
    - too much data: the spec bounds rows (``maxItems``) but not bytes, so a schema-valid body
      can still pass ``--max-body`` (413 naming ``body``).
    """
    meta = case.meta
    if not case.path.endswith("/predict") or meta is None:
        return None
    if meta.generation.mode != GenerationMode.POSITIVE or response.status_code == 200:
        return None
    error = response.json()["error"]
    if response.status_code == 422 and error.get("field") == "columns":
        assert "same length" in error["message"], error
        return True
    if response.status_code == 413 and error.get("field") == "body":
        return True
    raise AssertionError(f"a schema-valid body was refused with {response.status_code}: {error}")


# no 5xx; every status, content type and body as documented; data that breaks the schema is
# refused with a 4xx; schema-valid predict bodies answered (but for the two exceptions above)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    schema_valid_predictions_are_answered,
    negative_data_rejection,
]


OPERATIONS = [
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /v1/models",
    "GET /v1/models/{name}",
    "GET /v1/models/{name}/drift",
    "POST /v1/models/wine/predict",
    "POST /v1/models/digits/predict",
    "POST /v1/admin/models",
    "POST /v1/admin/models/{name}/reload",
    "DELETE /v1/admin/models/{name}",
    "PUT /v1/admin/models/{name}/alias",
]


def test_the_spec_lists_exactly_these_operations(api_schema: Any) -> None:
    """A route added later is not silently left out of the run below."""
    found = sorted(result.ok().label for result in api_schema.get_all_operations())
    assert found == sorted(OPERATIONS)


# the operations with a request body get data that breaks the schema too; the others take at
# most a free-form path string, which no generated value can break
WITH_BODY = [
    "POST /v1/models/wine/predict",
    "POST /v1/models/digits/predict",
    "POST /v1/admin/models",
    "PUT /v1/admin/models/{name}/alias",
]
RUNS = [(label, GenerationMode.POSITIVE) for label in OPERATIONS] + [
    (label, GenerationMode.NEGATIVE) for label in WITH_BODY
]
HEALTH = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large, HealthCheck.large_base_example]  # fmt: skip


# One hypothesis run per operation and generation mode (schema-valid data, and data that breaks
# the schema), instead of ``@schema.parametrize()`` over ``schemathesis.pytest.from_fixture``:
# that lazy loader reads ``request.node._nodeid``, which pytest 9 no longer has.
@pytest.mark.parametrize(("label", "mode"), [pytest.param(*run, id=f"{run[0]}-{run[1].value}") for run in RUNS])  # fmt: skip
def test_the_api_matches_its_spec(
    api_schema: Any, live_registry: LiveRegistry, label: str, mode: GenerationMode
) -> None:
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, label
    headers = {"Authorization": f"Bearer {live_registry.admin}"}
    examples = MAX_EXAMPLES // 2 if label in WITH_BODY else MAX_EXAMPLES  # per operation
    sent = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,  # the same examples on every run
        database=None,
        suppress_health_check=HEALTH,
    )
    def run(case: Any) -> None:
        nonlocal sent
        sent += 1
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)

    run()
    assert 0 < sent <= examples
