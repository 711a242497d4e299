"""``danlu keys`` against a real SQLite store (the test's own DANLU_HOME)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import MetaData, select

from danlu.cli._app import app
from danlu.cli._keys import Scope, keys_app
from danlu.cli._runs import local_time
from danlu.store import API_KEY_SCOPES, KEYS_AUDIT_SUBJECT, SqlStore
from tests.cli._runner import danlu

if "keys" not in [g.name for g in app.registered_groups]:  # until _app.py registers it
    app.add_typer(keys_app, name="keys")


@pytest.fixture(autouse=True)
def _actor(monkeypatch):
    monkeypatch.setenv("DANLU_ACTOR", "alice")


def store_audit() -> list[object]:
    with SqlStore() as store:
        return list(store.audit_log(KEYS_AUDIT_SUBJECT))


def _raw_cells(store: SqlStore) -> list[str]:
    tables = MetaData()
    tables.reflect(store.engine)
    with store.engine.connect() as conn:
        return [
            str(value)
            for table in tables.sorted_tables
            for row in conn.execute(select(table))
            for value in row
        ]


def test_scope_choices_match_the_store():
    assert tuple(s.value for s in Scope) == API_KEY_SCOPES


def test_create_prints_the_secret_once_and_ls_never_shows_it():
    created = danlu("keys", "create", "--scope", "predict", "--name", "web")
    assert created.code == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("dl_") and created.stdout == secret + "\n"  # stdout: the secret alone
    assert "cannot be shown again" in created.stderr and secret not in created.stderr
    with SqlStore() as store:
        key = store.verify_api_key(secret)
        assert key is not None and (key.scope, key.name, key.created_by) == (
            "predict",
            "web",
            "alice",
        )
        assert not any(secret[len(f"dl_{key.id}_") :] in c for c in _raw_cells(store))

    listed = danlu("keys", "ls")
    assert listed.code == 0, listed.stderr
    assert key.id in listed.stdout and "web" in listed.stdout and "predict" in listed.stdout
    assert key.prefix in listed.stdout and secret not in listed.stdout + listed.stderr
    as_json = danlu("keys", "ls", "--json")
    assert as_json.code == 0 and secret not in as_json.stdout
    (row,) = json.loads(as_json.stdout)
    assert {k: row[k] for k in ("id", "name", "scope", "prefix", "active", "revoked_at")} == {
        "id": key.id,
        "name": "web",
        "scope": "predict",
        "prefix": secret[:8],
        "active": True,
        "revoked_at": None,
    }
    assert row["last_used_at"] is not None and "secret" not in row


def test_create_json_carries_the_secret():
    out = danlu("keys", "create", "--scope", "admin", "--json")
    assert out.code == 0, out.stderr
    body = json.loads(out.stdout)
    assert (body["scope"], body["name"], body["active"]) == ("admin", "", True)
    assert body["secret"].startswith(f"dl_{body['id']}_") and body["prefix"] == body["secret"][:8]
    assert "cannot be shown again" in out.stderr
    with SqlStore() as store:
        assert store.has_api_keys("admin")
        verified = store.verify_api_key(body["secret"])
        assert verified is not None and verified.id == body["id"]


def test_revoke_refuses_the_secret_and_is_audited():
    secret = danlu("keys", "create", "--scope", "predict").stdout.strip()
    with SqlStore() as store:
        key = store.verify_api_key(secret)
    assert key is not None
    out = danlu("keys", "revoke", key.id)
    assert out.code == 0, out.stderr
    assert f"revoked predict key {key.id}" in out.stdout
    with SqlStore() as store:
        assert store.verify_api_key(secret) is None and not store.has_api_keys()
        log = store.audit_log(KEYS_AUDIT_SUBJECT)
    assert [(e.action, e.actor, e.detail["key"]) for e in log] == [
        ("create_key", "alice", key.id),
        ("revoke_key", "alice", key.id),
    ]
    (row,) = json.loads(danlu("keys", "ls", "--json").stdout)
    assert row["active"] is False and row["revoked_at"] is not None
    (line,) = [x for x in danlu("keys", "ls").stdout.splitlines() if key.id in x]
    revoked_cell = line.strip().strip("│").rsplit("│", 1)[-1].strip()
    assert revoked_cell == local_time(row["revoked_at"])
    again = danlu("keys", "revoke", key.id)  # harmless
    assert again.code == 0 and len(store_audit()) == 2


def test_revoke_of_an_unknown_key_exits_4():
    out = danlu("keys", "revoke", "0123456789abcdef")
    assert out.code == 4
    assert "No API key" in out.stderr and "danlu keys ls" in out.stderr


@pytest.mark.parametrize("scope", ["read", "everything", ""])
def test_bad_scope_exits_2_naming_the_allowed_values(scope):
    out = danlu("keys", "create", "--scope", scope)
    assert out.code == 2
    assert "predict" in out.stderr and "admin" in out.stderr
    with SqlStore() as store:
        assert store.list_api_keys() == []


def test_overlong_name_exits_2():
    out = danlu("keys", "create", "--scope", "predict", "--name", "n" * 300)
    assert out.code == 2 and "name" in out.stderr


def test_scope_is_required():
    out = danlu("keys", "create")
    assert out.code == 2 and "--scope" in out.stderr and "--role ROLE" in out.stderr


def test_ls_without_keys_says_how_to_create_one():
    out = danlu("keys", "ls")
    assert out.code == 0 and out.stdout == ""
    assert "danlu keys create --scope predict" in out.stderr
    assert json.loads(danlu("keys", "ls", "--json").stdout) == []


def test_names_are_never_markup():
    out = danlu("keys", "create", "--scope", "predict", "--name", "[red]x[/red]")
    assert out.code == 0, out.stderr
    assert "[red]x[/red]" in danlu("keys", "ls").stdout


def test_names_with_escape_codes_are_shown_not_obeyed():
    out = danlu("keys", "create", "--scope", "predict", "--name", "web\x1b[2J\x9b1m")
    assert out.code == 0, out.stderr
    listed = danlu("keys", "ls")
    for text in (out.stderr, listed.stdout):
        assert "\x1b" not in text and "\x9b" not in text
        assert "web\\x1b[2J\\x9b1m" in text
