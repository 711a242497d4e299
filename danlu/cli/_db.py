"""``danlu db``: the tracking database itself."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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


@db_app.command("encryption-key")
def encryption_key(
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write the new key to this file (created with mode 0600; never overwritten) "
            "instead of printing it.",
            metavar="FILE",
        ),
    ] = None,
    show_id: Annotated[
        bool,
        typer.Option(
            "--show-id",
            help="Make no key: print the id of the key set in the environment and of the key "
            "the store encrypts with.",
        ),
    ] = False,
) -> None:
    """Make a key for encrypting artifacts and model files at rest (AES-256-GCM).

    Set it as DANLU_ENCRYPTION_KEY (the printed base64 text) or DANLU_ENCRYPTION_KEY_FILE (the
    file --output wrote); the store encrypts everything written from then on, and refuses to
    write without that key. Keep a copy: without the key, encrypted files cannot be read.
    """
    from danlu.store import danlu_home
    from danlu.store._crypt import (
        KEY_FILE_ENV,
        generate_key,
        load_key,
        store_key_id,
        write_key_file,
    )

    if show_id:
        key = load_key()
        want = store_key_id(danlu_home())
        out.print(f"environment key: {key.key_id if key else 'none set'}", highlight=False)
        out.print(f"store key: {want or 'none (the store is not encrypted)'}", highlight=False)
        return
    if output is not None:
        made = write_key_file(output)
        out.print(
            f"Wrote a new encryption key (id {made.key_id}) to {output} (mode 0600). Use it "
            f"with: export {KEY_FILE_ENV}={output.resolve()}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        return
    out.print(generate_key(), highlight=False, markup=False)
