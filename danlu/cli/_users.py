"""``danlu users``: the people of a shared store and their role per project.

``add`` and ``disable`` need the admin role on every project (``*``), ``grant`` the admin role
on the project granted; every change and every refusal goes to the store's audit log with the
actor. See docs/access.md.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from danlu.cli._access import allow
from danlu.cli._console import cell, err, out
from danlu.cli._options import JsonOption
from danlu.cli._runs import local_time, open_store, print_json, print_table

__all__ = ["users_app"]

users_app = typer.Typer(
    help="Users and their roles per project (viewer, editor, admin; '*' = every project).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

RoleOption = Annotated[
    str | None,
    typer.Option(
        "--role",
        "-r",
        help="predictor (may only predict), viewer, editor or admin.",
        show_default=False,
    ),
]
ProjectOption = Annotated[
    str, typer.Option("--project", "-p", help="The project the role is for ('*': every one).")
]


def _as_json(user: Any) -> dict[str, Any]:
    return {**asdict(user), "active": user.active}


@users_app.command("add")
def add_user(
    name: Annotated[str, typer.Argument(help="The user's name (e.g. their login).")],
    role: RoleOption = None,
    project: ProjectOption = "*",
) -> None:
    """Add a user, with a role on a project (the first user becomes admin of every project)."""
    with open_store() as store:
        who = allow(store, "users", "*", subject="*users*", user=name)
        user = store.add_user(name, role=role, project=project, actor=who.actor)
    roles = ", ".join(f"{r} on {p}" for p, r in user.roles.items()) or "no role yet"
    out.print(Text(f"added user {user.name} ({roles})"))
    if who.local_admin and who.name != user.name:  # the store's first user is not you
        err.print(
            Text(
                f"This store now has users and {who.name!r} is not one of them: act as "
                f"{user.name} (DANLU_ACTOR={user.name} on this SQLite store, or one of its "
                f"keys), or add yourself: danlu users add {who.name} --role ...",
                style="yellow",
            )
        )


@users_app.command("grant")
def grant_role(
    name: Annotated[str, typer.Argument(help="The user.")],
    project: Annotated[str, typer.Argument(help="The project ('*': every project).")],
    role: Annotated[
        str, typer.Argument(help="predictor, viewer, editor, admin, or none to take it away.")
    ],
) -> None:
    """Give NAME the role ROLE on PROJECT (replacing its role there); ROLE none removes it."""
    with open_store() as store:
        who = allow(store, "users", project, subject="*users*", user=name)
        store.grant(name, project, None if role == "none" else role, actor=who.actor)
    out.print(Text(f"{name}: {role} on {project}"))


@users_app.command("disable")
def disable_user(name: Annotated[str, typer.Argument(help="The user to disable.")]) -> None:
    """Disable a user for good: their API keys stop working at once."""
    with open_store() as store:
        who = allow(store, "users", "*", subject="*users*", user=name)
        user = store.disable_user(name, actor=who.actor)
    out.print(Text(f"disabled user {user.name}; their keys no longer work"))


@users_app.command("ls")
def list_users(as_json: JsonOption = False) -> None:
    """List users: name, roles per project, created, disabled."""
    with open_store() as store:
        users = store.list_users()
    if as_json:
        print_json([_as_json(u) for u in users])
        return
    if not users:
        err.print(
            "No users: this store belongs to whoever runs danlu here (its OS user is admin). "
            "Add the first admin with: danlu users add NAME"
        )
        return
    table = Table("name", "roles", "created", "by", "disabled")
    for u in users:
        table.add_row(
            cell(u.name),
            cell(", ".join(f"{p}: {r}" for p, r in u.roles.items()) or "-"),
            local_time(u.created_at),
            cell(u.created_by),
            Text(local_time(u.disabled_at), style="red") if not u.active else "-",
        )
    print_table(table)


@users_app.command("roles")
def list_roles(as_json: JsonOption = False) -> None:
    """What each role may do (the table every check reads)."""
    from danlu.store import ACTION_HELP, PERMISSIONS, ROLES, role_allows

    rows = {a: {r: role_allows(r, a) for r in ROLES} for a in PERMISSIONS}
    if as_json:
        print_json({"roles": list(ROLES), "actions": rows, "help": ACTION_HELP})
        return
    table = Table("action", "what", *ROLES)
    for action, allowed in rows.items():
        table.add_row(
            cell(action),
            cell(ACTION_HELP[action]),
            *("yes" if allowed[r] else "-" for r in ROLES),
        )
    print_table(table)
