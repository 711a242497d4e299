"""Which weights of a model are its untouched pretrained base, and the base's identity.

A pretrained transformer fine-tuned with ``finetune: lora`` or ``frozen`` leaves the pretrained
encoder's own weights as they were loaded: only the LoRA adapters (``lora_*`` tensors) and the
head train. Its ``model.safetensors`` (a run's and a registered version's) therefore holds only
those trained tensors; the model card's ``base`` section names the pretrained model and the
sha256 of its weights, and loading rebuilds the base from that and checks the hash.

This module is the one place that decides:

* whether a model stores its base separately (:func:`stores_base_separately`),
* which state-dict keys are the base (:func:`base_keys`) and what is stored
  (:func:`stored_state`),
* the base's identity and hash (:func:`base_identity`, :func:`base_sha256`, cached per file
  path, size and mtime), and which of its files a store keeps (:func:`base_files`),
* how stored tensors are loaded back, strictly (:func:`load_stored_state`),
* what a training checkpoint (and early stopping's best state) leaves out: the base tensors
  that do not train (:func:`trained_state`, :func:`with_frozen_base`). A resumed run rebuilds
  the same base, so the checkpoint completes it exactly.

Example:
    >>> # card["base"] = base_identity("transformer", spec)
    >>> # weights = stored_state(model, "transformer", spec)
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from danlu.errors import ConfigError, StoreError

if TYPE_CHECKING:
    import torch

__all__ = [
    "BASE_CARD_KEY",
    "base_files",
    "base_identity",
    "base_keys",
    "base_sha256",
    "frozen_base_keys",
    "load_stored_state",
    "resolve_base",
    "stored_state",
    "stores_base_separately",
    "trained_state",
    "with_frozen_base",
]

#: the model card's section naming the pretrained base (absent: the weights file is complete)
BASE_CARD_KEY = "base"

# The files of a pretrained directory a store keeps: the architecture, safetensors weights and
# the tokenizer. Never a pickle (pytorch_model.bin, *.pt, *.pkl) or another framework's weights.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)
_INDEX = "model.safetensors.index.json"

_lock = threading.Lock()
_file_digests: dict[tuple[str, int, int], str] = {}


def _option(options: Any, key: str) -> Any:
    if isinstance(options, Mapping):
        return options.get(key)
    return getattr(options, key, None)


def stores_base_separately(model_type: str | None, options: Any) -> bool:
    """Whether the model's weights file leaves out its pretrained base: a ``transformer`` with
    ``pretrained`` set and ``finetune: lora`` or ``frozen`` (the base is never trained).

    Example:
        >>> stores_base_separately("transformer", {"pretrained": "m", "finetune": "lora"})
        True
        >>> stores_base_separately("transformer", {"pretrained": "m", "finetune": "full"})
        False
    """
    return (
        model_type == "transformer"
        and bool(_option(options, "pretrained"))
        and _option(options, "finetune") in ("lora", "frozen")
    )


def weight_files(directory: Path) -> list[Path]:
    """The safetensors weight files of a pretrained directory: ``model.safetensors``, or the
    index and every shard it lists."""
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    index = directory / _INDEX
    if not index.is_file():
        raise ConfigError(
            f"The pretrained model directory '{directory}' holds no model.safetensors (nor a "
            f"sharded {_INDEX})."
        )
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"'{index}' is not a valid safetensors index ({exc}).") from None
    for shard in shards:
        if "/" in shard or "\\" in shard or not shard.endswith(".safetensors"):
            raise ConfigError(f"'{index}' lists a shard '{shard}' outside its directory.")
    return [index, *(directory / s for s in shards)]


def _hashed(directory: Path) -> list[Path]:
    """What the base's hash covers: ``config.json`` and the weight files."""
    return [directory / "config.json", *weight_files(directory)]


def base_files(directory: Path) -> list[Path]:
    """The files a store keeps of a pretrained directory: ``config.json``, the safetensors
    weights and the tokenizer files present (never a pickled ``.bin``)."""
    extra = [directory / f for f in _TOKENIZER_FILES if (directory / f).is_file()]
    return [*_hashed(directory), *extra]


def _file_sha256(path: Path) -> str:
    """sha256 of one file, cached in-process per (path, size, mtime)."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise ConfigError(f"Cannot read '{path}' to hash it ({exc}).") from None
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _lock:
        cached = _file_digests.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    with _lock:
        _file_digests[key] = value
    return value


def base_sha256(directory: Path) -> str:
    """The base's hash: sha256 over ``name  sha256(file)`` lines of ``config.json`` and its
    safetensors weight files (the tokenizer is not part of it: the data stage saved its own
    copy with the preprocessing). About 0.2 s for MiniLM's 90 MB, then cached in-process.

    Raises:
        ConfigError: the directory lacks config.json or safetensors weights.
    """
    directory = Path(directory)
    lines = [f"{p.name}  {_file_sha256(p)}\n" for p in _hashed(directory)]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def base_identity(model_type: str | None, options: Any) -> dict[str, str] | None:
    """The card's ``base`` section of a model that stores its base separately, else None:
    ``pretrained`` (the name as the recipe gave it), ``directory`` (the resolved directory's
    name) and ``sha256`` (:func:`base_sha256`)."""
    if not stores_base_separately(model_type, options):
        return None
    from danlu.models._pretrained import resolve_pretrained

    name = str(_option(options, "pretrained"))
    directory = resolve_pretrained(name)
    return {"pretrained": name, "directory": directory.name, "sha256": base_sha256(directory)}


def base_keys(model: torch.nn.Module) -> frozenset[str]:
    """The state-dict keys of ``model``'s pretrained encoders that no fine-tuning changes: every
    key under a pretrained encoder except peft's adapters (a ``lora_*`` part)."""
    from danlu.models._text_nets import PretrainedEncoder

    prefixes = [
        f"{name}.model." if name else "model."
        for name, module in model.named_modules()
        if isinstance(module, PretrainedEncoder)
    ]
    return frozenset(
        key
        for key in model.state_dict()
        if any(key.startswith(p) for p in prefixes)
        and not any(part.startswith("lora_") for part in key.split("."))
    )


def frozen_base_keys(model: torch.nn.Module) -> frozenset[str]:
    """The base keys whose parameters do not train (``finetune: lora`` or ``frozen``); empty
    for a full fine-tune and any model without a pretrained encoder."""
    trains = {name: p.requires_grad for name, p in model.named_parameters()}
    return frozenset(k for k in base_keys(model) if trains.get(k) is False)


def trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` without the frozen base's tensors (:func:`frozen_base_keys`):
    what a checkpoint keeps. The tensors are the model's own (not copies)."""
    skip = frozen_base_keys(model)
    state = model.state_dict()
    return {k: v for k, v in state.items() if k not in skip} if skip else state


def with_frozen_base(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A state saved by :func:`trained_state`, completed with the model's own frozen base
    tensors (a full state passes through unchanged), for a strict ``load_state_dict``."""
    missing = frozen_base_keys(model) - set(state)
    if not missing:
        return dict(state)
    current = model.state_dict()
    return {**{k: current[k] for k in missing}, **state}


def stored_state(
    model: torch.nn.Module, model_type: str | None, options: Any
) -> dict[str, torch.Tensor]:
    """The tensors a weights file holds, copied to the CPU: all of the state dict, or, for a
    model that stores its base separately, everything but the base (adapters and head)."""
    skip = base_keys(model) if stores_base_separately(model_type, options) else frozenset()
    return {
        k: v.detach().cpu().contiguous().clone()
        for k, v in model.state_dict().items()
        if k not in skip
    }


def load_stored_state(
    model: torch.nn.Module,
    tensors: Mapping[str, torch.Tensor],
    *,
    base_separate: bool,
    where: str,
) -> None:
    """Load a weights file into ``model``, strictly.

    Every stored key must exist in the model with the same shape; a key of the model that is
    not stored must be a base key (only when ``base_separate``: the model was built with the
    base already loaded). Anything else is a StoreError naming the keys.
    """
    state = model.state_dict()
    unknown = sorted(set(tensors) - set(state))
    allowed = base_keys(model) if base_separate else frozenset()
    missing = sorted(set(state) - set(tensors) - allowed)
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"{len(unknown)} tensors the model does not have ({_few(unknown)})")
        if missing:
            parts.append(f"no value for {len(missing)} of the model's tensors ({_few(missing)})")
        raise StoreError(
            f"{where} does not fit the model its model.json describes: it holds "
            f"{' and '.join(parts)}. The files were changed or mixed up; register the run again."
        )
    try:
        model.load_state_dict(dict(tensors), strict=not base_separate)
    except RuntimeError as exc:  # e.g. a shape mismatch
        raise StoreError(f"{where} does not fit the model ({exc}).") from None


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")


def resolve_base(
    card: Mapping[str, Any], stored_dir: Callable[[str], Path | None] | None, where: str
) -> Path:
    """The directory to rebuild a card's base from, its hash checked against the card's.

    The store's copy (``stored_dir(sha256)``) when it has one, else ``resolve_pretrained`` of
    the card's ``pretrained`` name.

    Raises:
        StoreError: the card's ``base`` section is malformed, or the base found has another
            hash (the message names both and the fix).
    """
    base = card.get(BASE_CARD_KEY)
    if (
        not isinstance(base, Mapping)
        or not isinstance(base.get("pretrained"), str)
        or not isinstance(base.get("sha256"), str)
    ):
        raise StoreError(
            f"{where}/model.json has a malformed '{BASE_CARD_KEY}' section (it needs "
            "'pretrained' and 'sha256'). Register the run again to rewrite it."
        )
    want = base["sha256"]
    directory = stored_dir(want) if stored_dir is not None else None
    source = "the store's copy"
    if directory is None:
        from danlu.models._pretrained import resolve_pretrained

        try:
            directory = resolve_pretrained(base["pretrained"])
        except ConfigError as exc:
            raise StoreError(
                f"{where} keeps only its adapter and head; its base model "
                f"'{base['pretrained']}' (sha256 {want}) is neither in the store nor "
                f"available here: {exc}"
            ) from None
        source = f"'{base['pretrained']}' as resolved here"
    got = base_sha256(directory)
    if got != want:
        raise StoreError(
            f"{where} was trained on base model '{base['pretrained']}' with sha256 {want}, but "
            f"{source} ('{directory}') has sha256 {got}: its weights are not the ones the "
            "adapter was trained on, so its predictions would be wrong. Put the original base "
            f"model back at '{base['pretrained']}' (or register a version while it is there, "
            "so the store keeps a copy), or train and register the model again on the new base."
        )
    return directory
