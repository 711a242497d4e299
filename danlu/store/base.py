"""The storage contract. One implementation (SQLAlchemy: SQLite and PostgreSQL) serves it; the
conformance suite in ``danlu.testing.store`` checks any backend against it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from danlu.store._crypt import read_bytes
from danlu.store._deployments import Deployment, DeploymentModel
from danlu.store._entities import (
    ApiKey,
    Artifact,
    AuditEntry,
    MetricPoint,
    ModelVersion,
    Principal,
    RegisteredModel,
    Run,
    User,
)
from danlu.store._names import parse_model_ref

__all__ = ["FileReader", "Store", "StoreReader"]

#: Reads one file by name, or returns None when there is none by that name (what
#: ``danlu.models.load_bundle`` reads a model's files with).
FileReader = Callable[[str], "bytes | None"]


class StoreReader:
    """A :data:`FileReader` of a run's or a version's files that also finds the store's copy
    of a pretrained base model by its sha256 (``base_dir``), which ``load_bundle`` uses for a
    model that keeps only its adapter."""

    def __init__(
        self, read: Callable[[str], bytes | None], base_dir: Callable[[str], Path | None]
    ) -> None:
        self._read = read
        self.base_dir = base_dir

    def __call__(self, file: str) -> bytes | None:
        return self._read(file)


class Store(ABC):
    """Runs with their params, metrics, tags and artifacts; registered models; the audit log;
    the inference server's API keys.

    Every method returns frozen entities. Names and ids that come from outside are validated;
    writes that matter are atomic; a database row never points at a missing file.

    A backend implements the abstract primitives; :meth:`resolve`, :meth:`model_reader` and
    :meth:`run_reader` are built on them once, here, for every backend.
    """

    # -- runs ----------------------------------------------------------------------------------
    @abstractmethod
    def create_run(
        self,
        *,
        experiment: str,
        name: str,
        stage: str = "train",
        parent_id: str | None = None,
        recipe: Mapping[str, Any] | None = None,
        recipe_hash: str | None = None,
        data_fingerprint: str | None = None,
        git_commit: str | None = None,
        git_dirty: bool | None = None,
        packages: Mapping[str, str] | None = None,
        host: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Run:
        """Start a run (status ``running``) in ``experiment`` (created on first use)."""

    @abstractmethod
    def get_run(self, run_id: str) -> Run:
        """The run with its params, latest metrics and tags. Raises NotFoundError."""

    @abstractmethod
    def set_status(
        self,
        run_id: str,
        status: str,
        *,
        error: str | None = None,
        data_fingerprint: str | None = None,
    ) -> None:
        """Move a run to ``running`` (e.g. on resume), ``finished``, ``failed``, ``interrupted`` or
        ``pruned`` (a tuning trial stopped early by its pruner)."""

    @abstractmethod
    def heartbeat(self, run_id: str) -> None:
        """Record that the run's process is alive. Runs silent for longer than the store's
        heartbeat timeout are marked ``interrupted`` on the next read."""

    @abstractmethod
    def search_runs(
        self,
        filter: str | None = None,
        *,
        order_by: Sequence[str] = (),
        limit: int = 100,
        offset: int = 0,
    ) -> list[Run]:
        """Runs matching ``filter`` (``metrics.acc > 0.9 and params.model.type = 'cnn'``)."""

    @abstractmethod
    def delete_run(self, run_id: str) -> None:
        """Delete a run with its params, metrics, tags and artifact files.

        All or nothing: a run whose artifact folder is a symbolic link is refused with a
        StoreError before anything is deleted (links out of the store are never followed).
        """

    @abstractmethod
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None: ...

    @abstractmethod
    def log_metrics(self, run_id: str, points: Sequence[MetricPoint]) -> None:
        """Store a batch of points in one transaction."""

    @abstractmethod
    def metric_history(self, run_id: str, key: str | None = None) -> list[MetricPoint]: ...

    @abstractmethod
    def delete_metrics_after(self, run_id: str, step: int) -> None:
        """Forget points logged after ``step`` (a resumed run re-logs them)."""

    @abstractmethod
    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None: ...

    # -- artifacts -----------------------------------------------------------------------------
    @abstractmethod
    def log_artifact(
        self, run_id: str, name: str, data: bytes, media_type: str | None = None
    ) -> Artifact:
        """Write ``data`` atomically under the run, then record it."""

    @abstractmethod
    def record_artifact(self, run_id: str, name: str, media_type: str | None = None) -> Artifact:
        """Record a file already written (atomically) at ``artifact_path(run_id, name)``."""

    @abstractmethod
    def artifact_path(self, run_id: str, name: str) -> Path:
        """Where the artifact lives (validated; may not exist yet)."""

    @abstractmethod
    def list_artifacts(self, run_id: str) -> list[Artifact]: ...

    # -- pretrained base models, stored once ---------------------------------------------------
    @abstractmethod
    def stored_base(self, sha256: str) -> Path | None:
        """The folder of the store's copy of the pretrained base model with this hash, or None.

        A LoRA or frozen-base version keeps only its adapter and head; its base model's files
        are kept once per hash (content-addressed), whatever the number of versions on it.
        """

    @abstractmethod
    def store_base(
        self,
        sha256: str,
        files: Sequence[Path],
        check: Callable[[Path], None] | None = None,
    ) -> Path:
        """Keep a copy of a base model's ``files`` under its hash unless one is already kept;
        returns its folder. The copy is staged, ``check(staged_folder)`` may refuse it (raise),
        and it is renamed into place whole: a folder that exists is always complete.
        """

    @abstractmethod
    def prune_bases(self, *, min_age_s: float = 3600.0) -> list[str]:
        """Delete the kept base models no registered version refers to (deleting a version
        never does); returns their hashes. Bases younger than ``min_age_s`` stay."""

    # -- model registry ------------------------------------------------------------------------
    @abstractmethod
    def create_model_version(
        self,
        name: str,
        *,
        run_id: str | None,
        files: Mapping[str, bytes],
        signature: Mapping[str, Any],
        metrics: Mapping[str, float],
        tags: Mapping[str, str] | None = None,
        actor: str = "danlu",
    ) -> ModelVersion:
        """Register the next version of model ``name`` with its files (weights, preprocessing, ...)."""

    @abstractmethod
    def attach_model_files(
        self, name: str, version: int, files: Mapping[str, bytes], *, actor: str = "danlu"
    ) -> ModelVersion:
        """Add or replace a version's reports (``report.html``, ``report.json`` ...), atomically.

        The files that define the model (weights, model card, preprocessing, calibration) can
        never be replaced: a version always means the same predictions.
        """

    @abstractmethod
    def get_model_version(
        self, name: str, version: int | None = None, *, alias: str | None = None
    ) -> ModelVersion:
        """A version by number, by alias, or the latest. Raises NotFoundError."""

    @abstractmethod
    def model_version_path(self, name: str, version: int, file: str) -> Path:
        """Path of one file of a registered version (validated)."""

    def resolve(self, ref: str) -> ModelVersion:
        """The version a model reference names: ``NAME`` (the latest), ``NAME:VERSION`` or
        ``NAME@ALIAS``.

        Raises ConfigError for a malformed reference, NotFoundError (with the nearest known name
        or alias) for a model, version or alias the registry does not hold.

        Example:
            >>> import tempfile
            >>> from danlu.store import SqlStore
            >>> store = SqlStore(home=tempfile.mkdtemp())
            >>> mv = store.create_model_version(
            ...     "digits", run_id=None, files={"w.bin": b"w"}, signature={}, metrics={}
            ... )
            >>> store.set_alias("digits", "production", 1)
            >>> store.resolve("digits@production").ref
            'digits:1'
        """
        name, version, alias = parse_model_ref(ref)
        return self.get_model_version(name, version, alias=alias)

    def model_reader(self, mv: ModelVersion) -> FileReader:
        """A reader of the version's files: ``read("model.safetensors")`` → bytes, or None when
        the version has no such file. Names are validated like :meth:`model_version_path`.

        Example:
            >>> # bundle = load_bundle(store.model_reader(mv), f"Model {mv.ref}")
        """

        def read(file: str) -> bytes | None:
            path = self.model_version_path(mv.name, mv.version, file)
            return read_bytes(path) if path.is_file() else None

        return StoreReader(read, self.stored_base)

    def run_reader(self, run_id: str) -> FileReader:
        """A reader of the run's artifacts, like :meth:`model_reader` (None: no such artifact).

        Example:
            >>> # bundle = load_bundle(store.run_reader(run_id), f"Run {run_id}")
        """

        def read(name: str) -> bytes | None:
            path = self.artifact_path(run_id, name)
            return read_bytes(path) if path.is_file() else None

        return StoreReader(read, self.stored_base)

    @abstractmethod
    def list_models(self) -> list[RegisteredModel]: ...

    @abstractmethod
    def list_model_versions(self, name: str) -> list[ModelVersion]: ...

    @abstractmethod
    def set_alias(self, name: str, alias: str, version: int, *, actor: str = "danlu") -> None: ...

    @abstractmethod
    def delete_alias(self, name: str, alias: str, *, actor: str = "danlu") -> None: ...

    @abstractmethod
    def delete_model(self, name: str, version: int | None = None, *, actor: str = "danlu") -> None:
        """Delete one version, or the whole model with every version.

        All or nothing, like :meth:`delete_run`: a linked folder is refused before any row goes.
        """

    @abstractmethod
    def audit_log(self, name: str | None = None) -> list[AuditEntry]:
        """Registry changes, oldest first (append-only)."""

    # -- API keys of the inference server ---------------------------------------------------
    @abstractmethod
    def create_api_key(
        self, scope: str, *, name: str = "", actor: str = "danlu"
    ) -> tuple[ApiKey, str]:
        """Create a key of ``scope`` (``predict`` or ``admin``); returns it and its secret.

        The secret (``dl_<id>_<random>``) is returned once and never stored: only its digest
        is. Raises ConfigError for an unknown scope.

        Example:
            >>> import tempfile
            >>> from danlu.store import SqlStore
            >>> store = SqlStore(home=tempfile.mkdtemp())
            >>> key, secret = store.create_api_key("predict", name="web")
            >>> store.verify_api_key(secret).id == key.id
            True
        """

    @abstractmethod
    def verify_api_key(self, secret: str) -> ApiKey | None:
        """The active key whose secret this is; None for an unknown, malformed, wrong or
        revoked secret (never an exception for bad input). One primary-key lookup; records
        ``last_used_at`` at most once a minute."""

    @abstractmethod
    def list_api_keys(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first (never their secrets)."""

    @abstractmethod
    def revoke_api_key(self, key_id: str, *, actor: str = "danlu") -> ApiKey:
        """Revoke a key for good (revoking twice is harmless). Raises NotFoundError."""

    @abstractmethod
    def has_api_keys(self, scope: str | None = None) -> bool:
        """Whether an active key exists: of any scope, or able to call ``scope``'s routes (an
        admin key counts for ``predict`` too)."""

    # -- users, roles and access (danlu.store._users; docs/access.md) -------------------------
    @abstractmethod
    def has_users(self) -> bool:
        """Whether any user exists (a store without users belongs to its OS user)."""

    @abstractmethod
    def add_user(
        self, name: str, *, role: str | None = None, project: str = "*", actor: str = "danlu"
    ) -> User:
        """Add a user with ``role`` on ``project``; the first user is admin of ``*``."""

    @abstractmethod
    def get_user(self, name: str) -> User: ...

    @abstractmethod
    def list_users(self) -> list[User]: ...

    @abstractmethod
    def grant(self, name: str, project: str, role: str | None, *, actor: str = "danlu") -> User:
        """Set (or, with None, remove) the user's role on ``project``."""

    @abstractmethod
    def disable_user(self, name: str, *, actor: str = "danlu") -> User:
        """Disable a user: their keys stop working at once."""

    @abstractmethod
    def model_project(self, name: str) -> str:
        """The project of a registered model (``default`` for an unknown one)."""

    @abstractmethod
    def key_principal(self, key: ApiKey, *, via: str = "http") -> Principal:
        """Who acts with this verified key."""

    @abstractmethod
    def check_access(
        self, principal: Principal, action: str, project: str, *, subject: str = "*", **detail: Any
    ) -> Principal:
        """``principal`` if it may do ``action`` on ``project``; else audit the refusal and
        raise AccessDeniedError."""

    @abstractmethod
    def audit_denied(self, actor: str, action: str, subject: str, **detail: Any) -> None:
        """Record a refused action in the audit log."""

    @abstractmethod
    def record_action(
        self,
        principal: Principal | str,
        action: str,
        subject: str,
        version: int | None = None,
        **detail: Any,
    ) -> None:
        """Record an allowed action that no other store method audits."""

    # -- deployments: the danlu serve processes (danlu.store._deployments) ----------------------
    @abstractmethod
    def register_deployment(
        self,
        *,
        url: str,
        host: str,
        port: int,
        pid: int,
        models: Sequence[Mapping[str, Any] | DeploymentModel],
    ) -> Deployment:
        """Record a server that has started (live from now); ConfigError for a URL that is not
        ``http(s)://host:port``, a bad port or a malformed models list."""

    @abstractmethod
    def heartbeat_deployment(
        self,
        deployment_id: str,
        models: Sequence[Mapping[str, Any] | DeploymentModel] | None = None,
    ) -> None:
        """Refresh a server's heartbeat (and its models, when given); NotFoundError if unknown."""

    @abstractmethod
    def stop_deployment(self, deployment_id: str) -> None:
        """Mark a server stopped (a clean shutdown); NotFoundError if unknown."""

    @abstractmethod
    def list_deployments(
        self, *, stopped_within_s: float | None = 86_400.0, limit: int = 200
    ) -> list[Deployment]:
        """Servers newest first: those not stopped, and those stopped within
        ``stopped_within_s`` seconds (None: all)."""
