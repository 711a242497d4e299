"""``danlu export MODEL``: export a registered version to ONNX and check it against torch.

Thin: ``danlu.export.export_version`` does the work and records the outcome on the version
(``model.onnx`` + ``export.json``, or only a failed ``export.json``); this renders it. A failed
parity check exits with status 1 and shows the diff, without a traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from danlu.cli._console import print_error, setup_logging, state
from danlu.cli._options import JsonOption
from danlu.cli._runs import (
    human_duration,
    human_size,
    number,
    open_store,
    print_details,
    print_json,
)
from danlu.errors import ConfigError

if TYPE_CHECKING:
    from danlu.export import ExportResult

__all__ = ["export_command"]

FORMATS = ("onnx",)


def export_command(
    model: Annotated[
        str,
        typer.Argument(
            help="The registered version: NAME, NAME:VERSION or NAME@ALIAS.", metavar="MODEL"
        ),
    ],
    format_: Annotated[
        str,
        typer.Option("--format", help="Export format (only onnx).", metavar="FORMAT"),
    ] = "onnx",
    atol: Annotated[
        float,
        typer.Option(
            "--atol",
            min=0.0,
            help="Largest |onnx − torch| difference allowed on the real test rows.",
        ),
    ] = 1e-4,
    as_json: JsonOption = False,
) -> None:
    """Export a registered model to ONNX, checked against torch on real test rows.

    Writes model.onnx and export.json beside the version's files. When the outputs disagree beyond --atol (or any argmax differs), only a failed export.json is written, nothing is served from ONNX, and the command exits with status 1.
    """
    setup_logging(state["verbose"], False)
    if format_.lower() not in FORMATS:
        raise ConfigError(
            f"--format must be one of {', '.join(FORMATS)}; got '{format_}'. "
            "danlu exports ONNX (weights stay in safetensors)."
        )
    from danlu.cli._access import allow
    from danlu.export import export_version
    from danlu.store import parse_model_ref

    with open_store() as store:
        name = parse_model_ref(model)[0]
        who = allow(store, "register", store.model_project(name), subject=name)
        result = export_version(store, model, atol=atol, actor=who.actor)
    if as_json:
        print_json(result.to_dict())
    else:
        _print_result(result)
    if not result.ok:
        if not as_json:
            print_error(result.error)
        raise typer.Exit(1)


def _print_result(result: ExportResult) -> None:
    parity = result.parity
    ok = result.ok
    rows: list[tuple[str, object]] = [
        ("status", Text(result.status, style="green" if ok else "bold red")),
        (
            "max abs diff",
            Text(
                f"{number(parity['max_abs_diff'])} (atol {parity['atol']:g}, "
                f"{parity['rows']} rows, batch sizes {parity['batch_sizes_checked']})"
            )
            if parity
            else None,
        ),
        ("argmax agreement", f"{100 * parity['argmax_agreement']:.1f}%" if parity else None),
        (
            "file",
            Text(f"model.onnx, {human_size(result.size_bytes)}")
            if ok
            else Text("none written (not served)", style="dim"),
        ),
        (
            "exporter",
            Text(f"{result.exporter} (opset {result.opset})") if result.exporter else None,
        ),
        ("took", human_duration(result.seconds)),
    ]
    print_details("model", result.ref, "ONNX export", rows)
