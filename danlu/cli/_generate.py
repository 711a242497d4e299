"""``danlu generate MODEL``: text from a language model, streamed to stdout; or images from a
generative image model (``task: generation``) written as PNG files."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from danlu.cli._console import err, safe, setup_logging, state
from danlu.cli._options import QuietOption

if TYPE_CHECKING:
    from danlu.models import ModelBundle
    from danlu.store import Store

__all__ = ["generate_command", "open_bundle"]


def open_bundle(store: Store, target: str) -> tuple[ModelBundle, str]:
    """``(bundle, name)`` of a run id or a registered model (``NAME``, ``NAME:VERSION``,
    ``NAME@ALIAS``), as ``danlu predict`` reads its MODEL argument.

    Raises:
        NotFoundError: no such run, model, version or alias.
    """
    from danlu.errors import NotFoundError, StoreError
    from danlu.export._predictor import load_version
    from danlu.models import load_bundle

    if ":" not in target and "@" not in target:
        try:
            run = store.get_run(target)
        except (NotFoundError, StoreError):
            run = None
        if run is not None:
            return load_bundle(store.run_reader(run.id), f"Run {run.id}"), f"run {run.id}"
    mv = store.resolve(target)
    return load_version(store, mv), mv.ref


def _not_generative(bundle: ModelBundle, name: str) -> Exception:
    from danlu.errors import ConfigError

    return ConfigError(
        f"{name} is a {bundle.task.name} model; danlu generate needs a language model "
        "(task: language_model, model.type: gpt) or an image generator (task: generation). "
        f"Use danlu predict for a {bundle.task.name} model."
    )


def _write(piece: str) -> None:
    """A piece of generated text on stdout, as it comes; control characters (an escape
    sequence the model wrote) are shown, never sent; line breaks and tabs are kept."""
    sys.stdout.write("\t".join(safe(part, newlines=True) for part in piece.split("\t")))
    sys.stdout.flush()


def _text(bundle: ModelBundle, name: str, prompt: str | None, options: dict[str, Any]) -> str:
    from danlu.data._lm import lm_tokenizer
    from danlu.errors import ConfigError
    from danlu.models._generate import generate

    if prompt is None:
        raise ConfigError(f"{name} is a language model: give the text to continue with --prompt.")
    gen = generate(bundle.model, lm_tokenizer(bundle), prompt, **options)
    began = time.perf_counter()
    try:
        for piece in gen:
            _write(piece)
    finally:
        gen.close()
    seconds = time.perf_counter() - began
    sys.stdout.write("\n")
    sys.stdout.flush()
    rate = gen.tokens / seconds if seconds > 0 else 0.0
    return (
        f"{gen.tokens} tokens from {name} in {seconds:.2f} s ({rate:,.1f} tokens/s), "
        f"finish: {gen.finish_reason}; prompt {gen.prompt_tokens} tokens"
        + (f" (its first {gen.truncated} dropped)" if gen.truncated else "")
    )


def _images(bundle: ModelBundle, name: str, n: int, out: Path | None, seed: int | None) -> str:
    from danlu.errors import ConfigError
    from danlu.models._vae import sample_images, write_images

    if out is None:
        raise ConfigError(f"{name} generates images: give a folder for them with --out DIR.")
    paths = write_images(sample_images(bundle, n, seed=0 if seed is None else seed), out)
    return f"{len(paths)} images from {name} → {out}"


def generate_command(
    model: Annotated[
        str,
        typer.Argument(
            help="A language model or an image generator: NAME, NAME:VERSION, NAME@ALIAS or a "
            "run id.",
            metavar="MODEL",
        ),
    ],
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", "-p", help="The text to continue (language models)."),
    ] = None,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", min=1, help="The most tokens to generate.")
    ] = 64,
    temperature: Annotated[
        float,
        typer.Option("--temperature", "-t", min=0.0, help="0 is greedy; higher is more random."),
    ] = 1.0,
    top_k: Annotated[
        int | None,
        typer.Option("--top-k", min=1, help="Sample among the k likeliest tokens only."),
    ] = None,
    top_p: Annotated[
        float | None,
        typer.Option(
            "--top-p", min=0.0, max=1.0, help="Sample among the likeliest tokens up to this mass."
        ),
    ] = None,
    repetition_penalty: Annotated[
        float,
        typer.Option(
            "--repetition-penalty", help="Above 1 makes tokens already in the text less likely."
        ),
    ] = 1.0,
    stop: Annotated[
        list[str] | None,
        typer.Option("--stop", help="Stop at this text (not printed); repeat for more."),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="Seed the sampling: the same seed, the same output."),
    ] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="How many images (image generators).")] = 16,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="The folder for the PNG files (image generators)."),
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Generate with MODEL: text after --prompt streamed to stdout (a language model), or --n
    images written as PNG files into --out (an image generator, task: generation).

    The prompt keeps its newest tokens when it is longer than the model's context (a warning
    says so). Text is generated with the torch model and its key/value cache.
    """
    setup_logging(state["verbose"], quiet)
    from danlu.models._gpt import is_language_model
    from danlu.store import SqlStore

    store = SqlStore()
    try:
        bundle, name = open_bundle(store, model)
    finally:
        store.close()
    options = {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "repetition_penalty": repetition_penalty,
        "stop": stop or (),
        "seed": seed,
    }
    try:
        if is_language_model(bundle.model):
            done = _text(bundle, name, prompt, options)
        elif bundle.task.name == "generation":
            done = _images(bundle, name, n, out, seed)
        else:
            raise _not_generative(bundle, name)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        err.print("[yellow]Interrupted.[/]")
        raise typer.Exit(130) from None
    if not quiet:
        err.print(Text(done), soft_wrap=True)
