"""Tracking database, artifact store and model registry (SQLite embedded, PostgreSQL for teams)."""

from __future__ import annotations

from danlu.store._atomic import atomic_write_bytes, atomic_write_text, remove_stale_temps
from danlu.store._csv import csv_restore, csv_restore_frame, csv_safe
from danlu.store._deployments import (
    DEPLOYMENT_STALE_S,
    Deployment,
    DeploymentModel,
    check_deployment_url,
)
from danlu.store._entities import (
    API_KEY_SCOPES,
    RUN_STATUSES,
    ApiKey,
    Artifact,
    AuditEntry,
    Experiment,
    MetricPoint,
    ModelVersion,
    Principal,
    RegisteredModel,
    Run,
    User,
)
from danlu.store._keys import KEYS_AUDIT_SUBJECT
from danlu.store._names import (
    parse_model_ref,
    validate_artifact_name,
    validate_model_name,
    validate_run_id,
)
from danlu.store._packaged import (
    MANIFEST as PACKAGE_MANIFEST,
)
from danlu.store._packaged import (
    PackagedStore,
    file_digest,
    packaged_version,
    read_keys_file,
)
from danlu.store._provenance import current_actor, git_state, host_name, package_versions
from danlu.store._signing import SIGNATURE_FILE, SignatureError, Verification, verify_version
from danlu.store._sql import SqlStore, danlu_home, default_db_url
from danlu.store._tables import agents as agents_table
from danlu.store._tables import jobs as jobs_table
from danlu.store._tables import quotas as quotas_table
from danlu.store._tracker import StoreTracker, Tracker, flatten_params
from danlu.store._users import (
    ACTION_HELP,
    ALL_PROJECTS,
    JOBS_AUDIT_SUBJECT,
    PERMISSIONS,
    ROLES,
    USERS_AUDIT_SUBJECT,
    check_project,
    check_role,
    role_allows,
)
from danlu.store.base import FileReader, Store

__all__ = [
    "PACKAGE_MANIFEST",
    "PackagedStore",
    "file_digest",
    "packaged_version",
    "read_keys_file",
    "ACTION_HELP",
    "ALL_PROJECTS",
    "JOBS_AUDIT_SUBJECT",
    "PERMISSIONS",
    "Principal",
    "ROLES",
    "USERS_AUDIT_SUBJECT",
    "User",
    "check_project",
    "check_role",
    "role_allows",
    "parse_model_ref",
    "API_KEY_SCOPES",
    "KEYS_AUDIT_SUBJECT",
    "RUN_STATUSES",
    "SIGNATURE_FILE",
    "SignatureError",
    "Verification",
    "ApiKey",
    "Artifact",
    "AuditEntry",
    "DEPLOYMENT_STALE_S",
    "Deployment",
    "DeploymentModel",
    "Experiment",
    "FileReader",
    "MetricPoint",
    "ModelVersion",
    "RegisteredModel",
    "Run",
    "SqlStore",
    "Store",
    "StoreTracker",
    "Tracker",
    "agents_table",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_deployment_url",
    "csv_restore",
    "csv_restore_frame",
    "csv_safe",
    "current_actor",
    "danlu_home",
    "default_db_url",
    "flatten_params",
    "git_state",
    "host_name",
    "jobs_table",
    "package_versions",
    "quotas_table",
    "remove_stale_temps",
    "validate_artifact_name",
    "validate_model_name",
    "validate_run_id",
    "verify_version",
]
