"""``danlu ui``: the web dashboard on 127.0.0.1 (``danlu.ui``)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from danlu.cli._console import err, setup_logging, state
from danlu.errors import ConfigError

__all__ = ["ui_command"]

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def ui_command(
    host: Annotated[
        str,
        typer.Option(help="Address to listen on; any but loopback needs an API key to exist."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=0, max=65535)] = 8080,
) -> None:
    """Open the web dashboard: runs, live curves, comparisons, studies, models, jobs.

    Listens on 127.0.0.1 by default. On another address every request needs a key
    (danlu keys create --scope predict to look, admin to change aliases), sent as the
    X-Danlu-Key header or typed once at /login.
    """
    setup_logging(state["verbose"], False)
    import uvicorn

    from danlu.store import SqlStore
    from danlu.ui import create_app

    store = SqlStore()
    loopback = host in LOOPBACK
    if not loopback and not store.has_api_keys():
        raise ConfigError(
            f"danlu ui --host {host} listens beyond this machine, and no API key exists to "
            "guard it. Create one first: danlu keys create --scope admin"
        )
    app = create_app(store, require_keys=not loopback)
    shown = f"[{host}]" if ":" in host else host
    err.print(Text(f"danlu dashboard on http://{shown}:{port}/ (Ctrl-C stops it)"))
    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)
