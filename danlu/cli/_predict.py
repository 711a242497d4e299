"""``danlu predict MODEL FILE``: batch prediction on raw rows, streamed from file to file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from danlu.cli._console import err, setup_logging, state
from danlu.cli._options import QuietOption

__all__ = ["predict_command"]


class _Progress:
    """Rows done and rows per second on stderr: a Rich bar on a terminal (with a total when
    the file says how many rows it holds), nothing per chunk in a pipe or a log."""

    def __init__(self, quiet: bool) -> None:
        self.bar: Any = None
        self.task: Any = None
        self.quiet = quiet or not err.is_terminal

    def __call__(self, rows: int, total: int | None) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]predict"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TextColumn("rows"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[speed]}"),
                console=err,
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("predict", total=total, speed="")
        elapsed = self.bar.tasks[0].elapsed or 0.0
        speed = f"{rows / elapsed:,.0f} rows/s" if elapsed > 0 else ""
        self.bar.update(self.task, completed=rows, speed=speed)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def predict_command(
    model: Annotated[
        str,
        typer.Argument(
            help="A registered model (NAME, NAME:VERSION or NAME@ALIAS) or a run id.",
            metavar="MODEL",
        ),
    ],
    file: Annotated[
        Path,
        typer.Argument(
            help="Raw rows to predict: .csv (.tsv), .parquet or .jsonl with the model's input "
            "columns (a target column is not needed; if present it is ignored).",
            metavar="FILE",
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write the predictions here (written to a temp file, renamed when complete); "
            "default: stdout.",
            metavar="FILE",
        ),
    ] = None,
    proba: Annotated[
        bool, typer.Option("--proba", help="Add one probability column per class: proba_CLASS.")
    ] = False,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="Output format: csv, parquet or jsonl (default: from --out's suffix, else csv).",
            metavar="csv|parquet|jsonl",
        ),
    ] = None,
    keep: Annotated[
        list[str] | None,
        typer.Option(
            "--keep",
            "-k",
            help="Copy this input column to the output (an id; repeat for more).",
            metavar="COLUMN",
        ),
    ] = None,
    chunk_rows: Annotated[
        int,
        typer.Option(
            "--chunk-rows", min=1, help="Rows read and predicted at once (memory stays bounded)."
        ),
    ] = 65_536,
    sep: Annotated[
        str | None,
        typer.Option(
            "--sep",
            help="An input CSV's separator, e.g. ';' or '\\t' (default: tab for .tsv, else ',').",
        ),
    ] = None,
    encoding: Annotated[
        str, typer.Option("--encoding", help="An input CSV's text encoding, e.g. latin-1.")
    ] = "utf-8",
    threads: Annotated[
        int | None,
        typer.Option("--threads", min=1, help="CPU threads of the runtime (default: its own)."),
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Predict every row of FILE with MODEL, streamed: files larger than memory work.

    Columns are checked against the model's signature before anything is predicted.

    Registered models run on ONNX Runtime when their export passed its parity check.
    """
    setup_logging(state["verbose"], quiet)
    from danlu.export import predict_file
    from danlu.store import SqlStore

    progress = _Progress(quiet)
    store = SqlStore()
    try:
        result = predict_file(
            model,
            file,
            out,
            fmt=fmt,
            proba=proba,
            keep=keep or (),
            chunk_rows=chunk_rows,
            sep=sep,
            encoding=encoding,
            threads=threads,
            store=store,
            on_chunk=progress,
        )
    except KeyboardInterrupt:
        progress.close()
        stopped = "no output file was written" if out else "the output stops part-way"
        err.print(f"[yellow]Interrupted:[/] {stopped}.")
        raise typer.Exit(130) from None
    finally:
        progress.close()
        store.close()
    for column, rows in result.unseen.items():
        err.print(
            Text(
                f"! column '{column}': {rows:,} row(s) hold a category the model never saw in "
                "training (encoded as unknown).",
                style="yellow",
            ),
            soft_wrap=True,
        )
    if not quiet:
        where = result.out or "stdout"
        err.print(
            Text(
                f"predicted {result.rows:,} rows with {result.model} ({result.runtime}) in "
                f"{result.seconds:.2f} s ({result.rows_per_second:,.0f} rows/s) → {where}"
            ),
            soft_wrap=True,
        )
