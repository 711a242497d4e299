"""Options and output lines that several commands share (a leaf: imports no other CLI module)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from danlu.store import ModelVersion

__all__ = ["JsonOption", "QuietOption", "SetOption", "registered_line"]

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override a recipe key: key.path=value (repeatable).",
        metavar="KEY=VALUE",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress output; only the result.")
]


def registered_line(version: ModelVersion) -> str:
    """``registered as model digits:3 (alias staging)``."""
    aliases = f" (alias {', '.join(version.aliases)})" if version.aliases else ""
    return f"registered as model {version.ref}{aliases}"
