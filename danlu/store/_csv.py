"""CSV cells that a spreadsheet will not run: the OWASP rule against CSV (formula) injection.

A text cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula
to Excel, LibreOffice and Google Sheets (``=HYPERLINK(...)``, ``@SUM(...)``, ``-2+3``); a leading
single quote makes it plain text. Numbers -- and text that is exactly a number, such as a param
stored as ``"-1.5"`` -- stay numbers.
"""

from __future__ import annotations

import re

__all__ = ["csv_safe"]

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def csv_safe(value: object) -> object:
    """``value`` for a CSV cell: a text that a spreadsheet would evaluate gets a leading ``'``.

    Example:
        >>> csv_safe("=HYPERLINK(\\"http://x\\")"), csv_safe("-1.5"), csv_safe(-1.5)
        ('\\'=HYPERLINK("http://x")', '-1.5', -1.5)
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value
