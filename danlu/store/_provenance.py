"""Where a run came from: git commit and dirty flag, package versions, host."""

from __future__ import annotations

import getpass
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

__all__ = ["current_actor", "git_state", "host_name", "package_versions"]

_PACKAGES = (
    "danlu",
    "torch",
    "numpy",
    "pandas",
    "scikit-learn",
    "pydantic",
    "safetensors",
    "SQLAlchemy",
    "alembic",
    "onnx",
    "onnxruntime",
    "optuna",
)


def git_state(path: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git work tree containing ``path`` (or the cwd); (None, None) if none."""
    cwd = str(path or Path.cwd())
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return commit.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def host_name() -> str:
    return socket.gethostname()


def current_actor() -> str:
    """Who is acting, for the audit log: ``$DANLU_ACTOR``, else the login name."""
    name = os.environ.get("DANLU_ACTOR")
    if name:
        return name
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (e.g. a container user without a passwd entry)
        return "unknown"
