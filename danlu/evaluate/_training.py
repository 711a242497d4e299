"""The training section: how the run got here, from its per-epoch history.

Loss per epoch on the training and validation splits, and the task's headline metric on the
validation split (the engine records the training loss per epoch, not a training-split metric:
measuring one would cost a second pass over the training rows every epoch).
"""

from __future__ import annotations

import math
from typing import Any

from danlu.evaluate._context import EvalData, Section

__all__ = ["training_section"]


def _series(history: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of one history column, skipping epochs without a finite value."""
    epochs, values = [], []
    for i, row in enumerate(history, start=1):
        value = row.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            epochs.append(float(row.get("epoch", i)))
            values.append(float(value))
    return epochs, values


_SPLITS = (("training", "-", "tab:blue"), ("validation", "--", "tab:orange"))


def _plot(
    ax: Any, history: list[dict[str, float]], keys: tuple[str, str], best: float | None
) -> None:
    """One panel: the training and validation series of ``keys``, the best epoch marked."""
    for key, (name, style, colour) in zip(keys, _SPLITS, strict=True):
        epochs, values = _series(history, key)
        if values:
            marker = "." if len(values) < 30 else None
            ax.plot(epochs, values, style, color=colour, marker=marker, label=name)
    if best is not None:
        ax.axvline(best, color="grey", linestyle=":", linewidth=1, label="lowest validation loss")
    ax.legend(fontsize=8)


def _curves_figure(
    history: list[dict[str, float]], metric: str, label: str, best: float | None, unit: str
) -> str:
    from danlu.evaluate._plots import figure, svg

    has_metric = bool(_series(history, f"val_{metric}")[1] or _series(history, metric)[1])
    fig, axes = figure(8.4 if has_metric else 4.6, 3.2, ncols=2 if has_metric else 1)
    loss_ax = axes[0] if has_metric else axes
    _plot(loss_ax, history, ("train_loss", "val_loss"), best)
    loss_ax.set(xlabel=unit, ylabel="loss", title=f"Loss per {unit}")
    if has_metric:
        _plot(axes[1], history, (metric, f"val_{metric}"), best)
        title = f"{label[0].upper()}{label[1:]} per {unit}"
        axes[1].set(xlabel=unit, ylabel=label, title=title)
    return svg(fig)


def training_section(data: EvalData) -> Section:
    """Training curves and where validation loss was lowest, from ``data.history``.

    Example:
        >>> # section = training_section(EvalData.from_prepared(model, task, prepared,
        >>> #                                                   history=result.history))
    """
    history = data.history
    section = Section("training", "Training")
    if not history:
        section.data = {"skipped": "the training run's history is not available"}
        section.notes.append("Skipped: the run's metrics per epoch are not available.")
        return section
    metric = data.task.headline
    label = data.task.headline_label or metric.replace("_", " ")
    # trees are grown by a boosting library: each history row is a boosting round, not an epoch
    unit = "boosting round" if not getattr(data.model, "differentiable", True) else "epoch"
    epochs = len(history)
    last = history[-1]
    result: dict[str, Any] = {"epochs": epochs, "unit": unit, "final": dict(last)}
    val_epochs, val_loss = _series(history, "val_loss")
    best_epoch = None
    if val_loss:
        best = min(range(len(val_loss)), key=val_loss.__getitem__)
        best_epoch = val_epochs[best]
        result["lowest_val_loss"] = {"epoch": int(best_epoch), "value": val_loss[best]}
        section.summary = (
            f"trained {epochs} {unit}{'s' * (epochs != 1)}, lowest validation loss {val_loss[best]:.4g} at {unit} "
            f"{int(val_epochs[best])}"
        )
        if best < len(val_loss) - 1 and val_loss[-1] > val_loss[best] * 1.1:
            section.notes.append(
                f"Validation loss rose from {val_loss[best]:.4g} ({unit} "
                f"{int(val_epochs[best])}) to {val_loss[-1]:.4g} ({unit} "
                f"{int(val_epochs[-1])}): the model over-fitted after its best {unit}; "
                + (
                    "the model keeps the trees up to that round."
                    if unit != "epoch"
                    else "early stopping (train.early_stopping) keeps the best one."
                )
            )
    else:
        _, train_loss = _series(history, "train_loss")
        final = f", final training loss {train_loss[-1]:.4g}" if train_loss else ""
        plural = "s" * (epochs != 1)
        section.summary = f"trained {epochs} {unit}{plural} (no validation split){final}"
    result["history"] = [dict(row) for row in history]
    section.data = result
    section.figures[f"Loss and validation metric per {unit}"] = _curves_figure(
        history, metric, label, best_epoch, unit
    )
    if unit == "epoch":
        section.notes.append(
            "From the run's history: the training loss is the mean over each epoch's batches "
            f"(with dropout and augmentation on); the validation loss and {label} are measured "
            "after each epoch."
        )
    else:
        section.notes.append(
            "From the run's history: the training loss (on a seeded sample of training rows), "
            f"the validation loss and {label} of the trees after each boosting round."
        )
    return section
