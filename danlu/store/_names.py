"""Validation of every name that becomes part of a path: artifact names, run ids, model names.

A name is checked after full URL-decoding (``%2e%2e%2f`` is ``../``), and the resolved path is
checked to stay inside its root without passing through a symbolic link.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

from danlu.errors import ConfigError, StoreError

__all__ = [
    "folder_to_delete",
    "parse_model_ref",
    "safe_join",
    "validate_artifact_name",
    "validate_model_name",
    "validate_run_id",
]

_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _decoded(name: str) -> str:
    for _ in range(5):  # %252e → %2e → .
        decoded = unquote(name)
        if decoded == name:
            return name
        name = decoded
    return name


def _refuse(what: str, name: object, why: str) -> StoreError:
    shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
    return StoreError(f"Invalid {what} {shown}: {why}.")


def validate_artifact_name(name: str) -> str:
    """Accept ``a/b.json``-style relative names; refuse traversal, absolute paths and odd bytes.

    Example:
        >>> validate_artifact_name("plots/loss.svg")
        'plots/loss.svg'
    """
    what = "artifact name"
    if not isinstance(name, str) or not name:
        raise _refuse(what, name, "it must be a non-empty string")
    if len(name) > 255:
        raise _refuse(what, name, "it is longer than 255 characters")
    decoded = _decoded(name)
    if decoded != name:
        raise _refuse(what, name, "percent-encoded characters are not allowed")
    if any(unicodedata.category(c)[0] == "C" for c in name):
        raise _refuse(what, name, "it contains control or non-printable characters")
    if name.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", name) or "\\" in name:
        raise _refuse(what, name, "use a relative name with '/' between parts")
    parts = name.split("/")
    for part in parts:
        if part in {"", ".", ".."}:
            raise _refuse(what, name, "empty, '.' and '..' parts are not allowed")
        if not _PART.match(part):
            raise _refuse(
                what,
                name,
                "use letters, digits, '.', '_', '+', '-' (a part may not start with '.')",
            )
    return name


def validate_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise _refuse("run id", run_id, "a run id is letters, digits, '_' and '-' (at most 64)")
    return run_id


def validate_model_name(name: str) -> str:
    if not isinstance(name, str) or not _MODEL.match(name):
        raise _refuse(
            "model name",
            name,
            "use letters, digits, '.', '_', '-' (at most 100, starting with a letter or digit)",
        )
    return name


def safe_join(root: Path, *parts: str) -> Path:
    """``root/part/...``, refusing any result outside ``root`` or through a symbolic link."""
    root = root.resolve()
    path = root.joinpath(*parts)
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        if current.is_symlink():
            raise StoreError(f"Refusing '{path}': '{current}' is a symbolic link.")
    if not path.resolve().is_relative_to(root):
        raise StoreError(f"Refusing '{path}': it resolves outside the store '{root}'.")
    return path


def folder_to_delete(what: str, root: Path, *parts: str) -> Path:
    """The folder of ``what`` under ``root``, checked before its rows are deleted.

    A folder that is a symbolic link (or lies under one) is refused rather than followed: the
    deletion stops before touching anything, so a run or model is never left half deleted.
    """
    try:
        return safe_join(root, *parts)
    except StoreError as exc:
        raise StoreError(
            f"Cannot delete {what}: {exc} danlu never follows links out of the store, so nothing "
            "was deleted. Remove the link (or move what it points at into the store), then "
            "delete again."
        ) from None


_REF = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,99}?)(?::(?P<version>\d+)|@(?P<alias>[A-Za-z][A-Za-z0-9._-]*))?$"
)


def parse_model_ref(ref: str) -> tuple[str, int | None, str | None]:
    """``"digits"`` (latest), ``"digits:3"`` or ``"digits@production"`` → (name, version, alias).

    Example:
        >>> parse_model_ref("digits@production")
        ('digits', None, 'production')
    """
    match = _REF.match(ref or "")
    if not match:
        raise ConfigError(
            f"'{ref}' is not a model reference; use NAME (latest), NAME:VERSION (e.g. digits:3) or NAME@ALIAS (e.g. digits@production)."
        )
    version = match.group("version")
    return match.group("name"), int(version) if version else None, match.group("alias")
