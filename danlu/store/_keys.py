"""The API-key half of :class:`~danlu.store.SqlStore`: keys of the inference server.

A secret reads ``dl_<id>_<random>``: the id (public, shown in listings) finds the row in one
primary-key lookup and the random part (256 bits from :func:`secrets.token_urlsafe`) is what a
client proves it holds. Only the secret's SHA-256 digest is stored: a secret this random cannot
be guessed from its digest, so the slow password hashes (bcrypt, argon2) would only add
milliseconds to every request. Digests are compared in constant time. Creating and revoking a
key goes to the registry's audit log under the subject :data:`KEYS_AUDIT_SUBJECT`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
import time
from typing import Any

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from danlu.errors import ConfigError, NotFoundError, StoreError
from danlu.logging import get_logger
from danlu.store import _tables as t
from danlu.store._connection import SqlConnection
from danlu.store._entities import API_KEY_SCOPES, ApiKey

__all__ = ["KEYS_AUDIT_SUBJECT", "SqlApiKeysMixin"]

log = get_logger(__name__)

#: the audit log's ``model`` column for key events; ``*`` is never part of a model name
KEYS_AUDIT_SUBJECT = "*keys*"

_ID = re.compile(r"[0-9a-f]{16}")
_SECRET = re.compile(r"dl_([0-9a-f]{16})_[A-Za-z0-9_-]{43}")  # token_urlsafe(32): 43 characters
_BY_ID = select(t.api_keys).where(t.api_keys.c.id == bindparam("key_id"))  # built once: hot path
_LAST_USED_EVERY = 60.0  # seconds: at most one write per key and minute, not one per request


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _check_scope(scope: object) -> str:
    if scope not in API_KEY_SCOPES:
        raise ConfigError(
            f"The API key scope must be one of {', '.join(API_KEY_SCOPES)}; got {scope!r}. "
            "Use 'predict' for clients and 'admin' for loading, reloading and re-aliasing models, "
            "or give a role instead (role='predictor' | 'viewer' | 'editor' | 'admin')."
        )
    return str(scope)


class SqlApiKeysMixin(SqlConnection):
    """API-key methods of the SQL store (mixed into ``SqlStore``)."""

    @staticmethod
    def _api_key(row: Any) -> ApiKey:
        return ApiKey(
            id=row.id,
            name=row.name,
            scope=row.scope,
            prefix=row.prefix,
            created_at=row.created_at,
            created_by=row.created_by,
            revoked_at=row.revoked_at,
            last_used_at=row.last_used_at,
            user=row.user,
            project=row.project or "*",
            role=row.role or ("admin" if row.scope == "admin" else "predictor"),
        )

    def create_api_key(
        self,
        scope: str | None = None,
        *,
        name: str = "",
        actor: str = "danlu",
        user: str | None = None,
        project: str = "*",
        role: str | None = None,
    ) -> tuple[ApiKey, str]:
        from danlu.store._users import check_project, check_role

        if role is None:  # the older form: a scope, mapped to a role on every project
            role = "admin" if _check_scope(scope) == "admin" else "predictor"
        check_role(role)
        check_project(project)
        scope = "admin" if role == "admin" else "predict"  # what servers read
        if not isinstance(name, str) or len(name) > 200:
            raise ConfigError(
                f"The API key name must be text of at most 200 characters; got {str(name)[:40]!r}..."
            )
        for _attempt in range(5):
            key_id = secrets.token_hex(8)
            secret = f"dl_{key_id}_{secrets.token_urlsafe(32)}"
            try:
                with self._write() as conn:
                    if user is not None:
                        self._check_owner(conn, user, project, role)
                    conn.execute(
                        insert(t.api_keys).values(
                            id=key_id,
                            name=name,
                            scope=scope,
                            prefix=secret[:8],
                            secret_sha256=_digest(secret),
                            created_at=time.time(),
                            created_by=actor,
                            user=user,
                            project=project,
                            role=role,
                        )
                    )
                    self._audit(
                        conn,
                        actor,
                        "create_key",
                        KEYS_AUDIT_SUBJECT,
                        None,
                        key=key_id,
                        scope=scope,
                        name=name,
                        user=user,
                        project=project,
                        role=role,
                    )
                    row = conn.execute(select(t.api_keys).where(t.api_keys.c.id == key_id)).one()
                return self._api_key(row), secret
            except IntegrityError:  # 64-bit id already taken: astronomically rare, draw again
                continue
        raise StoreError("Could not create an API key: no free id after 5 attempts.")

    def _check_owner(self, conn: Any, user: str, project: str, role: str) -> None:
        """A key is never stronger than its owner: the user exists, is active and has at least
        ``role`` on ``project``."""
        from danlu.store._users import _RANK

        row = conn.execute(select(t.users).where(t.users.c.name == user)).first()
        if row is None:
            raise NotFoundError(
                f"No user named {user[:100]!r} (--user). Add it first: danlu users add {user[:100]} "
                f"--role {role} --project '{project}'"
            )
        if row.disabled_at is not None:
            raise ConfigError(f"The user {user!r} (--user) is disabled: it cannot get new keys.")
        has = self._role_of(conn, user, project)  # type: ignore[attr-defined]
        if has is None or _RANK[has] < _RANK[role]:
            where = "every project" if project == "*" else f"project {project!r}"
            raise ConfigError(
                f"The user {user!r} has {'role ' + repr(has) if has else 'no role'} on {where}, "
                f"so it cannot hold a {role} key there (--role). Grant the role first: "
                f"danlu users grant {user} '{project}' {role}"
            )

    def verify_api_key(self, secret: str) -> ApiKey | None:
        if not isinstance(secret, str) or len(secret) > 80:
            return None
        match = _SECRET.fullmatch(secret)
        if match is None:
            return None
        key_id = match.group(1)
        try:
            with self._read() as conn:
                row = conn.execute(_BY_ID, {"key_id": key_id}).first()
        except DBAPIError:
            raise StoreError(
                "Cannot check the API key: the database is unavailable. Check DANLU_DB_URL."
            ) from None
        if (
            row is None
            or not hmac.compare_digest(row.secret_sha256, _digest(secret))
            or row.revoked_at is not None
        ):
            return None
        if row.user is not None:  # a disabled user's keys stop working at once
            try:
                with self._read() as conn:
                    owner = conn.execute(
                        select(t.users.c.disabled_at).where(t.users.c.name == row.user)
                    ).first()
            except DBAPIError:
                raise StoreError(
                    "Cannot check the API key: the database is unavailable. Check DANLU_DB_URL."
                ) from None
            if owner is None or owner.disabled_at is not None:
                return None
        key = self._api_key(row)
        now = time.time()
        if key.last_used_at is None or now - key.last_used_at >= _LAST_USED_EVERY:
            key = self._touch(key, now)
        return key

    def _touch(self, key: ApiKey, now: float) -> ApiKey:
        """Record the use; the conditional update keeps concurrent requests to one write. A
        busy or read-only database never refuses a valid key over its bookkeeping."""
        c = t.api_keys.c
        try:
            with self._write() as conn:
                conn.execute(
                    update(t.api_keys)
                    .where(
                        c.id == key.id,
                        or_(c.last_used_at.is_(None), c.last_used_at <= now - _LAST_USED_EVERY),
                    )
                    .values(last_used_at=now)
                )
        except (StoreError, DBAPIError) as exc:
            log.warning("could not record the use of API key %s: %s", key.id, exc)
            return key
        return dataclasses.replace(key, last_used_at=now)

    def list_api_keys(self) -> list[ApiKey]:
        with self._read() as conn:
            rows = conn.execute(
                select(t.api_keys).order_by(t.api_keys.c.created_at, t.api_keys.c.id)
            ).all()
        return [self._api_key(r) for r in rows]

    def revoke_api_key(self, key_id: str, *, actor: str = "danlu") -> ApiKey:
        known = isinstance(key_id, str) and _ID.fullmatch(key_id) is not None
        with self._write() as conn:
            row = (
                conn.execute(select(t.api_keys).where(t.api_keys.c.id == key_id)).first()
                if known
                else None
            )
            if row is None:
                shown = repr(key_id) if len(repr(key_id)) <= 60 else repr(key_id)[:57] + "..."
                raise NotFoundError(f"No API key with id {shown}. List keys with `danlu keys ls`.")
            if row.revoked_at is None:  # revoking twice changes nothing and logs nothing
                conn.execute(
                    update(t.api_keys)
                    .where(t.api_keys.c.id == key_id)
                    .values(revoked_at=time.time())
                )
                self._audit(
                    conn,
                    actor,
                    "revoke_key",
                    KEYS_AUDIT_SUBJECT,
                    None,
                    key=key_id,
                    scope=row.scope,
                    name=row.name,
                    user=row.user,
                    project=row.project,
                )
                row = conn.execute(select(t.api_keys).where(t.api_keys.c.id == key_id)).one()
        return self._api_key(row)

    def has_api_keys(self, scope: str | None = None) -> bool:
        c = t.api_keys.c
        query = select(c.id).where(c.revoked_at.is_(None))
        if scope is not None:
            accepted = ("admin",) if _check_scope(scope) == "admin" else API_KEY_SCOPES
            query = query.where(c.scope.in_(accepted))  # an admin key may also predict
        with self._read() as conn:
            return conn.execute(query.limit(1)).first() is not None
