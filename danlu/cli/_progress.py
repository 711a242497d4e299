"""Progress reporting for ``danlu run``: a Rich bar on a terminal, one line per epoch otherwise."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from danlu.train import Callback

if TYPE_CHECKING:
    from danlu.train import Trainer

__all__ = ["PlainProgress", "RichProgress", "format_metrics"]

_SHOWN = ("train_loss", "val_loss", "val_accuracy", "val_r2", "val_rmse")


def format_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k}={metrics[k]:.4g}" for k in _SHOWN if k in metrics)


class RichProgress(Callback):
    """An epoch bar and a batch bar with the live loss."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Progress | None = None
        self._epochs: Any = None
        self._batches: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description:>7}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        cfg = trainer.config
        self._epochs = self._progress.add_task(
            "epochs", total=cfg.epochs, completed=trainer.epoch, info=""
        )
        self._batches = self._progress.add_task("batches", total=None, info="")

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        assert self._progress is not None
        self._progress.reset(self._batches, total=trainer.num_batches, info="")
        self._seen = 0

    def on_batch_end(self, trainer: Trainer, batch: int, loss: torch.Tensor) -> None:
        assert self._progress is not None
        self._seen = batch + 1
        if batch % 10 == 0:  # .item() and a redraw request every 10 batches keeps this cheap
            self._progress.update(
                self._batches, completed=self._seen, info=f"loss={loss.item():.4g}"
            )

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        assert self._progress is not None
        self._progress.update(self._batches, total=self._seen, completed=self._seen)
        self._progress.update(self._epochs, completed=epoch, info=format_metrics(metrics))

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._progress is not None:
            self._progress.stop()


class PlainProgress(Callback):
    """One plain line per epoch, for logs and CI."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        self.console.print(
            f"epoch {epoch}/{trainer.config.epochs}  {format_metrics(metrics)}",
            highlight=False,
            soft_wrap=True,
        )
