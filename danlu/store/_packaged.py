"""A packaged model version, read as a store: what ``danlu serve --package DIR`` serves from.

``danlu package`` copies one registered version's files into ``DIR/files`` with a manifest,
``DIR/package.json``, that records the version (name, number, aliases, signature, metrics) and the
sha256 of every file. :class:`PackagedStore` reads that folder and answers the part of the
:class:`~danlu.store.Store` contract a server needs — resolving the packaged reference, reading
its files, finding a pretrained base it keeps beside them, checking API keys — so the server
runs unchanged, without a database or the registry it came from.

It is read-only: every method that would record something (runs, metrics, aliases, keys,
users, deployments) raises :class:`~danlu.errors.StoreError` saying so. Its files are checked
against the manifest when it opens: a missing, changed or extra file, or a link, is refused
before a byte of the model is loaded.

API keys come from the operator (a Kubernetes Secret mounted as a file, one key per line): any
secret of at least :data:`MIN_KEY_LENGTH` characters. They act with the ``predictor`` role on
every project: a packaged server answers predictions, metrics and drift; its admin API is
closed (it serves one version and cannot load another).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from danlu.errors import AccessDeniedError, ConfigError, NotFoundError, StoreError
from danlu.logging import get_logger
from danlu.store._entities import ApiKey, ModelVersion, Principal, RegisteredModel
from danlu.store._names import (
    parse_model_ref,
    safe_join,
    validate_artifact_name,
    validate_model_name,
)
from danlu.store._users import ACTION_HELP, PERMISSIONS, role_allows
from danlu.store.base import Store

__all__ = [
    "MANIFEST",
    "MIN_KEY_LENGTH",
    "PACKAGE_FORMAT",
    "PackagedStore",
    "file_digest",
    "packaged_version",
    "read_keys_file",
]

logger = get_logger(__name__)

MANIFEST = "package.json"
PACKAGE_FORMAT = "danlu.package"
FORMAT_VERSION = 1
FILES = "files"  # DIR/files/...: the version's files, exactly as registered (and signed)
BASES = "bases"  # DIR/bases/<sha256>/...: a pretrained base a model keeps only an adapter of
MIN_KEY_LENGTH = 32
KEY_ROLE = "predictor"
_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    """The sha256 (hex) of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_keys_file(path: str | Path) -> list[str]:
    """The API keys in ``path``: one per line; blank lines and ``#`` comments are skipped.

    Raises:
        ConfigError: the file cannot be read, holds no key, or a key shorter than
            :data:`MIN_KEY_LENGTH` characters or with spaces inside (named by line).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "keys"
        >>> _ = p.write_text("# clients\\n" + "k" * 32 + "\\n")
        >>> len(read_keys_file(p)[0])
        32
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"--keys-file '{path}' cannot be read ({exc}). Give a text file with one API key per "
            "line (in Kubernetes: the Secret's 'keys' item, mounted read-only)."
        ) from None
    keys: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if len(key) < MIN_KEY_LENGTH or any(c.isspace() for c in key):
            raise ConfigError(
                f"--keys-file '{path}', line {number}: an API key is one word of at least "
                f"{MIN_KEY_LENGTH} characters (this one has {len(key)}). Make one with: python -c "
                '"import secrets; print(secrets.token_urlsafe(32))"'
            )
        keys.append(key)
    if not keys:
        raise ConfigError(
            f"--keys-file '{path}' holds no API key. Put one key per line (at least "
            f"{MIN_KEY_LENGTH} characters each)."
        )
    return keys


def _key_id(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


class PackagedStore(Store):
    """One model version from a package folder, as a read-only store.

    Args:
        root: the package's model folder (the one holding ``package.json``).
        keys: API key secrets the server accepts (see :func:`read_keys_file`).

    Raises:
        StoreError: no manifest, a malformed one, or a file that is missing, changed, a link,
            or not listed.

    Example:
        >>> # store = PackagedStore("build/digits/model", keys=read_keys_file("/etc/danlu/keys"))
        >>> # store.resolve("digits@production").ref  # 'digits:6'
    """

    read_only = True  # the server registers no deployment and logs no requests here

    def __init__(self, root: str | Path, *, keys: Iterable[str] = ()) -> None:
        self.root = Path(root).resolve()
        # where --require-signed looks for trusted public keys: $DANLU_TRUSTED_KEYS (mounted by
        # the operator; a package never carries the keys that vouch for it)
        self.home = self.root
        self.manifest = _read_manifest(self.root)
        self.version = _version(self.manifest, self.root)
        self._check_files()
        self._keys: dict[str, ApiKey] = {}
        for number, secret in enumerate(keys, start=1):
            key_id = _key_id(secret)
            self._keys[hashlib.sha256(secret.encode()).hexdigest()] = ApiKey(
                id=key_id,
                name=f"packaged key {number}",
                scope="predict",
                prefix=secret[:4],
                created_at=self.version.created_at,
                created_by="package",
                role=KEY_ROLE,
            )

    def __repr__(self) -> str:
        return f"PackagedStore({str(self.root)!r}, {self.version.ref})"

    def close(self) -> None:
        """Nothing to close (the server's shutdown calls it on every store)."""

    # -- the one version ------------------------------------------------------------------------
    def _check_files(self) -> None:
        listed = {f"{FILES}/{file}": digest for file, digest in self.manifest["files"].items()}
        for base, files in self.manifest.get("bases", {}).items():
            for file, digest in files.items():
                listed[f"{BASES}/{base}/{file}"] = digest
        for file, digest in listed.items():
            path = safe_join(self.root, validate_artifact_name(file))
            if not path.is_file():
                raise StoreError(
                    f"The package {self.root} is missing '{file}', which its {MANIFEST} lists. "
                    "Package the version again (danlu package)."
                )
            if file_digest(path) != digest:
                raise StoreError(
                    f"The package {self.root}: '{file}' is not the file that was packaged (its "
                    "sha256 differs from the manifest's). Refusing to serve it; package the "
                    "version again."
                )
        extra = sorted(
            str(p.relative_to(self.root))
            for p in self.root.rglob("*")
            if (p.is_file() or p.is_symlink()) and str(p.relative_to(self.root)) not in listed
        )
        extra = [e for e in extra if e != MANIFEST]
        if extra:
            raise StoreError(
                f"The package {self.root} holds files its {MANIFEST} does not list: "
                f"{', '.join(extra[:5])}. A package serves exactly what was packaged; remove them "
                "or package again."
            )

    def get_model_version(
        self, name: str, version: int | None = None, *, alias: str | None = None
    ) -> ModelVersion:
        mv = self.version
        if name != mv.name:
            raise NotFoundError(
                f"This server serves the packaged model '{mv.name}' only; there is no model "
                f"{name[:100]!r} here."
            )
        if version is not None and version != mv.version:
            raise NotFoundError(
                f"The package holds version {mv.version} of '{mv.name}' only, not version "
                f"{version}."
            )
        if alias is not None and alias not in mv.aliases:
            held = ", ".join(mv.aliases) or "none"
            raise NotFoundError(
                f"The packaged '{mv.name}' was packaged under the aliases: {held}; not '{alias}'."
            )
        return mv

    def model_version_path(self, name: str, version: int, file: str) -> Path:
        self.get_model_version(validate_model_name(name), int(version))
        return safe_join(self.root, FILES, validate_artifact_name(file))

    def list_models(self) -> list[RegisteredModel]:
        mv = self.version
        return [
            RegisteredModel(
                name=mv.name,
                created_at=mv.created_at,
                description=str(self.manifest.get("description", "")),
                latest_version=mv.version,
                aliases={alias: mv.version for alias in mv.aliases},
            )
        ]

    def list_model_versions(self, name: str) -> list[ModelVersion]:
        return [self.get_model_version(name)]

    def stored_base(self, sha256: str) -> Path | None:
        if sha256 not in self.manifest.get("bases", {}):
            return None
        return safe_join(self.root, BASES, sha256)

    def model_project(self, name: str) -> str:
        return "default"

    # -- API keys -------------------------------------------------------------------------------
    def verify_api_key(self, secret: str) -> ApiKey | None:
        if not isinstance(secret, str) or len(secret) > 512:
            return None
        return self._keys.get(hashlib.sha256(secret.encode()).hexdigest())

    def has_api_keys(self, scope: str | None = None) -> bool:
        return bool(self._keys) and scope != "admin"

    def list_api_keys(self) -> list[ApiKey]:
        return list(self._keys.values())

    def has_users(self) -> bool:
        return False

    def key_principal(self, key: ApiKey, *, via: str = "http") -> Principal:
        return Principal(
            name=f"key {key.id}", key_id=key.id, key_role=key.role, key_project="*", via=via
        )

    def check_access(
        self, principal: Principal, action: str, project: str, *, subject: str = "*", **detail: Any
    ) -> Principal:
        if role_allows(principal.key_role, action):
            return principal
        self.audit_denied(principal.actor, action, subject, **detail)
        raise AccessDeniedError(
            f"A packaged server's keys may predict only; {action} ({ACTION_HELP[action]}) needs "
            f"{PERMISSIONS[action]}, which a package does not grant. Change what is served by "
            "packaging and deploying another version.",
            status=403,
        )

    def audit_denied(self, actor: str, action: str, subject: str, **detail: Any) -> None:
        logger.warning("Refused %s: %s on %s %s", actor, action, subject, detail or "")

    def record_action(
        self,
        principal: Principal | str,
        action: str,
        subject: str,
        version: int | None = None,
        **detail: Any,
    ) -> None:
        actor = principal.actor if isinstance(principal, Principal) else principal
        logger.info("%s: %s on %s %s", actor, action, subject, detail or "")

    # -- everything that records: refused --------------------------------------------------------
    def _read_only(self, what: str) -> NoReturn:
        raise StoreError(
            f"Cannot {what}: this server serves the package {self.root}, which is read-only and "
            "has no registry. Do it in the store the version came from, then package again."
        )

    def create_run(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._read_only("create a run")

    def get_run(self, run_id: str) -> NoReturn:
        raise NotFoundError(f"A packaged model has no runs; there is no run {run_id[:64]!r}.")

    def set_status(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._read_only("set a run's status")

    def heartbeat(self, run_id: str) -> NoReturn:
        self._read_only("record a heartbeat")

    def search_runs(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []

    def delete_run(self, run_id: str) -> NoReturn:
        self._read_only("delete a run")

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> NoReturn:
        self._read_only("log params")

    def log_metrics(self, run_id: str, points: Any) -> NoReturn:
        self._read_only("log metrics")

    def metric_history(self, run_id: str, key: str | None = None) -> list[Any]:
        return []

    def delete_metrics_after(self, run_id: str, step: int) -> NoReturn:
        self._read_only("delete metrics")

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> NoReturn:
        self._read_only("set tags")

    def log_artifact(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._read_only("log an artifact")

    def record_artifact(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._read_only("record an artifact")

    def artifact_path(self, run_id: str, name: str) -> NoReturn:
        raise NotFoundError(f"A packaged model has no runs; there is no run {run_id[:64]!r}.")

    def list_artifacts(self, run_id: str) -> list[Any]:
        return []

    def store_base(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._read_only("store a base model")

    def prune_bases(self, *, min_age_s: float = 3600.0) -> list[str]:
        return []

    def create_model_version(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._read_only("register a model version")

    def attach_model_files(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._read_only("attach files to a version")

    def set_alias(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._read_only("move an alias")

    def delete_alias(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._read_only("delete an alias")

    def delete_model(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._read_only("delete a model")

    def audit_log(self, name: str | None = None) -> list[Any]:
        return []

    def create_api_key(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._read_only("create an API key (a packaged server reads them from --keys-file)")

    def revoke_api_key(self, key_id: str, *, actor: str = "danlu") -> NoReturn:
        self._read_only("revoke a key (remove it from the keys file and restart)")

    def add_user(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._read_only("add a user")

    def get_user(self, name: str) -> NoReturn:
        raise NotFoundError(f"A packaged server has no users; there is no user {name[:100]!r}.")

    def list_users(self) -> list[Any]:
        return []

    def grant(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._read_only("grant a role")

    def disable_user(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._read_only("disable a user")

    def register_deployment(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._read_only("register a deployment")

    def heartbeat_deployment(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._read_only("record a deployment's heartbeat")

    def stop_deployment(self, deployment_id: str) -> NoReturn:
        self._read_only("stop a deployment")

    def list_deployments(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []


def packaged_version(root: str | Path) -> ModelVersion:
    """The version a package folder holds, from its manifest alone (its files are checked when
    a :class:`PackagedStore` opens it).

    Raises:
        StoreError: no manifest, or one that does not describe a version.
    """
    folder = Path(root).resolve()
    return _version(_read_manifest(folder), folder)


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not root.is_dir():
        raise StoreError(f"'{root}' is not a folder; give the package's model folder.")
    if not path.is_file() or path.is_symlink():
        raise StoreError(
            f"'{root}' holds no {MANIFEST}: it is not a packaged model. Make one with "
            "danlu package NAME@ALIAS --out DIR, and serve DIR/model."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path} is not readable JSON ({exc}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != PACKAGE_FORMAT:
        raise StoreError(f"{path} is not a danlu package manifest (format {PACKAGE_FORMAT!r}).")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise StoreError(
            f"{path} has format version {manifest.get('format_version')!r}; this danlu reads "
            f"version {FORMAT_VERSION}. Package the model with this danlu."
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise StoreError(f"{path} lists no files.")
    bases = manifest.get("bases", {})
    if not isinstance(bases, dict) or not all(isinstance(f, dict) for f in bases.values()):
        raise StoreError(f"{path}: 'bases' must map each base's sha256 to its files.")
    return manifest


def _version(manifest: Mapping[str, Any], root: Path) -> ModelVersion:
    model = manifest.get("model")
    try:
        if not isinstance(model, dict):
            raise TypeError("'model' is not an object")
        name = validate_model_name(model["name"])
        parse_model_ref(f"{name}:{int(model['version'])}")
        metrics = {str(k): float(v) for k, v in dict(model.get("metrics") or {}).items()}
        return ModelVersion(
            name=name,
            version=int(model["version"]),
            run_id=model.get("run_id"),
            created_at=float(model["created_at"]),
            signature=dict(model.get("signature") or {}),
            metrics={k: v for k, v in metrics.items() if math.isfinite(v)},
            tags={str(k): str(v) for k, v in dict(model.get("tags") or {}).items()},
            # as the registry lists them: the signature is beside them, not one of them
            files=tuple(sorted(set(manifest["files"]) - {"signature.json"})),
            aliases=tuple(str(a) for a in model.get("aliases") or ()),
        )
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise StoreError(f"{root / MANIFEST} does not describe a model version ({exc}).") from None
