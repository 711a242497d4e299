"""The store contract for the inference server's API keys: digests only, scopes, revocation, audit."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from danlu.errors import ConfigError, NotFoundError
from danlu.store import (
    API_KEY_SCOPES,
    KEYS_AUDIT_SUBJECT,
    Store,
)
from danlu.testing.store._common import OpenStore, register_versions


class ApiKeysConformance:
    """API keys: created once with their secret, verified by digest, revoked for good."""

    def test_api_key_create_verify_list(self, store: Store) -> None:
        before = time.time()
        key, secret = store.create_api_key("predict", name="web app", actor="ana")
        assert (key.name, key.scope, key.created_by) == ("web app", "predict", "ana")
        assert key.active and key.revoked_at is None and key.last_used_at is None
        assert before - 1 <= key.created_at <= time.time() + 1
        assert secret.startswith(f"dl_{key.id}_") and key.prefix == secret[:8]
        assert len(secret) - len(f"dl_{key.id}_") >= 43  # at least 32 random bytes, base64
        verified = store.verify_api_key(secret)
        assert verified is not None and verified.id == key.id and verified.scope == "predict"
        assert verified.last_used_at is not None and verified.active
        admin, admin_secret = store.create_api_key("admin")
        assert (admin.name, admin.created_by) == ("", "danlu")
        assert secret != admin_secret and key.id != admin.id
        listed = store.list_api_keys()
        assert [k.id for k in listed] == [key.id, admin.id]  # oldest first
        assert listed[0].last_used_at == verified.last_used_at
        assert all(secret not in repr(k) and admin_secret not in repr(k) for k in listed)

    def test_api_key_last_use_is_written_at_most_once_a_minute(
        self, store: Store, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        key, secret = store.create_api_key("predict")
        first = store.verify_api_key(secret)
        assert first is not None and first.last_used_at is not None
        for _ in range(3):  # within the minute: no write
            again = store.verify_api_key(secret)
            assert again is not None and again.last_used_at == first.last_used_at
        assert store.list_api_keys()[0].last_used_at == first.last_used_at
        later = time.time() + 61
        monkeypatch.setattr(time, "time", lambda: later)
        moved = store.verify_api_key(secret)
        assert moved is not None and moved.last_used_at == later
        assert store.list_api_keys()[0].last_used_at == later

    def test_api_key_wrong_and_malformed_secrets_are_refused_quietly(self, store: Store) -> None:
        key, secret = store.create_api_key("admin")
        random_part = secret[len(f"dl_{key.id}_") :]
        flipped = random_part[:-1] + ("A" if random_part[-1] != "A" else "B")
        other_id = "0123456789abcdef" if key.id != "0123456789abcdef" else "fedcba9876543210"
        bad: list[Any] = [
            "",
            "dl_",
            "dl__",
            f"dl_{key.id}",
            f"dl_{key.id}_",
            f"dl_{key.id}_{flipped}",  # wrong secret, right id
            f"dl_{other_id}_{random_part}",  # right random part, unknown id
            f"dl_{key.id.upper()}_{random_part}",
            secret + "x",
            secret[:-1],
            secret + "\n",
            " " + secret,
            secret.upper(),
            f"xx_{key.id}_{random_part}",
            secret[:-1] + "é",
            secret[:-1] + "\udcff",  # a lone surrogate cannot even be encoded
            secret[:-1] + "\x00",
            f"dl_{key.id}_" + "ü" * 43,
            "é" * 63,
            "x" * 1_000_000,
            secret + "x" * 100_000,
            f"dl_../../{key.id}_{random_part}",
            f"dl_{key.id}' OR '1'='1_{random_part}",
            None,
            b"bytes",
            12,
        ]
        for candidate in bad:
            assert store.verify_api_key(candidate) is None, repr(candidate)[:80]
        assert store.verify_api_key(secret) is not None  # the real one still works

    def test_api_key_revoke(self, open_store: OpenStore) -> None:
        store, other = open_store(), open_store()  # two handles on one database
        key, secret = store.create_api_key("predict")
        keep, keep_secret = store.create_api_key("predict")
        assert other.verify_api_key(secret) is not None
        revoked = store.revoke_api_key(key.id, actor="bo")
        assert revoked.id == key.id and not revoked.active and revoked.revoked_at is not None
        assert other.verify_api_key(secret) is None  # at once, in every process
        assert store.verify_api_key(secret) is None
        assert other.verify_api_key(keep_secret) is not None
        again = store.revoke_api_key(key.id)  # harmless, and the first revocation stands
        assert again.revoked_at == revoked.revoked_at
        assert [(k.id, k.active) for k in store.list_api_keys()] == [
            (key.id, False),
            (keep.id, True),
        ]
        for unknown in ("0123456789abcdef", "nope", "", "../x", "x" * 1000, key.id.upper()):
            if unknown == key.id:
                continue
            with pytest.raises(NotFoundError, match="danlu keys ls"):
                store.revoke_api_key(unknown)

    def test_has_api_keys_by_scope(self, store: Store) -> None:
        def state() -> tuple[bool, bool, bool]:
            return (
                store.has_api_keys(),
                store.has_api_keys("predict"),
                store.has_api_keys("admin"),
            )

        assert state() == (False, False, False)
        predict, _ = store.create_api_key("predict")
        assert state() == (True, True, False)
        admin, _ = store.create_api_key("admin")
        assert state() == (True, True, True)
        store.revoke_api_key(predict.id)
        assert state() == (True, True, True)  # an admin key may call predict routes too
        store.revoke_api_key(admin.id)
        assert state() == (False, False, False)  # revoked keys do not count

    def test_api_key_scope_is_validated(self, store: Store) -> None:
        for scope in ("read", "", "Admin", "predict,admin", None):
            with pytest.raises(ConfigError, match="predict, admin") as info:
                store.create_api_key(scope)  # type: ignore[arg-type]
            assert "predict, admin" in str(info.value)
        with pytest.raises(ConfigError, match="predict, admin"):
            store.has_api_keys("write")
        with pytest.raises(ConfigError):
            store.create_api_key("predict", name="n" * 300)
        assert store.list_api_keys() == [] and store.audit_log() == []
        assert API_KEY_SCOPES == ("predict", "admin")

    def test_api_key_changes_are_audited_without_secrets(self, store: Store) -> None:
        register_versions(store)
        key, secret = store.create_api_key("admin", name="ops", actor="ana")
        store.revoke_api_key(key.id, actor="bo")
        keys_log = store.audit_log(KEYS_AUDIT_SUBJECT)
        assert [(e.action, e.model, e.version, e.actor) for e in keys_log] == [
            ("create_key", KEYS_AUDIT_SUBJECT, None, "ana"),
            ("revoke_key", KEYS_AUDIT_SUBJECT, None, "bo"),
        ]
        assert keys_log[0].detail == {
            "key": key.id,
            "scope": "admin",
            "name": "ops",
            "user": None,  # the older form: no owner, the admin role on every project
            "project": "*",
            "role": "admin",
        }
        assert [e.model for e in store.audit_log("digits")] == ["digits", "digits"]
        assert len(store.audit_log()) == 4
        assert all(secret not in repr(e) for e in store.audit_log())

    def test_api_key_secret_is_never_stored(self, store: Store) -> None:
        """Read every table raw (SQL backends) and every file under the home folder: neither
        the secret nor its random part appears anywhere."""
        key, secret = store.create_api_key("predict", name="web")
        assert store.verify_api_key(secret) is not None
        store.revoke_api_key(key.id)
        random_part = secret[len(f"dl_{key.id}_") :]
        engine = getattr(store, "engine", None)
        if engine is not None:
            from sqlalchemy import MetaData, select

            tables = MetaData()
            tables.reflect(engine)
            cells: list[str] = []
            with engine.connect() as conn:
                for table in tables.sorted_tables:
                    for row in conn.execute(select(table)):
                        cells.extend(str(value) for value in row)
            assert any(key.id in c for c in cells)  # the dump is not vacuous
            assert not any(random_part in c or secret in c for c in cells)
        home = getattr(store, "home", None)
        if home is not None:
            for path in Path(home).rglob("*"):
                if path.is_file():
                    assert random_part.encode() not in path.read_bytes(), path
