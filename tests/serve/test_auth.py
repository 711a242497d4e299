"""API keys, checked centrally: every route has a scope, admin routes always need an admin key,
predict routes need a key once keys exist or the server listens beyond loopback."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from danlu.serve._auth import (
    ADMIN,
    PREDICT,
    PUBLIC,
    Authenticator,
    UnscopedRouteError,
    requires,
    route_scopes,
)
from tests.serve.test_app import (
    ADMIN_SECRET,
    PREDICT_SECRET,
    ROW,
    AppClient,
    FakeStore,
    api_key,
    assert_error,
    keyed_store,
    make_app,
)

BODIES = {
    "/v1/admin/models": {"ref": "other:2"},
    "/v1/admin/models/{name}/alias": {"alias": "p", "version": 1},
}


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "wine", path)


def _calls(app: Any) -> list[tuple[str, str, str]]:
    """(method, concrete path, scope) of every route of the app."""
    scopes = route_scopes(app)
    calls = []
    for route in app.routes:
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method != "HEAD":
                calls.append((method, route.path, scopes[route.path]))
    return calls


def test_every_route_declares_a_scope_and_admin_routes_are_admin():
    app, _, _ = make_app()
    scopes = route_scopes(app)
    paths = {route.path for route in app.routes}
    assert set(scopes) == paths  # nothing left out
    assert all(scope in (PUBLIC, PREDICT, ADMIN) for scope in scopes.values())
    admin = {p for p in paths if p.startswith("/v1/admin")}
    assert admin == {
        "/v1/admin/models",
        "/v1/admin/models/{name}",
        "/v1/admin/models/{name}/reload",
        "/v1/admin/models/{name}/alias",
    }
    assert {p for p, s in scopes.items() if s == ADMIN} == admin
    assert {p for p, s in scopes.items() if s == PREDICT} == {
        "/v1/models",
        "/v1/models/{name}",
        "/v1/models/{name}/drift",
        "/v1/models/{name}/forecast",
        "/v1/models/{name}/generate",
        "/v1/models/{name}/predict",
        "/v1/models/{name}/recommend",
    }
    assert {"/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"} <= {
        p for p, s in scopes.items() if s == PUBLIC
    }


def test_admin_routes_answer_401_without_a_key_and_403_with_a_predict_key():
    app, pool, _ = make_app()
    admin_calls = [(m, p) for m, p, scope in _calls(app) if scope == ADMIN]
    assert len(admin_calls) == 4
    with AppClient(app) as client:
        for method, path in admin_calls:
            url, body = _concrete(path), BODIES.get(path)
            for headers, status in (
                ({}, 401),
                ({"Authorization": "Bearer dl_wrong"}, 401),
                ({"X-API-Key": "dl_revoked"}, 401),
                ({"Authorization": f"Basic {ADMIN_SECRET}"}, 401),
                ({"Authorization": f"Bearer {PREDICT_SECRET}"}, 403),
                ({"X-API-Key": PREDICT_SECRET}, 403),
            ):
                response = client.request(method, url, json=body, headers=headers)
                assert_error(response, status)
                if status == 401:
                    assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert pool.reloaded == [] and "other" not in pool.models  # nothing happened
        for method, path in admin_calls:
            if method == "DELETE":
                continue  # keep the model for the others
            url, body = _concrete(path), BODIES.get(path)
            response = client.request(method, url, json=body, headers={"X-API-Key": ADMIN_SECRET})
            assert response.status_code == 200, (method, path, response.text)


def test_the_admin_api_is_closed_when_no_keys_exist():
    app, _, _ = make_app(store=FakeStore())
    with AppClient(app) as client:
        assert_error(client.post("/v1/admin/models/wine/reload"), 401)
        # while predictions on loopback need no key
        assert client.post("/v1/models/wine/predict", json={"rows": [ROW]}).status_code == 200
        assert client.get("/v1/models").status_code == 200


MATRIX = {
    # scope: status with (no key, predict key, admin key, wrong key) while keys exist
    "public": ("/healthz", (200, 200, 200, 200)),
    "predict": ("/v1/models", (401, 200, 200, 401)),
    "admin": ("/v1/admin/models/wine/reload", (401, 403, 200, 401)),
}


@pytest.mark.parametrize("scope", MATRIX)
def test_auth_matrix(scope):
    path, statuses = MATRIX[scope]
    app, _, _ = make_app()
    method = "POST" if "admin" in path else "GET"
    keys = ({}, {"X-API-Key": PREDICT_SECRET}, {"X-API-Key": ADMIN_SECRET}, {"X-API-Key": "x"})
    with AppClient(app) as client:
        got = tuple(client.request(method, path, headers=h).status_code for h in keys)
    assert got == statuses


def test_predict_needs_a_key_beyond_loopback_even_without_keys():
    app, _, _ = make_app(store=FakeStore(), host="0.0.0.0")
    with AppClient(app) as client:
        assert_error(client.post("/v1/models/wine/predict", json={"rows": [ROW]}), 401)
        assert_error(client.get("/metrics"), 401)  # metrics too, off loopback
        assert client.get("/healthz").status_code == 200
        assert client.get("/openapi.json").status_code == 200


def test_metrics_are_public_on_loopback_even_with_keys():
    app, _, _ = make_app()
    with AppClient(app) as client:
        assert client.get("/metrics").status_code == 200


def test_a_route_without_a_scope_is_refused():
    app, _, _ = make_app()

    async def sneaky() -> dict[str, str]:
        return {"secret": "yes"}

    app.add_api_route("/v1/sneaky", sneaky)
    with pytest.raises(UnscopedRouteError, match="/v1/sneaky declares no scope"):
        route_scopes(app)
    # and should one be served anyway, it is treated as admin
    with AppClient(app) as client:
        assert_error(client.get("/v1/sneaky"), 401)
        assert_error(client.get("/v1/sneaky", headers={"X-API-Key": PREDICT_SECRET}), 403)
        assert client.get("/v1/sneaky", headers={"X-API-Key": ADMIN_SECRET}).status_code == 200


def test_an_admin_path_must_be_admin_scoped():
    app, _, _ = make_app()

    @requires(PREDICT)
    async def weak() -> dict[str, str]:
        return {}

    app.add_api_route("/v1/admin/weak", weak)
    with pytest.raises(UnscopedRouteError, match="under /v1/admin"):
        route_scopes(app)
    with pytest.raises(ValueError, match="Unknown scope"):
        requires("root")


def test_unknown_admin_paths_need_a_key_before_they_are_404():
    app, _, _ = make_app()
    with AppClient(app) as client:
        assert_error(client.get("/v1/admin/nothing"), 401)
        assert_error(client.get("/v1/admin/nothing", headers={"X-API-Key": ADMIN_SECRET}), 404)


# -- the Authenticator: caching and failure ---------------------------------------------------------
def test_verified_keys_are_cached():
    store = keyed_store()
    auth = Authenticator(lambda: store, loopback=True)

    async def many() -> None:
        for _ in range(5):
            assert (await auth.verify(ADMIN_SECRET)).name == "ops"
            assert await auth.verify("dl_wrong") is None
        # concurrent askers share one look-up
        found = await asyncio.gather(*(auth.verify(PREDICT_SECRET) for _ in range(20)))
        assert {k.name for k in found} == {"app"}

    asyncio.run(many())
    assert store.verify_calls == 3


def test_the_cache_expires_and_is_bounded():
    store = keyed_store()
    auth = Authenticator(lambda: store, loopback=True, ttl_s=0.0, negative_ttl_s=0.0)

    async def twice() -> None:
        await auth.verify(ADMIN_SECRET)
        await auth.verify(ADMIN_SECRET)

    asyncio.run(twice())
    assert store.verify_calls == 2  # expired at once

    store = keyed_store()
    auth = Authenticator(lambda: store, loopback=True, max_entries=2)

    async def three() -> None:
        for secret in (ADMIN_SECRET, PREDICT_SECRET, "dl_other", ADMIN_SECRET):
            await auth.verify(secret)

    asyncio.run(three())
    assert store.verify_calls == 4  # the first was evicted by the third


def test_revoked_and_key_changes_are_seen_after_the_cache_delay():
    store = keyed_store()
    auth = Authenticator(lambda: store, loopback=True, ttl_s=0.0)

    async def check() -> None:
        assert await auth.verify("dl_revoked") is None  # inactive keys never pass
        assert await auth.keys_required_for_predict()
        store.keys.clear()
        assert not await auth.keys_required_for_predict()
        store.keys["dl_new"] = api_key("new", "predict")
        assert await auth.keys_required_for_predict()

    asyncio.run(check())


def test_a_store_that_cannot_verify_fails_closed():
    store = keyed_store()
    store.fail = True
    app, _, _ = make_app(store=store)
    with AppClient(app) as client:
        error = assert_error(client.get("/v1/models", headers={"X-API-Key": ADMIN_SECRET}), 503)
        assert "/srv" not in json.dumps(error)
        assert client.get("/healthz").status_code == 200
