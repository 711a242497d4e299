"""The ``danlu`` command line: thin commands that parse, call a stage and render with Rich.

Heavy libraries (torch, pandas, scikit-learn) load inside the commands that need them, so
``danlu --help`` stays fast. This module is the top of the CLI: it imports the subcommand
modules, and they share the consoles, flags and options through the leaf modules ``_console``
and ``_options``, never through this one.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text

from danlu.cli._compress import compress_command, print_compression
from danlu.cli._console import (
    cell,
    err,
    out,
    print_error,
    setup_logging,
    state,
)
from danlu.cli._data import data_app
from danlu.cli._db import db_app
from danlu.cli._evaluate import evaluate_command, print_summary, report_command
from danlu.cli._export import export_command
from danlu.cli._generate import generate_command
from danlu.cli._jobs import agent_command, jobs_app, submit_command
from danlu.cli._keys import keys_app
from danlu.cli._models import models_app
from danlu.cli._options import QuietOption, SetOption, registered_line
from danlu.cli._package import package_command
from danlu.cli._predict import predict_command
from danlu.cli._runs import runs_app
from danlu.cli._serve import serve_command
from danlu.cli._tune import studies_app, tune_command
from danlu.cli._ui import ui_command
from danlu.cli._users import users_app
from danlu.errors import DanluError, Preempted

__all__ = ["app", "main"]

app = typer.Typer(
    name="danlu",
    help="danlu: from a dataset and one YAML recipe to a trained, tracked PyTorch model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(runs_app, name="runs")
app.add_typer(models_app, name="models")
app.add_typer(db_app, name="db")
app.add_typer(data_app, name="data")
app.add_typer(studies_app, name="studies")
app.add_typer(keys_app, name="keys")
app.add_typer(jobs_app, name="jobs")
app.add_typer(users_app, name="users")

RecipeArg = Annotated[Path, typer.Argument(help="Path to a YAML recipe.", metavar="RECIPE")]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    state["debug"] = debug
    state["verbose"] = verbose


@app.command()
def run(
    recipe: RecipeArg,
    set_: SetOption = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            help="Continue this run (its id, or its artifact folder) from the stage that "
            "failed, and within training from its last checkpoint.",
            metavar="RUN_ID",
        ),
    ] = None,
    quiet: QuietOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    threads: Annotated[
        int | None,
        typer.Option("--threads", min=1, help="Torch CPU threads (default: torch's choice)."),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=1,
            max=65535,
            help="Serve the training progress for Prometheus on 127.0.0.1:PORT/metrics (the "
            "same as --set train.metrics.port=PORT; docs/monitoring.md).",
            metavar="PORT",
        ),
    ] = None,
) -> None:
    """Run a recipe end to end: prepare data, train, report test metrics."""
    setup_logging(state["verbose"], quiet)
    from danlu.cli._access import open_checked

    if metrics_port is not None:
        set_ = [*(set_ or ()), f"train.metrics.port={metrics_port}"]
    open_checked("train", recipe, set_)  # an editor of the default project (docs/access.md)
    import torch

    from danlu.cli._progress import PlainProgress, RichProgress
    from danlu.data import row_accounting
    from danlu.pipeline import run as run_recipe
    from danlu.train import preemptible, run_of

    if threads:
        torch.set_num_threads(threads)
    callbacks: list[Any] = []
    if not quiet and not as_json:
        callbacks.append(RichProgress(err) if err.is_terminal else PlainProgress(err))
    from danlu.cli._evaluate import SectionProgress

    progress = SectionProgress(quiet or as_json)
    try:
        with preemptible():  # SIGTERM: exit 75 (training stops after a batch, checkpointed)
            result = run_recipe(
                recipe,
                overrides=set_ or (),
                callbacks=callbacks,
                resume=resume,
                on_section=progress,
                tags=_job_tags(),
            )
    except Preempted as exc:  # SIGTERM: one line (and --json's object), exit 75
        progress.close()
        stopped, command = run_of(exc), _resume_command(recipe, set_)
        _say_preempted(stopped, command)
        if as_json:
            resume_with = f"{command} {stopped}" if stopped else None
            out.print_json(
                json.dumps({"preempted": True, "run_id": stopped, "resume": resume_with})
            )
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt as exc:
        progress.close()
        _say_interrupted(run_of(exc), _resume_command(recipe, set_))
        raise typer.Exit(130) from None
    except DanluError as exc:  # after the run opened: it is kept as failed, say how to go on
        failed = run_of(exc)
        if failed is None or state["debug"]:
            raise
        progress.close()
        print_error(exc)
        err.print(
            Text(
                f"Run {failed} is kept as failed (danlu runs show {failed}). When the cause was "
                "outside the recipe (memory, disk, a crash), continue it from the stage that "
                f"failed with: {_resume_command(recipe, set_)} {failed}; else delete it: "
                f"danlu runs rm {failed}"
            ),
            soft_wrap=True,
        )
        raise typer.Exit(exc.exit_code) from None
    finally:
        progress.close()
    report = result.report
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "registered": result.registered.ref if result.registered else None,
                    "run_id": result.run_id,
                    "run_dir": str(result.run_dir),
                    "test": result.metrics,
                    "best_epoch": result.best_epoch,
                    "epochs_run": len(result.history),
                    "rows": row_accounting(result.data_report),
                    "report": report.summary if report is not None else None,
                    "report_html": str(result.run_dir / "report.html") if report else None,
                    "stages": [
                        {"name": s.name, "status": s.status, "seconds": round(s.seconds, 3)}
                        for s in result.stages
                    ],
                    "compression": (
                        result.details["compression"].to_dict()
                        if "compression" in result.details
                        else None
                    ),
                }
            )
        )
        return
    rows = result.data_report.get("rows", {})
    from danlu.evaluate import field_label

    # Result.metrics are the served model's (after a kept temperature): the report's numbers
    scaled = (
        f", temperature-scaled (T = {result.temperature:.3g})" if result.temperature != 1 else ""
    )
    out.print(
        f"[bold]{escape(result.recipe.name)}[/]: test metrics on {rows.get('test', '?')} "
        f"held-out rows{scaled}",
        highlight=False,
    )
    table = Table("metric", Column("value", justify="right"))
    for key, value in result.metrics.items():
        table.add_row(cell(field_label(key)), f"{value:.4f}")
    out.print(table)
    out.print(Text(rows_line(row_accounting(result.data_report))), soft_wrap=True)
    out.print(
        Text(
            f"best epoch {result.best_epoch} of {len(result.history)} · run {result.run_id} "
            f"(details: danlu runs show {result.run_id}) · artifacts in {result.run_dir}"
        ),
        soft_wrap=True,
    )
    stages = " · ".join(
        f"{s.name} {s.seconds:.1f} s" + (" (reused)" if s.restored else "") for s in result.stages
    )
    if stages:
        out.print(Text(f"stages: {stages}"), soft_wrap=True)
    if report is not None:
        print_summary(report.summary, report.flags, title="Trust report: ")
        out.print(Text(f"report: {result.run_dir / 'report.html'}"), soft_wrap=True)
    if result.registered is not None:
        out.print(Text(registered_line(result.registered)))
    compression = result.details.get("compression")
    if compression is not None:
        print_compression(compression)


def _job_tags() -> dict[str, str]:
    """``job=<id>`` when a queued job's agent started this run (``danlu.jobs`` finds it so)."""
    job = os.environ.get("DANLU_JOB_ID")
    return {"job": job} if job else {}


def _resume_command(recipe: Path, overrides: list[str] | None) -> str:
    """``danlu run RECIPE [--set ...] --resume``: the command that resumes this one's run."""
    import shlex

    sets = "".join(f" --set {shlex.quote(item)}" for item in overrides or ())
    return f"danlu run {shlex.quote(str(recipe))}{sets} --resume"


def _say_preempted(run_id: str | None, resume: str) -> None:
    if run_id is None:
        err.print("[yellow]preempted[/] before the run started: nothing was recorded.")
    else:
        err.print(Text(f"preempted; resume with: {resume} {run_id}"), soft_wrap=True)


def _say_interrupted(run_id: str | None, resume: str) -> None:
    if run_id is None:
        err.print("[yellow]Interrupted[/] before the run started: nothing was recorded.")
        return
    err.print(
        Text.assemble(
            ("Interrupted. ", "yellow"),
            f"Run {run_id} is kept (status interrupted). Continue it from its last checkpoint "
            f"with: {resume} {run_id}",
        ),
        soft_wrap=True,
    )


app.command("tune")(tune_command)
app.command("evaluate")(evaluate_command)
app.command("report")(report_command)
app.command("compress")(compress_command)
app.command("export")(export_command)
app.command("predict")(predict_command)
app.command("generate")(generate_command)
app.command("serve")(serve_command)
app.command("package")(package_command)
app.command("ui")(ui_command)
app.command("submit")(submit_command)
app.command("agent")(agent_command)


@app.command()
def validate(
    recipe: RecipeArg,
    set_: SetOption = None,
    data: Annotated[
        bool, typer.Option("--data", help="Also load and prepare the data to check it.")
    ] = False,
) -> None:
    """Check a recipe (and optionally its data) without training."""
    from danlu.config import load_recipe
    from danlu.pipeline import check_recipe

    loaded = load_recipe(recipe, set_ or ())
    check_recipe(loaded)
    if loaded.train.device == "cuda":  # whether this machine can run it (imports torch)
        from danlu.train import check_device

        check_device(loaded)
    if loaded.tune is not None:  # the search space too, so `danlu tune` will not refuse it later
        from danlu.config import raise_issues
        from danlu.tune import check_tune

        raise_issues(check_tune(loaded), loaded._source)
    if data:
        from danlu.models import prepare_recipe_data

        prepared = prepare_recipe_data(loaded)
        out.print(Text(f"data: {prepared.report}"), soft_wrap=True)
    searched = f", tunes {len(loaded.tune.space)} key(s)" if loaded.tune is not None else ""
    out.print(
        Text.assemble(
            ("OK", "green"),
            f" {recipe} is a valid recipe ({loaded.task}, model {loaded.model.type}{searched}).",
        )
    )


@app.command()
def schema() -> None:
    """Print the JSON Schema of a recipe (for editors and CI)."""
    from danlu.pipeline import recipe_json_schema

    sys.stdout.write(json.dumps(recipe_json_schema(), indent=2) + "\n")


@app.command()
def datasets(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """List the built-in datasets (shipped inside installed packages; nothing is downloaded)."""
    from dataclasses import asdict

    from danlu.data import list_builtin

    items = list_builtin()
    if as_json:
        out.print_json(json.dumps([asdict(d) for d in items]))
        return
    table = Table("source", "task", "target", "rows", "features", "classes", "description")
    for d in items:
        table.add_row(
            f"builtin:{d.name}",
            d.task,
            d.target if not d.label_columns else f"{len(d.label_columns)} label columns",
            str(d.rows),
            str(d.features),
            str(d.classes or "-"),
            d.description,
        )
    out.print(table)


@app.command()
def version() -> None:
    """Print danlu's version."""
    from danlu import __version__

    out.print(__version__)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``danlu`` script: DanluErrors become a message and an exit code.

    As the script (``argv`` None), a command that imported torch ends with :func:`_exit_now`:
    the interpreter's own teardown of torch's modules costs 0.5–1.5 s after the work is done."""
    try:
        try:
            app(args=argv, standalone_mode=True)
        except DanluError as exc:
            if state["debug"]:
                raise
            print_error(exc)
            err.print("[dim](run with --debug for a traceback)[/]")
            sys.exit(exc.exit_code)
    except SystemExit as exc:
        if argv is not None or "torch" not in sys.modules:
            raise
        _exit_now(exc.code)


def _exit_now(code: int | str | None) -> None:
    """End the process as ``sys.exit(code)`` would, without tearing the interpreter down: other
    (non-daemon) threads are joined, atexit handlers run, logging and the streams flushed."""
    import atexit
    import logging
    import threading

    if isinstance(code, str):
        sys.stderr.write(code + "\n")
    status = code if isinstance(code, int) else (0 if code is None else 1)
    # what the interpreter does first at exit: threading's own exit hooks (a thread pool left
    # open is told to stop there), then every non-daemon thread joined
    shutdown = getattr(threading, "_shutdown", None)
    if callable(shutdown):
        shutdown()
    else:  # pragma: no cover - every CPython has it
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


_DROP_WORDS = {
    "missing_target": "without a target (data.prepare.missing_target: drop)",
    "missing_values": "with a missing value (data.prepare.missing: drop)",
    "duplicates": "exact duplicates (data.prepare.dedupe)",
    "outliers": "training outliers (data.prepare.outliers)",
}


def rows_line(rows: dict[str, Any]) -> str:
    """Where the loaded rows went, in one line: the splits and every drop with its cause.

    Example:
        >>> rows_line({"loaded": 10, "dropped": {"duplicates": 2}, "used": {"train": 6, "test": 2}})
        'rows: 10 loaded · train 6 · test 2 · dropped 2 exact duplicates (data.prepare.dedupe)'
    """
    used = " · ".join(f"{k} {v:,}" for k, v in rows["used"].items())
    dropped = [f"{n:,} {_DROP_WORDS.get(k, k)}" for k, n in rows["dropped"].items() if n]
    line = f"rows: {rows['loaded']:,} loaded · {used}"
    line += f" · dropped {', '.join(dropped)}" if dropped else " · none dropped"
    if rows.get("copies_kept_together"):
        line += f" · {rows['copies_kept_together']:,} repeated rows kept with their copies"
    return line
