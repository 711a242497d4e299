"""The runs page: every run in a table, filtered and sorted by the store (the filter language of
``danlu runs ls``), a page at a time."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Query, Request

from danlu.errors import DanluError
from danlu.ui._app import render

if TYPE_CHECKING:
    from fastapi.responses import Response

router = APIRouter()

PAGE_SIZE = 50


@router.get("/")
def runs_page(
    request: Request,
    filter: str = Query("", max_length=2000),  # noqa: A002 - the query parameter's name
    order: str = Query("-created_at", max_length=200),
    page: int = Query(1, ge=1, le=100_000),
) -> Response:
    store = request.app.state.store
    error = None
    runs = []
    order_by = [order] if order else []
    try:
        runs = store.search_runs(
            filter or None, order_by=order_by, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE
        )
    except DanluError as exc:  # a filter that does not parse: say so, show nothing
        error = str(exc)
    more = len(runs) > PAGE_SIZE
    return render(
        request,
        "runs.html",
        runs=runs[:PAGE_SIZE],
        filter=filter,
        order=order,
        page=page,
        more=more,
        error=error,
    )
