"""``danlu data``: look at a data set before training on it.

``danlu data inspect`` prints the data quality report (see ``danlu.data.quality_report``) of a
recipe's data on the very splits training would use, or of a data file / built-in data set with
the default split settings. pandas and scikit-learn load inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Column, Table

from danlu.cli._console import out, setup_logging, state
from danlu.cli._options import SetOption
from danlu.cli._runs import jsonable, print_json, print_table
from danlu.errors import DanluError

if TYPE_CHECKING:
    from danlu.config import DataConfig

__all__ = ["data_app"]

data_app = typer.Typer(
    help="Inspect data before training: quality report, checks, leakage, split shift.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_RECIPE_SUFFIXES = (".yaml", ".yml")


def _file_config(source: str, overrides: list[str]) -> tuple[DataConfig, str | None]:
    """The data block for a bare file or built-in, with ``--set`` applied (keys under data.),
    and the task when ``--set task=...`` names one (None: inspect_data infers it)."""
    from danlu.config import apply_overrides, load_recipe

    asked = apply_overrides({}, overrides)[0].get("task")
    # The recipe schema wants a task and a model; validating the data block through the whole
    # recipe keeps the file/line/--set error messages. Neither stand-in reaches the report.
    recipe = {
        "name": "inspect",
        "data": {"source": source},
        "task": "classification",
        "model": {"type": "mlp"},
    }
    loaded = load_recipe(recipe, overrides)
    return loaded.data, (loaded.task if asked is not None else None)


def _write(path: Path, text: str, what: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise DanluError(
            f"Cannot write the {what} to '{path}': {exc.strerror or exc}. Check that the folder "
            "exists and is writable."
        ) from exc


def _summary(c: dict[str, Any]) -> str:
    if "mean" in c:
        if c["mean"] is None:
            return "-"
        return f"{c['min']:.4g} .. {c['max']:.4g} (mean {c['mean']:.4g})"
    return ", ".join(f"{t['value']} ({t['count']})" for t in c.get("top", [])[:3])


def _render(report: dict[str, Any]) -> None:
    dup, split = report["duplicates"], report["split"]
    cleaning = report.get("cleaning", {})
    overview = (
        f"[bold]{escape(report['source'])}[/]: {report['rows']} rows x {report['columns']} "
        f"columns ({report['features']} features), {report['task']} on "
        f"'{escape(report['target']['name'])}'; {dup['rows']} duplicate rows ({dup['percent']:g}%)"
    )
    if cleaning:
        overview += (
            f"; loaded {cleaning['rows_loaded']}, dropped {cleaning['duplicates_dropped']} "
            f"duplicates, {cleaning['missing_dropped']} with missing values and "
            f"{cleaning.get('target_dropped', 0)} without a target"
        )
    if split:
        overview += (
            f"; split train {split['train']} / val {split.get('val', 0)} / test {split['test']}"
            f"{' (stratified)' if split.get('stratified') else ''}"
            f"{' (by ' + split['by'] + ')' if split.get('by', 'random') != 'random' else ''}"
        )
    out.print(overview, highlight=False, soft_wrap=True)

    table = Table(
        "column",
        "kind",
        Column("missing %", justify="right"),
        Column("distinct", justify="right"),
        "values",
        Column("outliers z/IQR", justify="right"),
        Column("PSI", justify="right"),
        Column("KS (p)", justify="right"),
        "flags",
        title="columns",
    )
    for c in report["details"]:
        shift = c.get("shift") or {}
        outliers = c.get("outliers")
        psi = shift.get("psi")
        ks = shift.get("ks")
        flags = ", ".join(c["flags"])
        table.add_row(
            escape(c["name"]),
            c["kind"],
            f"{c['missing_percent']:g}",
            str(c["distinct"]),
            escape(_summary(c)),
            f"{outliers['zscore']}/{outliers['iqr']}" if outliers else "-",
            ("[yellow]" if shift.get("shifted") else "")
            + (f"{psi:.3f}" if psi is not None else "-"),
            f"{ks:.3f} ({shift['ks_pvalue']:.2g})" if ks is not None else "-",
            f"[yellow]{escape(flags)}[/]" if flags else "",
        )
    print_table(table)

    target = report["target"]
    if "classes" in target:
        balance = Table(
            "class",
            Column("rows", justify="right"),
            Column("share", justify="right"),
            title=f"target '{escape(target['name'])}' (imbalance ratio {target['imbalance_ratio']:g})",
        )
        for k in target["classes"]:
            balance.add_row(escape(k["label"]), str(k["count"]), f"{k['percent']:g}%")
    else:
        keys = ("min", "q1", "median", "mean", "q3", "max", "std", "skew")
        balance = Table(
            *(Column(k, justify="right") for k in keys), title=f"target '{escape(target['name'])}'"
        )
        balance.add_row(*("-" if target.get(k) is None else f"{target[k]:.4g}" for k in keys))
    print_table(balance)

    checks = report.get("checks")
    if checks is not None and checks["passed"]:
        out.print("[green]data.checks passed[/]")
    if report["warnings"]:
        out.print(f"[bold yellow]{len(report['warnings'])} warning(s):[/]")
        for warning in report["warnings"]:
            out.print(f"[yellow]- {escape(warning)}[/]", highlight=False, soft_wrap=True)
    else:
        out.print("[green]No warnings: nothing in the data needs attention.[/]")


@data_app.command()
def inspect(
    source: Annotated[
        str,
        typer.Argument(
            help="A recipe (.yaml), a data file (.csv .parquet .jsonl .npz) or builtin:NAME.",
            metavar="RECIPE_OR_FILE",
        ),
    ],
    target: Annotated[
        str | None,
        typer.Option("--target", "-t", help="The target column (default: the data's own)."),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            help="Override the task: classification, regression, multilabel... (a file's is "
            "inferred from its target).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also write the JSON report to this file.")
    ] = None,
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write the report as an HTML page.")
    ] = None,
    set_: SetOption = None,
) -> None:
    """Report on a data set: columns, missing values, outliers, target balance, leakage and shift.

    A recipe is inspected with its data block and split (the splits training uses); a data file
    or builtin:NAME with the default split settings.
    """
    setup_logging(state["verbose"], quiet=as_json)
    from danlu.config import load_recipe
    from danlu.data import inspect_data, quality_html

    overrides = list(set_ or ())
    chosen: str | None
    if target is not None:
        overrides.append(f"data.target={target}")
    if Path(source).suffix.lower() in _RECIPE_SUFFIXES:
        recipe = load_recipe(Path(source), overrides)
        config, chosen = recipe.data, task or recipe.task
    else:
        config, given = _file_config(source, overrides)
        chosen = task or given
    from danlu.tasks import get_task

    report = inspect_data(config, None if chosen is None else get_task(chosen))
    if output is not None:
        _write(output, json.dumps(jsonable(report), indent=2, allow_nan=False) + "\n", "report")
    if html is not None:
        _write(html, quality_html(report, page=True), "HTML report")
    if as_json:
        print_json(report)
        return
    _render(report)
    for path, what in ((output, "JSON report"), (html, "HTML report")):
        if path is not None:
            out.print(f"{what} written to {escape(str(path))}", highlight=False)
