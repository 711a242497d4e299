"""The trials bar of ``danlu tune``: finished trials out of the budget, the best value so far and
the pruned count, with the running trial's epochs under it; one plain line per trial off a terminal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from danlu.cli._runs import number

if TYPE_CHECKING:
    import optuna

    from danlu.train import Callback

__all__ = ["FINISHED", "TrialProgress"]

#: Optuna trial states that count as finished (a running or waiting trial does not).
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


class TrialProgress:
    """Trials finished out of the budget, the best value so far and the pruned count: a Rich bar
    on a terminal, one plain line per finished trial otherwise (logs and CI stay clean).

    Called by ``danlu.tune.tune`` with the study and each trial as it finishes.
    """

    def __init__(self, console: Console, metric: str, budget: int | None) -> None:
        self.console = console
        self.metric = metric
        self.budget = budget
        self.progress: Progress | None = None
        self._task: Any = None
        self._epochs: TaskID | None = None
        if console.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]{task.description:>7}"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}", markup=False),  # metric names are stored text
                console=console,
                transient=False,
            )
            self._task = self.progress.add_task("trials", total=budget, info="")

    def start(self, done: int) -> None:
        """Show the bar, ``done`` trials already finished (a resumed study)."""
        if self.progress is not None:
            self.progress.update(self._task, completed=done)
            self.progress.start()

    def epoch_callback(self) -> Callback:
        """An engine callback showing the running trial's epochs under the trials bar."""
        assert self.progress is not None
        self._epochs = self.progress.add_task("epochs", total=None, info="", visible=False)
        return _epoch_row(self.progress, self._epochs)

    def stop(self) -> None:
        if self.progress is not None:
            self._hide_epochs()
            self.progress.stop()

    def _hide_epochs(self) -> None:
        # a pruned trial stops inside an epoch: its row would stay behind, half full
        if self.progress is not None and self._epochs is not None:
            self.progress.update(self._epochs, visible=False)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # what was known when this trial finished: parallel workers may have finished more since
        end = trial.datetime_complete
        trials = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.number == trial.number
            or (end is not None and t.datetime_complete is not None and t.datetime_complete <= end)
        ]
        states = [t.state.name for t in trials]
        finished = sum(states.count(s) for s in FINISHED)
        pruned = states.count("PRUNED")
        complete = [t.value for t in trials if t.state.name == "COMPLETE" and t.value is not None]
        best = None
        if complete:
            best = (max if study.direction.name == "MAXIMIZE" else min)(complete)
        best_text = f"best {self.metric} {number(best)}" if best is not None else "no best yet"
        if self.progress is not None:
            done = min(finished, self.budget) if self.budget else finished
            self._hide_epochs()
            self.progress.update(self._task, completed=done, info=f"{best_text} · {pruned} pruned")
            return
        state = trial.state.name.lower().replace("fail", "failed")
        value = ""
        if trial.value is not None:  # a pruned trial keeps its last reported value
            last = "last " if state == "pruned" else ""
            value = f" ({last}{self.metric} {number(trial.value)})"
        self.console.print(
            Text(
                f"trial {trial.number} {state}{value} · {finished}/{self.budget or '?'} finished "
                f"· {best_text} · {pruned} pruned"
            ),
            soft_wrap=True,
        )


def _epoch_row(progress: Progress, task: TaskID) -> Callback:
    """An engine callback that shows the running trial's epochs as a second row of the trials
    bar. Not ``RichProgress``: older rich refuses a second live display, and a pruned trial
    never reaches ``on_fit_end``, where that bar takes itself down."""
    from danlu.cli._progress import format_metrics
    from danlu.train import Callback, Trainer

    class EpochRow(Callback):
        def on_fit_start(self, trainer: Trainer) -> None:
            progress.reset(
                task,
                total=trainer.config.epochs,
                completed=trainer.epoch,
                info="",
                visible=True,
            )

        def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
            progress.update(task, completed=epoch, info=format_metrics(metrics))

    return EpochRow()
