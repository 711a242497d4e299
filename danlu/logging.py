"""Loggers under one ``danlu`` root logger.

Library code never prints; it logs. The CLI decides how records are rendered (Rich on a TTY,
plain lines otherwise) and at which level.
"""

from __future__ import annotations

import logging

__all__ = ["get_logger"]

_ROOT = "danlu"


def get_logger(name: str) -> logging.Logger:
    """Return a logger under the ``danlu`` hierarchy.

    Example:
        >>> get_logger("danlu.data").name
        'danlu.data'
    """
    if name != _ROOT and not name.startswith(_ROOT + "."):
        name = f"{_ROOT}.{name}"
    return logging.getLogger(name)


logging.getLogger(_ROOT).addHandler(logging.NullHandler())
