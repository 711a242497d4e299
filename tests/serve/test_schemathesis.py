"""Schemathesis over a live server's OpenAPI spec, with every check schemathesis has: no 5xx,
every status, content type, header and body as documented, every body the spec accepts answered,
every body it refuses refused, keys enforced where the spec says so.

The spec is read from a real ``danlu serve`` process (its own, from ``conftest.py``: the admin
routes below may load or unload models), so each model's predict body is generated from the
pydantic models built from its signature — with the row limit as ``maxItems`` and the columns
form's equal lengths spelled out. Bounded: at most 30 examples per operation, no deadline, well
under a minute in all.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import CHECKS, load_all_checks
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
    # a body over the spec's maxItems (the row limit) is refused with 413, which the spec
    # declares; schemathesis' list of statuses that refuse invalid data lacks 413 (it is the
    # status for "too much", not "malformed"), so it is named here — no other status is added
    negative = config.checks.negative_data_rejection
    negative.expected_statuses = [*negative.expected_statuses, "413"]
    return schema


load_all_checks()
ALL_CHECKS = CHECKS.get_all()  # every check schemathesis has, none left out


def test_every_check_runs() -> None:
    names = {check.__name__ for check in ALL_CHECKS}
    assert {"positive_data_acceptance", "negative_data_rejection", "ignored_auth"} <= names
    assert len(names) >= 14


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
        case.call_and_validate(headers=headers, checks=ALL_CHECKS, timeout=30)

    run()
    assert 0 < sent <= examples
