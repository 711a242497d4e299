"""Users, roles per project, and the one check every state-changing action goes through.

A user has at most one role per project; the project ``*`` stands for every project. Who acts
is a :class:`~danlu.store.Principal`: a registered user (directly, or through one of their API
keys, whose role caps the user's own), a key made before users existed, or the OS user of a
store that has no users yet (its admin: a fresh local store needs no set-up).

What each role may do is :data:`PERMISSIONS` (action → the least role allowed), read in one
place by the CLI, the inference server and the dashboard; roles are ordered so that each one
may do everything the one before it may. Every refusal is written to the audit log with the
actor, the action, the project and the reason; allowed actions are audited by the store
methods that perform them (or :meth:`SqlUsersMixin.record_action`).
"""

from __future__ import annotations

import re
import time
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from danlu.errors import AccessDeniedError, ConfigError, NotFoundError
from danlu.store import _tables as t
from danlu.store._connection import SqlConnection
from danlu.store._entities import ApiKey, Principal, User

__all__ = [
    "ACTION_HELP",
    "ALL_PROJECTS",
    "JOBS_AUDIT_SUBJECT",
    "PERMISSIONS",
    "ROLES",
    "USERS_AUDIT_SUBJECT",
    "SqlUsersMixin",
    "check_project",
    "check_role",
    "role_allows",
]

#: the roles, weakest first; each may do everything the ones before it may
ROLES = ("predictor", "viewer", "editor", "admin")
_RANK = {role: rank for rank, role in enumerate(ROLES)}
ALL_PROJECTS = "*"

#: action → the least role allowed to do it (the one table of who may do what)
PERMISSIONS: dict[str, str] = {
    "predict": "predictor",  # call a server's prediction routes
    "read": "viewer",  # list and show runs, models, jobs; the dashboard's pages
    "train": "editor",  # danlu run / tune / compress, danlu submit
    "register": "editor",  # register a run's model as a new version, export it
    "jobs.own": "editor",  # cancel or retry a job one submitted oneself
    "jobs.any": "admin",  # cancel or retry anybody's job; set project quotas
    "alias": "admin",  # point or remove an alias (what production serves)
    "delete": "admin",  # delete runs, models, versions
    "serve": "admin",  # load, unload, reload models on a running server
    "keys": "admin",  # create and revoke API keys
    "users": "admin",  # add and disable users, grant roles
}

#: one line per action, for error messages and ``danlu users roles``
ACTION_HELP: dict[str, str] = {
    "predict": "call prediction routes",
    "read": "list and show runs, models, jobs",
    "train": "run, tune, compress, submit jobs",
    "register": "register and export model versions",
    "jobs.own": "cancel or retry one's own jobs",
    "jobs.any": "cancel or retry anybody's jobs, set quotas",
    "alias": "move and remove aliases",
    "delete": "delete runs, models and versions",
    "serve": "load, unload and reload served models",
    "keys": "create and revoke API keys",
    "users": "add and disable users, grant roles",
}

USERS_AUDIT_SUBJECT = "*users*"  # the audit log's ``model`` column for user events
JOBS_AUDIT_SUBJECT = "*jobs*"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")
_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_role(role: object, *, where: str = "--role") -> str:
    """The role, or ConfigError naming the valid ones."""
    if role not in _RANK:
        raise ConfigError(
            f"Unknown role {role!r} ({where}); use one of {', '.join(ROLES)} "
            "(see docs/access.md for what each may do)."
        )
    return str(role)


def check_project(project: object, *, where: str = "--project") -> str:
    """A project name (letters, digits, ``.``, ``_``, ``-``) or ``*``; ConfigError otherwise."""
    if project == ALL_PROJECTS or (isinstance(project, str) and _PROJECT.fullmatch(project)):
        return str(project)
    raise ConfigError(
        f"Invalid project {str(project)[:60]!r} ({where}): use letters, digits, '.', '_' and "
        "'-' (at most 100 characters), or '*' for every project."
    )


def _check_user_name(name: object) -> str:
    if isinstance(name, str) and _NAME.fullmatch(name):
        return name
    raise ConfigError(
        f"Invalid user name {str(name)[:60]!r}: use letters, digits, '.', '_', '@' and '-' "
        "(at most 100 characters), starting with a letter or digit."
    )


def role_allows(role: str | None, action: str) -> bool:
    """Whether ``role`` may do ``action`` (None, no role, may do nothing).

    Example:
        >>> role_allows("editor", "train"), role_allows("editor", "alias")
        (True, False)
    """
    if action not in PERMISSIONS:
        raise ValueError(f"Unknown action {action!r}; known: {', '.join(PERMISSIONS)}.")
    return role is not None and _RANK.get(role, -1) >= _RANK[PERMISSIONS[action]]


def _weaker(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return None
    return a if _RANK.get(a, -1) <= _RANK.get(b, -1) else b


class SqlUsersMixin(SqlConnection):
    """User, role and access methods of the SQL store (mixed into ``SqlStore``)."""

    # -- users ---------------------------------------------------------------------------------
    def has_users(self) -> bool:
        """Whether any user exists (a store without users is its OS user's: see docs/access.md)."""
        with self._read() as conn:
            return conn.execute(select(t.users.c.name).limit(1)).first() is not None

    def _roles(self, conn: Connection, name: str) -> dict[str, str]:
        g = t.grants.c
        rows = conn.execute(select(g.project, g.role).where(g.user == name)).all()
        return {r.project: r.role for r in sorted(rows)}

    def _user(self, conn: Connection, name: str) -> User | None:
        row = conn.execute(select(t.users).where(t.users.c.name == name)).first()
        if row is None:
            return None
        return User(
            name=row.name,
            created_at=row.created_at,
            created_by=row.created_by,
            disabled_at=row.disabled_at,
            roles=self._roles(conn, row.name),
        )

    def get_user(self, name: str) -> User:
        """The user with their roles; NotFoundError when there is none by that name."""
        with self._read() as conn:
            user = self._user(conn, name) if isinstance(name, str) else None
        if user is None:
            raise NotFoundError(
                f"No user named {str(name)[:100]!r}. List users with `danlu users ls`; add one "
                "with `danlu users add NAME --role ROLE --project PROJECT`."
            )
        return user

    def list_users(self) -> list[User]:
        with self._read() as conn:
            names = conn.execute(select(t.users.c.name).order_by(t.users.c.name)).scalars().all()
            return [u for u in (self._user(conn, n) for n in names) if u is not None]

    def add_user(
        self,
        name: str,
        *,
        role: str | None = None,
        project: str = ALL_PROJECTS,
        actor: str = "danlu",
    ) -> User:
        """Add a user, with ``role`` on ``project`` when given.

        The first user of a store becomes its admin on every project (``role`` may be omitted
        or must be ``admin`` on ``*``): a store with users no longer trusts the OS user, so the
        first one added must be able to manage the rest.

        Example:
            >>> import tempfile
            >>> from danlu.store import SqlStore
            >>> store = SqlStore(home=tempfile.mkdtemp())
            >>> store.add_user("alice").roles
            {'*': 'admin'}
        """
        _check_user_name(name)
        check_project(project)
        if role is not None:
            check_role(role)
        now = time.time()
        with self._write() as conn:
            first = conn.execute(select(func.count()).select_from(t.users)).scalar_one() == 0
            if first:
                if role not in (None, "admin") or project != ALL_PROJECTS:
                    raise ConfigError(
                        f"{name!r} would be the first user of this store, and the first user "
                        "must be its admin on every project (once users exist, the OS user is no "
                        f"longer trusted): run `danlu users add {name} --role admin --project "
                        "'*'`, then add the others."
                    )
                role, project = "admin", ALL_PROJECTS
            if self._user(conn, name) is not None:
                raise ConfigError(
                    f"The user {name!r} already exists. Grant a role with `danlu users grant "
                    f"{name} PROJECT ROLE`."
                )
            conn.execute(insert(t.users).values(name=name, created_at=now, created_by=actor))
            self._audit(conn, actor, "add_user", USERS_AUDIT_SUBJECT, None, user=name)
            if role is not None:
                self._grant(conn, name, project, role, actor, now)
            user = self._user(conn, name)
        assert user is not None
        return user

    def _grant(
        self, conn: Connection, name: str, project: str, role: str | None, actor: str, now: float
    ) -> None:
        g = t.grants.c
        conn.execute(delete(t.grants).where(g.user == name, g.project == project))
        if role is not None:
            conn.execute(
                insert(t.grants).values(
                    user=name, project=project, role=role, granted_at=now, granted_by=actor
                )
            )
        action = "grant" if role is not None else "revoke_grant"
        self._audit(
            conn, actor, action, USERS_AUDIT_SUBJECT, None, user=name, project=project, role=role
        )

    def grant(self, name: str, project: str, role: str | None, *, actor: str = "danlu") -> User:
        """Give ``name`` the role ``role`` on ``project`` (replacing the one it had there);
        ``role=None`` takes it away. NotFoundError for an unknown user."""
        check_project(project)
        if role is not None:
            check_role(role)
        with self._write() as conn:
            if self._user(conn, name) is None:
                raise NotFoundError(f"No user named {name[:100]!r}. Add it with `danlu users add`.")
            self._grant(conn, name, project, role, actor, time.time())
            user = self._user(conn, name)
        assert user is not None
        return user

    def disable_user(self, name: str, *, actor: str = "danlu") -> User:
        """Disable a user for good: their keys stop working at once (disabling twice is harmless)."""
        with self._write() as conn:
            user = self._user(conn, name) if isinstance(name, str) else None
            if user is None:
                raise NotFoundError(
                    f"No user named {str(name)[:100]!r}. List users with `danlu users ls`."
                )
            if user.disabled_at is None:
                conn.execute(
                    update(t.users).where(t.users.c.name == name).values(disabled_at=time.time())
                )
                self._audit(conn, actor, "disable_user", USERS_AUDIT_SUBJECT, None, user=name)
                user = self._user(conn, name)
        assert user is not None
        return user

    def role_of(self, name: str, project: str) -> str | None:
        """The user's role on ``project`` (the stronger of its own and ``*``'s); None when the
        user has none there, is disabled or does not exist."""
        with self._read() as conn:
            return self._role_of(conn, name, project)

    def _role_of(self, conn: Connection, name: str, project: str) -> str | None:
        row = conn.execute(select(t.users.c.disabled_at).where(t.users.c.name == name)).first()
        if row is None or row.disabled_at is not None:
            return None
        roles = self._roles(conn, name)
        found = [r for p, r in roles.items() if p in (project, ALL_PROJECTS)]
        return max(found, key=lambda r: _RANK.get(r, -1)) if found else None

    # -- models' projects ----------------------------------------------------------------------
    def model_project(self, name: str) -> str:
        """The project of a registered model (``default`` for an unknown one: a new model)."""
        with self._read() as conn:
            found = conn.execute(
                select(t.models.c.project).where(t.models.c.name == name)
            ).scalar_one_or_none()
        return found or "default"

    def set_model_project(self, name: str, project: str, *, actor: str = "danlu") -> None:
        """Move a registered model to ``project``; NotFoundError for an unknown model."""
        check_project(project)
        if project == ALL_PROJECTS:
            raise ConfigError("A model belongs to one project, not '*'; name the project.")
        with self._write() as conn:
            done = conn.execute(
                update(t.models).where(t.models.c.name == name).values(project=project)
            )
            if done.rowcount == 0:
                raise NotFoundError(f"There is no registered model named {name[:100]!r}.")
            self._audit(conn, actor, "set_project", name, None, project=project)

    # -- who is acting -------------------------------------------------------------------------
    def key_principal(self, key: ApiKey, *, via: str = "http") -> Principal:
        """Who acts with this (verified) key."""
        return Principal(
            name=key.user if key.user is not None else f"key {key.id}",
            user=key.user,
            key_id=key.id,
            key_role=key.role,
            key_project=key.project,
            via=via,
        )

    def principal_for_secret(self, secret: str, *, via: str = "cli") -> Principal:
        """Who acts with this key's secret; AccessDeniedError (401, audited) for an unknown,
        revoked or malformed key or one whose user is disabled."""
        key = self.verify_api_key(secret)  # type: ignore[attr-defined]
        if key is not None:
            return self.key_principal(key, via=via)
        key_id, reason = self._why_refused(secret)
        actor = f"key {key_id}" if key_id else "unknown key"
        self.audit_denied(actor, "authenticate", "*", reason=reason, via=via, key=key_id)
        raise AccessDeniedError(
            f"The API key in DANLU_API_KEY is not valid: {reason}. Ask an admin for a new one "
            "(danlu keys create --user YOU --project PROJECT --role ROLE), or unset "
            "DANLU_API_KEY to act as your OS user.",
            status=401,
        )

    def _why_refused(self, secret: str) -> tuple[str | None, str]:
        match = re.fullmatch(r"dl_([0-9a-f]{16})_[A-Za-z0-9_-]{43}", secret or "")
        if match is None:
            return None, "it is not a danlu key (dl_<id>_<secret>)"
        key_id = match.group(1)
        with self._read() as conn:
            row = conn.execute(select(t.api_keys).where(t.api_keys.c.id == key_id)).first()
            if row is None:
                return key_id, f"no key has the id {key_id}"
            if row.revoked_at is not None:
                return key_id, f"key {key_id} was revoked"
            if row.user is not None:
                user = self._user(conn, row.user)
                if user is None or user.disabled_at is not None:
                    return key_id, f"key {key_id} belongs to the disabled user {row.user!r}"
        return key_id, f"the secret does not match key {key_id}"

    def local_principal(self, name: str) -> Principal:
        """The OS user acting without a key, by the local rule (docs/access.md):

        - a store with no users: ``name`` is its admin (a fresh local store needs no set-up);
        - a SQLite store with users: ``name`` acts as the user of that name, if registered and
          not disabled;
        - a shared store (PostgreSQL) with users: the OS login proves nothing there, so a key
          is required (``DANLU_API_KEY``).

        Refusals raise AccessDeniedError (401) and are audited.
        """
        if not self.has_users():
            return Principal(name=name, local_admin=True)
        if self.engine.dialect.name != "sqlite":
            reason = "a shared store with users needs a key"
            self.audit_denied(name, "authenticate", "*", reason=reason, via="cli")
            raise AccessDeniedError(
                f"This store is shared ({self.engine.dialect.name}) and has users, so the OS "
                f"login {name!r} is not trusted here: set DANLU_API_KEY to one of your keys "
                "(an admin creates it: danlu keys create --user YOU --project PROJECT --role "
                "ROLE).",
                status=401,
            )
        with self._read() as conn:
            user = self._user(conn, name)
        if user is None or not user.active:
            why = "is not a user of this store" if user is None else "is disabled"
            self.audit_denied(name, "authenticate", "*", reason=f"OS user {why}", via="cli")
            raise AccessDeniedError(
                f"The OS user {name!r} {why}: ask an admin to run `danlu users add {name} "
                "--role ROLE --project PROJECT`, or set DANLU_API_KEY to one of your keys.",
                status=401,
            )
        return Principal(name=name, user=name)

    def effective_role(self, principal: Principal, project: str) -> str | None:
        """The role ``principal`` has on ``project`` now: the user's own, capped by the key's
        role and limited to the key's project; a disabled user has none."""
        if principal.local_admin:
            return "admin"
        with self._read() as conn:
            user_role = (
                self._role_of(conn, principal.user, project) if principal.user is not None else None
            )
        if principal.key_id is None:
            return user_role
        if principal.key_project not in (ALL_PROJECTS, project):
            return None
        if principal.user is None:  # a key from before users: its own role
            return principal.key_role
        return _weaker(principal.key_role, user_role)

    def check_access(
        self,
        principal: Principal,
        action: str,
        project: str,
        *,
        subject: str = "*",
        **detail: Any,
    ) -> Principal:
        """Return ``principal`` when it may do ``action`` on ``project``; otherwise audit the
        refusal and raise AccessDeniedError (403) naming the role needed and how to get it.

        Example:
            >>> import tempfile
            >>> from danlu.store import Principal, SqlStore
            >>> store = SqlStore(home=tempfile.mkdtemp())
            >>> store.check_access(Principal("me", local_admin=True), "alias", "default").name
            'me'
        """
        role = self.effective_role(principal, project)
        if role_allows(role, action):
            return principal
        need = PERMISSIONS[action]
        where = "every project" if project == ALL_PROJECTS else f"project {project!r}"
        has = f"has role {role!r}" if role else "has no role"
        reason = f"{has} on {where}; {action} ({ACTION_HELP[action]}) needs {need}"
        wrong_project = principal.key_id is not None and principal.key_project not in (
            ALL_PROJECTS,
            project,
        )
        if wrong_project:
            reason = f"holds a key for project {principal.key_project!r}, not {where}"
        fields = {
            **detail,
            "reason": reason,
            "project": project,
            "via": principal.via,
            "key": principal.key_id,
        }
        self.audit_denied(principal.actor, action, subject, **fields)
        who = principal.actor
        if wrong_project:
            fix = f"use a key for {where} (danlu keys create --project {project} ...)"
        elif principal.user is not None:
            fix = f"ask an admin of {where} to run `danlu users grant {principal.user} '{project}' {need}`"
        else:
            fix = f"use a key with role {need} on {where}"
        raise AccessDeniedError(f"Refused: {who} {reason}. To allow it, {fix}.", status=403)

    # -- the audit log -------------------------------------------------------------------------
    def audit_denied(self, actor: str, action: str, subject: str, **detail: Any) -> None:
        """Record a refused action (``denied``) in the audit log."""
        with self._write() as conn:
            self._audit(conn, actor[:200], "denied", subject[:100], None, refused=action, **detail)

    def record_action(
        self,
        principal: Principal | str,
        action: str,
        subject: str,
        version: int | None = None,
        **detail: Any,
    ) -> None:
        """Record an allowed action the store itself does not audit (a server's model load, a
        job's cancel, ...)."""
        if isinstance(principal, Principal):
            actor = principal.actor
            detail = {"via": principal.via, "key": principal.key_id, **detail}
        else:
            actor = principal
        with self._write() as conn:
            self._audit(conn, actor[:200], action, subject[:100], version, **detail)
