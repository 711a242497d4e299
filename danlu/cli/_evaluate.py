"""``danlu evaluate RUN|MODEL [--data FILE]`` and ``danlu report MODEL [--open]``: the trust report."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Column, Table
from rich.text import Text

from danlu.cli._console import cell, err, out, setup_logging, state
from danlu.cli._options import JsonOption, QuietOption, SetOption
from danlu.cli._runs import open_store, print_json, print_table
from danlu.errors import ConfigError, NotFoundError, StoreError

if TYPE_CHECKING:
    from danlu.config import EvaluateConfig
    from danlu.evaluate import Report
    from danlu.store import Store

__all__ = ["SectionProgress", "evaluate_command", "print_summary", "report_command"]

TargetArg = Annotated[
    str,
    typer.Argument(
        help="A run id, or a registered model: NAME, NAME:VERSION or NAME@ALIAS.",
        metavar="RUN|MODEL",
    ),
]
OpenOption = Annotated[
    bool, typer.Option("--open", help="Open the HTML report in the default browser.")
]


def _is_model(store: Store, target: str) -> bool:
    """A run id when a run has it; else a model reference (``:`` / ``@`` always mean a model)."""
    if ":" in target or "@" in target:
        return True
    try:
        store.get_run(target)
    except (NotFoundError, StoreError):
        return True
    return False


def _model_run_recipe(store: Store, target: str) -> dict[str, Any] | None:
    run_id = store.resolve(target).run_id
    try:
        return store.get_run(run_id).recipe if run_id else None
    except NotFoundError:
        return None


def _config(recipe: dict[str, Any] | None, overrides: list[str] | None) -> EvaluateConfig | None:
    """The recipe's evaluate block with ``--set`` overrides (``cross_validation=5`` or
    ``evaluate.explain.method=kernel_shap``), validated; None leaves the choice to the stage."""
    if not overrides:
        return None
    from pydantic import ValidationError

    from danlu.config import EvaluateConfig, apply_overrides

    prefixed = [
        o if o.split("=", 1)[0].strip().split(".")[0] == "evaluate" else f"evaluate.{o.strip()}"
        for o in overrides
    ]
    base = {"evaluate": dict((recipe or {}).get("evaluate") or {})}
    tree = apply_overrides(base, prefixed)[0]["evaluate"]
    try:
        return EvaluateConfig.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"evaluate.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"--set: {problems}.") from None


class SectionProgress:
    """One line per report section (a spinner on a terminal)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.status: Any = None

    def __call__(self, key: str) -> None:
        if self.quiet:
            return
        label = f"report: {key.replace('_', ' ')}"
        if err.is_terminal:
            if self.status is None:
                self.status = err.status(label)
                self.status.start()
            else:
                self.status.update(label)
        else:
            err.print(label, highlight=False)

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()


def print_summary(summary: str, flags: list[str], *, title: str = "") -> None:
    """A report's summary line and its flags, as plain text (they quote feature and group names)."""
    out.print(Text.assemble((title, "bold"), summary), soft_wrap=True)
    for flag in flags:
        out.print(Text(f"! {flag}", style="yellow"), soft_wrap=True)


def _print_report(report: Report, where: list[Path]) -> None:
    print_summary(report.summary, report.flags)
    table = Table("section", Column("seconds", justify="right"), "result")
    for section in report.sections:
        table.add_row(cell(section.title), f"{section.seconds:.1f}", cell(section.summary or ""))
    print_table(table)
    for path in where:
        out.print(Text(f"report: {path}"), soft_wrap=True)


def _open(path: Path) -> None:
    import webbrowser

    from danlu.store._crypt import is_encrypted, read_bytes

    if is_encrypted(path):  # a browser cannot decrypt: it gets a private, decrypted copy
        import tempfile

        fd, name = tempfile.mkstemp(prefix="danlu-report-", suffix=".html")  # mode 0600
        with open(fd, "wb") as handle:
            handle.write(read_bytes(path))
        err.print(Text(f"The report is encrypted in the store; opening a decrypted copy, {name}."))
        path = Path(name)
    if not webbrowser.open(path.resolve().as_uri()):
        err.print(Text(f"No browser found; open {path} yourself."))


def evaluate_command(
    target: TargetArg,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Evaluate on this file (csv, parquet, jsonl, npz) instead of the test split; "
            "its columns must match the model's signature.",
            metavar="FILE",
        ),
    ] = None,
    set_: SetOption = None,
    open_: OpenOption = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Make the trust report of a run or a registered model and store it beside the model.

    Sections follow the recipe's evaluate: block (every section on when it has none);
    --set changes them, e.g. --set cross_validation=5 --set robustness=false.
    """
    setup_logging(state["verbose"], quiet)
    from danlu.evaluate import evaluate_model, evaluate_run

    progress = SectionProgress(quiet or as_json)
    from danlu.cli._access import DEFAULT_PROJECT, allow

    with open_store() as store:
        model = _is_model(store, target)
        project = store.model_project(target.split("@")[0].split(":")[0]) if model else None
        allow(store, "register", project or DEFAULT_PROJECT, subject=target[:100])
        recipe = _model_run_recipe(store, target) if model else store.get_run(target).recipe
        config = _config(recipe, set_)
        try:
            if model:
                report = evaluate_model(
                    target, store=store, config=config, data=data, on_section=progress
                )
                mv = store.resolve(str(report.subject["model"]))  # NAME:VERSION
                where = [store.model_version_path(mv.name, mv.version, "report.html")]
            else:
                report = evaluate_run(
                    target, store=store, config=config, data=data, on_section=progress
                )
                where = [store.artifact_path(target, "report.html")]
        finally:
            progress.close()
    if as_json:
        print_json({**report.to_dict(), "html": [str(p) for p in where]})
    else:
        _print_report(report, where)
    if open_:
        _open(where[0])


def report_command(
    target: TargetArg,
    open_: OpenOption = False,
    as_json: JsonOption = False,
) -> None:
    """Show where a model's (or run's) trust report is, with its summary; make it if missing."""
    setup_logging(state["verbose"], False)
    from danlu.evaluate import evaluate_model, evaluate_run

    with open_store() as store:
        if _is_model(store, target):
            mv = store.resolve(target)
            path = store.model_version_path(mv.name, mv.version, "report.html")
            if not path.is_file():
                err.print(Text(f"{mv.ref} has no report yet; making one."))
                progress = SectionProgress(as_json)
                try:
                    evaluate_model(mv.ref, store=store, on_section=progress)
                finally:
                    progress.close()
        else:
            path = store.artifact_path(target, "report.html")
            if not path.is_file():
                err.print(Text(f"Run {target} has no report yet; making one."))
                progress = SectionProgress(as_json)
                try:
                    evaluate_run(target, store=store, on_section=progress)
                finally:
                    progress.close()
        from danlu.store._crypt import read_bytes

        summary = json.loads(read_bytes(path.with_name("report.json")))
    if as_json:
        print_json({**summary, "html": str(path)})
    else:
        print_summary(summary["summary"], summary.get("flags", []))
        made = summary.get("created_at")
        out.print(Text(f"report: {path}"), soft_wrap=True)
        if made:
            import time

            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(made))
            out.print(Text(f"made {when}; remake it with: danlu evaluate {target}"))
    if open_:
        _open(path)
    sys.stdout.flush()
