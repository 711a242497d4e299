"""What a model version needs installed to be served: the distributions, from its files.

A version whose ONNX export passed its parity check is served by ONNX Runtime, which needs the
version's preprocessing, its task's decoding and its signature — never torch (nor lightgbm,
optuna, captum, transformers...). torch is needed only when the version is served by the torch
runtime: its export failed or was never made, it is a torch int8 variant, or torch is asked for
(``--runtime torch``); and for ``/generate`` of a language model. ``danlu package`` installs
exactly :func:`serving_requirements` of the version, so a slim image holds no torch unless the
version needs it.

Example:
    >>> # needs = serving_needs(store, store.resolve("bbc-news@production"))
    >>> # needs.runtime, sorted(needs.requirements)
    >>> # ('onnx', ['tokenizers'])
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from danlu.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from danlu.store import ModelVersion, Store

__all__ = ["SERVING_BASE", "ServingNeeds", "serving_needs", "serving_requirements"]

#: The distributions every served version needs (PyPI names): danlu's own imports on the path
#: ``danlu serve`` → parse → preprocess → ONNX Runtime → decode → JSON, the store and the CLI.
SERVING_BASE = frozenset(
    {
        "numpy",
        "pandas",
        "scikit-learn",
        "scipy",
        "pydantic",
        "PyYAML",
        "typer",
        "rich",
        "SQLAlchemy",
        "alembic",
        "fastapi",
        "uvicorn",
        "prometheus-client",
        "onnxruntime",
    }
)

_RUNTIMES = ("onnx", "torch")


@dataclass(frozen=True)
class ServingNeeds:
    """How a version is served and what that needs installed.

    Attributes:
        runtime: ``onnx`` or ``torch``: the runtime ``danlu serve`` picks for it.
        requirements: the distributions (PyPI names) serving it needs beyond
            :data:`SERVING_BASE` (which every version needs).
        reasons: each of ``requirements`` → why it is needed.
        onnx_error: why the version is not served by ONNX Runtime (None when it is).
    """

    runtime: str
    requirements: frozenset[str]
    reasons: Mapping[str, str] = field(default_factory=dict)
    onnx_error: str | None = None


def _json(read: Callable[[str], bytes | None], file: str) -> Any:
    raw = read(file)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise StoreError(f"The version's {file} is not valid JSON ({exc}).") from None


def _onnx_problem(read: Callable[[str], bytes | None], export: Any) -> str | None:
    """Why the version's ONNX file may not be served (None: it may): what ``onnx_ready`` and
    ``read_onnx`` check, from the files alone (its status, its file, its size and SHA-256)."""
    if not isinstance(export, dict):
        return "it was never exported to ONNX"
    if export.get("runtime") == "torch" and export.get("compression"):
        return f"it is a torch int8 variant ({export['compression']}): its layers are torch's own"
    if export.get("status") != "ok":
        error = export.get("error")
        return f"its ONNX export {export.get('status') or 'failed'}" + (
            f": {error}" if error else ""
        )
    data = read("model.onnx")  # the file the server reads, whatever export.json names
    if data is None:
        return "its model.onnx is missing"
    size, digest = export.get("size_bytes"), export.get("sha256")
    if (size is not None and len(data) != size) or (
        digest and hashlib.sha256(data).hexdigest() != digest
    ):
        return "its model.onnx is not the file its export checked"
    return None


Reader = Callable[[str], "bytes | None"]


def _reader(source: Store | Reader, mv: ModelVersion | None) -> Reader:
    if mv is None:
        if not callable(source):
            raise TypeError("Pass a store and a version, or one reader: read(file) -> bytes.")
        return source
    return source.model_reader(mv)  # type: ignore[union-attr]


def serving_needs(
    source: Store | Reader,
    mv: ModelVersion | None = None,
    *,
    runtime: str = "onnx",
    generate: bool = False,
) -> ServingNeeds:
    """How a version is served, and what that needs installed, from its files alone.

    Args:
        source: the store holding ``mv``; or, without ``mv``, a reader of the version's files:
            ``read(file)`` → its bytes, or None when absent (``store.model_reader(mv)``, a
            packaged version's reader).
        mv: the version (with a store as ``source``).
        runtime: the runtime asked for: ``onnx`` (the default: torch only when the version has
            no servable ONNX file) or ``torch``.
        generate: also serve ``POST .../generate`` of a language model (it runs on torch).

    Returns:
        The runtime and the distributions needed beyond :data:`SERVING_BASE`, each with its
        reason: ``tokenizers`` when its preprocessing holds a tokenizer (text inputs, a
        language model); ``torch`` and ``safetensors`` for the torch runtime, plus
        ``transformers`` for a pretrained base and ``peft`` for LoRA adapters.

    Raises:
        ConfigError: ``runtime`` is neither ``onnx`` nor ``torch``.
        StoreError: ``model.json`` is missing, or a file is not valid JSON.

    Example:
        >>> files = {"model.json": b'{"type": "mlp", "task": "classification", "options": {}}'}
        >>> needs = serving_needs(files.get)
        >>> needs.runtime, sorted(needs.requirements)
        ('torch', ['safetensors', 'torch'])
        >>> needs.onnx_error
        'it was never exported to ONNX'
    """
    if runtime not in _RUNTIMES:
        raise ConfigError(f"The runtime must be one of {', '.join(_RUNTIMES)}; got '{runtime}'.")
    read = _reader(source, mv)
    card = _json(read, "model.json")
    if not isinstance(card, dict):
        raise StoreError("The version has no model.json (or it is not a danlu model card).")
    options: dict[str, Any] = card["options"] if isinstance(card.get("options"), dict) else {}
    reasons: dict[str, str] = {}
    preprocessing = _json(read, "preprocessing.json") or {}
    if isinstance(preprocessing, dict) and preprocessing.get("tokenizers"):
        reasons["tokenizers"] = "its preprocessing tokenizes text"
    problem = (
        "--runtime torch was asked for"
        if runtime == "torch"
        else _onnx_problem(read, _json(read, "export.json"))
    )
    torch_why = f"it is served by the torch runtime: {problem}" if problem else None
    if torch_why is None and generate and card.get("task") == "language_model":
        torch_why = "POST .../generate runs the language model on torch"
    if torch_why is not None:
        reasons["torch"] = torch_why
        reasons["safetensors"] = "the torch runtime loads its weights (model.safetensors)"
        if options.get("pretrained") or card.get("base"):
            reasons["transformers"] = "the torch runtime rebuilds its pretrained base"
        if options.get("finetune") == "lora" or options.get("lora"):
            reasons["peft"] = "the torch runtime rebuilds its LoRA adapters"
    return ServingNeeds(
        runtime="torch" if problem else "onnx",
        requirements=frozenset(reasons),
        reasons=reasons,
        onnx_error=None if runtime == "torch" else problem,
    )


def serving_requirements(
    source: Store | Reader,
    mv: ModelVersion | None = None,
    *,
    runtime: str = "onnx",
    generate: bool = False,
) -> set[str]:
    """The distributions (PyPI names) a version needs to be served, beyond
    :data:`SERVING_BASE`: ``tokenizers`` for text, and ``torch`` (with ``safetensors``, and
    ``transformers`` / ``peft`` for a pretrained base / LoRA) only when it is not served by
    ONNX Runtime. The arguments are :func:`serving_needs`', which also says why.

    Example:
        >>> # sorted(serving_requirements(store, store.resolve("bbc-news@production")))
        >>> # ['tokenizers']
    """
    return set(serving_needs(source, mv, runtime=runtime, generate=generate).requirements)
