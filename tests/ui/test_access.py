"""Users and roles on the dashboard's actions, with a real SQLite store: every state-changing
route (the app's POST routes, walked so that a new one cannot be forgotten) refuses a revoked
key, a disabled user's key, a key for another project and a role too low (403), changes
nothing and leaves a ``denied`` entry; the editor who submitted a job may cancel it."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from danlu.jobs import JobQueue
from danlu.store import SqlStore
from danlu.ui import create_app

SIGN_IN = {"/login"}  # POST, but it only checks a key and sets a cookie
ORIGIN = {"Origin": "http://testserver"}


@pytest.fixture
def team(tmp_path):
    with SqlStore(f"sqlite:///{tmp_path / 'db.sqlite'}", home=tmp_path / "home") as store:
        store.create_model_version("wine", run_id=None, files={"w": b"w"}, signature={}, metrics={})
        store.set_alias("wine", "production", 1)
        store.set_model_project("wine", "vision")
        store.add_user("root")
        store.add_user("ann", role="editor", project="vision")
        store.add_user("vic", role="viewer", project="*")
        store.add_user("pam", role="admin", project="nlp")
        store.add_user("gone", role="admin", project="*")
        job = JobQueue(store).submit(
            recipe="name: x\n", recipe_path="x.yaml", name="x", project="vision", submitted_by="ann"
        )
        revoked, revoked_secret = store.create_api_key(user="root", project="*", role="admin")
        store.revoke_api_key(revoked.id)
        _, gone = store.create_api_key(user="gone", project="*", role="admin")
        store.disable_user("gone")
        keys = {
            "revoked": revoked_secret,
            "disabled user": gone,
            "wrong project": store.create_api_key(user="pam", project="nlp", role="admin")[1],
            "role too low": store.create_api_key(user="vic", project="*", role="viewer")[1],
        }
        editor = store.create_api_key(user="ann", project="vision", role="editor")[1]
        yield store, job.id, keys, editor


def _form(path: str) -> dict[str, str]:
    if path.startswith("/models/{name}/aliases/delete"):
        return {"alias": "production"}
    if path.startswith("/models/{name}/aliases"):
        return {"alias": "staging", "version": "1"}
    return {}


def _routes(routes: list[Any], prefix: str = "") -> list[Any]:
    """Every endpoint route, through included routers (FastAPI keeps them nested)."""
    found = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            context = getattr(route, "include_context", None)
            found += _routes(inner.routes, prefix + (getattr(context, "prefix", "") or ""))
        elif hasattr(route, "methods") and route.methods:
            found.append((prefix + route.path, route.methods))
    return found


def _changing_routes(app: Any) -> list[str]:
    return sorted(
        path
        for path, methods in _routes(app.routes)
        if {"POST", "PUT", "PATCH", "DELETE"} & set(methods) and path not in SIGN_IN
    )


def _state(store: SqlStore) -> tuple:
    changes = [(e.action, e.model) for e in store.audit_log() if e.action != "denied"]
    jobs = [(j.id, j.status, j.cancel_requested) for j in JobQueue(store).list_jobs()]
    return changes, jobs, store.get_model_version("wine", 1).aliases


def test_every_dashboard_action_refuses_bad_keys_and_audits(team):
    store, job_id, keys, _ = team
    app = create_app(store)
    routes = _changing_routes(app)
    assert len(routes) >= 4  # two alias forms, cancel, retry today; a new one joins the walk
    assert ("/login", {"POST"}) in _routes(app.routes)  # the walk sees the included routers
    with TestClient(app) as client:
        for path in routes:
            url = path.replace("{name}", "wine").replace("{job_id}", job_id)
            for case, secret in keys.items():
                before = _state(store)
                denied = len([e for e in store.audit_log() if e.action == "denied"])
                response = client.post(
                    url, data={**_form(path), "key": secret}, headers=ORIGIN, follow_redirects=False
                )
                assert response.status_code == 403, (path, case, response.text)
                assert _state(store) == before, (path, case)
                entries = [e for e in store.audit_log() if e.action == "denied"]
                assert len(entries) == denied + 1, (path, case)
                assert entries[-1].detail["via"] == "ui"
                assert secret not in repr(entries[-1])


def test_an_editor_cancels_their_own_job_and_is_audited(team):
    store, job_id, _, editor = team
    with TestClient(create_app(store)) as client:
        moved = client.post(
            "/models/wine/aliases",
            data={"alias": "staging", "version": "1", "key": editor},
            headers=ORIGIN,
            follow_redirects=False,
        )
        assert moved.status_code == 403 and "needs admin" in moved.text  # aliases: admin only
        done = client.post(
            f"/jobs/{job_id}/cancel", data={"key": editor}, headers=ORIGIN, follow_redirects=False
        )
        assert done.status_code == 303
    assert JobQueue(store).get(job_id).status == "cancelled"
    entry = [e for e in store.audit_log("*jobs*") if e.action == "cancel_job"][-1]
    assert entry.actor.startswith("ann (key ") and entry.detail["via"] == "ui"
