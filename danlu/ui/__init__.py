"""The web dashboard (``danlu ui``): runs, live training curves, comparisons, studies, the
registry with trust reports, jobs and deployments, served by FastAPI from the same store.

Importing this package imports neither FastAPI nor torch; :func:`create_app` does the former.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from danlu.ui._app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from danlu.ui._app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
