"""The ``danlu`` command line (Typer + Rich)."""

from __future__ import annotations

from danlu.cli._app import app, main

__all__ = ["app", "main"]
