"""Token attributions for text columns: which words pushed the model toward its prediction.

Each text column's attributions come from captum's ``LayerIntegratedGradients`` on its
encoder's token-embedding layer (``encoder.token_embedding()``): the path runs, in embedding
space, from a baseline row — every real token replaced by the padding token, special tokens
([CLS], [SEP], BOS, EOS) kept — to the row itself, while the attention mask stays the row's own
(the standard recipe for BERT-style models). A token's attribution is the sum of its
embedding's attributions; special and padding tokens keep their embedding on the whole path,
so they get exactly zero. Attributions of a row add up to the explained output at the row minus
that output at the baseline, up to the reported convergence delta.

The report shows the ``top_k`` most and least confident test rows as highlighted text: each word
(WordPiece ``##`` and BPE pieces joined back into the words of the original text, their
attributions summed) on a background whose colour says toward (red) or against (blue) the
predicted class and whose strength is the word's ``|attribution|`` over the row's largest.
Every piece of text is HTML-escaped: it comes from the data.
"""

from __future__ import annotations

import html
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from danlu.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Iterator

    import numpy as np
    import torch

    from danlu.config import ExplainConfig
    from danlu.data._text import TextEncoder
    from danlu.evaluate._context import EvalData

__all__ = ["is_text_model", "text_parts", "token_attributions", "token_section"]

logger = get_logger(__name__)

_TOKENS_PER_CALL = 8192  # embedded tokens per captum call (steps × row length): bounds memory
_DELTA_WARN = 0.05  # relative convergence delta above which the report says to add steps
_BPE_MARKS = ("Ġ", "▁")  # byte-level BPE / SentencePiece word starts


def is_text_model(model: Any) -> bool:
    """Whether ``model`` is a :class:`~danlu.models._text_nets.TextModel` (reads token ids)."""
    return all(hasattr(model, name) for name in ("spans", "encoders", "which", "head"))


def text_parts(model: Any, x: torch.Tensor) -> torch.Tensor:
    """The pooled vectors of every text column of prepared rows ``x`` (B, D) → (B, H).

    ``TextModel.forward`` is ``head(cat([text_parts(x), x[:, tabular]]))``; the tabular
    attributions hold these fixed, so the text encoders run once per row, not once per step.
    """
    import torch

    from danlu.models._text_nets import trim_to_longest

    parts = []
    for (start, stop, pad_id), k in zip(model.spans, model.which, strict=True):
        ids = x[:, start:stop].long()  # (B, L)
        ids, mask = trim_to_longest(ids, ids != pad_id)  # (B, T)
        parts.append(model.encoders[k](ids, mask))  # (B, H_k)
    return torch.cat(parts, 1)


def _router(inner: torch.nn.Module, wanted: int, calls: int) -> Any:
    """A module that stands in for an encoder's token-embedding layer while one text column is
    explained.

    Its encoder embeds ``calls`` text columns per forward; the ``wanted``-th call goes through
    the real layer (``inner``, where captum's hook sits) and embeds ``replacement`` (captum's
    ids: the row's or the baseline's) cut to the batch's trimmed length. The other columns'
    calls run ``inner.forward`` directly, out of the hook's sight.
    """
    import torch

    class Router(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner
            self.count = 0
            self.replacement: torch.Tensor | None = None  # (B, L) int64

        def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) → (B, T, E)
            index = self.count % calls
            self.count += 1
            if index != wanted or self.replacement is None:
                return self.inner.forward(ids)  # type: ignore[no-any-return]
            replaced = self.replacement[:, : ids.shape[1]].to(ids.device)  # (B, T)
            return self.inner(replaced)  # type: ignore[no-any-return]

    return Router()


@contextmanager
def _routed(encoder: torch.nn.Module, router: Any) -> Iterator[None]:
    """Put the router in place of the encoder's token-embedding layer, restoring it after."""
    layer = router.inner
    place = next((name for name, m in encoder.named_modules() if m is layer), None)
    if not place:
        raise ValueError("the text encoder's token_embedding() is not one of its modules")
    parent_name, _, attribute = place.rpartition(".")
    parent = encoder.get_submodule(parent_name) if parent_name else encoder
    setattr(parent, attribute, router)
    try:
        yield
    finally:
        setattr(parent, attribute, layer)


@dataclass
class TextAttribution:
    """One text column of one row, explained.

    Attributes:
        column: the text column.
        positions: the real (non-padding) token positions the model reads, ascending.
        ids: their token ids.
        values: their attributions (float64), special tokens at 0.
        delta: the convergence delta: attributions' sum minus (output at the row − at the
            baseline).
    """

    column: str
    positions: list[int]
    ids: list[int]
    values: list[float]
    delta: float


def token_attributions(
    data: EvalData, x: np.ndarray, targets: np.ndarray | None, config: ExplainConfig
) -> list[list[TextAttribution]]:
    """Each row's token attributions, one :class:`TextAttribution` per text column.

    Args:
        data: a text model and its data (``data.preprocessor`` knows the special tokens).
        x: prepared rows (n, D).
        targets: the output explained per row (the predicted class); None for one output.
        config: ``evaluate.explain`` (``steps``: integration steps).
    """
    import numpy as np
    import torch
    from captum.attr import LayerIntegratedGradients

    model: Any = data.model  # a TextModel
    scale = data.temperature if data.task.calibrates else 1.0
    device = torch.device(data.device)
    names = [t.name for t in data.schema.text_slices()]
    results: list[list[TextAttribution]] = [[] for _ in range(len(x))]
    model.eval()
    for column, ((start, stop, pad_id), k) in enumerate(zip(model.spans, model.which, strict=True)):
        encoder = model.encoders[k]
        users = [c for c, e in enumerate(model.which) if e == k]
        router = _router(encoder.token_embedding(), users.index(column), len(users))
        special = _special_ids(data, names[column], pad_id)

        def forward(ids: torch.Tensor, rows: torch.Tensor, router: Any = router) -> Any:
            router.replacement, router.count = ids, 0  # ids (B, L) of this column
            return model(rows) / scale  # (B, K); the mask comes from ``rows``

        lig = LayerIntegratedGradients(forward, router.inner)
        with _routed(encoder, router), torch.enable_grad():
            for i in range(len(x)):
                row = torch.as_tensor(x[i : i + 1], dtype=torch.float32, device=device)  # (1, D)
                ids = row[:, start:stop].long()  # (1, L)
                keep = torch.as_tensor(np.isin(ids.cpu().numpy(), special), device=device)
                baseline = torch.where(keep, ids, torch.full_like(ids, pad_id))  # (1, L)
                real = np.flatnonzero(ids[0].cpu().numpy() != pad_id)
                length = int(real.max()) + 1 if len(real) else 1
                per_call = max(1, min(config.steps, _TOKENS_PER_CALL // length))
                target = 0 if targets is None else int(targets[i])
                attr, delta = lig.attribute(
                    ids,
                    baselines=baseline,
                    target=target,
                    additional_forward_args=(row,),
                    n_steps=config.steps,
                    internal_batch_size=per_call,
                    return_convergence_delta=True,
                )  # attr (1, T, E)
                per_token = attr.sum(-1)[0].detach().double().cpu().numpy()  # (T,)
                values = [float(per_token[p]) if p < len(per_token) else 0.0 for p in real]
                results[i].append(
                    TextAttribution(
                        column=names[column],
                        positions=[int(p) for p in real],
                        ids=[int(ids[0, p]) for p in real],
                        values=values,
                        delta=float(delta.reshape(-1)[0]),
                    )
                )
    return results


def _encoder(data: EvalData, column: str) -> TextEncoder | None:
    pre = data.preprocessor
    encoders = getattr(pre, "text_", None) or {}
    return encoders.get(column)


def _specials(encoder: TextEncoder | None) -> set[int]:
    """The tokenizer's special tokens ([CLS], [SEP], BOS, EOS, padding ...), but not [UNK]:
    that one stands for a word of the text."""
    if encoder is None:
        return set()
    return set(encoder.special_ids) - {encoder.unk_id}


def _special_ids(data: EvalData, column: str, pad_id: int) -> np.ndarray:
    """The ids the baseline keeps: the tokenizer's special tokens and padding."""
    import numpy as np

    ids = _specials(_encoder(data, column))
    return np.array(sorted(ids | {pad_id}), dtype=np.int64)


@dataclass
class Word:
    """Consecutive tokens shown as one word, their attributions summed."""

    text: str
    attribution: float
    gap: str = " "  # what separates it from the previous word in the original text
    special: bool = False
    start: int = 0  # where it starts in the original text (joined by offsets)


def words(data: EvalData, row_text: Any, explained: TextAttribution) -> list[Word]:
    """The row's tokens joined back into words for display.

    The raw text is tokenized again: where that gives the very ids the model read, each word
    is the original text under its tokens' offsets (casing, accents and punctuation as
    written); otherwise the token strings are joined by their markers (``##`` continues a word,
    ``Ġ`` / ``▁`` start one).
    """
    encoder = _encoder(data, explained.column)
    specials = _specials(encoder)
    if encoder is not None and isinstance(row_text, str):
        from danlu.data._text import char_cap, clean_texts

        texts, _ = clean_texts([row_text], explained.column, char_cap(encoder.max_length))
        encoding = encoder.tokenizer.encode(texts[0])
        picked = [encoding.ids[p] if p < len(encoding.ids) else -1 for p in explained.positions]
        if picked == explained.ids:
            return _by_offsets(texts[0], encoding, explained)
    return _by_markers(encoder, explained, specials)


def _by_offsets(text: str, encoding: Any, explained: TextAttribution) -> list[Word]:
    out: list[Word] = []
    last_word: int | None = None
    end = 0
    for position, value in zip(explained.positions, explained.values, strict=True):
        word_id = encoding.word_ids[position]
        if word_id is None:  # [CLS], [SEP] ...: in no word of the text
            out.append(Word(encoding.tokens[position], value, " " if out else "", special=True))
            last_word = None
            continue
        low, high = encoding.offsets[position]
        if out and last_word == word_id and not out[-1].special:
            out[-1].text = text[out[-1].start : high]
            out[-1].attribution += value
        else:
            gap = text[end:low] if out and not out[-1].special else (" " if out else "")
            out.append(Word(text[low:high], value, gap, start=low))
        end = max(end, high)
        last_word = word_id
    return out


def _by_markers(
    encoder: TextEncoder | None, explained: TextAttribution, specials: set[int]
) -> list[Word]:
    marked = _uses_marks(encoder)  # byte-level BPE / SentencePiece: unmarked pieces continue
    out: list[Word] = []
    for token, value in zip(explained.ids, explained.values, strict=True):
        piece = encoder.tokenizer.id_to_token(token) if encoder is not None else None
        piece = str(token) if piece is None else str(piece)
        after_word = bool(out) and not out[-1].special
        if token in specials:
            out.append(Word(piece, value, " " if out else "", special=True))
        elif after_word and (
            piece.startswith("##") or (marked and not piece.startswith(_BPE_MARKS))
        ):
            out[-1].text += piece.removeprefix("##")
            out[-1].attribution += value
        else:
            out.append(Word(piece.lstrip("".join(_BPE_MARKS)), value, " " if out else ""))
    return out


def _uses_marks(encoder: TextEncoder | None) -> bool:
    """Whether the vocabulary marks word starts (``Ġ`` / ``▁``) rather than continuations."""
    if encoder is None:
        return False
    vocab = encoder.tokenizer.get_vocab()
    return any(token.startswith(_BPE_MARKS) for token in list(vocab)[:5000])


def _colour(value: float, bound: float) -> str:
    """Red toward the predicted class, blue against; opacity ∝ |value| / bound."""
    strength = min(1.0, abs(value) / bound) if bound > 0 else 0.0
    rgb = "214,39,40" if value > 0 else "31,119,180"
    return f"rgba({rgb},{0.85 * strength:.3f})"


def highlighted(title: str, shown: list[Word]) -> str:
    """One explained text as HTML: a title line and each word on its coloured background.

    Every piece of text (title, words, gaps) is HTML-escaped; the only markup is danlu's own.
    """
    bound = max((abs(w.attribution) for w in shown if not w.special), default=0.0)
    spans = []
    for word in shown:
        gap = html.escape(" " if word.gap and word.gap.isspace() else word.gap)
        if word.special:
            spans.append(f'{gap}<span style="color:#8a949c">{html.escape(word.text)}</span>')
            continue
        spans.append(
            f'{gap}<span style="background:{_colour(word.attribution, bound)};'
            f'border-radius:3px;padding:0 1px" title="{word.attribution:+.4g}">'
            f"{html.escape(word.text)}</span>"
        )
    return (
        '<div style="margin:6px 0 10px;max-width:1000px">'
        f'<div style="font-size:12px;color:#4a555e">{html.escape(title)}</div>'
        f'<div style="line-height:1.9">{"".join(spans)}</div></div>'
    )


def token_section(
    data: EvalData, config: ExplainConfig
) -> tuple[dict[str, Any], str | None, list[str]]:
    """The token attributions of the ``top_k`` most and least confident test rows.

    Returns:
        The JSON part (``most_confident`` / ``least_confident``: rows with their prediction,
        confidence, true value and per text column the tokens, their attributions, the words
        shown and the convergence delta), the HTML block (None when there is nothing to
        show) and notes.
    """
    import numpy as np

    explained = data.task.explain(data.test_outputs, data.y, data.schema)
    confidence = np.asarray(explained.confidence, dtype=np.float64)
    k = min(config.top_k, len(confidence))
    order = np.argsort(-confidence, kind="stable")  # most confident first
    most = [int(i) for i in order[:k]]
    least = [int(i) for i in order[::-1] if int(i) not in most][:k]
    picked = most + least
    if not picked:
        return {"most_confident": [], "least_confident": []}, None, []
    targets = None
    if data.task.output_dim(data.schema) > 1:
        targets = np.asarray(explained.targets, dtype=np.int64)[picked]
    x = np.asarray(data.x[picked], dtype=np.float32)
    attributions = token_attributions(data, x, targets, config)

    records: dict[str, list[dict[str, Any]]] = {"most_confident": [], "least_confident": []}
    blocks: list[str] = []
    deltas: list[float] = []
    for n, (row, columns) in enumerate(zip(picked, attributions, strict=True)):
        kind = "most_confident" if n < len(most) else "least_confident"
        prediction, truth = explained.predictions[row], explained.truths[row]
        texts = []
        for item in columns:
            raw = data.frame.iloc[row][item.column] if item.column in data.frame else None
            shown = words(data, raw, item)
            encoder = _encoder(data, item.column)
            tokens = [
                str(encoder.tokenizer.id_to_token(t)) if encoder is not None else str(t)
                for t in item.ids
            ]
            texts.append(
                {
                    "column": item.column,
                    "tokens": tokens,
                    "attributions": item.values,
                    "words": [w.text for w in shown],
                    "word_attributions": [w.attribution for w in shown],
                    "convergence_delta": item.delta,
                }
            )
            deltas.append(abs(item.delta) / max(1.0, abs(sum(item.values))))
            label = kind.replace("_", " ")
            title = (
                f"{label} · row {row} · {item.column} · true {truth} · predicted {prediction} "
                f"({float(confidence[row]):.3f})"
            )
            blocks.append(highlighted(title, shown))
        records[kind].append(
            {
                "row": row,
                "prediction": prediction,
                "confidence": float(confidence[row]),
                "true": truth,
                "texts": texts,
            }
        )
    notes = [
        f"Token attributions: layer integrated gradients (captum, {config.steps} steps) on each "
        "text encoder's token embeddings, from a baseline with every token replaced by padding "
        "(special tokens kept), explaining "
        f"{explained.what}; red words push toward the prediction, blue against, the strength "
        "relative to the row's strongest word. Largest convergence delta "
        f"{max(deltas):.2g} (the attributions' sum minus the output's change along the path, "
        "relative to that change or 1, whichever is larger)."
    ]
    if max(deltas) > _DELTA_WARN:
        notes.append(
            f"The path integral has not converged on every row (relative delta {max(deltas):.2g} "
            f"> {_DELTA_WARN}): raise evaluate.explain.steps (now {config.steps}) for attributions "
            "that add up."
        )
    return records, "".join(blocks), notes
