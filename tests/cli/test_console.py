"""The CLI's consoles: stored text never drives the terminal, never becomes markup (issue 13), and
the subcommand modules share them without importing ``_app`` (issue 14)."""

from __future__ import annotations

import ast
import io
import logging
from pathlib import Path

import pytest
from rich.table import Table
from rich.text import Text

from danlu.cli import _console
from danlu.cli._console import SafeConsole, cell, safe

HOSTILE = "evil\x1b[2J\x1b]0;title\x07\x9b31m\x7f\u202eabc"


def test_safe_shows_every_control_character_and_keeps_the_rest():
    shown = safe(HOSTILE)
    assert shown == "evil\\x1b[2J\\x1b]0;title\\x07\\x9b31m\\x7f\\u202eabc"
    assert shown.isprintable()
    assert safe("a\nb\tc") == "a\\x0ab\\x09c"
    assert safe("a\nb", newlines=True) == "a\nb"
    assert safe("ünïcode ✓ 丹炉 [red]") == "ünïcode ✓ 丹炉 [red]"


def _terminal() -> tuple[SafeConsole, io.StringIO]:
    buffer = io.StringIO()
    return SafeConsole(file=buffer, force_terminal=True, color_system="standard", width=200), buffer


def test_console_shows_controls_but_still_styles_and_draws():
    console, buffer = _terminal()
    console.print(Text(HOSTILE, style="red"))  # not through cell(): the console still guards
    console.print(f"plain {HOSTILE}", markup=False, highlight=False)
    table = Table("name")
    table.add_row(cell(HOSTILE))
    console.print(table)
    written = buffer.getvalue()
    assert "\x1b[31m" in written  # Rich's own styling still reaches the terminal
    for raw in ("\x1b[2J", "\x1b]0;", "\x07", "\x9b", "\x7f", "\u202e"):
        assert raw not in written, repr(raw)
    assert written.count("evil\\x1b[2J") == 3


def test_rich_controls_pass_through():
    from rich.control import Control

    console, buffer = _terminal()
    console.print(Control.move_to(0, 0), "x")
    assert "\x1b[1;1H" in buffer.getvalue()


def test_stored_text_is_never_markup():
    console, buffer = _terminal()
    table = Table("name")
    table.add_row(cell("[red]x[/red]"))
    console.print(table)
    assert "[red]x[/red]" in buffer.getvalue()


def test_error_lines_are_plain_text(monkeypatch):
    console, buffer = _terminal()
    monkeypatch.setattr(_console, "err", console)
    _console.print_error(f"Unknown model '[bold]x' {HOSTILE}\nsecond line")
    written = buffer.getvalue()
    assert "[bold]x" in written and "\x1b[2J" not in written and "\nsecond line" in written


@pytest.mark.parametrize("terminal", [False, True])
def test_log_lines_show_controls(monkeypatch, terminal):
    console, buffer = _terminal()
    monkeypatch.setattr(_console, "err", console if terminal else SafeConsole(file=io.StringIO()))
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    logger = logging.getLogger("danlu")
    saved = logger.handlers[:], logger.level
    try:
        _console.setup_logging(verbose=False, quiet=False)
        logging.getLogger("danlu.test").warning("run %s failed", HOSTILE)
    finally:
        logger.handlers, logger.level = saved
    written = (buffer if terminal else stream).getvalue()
    assert "evil\\x1b" in written and "\x1b[2J" not in written and "\x9b" not in written


_CLI = Path(_console.__file__).parent
# every subcommand module imports the leaf danlu.cli._console; none is left to switch
_NOT_YET: set[str] = set()


def test_subcommand_modules_never_import_app():
    importers = set()
    for path in _CLI.glob("_*.py"):
        if path.name in ("_app.py", "__init__.py"):  # the top and the package itself
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in ("danlu.cli", "danlu.cli._app"):
                names = {a.name for a in node.names}
                if node.module == "danlu.cli._app" or "_app" in names:
                    importers.add(path.name)
    assert importers == _NOT_YET, "import danlu.cli._console (and _options) instead of _app"


def test_console_module_is_a_leaf():
    tree = ast.parse((_CLI / "_console.py").read_text())
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module is not None
    } | {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert not any(m.startswith("danlu") for m in imported), imported
