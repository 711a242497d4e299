"""The CLI's consoles and its one rule for showing stored text (a leaf: no other CLI module).

Whatever the CLI shows from the store -- run, model, study and key names, tags, params, aliases,
errors -- was written by someone, maybe an attacker. Two things keep it inert on a terminal:

- **Control characters are shown, never sent.** :func:`safe` writes C0/C1 controls (ESC among
  them), DEL and the bidirectional overrides as visible escapes (``\\x1b``). ``out`` and ``err``
  are :class:`SafeConsole` objects, which apply it to every piece of text they print, so nothing
  reaches the terminal raw even where a command forgets; log lines get the same treatment.
- **Stored text is never markup.** :func:`cell` makes a ``Text`` (a run named ``[red]x`` prints
  as ``[red]x``); a value spliced into a markup string goes through ``rich.markup.escape``.

Subcommand modules import this module (and ``_options``), never ``_app``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

from rich.console import Console, ConsoleOptions, RenderableType
from rich.segment import Segment
from rich.text import Text

__all__ = [
    "SafeConsole",
    "cell",
    "err",
    "out",
    "print_error",
    "safe",
    "setup_logging",
    "state",
]

_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029)
_ESCAPES: dict[int, str] = {
    **{c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))},
    **{c: f"\\u{c:04x}" for c in _BIDI},
}
_ESCAPES_BUT_NEWLINE = {c: text for c, text in _ESCAPES.items() if c != 0x0A}


def safe(value: object, *, newlines: bool = False) -> str:
    """``value`` as text whose control characters are shown as escapes, never sent.

    Args:
        newlines: keep line breaks (for multi-line text such as an error); otherwise they are
            shown as ``\\x0a`` too, so that one value stays on one line.

    Example:
        >>> safe("run\\x1b[2J")
        'run\\\\x1b[2J'
    """
    return str(value).translate(_ESCAPES_BUT_NEWLINE if newlines else _ESCAPES)


def cell(value: object) -> Text:
    """Stored text as a table cell: never markup, controls visible (``None`` shows as ``-``)."""
    return Text("-" if value is None else safe(value))


class SafeConsole(Console):
    """A Rich console that shows control characters in printed text instead of sending them.

    Rich's own cursor and screen controls (progress bars, spinners) are control segments and
    pass through; every other segment's text goes through :func:`safe`.
    """

    def render(
        self, renderable: RenderableType, options: ConsoleOptions | None = None
    ) -> Iterable[Segment]:
        for segment in super().render(renderable, options):
            if segment.control or segment.text.isprintable() or segment.text == "\n":
                yield segment
            else:
                yield Segment(safe(segment.text, newlines=True), segment.style, segment.control)


out = SafeConsole()
err = SafeConsole(stderr=True)
#: flags of the root command: ``debug`` (show tracebacks) and ``verbose`` (log progress)
state: dict[str, bool] = {"debug": False, "verbose": False}


class _SafeFormatter(logging.Formatter):
    """Log lines with their control characters shown (a message may quote stored text)."""

    def format(self, record: logging.LogRecord) -> str:
        return safe(super().format(record), newlines=True)


def setup_logging(verbose: bool, quiet: bool) -> None:
    """Send danlu's log to stderr: Rich on a terminal, plain lines into a pipe or a log file."""
    from rich.logging import RichHandler

    level = logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING
    handler: logging.Handler
    if err.is_terminal:
        handler = RichHandler(console=err, show_time=False, show_path=False)
        handler.setFormatter(_SafeFormatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_SafeFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("danlu")
    root.handlers = [h for h in root.handlers if isinstance(h, logging.NullHandler)] + [handler]
    root.setLevel(level)


def print_error(message: Any) -> None:
    """``error: MESSAGE`` on stderr; the message is plain text (it may quote stored names)."""
    err.print(
        Text.assemble(("error:", "bold red"), " ", safe(message, newlines=True)), soft_wrap=True
    )
