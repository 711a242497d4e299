"""Generation: cached and uncached agree, sampling settings, stop strings, the context window."""

from __future__ import annotations

import logging

import pytest
import torch

from danlu.errors import DataError
from danlu.models._generate import generate, generate_text, sample_next
from danlu.models._gpt_nets import GPT

CONTEXT = 16
TEXT = "the quick brown fox jumps over the lazy dog. café naïve résumé. "


def tiny_tokenizer():
    """A byte-level BPE of about 300 tokens trained on a sentence (milliseconds)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TEXT * 3] * 10, trainer)
    return tok


def tiny_lm(tokenizer, seed: int = 0, spread: float = 0.3) -> GPT:
    """A random GPT whose weights are spread enough that greedy text varies."""
    torch.manual_seed(seed)
    gpt = GPT(tokenizer.get_vocab_size(), CONTEXT, 32, 2, 4, dropout=0.0)
    with torch.no_grad():
        for p in gpt.parameters():
            if p.dim() > 1:
                p.normal_(0.0, spread)
    return gpt.eval()


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def gpt(tok):
    return tiny_lm(tok)


def test_cached_and_uncached_greedy_generation_draw_the_same_tokens(tok, gpt):
    # 40 new tokens after a 6-token prompt pass the context of 16 twice: the window jumps
    runs = []
    for use_cache in (True, False):
        gen = generate(
            gpt, tok, "the quick brown", max_tokens=40, temperature=0, use_cache=use_cache
        )
        text = "".join(gen)
        runs.append((gen.token_ids, text, gen.rebuilds))
        assert gen.finish_reason == "length" and gen.tokens == 40
    assert runs[0] == runs[1]
    ids, text, rebuilds = runs[0]
    assert len(set(ids)) > 5  # not one token repeated: the comparison means something
    assert rebuilds >= 2
    assert text == tok.decode(ids)


def test_the_window_is_rebuilt_from_the_newest_half_of_the_context(tok, gpt):
    gen = generate(gpt, tok, "the quick brown", max_tokens=30, temperature=0)
    list(gen)
    ids = tok.encode("the quick brown").ids + gen.token_ids
    # the window the last token was drawn from: it jumps to the newest CONTEXT // 2 tokens
    # each time the sequence would pass the context
    n = len(ids) - 1  # tokens before the last one
    start, length = 0, len(ids) - len(gen.token_ids)
    for _ in range(len(gen.token_ids) - 1):
        length += 1
        if length - start > CONTEXT:
            start = length - CONTEXT // 2
    assert 0 < start and n - start <= CONTEXT
    with torch.inference_mode():
        logits, _ = gpt.logits(torch.tensor([ids[start:n]]))
    assert int(logits[0, -1].argmax()) == ids[-1]


def test_the_same_seed_draws_the_same_text(tok, gpt):
    options = {"max_tokens": 20, "temperature": 1.0, "top_k": 50, "top_p": 0.95}
    a = generate(gpt, tok, "the lazy", seed=7, **options)
    b = generate(gpt, tok, "the lazy", seed=7, **options)
    c = generate(gpt, tok, "the lazy", seed=8, **options)
    texts = ["".join(g) for g in (a, b, c)]
    assert a.token_ids == b.token_ids and texts[0] == texts[1]
    assert a.token_ids != c.token_ids


def test_top_k_of_one_is_greedy(tok, gpt):
    greedy = generate(gpt, tok, "over the", max_tokens=12, temperature=0)
    top1 = generate(gpt, tok, "over the", max_tokens=12, temperature=1.5, top_k=1, seed=3)
    assert "".join(greedy) == "".join(top1)


def test_top_p_keeps_the_likeliest_tokens_only():
    logits = torch.tensor([3.0, 2.9, 0.0, -1.0])  # p ≈ 0.51, 0.46, 0.02, 0.01
    drawn = {
        sample_next(
            logits,
            torch.tensor([], dtype=torch.long),
            temperature=1.0,
            top_k=None,
            top_p=0.9,
            repetition_penalty=1.0,
            generator=torch.Generator().manual_seed(i),
        )
        for i in range(200)
    }
    assert drawn == {0, 1}


def test_the_repetition_penalty_lowers_seen_tokens():
    logits = torch.tensor([2.0, 1.5, -1.0])
    args = {"temperature": 0, "top_k": None, "top_p": None, "generator": None}
    seen = torch.tensor([0])
    assert sample_next(logits, seen, repetition_penalty=1.0, **args) == 0
    assert sample_next(logits, seen, repetition_penalty=2.0, **args) == 1  # 2.0 / 2 < 1.5


def test_a_stop_string_ends_the_text_before_it(tok, gpt):
    full = generate_text(gpt, tok, "the quick", max_tokens=30, temperature=0)
    stop = full[10:13]
    assert stop.strip()
    gen = generate(gpt, tok, "the quick", max_tokens=30, temperature=0, stop=[stop])
    pieces = list(gen)
    text = "".join(pieces)
    assert text == full[: full.index(stop)]
    assert gen.finish_reason == "stop" and gen.tokens < 30
    assert all(stop not in p for p in pieces)


def test_a_prompt_longer_than_the_context_keeps_its_newest_tokens(tok, gpt, caplog):
    prompt = TEXT * 2
    n = len(tok.encode(prompt).ids)
    with caplog.at_level(logging.WARNING, logger="danlu"):
        gen = generate(gpt, tok, prompt, max_tokens=3, temperature=0)
    assert (gen.prompt_tokens, gen.truncated) == (CONTEXT, n - CONTEXT)
    assert f"its first {n - CONTEXT} tokens are dropped" in caplog.text
    newest = tok.decode(tok.encode(prompt).ids[-CONTEXT:])
    same = generate(gpt, tok, newest, max_tokens=3, temperature=0)
    assert "".join(gen) == "".join(same)


def test_closing_stops_the_generation(tok, gpt):
    gen = generate(gpt, tok, "the", max_tokens=50, temperature=0)
    next(gen)
    drawn = gen.tokens
    gen.close()
    assert gen.finish_reason == "cancelled"
    assert list(gen) == [] and gen.tokens == drawn


def test_bad_settings_name_the_setting(tok, gpt):
    for options, field in [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 1.5}, "top_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
    ]:
        with pytest.raises(DataError, match=field):
            generate(gpt, tok, "the", **options)


def test_the_pieces_join_to_the_decoded_tokens_and_split_no_character(tok, gpt):
    for seed in range(6):
        gen = generate(gpt, tok, "café naïve", max_tokens=40, temperature=1.5, seed=seed)
        pieces = list(gen)
        assert "".join(pieces) == tok.decode(gen.token_ids)
        assert not any(p.endswith("\ufffd") for p in pieces[:-1])  # whole characters only
