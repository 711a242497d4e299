"""Users, roles per project, keys owned by users, the local rule and the audit of refusals, on
SQLite and PostgreSQL (``fresh_db``), and the upgrade of keys made before users (0004 → 0005)."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from danlu.errors import AccessDeniedError, ConfigError, NotFoundError
from danlu.store import (
    PERMISSIONS,
    ROLES,
    USERS_AUDIT_SUBJECT,
    Principal,
    SqlStore,
    role_allows,
)
from danlu.store._migrate import HEAD, _run_alembic
from tests.store.conftest import Database


@pytest.fixture
def store(fresh_db: Database):
    with SqlStore(fresh_db.url, home=fresh_db.home) as opened:
        yield opened


def _denied(store: SqlStore) -> list[dict[str, object]]:
    return [e.detail | {"actor": e.actor} for e in store.audit_log() if e.action == "denied"]


def test_the_permissions_table_orders_roles():
    assert ROLES == ("predictor", "viewer", "editor", "admin")
    # each role may do everything the one before it may
    for weaker, stronger in zip(ROLES, ROLES[1:], strict=False):
        for action in PERMISSIONS:
            assert role_allows(weaker, action) <= role_allows(stronger, action)
    assert [a for a in PERMISSIONS if role_allows("predictor", a)] == ["predict"]
    assert [a for a in PERMISSIONS if role_allows("viewer", a)] == ["predict", "read"]
    assert {a for a in PERMISSIONS if role_allows("editor", a)} == {
        "predict",
        "read",
        "train",
        "register",
        "jobs.own",
    }
    assert all(role_allows("admin", a) for a in PERMISSIONS)
    assert not role_allows(None, "predict")


def test_users_roles_and_the_first_admin(store: SqlStore):
    assert not store.has_users() and store.list_users() == []
    with pytest.raises(ConfigError, match="first user must be its admin"):
        store.add_user("bob", role="editor", project="vision", actor="root")
    assert not store.has_users()  # nothing written
    root = store.add_user("root", actor="root")
    assert root.roles == {"*": "admin"} and root.active
    bob = store.add_user("bob", role="editor", project="vision", actor="root")
    assert bob.roles == {"vision": "editor"}
    with pytest.raises(ConfigError, match="already exists"):
        store.add_user("bob", actor="root")
    with pytest.raises(ConfigError, match="Unknown role 'owner'"):
        store.grant("bob", "vision", "owner", actor="root")
    with pytest.raises(ConfigError, match="Invalid project"):
        store.grant("bob", "../x", "viewer", actor="root")
    with pytest.raises(NotFoundError, match="danlu users add"):
        store.grant("nobody", "vision", "viewer", actor="root")
    store.grant("bob", "nlp", "viewer", actor="root")
    assert store.role_of("bob", "vision") == "editor"
    assert store.role_of("bob", "nlp") == "viewer"
    assert store.role_of("bob", "default") is None
    assert store.role_of("root", "anything") == "admin"  # '*' covers every project
    store.grant("bob", "nlp", None, actor="root")
    assert store.get_user("bob").roles == {"vision": "editor"}
    assert [u.name for u in store.list_users()] == ["bob", "root"]
    store.disable_user("bob", actor="root")
    store.disable_user("bob", actor="root")  # harmless, audited once
    assert not store.get_user("bob").active and store.role_of("bob", "vision") is None
    actions = [(e.actor, e.action) for e in store.audit_log(USERS_AUDIT_SUBJECT)]
    assert actions == [
        ("root", "add_user"),
        ("root", "grant"),
        ("root", "add_user"),
        ("root", "grant"),
        ("root", "grant"),
        ("root", "revoke_grant"),
        ("root", "disable_user"),
    ]


def test_keys_belong_to_users_and_never_outrank_them(store: SqlStore):
    store.add_user("root")
    store.add_user("ann", role="editor", project="vision")
    with pytest.raises(ConfigError, match="danlu users grant ann 'vision' admin"):
        store.create_api_key(user="ann", project="vision", role="admin")
    with pytest.raises(ConfigError, match="no role on project 'nlp'"):
        store.create_api_key(user="ann", project="nlp", role="viewer")
    with pytest.raises(NotFoundError, match="danlu users add ghost"):
        store.create_api_key(user="ghost", project="vision", role="viewer")
    key, secret = store.create_api_key(user="ann", project="vision", role="editor", name="ci")
    assert (key.user, key.project, key.role, key.scope) == ("ann", "vision", "editor", "predict")
    who = store.principal_for_secret(secret)
    assert who.actor == f"ann (key {key.id})"
    assert store.effective_role(who, "vision") == "editor"
    assert store.effective_role(who, "nlp") is None  # the key is for vision only
    # the user's own role caps the key's: lowering it lowers the key at once
    store.grant("ann", "vision", "viewer")
    assert store.effective_role(store.principal_for_secret(secret), "vision") == "viewer"
    # a disabled user's keys stop working at once
    store.disable_user("ann")
    assert store.verify_api_key(secret) is None
    with pytest.raises(AccessDeniedError, match="disabled user 'ann'") as info:
        store.principal_for_secret(secret)
    assert info.value.status == 401 and info.value.exit_code == 7
    with pytest.raises(ConfigError, match="disabled"):
        store.create_api_key(user="ann", project="vision", role="viewer")


def test_check_access_refuses_and_audits_each_bad_case(store: SqlStore):
    store.add_user("root")
    store.add_user("ann", role="editor", project="vision")
    _, editor = store.create_api_key(user="ann", project="vision", role="editor")
    revoked, revoked_secret = store.create_api_key(user="ann", project="vision", role="editor")
    store.revoke_api_key(revoked.id)
    ann = store.principal_for_secret(editor)
    assert store.check_access(ann, "train", "vision") is ann
    with pytest.raises(AccessDeniedError, match="alias .* needs admin") as low:
        store.check_access(ann, "alias", "vision", subject="wine")
    with pytest.raises(AccessDeniedError, match="key for project 'vision', not project 'nlp'"):
        store.check_access(ann, "train", "nlp", subject="wine")
    with pytest.raises(AccessDeniedError, match="was revoked"):
        store.principal_for_secret(revoked_secret)
    with pytest.raises(AccessDeniedError, match="not a danlu key"):
        store.principal_for_secret("hunter2")
    assert low.value.status == 403
    denied = _denied(store)
    assert [(d["refused"], d["actor"]) for d in denied] == [
        ("alias", ann.actor),
        ("train", ann.actor),
        ("authenticate", f"key {revoked.id}"),
        ("authenticate", "unknown key"),
    ]
    assert denied[0]["project"] == "vision" and denied[0]["key"] == ann.key_id
    assert all(editor not in repr(e) for e in store.audit_log())


def test_the_local_rule(fresh_db: Database):
    with SqlStore(fresh_db.url, home=fresh_db.home) as store:
        # no users: the OS user is the store's admin (a fresh store needs no set-up)
        me = store.local_principal("carol")
        assert me.local_admin and store.effective_role(me, "anything") == "admin"
        store.add_user("carol")
        store.add_user("dan", role="viewer", project="vision")
        if fresh_db.kind == "sqlite":  # a local file: the registered OS user acts as themself
            assert store.local_principal("carol") == Principal("carol", user="carol")
            dan = store.local_principal("dan")
            with pytest.raises(AccessDeniedError, match="danlu users grant dan 'vision' editor"):
                store.check_access(dan, "train", "vision")
            with pytest.raises(AccessDeniedError, match="'erin' is not a user") as info:
                store.local_principal("erin")
            assert info.value.status == 401
        else:  # a shared server with users: the OS login proves nothing, a key is needed
            with pytest.raises(AccessDeniedError, match="DANLU_API_KEY"):
                store.local_principal("carol")
        assert _denied(store)[-1]["refused"] == "authenticate"


def test_models_have_a_project(store: SqlStore):
    assert store.model_project("wine") == "default"
    store.create_model_version("wine", run_id=None, files={"w": b"1"}, signature={}, metrics={})
    store.set_model_project("wine", "vision", actor="root")
    assert store.model_project("wine") == "vision"
    with pytest.raises(NotFoundError):
        store.set_model_project("nope", "vision")
    with pytest.raises(ConfigError, match="one project"):
        store.set_model_project("wine", "*")


def test_keys_made_before_users_keep_working_after_the_upgrade(fresh_db: Database):
    """A store at 0004 with a predict and an admin key: 0005 maps them to the roles predictor
    and admin on every project, owned by no user, and both still verify."""
    with SqlStore(fresh_db.url, home=fresh_db.home) as store:
        predict, predict_secret = store.create_api_key("predict", name="web")
        admin, admin_secret = store.create_api_key("admin", name="ops")
    url = fresh_db.url.replace("postgresql://", "postgresql+psycopg://")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:  # back to 0004: the columns 0005 adds are gone
            conn.execute(text("DROP INDEX ix_api_keys_user"))
            for column in ("role", "project", "user"):
                conn.execute(text(f'ALTER TABLE api_keys DROP COLUMN "{column}"'))
            conn.execute(text("ALTER TABLE models DROP COLUMN project"))
            conn.execute(text("DROP TABLE grants"))
            conn.execute(text("DROP TABLE users"))
            conn.execute(text("UPDATE alembic_version SET version_num = '0004'"))
        _run_alembic(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD
    finally:
        engine.dispose()
    with SqlStore(fresh_db.url, home=fresh_db.home) as store:
        old_predict = store.verify_api_key(predict_secret)
        old_admin = store.verify_api_key(admin_secret)
        assert old_predict is not None and old_admin is not None
        assert (old_predict.role, old_predict.project, old_predict.user) == ("predictor", "*", None)
        assert (old_admin.role, old_admin.project, old_admin.user) == ("admin", "*", None)
        web = store.key_principal(old_predict)
        assert store.effective_role(web, "vision") == "predictor"
        assert role_allows(store.effective_role(web, "vision"), "predict")
        with pytest.raises(AccessDeniedError, match="needs admin"):
            store.check_access(web, "alias", "default")
        ops = store.key_principal(old_admin)
        assert store.check_access(ops, "alias", "default") is ops
        assert ops.actor == f"key {admin.id}"
