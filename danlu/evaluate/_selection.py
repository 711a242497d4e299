"""The report's "Model selection" section for ``model: {type: auto}``: every candidate's
validation and test headline metric and training time, and which one ships."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from danlu.evaluate._context import Section

if TYPE_CHECKING:
    from danlu.tasks import Task

__all__ = ["model_selection_section"]


def _describe(kind: str, options: dict[str, Any]) -> str:
    """``gbdt (lightgbm)``, ``mlp [128, 64]``: a candidate in a few words."""
    if kind == "gbdt":
        return f"gbdt ({options.get('library', 'lightgbm')})"
    if kind == "mlp" and options.get("hidden") is not None:
        return f"mlp {options['hidden']}"
    return kind


def model_selection_section(selection: dict[str, Any], task: Task) -> Section:
    """The section from the run's ``model_selection`` (``danlu.train``'s auto selection).

    Example:
        >>> # model_selection_section(result.details["model_selection"], result.task).summary
        'shipped gbdt (lightgbm): validation accuracy 0.965 against 0.947 for mlp [128, 64]'
    """
    label = task.headline_label
    rows = []
    for row in selection["candidates"]:
        rows.append(
            {
                "candidate": _describe(row["type"], row.get("options") or {}),
                f"validation {label}": row["validation"],
                f"test {label}": row["test"],
                "training seconds": row["seconds"],
                "kept epoch / round": row["best_epoch"],
                "run": row["run_id"],
                "shipped": "yes" if row["candidate"] == selection["winner"] else "",
            }
        )
    winner = selection["candidates"][selection["winner"] - 1]
    others = [r for r in selection["candidates"] if r is not winner and r["validation"] is not None]
    name = _describe(winner["type"], winner.get("options") or {})
    summary = f"shipped {name}: validation {label} {winner['validation']:.3g}"
    if others:
        runner = max(
            others, key=lambda r: r["validation"] * (1 if selection["mode"] == "max" else -1)
        )
        summary += (
            f" against {runner['validation']:.3g} for "
            f"{_describe(runner['type'], runner.get('options') or {})}"
        )
    return Section(
        "model_selection",
        "Model selection",
        data={"metric": selection["metric"], "candidates": rows},
        summary=summary,
        notes=[
            f"model.type auto trained {len(rows)} candidates on the same prepared data (each a "
            f"child run) and shipped the best {label} on the validation split, at the epoch "
            "(boosting round) each candidate kept; the test split took no part in the choice. "
            "The rest of this report describes the shipped model.",
        ],
    )
