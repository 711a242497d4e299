"""``danlu db``: the tracking database itself."""

from __future__ import annotations

import typer

from danlu.cli._console import out
from danlu.cli._runs import open_store

__all__ = ["db_app"]

db_app = typer.Typer(
    help="The tracking database (SQLite by default, PostgreSQL via DANLU_DB_URL).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@db_app.command("upgrade")
def upgrade() -> None:
    """Migrate the database to the current schema and print its revision."""
    from danlu.store._migrate import current_revision

    with open_store() as store:  # opening the store migrates it to the head revision
        revision = current_revision(store.engine)
        url = store.engine.url.render_as_string(hide_password=True)
    out.print(f"schema revision: {revision}", highlight=False, markup=False)
    out.print(f"database: {url}", highlight=False, markup=False, soft_wrap=True)
