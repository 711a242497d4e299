"""``danlu keys``: API keys of the inference server — create, list and revoke.

A key's secret is printed once, when it is created, and never stored: the database keeps only
its SHA-256 digest, so a lost secret cannot be recovered, only replaced. The secret goes to
stdout alone (``KEY=$(danlu keys create --user ann --project vision --role editor)``); what it
is and the warning go to stderr. A key belongs to a user and carries a role on a project (at
most the user's own); the older ``--scope predict|admin`` still works (role predictor or
admin on every project, for the acting user). Creating and revoking a key needs the admin role
on its project and is recorded in the audit log with the actor (docs/access.md).
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from danlu.cli._access import allow
from danlu.cli._console import cell, err, out
from danlu.cli._options import JsonOption
from danlu.cli._runs import local_time, open_store, print_json, print_table

if TYPE_CHECKING:
    from danlu.store import ApiKey

__all__ = ["keys_app"]

keys_app = typer.Typer(
    help="API keys of the inference server: create (the secret is shown once), list, revoke.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

KEYS_SUBJECT = "*keys*"  # danlu.store.KEYS_AUDIT_SUBJECT (not imported: --help stays light)
_NOT_AGAIN = "Copy the secret now: it is stored only as a hash and cannot be shown again."


class Scope(StrEnum):
    """The scopes of ``danlu.store.API_KEY_SCOPES`` (not imported: it would load SQLAlchemy
    for ``danlu --help``)."""

    predict = "predict"
    admin = "admin"


def _as_json(key: ApiKey) -> dict[str, Any]:
    return {**asdict(key), "active": key.active}


@keys_app.command("create")
def create_key(
    user: Annotated[
        str | None,
        typer.Option("--user", "-u", help="The user the key belongs to (see danlu users ls)."),
    ] = None,
    project: Annotated[
        str, typer.Option("--project", "-p", help="The project it acts in ('*': every one).")
    ] = "*",
    role: Annotated[
        str | None,
        typer.Option(
            "--role",
            "-r",
            help="predictor (may only predict), viewer, editor or admin; at most the user's "
            "own role on the project.",
            show_default=False,
        ),
    ] = None,
    scope: Annotated[
        Scope | None,
        typer.Option(
            "--scope",
            help="The older form: predict (= --role predictor) or admin (= --role admin), on "
            "every project, for the acting user.",
            case_sensitive=False,
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str, typer.Option("--name", "-n", help="What the key is for, e.g. web-frontend.")
    ] = "",
    as_json: JsonOption = False,
) -> None:
    """Create a key for a user and print its secret, once."""
    from danlu.errors import ConfigError

    if scope is not None and role is not None:
        raise ConfigError("Give --role (with --user and --project) or the older --scope, not both.")
    if scope is None and role is None:
        raise ConfigError(
            "Say what the key may do: danlu keys create --user NAME --project PROJECT --role "
            "ROLE (roles: predictor, viewer, editor, admin), or the older --scope predict|admin."
        )
    if scope is not None:
        role = "admin" if scope is Scope.admin else "predictor"
    with open_store() as store:
        who = allow(store, "keys", project, subject=KEYS_SUBJECT, role=role)
        owner = user if user is not None else who.user  # the older form: the acting user's
        key, secret = store.create_api_key(
            name=name, actor=who.actor, user=owner, project=project, role=role
        )
    about = f"Created {key.role} key {key.id} on {'every project' if key.project == '*' else 'project ' + key.project}"
    about += (f" for {key.user}" if key.user else "") + (f" ({key.name})" if key.name else "") + "."
    err.print(Text(about))
    err.print(Text(_NOT_AGAIN, style="bold yellow"))
    if as_json:
        print_json({**_as_json(key), "secret": secret})
    else:
        sys.stdout.write(secret + "\n")  # plain, so that $(danlu keys create ...) gets it all


@keys_app.command("ls")
def list_keys(as_json: JsonOption = False) -> None:
    """List keys (never their secrets): id, name, scope, prefix, created, last used, revoked."""
    with open_store() as store:
        keys = store.list_api_keys()
    if as_json:
        print_json([_as_json(k) for k in keys])
        return
    if not keys:
        err.print(
            "No API keys. Create one with: danlu keys create --user NAME --project PROJECT "
            "--role ROLE (or, on a store without users, danlu keys create --scope predict)"
        )
        return
    table = Table(
        "id", "name", "user", "project", "role", "prefix", "created", "last used", "revoked"
    )
    for k in keys:
        table.add_row(
            cell(k.id),
            cell(k.name or "-"),
            cell(k.user or "-"),
            cell(k.project),
            cell(k.role),
            cell(k.prefix),
            local_time(k.created_at),
            local_time(k.last_used_at),
            Text(local_time(k.revoked_at), style="red") if not k.active else "-",
        )
    print_table(table)


@keys_app.command("revoke")
def revoke_key(
    key_id: Annotated[str, typer.Argument(help="The key's id (see `danlu keys ls`).")],
) -> None:
    """Revoke a key for good: requests with its secret are refused from now on."""
    with open_store() as store:
        key = next((k for k in store.list_api_keys() if k.id == key_id), None)
        project = key.project if key is not None else "*"
        who = allow(store, "keys", project, subject=KEYS_SUBJECT, revoking=key_id)
        key = store.revoke_api_key(key_id, actor=who.actor)
    shown = f"{key.id}" + (f" ({key.name})" if key.name else "")
    out.print(Text(f"revoked {key.scope} key {shown}"))
