"""Signing in (a key typed once becomes an HttpOnly, same-site cookie) and the health check."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Form, Request
from fastapi.responses import PlainTextResponse, RedirectResponse

from danlu.ui._app import KEY_COOKIE, render, same_origin

if TYPE_CHECKING:
    from fastapi.responses import Response

router = APIRouter()


@router.get("/healthz", include_in_schema=False)
def healthz() -> PlainTextResponse:
    return PlainTextResponse("ok")


@router.get("/login")
def login_page(request: Request) -> Response:
    return render(request, "login.html", error=None)


@router.post("/login")
def login(request: Request, key: str = Form(...)) -> Response:
    if not same_origin(request):
        return render(request, "login.html", status=403, error="Refused: not from this page.")
    if request.app.state.store.verify_api_key(key) is None:
        return render(request, "login.html", status=403, error="That key is not valid.")
    response = RedirectResponse("/", status_code=303)
    secure = request.url.scheme == "https"
    response.set_cookie(KEY_COOKIE, key, httponly=True, samesite="strict", secure=secure)
    return response
