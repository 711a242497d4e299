"""The runs pages: every run in a table, filtered and sorted by the store (the filter language of
``danlu runs ls``) a page at a time; one run in detail (recipe, lineage, live metric curves,
stage timings, the data quality and trust reports, artifacts and logs); the JSON its curves
poll; and the downloads of its artifacts through validated names only."""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from danlu.errors import DanluError, NotFoundError, StoreError
from danlu.store import validate_artifact_name, validate_run_id
from danlu.store._crypt import is_encrypted, read_bytes
from danlu.ui._app import REPORT_CSP, render

if TYPE_CHECKING:
    from danlu.store import Run, Store

router = APIRouter()

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
KEY_PARAMS = 5
KEY_METRICS = 6
#: the reports a run may hold, served framed and sandboxed
REPORTS = ("report.html", "data_quality.html")
LOG_TAIL_BYTES = 20_000
#: sortable run attributes shown as columns (duration is computed, not sortable)
ATTRIBUTES = ("run_id", "name", "status", "stage", "created_at")
#: metrics that describe the run's bookkeeping rather than the model (not key columns)
_BOOKKEEPING = ("rows_", "stage_", "energy_", "best_epoch", "epochs_run", "lr")
#: params that repeat a column already shown (the recipe's name is the run's name)
_NOT_KEY_PARAMS = frozenset({"name", "schema_version"})


def key_columns(runs: list[Run]) -> tuple[list[str], list[str]]:
    """The params and metrics worth a column for these runs: params whose values differ among
    them (then the most common), metrics the most runs have (model metrics before bookkeeping)."""
    params: Counter[str] = Counter()
    values: dict[str, set[str]] = {}
    metrics: Counter[str] = Counter()
    for run in runs:
        for key, value in run.params.items():
            if value not in ("null", "", "[]", "{}") and key not in _NOT_KEY_PARAMS:
                params[key] += 1
                values.setdefault(key, set()).add(value)
        metrics.update(run.metrics)
    varying = sorted(params, key=lambda k: (-(len(values[k]) > 1), -params[k], k))
    preferred = [k for k in varying if len(values[k]) > 1 or k == "model.type"]
    chosen_params = (preferred or varying)[:KEY_PARAMS]

    def metric_rank(key: str) -> tuple[int, int, str]:
        bookkeeping = key.startswith(_BOOKKEEPING) or key.endswith("_seconds")
        headline = key.startswith(("test_", "val_"))
        return (int(bookkeeping) - int(headline), -metrics[key], key)

    chosen_metrics = sorted(metrics, key=metric_rank)[:KEY_METRICS]
    return chosen_params, chosen_metrics


def _order_link(order: str, field: str) -> str:
    """The ``order`` a click on ``field``'s header asks for: ascending first, then flipping."""
    return f"-{field}" if order == field else field


@router.get("/")
def runs_page(
    request: Request,
    filter: str = Query("", max_length=2000),  # noqa: A002 - the query parameter's name
    order: str = Query("-created_at", max_length=200),
    offset: int = Query(0, ge=0, le=10_000_000),
    limit: int = Query(PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE),
) -> Response:
    store: Store = request.app.state.store
    error = None
    runs: list[Run] = []
    try:  # one query for the page's runs, one for their params, metrics and tags
        runs = store.search_runs(
            filter.strip() or None,
            order_by=[order] if order.strip() else [],
            limit=limit + 1,
            offset=offset,
        )
    except DanluError as exc:  # a filter or order that does not parse: the page says why, with
        error = str(exc)  # the filter in its box to correct (200: typed text, not a bad request)
    more = len(runs) > limit
    runs = runs[:limit]
    params, metrics = key_columns(runs)
    return render(
        request,
        "runs.html",
        runs=runs,
        params=params,
        metrics=metrics,
        filter=filter,
        order=order,
        offset=offset,
        limit=limit,
        more=more,
        error=error,
        order_link=lambda field: _order_link(order, field),
    )


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> Response:
    """No icon (browsers ask for one on every page; a 404 would be logged as an error)."""
    from fastapi.responses import Response

    return Response(status_code=204)


def load_run(request: Request, run_id: str) -> Run:
    """The run, or a 404 for an unknown or malformed id."""
    from fastapi import HTTPException

    store: Store = request.app.state.store
    try:
        return store.get_run(validate_run_id(run_id))
    except (NotFoundError, StoreError) as exc:
        raise HTTPException(404, str(exc)) from None


def not_found(request: Request, message: str) -> Response:
    return render(request, "not_found.html", status=404, message=message)


def _family(key: str) -> str | None:
    """The chart a metric's curve belongs on (None: not a curve)."""
    if key.endswith("loss"):
        return "Losses"
    if key.startswith("val_"):
        return "Validation metrics"
    if key.startswith("train_") and not key.endswith("_seconds"):
        return "Training metrics"
    if key == "lr":
        return "Learning rate"
    return None


def curves(store: Store, run_id: str, after: int = -1) -> dict[str, list[list[float | None]]]:
    """Each curve's points logged after step ``after``: ``{key: [[step, value], ...]}`` — the
    metrics logged per epoch (a metric logged once, such as ``test_accuracy``, is no curve)."""
    series: dict[str, list[list[float | None]]] = {}
    for point in store.metric_history(run_id):
        if point.epoch is None or point.step <= after or _family(point.key) is None:
            continue
        value = point.value if math.isfinite(point.value) else None
        series.setdefault(point.key, []).append([point.step, value])
    for points in series.values():
        points.sort(key=lambda p: p[0] or 0)
    return series


@router.get("/api/runs/{run_id}/metrics")
def run_metrics(request: Request, run_id: str, after: int = Query(-1, ge=-1)) -> Response:
    run = load_run(request, run_id)
    series = curves(request.app.state.store, run.id, after)
    steps = max((int(p[0] or 0) for pts in series.values() for p in pts), default=after)
    return JSONResponse(
        {
            "steps": max(steps, after),
            "series": series,
            "families": {key: _family(key) for key in series},
            "status": run.status,
        }
    )


def _read_json(store: Store, run_id: str, name: str) -> Any:
    data = store.run_reader(run_id)(name)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def _logs(store: Store, run_id: str, names: list[str]) -> list[tuple[str, str]]:
    """The tail of each log-like artifact (``*.log``, ``stdout*``, ``stderr*``)."""
    logs = []
    for name in names:
        base = name.rsplit("/", 1)[-1]
        if not (base.endswith((".log", ".txt")) or base.startswith(("stdout", "stderr"))):
            continue
        path = store.artifact_path(run_id, name)
        try:
            if is_encrypted(path):
                tail = read_bytes(path)[-LOG_TAIL_BYTES:].decode("utf-8", "replace")
            else:
                with path.open("rb") as handle:
                    size = handle.seek(0, 2)
                    handle.seek(max(0, size - LOG_TAIL_BYTES))
                    tail = handle.read().decode("utf-8", "replace")
        except OSError:
            continue
        logs.append((name, tail))
    return logs


@router.get("/runs/{run_id}")
def run_page(request: Request, run_id: str) -> Response:
    import yaml
    from fastapi import HTTPException

    store: Store = request.app.state.store
    try:
        run = load_run(request, run_id)
    except HTTPException as exc:
        return not_found(request, str(exc.detail))
    artifacts = store.list_artifacts(run.id)
    names = [a.name for a in artifacts]
    children = store.search_runs(f"parent_id = '{run.id}'", limit=200)
    versions = [
        version
        for model in store.list_models()
        for version in store.list_model_versions(model.name)
        if version.run_id == run.id
    ]
    stages = _read_json(store, run.id, "stages.json") if "stages.json" in names else None
    recipe = yaml.safe_dump(run.recipe, sort_keys=False, allow_unicode=True) if run.recipe else ""
    finals = {k: v for k, v in sorted(run.metrics.items()) if _family(k) is None}
    latest = {k: v for k, v in sorted(run.metrics.items()) if _family(k) is not None}
    return render(
        request,
        "run.html",
        run=run,
        recipe=recipe,
        children=children,
        versions=versions,
        stages=(stages or {}).get("stages", []) if isinstance(stages, dict) else [],
        reports=[name for name in REPORTS if name in names],
        artifacts=artifacts,
        logs=_logs(store, run.id, names),
        finals=finals,
        latest=latest,
    )


def _artifact_file(request: Request, run_id: str, name: str) -> Any:
    """The artifact's path after validating the run id and the name (404 otherwise)."""
    from fastapi import HTTPException

    run = load_run(request, run_id)
    store: Store = request.app.state.store
    try:
        path = store.artifact_path(run.id, validate_artifact_name(name))
    except DanluError as exc:
        raise HTTPException(404, str(exc)) from None
    if not path.is_file():
        raise HTTPException(404, f"Run {run.id} has no artifact {name!r}.")
    return path


@router.get("/runs/{run_id}/report/{name}")
def run_report(request: Request, run_id: str, name: str) -> Response:
    from fastapi import HTTPException

    if name not in REPORTS:
        raise HTTPException(404, f"No report {name!r}: reports are {', '.join(REPORTS)}.")
    path = _artifact_file(request, run_id, name)
    headers = {"Content-Security-Policy": REPORT_CSP, "X-Frame-Options": "SAMEORIGIN"}
    if is_encrypted(path):  # decrypted here; the key never leaves the server
        return Response(read_bytes(path), media_type="text/html; charset=utf-8", headers=headers)
    return FileResponse(path, media_type="text/html; charset=utf-8", headers=headers)


@router.get("/runs/{run_id}/artifacts/{name:path}")
def run_artifact(request: Request, run_id: str, name: str) -> Response:
    path = _artifact_file(request, run_id, name)
    if is_encrypted(path):  # the download is the plaintext, as it was logged
        return Response(
            read_bytes(path),
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{path.name}"'},
        )
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=path.name,
        content_disposition_type="attachment",
    )
