"""``danlu runs``: list, inspect, compare, export and delete tracked runs.

Thin: every command opens the store, asks it one question and renders the answer with Rich (or as
JSON with ``--json``). The store and its SQLAlchemy import load inside the commands, so
``danlu --help`` stays fast. The small rendering helpers here are shared with ``danlu models``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.measure import Measurement
from rich.table import Column, Table
from rich.text import Text

from danlu.cli._console import SafeConsole, cell, err, out
from danlu.cli._options import JsonOption
from danlu.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from danlu.store import Run, SqlStore

__all__ = ["runs_app"]

runs_app = typer.Typer(
    help="List, inspect, compare, export and delete tracked runs.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

HEADLINE_METRICS = ("test_accuracy", "test_r2")
# Substrings of metric names where a smaller value is better (for highlighting the best run).
_LOWER_IS_BETTER = ("loss", "error", "mae", "mse", "rmse", "mape", "perplexity", "ece", "brier")
_STATUS_STYLE = {
    "finished": "green",
    "failed": "red",
    "running": "yellow",
    "interrupted": "magenta",
    "pruned": "dim",  # a tuning trial its pruner stopped early
}

FilterOption = Annotated[
    str | None,
    typer.Option(
        "--filter",
        "-f",
        help="Clauses joined by 'and', e.g. \"metrics.test_accuracy > 0.9 and params.model.type = 'cnn'\".",
        metavar="TEXT",
    ),
]
SortOption = Annotated[
    list[str] | None,
    typer.Option(
        "--sort",
        help="Sort by a field; prefix '-' for descending, e.g. -metrics.test_accuracy (repeatable).",
        metavar="FIELD",
    ),
]


# -- helpers shared with danlu models ---------------------------------------------------------
@contextlib.contextmanager
def open_store() -> Iterator[SqlStore]:
    """The store of ``$DANLU_DB_URL`` / ``$DANLU_HOME`` (migrated to the current schema); its
    connections are closed when the block ends."""
    from danlu.store import SqlStore

    store = SqlStore()
    try:
        yield store
    finally:
        store.engine.dispose()


def jsonable(value: Any) -> Any:
    """``value`` with NaN and infinities turned into ``null`` (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def print_json(value: Any) -> None:
    """JSON on stdout: coloured on a terminal, plain bytes into a pipe (even under FORCE_COLOR,
    which would otherwise put escape codes into what a program parses)."""
    text = json.dumps(jsonable(value), indent=2, allow_nan=False)  # controls become \u001b
    if sys.stdout.isatty():
        out.print_json(text)
    else:
        sys.stdout.write(text + "\n")


def print_table(table: Table) -> None:
    """Print a table: fitted to a terminal's width, at full width into a pipe or a log (where
    an ellipsis would hide part of a run id for good)."""
    if out.is_terminal:
        out.print(table)
        return
    needed = Measurement.get(out, out.options.update_width(10_000), table).maximum
    SafeConsole(width=max(out.width, needed), highlight=False).print(table)


def local_time(timestamp: float | None, *, seconds: bool = False) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp).strftime(
        "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M"
    )


def iso_time(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "nan" if value is not None else "-"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.4g}"
    return f"{value:.4f}"


def print_details(kind: str, ident: str, subtitle: str, rows: Sequence[tuple[str, Any]]) -> None:
    """A bold ``kind ident  subtitle`` line, then a two-column grid of the rows whose value is set.

    ``ident``, ``subtitle`` and text values are shown as plain text (see :func:`cell`).
    """
    out.print(
        Text.assemble((f"{kind} ", "bold"), (ident, "bold"), f"  {subtitle}"),
        soft_wrap=True,
    )
    about = Table.grid(padding=(0, 2))
    about.add_column(style="dim")
    about.add_column()
    for key, value in rows:
        if value is not None:
            about.add_row(key, cell(value) if isinstance(value, str) else value)
    print_table(about)


def stdin_is_tty() -> bool:
    return sys.stdin.isatty()


def confirm_deletion(question: str, *, yes: bool, what: str) -> bool:
    """True to go ahead: ``--yes`` was given, or a person at a terminal said yes.

    Without a terminal nobody can answer, so deleting without ``--yes`` is refused rather than
    assumed.
    """
    if yes:
        return True
    if not stdin_is_tty():
        raise ConfigError(
            f"Refusing to delete {what} without confirmation: the input is not a terminal. Pass --yes to delete without asking."
        )
    return typer.confirm(question, default=False, err=True)


def lower_is_better(metric: str) -> bool:
    name = metric.lower()
    return any(part in name for part in _LOWER_IS_BETTER)


# -- runs ---------------------------------------------------------------------------------------
def _run_dict(run: Run, *, full: bool = False) -> dict[str, Any]:
    data = asdict(run)
    data["duration"] = run.duration
    if not full:
        for key in ("recipe", "packages", "heartbeat_at"):
            data.pop(key)
    return data


def _metric_columns(runs: Sequence[Run], filter: str | None, sort: Sequence[str]) -> list[str]:
    from danlu.store._filter import parse_filter, parse_order

    named = [c.key for c in parse_filter(filter) if c.kind == "metric"]
    for item in sort:
        kind, key, _ = parse_order(item)
        if kind == "metric":
            named.append(key)
    present = [m for m in HEADLINE_METRICS if any(m in r.metrics for r in runs)]
    return list(dict.fromkeys(present + named))


def _status(status: str) -> Text:
    return Text(status, style=_STATUS_STYLE.get(status, ""))


@runs_app.command("ls")
def list_runs(
    filter: FilterOption = None,
    sort: SortOption = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most N runs.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List runs, newest first (or as sorted), with their headline metrics."""
    with open_store() as store:
        runs = store.search_runs(filter, order_by=sort or (), limit=limit)
    if as_json:
        print_json([_run_dict(r) for r in runs])
        return
    if not runs:
        err.print("No runs match." if filter else "No runs yet. Start one with: danlu run RECIPE")
        return
    metrics = _metric_columns(runs, filter, sort or ())
    values = {m: [number(r.metrics[m]) if m in r.metrics else "-" for r in runs] for m in metrics}
    table = Table(
        Column("id", no_wrap=True, min_width=max(len(r.id) for r in runs)),
        Column("experiment", overflow="fold"),
        Column("name", overflow="fold"),
        Column("stage", overflow="fold"),
        Column("status", overflow="fold"),
        Column("started", overflow="fold"),
        Column("duration", justify="right", overflow="fold"),
        *(
            Column(cell(m), justify="right", overflow="fold", min_width=max(len(c) for c in cells))
            for m, cells in values.items()
        ),
    )
    for i, r in enumerate(runs):
        table.add_row(
            cell(r.id),
            cell(r.experiment),
            cell(r.name),
            cell(r.stage),
            _status(r.status),
            local_time(r.started_at),
            human_duration(r.duration),
            *(cells[i] for cells in values.values()),
        )
    print_table(table)


@runs_app.command("show")
def show_run(
    run_id: Annotated[str, typer.Argument(help="The run's id (see `danlu runs ls`).")],
    as_json: JsonOption = False,
) -> None:
    """Everything recorded about one run: attributes, params, metrics, tags and artifacts."""
    with open_store() as store:
        run = store.get_run(run_id)
        artifacts = store.list_artifacts(run_id)
    if as_json:
        data = _run_dict(run, full=True)
        data["artifacts"] = [asdict(a) for a in artifacts]
        print_json(data)
        return
    git = None
    if run.git_commit:
        git = run.git_commit[:12] + (" (dirty)" if run.git_dirty else "")
    print_details(
        "run",
        run.id,
        f"{run.experiment} / {run.name}",
        [
            ("stage", cell(run.stage)),
            ("status", _status(run.status)),
            ("error", cell(run.error) if run.error else None),
            ("created", local_time(run.created_at, seconds=True)),
            ("started", local_time(run.started_at, seconds=True)),
            ("ended", local_time(run.ended_at, seconds=True)),
            ("duration", human_duration(run.duration)),
            ("parent", cell(run.parent_id)),
            ("recipe hash", cell(run.recipe_hash)),
            ("data fingerprint", cell(run.data_fingerprint)),
            ("git commit", cell(git)),
            ("host", cell(run.host)),
            ("packages", f"{len(run.packages)} recorded"),
        ],
    )
    for title, values in (("params", run.params), ("tags", run.tags)):
        if values:
            table = Table("key", "value", title=title, title_justify="left")
            for key in sorted(values):
                table.add_row(cell(key), cell(values[key]))
            print_table(table)
    if run.metrics:
        table = Table("metric", Column("latest", justify="right"), title="metrics")
        table.title_justify = "left"
        for key in sorted(run.metrics):
            table.add_row(cell(key), number(run.metrics[key]))
        print_table(table)
    if artifacts:
        table = Table(
            "name", Column("size", justify="right"), "sha256", "media type", title="artifacts"
        )
        table.title_justify = "left"
        for a in artifacts:
            table.add_row(cell(a.name), human_size(a.size), a.sha256[:12], cell(a.media_type))
        print_table(table)


@runs_app.command("compare")
def compare_runs(
    run_ids: Annotated[list[str], typer.Argument(help="Two or more run ids.", metavar="RUN_ID...")],
    all_params: Annotated[
        bool, typer.Option("--all", help="Show every param, not only those that differ.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Params and metrics of runs side by side: params that differ, every metric, best highlighted."""
    ids = list(dict.fromkeys(run_ids))
    if len(ids) < 2:
        raise ConfigError(
            "Compare needs at least two different run ids, e.g. danlu runs compare RUN_A RUN_B."
        )
    with open_store() as store:
        runs = [store.get_run(i) for i in ids]
    param_keys = sorted({k for r in runs for k in r.params})
    if not all_params:
        param_keys = [k for k in param_keys if len({r.params.get(k) for r in runs}) > 1]
    metric_keys = sorted({k for r in runs for k in r.metrics})
    best: dict[str, list[str]] = {}
    for key in metric_keys:
        values = {
            r.id: r.metrics[key]
            for r in runs
            if key in r.metrics and not math.isnan(r.metrics[key])
        }
        if values:
            target = (min if lower_is_better(key) else max)(values.values())
            best[key] = [i for i, v in values.items() if v == target]
    warnings = different_test_sets(runs)
    if as_json:
        print_json(
            {
                "runs": ids,
                "params": {k: {r.id: r.params.get(k) for r in runs} for k in param_keys},
                "metrics": {k: {r.id: r.metrics.get(k) for r in runs} for k in metric_keys},
                "best": best,
                "warnings": warnings,
            }
        )
        return
    for warning in warnings:
        err.print(Text.assemble(("warning: ", "yellow"), warning), soft_wrap=True)
    headers = [Column(r.id, overflow="fold") for r in runs]
    params = Table("param", *headers, title="params" + ("" if all_params else " that differ"))
    params.title_justify = "left"
    for key in param_keys:
        params.add_row(cell(key), *(cell(r.params.get(key)) for r in runs))
    if param_keys:
        print_table(params)
    else:
        out.print("All params are equal." + ("" if all_params else " (show them with --all)"))
    metrics = Table(
        "metric", *(Column(r.id, justify="right", overflow="fold") for r in runs), title="metrics"
    )
    metrics.title_justify = "left"
    for key in metric_keys:
        metrics.add_row(
            cell(key),
            *(
                Text(
                    number(r.metrics[key]),
                    style="bold green" if r.id in best.get(key, ()) else "",
                )
                if key in r.metrics
                else Text("-")
                for r in runs
            ),
        )
    if metric_keys:
        print_table(metrics)


# params that decide which rows a run is tested on (beside the data itself)
_ROW_PARAMS = (
    "data.split.",
    "data.prepare.dedupe",
    "data.prepare.missing",
    "data.prepare.outliers",
)


def _groups(keys: dict[str, Any]) -> str:
    """Run ids sharing a key, e.g. ``A = B; C``."""
    by_key: dict[str, list[str]] = {}
    for run_id, key in keys.items():
        by_key.setdefault(json.dumps(key, sort_keys=True, default=str), []).append(run_id)
    return "; ".join(" = ".join(ids) for ids in by_key.values())


def different_test_sets(runs: Sequence[Run]) -> list[str]:
    """Warnings when the runs' test metrics come from different test rows.

    Every training run records ``test_fingerprint`` (a hash of its raw test rows and of the
    data's fingerprint); runs made before it existed are compared by data fingerprint and the
    params that decide the rows (split, dedupe, missing values, outliers) instead, and the
    warning says so.
    """
    tested = [r for r in runs if any(k.startswith("test_") for k in r.metrics)]
    if len(tested) < 2:
        return []
    fingerprints = {r.id: r.tags.get("test_fingerprint") for r in tested}
    if all(fingerprints.values()):
        if len(set(fingerprints.values())) == 1:
            return []
        return [
            f"These runs were tested on different rows (same test set: {_groups(fingerprints)}), "
            "so their test metrics are not comparable. Compare runs made from the same data "
            "and split."
        ]
    rows = {
        r.id: [r.data_fingerprint]
        + [(k, v) for k, v in sorted(r.params.items()) if k.startswith(_ROW_PARAMS)]
        for r in tested
    }
    older = ", ".join(i for i, fp in fingerprints.items() if not fp)
    if len({json.dumps(v, default=str) for v in rows.values()}) == 1:
        return [
            f"Run {older} recorded no test-set fingerprint (made by an older danlu); the data "
            "fingerprint and split settings of the runs match, so they were probably tested on "
            "the same rows."
        ]
    return [
        f"Run {older} recorded no test-set fingerprint (made by an older danlu), and the runs' "
        f"data fingerprint or split settings differ (alike: {_groups(rows)}): they were "
        "probably tested on different rows, so their test metrics may not be comparable."
    ]


@runs_app.command("rm")
def remove_runs(
    run_ids: Annotated[list[str], typer.Argument(help="Runs to delete.", metavar="RUN_ID...")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")] = False,
) -> None:
    """Delete runs with their params, metrics, tags and artifact files."""
    from danlu.cli._access import DEFAULT_PROJECT, allow

    with open_store() as store:
        who = allow(store, "delete", DEFAULT_PROJECT, subject="*runs*", runs=run_ids[:20])
        # Every id is checked before anything is deleted.
        runs = [store.get_run(i) for i in dict.fromkeys(run_ids)]
        running = [r.id for r in runs if r.status == "running"]
        if running:
            raise StoreError(
                f"Run {', '.join(running)} is still running. Wait for it to end (a run whose process died is marked interrupted after {store.heartbeat_timeout:.0f} s without a heartbeat), then delete it."
            )
        what = f"run {runs[0].id}" if len(runs) == 1 else f"{len(runs)} runs"
        if not confirm_deletion(f"Delete {what} and its artifacts?", yes=yes, what=what):
            err.print("Nothing deleted.")
            raise typer.Exit(1)
        for r in runs:
            store.delete_run(r.id)
            store.record_action(who, "delete_run", "*runs*", run=r.id, name=r.name)
            out.print(Text(f"deleted run {r.id} ({r.name})"))


# -- export -------------------------------------------------------------------------------------
class ExportFormat(StrEnum):
    csv = "csv"
    json = "json"


_EXPORT_ATTRIBUTES = (
    "id",
    "experiment",
    "name",
    "stage",
    "status",
    "parent_id",
    "created_at",
    "started_at",
    "ended_at",
    "duration_s",
    "recipe_hash",
    "data_fingerprint",
    "git_commit",
    "git_dirty",
    "host",
    "error",
)


def _all_runs(
    store: SqlStore, filter: str | None, sort: Sequence[str], limit: int | None
) -> Iterator[Run]:
    """Every matching run (up to ``limit``), read a page at a time."""
    page, offset = 500, 0
    while limit is None or offset < limit:
        size = page if limit is None else min(page, limit - offset)
        batch = store.search_runs(filter, order_by=sort, limit=size, offset=offset)
        yield from batch
        if len(batch) < size:
            return
        offset += size


def _export_row(run: Run) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": run.id,
        "experiment": run.experiment,
        "name": run.name,
        "stage": run.stage,
        "status": run.status,
        "parent_id": run.parent_id,
        "created_at": iso_time(run.created_at),
        "started_at": iso_time(run.started_at),
        "ended_at": iso_time(run.ended_at),
        "duration_s": run.duration,
        "recipe_hash": run.recipe_hash,
        "data_fingerprint": run.data_fingerprint,
        "git_commit": run.git_commit,
        "git_dirty": run.git_dirty,
        "host": run.host,
        "error": run.error,
    }
    row.update({f"params.{k}": v for k, v in run.params.items()})
    row.update({f"metrics.{k}": v for k, v in run.metrics.items()})
    row.update({f"tags.{k}": v for k, v in run.tags.items()})
    return row


def _csv_value(value: Any) -> Any:
    """A CSV cell: empty for none and NaN, true/false, and text a spreadsheet will not run."""
    from danlu.store import csv_safe

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return csv_safe(value)


@runs_app.command("export")
def export_runs(
    format: Annotated[
        ExportFormat, typer.Option("--format", help="Output format.", case_sensitive=False)
    ],
    filter: FilterOption = None,
    sort: SortOption = None,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", min=1, help="At most N runs (default: all).")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write to this file (default: stdout).", metavar="FILE"
        ),
    ] = None,
) -> None:
    """Export runs as a table: one row per run, attributes then params.*, metrics.*, tags.*."""
    if output is not None and output.is_dir():
        raise ConfigError(
            f"--output '{output}' is a folder; give a file name, e.g. --output {output / ('runs.' + format.value)}."
        )
    with open_store() as store:
        rows = [_export_row(r) for r in _all_runs(store, filter, sort or (), limit)]
    group = {"params": 0, "metrics": 1, "tags": 2}
    extra = {k for row in rows for k in row} - set(_EXPORT_ATTRIBUTES)
    columns = [
        *_EXPORT_ATTRIBUTES,
        *sorted(extra, key=lambda k: (group[k.split(".", 1)[0]], k)),
    ]
    if format is ExportFormat.json:
        text = json.dumps(
            [jsonable({c: row.get(c) for c in columns}) for row in rows],
            indent=2,
            allow_nan=False,
        )
        text += "\n"
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\r\n")
        writer.writeheader()  # every column starts with a letter: id, params., metrics., tags.
        for row in rows:
            writer.writerow({c: _csv_value(row.get(c)) for c in columns})
        text = buffer.getvalue()
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from danlu.store._atomic import atomic_write_text

    atomic_write_text(output, text)
    err.print(Text(f"wrote {len(rows)} runs to {output}"))
