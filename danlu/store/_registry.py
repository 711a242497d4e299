"""The model registry half of :class:`~danlu.store.SqlStore`: versions, aliases, audit log.

A version's files (weights, model card, preprocessing) are copied into
``$DANLU_HOME/models/<name>/<version>/`` — staged in a hidden folder and renamed into place before
the version row is committed, so a row never points at missing files and a version outlives the
run that made it. Every change appends to the audit log in the same transaction. Each version is
signed (``signature.json``, Ed25519 over its files' sha256: ``_signing.py``) as it is staged, and
signed again when files are attached.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from danlu.errors import NotFoundError, StoreError
from danlu.registry import did_you_mean
from danlu.store import _tables as t
from danlu.store._artifacts import BASES_FOLDER
from danlu.store._atomic import atomic_write_bytes
from danlu.store._connection import SqlConnection
from danlu.store._crypt import read_bytes, write_bytes
from danlu.store._entities import AuditEntry, ModelVersion, RegisteredModel
from danlu.store._names import (
    folder_to_delete,
    safe_join,
    validate_artifact_name,
    validate_model_name,
)
from danlu.store._signing import (
    SIGNATURE_FILE,
    file_digest,
    read_manifest,
    sign_manifest,
    signing_enabled,
)

__all__ = ["MODEL_FILES", "SqlRegistryMixin"]

#: the files that define a version's predictions; never replaced once registered
MODEL_FILES = ("model.safetensors", "model.json", "preprocessing.json", "calibration.json")


class SqlRegistryMixin(SqlConnection):
    """Registry methods of the SQL store (mixed into ``SqlStore``, which provides the rest)."""

    home: Path
    model_root: Path
    artifact_root: Path

    def model_version_path(self, name: str, version: int, file: str) -> Path:
        return safe_join(
            self.model_root,
            validate_model_name(name),
            str(int(version)),
            validate_artifact_name(file),
        )

    def _aliases(self, conn: Connection, name: str) -> dict[str, int]:
        rows = conn.execute(
            select(t.model_aliases)
            .where(t.model_aliases.c.name == name)
            .order_by(t.model_aliases.c.alias)
        ).all()
        return {r.alias: r.version for r in rows}

    def _version(self, row: Any, aliases: Mapping[str, int]) -> ModelVersion:
        return ModelVersion(
            name=row.name,
            version=row.version,
            run_id=row.run_id,
            created_at=row.created_at,
            signature=json.loads(row.signature),
            metrics=json.loads(row.metrics),
            tags=json.loads(row.tags),
            files=tuple(json.loads(row.files)),
            aliases=tuple(a for a, v in aliases.items() if v == row.version),
        )

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
        validate_model_name(name)
        for file in files:
            _check_file_name(name, file)
        digests = {file: file_digest(data) for file, data in files.items()}
        sign = signing_enabled()
        for _attempt in range(5):
            staging: Path | None = None
            try:
                with self._write() as conn:
                    if run_id is not None:
                        self._require_run(conn, run_id)
                    if (
                        conn.execute(select(t.models.c.name).where(t.models.c.name == name)).first()
                        is None
                    ):
                        conn.execute(
                            insert(t.models).values(
                                name=name, created_at=time.time(), description=""
                            )
                        )
                        self._audit(conn, actor, "create_model", name, None)
                    # Lock the model's row (PostgreSQL; SQLite's BEGIN IMMEDIATE already
                    # serialises writers) so two registrations cannot pick the same version and
                    # the leftover-folder cleanup below never touches another writer's files.
                    conn.execute(
                        select(t.models.c.name).where(t.models.c.name == name).with_for_update()
                    )
                    version = self._next_version(conn, name)
                    final = safe_join(self.model_root, name, str(version))
                    staging = safe_join(
                        self.model_root, name, f".staging-{version}-{secrets.token_hex(4)}"
                    )
                    for file, data in files.items():
                        write_bytes(staging / file, data, home=self.home)
                    if sign:  # the signature is in place before the version is visible
                        atomic_write_bytes(
                            staging / SIGNATURE_FILE,
                            sign_manifest(self.home, name, version, digests),
                        )
                    if final.exists():  # left by a crash before its row was committed
                        shutil.rmtree(final)
                    os.replace(staging, final)
                    staging = final
                    conn.execute(
                        insert(t.model_versions).values(
                            name=name,
                            version=version,
                            run_id=run_id,
                            created_at=time.time(),
                            signature=json.dumps(signature),
                            metrics=json.dumps(dict(metrics)),
                            tags=json.dumps(dict(tags or {})),
                            files=json.dumps(sorted(files)),
                        )
                    )
                    self._audit(conn, actor, "create_version", name, version, run_id=run_id)
                staging = None
                return self.get_model_version(name, version)
            except IntegrityError:  # another process took this version number: try the next
                continue
            finally:
                if staging is not None:
                    shutil.rmtree(staging, ignore_errors=True)
        raise StoreError(
            f"Could not register a new version of '{name}' after 5 attempts (heavy contention)."
        )

    def attach_model_files(
        self, name: str, version: int, files: Mapping[str, bytes], *, actor: str = "danlu"
    ) -> ModelVersion:
        current = self.get_model_version(name, version)
        fixed = sorted(set(files) & set(MODEL_FILES))
        if fixed:
            raise StoreError(
                f"Model {current.ref} keeps its {', '.join(fixed)} for life: a version always "
                "means the same predictions. Register a new version instead."
            )
        for file in files:
            _check_file_name(name, file)
        for file, data in files.items():  # each write is atomic; the row lists them afterwards
            write_bytes(self.model_version_path(name, version, file), data, home=self.home)
        with self._write() as conn:
            row = conn.execute(
                select(t.model_versions.c.files)
                .where(t.model_versions.c.name == name, t.model_versions.c.version == version)
                .with_for_update()  # one attach at a time re-signs the version
            ).first()
            if row is None:
                raise NotFoundError(f"Model version {current.ref} was deleted meanwhile.")
            self._sign_attached(current.ref, name, version, files)
            listed = sorted(set(json.loads(row.files)) | set(files))
            conn.execute(
                update(t.model_versions)
                .where(t.model_versions.c.name == name, t.model_versions.c.version == version)
                .values(files=json.dumps(listed))
            )
            self._audit(conn, actor, "attach_files", name, version, files=sorted(files))
        return self.get_model_version(name, version)

    def _sign_attached(self, ref: str, name: str, version: int, files: Mapping[str, bytes]) -> None:
        """Re-sign a signed version with ``files`` added: the entries of its verified manifest,
        with these files' digests (an unsigned version stays unsigned: signing now would vouch
        for files nobody checked)."""
        path = self.model_version_path(name, version, SIGNATURE_FILE)
        if not path.is_file() or not signing_enabled():
            return
        manifest = read_manifest(self.home, read_bytes(path), ref)  # SignatureError if forged
        entries = {**manifest["files"], **{f: file_digest(d) for f, d in files.items()}}
        atomic_write_bytes(path, sign_manifest(self.home, name, version, entries))

    @staticmethod
    def _next_version(conn: Connection, name: str) -> int:
        """One more than any version this model has had since it was (re)created: a deleted
        version's number is never reused, so ``name:3`` always meant the same weights."""
        a = t.audit_log
        created = (
            select(func.coalesce(func.max(a.c.id), 0))
            .where(a.c.model == name, a.c.action == "delete_model")
            .scalar_subquery()
        )
        issued = conn.execute(
            select(func.max(a.c.version)).where(
                a.c.model == name, a.c.action == "create_version", a.c.id > created
            )
        ).scalar()
        current = conn.execute(
            select(func.max(t.model_versions.c.version)).where(t.model_versions.c.name == name)
        ).scalar()
        return max(int(issued or 0), int(current or 0)) + 1

    @staticmethod
    def _require_model(conn: Connection, name: str) -> None:
        if conn.execute(select(t.models.c.name).where(t.models.c.name == name)).first() is None:
            known = [r[0] for r in conn.execute(select(t.models.c.name))]
            raise NotFoundError(
                f"No registered model '{name}'.{did_you_mean(name, known)} List models with `danlu models ls`."
            )

    def get_model_version(
        self, name: str, version: int | None = None, *, alias: str | None = None
    ) -> ModelVersion:
        validate_model_name(name)
        with self._read() as conn:
            self._require_model(conn, name)
            aliases = self._aliases(conn, name)
            if alias is not None:
                if alias not in aliases:
                    raise NotFoundError(
                        f"Model '{name}' has no alias '{alias}'.{did_you_mean(alias, list(aliases))} Its aliases: {', '.join(aliases) or 'none'}."
                    )
                version = aliases[alias]
            query = select(t.model_versions).where(t.model_versions.c.name == name)
            query = (
                query.where(t.model_versions.c.version == version)
                if version is not None
                else query.order_by(t.model_versions.c.version.desc()).limit(1)
            )
            row = conn.execute(query).first()
            if row is None:
                raise NotFoundError(
                    f"Model '{name}' has no version {version}."
                    if version is not None
                    else f"Model '{name}' has no versions."
                )
            return self._version(row, aliases)

    def list_models(self) -> list[RegisteredModel]:
        with self._read() as conn:
            latest = (
                select(
                    t.model_versions.c.name, func.max(t.model_versions.c.version).label("latest")
                )
                .group_by(t.model_versions.c.name)
                .subquery()
            )
            rows = conn.execute(
                select(t.models, latest.c.latest)
                .outerjoin(latest, latest.c.name == t.models.c.name)
                .order_by(t.models.c.name)
            ).all()
            return [
                RegisteredModel(
                    r.name, r.created_at, r.description, r.latest or 0, self._aliases(conn, r.name)
                )
                for r in rows
            ]

    def list_model_versions(self, name: str) -> list[ModelVersion]:
        validate_model_name(name)
        with self._read() as conn:
            self._require_model(conn, name)
            aliases = self._aliases(conn, name)
            rows = conn.execute(
                select(t.model_versions)
                .where(t.model_versions.c.name == name)
                .order_by(t.model_versions.c.version)
            ).all()
        return [self._version(r, aliases) for r in rows]

    def set_alias(self, name: str, alias: str, version: int, *, actor: str = "danlu") -> None:
        validate_model_name(alias)
        if alias.isdigit():
            raise StoreError(
                f"Alias '{alias}' would be confused with a version number; use a name like 'production'."
            )
        self.get_model_version(name, version)
        with self._write() as conn:
            previous = self._aliases(conn, name).get(alias)
            conn.execute(
                delete(t.model_aliases).where(
                    t.model_aliases.c.name == name, t.model_aliases.c.alias == alias
                )
            )
            conn.execute(insert(t.model_aliases).values(name=name, alias=alias, version=version))
            self._audit(conn, actor, "set_alias", name, version, alias=alias, previous=previous)

    def delete_alias(self, name: str, alias: str, *, actor: str = "danlu") -> None:
        version = self.get_model_version(name, alias=alias).version
        with self._write() as conn:
            conn.execute(
                delete(t.model_aliases).where(
                    t.model_aliases.c.name == name, t.model_aliases.c.alias == alias
                )
            )
            self._audit(conn, actor, "delete_alias", name, version, alias=alias)

    def delete_model(self, name: str, version: int | None = None, *, actor: str = "danlu") -> None:
        self.get_model_version(name, version)
        what = f"model {name}" if version is None else f"model version {name}:{version}"
        parts = (name,) if version is None else (name, str(version))
        folder = folder_to_delete(what, self.model_root, *parts)
        with self._write() as conn:
            if version is None:
                conn.execute(delete(t.model_aliases).where(t.model_aliases.c.name == name))
                conn.execute(delete(t.model_versions).where(t.model_versions.c.name == name))
                conn.execute(delete(t.models).where(t.models.c.name == name))
                self._audit(conn, actor, "delete_model", name, None)
            else:
                conn.execute(
                    delete(t.model_aliases).where(
                        t.model_aliases.c.name == name, t.model_aliases.c.version == version
                    )
                )
                conn.execute(
                    delete(t.model_versions).where(
                        t.model_versions.c.name == name, t.model_versions.c.version == version
                    )
                )
                self._audit(conn, actor, "delete_version", name, version)
        shutil.rmtree(folder, ignore_errors=True)

    def audit_log(self, name: str | None = None) -> list[AuditEntry]:
        query = select(t.audit_log).order_by(t.audit_log.c.id)
        if name is not None:
            query = query.where(t.audit_log.c.model == name)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            AuditEntry(r.id, r.time, r.actor, r.action, r.model, r.version, json.loads(r.detail))
            for r in rows
        ]

    def prune_bases(self, *, min_age_s: float = 3600.0) -> list[str]:
        """Delete the kept base models that no registered version refers to; returns their
        hashes. A base younger than ``min_age_s`` stays (a registration may be about to refer
        to it). A version whose model.json cannot be read stops the pruning (StoreError):
        its base might be in use."""
        root = self.artifact_root / BASES_FOLDER
        if not root.is_dir():
            return []
        with self._read() as conn:
            rows = conn.execute(select(t.model_versions.c.name, t.model_versions.c.version)).all()
        used: set[str] = set()
        for row in rows:
            path = self.model_version_path(row.name, row.version, "model.json")
            if not path.is_file():
                continue  # not a model with a card (files registered by hand)
            try:
                card = json.loads(read_bytes(path))
            except (OSError, ValueError) as exc:
                raise StoreError(
                    f"Cannot read the model card of {row.name}:{row.version} ({exc}), so it is "
                    "unknown whether it uses a kept base model; nothing was pruned."
                ) from None
            base = card.get("base") if isinstance(card, dict) else None
            if isinstance(base, dict) and isinstance(base.get("sha256"), str):
                used.add(base["sha256"])
        removed = []
        now = time.time()
        for entry in sorted(root.iterdir()):
            if entry.name.startswith(".") or entry.name in used or not entry.is_dir():
                continue
            if now - entry.stat().st_mtime < min_age_s:
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
        return removed


def _check_file_name(model: str, file: str) -> None:
    validate_artifact_name(file)
    if file == SIGNATURE_FILE:
        raise StoreError(
            f"'{SIGNATURE_FILE}' is the name of model {model}'s signature, which the registry "
            "writes itself; give the file another name."
        )
