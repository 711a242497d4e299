"""Figures for the trust report: matplotlib (headless Agg) rendered to inline SVG markup."""

from __future__ import annotations

import io
import re
from typing import Any

__all__ = ["figure", "svg"]

_PROLOGUE = re.compile(r"^.*?(?=<svg)", re.S)


def figure(width: float = 5.2, height: float = 3.4, **kwargs: Any) -> tuple[Any, Any]:
    """A new (figure, axes) pair on the Agg backend (``plt.subplots`` arguments)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), **kwargs)


def svg(fig: Any) -> str:
    """The figure as SVG markup to inline in HTML (no XML prologue, no date); closes it."""
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    try:
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    finally:
        plt.close(fig)
    return _PROLOGUE.sub("", buffer.getvalue(), count=1)
