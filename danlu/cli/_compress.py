"""``danlu compress RUN|MODEL``: compressed variants of a trained model, each measured on the test
split and the runtime that serves it, gated on accuracy and registered (``danlu.compress``).

Thin: :func:`danlu.compress.compress` does the work; this prints the trade-off table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from danlu.cli._access import allow
from danlu.cli._console import cell, err, out, setup_logging, state
from danlu.cli._options import JsonOption, QuietOption, SetOption
from danlu.cli._runs import open_store, print_json, print_table

if TYPE_CHECKING:
    from danlu.compress import CompressResult

__all__ = ["compress_command", "print_compression"]


def _prefixed(overrides: list[str] | None) -> list[str]:
    """``--set prune.sparsity=0.5`` reads as ``compress.prune.sparsity=0.5``."""
    return [
        o
        if o.strip().startswith("compress.") or o.strip() == "compress"
        else f"compress.{o.strip()}"
        for o in overrides or []
    ]


def _project_of(store: Any, target: str) -> str:
    """The project of a registered model named by ``target``; ``default`` for a run."""
    from danlu.cli._access import DEFAULT_PROJECT

    name = target.split("@", 1)[0].split(":", 1)[0]
    known = any(m.name == name for m in store.list_models())
    return store.model_project(name) if known else DEFAULT_PROJECT  # type: ignore[no-any-return]


def compress_command(
    target: Annotated[
        str,
        typer.Argument(
            help="A finished run id, or a registered model: NAME, NAME:VERSION or NAME@ALIAS.",
            metavar="RUN|MODEL",
        ),
    ],
    set_: SetOption = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Compress a trained model: int8 quantization, pruning, distillation, low-rank.

    Uses the run's recipe with its compress: block (every int8 quantization when it has none);
    --set changes it, e.g. --set prune.sparsity=0.5 --set max_metric_drop=0.01. Each variant is
    measured on the test split and on the runtime that serves it; those within
    max_metric_drop are registered as versions of the model, the best gets the alias.
    """
    setup_logging(state["verbose"], quiet)
    from danlu.compress import compress

    with open_store() as store:
        allow(store, "train", _project_of(store, target), subject=target[:100])
        if not quiet and not as_json:
            err.print(Text(f"Compressing {target}: making and measuring the variants…"))
        result = compress(store, target, overrides=_prefixed(set_))
    if as_json:
        print_json(result.to_dict())
    else:
        print_compression(result)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _size(size_bytes: int | None) -> str:
    return "-" if not size_bytes else f"{size_bytes / 1024:,.1f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def print_compression(result: CompressResult) -> None:
    """The trade-off table: the fp32 model, then each variant and what became of it."""
    reference = result.reference
    table = Table(title=f"Compression of {result.parent}", title_justify="left")
    for column in (
        "variant",
        "runtime",
        reference.metric,
        "drop",
        "size KB",
        "latency ms",
        "rows/s @64",
        "status",
    ):
        table.add_column(column, overflow="fold")
    rt = result.reference_runtime
    table.add_row(
        "fp32",
        rt,
        _fmt(reference.value),
        "-",
        _size(reference.size_bytes),
        _fmt(reference.latency_ms(rt), 3),
        _rate(reference.rows_per_s(rt)),
        "reference",
    )
    for v in result.variants:
        m = v.measurement
        runtime = v.variant.runtime
        status = v.status + (f" → {v.version}" if v.version else "")
        table.add_row(
            cell(v.name),
            runtime,
            _fmt(m.value) if m else "-",
            _fmt(m.drop) if m else "-",
            _size(m.size_bytes) if m else "-",
            _fmt(m.latency_ms(runtime), 3) if m else "-",
            _rate(m.rows_per_s(runtime)) if m else "-",
            cell(status),
        )
    print_table(table)
    for v in result.variants:
        if v.reason:
            out.print(Text(f"{v.name}: {v.reason}"), soft_wrap=True)
    out.print(Text(result.summary[0].upper() + result.summary[1:] + "."), soft_wrap=True)
    if result.alias and result.best:
        best = next(v for v in result.variants if v.name == result.best)
        out.print(Text(f"alias {result.alias} → {best.version}"), soft_wrap=True)
