"""Text generation from a language model (``model: {type: gpt}``), streamed piece by piece.

:func:`generate` encodes the prompt with the model's tokenizer (a Hugging Face
``tokenizers.Tokenizer``), then draws one token at a time: the last position's logits, the
repetition penalty, then greedy (``temperature: 0``) or sampling with temperature, top-k and top-p
from a seeded generator. It yields the new text as it becomes whole (a byte-level BPE token may
hold part of a UTF-8 character; text that could be the start of a stop string is held back until
it is known not to be one).

**The context window.** A prompt longer than the model's context is cut from the left (the
newest ``context`` tokens are kept) with a warning. When the sequence fills the context during
generation, the window jumps: the cache is dropped and **rebuilt** from the newest
``context // 2`` tokens (one forward pass over them), then grows again token by token. The
uncached path (``use_cache=False``, which re-reads the whole window for every token) uses the
same windows, so both draw the same tokens.

Example:
    >>> # for piece in generate(gpt, tokenizer, "Once upon", max_tokens=50, temperature=0.8):
    >>> #     print(piece, end="", flush=True)
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from danlu.errors import DataError
from danlu.logging import get_logger

if TYPE_CHECKING:
    import torch

__all__ = [
    "EOS_TOKENS",
    "Generation",
    "check_sampling",
    "generate",
    "generate_text",
    "sample_next",
]

logger = get_logger(__name__)

# Special tokens that end a text, looked up in the tokenizer's vocabulary (the first found).
EOS_TOKENS = ("<|endoftext|>", "</s>", "<eos>", "[EOS]")


def check_sampling(
    *,
    max_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float,
) -> None:
    """Refuse settings generation cannot use, naming the setting.

    Raises:
        DataError: ``max_tokens < 1``, a negative temperature, ``top_k < 1``, ``top_p`` outside
            (0, 1], or a repetition penalty ≤ 0.

    Example:
        >>> check_sampling(max_tokens=5, temperature=0, top_k=None, top_p=0.9,
        ...                repetition_penalty=1.0)
    """
    if max_tokens < 1:
        raise DataError(f"max_tokens must be at least 1; got {max_tokens}.")
    if not temperature >= 0:
        raise DataError(f"temperature must be ≥ 0 (0 is greedy); got {temperature}.")
    if top_k is not None and top_k < 1:
        raise DataError(f"top_k must be at least 1 (or unset); got {top_k}.")
    if top_p is not None and not 0 < top_p <= 1:
        raise DataError(f"top_p must be in (0, 1] (or unset); got {top_p}.")
    if not repetition_penalty > 0:
        raise DataError(f"repetition_penalty must be > 0 (1 is none); got {repetition_penalty}.")


def sample_next(
    logits: torch.Tensor,
    seen: torch.Tensor,
    *,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float,
    generator: torch.Generator | None,
) -> int:
    """The next token id from one position's logits (V,).

    ``seen``: the ids already in the text (prompt and generated) that the repetition penalty
    (CTRL's: a positive logit divided by it, a negative one multiplied) applies to.

    Example:
        >>> import torch
        >>> sample_next(torch.tensor([0.1, 2.0, 0.5]), torch.tensor([], dtype=torch.long),
        ...             temperature=0, top_k=None, top_p=None, repetition_penalty=1.0,
        ...             generator=None)
        1
    """
    import torch

    logits = logits.float().clone()
    if repetition_penalty != 1.0 and seen.numel():
        picked = logits[seen]
        logits[seen] = torch.where(
            picked > 0, picked / repetition_penalty, picked * repetition_penalty
        )
    if temperature == 0:
        return int(torch.argmax(logits))
    logits = logits / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(ordered, -1).cumsum(-1)
        # drop a token when the ones before it already reach top_p (the first is always kept)
        drop = (cumulative - torch.softmax(ordered, -1)) >= top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = torch.softmax(logits, -1)
    return int(torch.multinomial(probs, 1, generator=generator))


def _eos_id(tokenizer: Any) -> int | None:
    for token in EOS_TOKENS:
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    return None


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of ``text`` could begin a stop string."""
    keep = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), keep, -1):
            if text.endswith(stop[:n]):
                keep = n
                break
    return keep


class Generation:
    """An iterator of text pieces being generated, with what is known about it so far.

    Attributes:
        prompt_tokens: the prompt's tokens read (after any truncation).
        truncated: prompt tokens cut from the left to fit the context (0: none).
        tokens: tokens generated so far.
        finish_reason: None while running; then ``length`` (``max_tokens`` reached), ``stop``
            (a stop string appeared; it is not part of the text), ``eos`` (the end-of-text
            token), or ``cancelled`` (:meth:`close` before the end).
        rebuilds: times the window jumped and the cache was rebuilt.
        token_ids: the ids generated so far (an end-of-text token not included).
    """

    def __init__(self, pieces: Iterator[str]) -> None:
        self._pieces = pieces
        self.prompt_tokens = 0
        self.truncated = 0
        self.tokens = 0
        self.finish_reason: str | None = None
        self.rebuilds = 0
        self.token_ids: list[int] = []

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        """Stop generating (the model is not called again)."""
        if self.finish_reason is None:
            self.finish_reason = "cancelled"
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()


def generate(
    model: Any,
    tokenizer: Any,
    prompt: str,
    *,
    max_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    stop: Sequence[str] = (),
    seed: int | None = None,
    use_cache: bool = True,
) -> Generation:
    """Generate text after ``prompt``, yielded piece by piece as it is drawn.

    Args:
        model: a GPT (``logits(ids, cache)`` and ``context``), peft-wrapped or not.
        tokenizer: its ``tokenizers.Tokenizer``.
        prompt: the text to continue (at least one token; a prompt longer than the context
            keeps its newest ``context`` tokens, with a warning).
        max_tokens: the most tokens drawn.
        temperature: 0 is greedy (argmax); higher flattens the distribution.
        top_k: sample among the k likeliest tokens only.
        top_p: sample among the likeliest tokens whose probabilities add up to top_p.
        repetition_penalty: > 1 makes tokens already in the text less likely.
        stop: strings that end the generation (not included in the text).
        seed: seeds the sampling (the same seed, the same text); None: a random one.
        use_cache: keep each layer's keys and values (False re-reads the window every token;
            for comparison).

    Returns:
        A :class:`Generation`: iterate it for the pieces; its attributes say how it ended.

    Raises:
        DataError: a setting out of range, or an empty prompt for a tokenizer without an
            end-of-text token to start from.

    Example:
        >>> # text = "".join(generate(gpt, tok, "The", max_tokens=20, temperature=0))
    """
    check_sampling(
        max_tokens=max_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
    )
    stops = [s for s in stop if s]
    from danlu.models._gpt import _unwrap

    net: Any = _unwrap(model)
    context = int(net.context)
    ids = list(tokenizer.encode(prompt, add_special_tokens=False).ids)
    eos = _eos_id(tokenizer)
    if not ids:
        if eos is None:
            raise DataError("prompt: is empty; give at least one character of text to continue.")
        ids = [eos]
    gen = Generation(iter(()))
    if len(ids) > context:
        gen.truncated = len(ids) - context
        logger.warning(
            "The prompt holds %d tokens but the model reads at most %d: its first %d tokens "
            "are dropped.",
            len(ids),
            context,
            gen.truncated,
        )
        ids = ids[-context:]
    gen.prompt_tokens = len(ids)
    gen._pieces = _pieces(
        gen,
        model,
        net,
        tokenizer,
        ids,
        eos,
        stops,
        max_tokens=max_tokens,
        sampling={
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "repetition_penalty": repetition_penalty,
        },
        seed=seed,
        use_cache=use_cache,
    )
    return gen


def _pieces(
    gen: Generation,
    model: Any,
    net: Any,
    tokenizer: Any,
    ids: list[int],
    eos: int | None,
    stops: list[str],
    *,
    max_tokens: int,
    sampling: dict[str, Any],
    seed: int | None,
    use_cache: bool,
) -> Iterator[str]:
    import torch

    context = int(net.context)
    keep = max(1, context // 2)  # tokens kept when the window jumps
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int.from_bytes(os.urandom(8), "little") if seed is None else seed)
    was_training = model.training
    model.eval()
    known = set(ids)
    seen = torch.tensor(sorted(known), dtype=torch.long)
    start = 0  # the window: ids[start:]
    step = _Steps(net, use_cache)
    out = gen.token_ids  # generated ids
    sent = 0  # characters of the decoded text already yielded
    text = ""  # the text of out[:read], decoded a few tokens at a time
    prefix = read = 0  # out[prefix:read]: the tokens decoded last, the context of the next ones
    try:
        for _ in range(max_tokens):
            if len(ids) - start > context:  # the window is full: jump, rebuild the cache
                start = len(ids) - keep
                step.jump()
                gen.rebuilds += 1
            with torch.inference_mode():
                logits = step.logits(ids, start)
                token = sample_next(logits.cpu(), seen, generator=generator, **sampling)
            gen.tokens += 1
            if token == eos:
                gen.finish_reason = "eos"
                break
            ids.append(token)
            out.append(token)
            if token not in known:
                known.add(token)
                seen = torch.cat([seen, torch.tensor([token])])
            # decode the new tokens after the last few (bounded work per token, whatever the
            # length); part of a UTF-8 character (U+FFFD at the end) waits for the rest
            before = tokenizer.decode(out[prefix:read], skip_special_tokens=True)
            after = tokenizer.decode(out[prefix:], skip_special_tokens=True)
            if len(after) <= len(before) or after.endswith("\ufffd"):
                continue
            text += after[len(before) :]
            prefix, read = read, len(out)
            if stops:
                hits = [i for i in (text.find(s, max(0, sent - len(s))) for s in stops) if i >= 0]
                if hits:
                    end = min(hits)
                    if end > sent:
                        yield text[sent:end]
                    gen.finish_reason = "stop"
                    return
                ready = len(text) - _held_back(text, stops)
            else:
                ready = len(text)
            if ready > sent:
                yield text[sent:ready]
                sent = ready
        else:
            gen.finish_reason = "length"
        before = tokenizer.decode(out[prefix:read], skip_special_tokens=True)
        text += tokenizer.decode(out[prefix:], skip_special_tokens=True)[len(before) :]
        if len(text) > sent:  # the held-back tail (or an incomplete character) at the end
            yield text[sent:]
    finally:
        if gen.finish_reason is None:
            gen.finish_reason = "cancelled"
        if was_training:
            model.train()


class _Steps:
    """The model calls of one generation: the last position's logits (V,) of the window
    ``ids[start:]``. Cached: a GPT's :class:`~danlu.models._gpt_nets.Decoder` (the cache
    preallocated and written in place, a flat functional step), or ``logits`` with its cache for
    another model; both are fed only the ids not fed yet. Uncached: the whole window each call.
    """

    def __init__(self, net: Any, use_cache: bool) -> None:
        import torch

        self.net, self.use_cache = net, use_cache
        self.device = next(net.parameters()).device
        self.cache: Any = None
        self.fed = 0  # ids[start:fed] are in the cache
        self.decoder = None
        if use_cache and callable(getattr(net, "decoder", None)):
            with torch.inference_mode():
                self.decoder = net.decoder()

    def jump(self) -> None:
        """The window jumped: the cache is rebuilt from the new window's start."""
        self.cache, self.fed = None, 0
        if self.decoder is not None:
            self.decoder.reset()

    def logits(self, ids: list[int], start: int) -> torch.Tensor:
        import torch

        if not self.use_cache:
            window = torch.tensor([ids[start:]], dtype=torch.long, device=self.device)
            return self.net.logits(window, last_only=True)[0][0, -1]
        chunk = torch.tensor([ids[max(self.fed, start) :]], dtype=torch.long, device=self.device)
        self.fed = len(ids)
        if self.decoder is not None:
            return self.decoder.feed(chunk)[0, -1]
        logits, self.cache = self.net.logits(chunk, self.cache, last_only=True)
        return logits[0, -1]


def generate_text(model: Any, tokenizer: Any, prompt: str, **options: Any) -> str:
    """The whole generated text at once (the options of :func:`generate`).

    Example:
        >>> # generate_text(gpt, tokenizer, "Once upon a time", max_tokens=40, temperature=0)
    """
    return "".join(generate(model, tokenizer, prompt, **options))
