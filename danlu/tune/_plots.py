"""The study's figures as SVG and PNG (matplotlib, headless): optimisation history and
parameter importance, drawn from :func:`~danlu.tune.study_summary` for the report and dashboard."""

from __future__ import annotations

import io
from typing import Any

__all__ = ["study_plots"]


def _save(fig: Any) -> dict[str, bytes]:
    out = {}
    for fmt in ("svg", "png"):
        buffer = io.BytesIO()
        fig.savefig(
            buffer,
            format=fmt,
            dpi=110,
            bbox_inches="tight",
            metadata={"Date": None} if fmt == "svg" else None,
        )
        out[fmt] = buffer.getvalue()
    return out


def study_plots(summary: dict[str, Any]) -> dict[str, bytes]:
    """``history.svg/png`` (each trial's value and the best so far against epochs spent) and
    ``importance.svg/png`` (fANOVA, when there are enough trials). File name -> bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: dict[str, bytes] = {}
    history = summary.get("history") or []
    metric = summary.get("metric") or "value"
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    try:
        # a pruned trial has a value too (Optuna keeps its last reported one): drawn apart
        done = [h for h in history if h["state"] == "complete" and h["value"] is not None]
        pruned = [h for h in history if h["state"] == "pruned" and h.get("last") is not None]
        if done:
            ax.scatter(
                [h["epochs_spent"] for h in done],
                [h["value"] for h in done],
                s=18,
                label="complete trial",
                color="#1f77b4",
            )
        if pruned:
            ax.scatter(
                [h["epochs_spent"] for h in pruned],
                [h["last"] for h in pruned],
                s=14,
                marker="x",
                color="#999999",
                label="pruned trial (last value)",
            )
        best = [(h["epochs_spent"], h["best"]) for h in history if h["best"] is not None]
        if best:
            ax.step(
                [b[0] for b in best],
                [b[1] for b in best],
                where="post",
                color="#d62728",
                label="best so far",
            )
        ax.set_xlabel("epochs spent (all trials)")
        ax.set_ylabel(metric)
        ax.set_title(f"{summary.get('study')}: optimisation history")
        if done or pruned or best:
            ax.legend(loc="best", fontsize=8)
        for fmt, data in _save(fig).items():
            files[f"history.{fmt}"] = data
    finally:
        plt.close(fig)
    importance = summary.get("importance") or {}
    if importance:
        names = list(importance)[::-1]
        fig, ax = plt.subplots(figsize=(6.4, 0.5 + 0.35 * len(names)))
        try:
            ax.barh(names, [importance[n] for n in names], color="#2ca02c")
            ax.set_xlabel("importance (fANOVA)")
            ax.set_title(f"{summary.get('study')}: parameter importance")
            for fmt, data in _save(fig).items():
                files[f"importance.{fmt}"] = data
        finally:
            plt.close(fig)
    return files
