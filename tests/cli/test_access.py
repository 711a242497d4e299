"""Users, roles and the checks of every state-changing command, against a real SQLite store.

The parametrised test walks :data:`danlu.cli._access.CHANGING_COMMANDS` (and a test fails when
a command of the app is in neither that list nor ``OTHER_COMMANDS``): each is run with a
revoked key, a disabled user's key, a key for another project and a role too low, and must
exit non-zero with a message and no traceback, change nothing, and leave a ``denied`` entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer

from danlu.cli._access import CHANGING_COMMANDS, OTHER_COMMANDS
from danlu.cli._app import app
from danlu.jobs import JobQueue
from danlu.store import SqlStore
from tests.cli._runner import danlu


def _commands() -> set[str]:
    root = typer.main.get_command(app)

    def walk(command: object, path: tuple[str, ...]) -> list[str]:
        if hasattr(command, "list_commands"):
            return [
                found
                for name in command.list_commands(None)  # type: ignore[attr-defined]
                for found in walk(command.get_command(None, name), (*path, name))  # type: ignore[attr-defined]
            ]
        return [" ".join(path)]

    return set(walk(root, ()))


def test_every_command_is_classified():
    commands = _commands()
    unclassified = commands - set(CHANGING_COMMANDS) - OTHER_COMMANDS
    assert not unclassified, f"classify these in danlu/cli/_access.py: {sorted(unclassified)}"
    assert set(CHANGING_COMMANDS) <= commands  # nothing stale
    assert not set(CHANGING_COMMANDS) & OTHER_COMMANDS


@pytest.fixture
def team(monkeypatch, tmp_path):
    """A store with users and a model, a job and keys of every bad kind."""
    monkeypatch.setenv("DANLU_ACTOR", "root")
    monkeypatch.delenv("DANLU_API_KEY", raising=False)
    with SqlStore() as store:
        store.add_user("root", actor="root")
        store.add_user("ann", role="editor", project="vision", actor="root")
        store.add_user("vic", role="viewer", project="*", actor="root")
        store.add_user("pam", role="admin", project="other", actor="root")
        store.add_user("gone", role="admin", project="*", actor="root")
        store.create_model_version(
            "wine", run_id=None, files={"w.bin": b"w"}, signature={}, metrics={}
        )
        store.set_alias("wine", "production", 1)
        revoked, revoked_secret = store.create_api_key(user="root", project="*", role="admin")
        store.revoke_api_key(revoked.id)
        _, gone = store.create_api_key(user="gone", project="*", role="admin")
        store.disable_user("gone", actor="root")
        _, other = store.create_api_key(user="pam", project="other", role="admin")
        _, viewer = store.create_api_key(user="vic", project="*", role="viewer")
        _, editor = store.create_api_key(user="ann", project="vision", role="editor")
        job = JobQueue(store).submit(
            recipe="name: x\n",
            recipe_path="x.yaml",
            name="x",
            project="vision",
            submitted_by="ann",
        )
        victim, _ = store.create_api_key(user="ann", project="vision", role="viewer")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\n")
    return {
        "keys": {
            "revoked": revoked_secret,
            "disabled user": gone,
            "wrong project": other,
            "role too low": viewer,
        },
        "editor": editor,
        "job": job.id,
        "victim": victim.id,
        "recipe": str(recipe),
    }


def _args(command: str, team: dict) -> list[str]:
    recipe, job = team["recipe"], team["job"]
    return {
        "run": ["run", recipe],
        "tune": ["tune", recipe],
        "compress": ["compress", "wine:1"],
        "evaluate": ["evaluate", "wine:1"],
        "export": ["export", "wine:1"],
        "package": ["package", "wine:1", "--out", str(Path(recipe).parent / "package-out")],
        "submit": ["submit", recipe],
        "runs rm": ["runs", "rm", "0" * 32, "--yes"],
        "models register": ["models", "register", "0" * 32, "wine"],
        "models rm": ["models", "rm", "wine", "--yes"],
        "models alias set": ["models", "alias", "set", "wine", "staging", "1"],
        "models alias rm": ["models", "alias", "rm", "wine", "production"],
        "models project": ["models", "project", "wine", "vision"],
        "keys create": [
            "keys",
            "create",
            "--user",
            "ann",
            "--project",
            "vision",
            "--role",
            "viewer",
        ],
        "keys revoke": ["keys", "revoke", team["victim"]],
        "users add": ["users", "add", "zed", "--role", "viewer", "--project", "vision"],
        "users grant": ["users", "grant", "ann", "vision", "admin"],
        "users disable": ["users", "disable", "ann"],
        "jobs cancel": ["jobs", "cancel", job],
        "jobs retry": ["jobs", "retry", job],
        "jobs quota": ["jobs", "quota", "vision", "2"],
    }[command]


def _state() -> tuple:
    with SqlStore() as store:
        changes = [(e.action, e.model) for e in store.audit_log() if e.action != "denied"]
        denied = [e for e in store.audit_log() if e.action == "denied"]
        keys = [(k.id, k.active) for k in store.list_api_keys()]
        users = [(u.name, u.active, tuple(u.roles.items())) for u in store.list_users()]
        jobs = [(j.id, j.status) for j in JobQueue(store).list_jobs()]
        quotas = JobQueue(store).quotas()
        aliases = store.get_model_version("wine", 1).aliases
    return (changes, keys, users, jobs, quotas, aliases), denied


@pytest.mark.parametrize("case", ["revoked", "disabled user", "wrong project", "role too low"])
@pytest.mark.parametrize("command", sorted(CHANGING_COMMANDS))
def test_a_bad_key_is_refused_by_every_state_changing_command(team, monkeypatch, command, case):
    monkeypatch.setenv("DANLU_API_KEY", team["keys"][case])
    before, denied_before = _state()
    out = danlu(*_args(command, team))
    assert out.code == 7, (command, case, out)
    assert "Traceback" not in out.stderr and "error:" in out.stderr
    expected = {
        "revoked": "was revoked",
        "disabled user": "disabled user 'gone'",
        "wrong project": "holds a key for project 'other'",
        "role too low": "has role 'viewer'",
    }[case]
    assert expected in out.stderr.replace("\n", " "), out.stderr
    after, denied_after = _state()
    assert after == before  # nothing changed
    assert len(denied_after) == len(denied_before) + 1
    entry = denied_after[-1]
    assert entry.detail["via"] == "cli" and entry.detail.get("key")
    assert team["keys"][case] not in repr(entry)


def test_a_local_store_without_users_needs_no_setup(monkeypatch):
    monkeypatch.setenv("DANLU_ACTOR", "carol")
    monkeypatch.delenv("DANLU_API_KEY", raising=False)
    with SqlStore() as store:
        store.create_model_version("wine", run_id=None, files={"w": b"w"}, signature={}, metrics={})
    assert danlu("models", "alias", "set", "wine", "production", "1").code == 0
    assert danlu("keys", "create", "--scope", "predict").code == 0  # the older form
    with SqlStore() as store:
        assert store.audit_log("wine")[-1].actor == "carol"
        assert store.list_api_keys()[0].user is None  # no users: nobody owns it
    # the first user must be the admin; then the OS user acts as that user only if registered
    first = danlu("users", "add", "dave", "--role", "viewer", "--project", "vision")
    assert first.code == 2 and "first user must be its admin" in first.stderr
    assert danlu("users", "add", "carol").code == 0
    assert danlu("users", "add", "dave", "--role", "editor", "--project", "vision").code == 0
    monkeypatch.setenv("DANLU_ACTOR", "erin")
    out = danlu("models", "alias", "rm", "wine", "production")
    assert out.code == 7 and "'erin' is not a user of this store" in out.stderr
    monkeypatch.setenv("DANLU_ACTOR", "dave")
    out = danlu("models", "alias", "rm", "wine", "production")
    assert out.code == 7 and "needs admin" in out.stderr.replace("\n", " ")
    monkeypatch.setenv("DANLU_ACTOR", "carol")
    assert danlu("models", "alias", "rm", "wine", "production").code == 0


def test_users_and_keys_commands(team, monkeypatch):
    created = danlu("keys", "create", "-u", "ann", "-p", "vision", "-r", "editor", "--json")
    assert created.code == 0, created.stderr
    key = json.loads(created.stdout)
    assert (key["user"], key["project"], key["role"], key["scope"]) == (
        "ann",
        "vision",
        "editor",
        "predict",
    )
    too_strong = danlu("keys", "create", "-u", "ann", "-p", "vision", "-r", "admin")
    assert too_strong.code == 2 and "danlu users grant ann 'vision' admin" in too_strong.stderr
    both = danlu("keys", "create", "--scope", "admin", "--role", "admin")
    assert both.code == 2 and "not both" in both.stderr
    roles = json.loads(danlu("users", "roles", "--json").stdout)
    assert roles["actions"]["alias"] == {
        "predictor": False,
        "viewer": False,
        "editor": False,
        "admin": True,
    }
    listed = {u["name"]: u for u in json.loads(danlu("users", "ls", "--json").stdout)}
    assert listed["ann"]["roles"] == {"vision": "editor"} and not listed["gone"]["active"]
    # an editor may cancel their own job, not set a quota; disabling them stops their key
    monkeypatch.setenv("DANLU_API_KEY", team["editor"])
    assert danlu("jobs", "cancel", team["job"]).code == 0
    assert danlu("jobs", "quota", "vision", "1").code == 7
    with SqlStore() as store:
        cancel = [e for e in store.audit_log("*jobs*") if e.action == "cancel_job"][-1]
        assert cancel.actor.startswith("ann (key ") and cancel.detail["job"] == team["job"]
    monkeypatch.delenv("DANLU_API_KEY")
    assert danlu("users", "disable", "ann").code == 0
    monkeypatch.setenv("DANLU_API_KEY", team["editor"])
    out = danlu("jobs", "retry", team["job"])
    assert out.code == 7 and "disabled user 'ann'" in out.stderr


def test_a_recipe_that_moves_an_alias_needs_the_admin_role(team, monkeypatch):
    """``danlu run`` checks train, and a recipe's register: block register and alias, before
    any work: an editor may train but not move digits@staging."""
    with SqlStore() as store:
        store.grant("ann", "default", "editor", actor="root")
        _, key = store.create_api_key(user="ann", project="default", role="editor")
    monkeypatch.setenv("DANLU_API_KEY", key)
    out = danlu("run", "examples/digits_cnn.yaml")
    assert (
        out.code == 7 and "alias" in out.stderr and "needs admin" in out.stderr.replace("\n", " ")
    )
    with SqlStore() as store:
        assert store.search_runs() == []  # refused before any work
        assert store.audit_log("digits")[-1].detail["refused"] == "alias"
