"""The studies pages: every tuning study, and one study's optimisation history, parameter
importance, parallel coordinates and trials.

A study lives in the store as runs (this layer reads no Optuna table): the study's run (stage
``tune``, tag ``tune.study``, its recipe's ``tune:`` block) and one child run per trial (stage
``tune-trial``, tag ``tune.trial`` = the trial's number, status ``pruned`` for a pruned trial).
A trial's objective is the tuned metric at the epoch its model ends with (the run's
``best_epoch`` metric), as ``danlu tune`` scores it; a pruned or unfinished trial has none.

Parameter importance here is a quick estimate computed from the trials alone: for each
parameter, the share of the variance of the objective's *ranks* that the parameter explains on
its own over the complete trials — Spearman's ρ² for a numeric parameter, the correlation ratio
η² (between-group variance of the ranks grouped by value) for a categorical one. Both lie in
[0, 1]; neither sees interactions (``danlu studies show`` reports Optuna's fANOVA).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Request

from danlu.ui._app import render

if TYPE_CHECKING:
    from fastapi.responses import Response

    from danlu.store import Run, Store

__all__ = ["param_importance", "router", "study_data"]

router = APIRouter()

MAX_STUDIES = 500
MAX_TRIALS = 5000
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][\w.+-]{0,199}$")
#: metrics a smaller value of which is better (the rule ``tune.direction: auto`` follows)
_SMALLER_IS_BETTER = frozenset({"loss", "mae", "rmse", "mse", "log_loss", "hamming_loss"})


@router.get("/studies")
def studies_page(request: Request) -> Response:
    store: Store = request.app.state.store
    rows = []
    for run in store.search_runs("stage = 'tune'", order_by=["-created_at"], limit=MAX_STUDIES):
        tune = (run.recipe or {}).get("tune") or {}
        rows.append(
            {
                "name": run.tags.get("tune.study") or run.name,
                "run": run,
                "metric": tune.get("metric"),
                "budget": tune.get("trials"),
                "sampler": run.tags.get("tune.sampler"),
                "pruner": run.tags.get("tune.pruner"),
                "best": run.metrics.get("best_value"),
                "complete": run.metrics.get("trials_complete"),
                "pruned": run.metrics.get("trials_pruned"),
            }
        )
        if run.status == "running" or rows[-1]["complete"] is None:
            # the counts are logged when a session ends: count the trial runs so far
            trials = store.search_runs(
                f"parent_id = '{run.id}' and stage = 'tune-trial'", limit=MAX_TRIALS
            )
            rows[-1]["complete"] = sum(t.status == "finished" for t in trials)
            rows[-1]["pruned"] = sum(t.status == "pruned" for t in trials)
    return render(request, "studies.html", studies=rows)


@router.get("/studies/{name}")
def study_page(request: Request, name: str) -> Response:
    store: Store = request.app.state.store
    try:
        data = study_data(store, name)
    except HTTPException as exc:
        return render(request, "not_found.html", status=exc.status_code, message=str(exc.detail))
    chart = {
        "metric": data["metric"],
        "direction": data["direction"],
        "history": data["history"],
        "importance": data["importance"],
        "parallel": data["parallel"],
    }
    return render(request, "study.html", **data, chart=json.dumps(chart))


def _study_run(store: Store, name: str) -> Run:
    if not _STUDY_NAME.match(name):
        raise HTTPException(404, f"There is no study {name!r}.")
    found = store.search_runs(
        f"stage = 'tune' and tags.tune.study = '{name}'", order_by=["-created_at"], limit=1
    )
    if not found:
        raise HTTPException(404, f"There is no study {name!r}. See the list at /studies.")
    return found[0]


def _direction(tune: dict[str, Any], metric: str) -> str:
    direction = str(tune.get("direction") or "auto")
    if direction in ("maximize", "minimize"):
        return direction
    base = metric.split("_", 1)[1] if metric.startswith(("val_", "train_", "test_")) else metric
    return "minimize" if base in _SMALLER_IS_BETTER else "maximize"


def _space_keys(space: dict[str, Any]) -> dict[str, str]:
    """Each searched key path -> its axis kind: ``value``, ``log`` or ``category`` (the keys of a
    conditional choice's sub-spaces included)."""
    kinds: dict[str, str] = {}
    for key, dist in space.items():
        if not isinstance(dist, dict):
            continue
        choice = dist.get("choice")
        if choice is not None:
            kinds[key] = "category"
            if isinstance(choice, dict):
                for sub in choice.values():
                    if isinstance(sub, dict):
                        kinds.update({k: v for k, v in _space_keys(sub).items() if k not in kinds})
        elif dist.get("loguniform") is not None or (
            dist.get("int") is not None and dist.get("log")
        ):
            kinds[key] = "log"
        else:
            kinds[key] = "value"
    return kinds


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _shown(text: str | None) -> str:
    """A parameter's value for the table: numbers to 4 significant digits."""
    if text is None:
        return "-"
    value = _number(text)
    if value is None or text.lower() in ("true", "false") or value == int(value):
        return text
    return f"{value:.4g}"


def _objective(store: Store, run: Run, metric: str) -> tuple[float | None, float | None]:
    """(objective, last reported value) of a trial's run."""
    points = store.metric_history(run.id, metric)
    if not points:
        return None, None
    last = points[-1].value
    if run.status != "finished":
        return None, last
    best_epoch = run.metrics.get("best_epoch")
    chosen = points[-1]
    if best_epoch is not None:
        for point in points:
            epoch = point.epoch if point.epoch is not None else point.step
            if epoch == int(best_epoch):
                chosen = point
    value = chosen.value
    return (value if math.isfinite(value) else None), last


def study_data(store: Store, name: str) -> dict[str, Any]:
    """Everything the study page shows, from the store's runs (404 for an unknown study)."""
    run = _study_run(store, name)
    tune = (run.recipe or {}).get("tune") or {}
    metric = str(tune.get("metric") or "val_loss")
    direction = _direction(tune, metric)
    kinds = _space_keys(tune.get("space") or {})
    children = store.search_runs(
        f"parent_id = '{run.id}' and stage = 'tune-trial'",
        order_by=["created_at"],
        limit=MAX_TRIALS,
    )
    trials: list[dict[str, Any]] = []
    for child in children:
        number = child.tags.get("tune.trial", "")
        objective, last = _objective(store, child, metric)
        trials.append(
            {
                "number": int(number) if number.isdigit() else None,
                "run": child,
                "status": child.status,
                "value": objective,
                "last": last,
                "epochs": child.metrics.get("epochs_run"),
                "params": {k: child.params.get(k) for k in kinds},
                "shown": {k: _shown(child.params.get(k)) for k in kinds},
            }
        )
    trials.sort(key=lambda t: (t["number"] is None, t["number"] or 0, t["run"].created_at))
    maximize = direction == "maximize"
    history: list[dict[str, Any]] = []
    best: float | None = None
    for t in trials:
        if t["value"] is not None and (
            best is None or (t["value"] > best if maximize else t["value"] < best)
        ):
            best = t["value"]
        history.append(
            {
                "trial": t["number"],
                "state": t["status"],
                "value": t["value"],
                "last": t["last"],
                "best": best,
            }
        )
    complete = [t for t in trials if t["value"] is not None]
    best_trial = None
    if complete:
        pick = max if maximize else min
        best_trial = pick(complete, key=lambda t: t["value"])["number"]
    importance = param_importance(
        [t["params"] for t in complete], [t["value"] for t in complete], kinds
    )
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    return {
        "name": run.tags.get("tune.study") or run.name,
        "study_run": run,
        "metric": metric,
        "direction": direction,
        "kinds": kinds,
        "trials": trials,
        "counts": counts,
        "best_trial": best_trial,
        "best_value": best,
        "history": history,
        "importance": importance,
        "parallel": _parallel(complete, kinds, metric),
    }


def _parallel(trials: Sequence[dict[str, Any]], kinds: dict[str, str], metric: str) -> dict:
    """ECharts parallel-coordinates axes and lines (one per complete trial)."""
    axes: list[dict[str, Any]] = []
    for i, (key, kind) in enumerate(kinds.items()):
        axis: dict[str, Any] = {"dim": i, "name": key}
        values = [t["params"].get(key) for t in trials]
        numeric = [_number(v) for v in values]
        if kind == "category" or any(v is None for v in numeric):
            axis["type"] = "category"
            axis["data"] = sorted({str(v) for v in values}, key=lambda s: (_number(s) is None, s))
        elif kind == "log" and all(v is not None and v > 0 for v in numeric):
            axis["type"] = "log"
        axes.append(axis)
    axes.append({"dim": len(kinds), "name": metric})
    lines: list[dict[str, Any]] = []
    for t in trials:
        row: list[Any] = []
        for axis, key in zip(axes, kinds, strict=False):
            raw = t["params"].get(key)
            row.append(str(raw) if axis.get("type") == "category" else _number(raw))
        row.append(t["value"])
        lines.append({"trial": t["number"], "value": row})
    return {"axes": axes, "lines": lines}


def _ranks(values: Sequence[float]) -> list[float]:
    """Average ranks (ties share the mean of their positions)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0
        i = j + 1
    return ranks


def _variance(xs: Sequence[float]) -> float:
    mean = sum(xs) / len(xs)
    return sum((x - mean) ** 2 for x in xs) / len(xs)


def param_importance(
    params: Sequence[dict[str, str | None]],
    objective: Sequence[float],
    kinds: dict[str, str],
) -> dict[str, float]:
    """Each parameter's share of the variance of the objective's ranks, alone (0..1): Spearman's
    ρ² for numeric parameters, η² of the ranks grouped by value for categorical ones. Fewer than
    three trials, or an objective that never changes: empty.

    Example:
        >>> param_importance(
        ...     [{"lr": "0.1", "act": "relu"}, {"lr": "0.2", "act": "relu"}, {"lr": "0.3", "act": "tanh"}],
        ...     [1.0, 2.0, 3.0],
        ...     {"lr": "log", "act": "category"},
        ... )
        {'lr': 1.0, 'act': 0.75}
    """
    if len(objective) < 3:
        return {}
    y = _ranks(objective)
    total = _variance(y)
    if total == 0:
        return {}
    scores: dict[str, float] = {}
    for key, kind in kinds.items():
        raw = [p.get(key) for p in params]
        numbers = [_number(v) for v in raw]
        if kind != "category" and all(v is not None for v in numbers):
            x = _ranks([float(v) for v in numbers if v is not None])
            vx = _variance(x)
            if vx == 0:
                scores[key] = 0.0
                continue
            mx, my = sum(x) / len(x), sum(y) / len(y)
            cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / len(x)
            scores[key] = round(cov * cov / (vx * total), 4)
        else:
            groups: dict[str, list[float]] = {}
            for value, rank in zip(raw, y, strict=True):
                groups.setdefault(str(value), []).append(rank)
            mean = sum(y) / len(y)
            between = sum(len(g) * (sum(g) / len(g) - mean) ** 2 for g in groups.values()) / len(y)
            scores[key] = round(between / total, 4)
    return dict(sorted(scores.items(), key=lambda kv: -kv[1]))
