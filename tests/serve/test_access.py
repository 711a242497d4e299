"""Users and roles on the server's routes, with a real SQLite store: every state-changing route
(found by walking the app's POST/PUT/PATCH/DELETE routes, so a new one cannot be forgotten)
refuses a revoked key, a disabled user's key (401), a key for another project and a role too
low (403), changes nothing and leaves a ``denied`` entry in the audit log; an admin of the
model's project succeeds and is audited with the key's user and id."""

from __future__ import annotations

from typing import Any

import pytest

from danlu.serve._auth import PREDICT, route_scopes
from danlu.store import SqlStore
from tests.serve.test_app import AppClient, FakePool, FakeServed, make_app
from tests.serve.test_auth import BODIES, _concrete

CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
#: state-changing methods that change nothing: predictions
NOT_CHANGING = {
    ("POST", "/v1/models/{name}/predict"),
    ("POST", "/v1/models/{name}/forecast"),
    ("POST", "/v1/models/{name}/generate"),
    ("POST", "/v1/models/{name}/recommend"),
}


@pytest.fixture
def store(tmp_path):
    with SqlStore(f"sqlite:///{tmp_path / 'db.sqlite'}", home=tmp_path / "home") as opened:
        for name in ("wine", "other"):
            opened.create_model_version(
                name, run_id=None, files={"w.bin": b"w"}, signature={}, metrics={}
            )
        opened.set_model_project("wine", "vision")
        opened.set_model_project("other", "vision")
        opened.add_user("root")
        opened.add_user("ann", role="editor", project="vision")
        opened.add_user("pam", role="admin", project="nlp")
        opened.add_user("gone", role="admin", project="*")
        yield opened


def _keys(store: SqlStore) -> dict[str, str]:
    revoked, revoked_secret = store.create_api_key(user="root", project="*", role="admin")
    store.revoke_api_key(revoked.id)
    _, gone = store.create_api_key(user="gone", project="*", role="admin")
    store.disable_user("gone")
    return {
        "revoked": revoked_secret,
        "disabled user": gone,
        "wrong project": store.create_api_key(user="pam", project="nlp", role="admin")[1],
        "role too low": store.create_api_key(user="ann", project="vision", role="editor")[1],
    }


def _changing_routes(app: Any) -> list[tuple[str, str]]:
    scopes = route_scopes(app)
    found = sorted(
        (method, route.path)
        for route in app.routes
        for method in getattr(route, "methods", None) or ()
        if method in CHANGING
    )
    # a route that changes nothing must be a predict route, listed here by name
    for method, path in found:
        if (method, path) in NOT_CHANGING:
            assert scopes[path] == PREDICT
    return [c for c in found if c not in NOT_CHANGING]


def _pool() -> FakePool:
    return FakePool(FakeServed())


STATUS = {"revoked": 401, "disabled user": 401, "wrong project": 403, "role too low": 403}


def test_every_state_changing_route_refuses_bad_keys_and_audits(store):
    keys = _keys(store)
    pool = _pool()
    app, pool, _ = make_app(pool, store=store)
    routes = _changing_routes(app)
    assert len(routes) >= 4  # reload, load, unload, alias today; a new one joins the walk
    with AppClient(app) as client:
        for method, path in routes:
            for case, secret in keys.items():
                denied = len([e for e in store.audit_log() if e.action == "denied"])
                response = client.request(
                    method,
                    _concrete(path),
                    json=BODIES.get(path),
                    headers={"Authorization": f"Bearer {secret}"},
                )
                assert response.status_code == STATUS[case], (method, path, case, response.text)
                entries = [e for e in store.audit_log() if e.action == "denied"]
                assert len(entries) == denied + 1, (method, path, case)
                entry = entries[-1]
                assert entry.detail["via"] == "http" and entry.detail["refused"] == "serve"
                assert secret not in repr(entry)
                if case == "wrong project":
                    assert "holds a key for project 'nlp'" in response.text
                if case == "role too low":
                    assert entry.actor.startswith("ann (key ")
                    assert "needs admin" in response.text
    assert pool.reloaded == [] and "other" not in pool.models  # nothing happened
    assert store.get_model_version("wine", 1).aliases == ()


def test_an_admin_of_the_project_is_allowed_and_audited(store):
    key, secret = store.create_api_key(user="ann", project="vision", role="editor")
    store.grant("ann", "vision", "admin")
    admin_key, admin = store.create_api_key(user="ann", project="vision", role="admin")
    app, pool, _ = make_app(_pool(), store=store)
    headers = {"X-API-Key": admin}
    with AppClient(app) as client:
        for method, path in _changing_routes(app):
            if method == "DELETE":
                continue  # keep the model for the others
            response = client.request(
                method, _concrete(path), json=BODIES.get(path), headers=headers
            )
            assert response.status_code == 200, (method, path, response.text)
        # the editor key of the same user still may not (the key's role caps the user's)
        weak = client.post("/v1/admin/models/wine/reload", headers={"X-API-Key": secret})
        assert weak.status_code == 403
        # predictions need only the predict action on the model's project
        ok = client.post("/v1/models/wine/predict", json={"rows": [{}]}, headers=headers)
        assert ok.status_code != 403
    actor = f"ann (key {admin_key.id})"
    actions = {(e.action, e.actor) for e in store.audit_log() if e.action != "denied"}
    assert {("serve_reload", actor), ("serve_load", actor), ("set_alias", actor)} <= actions
    served = [e for e in store.audit_log() if e.action.startswith("serve_")]
    assert served and all(e.detail["key"] == admin_key.id for e in served)
    assert key.id not in {e.detail.get("key") for e in served}


def test_a_disabled_user_and_a_wrong_project_on_predict(store):
    _, vision = store.create_api_key(user="ann", project="vision", role="editor")
    _, nlp = store.create_api_key(user="pam", project="nlp", role="viewer")
    app, _, _ = make_app(_pool(), store=store)
    with AppClient(app) as client:
        wrong = client.post(
            "/v1/models/wine/predict", json={"rows": [{}]}, headers={"X-API-Key": nlp}
        )
        assert wrong.status_code == 403 and "project 'nlp'" in wrong.text
        store.disable_user("ann")
        gone = client.post(
            "/v1/models/wine/predict", json={"rows": [{}]}, headers={"X-API-Key": vision}
        )
        assert gone.status_code == 401  # never verified before: refused at once
