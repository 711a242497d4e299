"""POST /v1/models/{name}/recommend through a real ``danlu serve`` on 127.0.0.1: a recommender
trained on planted interactions is registered and served; a known user gets what
``recommend(danlu.load_model(...))`` gives (seen items left out), an unknown user the popularity
fallback, flagged; unknown item ids are listed; a bad body is a 4xx naming the field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import danlu
from danlu.serve._recommend import read_recommend_request
from danlu.serve._types import RequestError
from danlu.tasks._recommendation import recommend
from tests.serve.conftest import LiveServer, route_validators, start_server
from tests.tasks.test_recommendation import planted_frame, planted_recipe


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The planted recommender registered as planted:1 and served."""
    home = tmp_path_factory.mktemp("recommend-home")
    path = home / "interactions.parquet"
    planted_frame().to_parquet(path)
    recipe = planted_recipe(Path(path), {"type": "bpr_mf", "factors": 8})
    recipe["register"] = {"name": "planted"}
    result = danlu.run(recipe, home=home)
    assert result.registered is not None and result.registered.ref == "planted:1"
    log_dir = tmp_path_factory.mktemp("recommend-server")
    with start_server(home, "planted:1", "--poll", "0", log_dir=log_dir) as server:
        yield server


def _post(server: LiveServer, body: Any) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        return http.post("/v1/models/planted/recommend", json=body)


def test_a_known_user_gets_the_models_items_without_seen_ones(served: LiveServer) -> None:
    from danlu.store import SqlStore

    answer = _post(served, {"user": "u7", "k": 4})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-model-version"] == "1"
    body = answer.json()
    assert body["ref"] == "planted:1" and body["user"] == "u7" and body["fallback"] is None
    frame = planted_frame()
    assert len(body["items"]) == 4 and not set(body["items"]) & set(frame[frame.user == "u7"].item)
    with SqlStore(home=served.home) as store:
        local = recommend(danlu.load_model("planted:1", store=store), "u7", k=4)
    assert local["items"] == body["items"]  # ONNX Runtime and torch rank alike
    assert local["scores"] == pytest.approx(body["scores"], rel=1e-4, abs=1e-5)
    everything = _post(served, {"user": "u7", "k": 4, "exclude_seen": False}).json()
    assert everything["scores"][0] >= body["scores"][0]


def test_an_unknown_user_gets_popular_items_flagged(served: LiveServer) -> None:
    body = _post(served, {"user": "stranger", "k": 3}).json()
    assert body["fallback"] == "popularity" and len(body["items"]) == 3
    counts = planted_frame().item.value_counts()
    assert counts[body["items"][0]] == counts.max()
    recent = _post(served, {"user": 12345, "items": ["m30", "m999999"]}).json()
    assert recent["fallback"] == "item_knn" and recent["unknown_items"] == ["m999999"]
    assert len(recent["items"]) == 5  # the recipe's k


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [
        ({"user": "u1", "k": 0}, "k", 422),
        ({"user": "u1", "k": 5000}, "k", 422),
        ({"user": "u1", "k": 95}, "k", 422),  # more than the catalogue's 64 items
        ({"user": "u1", "k": "3"}, "k", 422),
        ({"k": 3}, "user", 422),
        ({"user": ["u1"]}, "user", 422),
        ({"user": "u1", "exclude_seen": "yes"}, "exclude_seen", 422),
        ({"user": "u1", "items": [{"id": 1}]}, "items[0]", 422),
        ({"user": "u1", "top": 3}, "top", 422),
    ],
)
def test_a_bad_body_names_its_field(
    served: LiveServer, body: dict[str, Any], field: str, status: int
) -> None:
    answer = _post(served, body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["field"] == field
    request, _ = route_validators(_spec(served), "/v1/models/planted/recommend")
    assert not request.is_valid(body), body  # the spec refuses it too


def _spec(server: LiveServer) -> dict[str, Any]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        return http.get("/openapi.json").json()


def test_the_spec_describes_the_recommenders_request_and_answer(served: LiveServer) -> None:
    spec = _spec(served)
    request, response = route_validators(spec, "/v1/models/planted/recommend")
    catalogue = len(set(planted_frame().item))
    k = spec["components"]["schemas"]["planted_RecommendRequest"]["properties"]["k"]
    assert k["anyOf"][0]["maximum"] == catalogue
    for body in ({"user": "u7", "k": 3}, {"user": "stranger", "items": ["i1", 9], "k": 2}):
        request.validate(body)
        answer = _post(served, body)
        assert answer.status_code == 200, answer.text
        response.validate(answer.json())
    assert not request.is_valid({"user": "u7", "k": catalogue + 1})
    assert _post(served, {"user": "u7", "k": catalogue + 1}).status_code == 422
    assert not response.is_valid({**answer.json(), "fallback": "random"})


def test_unknown_models_are_404_and_requests_are_counted(served: LiveServer) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as http:
        missing = http.post("/v1/models/nope/recommend", json={"user": "u1"})
        assert missing.status_code == 404
        assert _post(served, {"user": "u1"}).status_code == 200
        metrics = http.get("/metrics").text
    assert 'danlu_requests_total{code="200",model="planted",version="1"}' in metrics


def test_read_recommend_request_checks_each_field() -> None:
    assert read_recommend_request({"user": "a", "items": [1, "b"]}) == ("a", None, True, [1, "b"])
    # JSON Schema's integers (the spec's) include 42.0; 2.5 is no id and no k
    assert read_recommend_request({"user": 42.0, "k": 5.0}) == (42, 5, True, None)
    for body, field in (({"user": 2.5}, "user"), ({"user": 1, "k": 2.5}, "k")):
        with pytest.raises(RequestError) as info:
            read_recommend_request(body)
        assert info.value.field == field
    with pytest.raises(RequestError) as info:
        read_recommend_request({"user": True})
    assert info.value.field == "user"
    with pytest.raises(RequestError) as info:
        read_recommend_request([1])
    assert info.value.field == "body"


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_finds_the_route_as_its_spec_says(served: LiveServer, mode: str) -> None:
    """Bodies the spec accepts are answered 200, bodies it refuses are refused, and every answer
    matches the spec (every schemathesis check; at most 15 examples per mode)."""
    import schemathesis
    from hypothesis import given, settings
    from schemathesis.generation import GenerationMode

    from tests.serve.test_schemathesis import ALL_CHECKS, HEALTH

    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json", timeout=30)
    schema.config.generation.update(with_security_parameters=False)
    negative = schema.config.checks.negative_data_rejection
    negative.expected_statuses = [*negative.expected_statuses, "413"]  # too many items
    operation = schema.find_operation_by_label("POST /v1/models/planted/recommend")
    assert operation is not None
    sent = 0

    @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
    @settings(max_examples=15, deadline=None, derandomize=True, database=None,
              suppress_health_check=HEALTH)  # fmt: skip
    def run(case: Any) -> None:
        nonlocal sent
        sent += 1
        case.call_and_validate(checks=ALL_CHECKS, timeout=30)

    run()
    assert 0 < sent <= 15
