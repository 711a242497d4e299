"""Text columns: a fitted tokenizer per column, its token ids in the encoded matrix, its statistics.

A text feature occupies ``max_length`` consecutive columns of the prepared matrix holding token
ids as float32 (exact below 2**24), truncated to ``max_length`` and right-padded with the
tokenizer's ``pad_id``. :class:`TextEncoder` owns one column's tokenizer (Hugging Face
``tokenizers``): the pretrained model's own ``tokenizer.json``, or a WordPiece / BPE vocabulary
trained on the *training* split only. Its state is the tokenizer's JSON (``to_str`` /
``from_str``), so the :class:`~danlu.data.Preprocessor` carries it with the model and a served
request is tokenized exactly as training was.

Bad input never crashes the encoder: a missing value is the empty text, ``bytes`` are decoded as
UTF-8 with invalid sequences replaced (counted and warned), a huge cell is cut to
:func:`char_cap` characters before tokenizing (memory stays bounded), and anything else that is
not a string is a :class:`~danlu.errors.DataError` naming the column and row.

Encoding a split is cached by content (``data.text.cache``, on by default): the ids of a column's
texts are kept as ``.npy`` under ``$DANLU_HOME/cache/tokens/``, keyed by the texts, the
tokenizer's JSON, ``max_length`` and the character cap (:class:`TokenCache`), so preparing the
same data again (a tuning trial, a cross-validation fold, a rerun) skips the tokenizer.

``tokenizers`` is imported inside the functions that need it: importing ``danlu.data`` stays light.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from danlu.errors import ConfigError, DataError, MissingExtraError
from danlu.logging import get_logger

if TYPE_CHECKING:
    from danlu.config import TextConfig

__all__ = ["TEXT_MODEL_TYPES", "TextEncoder", "TokenCache", "char_cap", "text_stats"]

logger = get_logger(__name__)

#: The model types that read text columns; with any other model free text stays ``ignore``.
TEXT_MODEL_TYPES = frozenset({"transformer", "text_cnn"})
#: The special tokens of a tokenizer trained here, in id order: padding is id 0.
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
#: Characters kept per token position before tokenizing (see :func:`char_cap`).
CHARS_PER_TOKEN = 32
#: Rows whose tokens the quality report counts (a seeded sample of larger data).
STATS_ROWS = 20_000
COVERAGE_WARN = 0.9  # warn when the training tokens cover less than this share of test tokens
TRUNCATED_WARN = 0.1  # warn when more than this share of texts are truncated
#: Texts an encoding must have to be cached: smaller ones tokenize in moments, and a few
#: predicted rows should not write files.
CACHE_MIN_ROWS = 100
#: The token cache's size bound: past it, the least recently used files are removed.
CACHE_MAX_BYTES = 1 << 30


def char_cap(max_length: int) -> int:
    """The characters of a cell kept before tokenizing: ``32 × max_length`` (at least 1,024).

    A token rarely spans more than a few characters, so the cap never shortens a text that
    would fit in ``max_length`` tokens, and a 1 MB cell costs no more than a short one.
    """
    return max(1024, CHARS_PER_TOKEN * max_length)


@dataclass
class TextCounts:
    """What cleaning a column's values found (see :meth:`TextEncoder.clean`)."""

    rows: int = 0
    missing: int = 0  # None / NaN: read as the empty text
    empty: int = 0  # empty or blank after reading (missing included)
    non_utf8: int = 0  # bytes (or lone surrogates) that are not valid UTF-8: replaced
    cut: int = 0  # cells longer than the character cap: cut before tokenizing
    truncated: int = 0  # texts with more tokens than max_length (cut ones included)
    cut_rows: list[int] = field(default_factory=list)  # positions of the cut cells


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:  # pragma: no cover - tokenizers ships with transformers
        raise MissingExtraError.for_package("tokenizers", "llm") from None
    return tokenizers


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


class TextEncoder:
    """One text column's tokenizer: texts → float32 token ids ``(n, max_length)``.

    Args:
        tokenizer: a ``tokenizers.Tokenizer``.
        max_length: token positions per text (special tokens included).
        source: where the tokenizer came from: ``pretrained:DIR_NAME``, ``wordpiece`` or ``bpe``.
        cache: keep encodings of at least :data:`CACHE_MIN_ROWS` texts in the
            :class:`TokenCache` (``data.text.cache``; off for an encoder rebuilt from a saved
            model, which serves a few rows at a time).

    Example:
        >>> from danlu.config import TextConfig
        >>> enc = TextEncoder.fit(["a red cat", "a blue dog"] * 5, TextConfig(max_length=6,
        ...                       tokenizer="wordpiece", vocab_size=100), column="body")
        >>> enc.encode(["a red dog"], "body").tolist() == [[2.0, *enc.ids("a red dog"), 3.0, 0.0]]
        True
    """

    def __init__(
        self, tokenizer: Any, *, max_length: int, source: str, cache: bool = False
    ) -> None:
        self.max_length = int(max_length)
        self.source = source
        self.cache = cache
        self._identity: str | None = None  # digest of the tokenizer's JSON (the cache key's part)
        self.pad_id = _pad_id(tokenizer)
        pad_token = tokenizer.id_to_token(self.pad_id) or "[PAD]"
        tokenizer.enable_truncation(self.max_length, direction="right")
        tokenizer.enable_padding(
            direction="right", pad_id=self.pad_id, pad_token=pad_token, length=self.max_length
        )
        self.tokenizer = tokenizer
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))
        unk = tokenizer.token_to_id("[UNK]")
        if unk is None:
            unk = next((tokenizer.token_to_id(t) for t in ("<unk>", "<UNK>")), None)
        self.unk_id: int | None = unk
        added = tokenizer.get_added_tokens_decoder()  # id → AddedToken
        special = {int(i) for i, token in added.items() if getattr(token, "special", False)}
        self.special_ids = frozenset(special | {self.pad_id})
        self._counter: Any = None  # the tokenizer without truncation/padding, for statistics

    # ---- fitting -------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        texts: Sequence[Any] | np.ndarray,
        config: TextConfig,
        *,
        column: str,
        tokenizer_dir: Path | None = None,
    ) -> TextEncoder:
        """The tokenizer of a text column, from its *training* values.

        ``config.tokenizer``: ``auto`` loads ``tokenizer_dir/tokenizer.json`` (the pretrained
        model's own tokenizer) when a directory is given, else trains a WordPiece; ``wordpiece``
        and ``bpe`` train one on ``texts`` (``config.vocab_size``, ``config.lowercase``).
        Training is deterministic: the same rows give the same vocabulary and ids.

        Raises:
            ConfigError: ``tokenizer_dir`` holds no ``tokenizer.json`` (or an unreadable one).
            DataError: a value is neither a string, bytes nor missing.
        """
        if config.tokenizer == "auto" and tokenizer_dir is not None:
            directory = Path(tokenizer_dir)
            tokenizer = _load_pretrained(directory)
            limit = _max_positions(directory)
            max_length = config.max_length
            if limit is not None and max_length > limit:
                logger.warning(
                    "data.text.max_length (%d) is more than the %d positions the pretrained "
                    "model in %s reads; texts of column '%s' are truncated to %d tokens.",
                    max_length,
                    limit,
                    directory,
                    column,
                    limit,
                )
                max_length = limit
            return cls(
                tokenizer,
                max_length=max_length,
                source=f"pretrained:{directory.name}",
                cache=config.cache,
            )
        cleaned, _ = clean_texts(texts, column, char_cap(config.max_length))
        kind = "bpe" if config.tokenizer == "bpe" else "wordpiece"
        tokenizer = _train(cleaned, kind, config.vocab_size, config.lowercase)
        return cls(tokenizer, max_length=config.max_length, source=kind, cache=config.cache)

    def to_str(self) -> str:
        """The tokenizer as JSON (``tokenizers``' own format): what the preprocessor saves."""
        return str(self.tokenizer.to_str())

    @classmethod
    def from_str(cls, data: str, *, max_length: int, source: str) -> TextEncoder:
        """Rebuild an encoder from :meth:`to_str`'s JSON.

        Raises:
            DataError: the JSON is not a tokenizer.
        """
        try:
            tokenizer = _tokenizers().Tokenizer.from_str(data)
        except Exception as exc:  # tokenizers raises its own Exception subclass
            raise DataError(
                f"The saved tokenizer cannot be read ({exc}). Re-export the model; do not edit "
                "the file by hand."
            ) from None
        return cls(tokenizer, max_length=max_length, source=source)

    # ---- encoding ------------------------------------------------------------------------------

    def encode(self, values: Sequence[Any] | np.ndarray, column: str) -> np.ndarray:
        """Token ids of ``values`` as float32 ``(n, max_length)``, truncated and right-padded.

        Missing values encode as the empty text (special tokens only). Truncated texts and
        bytes that are not UTF-8 are counted and logged as warnings naming ``column``.

        Raises:
            DataError: a value is neither a string, bytes nor missing (names column and row).
        """
        ids, counts = self.encode_counted(values, column)
        if counts.truncated:
            logger.warning(
                "Text column '%s': %d of %d text(s) have more than data.text.max_length (%d) "
                "tokens and were truncated%s. Raise data.text.max_length to keep more of them.",
                column,
                counts.truncated,
                counts.rows,
                self.max_length,
                f" ({counts.cut} cut to {char_cap(self.max_length)} characters first)"
                if counts.cut
                else "",
            )
        if counts.non_utf8:
            logger.warning(
                "Text column '%s': %d value(s) are not valid UTF-8; the invalid bytes were "
                "replaced by U+FFFD. Decode the source with the right data.read.encoding.",
                column,
                counts.non_utf8,
            )
        return ids

    def encode_counted(
        self, values: Sequence[Any] | np.ndarray, column: str
    ) -> tuple[np.ndarray, TextCounts]:
        """:meth:`encode` without logging: the ids and what cleaning and truncation found.

        With ``cache`` on and at least :data:`CACHE_MIN_ROWS` texts, the ids come from the
        :class:`TokenCache` when these very texts were encoded before by the same tokenizer
        (cleaning runs either way, so every count but the tokenizer's is recomputed; whether a
        text overflowed ``max_length`` is kept beside its ids)."""
        cap = char_cap(self.max_length)
        texts, counts = clean_texts(values, column, cap)
        if not texts:
            return np.empty((0, self.max_length), dtype=np.float32), counts
        cache = key = None
        if self.cache and len(texts) >= CACHE_MIN_ROWS:
            cache = TokenCache()
            key = cache.key("ids", texts, self.identity(), self.max_length, cap)
            stored = cache.get(key, len(texts), self.max_length)
            if stored is not None:
                ids, long = stored
                long[counts.cut_rows] = True
                counts.truncated = int(long.sum())
                return ids, counts
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.float32)  # (n, max_length)
        long = np.fromiter((len(e.overflowing) > 0 for e in encodings), bool, len(encodings))
        if cache is not None and key is not None:
            cache.put(key, ids, long)
        long[counts.cut_rows] = True
        counts.truncated = int(long.sum())
        return ids, counts

    def identity(self) -> str:
        """sha256 of the tokenizer's JSON (vocabulary, normalizer, truncation, padding)."""
        if self._identity is None:
            self._identity = hashlib.sha256(self.to_str().encode("utf-8")).hexdigest()
        return self._identity

    def ids(self, text: str) -> list[int]:
        """The token ids of one text without special tokens, truncation or padding."""
        return list(self._plain().encode(text, add_special_tokens=False).ids)

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each (cleaned) text's token ids, special tokens included, neither truncated nor
        padded (within the character cap): what the quality report counts. Cached as
        :meth:`encode_counted` is."""
        cache = key = None
        if self.cache and len(texts) >= CACHE_MIN_ROWS:
            cache = TokenCache()
            cap = char_cap(self.max_length)
            key = cache.key("plain", texts, self.identity(), self.max_length, cap)
            stored = cache.get_lists(key, len(texts))
            if stored is not None:
                return stored
        ids = [list(e.ids) for e in self._plain().encode_batch(list(texts))]
        if cache is not None and key is not None:
            cache.put_lists(key, ids)
        return ids

    def _plain(self) -> Any:
        if self._counter is None:
            counter = _tokenizers().Tokenizer.from_str(self.tokenizer.to_str())
            counter.no_truncation()
            counter.no_padding()
            self._counter = counter
        return self._counter


def clean_texts(
    values: Sequence[Any] | np.ndarray, column: str, cap: int
) -> tuple[list[str], TextCounts]:
    """Values as strings ready to tokenize, and what was found on the way.

    ``str`` as it is (lone surrogates replaced); ``bytes`` decoded as UTF-8 with invalid
    sequences replaced; None / NaN as ``""``; every text cut to ``cap`` characters.

    Raises:
        DataError: a value of another type (a number, a list ...), naming column and row.
    """
    counts = TextCounts(rows=len(values))
    out: list[str] = []
    for i, value in enumerate(values):
        if isinstance(value, str):
            text = value
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:  # lone surrogates (surrogateescape'd bytes)
                    text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
                    counts.non_utf8 += 1
        elif isinstance(value, bytes | bytearray | memoryview):
            raw = bytes(value)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("utf-8", "replace")
                counts.non_utf8 += 1
        elif _is_missing(value):
            text = ""
            counts.missing += 1
        else:
            shown = repr(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise DataError(
                f"Text column '{column}' holds {shown} ({type(value).__name__}) at row {i + 1}; "
                "a text field takes a string (or null for no text). Send the value as a string."
            )
        if len(text) > cap:
            text = text[:cap]
            counts.cut += 1
            counts.cut_rows.append(i)
        if not text.strip():
            counts.empty += 1
        out.append(text)
    return out, counts


# ---- the token cache -----------------------------------------------------------------------------


class TokenCache:
    """Token ids of texts on disk, keyed by content: ``DIR/<sha256>.npy``, one int32 array each.

    Two kinds of entry: an encoding (:meth:`put`) is the matrix ``(n, max_length + 1)`` of the
    ids, then 1 where the text had more than ``max_length`` tokens (what the truncation
    warning counts); the quality report's untruncated ids (:meth:`put_lists`) are one flat
    array ``[n, n lengths, the ids one text after another]``. Files are written to a temporary
    name, synced and renamed into place, so a reader never sees half a file; they are read with
    ``allow_pickle=False`` and checked (dtype, shape, flags, lengths), and a file that fails is
    ignored and written again. The folder stays under ``max_bytes``: past it the least
    recently used files go. A cache that cannot be written (read-only, disk full) only logs;
    preparing data never fails because of it.

    Args:
        directory: the folder (default ``$DANLU_HOME/cache/tokens``, ``DANLU_HOME`` defaulting
            to ``./.danlu``).
        max_bytes: the folder's size bound (default 1 GiB).

    Example:
        >>> import tempfile
        >>> cache = TokenCache(Path(tempfile.mkdtemp()))
        >>> key = cache.key("ids", ["a text"], "tokenizer-digest", 4, 1024)
        >>> cache.put(key, np.array([[2.0, 7.0, 3.0, 0.0]], dtype=np.float32), np.array([False]))
        >>> ids, long = cache.get(key, 1, 4)
        >>> ids.tolist(), long.tolist()
        ([[2.0, 7.0, 3.0, 0.0]], [False])
    """

    def __init__(self, directory: Path | None = None, max_bytes: int = CACHE_MAX_BYTES) -> None:
        home = Path(os.environ.get("DANLU_HOME", ".danlu"))
        self.directory = directory if directory is not None else home / "cache" / "tokens"
        self.max_bytes = max_bytes

    @staticmethod
    def key(kind: str, texts: Sequence[str], tokenizer: str, max_length: int, cap: int) -> str:
        """sha256 of the entry's kind, the (cleaned) texts in order, the tokenizer's digest,
        ``max_length`` and the character cap. Each text is length-prefixed, so no two lists
        share a key."""
        digest = hashlib.sha256(f"{kind}:1\x1f{tokenizer}\x1f{max_length}\x1f{cap}".encode())
        for text in texts:
            raw = text.encode("utf-8", "surrogatepass")
            digest.update(len(raw).to_bytes(8, "little"))
            digest.update(raw)
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.npy"

    def get(self, key: str, rows: int, max_length: int) -> tuple[np.ndarray, np.ndarray] | None:
        """An encoding: the ids ``(rows, max_length)`` as float32 and the overflow flags
        ``(rows,)``, or None when the file is missing or not what it should be."""
        stored = self._load(key)
        if stored is None:
            return None
        if stored.shape != (rows, max_length + 1) or not np.isin(stored[:, -1], (0, 1)).all():
            self._damaged(key)
            return None
        logger.debug("token ids of %d texts read from the cache (%s)", rows, key)
        return stored[:, :-1].astype(np.float32), stored[:, -1].astype(bool)

    def put(self, key: str, ids: np.ndarray, long: np.ndarray) -> None:
        """Store an encoding: ``ids`` (n, max_length) and the overflow flags ``long`` (n,)."""
        matrix = np.empty((len(ids), ids.shape[1] + 1), dtype=np.int32)
        matrix[:, :-1] = ids
        matrix[:, -1] = long
        self._store(key, matrix)

    def get_lists(self, key: str, rows: int) -> list[list[int]] | None:
        """Untruncated ids of ``rows`` texts, or None when missing or not what it should be."""
        stored = self._load(key)
        if stored is None:
            return None
        lengths = stored[1 : rows + 1].astype(np.int64)
        if (
            stored.ndim != 1
            or len(stored) < rows + 1
            or stored[0] != rows
            or len(lengths) != rows
            or (lengths < 0).any()
            or len(stored) != 1 + rows + int(lengths.sum())
        ):
            self._damaged(key)
            return None
        ids = stored[1 + rows :].tolist()
        bounds = np.concatenate([[0], np.cumsum(lengths)]).tolist()
        return [ids[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def put_lists(self, key: str, lists: Sequence[Sequence[int]]) -> None:
        """Store untruncated ids, one list per text."""
        lengths = [len(ids) for ids in lists]
        flat = np.empty(1 + len(lists) + sum(lengths), dtype=np.int32)
        flat[0] = len(lists)
        flat[1 : len(lists) + 1] = lengths
        flat[len(lists) + 1 :] = [t for ids in lists for t in ids]
        self._store(key, flat)

    # ---- files -------------------------------------------------------------------------------

    def _load(self, key: str) -> np.ndarray | None:
        path = self.path(key)
        try:
            stored = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as exc:
            logger.warning("Token cache file %s cannot be read (%s); tokenizing again.", path, exc)
            return None
        if not isinstance(stored, np.ndarray) or stored.dtype != np.int32 or stored.ndim > 2:
            self._damaged(key)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: the size bound removes the others first
        return stored

    def _damaged(self, key: str) -> None:
        logger.warning(
            "Token cache file %s holds something else; tokenizing again.", self.path(key)
        )
        return None

    def _store(self, key: str, array: np.ndarray) -> None:
        path = self.path(key)
        temp = self.directory / f".{key}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(temp, "wb") as f:
                np.save(f, array, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)  # atomic: a reader sees the old file or the whole new one
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            logger.warning("The token cache in %s cannot be written (%s).", self.directory, exc)
            return
        self._bound(keep=path)

    def _bound(self, keep: Path) -> None:
        """Remove the least recently used files while the folder is over ``max_bytes``."""
        files = []
        for entry in self.directory.glob("*.npy"):
            with contextlib.suppress(OSError):
                stat = entry.stat()
                files.append((stat.st_mtime, stat.st_size, entry))
        total = sum(size for _, size, _ in files)
        for _, size, entry in sorted(files, key=lambda f: f[0]):
            if total <= self.max_bytes:
                break
            if entry == keep:
                continue
            with contextlib.suppress(OSError):  # another process may have removed it already
                entry.unlink()
                total -= size


# ---- tokenizers ----------------------------------------------------------------------------------


def _pad_id(tokenizer: Any) -> int:
    padding = tokenizer.padding
    if padding is not None and padding.get("pad_id") is not None:
        return int(padding["pad_id"])
    for token in ("[PAD]", "<pad>", "<PAD>"):
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    raise DataError(
        "The tokenizer defines no padding token ([PAD] or <pad>), so texts cannot be padded to "
        "data.text.max_length. Use a tokenizer.json with a padding token, or data.text.tokenizer: "
        "wordpiece to train one on the data."
    )


def _load_pretrained(directory: Path) -> Any:
    """The pretrained model's own tokenizer (``DIR/tokenizer.json``): never downloaded."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(
            f"model.pretrained: the directory {str(directory)!r} holds no tokenizer.json, so its "
            "own tokenizer cannot tokenize the text columns. Point model.pretrained at a "
            "directory saved with save_pretrained (a fast tokenizer), or set "
            "data.text.tokenizer: wordpiece to train one on the data."
        )
    try:
        return _tokenizers().Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own Exception subclass
        raise ConfigError(
            f"model.pretrained: {str(path)!r} is not a readable tokenizer ({exc}). Save it again "
            "with the model's tokenizer.save_pretrained, or set data.text.tokenizer: wordpiece."
        ) from None


def _max_positions(directory: Path) -> int | None:
    """The longest sequence the pretrained model reads: the smaller of its tokenizer's
    ``model_max_length`` and its config's ``max_position_embeddings`` (None when neither is
    given). RoBERTa-style models offset positions by the padding id, so they read 2 fewer."""
    import json

    found: list[int] = []
    for name, key in (("tokenizer_config.json", "model_max_length"),
                      ("config.json", "max_position_embeddings")):  # fmt: skip
        try:
            value = json.loads((directory / name).read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, int) and 0 < value < 1_000_000:  # 1e30: "no limit" in HF files
            if key == "max_position_embeddings" and value % 2 == 0 and value % 128 == 2:
                value -= 2  # 514: RoBERTa's 512 positions after the padding offset
            found.append(value)
    return min(found) if found else None


def _train(texts: list[str], kind: str, vocab_size: int, lowercase: bool) -> Any:
    """A WordPiece or BPE tokenizer trained on ``texts`` (deterministic).

    Both learn BPE merges with ``tokenizers``' BpeTrainer on BERT-style words (whitespace and
    punctuation split, accents stripped and lowercased when ``lowercase``). The WordPiece
    vocabulary is the learned pieces both as word starts and as ``##`` continuations: the
    library's own WordPieceTrainer breaks ties between equally frequent merges in hash order,
    so two trainings on the same rows could learn different vocabularies, which would make a
    run unrepeatable. Each text becomes ``[CLS] … [SEP]``.
    """
    tk = _tokenizers()
    normalizer = tk.normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
    )
    pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
    bpe = tk.Tokenizer(tk.models.BPE(unk_token="[UNK]"))
    bpe.normalizer, bpe.pre_tokenizer = normalizer, pre_tokenizer
    # WordPiece holds every piece twice (word start and ## continuation): half the merges
    size = vocab_size if kind == "bpe" else max(len(SPECIALS) + 1, vocab_size // 2)
    trainer = tk.trainers.BpeTrainer(
        vocab_size=size, special_tokens=list(SPECIALS), show_progress=False
    )
    bpe.train_from_iterator(texts, trainer)
    if kind == "bpe":
        tokenizer = bpe
    else:
        learned = bpe.get_vocab()
        pieces = sorted(learned, key=learned.__getitem__)  # id order: deterministic
        vocab: dict[str, int] = {}
        for piece in pieces:
            vocab.setdefault(piece, len(vocab))
        for piece in pieces:
            if piece not in SPECIALS:
                vocab.setdefault(f"##{piece}", len(vocab))
        tokenizer = tk.Tokenizer(tk.models.WordPiece(vocab, unk_token="[UNK]"))
        tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, pre_tokenizer
        tokenizer.decoder = tk.decoders.WordPiece()
        tokenizer.add_special_tokens(list(SPECIALS))  # never split; ids kept from the vocab
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = tk.processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tokenizer


# ---- statistics for the quality report -----------------------------------------------------------


def _distribution(lengths: np.ndarray) -> dict[str, Any]:
    if lengths.size == 0:
        return {"min": None, "median": None, "p95": None, "max": None, "mean": None}
    p50, p95 = np.percentile(lengths, [50, 95])
    return {
        "min": int(lengths.min()),
        "median": float(p50),
        "p95": float(p95),
        "max": int(lengths.max()),
        "mean": round(float(lengths.mean()), 2),
    }


def text_stats(
    column: pd.Series,
    encoder: TextEncoder | None,
    *,
    train_idx: np.ndarray | None = None,
    test_idx: np.ndarray | None = None,
) -> dict[str, Any]:
    """The quality report's section on one text column (plain JSON types).

    Lengths in characters and (with a fitted ``encoder``) tokens, empty and duplicate texts,
    the share of texts longer than ``max_length`` tokens, and with both splits: how well the
    training split's tokens cover the test split's (the share of test tokens, special ones
    aside, whose id occurs in training, ``[UNK]`` never covered, and the ``[UNK]`` rate of each
    split — both language agnostic), plus the train/test shift of token lengths (PSI and KS,
    as for numbers).
    Token counts run on a seeded sample of at most 20,000 rows.
    """
    from danlu.data._quality_stats import numeric_shift, pct, sample_rows

    name = str(column.name)
    max_length = encoder.max_length if encoder is not None else 512
    values = column.tolist()
    texts, counts = clean_texts(values, name, char_cap(max_length))
    rows = len(texts)
    # lengths of the values as given (a cut cell counts whole); bytes count as bytes
    chars = np.fromiter(
        (
            len(v) if isinstance(v, str | bytes | bytearray) else len(t)
            for v, t in zip(values, texts, strict=True)
        ),
        np.int64,
        rows,
    )
    present = [t for t in texts if t.strip()]
    duplicates = len(present) - len(set(present))
    out: dict[str, Any] = {
        "name": name,
        "rows": rows,
        "empty": counts.empty,
        "empty_percent": pct(counts.empty, rows),
        "duplicates": duplicates,
        "duplicates_percent": pct(duplicates, rows),
        "non_utf8": counts.non_utf8,
        "chars": _distribution(chars),
        "tokenizer": None if encoder is None else encoder.source,
        "max_length": None if encoder is None else encoder.max_length,
        # token counts are of each text's first char_cap characters (what is tokenized)
        "char_cap": char_cap(max_length) if encoder is not None else None,
    }
    lengths_of: Any = chars  # what the shift compares: token counts when there is a tokenizer
    if encoder is not None:
        rows_idx = sample_rows(np.arange(rows), STATS_ROWS)
        ids = encoder.token_ids([texts[i] for i in rows_idx])
        tokens = np.full(rows, -1, dtype=np.int64)
        tokens[rows_idx] = [len(x) for x in ids]
        sampled = tokens[rows_idx]
        cut = np.zeros(rows, dtype=bool)
        cut[counts.cut_rows] = True
        longer = int(((sampled > encoder.max_length) | cut[rows_idx]).sum())
        out["tokens"] = _distribution(sampled)
        out["truncated"] = longer
        out["truncated_percent"] = pct(longer, len(rows_idx))
        out["sampled_rows"] = len(rows_idx)
        lengths_of = np.where(tokens >= 0, tokens, np.nan).astype(np.float64)
        if train_idx is not None and test_idx is not None:
            by_row = dict(zip(rows_idx.tolist(), ids, strict=True))
            out["vocabulary"] = _coverage(encoder, by_row, train_idx, test_idx)
    if train_idx is not None and test_idx is not None and len(train_idx) and len(test_idx):
        lengths = np.asarray(lengths_of, dtype=np.float64)
        out["length_shift"] = numeric_shift(lengths[train_idx], lengths[test_idx])
    return out


def _coverage(
    encoder: TextEncoder,
    by_row: dict[int, list[int]],
    train_idx: np.ndarray,
    test_idx: np.ndarray,
) -> dict[str, Any]:
    """Vocabulary coverage of the test split by the training split's token ids."""
    from danlu.data._quality_stats import pct

    unk = encoder.unk_id
    special = encoder.special_ids - {unk}  # [UNK] counts: a token the vocabulary lacks
    train = [t for i in train_idx if i in by_row for t in by_row[int(i)] if t not in special]
    test = [t for i in test_idx if i in by_row for t in by_row[int(i)] if t not in special]
    seen = set(train) - {unk}
    covered = sum(t in seen for t in test)
    return {
        "train_tokens": len(train),
        "train_distinct": len(seen),
        "test_tokens": len(test),
        "test_distinct": len(set(test)),
        "test_coverage_percent": pct(covered, len(test)) if test else None,
        "unk_percent_train": pct(sum(t == unk for t in train), len(train)) if train else None,
        "unk_percent_test": pct(sum(t == unk for t in test), len(test)) if test else None,
    }


def text_warnings(section: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(notes, alerts) of one column's :func:`text_stats`: empty, duplicate and truncated
    texts are notes; poor vocabulary coverage of the test split is an alert."""
    notes: list[str] = []
    alerts: list[str] = []
    name = section["name"]
    if section["empty"]:
        notes.append(
            f"Text column '{name}' has {section['empty']} empty or missing text(s) "
            f"({section['empty_percent']}%); they encode as special tokens only."
        )
    if section["duplicates_percent"] >= 5.0:
        notes.append(
            f"Text column '{name}' repeats {section['duplicates']} text(s) of other rows "
            f"({section['duplicates_percent']}%); copies are kept in one split."
        )
    if section.get("truncated_percent", 0.0) > 100 * TRUNCATED_WARN:
        notes.append(
            f"{section['truncated_percent']}% of the texts of column '{name}' have more than "
            f"data.text.max_length ({section['max_length']}) tokens and are truncated (median "
            f"{section['tokens']['median']:g} tokens); raise max_length to keep more text."
        )
    vocab = section.get("vocabulary") or {}
    coverage = vocab.get("test_coverage_percent")
    if coverage is not None and coverage < 100 * COVERAGE_WARN:
        alerts.append(
            f"Text column '{name}': the training split's tokens cover only {coverage}% of the "
            f"test split's tokens ([UNK] {vocab['unk_percent_test']}% in test, "
            f"{vocab['unk_percent_train']}% in train): the test texts use words training never "
            "saw. Check how rows were collected, or use a pretrained tokenizer."
        )
    return notes, alerts
