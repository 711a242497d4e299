"""Language-model data: documents → byte-level BPE tokens → packed blocks of ``context + 1`` ids.

``task: language_model`` reads documents from a text column of any source (``builtin:bbc_news``,
a CSV / Parquet / JSONL file) or from a folder of ``.txt`` files (one document per file), keeps
those the recipe's ``language_model.where`` selects, and splits them into train / validation /
test *by document* (seeded with ``data.split.seed``): no document is in two splits, and
identical documents stay together in one, as do near-duplicates (``language_model.near_duplicates``:
documents that share most of their 8-word shingles, e.g. two versions of one news story), so
held-out text was not seen in training under another document's name.

A byte-level BPE tokenizer (Hugging Face ``tokenizers``: ``ByteLevel`` pre-tokenizer and decoder,
so any text encodes without an unknown token) is trained on the training documents only, with
one special token, :data:`LM_EOD`, which separates documents. A model fine-tuned from a base
tokenizes with the base's tokenizer instead (``tokenizer=``).

Each split's documents are concatenated as ``EOD d1 EOD d2 … dk EOD`` and cut into blocks of
``context + 1`` token ids with stride ``context`` (consecutive blocks share one token: the
last target of a block is the first input of the next), the last block right-padded. A block's
``x`` row holds its ``context + 1`` ids (float32, exact below 2**24); its ``y`` row holds, for
each of the ``context`` target tokens ``x[1:]``, the number of UTF-8 bytes it decodes to (the
end-of-document token counts one byte, a document separator; padding counts 0 and is ignored).
So perplexity is ``exp(mean NLL)`` over targets with ``y > 0`` and bits-per-byte is
``sum NLL / ln 2 / sum y``, from the model's per-token NLL and ``y`` alone.

The tokenizer travels in the :class:`~danlu.data.Preprocessor` as the tokenizer of a text
feature named :data:`LM_FEATURE` (``max_length = context + 1``): :func:`lm_tokenizer` gets it
back from a preprocessor (or a bundle / predictor holding one) for generation and serving.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from danlu.data._split import RecipeDataError
from danlu.errors import DataError
from danlu.logging import get_logger

if TYPE_CHECKING:
    from danlu.config import DataConfig, LanguageModelConfig
    from danlu.data._prepared import PreparedData
    from danlu.data._preprocessor import Preprocessor

__all__ = [
    "LM_EOD",
    "LM_FEATURE",
    "LM_SOURCE",
    "MIN_VOCAB",
    "Documents",
    "lm_eod_id",
    "lm_tokenizer",
    "load_documents",
    "near_duplicate_groups",
    "eval_stride",
    "pack_blocks",
    "prepare_lm_data",
    "read_text_folder",
    "split_documents",
    "token_bytes",
    "train_byte_bpe",
]

log = get_logger(__name__)

#: The end-of-document special token (id 0 of a tokenizer trained here).
LM_EOD = "<|endoftext|>"
#: The text feature whose tokenizer is the language model's (what a prompt is).
LM_FEATURE = "prompt"
#: The tokenizer source recorded in the schema's feature.
LM_SOURCE = "byte_bpe"
#: The smallest vocabulary: the 256 byte tokens and the end-of-document token.
MIN_VOCAB = 257
#: Bytes read per .txt file at most (a larger file is cut there, with a warning).
MAX_FILE_BYTES = 50 * 1024 * 1024
#: The columns a folder of .txt files gives each document, besides the text.
FOLDER_COLUMNS = ("path", "folder")


@dataclass(frozen=True)
class Documents:
    """The documents of a corpus, after ``where``: their texts and the rows they came from."""

    texts: list[str]
    frame: pd.DataFrame  # (n, columns) the source rows kept, aligned with texts
    source: str
    loaded: int  # documents read before where / empty ones were dropped
    empty: int  # empty or blank documents dropped


def read_text_folder(folder: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per ``.txt`` file under ``folder`` (recursively, sorted by path): columns
    ``text`` (UTF-8; invalid bytes replaced), ``path`` (relative, with ``/``) and ``folder``
    (the file's parent folder name relative to ``folder``, ``""`` at the top).

    Raises:
        DataError: no ``.txt`` file; a link whose target lies outside ``folder``; an entry that
            is not a regular file (a device, a FIFO ...). The message names ``data.source``.

    Example:
        >>> # read_text_folder("corpus/")[["path", "folder"]].head()
    """
    root = Path(folder)
    real_root = root.resolve()
    rows: list[dict[str, str]] = []
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(directory)
        for name in sorted(dirnames):  # a linked folder must stay inside the corpus
            _inside(here / name, real_root, folder)
        for name in sorted(filenames):
            path = here / name
            if not name.lower().endswith(".txt"):
                continue
            target = _inside(path, real_root, folder)
            mode = os.stat(target).st_mode
            if not stat.S_ISREG(mode):
                raise DataError(
                    f"data.source: '{path}' is not a regular file. A folder of documents holds "
                    "plain .txt files only; remove it or move it out of the folder."
                )
            with open(target, "rb") as handle:
                raw = handle.read(MAX_FILE_BYTES + 1)
            if len(raw) > MAX_FILE_BYTES:
                log.warning("%s is over %d bytes; only its start is read.", path, MAX_FILE_BYTES)
                raw = raw[:MAX_FILE_BYTES]
            relative = path.relative_to(root)
            parent = relative.parent.as_posix()
            rows.append(
                {
                    "text": raw.decode("utf-8", errors="replace"),
                    "path": relative.as_posix(),
                    "folder": "" if parent == "." else parent,
                }
            )
    if not rows:
        raise DataError(
            f"data.source: the folder '{folder}' holds no .txt file. A folder source for "
            "task: language_model holds one document per .txt file (in subfolders too); point "
            "data.source at such a folder, or at a CSV / Parquet / JSONL file with a text column."
        )
    rows.sort(key=lambda r: r["path"])
    return pd.DataFrame(rows, columns=["text", *FOLDER_COLUMNS])


def _inside(path: Path, real_root: Path, folder: object) -> Path:
    """``path`` resolved; DataError when it is a link leading outside the corpus folder."""
    real = path.resolve()
    if path.is_symlink() and not real.is_relative_to(real_root):
        raise DataError(
            f"data.source: '{path}' is a link to '{real}', outside the folder '{folder}'. "
            "The documents must lie inside the folder: copy the file in, or remove the link."
        )
    return real


def _is_text_folder(source: str) -> bool:
    path = Path(source).expanduser()
    if not path.is_dir():
        return False
    return not any(p.suffix.lower() == ".parquet" for p in path.iterdir())


def load_documents(
    data: DataConfig, config: LanguageModelConfig, frame: pd.DataFrame | None = None
) -> Documents:
    """The corpus's documents: rows of ``frame`` (when given), of a folder of ``.txt`` files,
    or of ``data.source``, filtered by ``config.where``; empty documents dropped.

    Raises:
        RecipeDataError: the text column or a ``where`` column is not in the data, a value is
            not text, or no document is left (each names its recipe key and a fix).
        DataError: the source cannot be read (see :func:`~danlu.data.load_source`,
            :func:`read_text_folder`).
    """
    from danlu.data._sources import load_source

    source = str(data.source)
    column = config.text
    if frame is not None:
        rows = frame.reset_index(drop=True)
    elif _is_text_folder(source):
        rows, column = read_text_folder(Path(source).expanduser()), "text"
    else:
        if not source.startswith("builtin:") and not Path(source).expanduser().exists():
            raise DataError(
                f"data.source: '{source}' does not exist. Point it at a CSV / Parquet / JSONL "
                "file with a text column, a folder of .txt files, or builtin:bbc_news."
            )
        try:
            rows = load_source(source, column, read=data.read).frame
        except DataError as exc:
            if f"'{column}'" in str(exc) and "not in" in str(exc):
                raise _missing_column(column, source, None) from None
            raise
    if column not in rows.columns:
        raise _missing_column(column, source, list(map(str, rows.columns)))
    loaded = len(rows)
    held = {}  # where's columns → the values they hold (for the error message)
    if config.where:
        keep = np.ones(len(rows), dtype=bool)
        for key, wanted in config.where.items():
            if key not in rows.columns:
                from danlu.registry import did_you_mean

                columns = [str(c) for c in rows.columns]
                raise RecipeDataError(
                    ("language_model", "where", key),
                    "not a column of the data",
                    key,
                    f"{did_you_mean(key, columns)} Columns: {', '.join(columns[:20])}.".strip(),
                )
            held[key] = sorted({_plain_str(v) for v in rows[key]})[:20]
            values = {str(v) for v in (wanted if isinstance(wanted, list) else [wanted])}
            keep &= np.fromiter((_plain_str(v) in values for v in rows[key]), bool, len(rows))
        rows = rows[keep].reset_index(drop=True)
    texts = [_document(v, column, i) for i, v in enumerate(rows[column].tolist())]
    nonblank = np.fromiter((bool(t.strip()) for t in texts), bool, len(texts))
    empty = int((~nonblank).sum())
    rows = rows[nonblank].reset_index(drop=True)
    texts = [t for t, ok in zip(texts, nonblank, strict=True) if ok]
    if not texts:
        if config.where:
            raise RecipeDataError(
                ("language_model", "where"),
                f"no document of the {loaded} read matches (or every match is empty)",
                config.where,
                "Use values the columns hold ("
                + "; ".join(f"{k}: {', '.join(v)}" for k, v in held.items())
                + "), or remove where.",
            )
        raise RecipeDataError(
            ("language_model", "text"),
            f"every one of the {loaded} documents is empty",
            column,
            "Name the column that holds the documents' text.",
        )
    return Documents(texts, rows, source, loaded, empty)


def _missing_column(column: str, source: str, columns: list[str] | None) -> RecipeDataError:
    shown = f" Columns: {', '.join(columns[:20])}." if columns else ""
    return RecipeDataError(
        ("language_model", "text"),
        f"the text column is not in '{source}'",
        column,
        f"Set language_model.text to the column holding the documents.{shown}",
    )


def _plain_str(value: Any) -> str:
    from danlu.data._schema import category_str

    return category_str(value)


def _document(value: Any, column: str, row: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        raise RecipeDataError(
            ("language_model", "text"),
            f"column '{column}' holds a value that is not text at row {row}",
            type(value).__name__,
            "Name a column of strings (the documents' text).",
        )
    return value


#: Words per shingle of the near-duplicate check.
SHINGLE = 8


def near_duplicate_groups(
    texts: Sequence[str], overlap: float, shingle: int = SHINGLE, common: int = 50
) -> np.ndarray:
    """A group index per text, (n,) int64 in first-appearance order: texts that share at
    least ``overlap`` of the shorter one's ``shingle``-word shingles (whitespace-split words)
    are in one group, transitively. A text of fewer words is one shingle of all of them.

    A shingle that more than ``common`` texts share (a dateline, a boilerplate sentence) does
    not count towards a pair: it says nothing about two texts being one, and skipping it keeps
    the work near-linear in the corpus.

    Example:
        >>> story = "the minister said on monday that the new rules would start in may"
        >>> near_duplicate_groups([story, "cats", story + " next year", "cats and dogs"], 0.5).tolist()
        [0, 1, 0, 2]
    """
    from collections import Counter

    words: dict[str, int] = {}
    sets: list[set[tuple[int, ...]]] = []
    for text in texts:
        ids = tuple(words.setdefault(w, len(words)) for w in text.split())
        if len(ids) < shingle:
            sets.append({ids} if ids else set())
        else:
            sets.append({ids[i : i + shingle] for i in range(len(ids) - shingle + 1)})
    index: dict[tuple[int, ...], list[int]] = {}
    for i, keys in enumerate(sets):
        for key in keys:
            index.setdefault(key, []).append(i)
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, keys in enumerate(sets):
        shared: Counter[int] = Counter()
        for key in keys:
            holders = index[key]
            if len(holders) <= common:
                shared.update(j for j in holders if j > i)
        for j, count in shared.items():
            if count >= overlap * min(len(keys), len(sets[j])):
                parent[root(j)] = root(i)
    roots = [root(i) for i in range(len(texts))]
    number: dict[int, int] = {}
    return np.asarray([number.setdefault(r, len(number)) for r in roots], dtype=np.int64)


def split_documents(
    n: int, val: float, test: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Document indices of the train, validation and test splits: a seeded shuffle cut at
    ``test`` and ``val`` shares (each at least one document when its share is positive and
    there are three documents or more; the training split keeps at least one).

    Example:
        >>> [len(s) for s in split_documents(10, 0.1, 0.2, seed=0)]
        [7, 1, 2]
    """
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = round(test * n), round(val * n)
    if n >= 3:
        n_test = max(n_test, 1) if test > 0 else 0
        n_val = max(n_val, 1) if val > 0 else 0
    while n_test + n_val >= n and (n_test or n_val):  # keep one training document
        if n_val >= n_test and n_val:
            n_val -= 1
        else:
            n_test -= 1
    return order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]


def train_byte_bpe(texts: Sequence[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` (deterministic): the 256 byte tokens,
    :data:`LM_EOD` (id 0) and merges up to ``vocab_size`` tokens.

    Example:
        >>> tok = train_byte_bpe(["a cat sat on a mat"] * 5, 300)
        >>> tok.decode(tok.encode("the cat").ids)
        'the cat'
    """
    from danlu.data._text import _tokenizers

    tk = _tokenizers()
    tokenizer = tk.Tokenizer(tk.models.BPE())
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[LM_EOD],
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer)
    return tokenizer


def lm_eod_id(tokenizer: Any) -> int:
    """The id of :data:`LM_EOD` in ``tokenizer`` (DataError when it has none)."""
    found = tokenizer.token_to_id(LM_EOD)
    if found is None:
        raise DataError(
            f"The tokenizer has no end-of-document token {LM_EOD!r}: it is not a danlu language "
            "model's tokenizer."
        )
    return int(found)


def token_bytes(tokenizer: Any) -> np.ndarray:
    """Per token id, the UTF-8 bytes it decodes to, (V,) float32: a byte-level token's
    characters are one byte each; :data:`LM_EOD` counts one (a document separator)."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    out = np.zeros(max(vocab.values()) + 1, dtype=np.float32)
    for token, i in vocab.items():
        out[i] = len(token)
    out[lm_eod_id(tokenizer)] = 1.0
    return out


def pack_blocks(
    ids: np.ndarray, weights: np.ndarray, context: int, pad_id: int, stride: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a token stream into blocks of ``context + 1`` ids, block ``i`` starting at
    ``i * stride`` (``stride`` defaults to ``context``: blocks that share one token).

    Returns ``x`` (n, context + 1) float32 ids and ``y`` (n, context) float32: ``weights`` of
    each target ``x[:, 1:]``, 0 where the last block is padded with ``pad_id`` and, with a
    ``stride`` under ``context``, on the first ``context - stride`` targets of every block after
    the first (a sliding window: those targets were scored by the block before, and each scored
    target has at least ``context - stride`` tokens of history).

    Example:
        >>> x, y = pack_blocks(np.arange(6), np.ones(6), context=2, pad_id=9)
        >>> x.tolist(), y.tolist()
        ([[0.0, 1.0, 2.0], [2.0, 3.0, 4.0], [4.0, 5.0, 9.0]], [[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
        >>> x, y = pack_blocks(np.arange(6), np.ones(6), context=4, pad_id=9, stride=2)
        >>> x.tolist(), y.tolist()
        ([[0.0, 1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, 5.0, 9.0]], [[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    """
    stride = context if stride is None else stride
    if not 1 <= stride <= context:
        raise ValueError(f"stride {stride} is not in 1..{context}")
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) < 2:
        return np.zeros((0, context + 1), np.float32), np.zeros((0, context), np.float32)
    n = 1 + math.ceil(max(0, len(ids) - 1 - context) / stride)
    total = (n - 1) * stride + context + 1
    padded = np.full(total, pad_id, dtype=np.int64)
    padded[: len(ids)] = ids
    weight = np.zeros(total, dtype=np.float32)
    weight[: len(ids)] = np.asarray(weights, dtype=np.float32)
    starts = np.arange(n)[:, None] * stride  # (n, 1)
    x = padded[starts + np.arange(context + 1)].astype(np.float32)  # (n, T+1)
    y = weight[starts + 1 + np.arange(context)]  # (n, T)
    y[1:, : context - stride] = 0.0  # scored by the block before
    return x, y


def eval_stride(config: LanguageModelConfig, context: int) -> int:
    """The held-out blocks' stride: ``language_model.eval_stride``, by default half the
    context (at least 1, at most the context).

    Example:
        >>> from danlu.config import LanguageModelConfig
        >>> eval_stride(LanguageModelConfig(), 128), eval_stride(LanguageModelConfig(eval_stride=500), 128)
        (64, 128)
    """
    stride = config.eval_stride if config.eval_stride is not None else context // 2
    return max(1, min(stride, context))


def _stream(tokenizer: Any, texts: Sequence[str], eod: int) -> np.ndarray:
    """``EOD d1 EOD d2 … EOD``: the documents' ids, each between end-of-document tokens."""
    parts: list[np.ndarray] = []
    for encoding in tokenizer.encode_batch(list(texts), add_special_tokens=False):
        parts.append(np.asarray([eod, *encoding.ids], dtype=np.int64))
    parts.append(np.asarray([eod], dtype=np.int64))  # the last document ends too
    return np.concatenate(parts) if len(parts) > 1 else np.zeros(0, dtype=np.int64)


def plain_tokenizer(tokenizer: Any) -> Any:
    """A copy of ``tokenizer`` without padding or truncation."""
    from danlu.data._text import _tokenizers

    copy = _tokenizers().Tokenizer.from_str(tokenizer.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


def lm_preprocessor(tokenizer: Any, context: int, target: str) -> Preprocessor:
    """A fitted preprocessor carrying the LM's tokenizer as the text feature
    :data:`LM_FEATURE` (``context + 1`` positions, padded with :data:`LM_EOD`)."""
    from danlu.data._preprocessor import Preprocessor
    from danlu.data._schema import Feature, FeatureSchema, encoded_columns
    from danlu.data._target import TaskRef
    from danlu.data._text import TextEncoder

    copy = plain_tokenizer(tokenizer)
    eod = lm_eod_id(copy)
    copy.enable_padding(pad_id=eod, pad_token=LM_EOD)
    encoder = TextEncoder(copy, max_length=context + 1, source=LM_SOURCE)
    feature = Feature(
        LM_FEATURE,
        "text",
        max_length=encoder.max_length,
        pad_id=encoder.pad_id,
        vocab_size=encoder.vocab_size,
        tokenizer=LM_SOURCE,
    )
    names = tuple(encoded_columns((feature,), "onehot"))
    schema = FeatureSchema(
        (feature,),
        target,
        "language_model",
        input_dim=len(names),
        encoded_names=names,
        target_kind="values",
    )
    pre = Preprocessor(
        target=target, task=TaskRef("language_model", "values"), overrides={LM_FEATURE: "text"}
    )
    pre._schema = schema
    pre.fill_, pre.center_, pre.scale_ = {}, {}, {}
    pre.text_ = {LM_FEATURE: encoder}
    return pre


def lm_tokenizer(source: Any) -> Any:
    """The language model's ``tokenizers.Tokenizer`` (no padding, no truncation) from a
    :class:`~danlu.data.Preprocessor`, anything holding one as ``.preprocessor`` (a model
    bundle, a predictor, a PreparedData), or the tokenizer's JSON string.

    Raises:
        DataError: ``source`` holds no language-model tokenizer.

    Example:
        >>> # tok = lm_tokenizer(load_model("bbc-lm@production").preprocessor)
    """
    from danlu.data._text import _tokenizers

    if isinstance(source, str):
        return plain_tokenizer(_tokenizers().Tokenizer.from_str(source))
    pre = getattr(source, "preprocessor", source)
    encoders = getattr(pre, "text_", None)
    if not isinstance(encoders, Mapping) or LM_FEATURE not in encoders:
        raise DataError(
            f"{type(source).__name__} holds no language-model tokenizer (a text feature "
            f"'{LM_FEATURE}'): it is not a model of task: language_model."
        )
    tokenizer = plain_tokenizer(encoders[LM_FEATURE].tokenizer)
    lm_eod_id(tokenizer)
    return tokenizer


def _sha(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def prepare_lm_data(
    data: DataConfig,
    config: LanguageModelConfig,
    *,
    context: int,
    frame: pd.DataFrame | None = None,
    tokenizer: Any = None,
    base: str | None = None,
) -> PreparedData:
    """The recipe's documents as packed token blocks (see the module's docstring).

    ``tokenizer``: the base model's (fine-tuning); None trains a byte-level BPE of
    ``config.vocab_size`` on the training documents.

    Raises:
        RecipeDataError: see :func:`load_documents`; a vocabulary under :data:`MIN_VOCAB`.
    """
    from danlu.data._prepared import PreparedData

    if tokenizer is None and config.vocab_size < MIN_VOCAB:
        raise RecipeDataError(
            ("language_model", "vocab_size"),
            f"a byte-level vocabulary needs the 256 bytes and the end-of-document token "
            f"({MIN_VOCAB} tokens) at least",
            config.vocab_size,
            f"Set language_model.vocab_size to {MIN_VOCAB} or more (e.g. 4096).",
        )
    docs = load_documents(data, config, frame)
    split = data.split
    # identical documents are one document: they stay in one split (as danlu's row splits keep
    # duplicate rows together), so no test text was seen in training
    unique, first, inverse = np.unique(
        np.asarray(docs.texts, dtype=object).astype(str), return_index=True, return_inverse=True
    )
    order = np.argsort(first)  # the groups in the documents' order (np.unique sorts by text)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    group_of = rank[inverse]  # (n,) group index in first-appearance order
    n_groups = len(unique)
    if config.near_duplicates is not None:  # and near-duplicates: the unique texts' groups
        near = near_duplicate_groups(
            [docs.texts[i] for i in np.sort(first)], config.near_duplicates
        )
        group_of, n_groups = near[group_of], int(near.max()) + 1 if len(near) else 0
    groups = split_documents(n_groups, split.val, split.test, split.seed)
    if config.near_duplicates is not None and len(unique) >= 3:
        empty = [n for n, g, share in zip(("validation", "test"), groups[1:],
                                          (split.val, split.test), strict=True)
                 if share > 0 and len(g) == 0]  # fmt: skip
        if empty:
            raise RecipeDataError(
                ("language_model", "near_duplicates"),
                f"near-duplicate grouping left {n_groups} group(s) of {len(unique)} distinct "
                f"documents, too few for a {' and a '.join(empty)} split",
                config.near_duplicates,
                "The documents repeat one another's text. Raise it (e.g. 0.9: only near-copies "
                "group) or set it to null (identical documents only).",
            )
    members: list[list[int]] = [[] for _ in range(n_groups)]
    for i, group in enumerate(group_of):
        members[group].append(i)
    parts = [np.asarray([i for g in part for i in members[g]], dtype=np.int64) for part in groups]
    texts = [[docs.texts[i] for i in idx] for idx in parts]
    if tokenizer is None:
        tokenizer = train_byte_bpe(texts[0], config.vocab_size)
    tokenizer = plain_tokenizer(tokenizer)
    eod = lm_eod_id(tokenizer)
    weights = token_bytes(tokenizer)
    stride = eval_stride(config, context)
    blocks, streams = [], []
    for i, split_texts in enumerate(texts):
        ids = _stream(tokenizer, split_texts, eod)
        streams.append(ids)  # training: every target once; held out: a sliding window
        blocks.append(pack_blocks(ids, weights[ids], context, eod, None if i == 0 else stride))
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = blocks
    pre = lm_preprocessor(tokenizer, context, config.text)
    decoded = tokenizer.decode_batch(x_test[:, :-1].astype(np.int64).tolist())
    test_frame = pd.DataFrame({LM_FEATURE: pd.Series(decoded, dtype=object)})
    names = ("train", "val", "test")
    report: dict[str, Any] = {
        "task": "language_model",
        "source": docs.source,
        "rows_loaded": docs.loaded,
        "documents_loaded": docs.loaded,
        "documents_empty": docs.empty,
        "documents_kept": len(docs.texts),
        "duplicates_kept_together": len(docs.texts) - len(unique),
        "near_duplicates_kept_together": len(unique) - n_groups,
        "near_duplicates": config.near_duplicates,
        "where": config.where,
        "documents": {n: len(p) for n, p in zip(names, parts, strict=True)},
        "tokens": {n: int(len(s)) for n, s in zip(names, streams, strict=True)},
        "bytes": {n: float(y.sum()) for n, (_, y) in zip(names, blocks, strict=True)},
        "rows": {n: int(len(x)) for n, (x, _) in zip(names, blocks, strict=True)},
        "context": context,
        "eval_stride": stride,
        "tokenizer": {
            "kind": LM_SOURCE,
            "vocab_size": int(tokenizer.get_vocab_size(with_added_tokens=True)),
            "trained_on": "training documents" if base is None else f"base model {base}",
        },
        "split": {"by": "document", "val": split.val, "test": split.test, "seed": split.seed},
    }
    raw = hashlib.sha256()
    for text in docs.texts:
        raw.update(hashlib.sha256(text.encode("utf-8", errors="replace")).digest())
    return PreparedData(
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=x_test,
        y_test=y_test,
        schema=pre.schema_,
        preprocessor=pre,
        raw_fingerprint=raw.hexdigest(),
        fingerprint=_sha(x_train, x_val, x_test),
        report=report,
        test_frame=test_frame,
    )
