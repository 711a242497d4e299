"""Run the CLI in-process through ``main``, as the ``danlu`` script does (so a DanluError
becomes its exit code and a message, exactly as a user sees it)."""

from __future__ import annotations

import sys
from typing import NamedTuple

from typer.testing import CliRunner

from danlu.cli import main


class Outcome(NamedTuple):
    code: int
    stdout: str
    stderr: str


def danlu(*args: str, input: str | None = None) -> Outcome:
    with CliRunner().isolation(input=input) as (stdout, stderr, _):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        sys.stdout.flush()
        sys.stderr.flush()
        return Outcome(code, stdout.getvalue().decode(), stderr.getvalue().decode())
