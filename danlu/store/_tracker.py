"""The ``Tracker`` seam every stage logs through, and its run-folder implementation.

A run folder (``$DANLU_HOME/runs/<run id>/``) holds the resolved recipe, params, metrics per epoch
(JSON Lines), the status, artifacts (weights, preprocessing, summary) and the checkpoint. The
store issue moves this behind a database; callers only see :class:`Tracker`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from danlu.errors import NotFoundError, StoreError
from danlu.logging import get_logger
from danlu.store._atomic import atomic_write_bytes, atomic_write_text
from danlu.types import StrPath

__all__ = ["RunFolderTracker", "Tracker", "danlu_home", "flatten_params", "validate_name"]

log = get_logger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def danlu_home() -> Path:
    """``$DANLU_HOME`` or ``./.danlu``."""
    return Path(os.environ.get("DANLU_HOME", ".danlu"))


def validate_name(name: str, what: str = "artifact name") -> str:
    """Accept a plain relative name (``a/b.json``); refuse ``..``, absolute paths, odd characters."""
    parts = name.split("/")
    if not name or len(name) > 255 or any(not _NAME.match(p) or p in {".", ".."} for p in parts):
        raise StoreError(
            f"Invalid {what} {name!r}: use letters, digits, '.', '_', '-' and '/' between parts "
            "(no '..', no absolute paths, at most 255 characters)."
        )
    return name


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"optimizer": {"lr": 1e-3}}}`` → ``{"train.optimizer.lr": 1e-3}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, name + "."))
        else:
            flat[name] = value
    return flat


class Tracker(ABC):
    """What a stage records about its run. Writes may be buffered; ``flush`` forces them out."""

    run_id: str

    @abstractmethod
    def log_params(self, params: Mapping[str, Any]) -> None: ...

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    @abstractmethod
    def log_artifact(self, name: str, data: bytes | str) -> Path:
        """Store ``data`` under ``name`` atomically and return where it lives."""

    @abstractmethod
    def artifact_path(self, name: str) -> Path:
        """Where the artifact ``name`` lives (validated; it may not exist yet)."""

    @abstractmethod
    def set_status(self, status: str, **info: Any) -> None:
        """``running``, ``finished``, ``failed`` or ``interrupted``, plus details."""

    @abstractmethod
    def flush(self) -> None: ...


class RunFolderTracker(Tracker):
    """Tracks one run in a folder. ``create`` starts a run; ``open`` continues one (resume)."""

    def __init__(self, run_dir: Path, run_id: str) -> None:
        self.run_dir = run_dir
        self.run_id = run_id
        self._pending: list[str] = []
        self._status: dict[str, Any] = {}

    @classmethod
    def create(cls, name: str, home: StrPath | None = None) -> RunFolderTracker:
        """Make a new run folder under ``home/runs`` with a fresh, sortable id."""
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        run_id = f"{stamp}-{secrets.token_hex(3)}"
        run_dir = Path(home or danlu_home()) / "runs" / run_id
        try:
            run_dir.mkdir(parents=True, exist_ok=False)
        except OSError as exc:
            raise StoreError(
                f"Cannot create the run folder '{run_dir}': {exc.strerror or exc}."
            ) from exc
        tracker = cls(run_dir, run_id)
        tracker._status = {"run_id": run_id, "name": name, "created": time.time()}
        return tracker

    @classmethod
    def open(cls, run_dir: StrPath) -> RunFolderTracker:
        """Continue the run stored in ``run_dir``."""
        path = Path(run_dir)
        status_file = path / "status.json"
        if not status_file.is_file():
            raise NotFoundError(
                f"'{path}' is not a danlu run folder (no status.json). Pass the folder printed by "
                "`danlu run`, e.g. .danlu/runs/20260101-120000-abc123."
            )
        tracker = cls(path, path.name)
        tracker._status = json.loads(status_file.read_text())
        return tracker

    def artifact_path(self, name: str) -> Path:
        return self.run_dir / validate_name(name)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.log_artifact(
            "params.json", json.dumps(flatten_params(params), indent=1, sort_keys=True)
        )

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        # Buffered: lines are appended at flush time (end of epoch), off the batch hot path.
        self._pending.append(json.dumps({"step": step, "time": time.time(), **metrics}))

    def flush(self) -> None:
        if not self._pending:
            return
        try:
            with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
                handle.write("\n".join(self._pending) + "\n")
        except OSError as exc:
            raise StoreError(
                f"Cannot append metrics to '{self.run_dir}': {exc.strerror or exc}."
            ) from exc
        self._pending.clear()

    def truncate_metrics(self, last_step: int) -> None:
        """Drop metric lines after ``last_step`` (an interrupted run logged past its checkpoint)."""
        path = self.run_dir / "metrics.jsonl"
        if path.exists():
            kept = [
                line
                for line in path.read_text().splitlines()
                if line and json.loads(line)["step"] <= last_step
            ]
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    def metrics_history(self) -> list[dict[str, Any]]:
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def log_artifact(self, name: str, data: bytes | str) -> Path:
        payload = data.encode("utf-8") if isinstance(data, str) else data
        return atomic_write_bytes(self.artifact_path(name), payload)

    def set_status(self, status: str, **info: Any) -> None:
        self.flush()
        self._status.update(info, status=status, updated=time.time())
        atomic_write_text(
            self.run_dir / "status.json", json.dumps(self._status, indent=1, default=str)
        )

    @property
    def status(self) -> dict[str, Any]:
        return dict(self._status)
