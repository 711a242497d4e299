"""Signed model versions: an Ed25519 signature over every file's SHA-256, kept beside the files.

Every version the registry creates is signed as it is written, and signed again when files are
attached to it later (an ONNX export, a newer trust report): ``signature.json`` in the version's
folder holds a canonical JSON *manifest* — the model's name and version, each file's sha256 and
size, the signer's key id and the time — and the Ed25519 signature of exactly those bytes.
Verifying a version needs only public keys: the signature must come from a trusted key, and every
file must still hash to what the manifest says, with no file missing and none added.

Where the keys live:

- **The signing key** (private): the PEM file ``$DANLU_SIGNING_KEY_FILE`` names, else
  ``$DANLU_HOME/keys/signing.key``, created on first use (mode 0600; two processes creating it
  at once end up with the same key, never two).
- **The trusted public keys**: ``*.pub`` files (PEM) in ``$DANLU_TRUSTED_KEYS`` (a folder kept
  outside the store, for a store others can write to), else in ``$DANLU_HOME/keys/trusted/``,
  where signing records the signer's public key.

Files are hashed as the store returns them (plaintext), so a version keeps its signature
whichever way its files are stored. Imports ``cryptography`` lazily (the ``security`` extra).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from danlu.errors import MissingExtraError, StoreError
from danlu.logging import get_logger
from danlu.store._atomic import atomic_write_bytes

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    from danlu.store._entities import ModelVersion
    from danlu.store.base import Store

__all__ = [
    "KEY_FILE_ENV",
    "SIGNATURE_FILE",
    "SIGNING_ENV",
    "TRUSTED_KEYS_ENV",
    "SignatureError",
    "Verification",
    "file_digest",
    "key_id",
    "sign_manifest",
    "signing_enabled",
    "signing_key",
    "trusted_keys",
    "verify_files",
    "verify_version",
]

log = get_logger(__name__)

SIGNATURE_FILE = "signature.json"
KEY_FILE_ENV = "DANLU_SIGNING_KEY_FILE"
TRUSTED_KEYS_ENV = "DANLU_TRUSTED_KEYS"
SIGNING_ENV = "DANLU_SIGNING"  # "off": register versions unsigned
FORMAT = "danlu.signature"
_KEYS_FOLDER = "keys"
_warned_missing = False


class SignatureError(StoreError):
    """A version's signature does not hold: a file changed, is missing or was added, the
    signature is not from a trusted key, or the version is unsigned."""


def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise MissingExtraError.for_package("cryptography", "security") from None
    return ed25519


def signing_enabled() -> bool:
    """True unless ``$DANLU_SIGNING`` is ``off`` or ``cryptography`` is not installed (then
    versions are registered unsigned, with a warning once)."""
    global _warned_missing
    if os.environ.get(SIGNING_ENV, "").strip().lower() in ("off", "0", "false", "no"):
        return False
    try:
        _ed25519()
    except MissingExtraError:
        if not _warned_missing:
            log.warning(
                "Model versions are registered unsigned: signing needs the 'cryptography' "
                "package (pip install 'danlu[security]')."
            )
            _warned_missing = True
        return False
    return True


def file_digest(data: bytes) -> dict[str, Any]:
    """A file's manifest entry: ``{"sha256": hex, "size": bytes}``."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def canonical(manifest: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: sorted keys, no spaces, UTF-8."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _raw_public(public: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    """The first 16 hex digits of the sha256 of the raw public key."""
    return hashlib.sha256(_raw_public(public)).hexdigest()[:16]


def _public_pem(public: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _load_private(path: Path, where: str) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization

    ed25519 = _ed25519()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StoreError(
            f"Cannot read the signing key {where} '{path}': {exc.strerror or exc}. Point "
            f"${KEY_FILE_ENV} at a readable Ed25519 private key (PEM), or unset it to use the "
            "store's own key."
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise StoreError(
            f"The signing key {where} '{path}' is not an unencrypted PEM private key ({exc}). "
            "Make one with: openssl genpkey -algorithm ed25519 -out signing.key"
        ) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise StoreError(
            f"The signing key {where} '{path}' is a {type(key).__name__}, not Ed25519. Make one "
            "with: openssl genpkey -algorithm ed25519 -out signing.key"
        )
    private: Ed25519PrivateKey = key
    return private


def _create_key_once(path: Path) -> None:
    """Write a new private key to ``path`` unless one is there: written to a 0600 temp file,
    fsynced, then hard-linked into place (which fails when another process got there first,
    whose key then stands)."""
    from cryptography.hazmat.primitives import serialization

    key = _ed25519().Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(path.parent, 0o700)
    fd, tmp = tempfile.mkstemp(prefix=".signing.", suffix=".tmp", dir=path.parent)  # 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return
        log.info("Created the store's model signing key %s (key id %s).", path, _id(key))
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _id(key: Ed25519PrivateKey) -> str:
    return key_id(key.public_key())


def signing_key(home: Path) -> Ed25519PrivateKey:
    """The private key versions are signed with: ``$DANLU_SIGNING_KEY_FILE``, else the store's
    ``keys/signing.key`` (created on first use). Raises StoreError for an unreadable key."""
    given = os.environ.get(KEY_FILE_ENV)
    if given:
        return _load_private(Path(given), f"${KEY_FILE_ENV}")
    path = home / _KEYS_FOLDER / "signing.key"
    if not path.exists():
        _create_key_once(path)
    return _load_private(path, "of the store")


def trusted_folder(home: Path) -> Path:
    """``$DANLU_TRUSTED_KEYS``, else the store's ``keys/trusted``."""
    given = os.environ.get(TRUSTED_KEYS_ENV)
    return Path(given) if given else home / _KEYS_FOLDER / "trusted"


def trust(home: Path, public: Ed25519PublicKey) -> None:
    """Record ``public`` among the store's trusted keys (no-op when ``$DANLU_TRUSTED_KEYS`` is
    set: that folder is managed by hand)."""
    if os.environ.get(TRUSTED_KEYS_ENV):
        return
    path = trusted_folder(home) / f"{key_id(public)}.pub"
    if not path.exists():
        atomic_write_bytes(path, _public_pem(public))


def trusted_keys(home: Path) -> dict[str, Ed25519PublicKey]:
    """Key id → public key of every ``*.pub`` (PEM) in :func:`trusted_folder`."""
    from cryptography.hazmat.primitives import serialization

    ed25519 = _ed25519()
    folder = trusted_folder(home)
    keys: dict[str, Ed25519PublicKey] = {}
    if not folder.is_dir():
        return keys
    for path in sorted(folder.glob("*.pub")):
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except (OSError, ValueError) as exc:
            log.warning("Skipping the trusted key %s: not a PEM public key (%s).", path, exc)
            continue
        if isinstance(key, ed25519.Ed25519PublicKey):
            keys[key_id(key)] = key
    return keys


def sign_manifest(
    home: Path, name: str, version: int, files: Mapping[str, Mapping[str, Any]]
) -> bytes:
    """``signature.json``'s bytes for version ``name:version`` of ``files`` (name → entry of
    :func:`file_digest`), signed with :func:`signing_key`, whose public key becomes trusted."""
    key = signing_key(home)
    public = key.public_key()
    trust(home, public)
    manifest = {
        "format": FORMAT,
        "model": name,
        "version": int(version),
        "files": {f: dict(files[f]) for f in sorted(files)},
        "key_id": key_id(public),
        "signed_at": time.time(),
    }
    signature = key.sign(canonical(manifest))
    document = {
        "algorithm": "ed25519",
        "manifest": manifest,
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    return json.dumps(document, indent=1, sort_keys=True).encode()


def read_manifest(home: Path, raw: bytes, ref: str) -> dict[str, Any]:
    """The manifest of ``signature.json``'s bytes, once its signature checks out against a
    trusted key. Raises SignatureError naming what is wrong."""
    from cryptography.exceptions import InvalidSignature

    where = f"Model {ref}: {SIGNATURE_FILE}"
    try:
        document = json.loads(raw)
        manifest = document["manifest"]
        signature = base64.b64decode(document["signature"], validate=True)
        if document.get("algorithm") != "ed25519" or manifest.get("format") != FORMAT:
            raise ValueError("not a danlu Ed25519 signature")
        if not isinstance(manifest.get("files"), dict):
            raise ValueError("its manifest lists no files")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SignatureError(
            f"{where} is corrupt ({exc}); the version cannot be trusted."
        ) from None
    keys = trusted_keys(home)
    public = keys.get(str(manifest.get("key_id")))
    if public is None:
        raise SignatureError(
            f"{where} was signed by key {manifest.get('key_id')}, which is not trusted here "
            f"(trusted: {', '.join(keys) or 'none'}, in {trusted_folder(home)}). Add the "
            "signer's public key there as KEY_ID.pub if it is one you trust."
        )
    try:
        public.verify(signature, canonical(manifest))
    except InvalidSignature:
        raise SignatureError(
            f"{where} does not match its signature: the manifest was changed after signing."
        ) from None
    signed = f"{manifest.get('model')}:{manifest.get('version')}"
    if signed != ref:
        raise SignatureError(
            f"{where} signs {signed}, not {ref}: it was copied from another version."
        )
    return dict(manifest)


@dataclass(frozen=True)
class Verification:
    """The outcome of checking a version against its signature.

    Attributes:
        ref: ``name:version``.
        key_id: the signer's key id.
        signed_at: when it was signed (Unix time).
        files: file → ``"ok"`` or what is wrong with it (``changed``, ``missing``,
            ``not signed``).
    """

    ref: str
    key_id: str
    signed_at: float
    files: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(status == "ok" for status in self.files.values())

    @property
    def problems(self) -> dict[str, str]:
        return {f: s for f, s in self.files.items() if s != "ok"}

    def raise_for_problems(self) -> None:
        """SignatureError naming every file that does not match the signature."""
        if self.ok:
            return
        listed = "; ".join(f"{f}: {s}" for f, s in sorted(self.problems.items()))
        raise SignatureError(
            f"Model {self.ref} does not match its signature (key {self.key_id}): {listed}. "
            "Its files changed after it was signed; register the model again from its run "
            "rather than serving these files."
        )


def _folder_files(folder: Path) -> list[str]:
    """Every file under ``folder`` (relative, ``/``-separated), links included, but not the
    signature itself."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        rel = path.relative_to(folder).as_posix()
        if rel != SIGNATURE_FILE:
            found.append(rel)
    return found


def verify_files(
    home: Path,
    ref: str,
    folder: Path,
    read: Callable[[str], bytes | None],
    listed: Iterable[str] = (),
) -> Verification:
    """Check version ``ref``'s files against its signature.

    Args:
        home: the store's home (its trusted keys).
        ref: ``name:version``.
        folder: the version's folder (for files the manifest does not list).
        read: returns a file's plaintext bytes as the store reads them, None when absent.
        listed: the files the registry lists for the version (each must be signed).

    Raises:
        SignatureError: the version is unsigned, or its signature is corrupt, untrusted or
            for another version (a file that does not match is reported in the result).
    """
    raw = read(SIGNATURE_FILE)
    if raw is None:
        raise SignatureError(
            f"Model {ref} is unsigned: it has no {SIGNATURE_FILE} (registered before signing, "
            f"with ${SIGNING_ENV}=off, or without the 'cryptography' package). Register it "
            "again to get a signed version."
        )
    manifest = read_manifest(home, raw, ref)
    files: dict[str, str] = {}
    for file, entry in sorted(manifest["files"].items()):
        try:
            data = read(file)
        except StoreError as exc:  # e.g. an encrypted file that no longer decrypts
            files[file] = f"unreadable ({exc})"
            continue
        if data is None:
            files[file] = "missing"
        elif file_digest(data) != {"sha256": entry.get("sha256"), "size": entry.get("size")}:
            files[file] = "changed"
        else:
            files[file] = "ok"
    for file in sorted({*_folder_files(folder), *listed} - set(manifest["files"])):
        files[file] = "not signed (added after signing)"
    return Verification(
        ref=ref,
        key_id=str(manifest.get("key_id")),
        signed_at=float(manifest.get("signed_at") or 0.0),
        files=files,
    )


def verify_version(store: Store, mv: ModelVersion) -> Verification:
    """Check registered version ``mv`` of ``store`` against its signature (files read through
    the store, as a server would load them).

    Raises:
        SignatureError: unsigned, or a corrupt, untrusted or misplaced signature (files that
            do not match are in the result: :meth:`Verification.raise_for_problems`).

    Example:
        >>> # verify_version(store, store.resolve("digits:3")).raise_for_problems()
    """
    home = getattr(store, "home", None)
    if home is None:
        raise StoreError(f"This store ({type(store).__name__}) keeps no signing keys.")
    home = Path(home)
    folder = store.model_version_path(mv.name, mv.version, SIGNATURE_FILE).parent
    return verify_files(home, mv.ref, folder, store.model_reader(mv), mv.files)
