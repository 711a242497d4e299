"""Encryption at rest of artifacts and model files (AES-256-GCM, opt-in).

A store is encrypted once a process with a key writes to it: the key comes from
``DANLU_ENCRYPTION_KEY`` (base64 of 32 bytes) or from the file named by
``DANLU_ENCRYPTION_KEY_FILE`` (holding that base64 text), and the first encrypted write leaves a
marker, ``$DANLU_HOME/.danlu-encryption.json``, with the key's id. From then on every write to
the store's artifacts and model files needs that key: without it (or with another key) the write
is refused before anything reaches the disk, so a forgotten ``export`` never leaves a plaintext
model beside encrypted ones. Files written before encryption was turned on stay readable (they
do not start with the magic bytes).

File format (version 1)::

    header  = b"DANLUENC" | version (1 byte) | key id (8 bytes) | chunk size (4 bytes, BE)
              | file nonce (16 random bytes)
    records = one per chunk of the plaintext (at least one, the last may be shorter):
              nonce (12 random bytes) | AES-GCM ciphertext of the chunk | tag (16 bytes)

Each record's associated data is ``header | chunk index (8 bytes) | final flag (1 byte)``, so a
record moved to another place or another file, a dropped last record (truncation) or any
changed byte fails authentication. The key id (the first 8 bytes of a SHA-256 of the key) names
a wrong key as wrong instead of as damage. Chunks keep memory flat: writing holds the plaintext
and one chunk, reading the plaintext and one chunk.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import json
import os
import struct
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from danlu.errors import ConfigError, MissingExtraError, StoreError
from danlu.store._atomic import atomic_write_bytes, atomic_write_chunks
from danlu.types import StrPath

__all__ = [
    "CHUNK_SIZE",
    "KEY_ENV",
    "KEY_FILE_ENV",
    "MARKER",
    "EncryptionError",
    "EncryptionKey",
    "decrypt_bytes",
    "encrypt_bytes",
    "encrypt_in_place",
    "generate_key",
    "is_encrypted",
    "iter_plaintext",
    "load_key",
    "plaintext_digest",
    "plaintext_size",
    "read_bytes",
    "read_text",
    "store_key_id",
    "write_bytes",
    "write_key_file",
]

KEY_ENV = "DANLU_ENCRYPTION_KEY"
KEY_FILE_ENV = "DANLU_ENCRYPTION_KEY_FILE"
#: the file in the store's home that says its files are encrypted, and under which key
MARKER = ".danlu-encryption.json"
MAGIC = b"DANLUENC"
VERSION = 1
#: plaintext bytes per record (4 MiB: a few records for most models, ~0.2% of overhead time)
CHUNK_SIZE = 4 << 20
_HEADER = struct.Struct(">8sB8sI16s")  # magic, version, key id, chunk size, file nonce
_NONCE = 12
_TAG = 16
_FIX = (
    "set DANLU_ENCRYPTION_KEY to its base64 key, or DANLU_ENCRYPTION_KEY_FILE to a file holding it"
)


class EncryptionError(StoreError):
    """An encrypted file cannot be read or written: no key, the wrong key, or damage."""


@dataclass(frozen=True)
class EncryptionKey:
    """A 256-bit AES key and where it came from (for messages; the secret is never shown)."""

    secret: bytes = field(repr=False)
    source: str = field(compare=False)

    @property
    def key_id(self) -> str:
        """16 hex digits naming the key (a hash: it tells keys apart, it does not reveal one)."""
        return _key_id(self.secret).hex()


def _key_id(secret: bytes) -> bytes:
    return hashlib.sha256(b"danlu-encryption-key-id\0" + secret).digest()[:8]


def _aesgcm(secret: bytes) -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:  # pragma: no cover - the [security] extra installs it
        raise MissingExtraError.for_package("cryptography", "security") from None
    return AESGCM(secret)


# -- keys ------------------------------------------------------------------------------------------
def generate_key() -> str:
    """A fresh random key as base64 text (what ``DANLU_ENCRYPTION_KEY`` takes).

    Example:
        >>> len(base64.b64decode(generate_key()))
        32
    """
    return base64.b64encode(os.urandom(32)).decode("ascii")


def _parse_key(text: str, source: str) -> EncryptionKey:
    try:
        secret = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        try:  # the URL-safe alphabet is accepted too
            secret = base64.urlsafe_b64decode(text.strip())
        except (binascii.Error, ValueError):
            secret = b""
    if len(secret) != 32:
        raise ConfigError(
            f"The encryption key in {source} is not base64 of 32 bytes (AES-256). Make one with "
            "`danlu db encryption-key`."
        )
    return EncryptionKey(secret, source)


def load_key(environ: Mapping[str, str] | None = None) -> EncryptionKey | None:
    """The key set in the environment, or None when encryption is not asked for.

    ``DANLU_ENCRYPTION_KEY`` holds the base64 key itself; ``DANLU_ENCRYPTION_KEY_FILE`` names a
    file holding it. Setting both is an error (which one is meant?), as is a malformed key or a
    key file that cannot be read.

    Example:
        >>> load_key({}) is None
        True
        >>> len(load_key({"DANLU_ENCRYPTION_KEY": "A" * 43 + "="}).key_id)
        16
    """
    env = os.environ if environ is None else environ
    text, name = env.get(KEY_ENV, ""), env.get(KEY_FILE_ENV, "")
    if text and name:
        raise ConfigError(
            f"Both {KEY_ENV} and {KEY_FILE_ENV} are set; set only one of them (the key, or the "
            "file holding it)."
        )
    if text:
        return _parse_key(text, KEY_ENV)
    if name:
        try:
            content = Path(name).read_text(encoding="ascii")
        except (OSError, UnicodeError) as exc:
            raise ConfigError(
                f"{KEY_FILE_ENV} names '{name}', which cannot be read ({exc}). Point it at the "
                "key file `danlu db encryption-key --output FILE` wrote."
            ) from None
        return _parse_key(content, f"the key file '{name}' ({KEY_FILE_ENV})")
    return None


def write_key_file(path: StrPath) -> EncryptionKey:
    """Create ``path`` holding a fresh key, readable by its owner only (mode 0600).

    An existing file is never overwritten (it may hold the only copy of a key in use).

    Example:
        >>> import tempfile, pathlib
        >>> key = write_key_file(pathlib.Path(tempfile.mkdtemp()) / "danlu.key")
        >>> len(key.key_id)
        16
    """
    path = Path(path)
    text = generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(
            f"'{path}' already exists; danlu will not overwrite a key file (it may hold the only "
            "copy of a key in use). Choose another path or remove it yourself."
        ) from None
    except OSError as exc:
        raise ConfigError(f"Cannot create the key file '{path}': {exc.strerror or exc}.") from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text + "\n")
    return _parse_key(text, f"the key file '{path}'")


# -- the store's marker ----------------------------------------------------------------------------
def store_key_id(home: StrPath) -> str | None:
    """The id of the key the store at ``home`` encrypts with, or None for a plaintext store."""
    marker = Path(home) / MARKER
    try:
        data = json.loads(marker.read_text())
        return str(data["key_id"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EncryptionError(
            f"The encryption marker '{marker}' cannot be read ({exc}); it says whether this "
            "store's files are encrypted. Restore it, or write it again as "
            '{"key_id": "<16 hex digits>"} with the id `danlu db encryption-key --show-id` prints.'
        ) from None


def _find_home(path: Path) -> Path | None:
    """The store home above ``path`` that holds an encryption marker, or None."""
    for parent in path.parents:
        if (parent / MARKER).is_file() and (
            (parent / "artifacts").is_dir() or (parent / "models").is_dir()
        ):
            return parent
    return None


def _write_key(path: Path, home: StrPath | None) -> EncryptionKey | None:
    """The key a write to ``path`` must use (None: write plaintext), checked against the store.

    Raises before anything is written when the store is encrypted and no key or another key is
    set. The first encrypted write to a store with a known ``home`` leaves its marker.
    """
    key = load_key()
    root = Path(home) if home is not None else _find_home(path)
    want = store_key_id(root) if root is not None else None
    if want is not None and key is None:
        raise EncryptionError(
            f"The store at '{root}' encrypts its artifacts and model files (key {want}), but no "
            f"encryption key is set, so '{path}' was not written: {_FIX}."
        )
    if want is not None and key is not None and key.key_id != want:
        raise EncryptionError(
            f"The store at '{root}' encrypts with key {want}, but the key in {key.source} is "
            f"{key.key_id}: the key differs, so '{path}' was not written. Set the store's key."
        )
    if key is not None and want is None and home is not None:
        atomic_write_bytes(
            Path(home) / MARKER,
            json.dumps(
                {"key_id": key.key_id, "algorithm": "AES-256-GCM", "since": time.time()}
            ).encode(),
        )
    return key


# -- the codec -------------------------------------------------------------------------------------
def _ad(header: bytes, index: int, final: bool) -> bytes:
    return header + struct.pack(">QB", index, int(final))


def _encrypted_chunks(data: bytes, key: EncryptionKey, chunk_size: int) -> Iterator[bytes]:
    aes = _aesgcm(key.secret)
    header = _HEADER.pack(MAGIC, VERSION, _key_id(key.secret), chunk_size, os.urandom(16))
    yield header
    view = memoryview(data)
    count = max(1, -(-len(view) // chunk_size))
    for index in range(count):
        nonce = os.urandom(_NONCE)
        chunk = view[index * chunk_size : (index + 1) * chunk_size]
        yield nonce + aes.encrypt(nonce, chunk, _ad(header, index, index == count - 1))


def encrypt_bytes(data: bytes, key: EncryptionKey, *, chunk_size: int = CHUNK_SIZE) -> bytes:
    """``data`` in danlu's encrypted format (the whole file, header included).

    Example:
        >>> key = load_key({"DANLU_ENCRYPTION_KEY": generate_key()})
        >>> decrypt_bytes(encrypt_bytes(b"weights", key), key)
        b'weights'
    """
    return b"".join(_encrypted_chunks(data, key, chunk_size))


@dataclass(frozen=True)
class _Layout:
    header: bytes
    key_id: str
    chunk_size: int
    records: int
    plain_size: int


def _layout(head: bytes, total: int, name: str) -> _Layout:
    """Parse and check a header against the file's size (``total`` bytes)."""
    if len(head) < _HEADER.size:
        raise EncryptionError(f"'{name}' is an encrypted file cut short inside its header.")
    magic, version, key_id, chunk_size, _ = _HEADER.unpack(head[: _HEADER.size])
    if magic != MAGIC:
        raise EncryptionError(f"'{name}' is not an encrypted danlu file.")
    if version != VERSION:
        raise EncryptionError(
            f"'{name}' is encrypted in format version {version}, which this danlu cannot read "
            f"(it reads version {VERSION}); upgrade danlu."
        )
    body = total - _HEADER.size
    record = _NONCE + chunk_size + _TAG
    full, rest = divmod(body, record)
    records = full + (1 if rest else 0)
    if chunk_size <= 0 or records == 0 or (rest and rest < _NONCE + _TAG):
        raise EncryptionError(
            f"'{name}' fails its integrity check: it was truncated or damaged after it was "
            "written. Restore it from a backup; danlu will not read it."
        )
    return _Layout(
        head[: _HEADER.size], key_id.hex(), chunk_size, records, body - records * (_NONCE + _TAG)
    )


def _decryptor(layout: _Layout, key: EncryptionKey | None, name: str) -> Any:
    if key is None:
        raise EncryptionError(
            f"'{name}' is encrypted (key {layout.key_id}) and no encryption key is set: {_FIX}."
        )
    if key.key_id != layout.key_id:
        raise EncryptionError(
            f"'{name}' was encrypted with key {layout.key_id}, but the key in {key.source} is "
            f"{key.key_id}: the key differs. Set the key this store was encrypted with."
        )
    return _aesgcm(key.secret)


def _records(
    handle: IO[bytes], layout: _Layout, key: EncryptionKey | None, name: str
) -> Iterator[bytes]:
    """Decrypt the records that follow the header in ``handle``, one plaintext chunk each."""
    from cryptography.exceptions import InvalidTag

    aes = _decryptor(layout, key, name)
    record = _NONCE + layout.chunk_size + _TAG
    for index in range(layout.records):
        raw = handle.read(record)
        final = index == layout.records - 1
        try:
            yield aes.decrypt(raw[:_NONCE], raw[_NONCE:], _ad(layout.header, index, final))
        except InvalidTag:
            raise EncryptionError(
                f"'{name}' fails its integrity check at chunk {index + 1} of {layout.records}: "
                "it was truncated, damaged or altered after it was written. Restore it from a "
                "backup; danlu will not read it."
            ) from None


def decrypt_bytes(blob: bytes, key: EncryptionKey | None, *, name: str = "data") -> bytes:
    """The plaintext of an encrypted file's bytes; EncryptionError for no key, a wrong key or
    damage (never wrong bytes).

    Example:
        >>> key = load_key({"DANLU_ENCRYPTION_KEY": generate_key()})
        >>> decrypt_bytes(encrypt_bytes(b"", key), key)
        b''
    """
    layout = _layout(blob[: _HEADER.size], len(blob), name)
    handle = io.BytesIO(blob)
    handle.seek(_HEADER.size)
    return b"".join(_records(handle, layout, key, name))


def is_encrypted(path: StrPath) -> bool:
    """True when the file at ``path`` is in danlu's encrypted format (it starts with the magic).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a"; _ = p.write_bytes(b"{}")
        >>> is_encrypted(p)
        False
    """
    with open(path, "rb") as handle:
        return handle.read(len(MAGIC)) == MAGIC


@contextlib.contextmanager
def _open(path: StrPath) -> Iterator[tuple[IO[bytes], _Layout | None]]:
    """The open file and its layout (None: a plaintext file, positioned at its start)."""
    with open(path, "rb") as handle:
        head = handle.read(_HEADER.size)
        if not head.startswith(MAGIC):
            handle.seek(0)
            yield handle, None
            return
        yield handle, _layout(head, os.fstat(handle.fileno()).st_size, str(path))


def iter_plaintext(path: StrPath, *, block: int = 1 << 20) -> Iterator[bytes]:
    """The plaintext of the file at ``path`` in blocks (decrypted with the environment's key
    when it is encrypted, as it is otherwise): what a hash of a model file's content reads.

    Example:
        >>> # digest = hashlib.sha256(); [digest.update(b) for b in iter_plaintext(path)]
    """
    with _open(path) as (handle, layout):
        if layout is None:
            yield from iter(lambda: handle.read(block), b"")
        else:
            yield from _records(handle, layout, load_key(), str(path))


def plaintext_digest(path: StrPath) -> tuple[str, int]:
    """The SHA-256 (hex) and size of the plaintext of the file at ``path``.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a"; _ = p.write_bytes(b"")
        >>> plaintext_digest(p)[1]
        0
    """
    digest = hashlib.sha256()
    size = 0
    for block in iter_plaintext(path):
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


def read_bytes(path: StrPath) -> bytes:
    """The plaintext of the file at ``path``: an artifact or model file, encrypted or not.

    The file is read one record at a time into a buffer of the plaintext's size, so memory
    holds the plaintext once plus one chunk. Raises EncryptionError when it is encrypted and
    the key is missing or differs, or when it was damaged; OSError as ``Path.read_bytes`` does.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a"; _ = p.write_bytes(b"x")
        >>> read_bytes(p)
        b'x'
    """
    with _open(path) as (handle, layout):
        if layout is None:
            return handle.read()
        buffer = io.BytesIO()
        if layout.plain_size:
            # Size the buffer once: getvalue() then hands over its bytes without a copy.
            buffer.seek(layout.plain_size - 1)
            buffer.write(b"\0")
            buffer.seek(0)
        for chunk in _records(handle, layout, load_key(), str(path)):
            buffer.write(chunk)
        return buffer.getvalue()


def read_text(path: StrPath) -> str:
    """:func:`read_bytes` decoded as UTF-8."""
    return read_bytes(path).decode("utf-8")


def write_bytes(
    path: StrPath, data: bytes, *, home: StrPath | None = None, durable: bool = True
) -> Path:
    """Write an artifact or model file atomically, encrypted when the store asks for it.

    Encrypted when a key is set in the environment; refused (EncryptionError, nothing written)
    when the store (``home``, else found above ``path``) is encrypted and the key is missing or
    differs. The first encrypted write with a ``home`` marks that store as encrypted.

    Example:
        >>> import tempfile, pathlib
        >>> p = write_bytes(pathlib.Path(tempfile.mkdtemp()) / "a.json", b"{}")
        >>> read_bytes(p)
        b'{}'
    """
    path = Path(path)
    key = _write_key(path, home)
    if key is None:
        return atomic_write_bytes(path, data, durable=durable)
    return atomic_write_chunks(path, _encrypted_chunks(data, key, CHUNK_SIZE), durable=durable)


def encrypt_in_place(path: StrPath, *, home: StrPath | None = None) -> bool:
    """Encrypt a plaintext file a stage wrote itself, when the store asks for encryption;
    True when it did. An encrypted file, or a plaintext store, is left as it is."""
    path = Path(path)
    if is_encrypted(path):
        return False
    key = _write_key(path, home)
    if key is None:
        return False
    write_bytes(path, path.read_bytes(), home=home)
    return True


def plaintext_size(path: StrPath) -> int:
    """The size of the file's plaintext in bytes, from its header and size alone (no key is
    needed): what a check of a model file's size against its export record compares.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a"; _ = p.write_bytes(b"abc")
        >>> plaintext_size(p)
        3
    """
    with _open(path) as (handle, layout):
        return os.fstat(handle.fileno()).st_size if layout is None else layout.plain_size
