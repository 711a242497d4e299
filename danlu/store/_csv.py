"""CSV cells that a spreadsheet will not run: the OWASP rule against CSV (formula) injection.

A text cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula
to Excel, LibreOffice and Google Sheets (``=HYPERLINK(...)``, ``@SUM(...)``, ``-2+3``); a leading
single quote makes it plain text. Numbers -- and text that is exactly a number, such as a param
stored as ``"-1.5"`` -- stay numbers. A text that already begins with a quote and a formula
character gets one more quote, so that :func:`csv_restore`, which danlu's readers of its own CSVs
apply, gives back exactly the value written.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["csv_restore", "csv_restore_frame", "csv_safe"]

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def csv_safe(value: object) -> object:
    """``value`` for a CSV cell: a text that a spreadsheet would evaluate gets a leading ``'``.

    Example:
        >>> csv_safe("=HYPERLINK(\\"http://x\\")"), csv_safe("-1.5"), csv_safe(-1.5)
        ('\\'=HYPERLINK("http://x")', '-1.5', -1.5)
    """
    if isinstance(value, str) and _quoted_form(value.lstrip("'")):
        return "'" + value
    return value


def _quoted_form(text: str) -> bool:
    """Whether ``text`` starts as a formula (and is not a number)."""
    return text.startswith(_FORMULA_START) and not _NUMBER.fullmatch(text)


def csv_restore(value: object) -> object:
    """The value :func:`csv_safe` was given: one leading ``'`` of a quoted formula removed.

    Example:
        >>> csv_restore(csv_safe("=1+2")), csv_restore(csv_safe("'=x")), csv_restore("'ok")
        ('=1+2', "'=x", "'ok")
    """
    if isinstance(value, str) and value.startswith("'") and _quoted_form(value.lstrip("'")):
        return value[1:]
    return value


def csv_restore_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` read from a CSV danlu wrote, with :func:`csv_restore` applied to its column
    names and its text cells (a copy; numbers and other columns are left as they are)."""
    frame = frame.rename(columns=csv_restore)
    for name in frame.select_dtypes(include=["object", "string"]).columns:
        column = frame[name]
        if column.map(lambda v: isinstance(v, str) and v.startswith("'")).any():
            frame[name] = column.map(csv_restore)  # columns without one keep their dtype
    return frame
