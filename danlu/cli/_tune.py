"""``danlu tune`` and ``danlu studies``: search a recipe's ``tune:`` space, then look at what the
study found.

Thin, like the other commands: ``danlu.tune`` does the work; this module draws a trials bar
while it runs and renders its summaries with Rich (or as JSON with ``--json``). torch and optuna
load inside the commands, so ``danlu --help`` stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Column, Table
from rich.text import Text

from danlu.cli._console import err, out, setup_logging, state
from danlu.cli._options import JsonOption, QuietOption, SetOption, registered_line
from danlu.cli._runs import (
    cell,
    human_duration,
    number,
    open_store,
    print_details,
    print_json,
    print_table,
)
from danlu.cli._tune_progress import FINISHED, TrialProgress
from danlu.errors import ConfigError, DanluError, NotFoundError

if TYPE_CHECKING:
    from danlu.store import SqlStore
    from danlu.train import Callback
    from danlu.tune import TuneResult

__all__ = ["studies_app", "tune_command"]

studies_app = typer.Typer(
    help="Tuning studies: list them, show what one found, draw its plots.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_STATE_STYLE = {"complete": "green", "pruned": "dim", "failed": "red", "running": "yellow"}

StudyArg = Annotated[str, typer.Argument(help="The study's name (see `danlu studies ls`).")]


def _state(state: str) -> Text:
    return Text(state, style=_STATE_STYLE.get(state, ""))


def _value(value: Any) -> str:
    """A parameter value, short: floats to 3 significant digits."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """``train.optimizer.lr`` -> ``lr``, unless two keys would end the same way."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: s if last.count(s) == 1 else k for k, s in zip(keys, last, strict=True)}


def _finished_before(name: str, store: SqlStore) -> int | None:
    """Finished trials of study ``name`` before this session (None: a new study)."""
    from danlu.tune import load_study

    try:
        study = load_study(name, store)
    except NotFoundError:
        return None
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.name in FINISHED)


# -- danlu tune ----------------------------------------------------------------------------------
def tune_command(
    recipe: Annotated[
        Path | None,
        typer.Argument(
            help="Path to a YAML recipe with a tune: block (starts or resumes its study).",
            metavar="RECIPE",
            show_default=False,
        ),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            "-j",
            help="Worker processes on this machine (default 1: trials run in this process).",
            show_default=False,
        ),
    ] = None,
    study: Annotated[
        str | None,
        typer.Option(
            "--study",
            help="The study's name (default: tune.study or the recipe's name); an existing one is resumed.",
            metavar="NAME",
        ),
    ] = None,
    set_: SetOption = None,
    worker: Annotated[
        str | None,
        typer.Option(
            "--worker",
            help="Join this existing study as one more worker (any machine on the same database).",
            metavar="STUDY",
        ),
    ] = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Tune a recipe's hyperparameters with Optuna; record every trial; report (with
    evaluate:) and register (with register:) the best.

    Running the same recipe again resumes its study (a larger tune.trials adds trials).
    """
    setup_logging(bool(state.get("verbose")), quiet)
    from danlu.cli._access import open_checked

    open_checked("train", recipe, set_)  # an editor of the default project (docs/access.md)
    if worker is not None:
        if recipe is not None or study is not None or set_ or jobs is not None:
            raise ConfigError(
                "--worker STUDY joins a study that exists already, so it takes no RECIPE, "
                "--study, --set or --jobs. Give either RECIPE (with those options) or --worker STUDY."
            )
        _join(worker, quiet=quiet, as_json=as_json)
        return
    if recipe is None:
        raise ConfigError(
            "Give a RECIPE to start or resume its study (danlu tune RECIPE), or --worker STUDY to "
            "join a running study as one more worker."
        )
    _tune(recipe, set_ or [], jobs if jobs is not None else 1, study, quiet=quiet, as_json=as_json)


def _tune(
    path: Path, overrides: list[str], jobs: int, study: str | None, *, quiet: bool, as_json: bool
) -> None:
    from danlu.cli._evaluate import SectionProgress
    from danlu.config import load_recipe
    from danlu.pipeline import tune

    show = not quiet and not as_json
    with open_store() as store:
        progress: TrialProgress | None = None
        callbacks: list[Callback] = []
        if jobs >= 1:  # tune() explains a bad --jobs; read the recipe only for a good one
            recipe = load_recipe(path, overrides)
            if show and recipe.tune is not None:  # tune() explains a missing tune: block
                name = study or recipe.tune.study or recipe.name
                before = _finished_before(name, store)
                if before is not None:
                    err.print(
                        Text(
                            f"Resuming study {name}: {before} of {recipe.tune.trials or '?'} "
                            "trials finished."
                        ),
                        soft_wrap=True,
                    )
                progress = TrialProgress(err, recipe.tune.metric, recipe.tune.trials)
                if jobs == 1:
                    if progress.progress is not None:
                        callbacks.append(progress.epoch_callback())
                    else:
                        from danlu.cli._progress import PlainProgress

                        callbacks.append(PlainProgress(err))
                progress.start(before or 0)
        sections = SectionProgress(not show)  # the winner's trust report, section by section
        try:
            result = tune(
                path,
                overrides=overrides,
                jobs=jobs,
                study=study,
                store=store,
                callbacks=callbacks,
                on_trial=progress,
                on_section=sections,
            )
        except KeyboardInterrupt:
            if progress is not None:
                progress.stop()
            sections.close()
            err.print(
                "[yellow]Interrupted.[/] Run the same command again to resume the study: "
                "finished trials are kept, the interrupted one runs again."
            )
            raise typer.Exit(130) from None
        finally:
            if progress is not None:
                progress.stop()
            sections.close()
        previous = None
        if result.registered is None and result.best_trial is not None:
            previous = store.get_run(result.run_id).tags.get("registered")
    if as_json:
        print_json(_result_dict(result))
        return
    _print_result(result, previous)


def _result_dict(result: TuneResult) -> dict[str, Any]:
    return {
        "study": result.study,
        "run_id": result.run_id,
        "metric": result.metric,
        "direction": result.direction,
        "best_value": result.best_value,
        "best_params": result.best_params,
        "best_trial": result.best_trial,
        "best_run_id": result.best_run_id,
        "counts": result.counts,
        "epochs_spent": result.epochs_spent,
        "refit_run_id": result.refit_run_id,
        "registered": result.registered.ref if result.registered else None,
        "report": result.report.summary if result.report is not None else None,
        "report_run_id": result.report_run_id,
    }


def _print_result(result: TuneResult, previous: str | None) -> None:
    counts = result.counts
    out.print(
        Text.assemble(("study ", "bold"), (result.study, "bold"), f"  run {result.run_id}"),
        soft_wrap=True,
    )
    if result.best_value is None:
        out.print(
            Text(
                f"No trial completed, so there is no best {result.metric} and nothing was "
                "registered."
            ),
            soft_wrap=True,
        )
    else:
        out.print(
            Text.assemble(
                f"best {result.metric} ",
                (number(result.best_value), "bold green"),
                f" ({result.direction}) from trial {result.best_trial} · run {result.best_run_id}",
            ),
            soft_wrap=True,
        )
        table = Table("param", Column("value", overflow="fold"), title="best params")
        table.title_justify = "left"
        for key, value in result.best_params.items():
            table.add_row(cell(key), cell(_value(value)))
        print_table(table)
    out.print(
        f"trials: {counts.get('complete', 0)} complete, {counts.get('pruned', 0)} pruned, "
        f"{counts.get('failed', 0)} failed · {result.epochs_spent} epochs spent",
        highlight=False,
    )
    if result.refit_run_id is not None:
        out.print(Text(f"refit on train + validation: run {result.refit_run_id}"), soft_wrap=True)
    if result.report is not None:
        from danlu.cli._evaluate import print_summary

        print_summary(result.report.summary, result.report.flags, title="Trust report: ")
        out.print(
            Text(f"report: danlu report {result.report_run_id} (stored with that run)"),
            soft_wrap=True,
        )
    if result.registered is not None:
        mv = result.registered
        out.print(Text(registered_line(mv)), soft_wrap=True)
    elif previous is not None:
        out.print(
            Text(f"best trial unchanged: nothing new registered (still {previous})"),
            soft_wrap=True,
        )
    out.print(Text(f"details: danlu studies show {result.study}"), soft_wrap=True)


def _join(name: str, *, quiet: bool, as_json: bool) -> None:
    from danlu.tune import join_study

    if not quiet and not as_json:
        err.print(Text(f"Joining study {name} as one more worker…"), soft_wrap=True)
    with open_store() as store:
        try:
            ran = join_study(name, store=store)
        except KeyboardInterrupt:
            err.print(
                "[yellow]Interrupted.[/] The interrupted trial is queued again for the other workers."
            )
            raise typer.Exit(130) from None
    if as_json:
        print_json({"study": name, "trials_run": ran})
        return
    if ran == 0:
        out.print(
            Text(f"This worker ran no trial: study {name} has used its trial budget."),
            soft_wrap=True,
        )
    else:
        out.print(
            Text(f"This worker ran {ran} trial{'s' if ran != 1 else ''} of study {name}."),
            soft_wrap=True,
        )
    out.print(Text(f"details: danlu studies show {name}"), soft_wrap=True)


# -- danlu studies -------------------------------------------------------------------------------
@studies_app.command("ls")
def list_studies_command(as_json: JsonOption = False) -> None:
    """List the tuning studies with their trial counts, best value and run."""
    from danlu.tune import list_studies

    with open_store() as store:
        rows = list_studies(store)
    if as_json:
        print_json(rows)
        return
    if not rows:
        err.print("No studies yet. Start one with: danlu tune RECIPE")
        return
    table = Table(
        Column("study", overflow="fold"),
        "metric",
        "direction",
        Column("trials", justify="right"),
        Column("complete", justify="right"),
        Column("pruned", justify="right"),
        Column("failed", justify="right"),
        Column("running", justify="right"),
        Column("best", justify="right"),
        "status",
        Column("run id", no_wrap=True),
    )
    for r in rows:
        table.add_row(
            cell(r["study"]),
            cell(r["metric"]),
            r["direction"],
            str(r["trials"]),
            str(r["complete"]),
            str(r["pruned"]),
            str(r["failed"]),
            str(r["running"]),
            number(r["best_value"]),
            cell(r["status"]),
            cell(r["run_id"]),
        )
    print_table(table)


def _plots_dir(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"--plots needs a folder to write into, but '{path}' is a file. Give a folder "
            "(it is created when missing), e.g. --plots plots/."
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DanluError(
            f"Cannot create the folder '{path}' for the plots: {exc.strerror or exc}."
        ) from exc
    return path


def _write_plots(summary: dict[str, Any], folder: Path) -> list[Path]:
    from danlu.tune._plots import study_plots

    written = []
    for file, data in study_plots(summary).items():
        target = folder / file
        try:
            target.write_bytes(data)
        except OSError as exc:
            raise DanluError(
                f"Cannot write the plot '{target}': {exc.strerror or exc}. Check that the folder is writable."
            ) from exc
        written.append(target)
    return written


@studies_app.command("show")
def show_study(
    name: StudyArg,
    as_json: JsonOption = False,
    plots: Annotated[
        Path | None,
        typer.Option(
            "--plots",
            help="Also write the optimisation history and importance plots (SVG, PNG) into DIR.",
            metavar="DIR",
        ),
    ] = None,
) -> None:
    """What a study found: best value and params, importance, history and every trial."""
    from danlu.tune import load_study, study_summary

    folder = _plots_dir(plots) if plots is not None else None
    with open_store() as store:
        summary = study_summary(load_study(name, store))
    written = _write_plots(summary, folder) if folder is not None else []
    if as_json:
        print_json(summary)
        if written:
            err.print(Text(f"wrote {', '.join(str(p) for p in written)}"), soft_wrap=True)
        return
    _render_summary(summary)
    if folder is not None:
        out.print(Text(f"plots: {', '.join(str(p) for p in written)}"), soft_wrap=True)
    if summary["run_id"]:
        out.print(
            Text(
                "The study's run keeps the same plots (as of its last `danlu tune`) as "
                f"artifacts: danlu runs show {summary['run_id']}"
            ),
            soft_wrap=True,
        )


def _render_summary(summary: dict[str, Any]) -> None:
    counts, best, metric = summary["counts"], summary["best"], summary["metric"] or "value"
    print_details(
        "study",
        summary["study"],
        f"{metric} ({summary['direction']})",
        [
            ("run", cell(summary["run_id"])),
            ("sampler", cell(summary["sampler"])),
            ("pruner", cell(summary["pruner"])),
            (
                "trials",
                f"{sum(counts.values())} of {summary['budget'] or '?'}: "
                + ", ".join(f"{counts[k]} {k}" for k in ("complete", "pruned", "failed"))
                + "".join(f", {counts[k]} {k}" for k in ("running", "waiting") if counts.get(k)),
            ),
            ("epochs spent", str(summary["epochs_spent"])),
            (
                f"best {metric}",
                Text(number(best["value"]), style="bold green") if best else Text("-"),
            ),
            (
                "best trial",
                cell(f"{best['number']} (run {best['run_id']})") if best else None,
            ),
        ],
    )
    if best:
        table = Table("param", Column("value", overflow="fold"), title="best params")
        table.title_justify = "left"
        for key, value in (best.get("values") or best["params"]).items():
            table.add_row(cell(key), cell(_value(value)))
        print_table(table)
    _render_importance(summary["importance"])
    _render_history(summary["history"], metric)
    _render_trials(summary["trials"])


def _render_importance(importance: dict[str, float]) -> None:
    if not importance:
        out.print(
            "[dim]parameter importance: needs at least two complete trials with varied params[/]"
        )
        return
    ranked = sorted(importance.items(), key=lambda kv: kv[1], reverse=True)
    top = ranked[0][1] or 1.0
    table = Table(
        "param", Column("importance", justify="right"), "", title="parameter importance (fANOVA)"
    )
    table.title_justify = "left"
    for key, value in ranked:
        width = int(round(20 * value / top)) if math.isfinite(value) and top > 0 else 0
        table.add_row(cell(key), f"{value:.3f}", Text("█" * width, style="green"))
    print_table(table)


def _render_history(history: list[dict[str, Any]], metric: str) -> None:
    """Each improvement of the best value, against the epochs all trials had spent by then."""
    steps, last = [], None
    for h in history:
        if h["best"] is not None and h["best"] != last:
            last = h["best"]
            steps.append(f"{number(h['best'])} @{h['epochs_spent']} ep (trial {h['trial']})")
    if not steps:
        return
    spent = history[-1]["epochs_spent"]
    out.print(
        Text.assemble(
            ("history", "bold"),
            f" best {metric} vs epochs spent: {' → '.join(steps)}; {spent} epochs in all",
        ),
        soft_wrap=True,
    )


def _render_trials(trials: list[dict[str, Any]]) -> None:
    if not trials:
        out.print("No trials yet.")
        return
    keys = list(dict.fromkeys(k for t in trials for k in t["params"]))
    short = _short_names(keys)
    table = Table(
        Column("#", justify="right"),
        "state",
        Column("value", justify="right"),
        Column("epochs", justify="right"),
        Column("duration", justify="right"),
        Column("params", overflow="fold"),
        Column("run id", no_wrap=True),
        title="trials",
    )
    table.title_justify = "left"
    for t in trials:
        state = "failed" if t["state"] == "fail" else t["state"]
        params = "  ".join(f"{short[k]}={_value(v)}" for k, v in t["params"].items())
        value = Text(number(t["value"]) if t["value"] is not None else "-")
        if state != "complete":
            value.stylize("dim")  # a pruned trial's value is its last reported one
        table.add_row(
            str(t["number"]),
            _state(state),
            value,
            str(t["epochs"]),
            human_duration(t["duration_s"]),
            cell(params),
            cell(t["run_id"]),
        )
    print_table(table)
    for t in trials:
        if t["state"] == "fail" and t.get("error"):
            out.print(
                Text(f"trial {t['number']} failed: {t['error']}", style="red"), soft_wrap=True
            )
