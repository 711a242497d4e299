"""The compare page: 2 to 10 runs side by side — their curves overlaid (one chart per metric,
one series per run, drawn by ``static/compare.js`` from each run's metrics JSON), the params
that differ, the final metrics, and parallel coordinates over numeric params and metrics."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Request

from danlu.ui._app import render
from danlu.ui._runs import _BOOKKEEPING, _family, load_run, not_found

if TYPE_CHECKING:
    from fastapi.responses import Response

    from danlu.store import Run

router = APIRouter()

MIN_RUNS, MAX_RUNS = 2, 10
AXIS_METRICS = 8


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def params_diff(runs: list[Run]) -> tuple[list[tuple[str, list[str]]], list[tuple[str, list[str]]]]:
    """(params whose values differ among the runs, params they share), each as
    ``(key, [value per run])``; a param a run lacks shows as ``-``."""
    keys = sorted({k for run in runs for k in run.params})
    differ: list[tuple[str, list[str]]] = []
    same: list[tuple[str, list[str]]] = []
    for key in keys:
        values = [run.params.get(key, "-") for run in runs]
        (differ if len(set(values)) > 1 else same).append((key, values))
    return differ, same


def final_metrics(runs: list[Run]) -> list[tuple[str, list[float | None]]]:
    """The metrics any of the runs has (model metrics first), one value per run."""
    keys = {k for run in runs for k in run.metrics}

    def rank(key: str) -> tuple[int, str]:
        bookkeeping = key.startswith(_BOOKKEEPING) or key.endswith("_seconds")
        return (int(bookkeeping) - int(key.startswith(("test_", "val_"))), key)

    return [(key, [run.metrics.get(key) for run in runs]) for key in sorted(keys, key=rank)]


def parallel(runs: list[Run], differ: list[tuple[str, list[str]]]) -> dict[str, Any]:
    """The axes and lines of the parallel-coordinates chart: params that are numbers for every
    run and differ among them, then the model metrics every run has (final values)."""
    axes: list[str] = []
    columns: list[list[float | None]] = []
    for key, values in differ:
        numbers = [_number(v) for v in values]
        if all(n is not None for n in numbers):
            axes.append(f"params.{key}")
            columns.append(numbers)
    shared = set.intersection(*(set(run.metrics) for run in runs))
    metric_keys = sorted(
        k for k in shared if k.startswith(("test_", "val_")) and _family(k) != "Losses"
    )[:AXIS_METRICS]
    for key in metric_keys:
        axes.append(f"metrics.{key}")
        columns.append([_clean(run.metrics[key]) for run in runs])
    lines = [
        {"id": run.id, "name": run.name, "values": [column[i] for column in columns]}
        for i, run in enumerate(runs)
    ]
    return {"axes": axes, "lines": lines}


def _clean(value: float) -> float | None:
    return value if math.isfinite(value) else None


@router.get("/compare")
def compare_page(request: Request) -> Response:
    ids: list[str] = []
    for item in request.query_params.getlist("runs"):
        ids.extend(part.strip() for part in item.split(",") if part.strip())
    ids = list(dict.fromkeys(ids))  # each run once, in the order given
    if not ids:
        return render(request, "compare.html", runs=[], error=None)
    if not MIN_RUNS <= len(ids) <= MAX_RUNS:
        return render(
            request,
            "compare.html",
            status=400,
            runs=[],
            error=f"Compare takes {MIN_RUNS} to {MAX_RUNS} runs; {len(ids)} were given. "
            "Select them with the checkboxes on the runs page.",
        )
    try:
        runs = [load_run(request, run_id) for run_id in ids]
    except HTTPException as exc:
        return not_found(request, str(exc.detail))
    differ, same = params_diff(runs)
    return render(
        request,
        "compare.html",
        runs=runs,
        error=None,
        differ=differ,
        same=same,
        finals=final_metrics(runs),
        parallel=json.dumps(parallel(runs, differ)),
        run_list=json.dumps([{"id": run.id, "name": run.name} for run in runs]),
    )
