"""The model registry pages: every model; one model's versions with their aliases, tags, test
metrics and embedded trust reports, its compression variants on accuracy-vs-latency and
accuracy-vs-size charts, the alias form (an admin key; the audit log records who moved what) and
the audit log.

A compression variant is a version tagged ``compression=<variant>`` and ``parent=NAME:VERSION``;
its ``compression.json`` holds the measurements of the fp32 parent (``reference``) and of every
variant made in the same pass (passed, dropped, failed or skipped), so the charts read the
newest variant's file of each parent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from danlu.errors import DanluError, NotFoundError
from danlu.store._crypt import is_encrypted, read_bytes
from danlu.ui._app import REPORT_CSP, check_access, render, ui_principal

if TYPE_CHECKING:
    from danlu.store import ModelVersion, Store

__all__ = ["compression_points", "router"]

router = APIRouter()

#: versions whose trust report is embedded on the page (newest first); older ones link to it
EMBEDDED_REPORTS = 20


@router.get("/models")
def models_page(request: Request) -> Response:
    store: Store = request.app.state.store
    return render(request, "models.html", models=store.list_models())


def _versions(store: Store, name: str) -> list[ModelVersion]:
    try:
        versions = store.list_model_versions(name)
    except DanluError:  # a name the store refuses is no model either
        versions = []
    if not versions:
        raise HTTPException(404, f"There is no model {name!r}. See the list at /models.")
    return versions


def _model_page(
    request: Request, name: str, *, error: str | None = None, status: int = 200
) -> Response:
    store: Store = request.app.state.store
    versions = sorted(_versions(store, name), key=lambda v: -v.version)
    model = next((m for m in store.list_models() if m.name == name), None)
    aliases = dict(sorted(model.aliases.items())) if model is not None else {}
    points = compression_points(store, name, versions)
    return render(
        request,
        "model.html",
        status=status,
        name=name,
        model=model,
        versions=versions,
        aliases=aliases,
        embedded=EMBEDDED_REPORTS,
        audit=list(reversed(store.audit_log(name)))[:200],
        compression=points,
        error=error,
    )


@router.get("/models/{name}")
def model_page(request: Request, name: str) -> Response:
    try:
        return _model_page(request, name)
    except HTTPException as exc:
        return render(request, "not_found.html", status=exc.status_code, message=str(exc.detail))


@router.get("/models/{name}/{version}/report")
def model_report(request: Request, name: str, version: int) -> Response:
    """A version's stored trust report, to be framed by the model page (no script runs in it:
    REPORT_CSP, and the page's iframe is sandboxed)."""
    store: Store = request.app.state.store
    try:
        path = store.model_version_path(name, version, "report.html")
    except DanluError:
        raise HTTPException(404, "No such model version.") from None
    if not path.is_file():
        raise HTTPException(404, f"Model {name}:{version} has no trust report.")
    headers = {"Content-Security-Policy": REPORT_CSP, "X-Frame-Options": "SAMEORIGIN"}
    if is_encrypted(path):  # decrypted here; the key never leaves the server
        return Response(read_bytes(path), media_type="text/html; charset=utf-8", headers=headers)
    return FileResponse(path, media_type="text/html; charset=utf-8", headers=headers)


@router.post("/models/{name}/aliases")
def move_alias(
    request: Request,
    name: str,
    alias: str = Form(..., max_length=100),
    version: int = Form(..., ge=1),
    key: str = Form("", max_length=500),
) -> Response:
    """Point ``alias`` at ``version``: an admin key (typed into the form, or the sign-in
    cookie's) from a page of this dashboard, whose user is an admin of the model's project;
    the audit log records the key's user and id."""

    def move(store: Store, actor: str) -> None:
        store.set_alias(name, alias.strip(), version, actor=actor)

    return _change_alias(request, name, alias, key, move)


@router.post("/models/{name}/aliases/delete")
def delete_alias(
    request: Request,
    name: str,
    alias: str = Form(..., max_length=100),
    key: str = Form("", max_length=500),
) -> Response:
    """Remove ``alias`` from the model: the same admin key and same-origin rules as moving one;
    the audit log records the key's user and id."""

    def remove(store: Store, actor: str) -> None:
        store.delete_alias(name, alias.strip(), actor=actor)

    return _change_alias(request, name, alias, key, remove)


def _change_alias(
    request: Request, name: str, alias: str, key: str, change: Callable[[Store, str], None]
) -> Response:
    """Check the key (an admin of the model's project, from a page of this dashboard), then
    ``change(store, actor)``; back to the model's page, or the page with the store's reason."""
    store: Store = request.app.state.store
    who = ui_principal(request, key or None, subject=name)
    check_access(request, who, "alias", store.model_project(name), subject=name, alias=alias)
    _versions(store, name)
    try:
        change(store, who.actor)
    except NotFoundError as exc:
        return _model_page(request, name, error=str(exc), status=404)
    except DanluError as exc:
        return _model_page(request, name, error=str(exc), status=400)
    return RedirectResponse(f"/models/{quote(name)}", status_code=303)


def _finite(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _latency(row: dict[str, Any]) -> float | None:
    """Batch-1 latency on the runtime that serves the model (ONNX Runtime first for fp32)."""
    runtime = row.get("runtime") or "onnx"
    first = _finite(row.get(f"{runtime}_latency_ms"))
    if first is not None:
        return first
    return _finite(row.get("onnx_latency_ms")) or _finite(row.get("torch_latency_ms"))


def compression_points(
    store: Store, name: str, versions: list[ModelVersion]
) -> list[dict[str, Any]]:
    """One entry per compressed parent version: its metric, and a point per model (the fp32
    parent and each variant) with the metric's value, batch-1 latency (ms), size (bytes) and
    status, read from the newest variant's ``compression.json``."""
    newest: dict[str, ModelVersion] = {}
    for v in versions:
        parent = v.tags.get("parent")
        if v.tags.get("compression") and parent and "compression.json" in v.files:
            if parent not in newest or v.version > newest[parent].version:
                newest[parent] = v
    made = {
        (v.tags.get("parent"), v.tags.get("compression")): v.ref
        for v in sorted(versions, key=lambda v: v.version)
        if v.tags.get("compression")
    }
    groups = []
    for parent, v in sorted(newest.items(), key=lambda kv: -kv[1].version):
        try:
            data = json.loads(
                read_bytes(store.model_version_path(name, v.version, "compression.json"))
            )
        except (OSError, ValueError, DanluError):
            continue
        if not isinstance(data, dict):
            continue
        reference = data.get("reference") or {}
        rows = [{**reference, "status": "fp32", "version": parent}]
        rows += [r for r in data.get("variants") or [] if isinstance(r, dict)]
        points = []
        for row in rows:
            value = _finite(row.get("value"))
            if value is None:  # skipped or failed: nothing measured
                continue
            points.append(
                {
                    "variant": str(row.get("variant") or "?"),
                    "status": str(row.get("status") or "?"),
                    "runtime": str(row.get("runtime") or ""),
                    "version": row.get("version") or made.get((parent, row.get("variant"))),
                    "value": value,
                    "drop": _finite(row.get("drop")),
                    "latency_ms": _latency(row),
                    "size_bytes": _finite(row.get("size_bytes")),
                }
            )
        groups.append(
            {
                "parent": parent,
                "metric": str(reference.get("metric") or "metric"),
                "objective": data.get("objective"),
                "best": data.get("best"),
                "points": points,
            }
        )
    return groups
