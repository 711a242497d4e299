"""``danlu serve``: answer predictions for registered models over HTTP.

Thin, like the other commands: ``danlu.serve`` does the work (FastAPI and uvicorn load inside the
command, so ``danlu --help`` stays fast).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from danlu.cli._console import setup_logging
from danlu.errors import ConfigError

if TYPE_CHECKING:
    from danlu.serve import Canary

__all__ = ["parse_canary", "parse_size", "serve_command"]

_CANARY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]{0,99}):([0-9]{1,9})=([0-9]+(?:\.[0-9]+)?)%$")
_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([KMG]i?B?|B)?$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3}


def parse_canary(text: str, models: list[str] | None = None) -> Canary:
    """``NAME:VERSION=SHARE%`` → a Canary (share as a fraction).

    Example:
        >>> parse_canary("digits:5=10%")
        Canary(name='digits', ref='digits:5', share=0.1)
    """
    from danlu.serve import Canary

    match = _CANARY.match(text.strip())
    if match is None:
        raise ConfigError(
            f"--canary {text!r} is not NAME:VERSION=SHARE%; for example --canary digits:5=10% "
            "sends 10% of digits' requests to version 5."
        )
    name, version, percent = match.group(1), int(match.group(2)), float(match.group(3))
    if version < 1:
        raise ConfigError(f"--canary {text!r}: versions start at 1; got {version}.")
    if not 0 < percent < 100:
        raise ConfigError(
            f"--canary {text!r}: the share must lie strictly between 0% and 100%; got {percent:g}%."
        )
    model = name  # the registry's name of the model served as `name`
    if models is not None:
        from danlu.serve._pool import served_models
        from danlu.store import parse_model_ref

        served = dict(served_models(models))
        if name not in served:
            raise ConfigError(
                f"--canary {text!r} is for '{name}', which is not served; serve it too "
                f"(served: {', '.join(served)})."
            )
        model = parse_model_ref(served[name])[0]
    return Canary(name=name, ref=f"{model}:{version}", share=percent / 100)


def parse_size(text: str, option: str = "--max-body") -> int | None:
    """``1MB``, ``512KB``, ``1MiB``, ``2000000`` → bytes; ``auto`` → None (worked out by the
    server).

    Example:
        >>> parse_size("1MB"), parse_size("64KiB"), parse_size("auto")
        (1000000, 65536, None)
    """
    if text.strip().lower() == "auto":
        return None
    match = _SIZE.match(text.strip())
    if match is None:
        raise ConfigError(
            f"{option} {text!r} is not a size; write it like 1MB, 512KB or 65536, or auto."
        )
    unit = (match.group(2) or "").upper()
    binary = "I" in unit
    prefix = unit[:1] if unit[:1] in "KMG" else ""
    factor = 1024 ** ("KMG".index(prefix) + 1) if binary and prefix else _UNITS[prefix]
    size = int(float(match.group(1)) * factor)
    if size < 1:
        raise ConfigError(f"{option} {text!r} must be at least 1 byte.")
    return size


def serve_command(
    models: Annotated[
        list[str] | None,
        typer.Argument(
            help="Models to serve: NAME (latest), NAME:VERSION or NAME@ALIAS, each under its "
            "registry name; SERVED=MODEL serves one under a name of its own (two versions of one "
            "model: digits@staging digits-tuned=digits@tuned). None with --package.",
            metavar="MODEL...",
            show_default=False,
        ),
    ] = None,
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on (default: $DANLU_HOST, else 127.0.0.1). Beyond loopback "
            "needs an API key: danlu keys create.",
            envvar="DANLU_HOST",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            help="Port to listen on (default: $DANLU_PORT, else 8000).",
            envvar="DANLU_PORT",
            min=0,
            max=65535,
        ),
    ] = 8000,
    workers: Annotated[
        int, typer.Option(help="Server processes (each loads every model).", min=1, max=64)
    ] = 1,
    runtime: Annotated[
        str, typer.Option(help="onnx (the parity-checked export) or torch.", metavar="onnx|torch")
    ] = "onnx",
    max_batch_size: Annotated[
        int, typer.Option(help="Most rows one micro-batch holds.", min=1)
    ] = 32,
    max_wait_ms: Annotated[
        float, typer.Option(help="How long a batch waits for company (ms).", min=0)
    ] = 2.0,
    max_queue: Annotated[
        int, typer.Option(help="Requests waiting per model before new ones get 503.", min=1)
    ] = 1024,
    timeout: Annotated[
        float, typer.Option(help="Seconds before an unanswered request gets 504.", min=0.001)
    ] = 10.0,
    max_body: Annotated[
        str,
        typer.Option(
            help="Largest request body (larger: 413). auto: room for --max-rows rows of the "
            "widest model at 40 bytes a value, at least 1MB.",
            metavar="SIZE|auto",
        ),
    ] = "auto",
    max_rows: Annotated[
        int, typer.Option(help="Most rows one request may carry (more: 413).", min=1)
    ] = 1024,
    canary: Annotated[
        list[str] | None,
        typer.Option(
            help="Send a share of a model's requests to another version: NAME:VERSION=SHARE% "
            "(repeatable), e.g. digits:5=10%.",
            metavar="NAME:VERSION=SHARE%",
        ),
    ] = None,
    poll: Annotated[
        float,
        typer.Option(help="Seconds between checks for a moved alias (hot swap); 0: off.", min=0),
    ] = 2.0,
    threads: Annotated[
        int,
        typer.Option(
            help="Inference threads per model (default: $DANLU_THREADS, else 1).",
            envvar="DANLU_THREADS",
            min=1,
            max=256,
        ),
    ] = 1,
    log_sample: Annotated[
        float,
        typer.Option(
            help="Share of requests whose rows and predictions are logged to the store "
            "(a run of stage serve, CSV artifacts) for later evaluation; 0: none.",
            min=0.0,
            max=1.0,
        ),
    ] = 0.0,
    allowed_hosts: Annotated[
        str | None,
        typer.Option(
            help="Host names clients reach the server by, besides localhost, 127.0.0.1, ::1 and "
            "--host (comma-separated; any port). Other Host headers get 400 (DNS rebinding); "
            "'*' answers any.",
            metavar="NAME,...",
        ),
    ] = None,
    access_log: Annotated[
        bool, typer.Option("--access-log", help="Log every request (slower).")
    ] = False,
    require_signed: Annotated[
        bool,
        typer.Option(
            "--require-signed",
            help="Load (and hot-swap to) only versions whose files match their signature; "
            "refuse others, naming the file (see danlu models verify).",
        ),
    ] = False,
    tls_cert: Annotated[
        str | None,
        typer.Option(
            "--tls-cert", help="Serve HTTPS with this certificate chain (PEM); needs --tls-key."
        ),
    ] = None,
    tls_key: Annotated[
        str | None,
        typer.Option("--tls-key", help="The private key (PEM) of --tls-cert."),
    ] = None,
    generate_slots: Annotated[
        int,
        typer.Option(
            help="Language models: generations at once per model version (more wait, then 503).",
            min=1,
            max=64,
        ),
    ] = 1,
    generate_max_tokens: Annotated[
        int,
        typer.Option(
            help="Language models: the most max_tokens a request may ask (more: 422).", min=1
        ),
    ] = 1024,
    package: Annotated[
        Path | None,
        typer.Option(
            "--package",
            help="Serve the version packaged in DIR (the model/ folder of danlu package) "
            "instead of the store: no database; its files are checked against the manifest.",
            metavar="DIR",
        ),
    ] = None,
    keys_file: Annotated[
        Path | None,
        typer.Option(
            "--keys-file",
            envvar="DANLU_API_KEYS_FILE",
            help="With --package: the API keys clients may send, one per line (a mounted "
            "Secret); needed beyond loopback.",
            metavar="FILE",
        ),
    ] = None,
    generate_max_prompt: Annotated[
        int | None,
        typer.Option(
            help="Language models: the most prompt tokens (more: 413); default the context.",
            min=1,
        ),
    ] = None,
) -> None:
    """Serve registered models over HTTP: predictions, metrics, drift and hot swap.

    Example: danlu serve digits@production wine:3 --canary digits:5=10%
    """
    setup_logging(True, False)
    from danlu.serve import ServeSettings, serve
    from danlu.serve._guard import parse_allowed_hosts
    from danlu.serve._server import store_factory_for

    if runtime not in ("onnx", "torch"):
        raise ConfigError(f"--runtime must be onnx or torch; got {runtime!r}.")
    served, packaged = _what_to_serve(models or [], package, keys_file, canary, log_sample)
    if packaged:
        poll = 0.0  # a package's aliases never move
    settings = ServeSettings(
        models=served,
        host=host,
        port=port,
        workers=workers,
        runtime=runtime,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        request_timeout_s=timeout,
        max_body_bytes=parse_size(max_body),
        max_rows=max_rows,
        canaries=tuple(parse_canary(c, models) for c in canary or ()),
        poll_seconds=poll,
        threads=threads,
        log_sample=log_sample,
        allowed_hosts=parse_allowed_hosts(allowed_hosts),
        require_signed=require_signed,
        tls_certfile=tls_cert,
        tls_keyfile=tls_key,
        extra={
            "access_log": access_log,
            "generate_slots": generate_slots,
            "generate_max_tokens": generate_max_tokens,
            **({"generate_max_prompt_tokens": generate_max_prompt} if generate_max_prompt else {}),
            **packaged,
        },
    )
    serve(settings, store_factory_for(settings))


def _what_to_serve(
    models: list[str],
    package: Path | None,
    keys_file: Path | None,
    canary: list[str] | None,
    log_sample: float,
) -> tuple[tuple[str, ...], dict[str, str]]:
    """The model references to serve, and the settings' ``extra`` of a packaged server."""
    if package is None:
        if keys_file is not None:
            raise ConfigError(
                "--keys-file is for a packaged server (--package DIR); a server of the store "
                "checks the store's keys: danlu keys create --user NAME --role predictor."
            )
        if not models:
            raise ConfigError(
                "Name the models to serve (e.g. danlu serve digits@production), or serve a "
                "packaged one with --package DIR."
            )
        return tuple(models), {}
    from danlu.store import packaged_version

    for given, option in ((canary, "--canary"), (log_sample > 0, "--log-sample")):
        if given:
            raise ConfigError(
                f"{option} needs the store; a packaged server (--package) serves one version "
                "and records nothing. Serve from the store to use it."
            )
    mv = packaged_version(package)  # the files' hashes are checked once, when the server opens it
    refs = set(models) - {mv.name, mv.ref, *(f"{mv.name}@{a}" for a in mv.aliases)}
    if refs:
        raise ConfigError(
            f"--package {package} holds {mv.ref} only; drop {', '.join(sorted(refs))} from the "
            "command (a packaged server serves what was packaged)."
        )
    extra = {"package": str(package.resolve())}
    if keys_file is not None:
        extra["keys_file"] = str(keys_file.resolve())
    return (mv.ref,), extra
