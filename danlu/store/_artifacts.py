"""The artifact half of :class:`~danlu.store.SqlStore`: files written under
``$DANLU_HOME/artifacts/<run id>/`` atomically, then recorded with their size, SHA-256 and media
type in the same transaction (a row never points at a missing file). When the store encrypts
(``danlu.store._crypt``), the file on disk is encrypted and the size and SHA-256 recorded are
its plaintext's, so an artifact's identity does not depend on how it is kept.

Pretrained base models of LoRA / frozen-base versions are kept once per content hash under
``$DANLU_HOME/artifacts/bases/<sha256>/`` (a run id never looks like that: it starts with the
date), staged in a hidden folder and renamed into place whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import mimetypes
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy import Connection, delete, insert, select

from danlu.errors import NotFoundError, StoreError
from danlu.store import _tables as t
from danlu.store._connection import SqlConnection
from danlu.store._crypt import encrypt_in_place, plaintext_digest, write_bytes
from danlu.store._entities import Artifact
from danlu.store._names import safe_join, validate_artifact_name, validate_run_id

__all__ = ["BASES_FOLDER", "SqlArtifactsMixin"]

#: the folder under the artifact root holding base models by hash
BASES_FOLDER = "bases"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# What a kept base may hold: its architecture, safetensors weights, tokenizer; never a pickle.
_BASE_FILE = re.compile(
    r"^(config\.json|[A-Za-z0-9._-]+\.safetensors|model\.safetensors\.index\.json|"
    r"tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json|added_tokens\.json|"
    r"vocab\.txt|vocab\.json|merges\.txt)$"
)

_MEDIA = {
    ".safetensors": "application/vnd.safetensors",
    ".jsonl": "application/jsonl",
    ".yaml": "application/yaml",
    ".onnx": "application/onnx",
}


class SqlArtifactsMixin(SqlConnection):
    """Artifact methods of the SQL store (mixed into ``SqlStore``, which provides the rest)."""

    artifact_root: Path
    home: Path

    def artifact_path(self, run_id: str, name: str) -> Path:
        return safe_join(self.artifact_root, validate_run_id(run_id), validate_artifact_name(name))

    def _record(
        self,
        conn: Connection,
        run_id: str,
        name: str,
        path: Path,
        media_type: str | None,
        data: bytes | None = None,
    ) -> Artifact:
        if data is not None:  # the plaintext is at hand: no need to read the file back
            sha256, size = hashlib.sha256(data).hexdigest(), len(data)
        else:
            sha256, size = plaintext_digest(path)
        media = (
            media_type
            or _MEDIA.get(path.suffix)
            or mimetypes.guess_type(path.name)[0]
            or "application/octet-stream"
        )
        artifact = Artifact(run_id, name, size, sha256, media, time.time())
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
            write_bytes(path, data, home=self.home)
            try:
                return self._record(conn, run_id, name, path, media_type, data)
            except BaseException:
                if not existed:
                    path.unlink(missing_ok=True)  # no file without its row
                raise

    def record_artifact(self, run_id: str, name: str, media_type: str | None = None) -> Artifact:
        path = self.artifact_path(run_id, name)
        if not path.is_file():
            raise NotFoundError(f"Artifact file '{name}' of run '{run_id}' does not exist.")
        encrypt_in_place(path, home=self.home)  # a stage that wrote plaintext itself
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

    # -- pretrained base models, stored once per hash --------------------------------------------
    def _base_folder(self, sha256: str) -> Path:
        if not isinstance(sha256, str) or not _SHA256.match(sha256):
            raise StoreError(
                f"Invalid base model hash {sha256!r}: a sha256 is 64 lowercase hex digits."
            )
        return safe_join(self.artifact_root, BASES_FOLDER, sha256)

    def stored_base(self, sha256: str) -> Path | None:
        folder = self._base_folder(sha256)
        return folder if folder.is_dir() else None

    def store_base(
        self,
        sha256: str,
        files: Sequence[Path],
        check: Callable[[Path], None] | None = None,
    ) -> Path:
        final = self._base_folder(sha256)
        if final.is_dir():
            return final
        for file in files:
            if not _BASE_FILE.match(Path(file).name):
                raise StoreError(
                    f"'{file}' is not a file a stored base model may hold (config.json, "
                    "safetensors weights, tokenizer files; never a pickle)."
                )
        self._stale_base_stagings()
        staging = final.parent / f".staging-{sha256[:12]}-{secrets.token_hex(4)}"
        staging.mkdir(parents=True)
        try:
            for file in files:
                target = staging / Path(file).name
                shutil.copyfile(file, target)
                with open(target, "rb+") as handle:
                    os.fsync(handle.fileno())
            if check is not None:
                check(staging)
            try:
                os.replace(staging, final)
            except OSError:  # another process kept the same base meanwhile: theirs is complete
                if not final.is_dir():
                    raise
            return final
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _stale_base_stagings(self) -> None:
        """Remove staging folders of base copies that a killed process left (an hour old)."""
        folder = self.artifact_root / BASES_FOLDER
        if not folder.is_dir():
            return
        for entry in folder.iterdir():
            if entry.name.startswith(".staging-"):
                with contextlib.suppress(OSError):
                    if time.time() - entry.stat().st_mtime > 3600:
                        shutil.rmtree(entry, ignore_errors=True)
