"""Text robustness: the headline metric when the raw test texts are perturbed as people and OCR
perturb them — character typos, dropped words, changed casing — at rising rates.

Token ids cannot be perturbed meaningfully (id 2054 + ε is no word), so each perturbed text is
tokenized again by the model's own fitted preprocessing (the tokenizer it trained with) and the
model scores the new rows. Each perturbation acts on words (runs of non-space characters) with
probability ``rate`` each, seeded, and leaves the whitespace between the words it keeps as it was:

- **typos**: one edit in the word — swap two adjacent characters, drop one, insert a letter, or
  replace one by a letter (chosen at random; a one-character word is not swapped);
- **word dropout**: the word is removed (with the whitespace after it);
- **casing**: the word becomes upper, lower or title case (chosen at random).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from danlu.evaluate._context import EvalData

__all__ = [
    "TEXT_PERTURBATIONS",
    "TEXT_RATES",
    "casing",
    "perturb_texts",
    "text_robustness",
    "typos",
    "word_dropout",
]

#: The perturbation rates measured (share of words perturbed).
TEXT_RATES = (0.0, 0.05, 0.1, 0.2, 0.3)

_WORD = re.compile(r"(\S+)")
_LETTERS = string.ascii_lowercase


def _words(text: str) -> tuple[str, list[tuple[str, str]]]:
    """``text`` as its leading whitespace and (word, whitespace after it) pairs."""
    parts = _WORD.split(text)  # [space, word, space, word, ..., space]
    return parts[0], [(parts[i], parts[i + 1]) for i in range(1, len(parts) - 1, 2)]


def _edit(word: str, rng: np.random.Generator) -> str:
    """One random character edit of ``word``: swap, drop, insert or replace."""
    n = len(word)
    kinds = ("swap", "drop", "insert", "replace") if n > 1 else ("drop", "insert", "replace")
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "swap":
        i = int(rng.integers(n - 1))
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == "drop":
        i = int(rng.integers(n))
        return word[:i] + word[i + 1 :]
    letter = _LETTERS[int(rng.integers(len(_LETTERS)))]
    if kind == "insert":
        i = int(rng.integers(n + 1))
        return word[:i] + letter + word[i:]
    i = int(rng.integers(n))
    if word[i].lower() == letter:  # a replacement changes the character
        letter = _LETTERS[(_LETTERS.index(letter) + 1) % len(_LETTERS)]
    return word[:i] + letter + word[i + 1 :]


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be between 0 and 1; got {rate}.")


def typos(text: str, rate: float, rng: np.random.Generator) -> str:
    """Each word of ``text`` gets one character typo with probability ``rate``.

    Example:
        >>> import numpy as np
        >>> typos("the quick brown fox", 0.0, np.random.default_rng(0))
        'the quick brown fox'
        >>> typos("the quick brown fox", 1.0, np.random.default_rng(0)) != "the quick brown fox"
        True
    """
    _check_rate(rate)
    lead, words = _words(text)
    out = [(_edit(word, rng) if rng.random() < rate else word) + space for word, space in words]
    return lead + "".join(out)


def word_dropout(text: str, rate: float, rng: np.random.Generator) -> str:
    """Each word of ``text`` is removed with probability ``rate`` (all of them: ``""``).

    Example:
        >>> import numpy as np
        >>> word_dropout("a b c d", 1.0, np.random.default_rng(0))
        ''
    """
    _check_rate(rate)
    if rate == 0:
        return text
    lead, words = _words(text)
    kept = [word + space for word, space in words if not rng.random() < rate]
    return lead + "".join(kept) if kept else ""


def casing(text: str, rate: float, rng: np.random.Generator) -> str:
    """Each word of ``text`` is set to upper, lower or title case with probability ``rate``.

    Example:
        >>> import numpy as np
        >>> casing("Hello big World", 1.0, np.random.default_rng(1)).lower()
        'hello big world'
    """
    _check_rate(rate)
    lead, words = _words(text)
    changes = (str.upper, str.lower, str.title)
    out = []
    for word, space in words:
        if rng.random() < rate:
            word = changes[int(rng.integers(len(changes)))](word)
        out.append(word + space)
    return lead + "".join(out)


#: name → perturbation of one text, in the order the report shows them.
TEXT_PERTURBATIONS: dict[str, Callable[[str, float, np.random.Generator], str]] = {
    "typos": typos,
    "word_dropout": word_dropout,
    "casing": casing,
}


def perturb_texts(texts: Sequence[str], kind: str, rate: float, seed: int) -> np.ndarray:
    """``texts`` perturbed by ``kind`` (``typos``, ``word_dropout``, ``casing``) at ``rate``,
    from one generator seeded with ``seed``; an object array of ``str``.

    Example:
        >>> perturb_texts(["a b c", "d e"], "word_dropout", 1.0, seed=0).tolist()
        ['', '']
    """
    import numpy as np

    if kind not in TEXT_PERTURBATIONS:
        raise ValueError(f"kind must be one of {', '.join(TEXT_PERTURBATIONS)}; got '{kind}'.")
    perturb = TEXT_PERTURBATIONS[kind]
    rng = np.random.default_rng(seed)
    out = np.empty(len(texts), dtype=object)
    out[:] = [perturb(str(text), rate, rng) for text in texts]
    return out


def text_robustness(
    data: EvalData,
    rows: np.ndarray,
    score: Callable[[np.ndarray], float],
    seed: int,
    rates: Sequence[float] = TEXT_RATES,
) -> dict[str, Any]:
    """The metric on the evaluation rows ``rows`` with their texts perturbed at each rate.

    Every text column of a row is perturbed (the other columns stay); the rows are encoded again
    by ``data.preprocessor`` and scored by ``score(x)``. Each (kind, rate) draws from its own
    generator seeded by ``seed``, the same for every rate of a kind. Rate 0, the texts as they
    are (encoded again all the same), is scored once for the three kinds.

    Returns:
        ``{"rates", "curves": {kind: [{"rate", "value"}]}, "table": [{"rate", kind: value}]}``.

    Raises:
        ValueError: ``data`` has no preprocessor or no text columns.
    """
    if data.preprocessor is None or not data.text_columns:
        raise ValueError("text robustness needs text columns and the fitted preprocessor")
    frame = data.frame.iloc[rows].reset_index(drop=True)
    texts = {c: data.test_texts[c][rows] for c in data.text_columns}
    curves: dict[str, list[dict[str, float]]] = {}
    unperturbed: float | None = None  # rate 0 leaves every text as it is: scored once
    for kind in TEXT_PERTURBATIONS:
        points = []
        for rate in rates:
            if rate == 0 and unperturbed is not None:
                points.append({"rate": 0.0, "value": unperturbed})
                continue
            perturbed = frame.copy()
            for i, (column, values) in enumerate(texts.items()):
                perturbed[column] = perturb_texts(values, kind, rate, seed + i)
            x = data.preprocessor.transform(perturbed)  # (n, D), the model's own tokenizer
            points.append({"rate": float(rate), "value": score(x)})
            if rate == 0:
                unperturbed = points[-1]["value"]
        curves[kind] = points
    table = [
        {"rate": float(rate), **{kind: curves[kind][i]["value"] for kind in curves}}
        for i, rate in enumerate(rates)
    ]
    return {"rates": [float(r) for r in rates], "curves": curves, "table": table}


def text_figure(label: str, clean: float, curves: dict[str, list[dict[str, float]]]) -> str:
    """The metric against the perturbation rate, one line per kind, clean as a dashed line."""
    from danlu.evaluate._plots import figure, svg

    fig, ax = figure()
    names = {"typos": "character typos", "word_dropout": "word dropout", "casing": "casing"}
    for kind, points in curves.items():
        ax.plot(
            [100 * p["rate"] for p in points],
            [p["value"] for p in points],
            marker="o",
            label=names.get(kind, kind),
        )
    ax.axhline(clean, linestyle="--", color="grey", label="clean")
    ax.set_xlabel("words perturbed (%)")
    ax.set_ylabel(label)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return svg(fig)
