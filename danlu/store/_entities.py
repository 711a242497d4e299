"""Frozen entities the store hands out. Never ORM rows: callers cannot mutate the database by
accident, and an entity outlives the session that read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "API_KEY_SCOPES",
    "ApiKey",
    "Artifact",
    "AuditEntry",
    "Experiment",
    "MetricPoint",
    "Principal",
    "ModelVersion",
    "RegisteredModel",
    "Run",
    "RUN_STATUSES",
    "User",
]

RUN_STATUSES = ("running", "finished", "failed", "interrupted", "pruned")
#: what an API key may do: ``predict`` calls prediction routes; ``admin`` may also load, unload,
#: reload and re-alias models (an admin key is accepted wherever a predict key is)
API_KEY_SCOPES = ("predict", "admin")


@dataclass(frozen=True)
class Experiment:
    id: int
    name: str
    created_at: float


@dataclass(frozen=True)
class MetricPoint:
    """One metric value: ``key`` at ``step`` (epoch when the stage has epochs), logged at ``time``."""

    key: str
    value: float
    step: int = 0
    epoch: int | None = None
    time: float = 0.0


@dataclass(frozen=True)
class Run:
    id: str
    experiment: str
    name: str
    stage: str
    status: str
    created_at: float
    parent_id: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    heartbeat_at: float | None = None
    recipe: dict[str, Any] | None = None
    recipe_hash: str | None = None
    data_fingerprint: str | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    packages: dict[str, str] = field(default_factory=dict)
    host: str | None = None
    error: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # latest value of each key
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.ended_at if self.ended_at is not None else self.heartbeat_at
        return None if end is None else end - self.started_at


@dataclass(frozen=True)
class Artifact:
    run_id: str
    name: str
    size: int
    sha256: str
    media_type: str
    created_at: float


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    created_at: float
    description: str
    latest_version: int
    aliases: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    run_id: str | None
    created_at: float
    signature: dict[str, Any]
    metrics: dict[str, float]
    tags: dict[str, str]
    files: tuple[str, ...]
    aliases: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class AuditEntry:
    id: int
    time: float
    actor: str
    action: str
    model: str
    version: int | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class ApiKey:
    """An API key of the inference server, as listed: never its secret, which is shown once.

    ``prefix`` is the secret's first 8 characters (``dl_`` and the start of the id), enough to
    tell which key a client holds without revealing any of its random part.
    """

    id: str
    name: str
    scope: str  # one of API_KEY_SCOPES
    prefix: str
    created_at: float
    created_by: str
    revoked_at: float | None = None
    last_used_at: float | None = None
    user: str | None = None  # the owner; None for a key made before users existed
    project: str = "*"  # the project it may act in; "*": every project
    role: str = "predictor"  # one of danlu.store.ROLES (capped by the owner's own role)

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class User:
    """A person (or service) of a shared store, with a role per project (``*``: every project)."""

    name: str
    created_at: float
    created_by: str
    disabled_at: float | None = None
    roles: dict[str, str] = field(default_factory=dict)  # project -> role

    @property
    def active(self) -> bool:
        return self.disabled_at is None


@dataclass(frozen=True)
class Principal:
    """Who is acting: a registered user (directly or through one of their keys), a key made
    before users existed, or the OS user of a store that has no users (its admin).

    ``actor`` is what the audit log records: ``alice``, ``alice (key 0123abcd0123abcd)`` or
    ``key 0123abcd0123abcd``.
    """

    name: str  # the user's name; for a key without an owner, "key <id>"
    user: str | None = None  # the registered user, when there is one
    key_id: str | None = None
    key_role: str | None = None  # the key's role (a cap on the user's)
    key_project: str | None = None  # the key's project ("*": every one)
    local_admin: bool = False  # the OS user of a store with no users
    via: str = "cli"  # cli | http | ui

    @property
    def actor(self) -> str:
        if self.key_id is None or self.user is None:
            return self.name
        return f"{self.name} (key {self.key_id})"
