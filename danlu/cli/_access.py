"""Who runs a CLI command, and the check every state-changing command makes first.

The CLI acts as the user of ``$DANLU_API_KEY`` when it is set; otherwise as the OS user by the
local rule of :meth:`danlu.store.SqlStore.local_principal` (a store with no users is its OS
user's; a SQLite store with users trusts a registered OS user; a shared store with users needs
a key). ``$DANLU_ACTOR`` renames the OS user (scripts, CI).

:data:`CHANGING_COMMANDS` lists every command that changes the store, with the action it needs
(``danlu.store.PERMISSIONS``); :data:`OTHER_COMMANDS` lists the rest, so that a test fails when
a new command is in neither.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from danlu.store import Principal, SqlStore

__all__ = [
    "API_KEY_ENV",
    "CHANGING_COMMANDS",
    "DEFAULT_PROJECT",
    "OTHER_COMMANDS",
    "acting",
    "allow",
]

API_KEY_ENV = "DANLU_API_KEY"
#: runs, studies and new models belong here until told otherwise
DEFAULT_PROJECT = "default"

#: command → the action it needs (checked on the project of what it changes)
CHANGING_COMMANDS: dict[str, str] = {
    "run": "train",
    "tune": "train",
    "compress": "train",
    "evaluate": "register",  # stores the trust report beside the run or the model
    "export": "register",
    "package": "register",  # copies a version's files out of the store into a build context
    "submit": "train",
    "runs rm": "delete",
    "models register": "register",
    "models rm": "delete",
    "models alias set": "alias",
    "models alias rm": "alias",
    "models project": "alias",
    "keys create": "keys",
    "keys revoke": "keys",
    "users add": "users",
    "users grant": "users",
    "users disable": "users",
    "jobs cancel": "jobs.own",  # jobs.any for somebody else's job
    "jobs retry": "jobs.own",
    "jobs quota": "jobs.any",  # when it sets or clears a quota
}

#: commands that change nothing in the store (reads), or start a process whose own changes
#: are checked where they happen (the server's and the dashboard's routes)
OTHER_COMMANDS = frozenset(
    {
        "report",  # shows a report (renders the derived HTML when missing)
        "predict",
        "generate",  # reads a model; writes text to stdout or PNG files
        "serve",  # its admin routes are checked per request
        "ui",  # its actions are checked per request
        "agent",  # runs jobs that were checked when submitted
        "validate",
        "schema",
        "datasets",
        "version",
        "runs ls",
        "runs show",
        "runs compare",
        "runs export",
        "models ls",
        "models show",
        "models verify",
        "db upgrade",  # the schema itself: needs the database's own credentials
        "db encryption-key",  # makes a key file; the store is not touched
        "data inspect",
        "studies ls",
        "studies show",
        "keys ls",
        "users ls",
        "users roles",
        "jobs ls",
        "jobs show",
        "jobs logs",
        "jobs agents",
    }
)


def acting(store: SqlStore) -> Principal:
    """The principal of this process: the key of ``$DANLU_API_KEY``, else the OS user.

    Raises AccessDeniedError (401, audited) for a bad key or an OS user the rule refuses.
    """
    from danlu.store import current_actor

    secret = os.environ.get(API_KEY_ENV, "").strip()
    if secret:
        return store.principal_for_secret(secret, via="cli")
    return store.local_principal(current_actor())


def allow(
    store: SqlStore, action: str, project: str, *, subject: str = "*", **detail: Any
) -> Principal:
    """The acting principal, once it is allowed ``action`` on ``project`` (AccessDeniedError,
    audited, otherwise). Its ``actor`` is what the command's audit entries record."""
    return store.check_access(acting(store), action, project, subject=subject, **detail)


def open_checked(action: str, recipe: Any = None, overrides: Any = ()) -> Any:
    """For commands whose work opens the store itself (``run``, ``tune``): check ``action`` on
    the default project and, when the recipe registers a model (``register:``), ``register``
    on that model's project and ``alias`` for its alias, in a store opened just for that.
    Returns the actor. A recipe that does not load is left to the command (its error names
    the line)."""
    from pathlib import Path

    from danlu.store import SqlStore, current_actor, default_db_url

    url = default_db_url()
    fresh = url.startswith("sqlite:///") and not Path(url.split("///", 1)[1]).exists()
    if fresh and not os.environ.get(API_KEY_ENV, "").strip():
        return current_actor()  # no store yet, so no users: the OS user is its admin
    register = _register_block(recipe, overrides)
    store = SqlStore()
    try:
        who = allow(store, action, DEFAULT_PROJECT)
        if register is not None:
            project = store.model_project(register.name)
            allow(store, "register", project, subject=register.name)
            if register.alias is not None:
                allow(store, "alias", project, subject=register.name, alias=register.alias)
        return who.actor
    finally:
        store.engine.dispose()


def _register_block(recipe: Any, overrides: Any) -> Any:
    if recipe is None:
        return None
    from danlu.config import load_recipe
    from danlu.errors import DanluError

    try:
        return load_recipe(recipe, overrides or ()).register
    except (DanluError, OSError):
        return None
