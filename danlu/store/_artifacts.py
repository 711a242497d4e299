"""The artifact half of :class:`~danlu.store.SqlStore`: files written under
``$DANLU_HOME/artifacts/<run id>/`` atomically, then recorded with their size, SHA-256 and media
type in the same transaction (a row never points at a missing file)."""

from __future__ import annotations

import hashlib
import mimetypes
import time
from pathlib import Path

from sqlalchemy import Connection, delete, insert, select

from danlu.errors import NotFoundError
from danlu.store import _tables as t
from danlu.store._atomic import atomic_write_bytes
from danlu.store._connection import SqlConnection
from danlu.store._entities import Artifact
from danlu.store._names import safe_join, validate_artifact_name, validate_run_id

__all__ = ["SqlArtifactsMixin"]

_MEDIA = {
    ".safetensors": "application/vnd.safetensors",
    ".jsonl": "application/jsonl",
    ".yaml": "application/yaml",
    ".onnx": "application/onnx",
}


class SqlArtifactsMixin(SqlConnection):
    """Artifact methods of the SQL store (mixed into ``SqlStore``, which provides the rest)."""

    artifact_root: Path

    def artifact_path(self, run_id: str, name: str) -> Path:
        return safe_join(self.artifact_root, validate_run_id(run_id), validate_artifact_name(name))

    def _record(
        self, conn: Connection, run_id: str, name: str, path: Path, media_type: str | None
    ) -> Artifact:
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
        media = (
            media_type
            or _MEDIA.get(path.suffix)
            or mimetypes.guess_type(path.name)[0]
            or "application/octet-stream"
        )
        artifact = Artifact(run_id, name, size, digest.hexdigest(), media, time.time())
        conn.execute(
            delete(t.artifacts).where(t.artifacts.c.run_id == run_id, t.artifacts.c.name == name)
        )
        conn.execute(
            insert(t.artifacts).values(
                run_id=run_id,
                name=name,
                size=size,
                sha256=artifact.sha256,
                media_type=media,
                created_at=artifact.created_at,
            )
        )
        return artifact

    def log_artifact(
        self, run_id: str, name: str, data: bytes, media_type: str | None = None
    ) -> Artifact:
        path = self.artifact_path(run_id, name)
        with self._write() as conn:
            self._require_run(conn, run_id)
            existed = path.exists()
            atomic_write_bytes(path, data)
            try:
                return self._record(conn, run_id, name, path, media_type)
            except BaseException:
                if not existed:
                    path.unlink(missing_ok=True)  # no file without its row
                raise

    def record_artifact(self, run_id: str, name: str, media_type: str | None = None) -> Artifact:
        path = self.artifact_path(run_id, name)
        if not path.is_file():
            raise NotFoundError(f"Artifact file '{name}' of run '{run_id}' does not exist.")
        with self._write() as conn:
            self._require_run(conn, run_id)
            return self._record(conn, run_id, name, path, media_type)

    def list_artifacts(self, run_id: str) -> list[Artifact]:
        with self._read() as conn:
            self._require_run(conn, run_id)
            rows = conn.execute(
                select(t.artifacts)
                .where(t.artifacts.c.run_id == run_id)
                .order_by(t.artifacts.c.name)
            ).all()
        return [
            Artifact(r.run_id, r.name, r.size, r.sha256, r.media_type, r.created_at) for r in rows
        ]
