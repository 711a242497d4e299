"""The language model's report sections: count-based baselines and generated samples.

A neural language model earns its keep when it predicts held-out text better than counting
does. :func:`lm_sections` fits an add-one unigram and an interpolated Kneser-Ney n-gram
(``danlu.evaluate._ngram``) on the training split's tokens — the same BPE tokens, the same
split — scores the same test blocks target by target with the same in-block history, and shows
perplexity and bits per byte of each next to the model's, with a paired bootstrap interval of
the per-block difference to the stronger baseline. Smaller is better for both metrics. A second
section shows seeded samples at a few temperatures (``danlu.models._generate``).

Example:
    >>> # sections = lm_sections(eval_data, recipe.language_model)
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from danlu.evaluate._context import EvalData, Section
from danlu.logging import get_logger

if TYPE_CHECKING:
    import numpy as np

    from danlu.config import LanguageModelConfig

__all__ = ["baseline_table", "lm_sections", "samples_section"]

log = get_logger(__name__)


def baseline_table(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    vocab_size: int,
    order: int = 5,
) -> dict[str, dict[str, Any]]:
    """Each baseline's per-token NLL on the blocks ``x`` (n, T), with its fit seconds:
    ``{name: {"outputs", "seconds", "order"}}`` (unigram, then Kneser-Ney of ``order``)."""
    from danlu.evaluate._ngram import KneserNey, Unigram, block_nll, training_stream

    stream = training_stream(x_train, y_train)
    out: dict[str, dict[str, Any]] = {}
    for model in (Unigram(vocab_size), KneserNey(order, vocab_size)):
        start = time.perf_counter()
        model.fit(stream)
        outputs = block_nll(model, x, y)
        out[model.name] = {
            "outputs": outputs,
            "seconds": time.perf_counter() - start,
            "order": getattr(model, "order_used", 1),
        }
    return out


def lm_sections(data: EvalData, config: LanguageModelConfig | None = None) -> list[Section]:
    """The baselines section, then the samples section (when ``config.samples`` asks)."""
    from danlu.config import LanguageModelConfig

    config = config or LanguageModelConfig()
    sections = [baselines_section(data, config.order)]
    if config.samples.temperatures:
        sections.append(samples_section(data, config))
    return sections


def baselines_section(data: EvalData, order: int = 5, seed: int = 0) -> Section:
    """The model's perplexity and bits per byte next to the unigram's and Kneser-Ney's."""
    import numpy as np

    from danlu.evaluate._bootstrap import bootstrap_ci

    section = Section("lm_baselines", "Language-model baselines")
    task, schema = data.task, data.schema
    if not len(data.x_train) or not len(data.y):
        section.data["skipped"] = "no training tokens" if not len(data.x_train) else "no test rows"
        section.notes.append(f"Baselines skipped: {section.data['skipped']}.")
        return section
    vocab = task.output_dim(schema)
    fitted = baseline_table(data.x_train, data.y_train, data.x, data.y, vocab, order)
    mine = task.metrics(data.test_outputs, data.y, schema)
    rows = [{"model": "danlu model", **_cells(mine), "seconds": None}]
    for name, fit in fitted.items():
        rows.append({"model": name, **_cells(task.metrics(fit["outputs"], data.y, schema)),
                     "seconds": fit["seconds"]})  # fmt: skip
    best = min(rows[1:], key=lambda r: r["perplexity"])
    diff = task.row_scores(data.test_outputs, data.y, schema) - task.row_scores(
        fitted[best["model"]]["outputs"], data.y, schema
    )  # per block: the model's gain in mean log-likelihood per token (> 0: the model is better)
    try:
        ci = bootstrap_ci(lambda d: float(d.mean()), diff, resamples=1000, seed=seed)
        paired: dict[str, float] | None = {"low": ci.low, "high": ci.high}
    except ValueError:
        paired = None
    ratio = mine["perplexity"] / best["perplexity"]
    section.data.update(
        {
            "metric": "perplexity",
            "smaller_is_better": True,
            "columns": ["perplexity", "bits_per_byte"],
            "rows": rows,
            "strongest": {"model": best["model"], "ratio": ratio, "paired": paired},
            "tokens": mine.get("tokens"),
            "bytes": mine.get("bytes"),
        }
    )
    verb = "below" if ratio < 1 else "above"
    section.summary = (
        f"perplexity {mine['perplexity']:.2f}: {abs(1 - ratio):.1%} {verb} {best['model']} "
        f"({best['perplexity']:.2f}); unigram {rows[1]['perplexity']:.1f}"
    )
    if paired is not None:
        real = paired["low"] > 0 or paired["high"] < 0
        section.notes.append(
            f"Paired bootstrap over the {len(diff)} test blocks of the model's mean "
            f"log-likelihood per token minus {best['model']}'s: 95% interval "
            f"[{paired['low']:.4f}, {paired['high']:.4f}] nats — "
            + ("a real difference." if real else "not distinguishable from noise.")
        )
    if ratio >= 1 and (paired is None or paired["high"] < 0):
        section.flags.append(
            f"{best['model']} predicts the test text better than the model (perplexity "
            f"{best['perplexity']:.2f} vs {mine['perplexity']:.2f}): train longer or larger."
        )
    section.notes.append(
        "The baselines count the training split's tokens (the model's BPE tokens) and score the "
        "same test blocks, each target given the tokens before it in its block, as the model "
        "sees them. Kneser-Ney: interpolated, one discount per order (n1 / (n1 + 2 n2)). "
        "Perplexity and bits per byte: smaller is better; bits per byte compares across "
        "tokenizers."
    )
    if any(np.isnan(r["perplexity"]) for r in rows):  # pragma: no cover - defensive
        section.flags.append("a perplexity is undefined (no target token)")
    return section


def _cells(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics.get(k) for k in ("perplexity", "bits_per_byte", "nll")}


def samples_section(data: EvalData, config: LanguageModelConfig, seed: int = 0) -> Section:
    """One seeded sample per temperature, continuing ``config.samples.prompt`` (default: the
    first tokens of the first test block)."""
    from danlu.data._lm import lm_tokenizer

    section = Section("lm_samples", "Generated samples")
    samples = config.samples
    try:
        from danlu.models._generate import generate_text

        tokenizer = lm_tokenizer(data.preprocessor)
    except (ImportError, Exception) as exc:  # no generation module, or no tokenizer
        section.data["skipped"] = f"{type(exc).__name__}: {exc}"
        section.notes.append("Samples skipped: generation is not available for this model.")
        return section
    prompt = samples.prompt
    if not prompt and len(data.x):
        ids = [int(i) for i in data.x[0, 1:17]]
        prompt = tokenizer.decode(ids)
    prompt = prompt or " "
    rows = []
    for temperature in samples.temperatures:
        text = generate_text(
            data.model,
            tokenizer,
            prompt,
            max_tokens=samples.tokens,
            temperature=temperature,
            top_k=None,
            seed=seed,
        )
        rows.append({"temperature": temperature, "text": text})
    section.data.update({"prompt": prompt, "tokens": samples.tokens, "seed": seed, "rows": rows})
    section.summary = f"{len(rows)} samples of {samples.tokens} tokens"
    section.notes.append(
        f"Each sample continues the prompt with up to {samples.tokens} new tokens, seeded "
        f"({seed}); temperature 0 is greedy. Set language_model.samples to change them."
    )
    return section
