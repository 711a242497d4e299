"""The database schema as SQLAlchemy Core tables (the migrations in ``migrations/`` create it)."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = ["metadata"]

metadata = MetaData()

experiments = Table(
    "experiments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("experiment_id", Integer, ForeignKey("experiments.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("stage", String(50), nullable=False),
    Column("status", String(20), nullable=False),
    Column("parent_id", String(64), ForeignKey("runs.id", ondelete="SET NULL"), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("ended_at", Float),
    Column("heartbeat_at", Float),
    Column("recipe", Text),
    Column("recipe_hash", String(64)),
    Column("data_fingerprint", String(64)),
    Column("git_commit", String(64)),
    Column("git_dirty", Boolean),
    Column("packages", Text),
    Column("host", String(255)),
    Column("error", Text),
    Index("ix_runs_experiment", "experiment_id", "created_at"),
    Index("ix_runs_status", "status", "heartbeat_at"),
    Index("ix_runs_created", "created_at"),
)

params = Table(
    "params",
    metadata,
    Column("run_id", String(64), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(250), primary_key=True),
    Column("value", Text, nullable=False),
    Index("ix_params_key_value", "key", "value"),
)

metrics = Table(
    "metrics",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("key", String(250), nullable=False),
    Column("value", Float),  # NULL stands for NaN (SQLite cannot store NaN)
    Column("step", Integer, nullable=False),
    Column("epoch", Integer),
    Column("time", Float, nullable=False),
    Index("ix_metrics_run_key_step", "run_id", "key", "step"),
)

latest_metrics = Table(
    "latest_metrics",
    metadata,
    Column("run_id", String(64), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(250), primary_key=True),
    Column("value", Float),
    Column("step", Integer, nullable=False),
    Column("time", Float, nullable=False),
    Index("ix_latest_key_value", "key", "value"),
)

tags = Table(
    "tags",
    metadata,
    Column("run_id", String(64), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(250), primary_key=True),
    Column("value", Text, nullable=False),
)

artifacts = Table(
    "artifacts",
    metadata,
    Column("run_id", String(64), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(255), primary_key=True),
    Column("size", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("media_type", String(100), nullable=False),
    Column("created_at", Float, nullable=False),
)

models = Table(
    "models",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("description", Text, nullable=False, default=""),
    # the project the model belongs to (role checks); set with SqlStore.set_model_project
    Column("project", String(100), nullable=False, server_default="default"),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("name", String(100), ForeignKey("models.name", ondelete="CASCADE"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("run_id", String(64), ForeignKey("runs.id", ondelete="SET NULL"), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("signature", Text, nullable=False),
    Column("metrics", Text, nullable=False),
    Column("tags", Text, nullable=False),
    Column("files", Text, nullable=False),
)

model_aliases = Table(
    "model_aliases",
    metadata,
    Column("name", String(100), ForeignKey("models.name", ondelete="CASCADE"), primary_key=True),
    Column("alias", String(100), primary_key=True),
    Column("version", Integer, nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", Float, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(50), nullable=False),
    Column("model", String(100), nullable=False),
    Column("version", Integer),
    Column("detail", Text, nullable=False),
    Index("ix_audit_model", "model", "id"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("scope", String(20), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("secret_sha256", String(64), nullable=False),  # never the secret itself
    Column("created_at", Float, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("revoked_at", Float),
    Column("last_used_at", Float),
    Column("user", String(100)),  # the owner (users.name); NULL: a key from before users
    Column("project", String(100)),  # the project it acts in; "*": every project
    Column("role", String(20)),  # one of danlu.store._users.ROLES
    Index("ix_api_keys_user", "user"),
)

# -- users and their roles per project (danlu.store._users) -------------------------------------
users = Table(
    "users",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("disabled_at", Float),
)

grants = Table(
    "grants",
    metadata,
    Column("user", String(100), ForeignKey("users.name", ondelete="CASCADE"), primary_key=True),
    Column("project", String(100), primary_key=True),  # "*": every project
    Column("role", String(20), nullable=False),
    Column("granted_at", Float, nullable=False),
    Column("granted_by", String(200), nullable=False),
)

# -- the job queue (danlu.jobs) ------------------------------------------------------------------
jobs = Table(
    "jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(10), nullable=False),  # run | tune
    Column("name", String(200), nullable=False),  # the recipe's name
    Column("recipe", Text, nullable=False),  # the recipe's text as submitted
    Column("recipe_path", Text, nullable=False),  # where it was read from (for messages)
    Column("workdir", Text, nullable=False),  # the submitter's folder: relative data paths
    Column("overrides", Text, nullable=False),  # JSON list of --set items
    Column("project", String(100), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("cpus", Integer, nullable=False),
    Column("gpus", Integer, nullable=False),
    Column("memory_gb", Float, nullable=False),
    Column("preemptible", Boolean, nullable=False),
    Column("status", String(20), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("preemptions", Integer, nullable=False),
    Column("not_before", Float, nullable=False),  # retry backoff: not claimed before this time
    Column("lease_owner", String(64)),
    Column("lease_token", String(64)),
    Column("lease_expires_at", Float),
    Column("agent_id", String(64)),
    Column("slot", Text),  # JSON: the CPUs, GPUs and memory the running attempt holds
    Column("run_ids", Text, nullable=False),  # JSON list: the runs the attempts made, in order
    Column("exit_code", Integer),
    Column("error", Text),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("ended_at", Float),
    Column("cancel_requested", Boolean, nullable=False),
    Column("preempt_requested", Boolean, nullable=False),
    Column("estimate", Text),  # JSON: the pre-flight memory estimate
    Column("submitted_by", String(200), nullable=False),
    Index("ix_jobs_queue", "status", "priority", "created_at"),
    Index("ix_jobs_project", "project", "status"),
)

agents = Table(
    "agents",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("name", String(200), nullable=False),
    Column("kind", String(10), nullable=False),  # local | dask
    Column("cpus", Integer, nullable=False),
    Column("gpus", Text, nullable=False),  # JSON list of device ids
    Column("memory_gb", Float, nullable=False),
    Column("slots", Integer, nullable=False),  # jobs at once
    Column("timeout_s", Float, nullable=False),  # silent for longer: taken for dead
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("stopped_at", Float),
)

quotas = Table(
    "quotas",
    metadata,
    Column("project", String(100), primary_key=True),
    Column("max_running", Integer, nullable=False),  # jobs of the project running at once
    Column("updated_at", Float, nullable=False),
)

# -- deployments: the danlu serve processes, each registered by itself (danlu.store._deployments)
deployments = Table(
    "deployments",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("url", String(500), nullable=False),  # http(s)://host:port: where /metrics answers
    Column("host", String(255), nullable=False),
    Column("port", Integer, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("models", Text, nullable=False),  # JSON list of {name, version, ref, role}
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("stopped_at", Float),
    Index("ix_deployments_started", "started_at"),
)
