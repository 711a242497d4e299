"""``danlu keys``: API keys of the inference server — create, list and revoke.

A key's secret is printed once, when it is created, and never stored: the database keeps only
its SHA-256 digest, so a lost secret cannot be recovered, only replaced. The secret goes to
stdout alone (``KEY=$(danlu keys create --scope predict)``); what it is and the warning go to
stderr. Creating and revoking a key is recorded in the registry's audit log under the actor
``$DANLU_ACTOR`` (or the login name).
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

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

_NOT_AGAIN = "Copy the secret now: it is stored only as a hash and cannot be shown again."


class Scope(StrEnum):
    """The scopes of ``danlu.store.API_KEY_SCOPES`` (not imported: it would load SQLAlchemy
    for ``danlu --help``)."""

    predict = "predict"
    admin = "admin"


def _actor() -> str:
    from danlu.store import current_actor

    return current_actor()


def _as_json(key: ApiKey) -> dict[str, Any]:
    return {**asdict(key), "active": key.active}


@keys_app.command("create")
def create_key(
    scope: Annotated[
        Scope,
        typer.Option(
            "--scope",
            help="predict: call prediction routes; admin: also load, unload, reload and "
            "re-alias models.",
            case_sensitive=False,
        ),
    ],
    name: Annotated[
        str, typer.Option("--name", "-n", help="What the key is for, e.g. web-frontend.")
    ] = "",
    as_json: JsonOption = False,
) -> None:
    """Create a key and print its secret, once."""
    with open_store() as store:
        key, secret = store.create_api_key(scope.value, name=name, actor=_actor())
    about = f"Created {key.scope} key {key.id}" + (f" ({key.name})" if key.name else "") + "."
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
        err.print("No API keys. Create one with: danlu keys create --scope predict")
        return
    table = Table("id", "name", "scope", "prefix", "created", "last used", "revoked")
    for k in keys:
        table.add_row(
            cell(k.id),
            cell(k.name or "-"),
            cell(k.scope),
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
        key = store.revoke_api_key(key_id, actor=_actor())
    shown = f"{key.id}" + (f" ({key.name})" if key.name else "")
    out.print(Text(f"revoked {key.scope} key {shown}"))
