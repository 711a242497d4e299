"""Language-model data: documents, folder sources, document splits, BPE, packing, n-grams."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pandas as pd
import pytest

from danlu.config import DataConfig, LanguageModelConfig
from danlu.data import Preprocessor, RecipeDataError
from danlu.data._lm import (
    LM_EOD,
    MIN_VOCAB,
    lm_tokenizer,
    near_duplicate_groups,
    pack_blocks,
    prepare_lm_data,
    read_text_folder,
    split_documents,
)
from danlu.errors import DataError
from danlu.evaluate._ngram import KneserNey, Unigram, block_nll, training_stream

WORDS = "the cat sat on a mat and dog ran to big red house where small bird sang café".split()


def corpus(n: int = 30, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))) for _ in range(n)]
    return pd.DataFrame({"text": docs, "kind": ["a", "b", "c"] * (n // 3)})


def test_split_documents_is_a_seeded_partition() -> None:
    train, val, test = split_documents(20, 0.1, 0.2, seed=3)
    assert sorted([*train, *val, *test]) == list(range(20))
    assert (len(train), len(val), len(test)) == (14, 2, 4)
    again = split_documents(20, 0.1, 0.2, seed=3)
    assert all((a == b).all() for a, b in zip((train, val, test), again, strict=True))
    assert not (split_documents(20, 0.1, 0.2, seed=4)[2] == test).all()
    assert [len(s) for s in split_documents(2, 0.1, 0.2, seed=0)] == [2, 0, 0]  # keep training


@pytest.mark.parametrize("length", [2, 9, 10, 11, 37])
@pytest.mark.parametrize("stride", [1, 3, 4, 8])
def test_sliding_blocks_score_every_target_once_with_the_history_they_promise(
    length: int, stride: int
) -> None:
    context = 8
    ids = np.arange(length) + 100
    x, y = pack_blocks(ids, np.full(length, 2.0), context=context, pad_id=0, stride=stride)
    scored = [(int(x[b, t + 1]), t) for b, t in zip(*np.nonzero(y), strict=True)]
    assert sorted(token for token, _ in scored) == ids[1:].tolist()  # each target exactly once
    history = {token: t + 1 for token, t in scored}  # tokens of the block before the target
    for token, seen in history.items():
        assert seen >= min(token - 100, context - stride), (token, seen)
    assert float(y.sum()) == 2.0 * (length - 1)
    assert (x[1:, 0] - x[:-1, 0] == stride).all()  # block i starts at i * stride
    with pytest.raises(ValueError, match="stride"):
        pack_blocks(ids, np.ones(length), context=context, pad_id=0, stride=context + 1)


def test_held_out_blocks_slide_and_training_blocks_do_not() -> None:
    frame = corpus(60)
    config = LanguageModelConfig(vocab_size=300)
    half = prepare_lm_data(DataConfig(source="x.csv"), config, context=8, frame=frame)
    flat = prepare_lm_data(
        DataConfig(source="x.csv"), config.model_copy(update={"eval_stride": 8}), context=8,
        frame=frame,
    )  # fmt: skip
    assert half.report["eval_stride"] == 4 and flat.report["eval_stride"] == 8
    assert np.array_equal(half.x_train, flat.x_train) and np.array_equal(half.y_train, flat.y_train)
    for split in ("val", "test"):
        (xh, yh), (xf, yf) = (
            (getattr(d, f"x_{split}"), getattr(d, f"y_{split}")) for d in (half, flat)
        )
        assert len(xh) > len(xf)  # about twice the blocks, the same targets and bytes
        assert np.array_equal(training_stream(xh, yh), training_stream(xf, yf))
        assert float(yh.sum()) == float(yf.sum())
        assert (yh[1:, :4] == 0).all() and (yh[0] > 0).all()


def test_pack_blocks_overlap_by_one_and_pad_with_zero_weight() -> None:
    ids = np.arange(10)
    x, y = pack_blocks(ids, np.arange(10) + 1.0, context=4, pad_id=99)
    assert x.shape == (3, 5) and y.shape == (3, 4)
    assert (x[1:, 0] == x[:-1, -1]).all()  # stride = context: one shared token
    assert x[-1].tolist() == [8, 9, 99, 99, 99]
    assert y[-1].tolist() == [10, 0, 0, 0]  # padding targets weigh nothing
    assert y[0].tolist() == [2, 3, 4, 5]  # each target's own weight


def _edited(text: str, rng: random.Random, changes: int) -> str:
    words = text.split()
    for _ in range(changes):
        words[rng.randrange(len(words))] = rng.choice(WORDS)
    return " ".join(words)


def test_near_duplicates_group_transitively_and_boilerplate_does_not_link() -> None:
    rng = random.Random(1)
    story = " ".join(rng.choice(WORDS) + str(i) for i in range(120))  # 120 distinct words
    other = " ".join(rng.choice(WORDS) + str(i) for i in range(120, 240))
    texts = [story, other, _edited(story, rng, 2), _edited(_edited(story, rng, 2), rng, 2)]
    groups = near_duplicate_groups(texts, 0.5).tolist()
    assert groups == [0, 1, 0, 0]  # two edits of one story: with it, not with the other
    assert near_duplicate_groups(texts, 1.0).tolist() == [0, 1, 2, 3]  # only identical ones
    # a sentence that many documents share (a dateline, a sign-off) does not make them one
    tail = " ".join(f"boiler{i}" for i in range(40))
    docs = [" ".join(rng.choice(WORDS) + str(i) for i in range(j * 50, j * 50 + 30)) + " " + tail
            for j in range(60)]  # fmt: skip
    assert len(set(near_duplicate_groups(docs, 0.5, common=50).tolist())) == 60
    assert len(set(near_duplicate_groups(docs, 0.5, common=100).tolist())) == 1
    assert near_duplicate_groups(["a b", "a b", "", "c"], 0.5).tolist() == [0, 0, 1, 2]


def test_near_duplicate_documents_stay_in_one_split() -> None:
    rng = random.Random(2)
    base = [
        " ".join(rng.choice(WORDS) + str(rng.randrange(50)) for _ in range(60)) for _ in range(40)
    ]
    texts = base + [_edited(t, rng, 3) for t in base]  # 40 pairs of near-duplicates
    frame = pd.DataFrame({"text": texts})
    seen = {}
    for near in (0.5, None):
        data = prepare_lm_data(
            DataConfig(source="x.csv", split={"val": 0.2, "test": 0.2, "seed": 0}),
            LanguageModelConfig(vocab_size=300, near_duplicates=near), context=16, frame=frame,
        )  # fmt: skip
        tok = lm_tokenizer(data.preprocessor)
        split_of = {}
        for split in ("train", "val", "test"):
            stream = training_stream(getattr(data, f"x_{split}"), getattr(data, f"y_{split}"))
            for doc in tok.decode(stream.tolist(), skip_special_tokens=False).split(LM_EOD):
                if doc:
                    split_of[doc] = split
        seen[near] = sum(split_of[a] != split_of[b] for a, b in zip(base, texts[40:], strict=True))
        assert data.report["near_duplicates_kept_together"] == (40 if near else 0)
    assert seen[0.5] == 0 and seen[None] > 5  # together only when asked; by chance otherwise


def test_grouping_that_leaves_no_test_split_is_refused_naming_the_key() -> None:
    story = [f"{WORDS[i % len(WORDS)]}{i}" for i in range(40)]
    copies = [" ".join(story[:i] + ["changed"] + story[i + 1 :]) for i in range(12)]
    with pytest.raises(RecipeDataError) as caught:
        prepare_lm_data(
            DataConfig(source="x.csv"), LanguageModelConfig(vocab_size=300), context=8,
            frame=pd.DataFrame({"text": copies}),
        )  # fmt: skip
    assert "language_model.near_duplicates" in str(caught.value)
    assert "null" in str(caught.value)


def test_prepared_blocks_hold_every_document_and_its_bytes() -> None:
    frame = pd.concat([corpus(), corpus().head(10)], ignore_index=True)  # 10 duplicates
    data = prepare_lm_data(
        DataConfig(source="x.csv"), LanguageModelConfig(vocab_size=300), context=8, frame=frame
    )
    docs = data.report["documents"]
    assert sum(docs.values()) == len(frame) and docs["test"] >= 1 and docs["val"] >= 1
    # y counts each document's UTF-8 bytes and one per end-of-document token: exactly
    texts = frame["text"].tolist()
    total_bytes = sum(len(t.encode()) for t in texts) + len(texts)
    assert sum(float(s.sum()) for s in (data.y_train, data.y_val, data.y_test)) == total_bytes
    assert data.x_train.shape[1] == 9 and data.y_train.shape[1] == 8
    tok = lm_tokenizer(data.preprocessor)
    assert tok.token_to_id(LM_EOD) == 0
    # every split starts with an end-of-document token; test decodes back to whole documents
    ids = training_stream(data.x_test, data.y_test)
    text = tok.decode(ids.tolist(), skip_special_tokens=False)
    pieces = [p for p in text.split(LM_EOD) if p]
    assert len(pieces) == docs["test"] and all(p in texts for p in pieces)
    train_text = tok.decode(training_stream(data.x_train, data.y_train).tolist(), False)
    assert not set(pieces) & set(train_text.split(LM_EOD))  # no text in two splits
    assert data.report["duplicates_kept_together"] == 10


def test_preparing_again_gives_the_same_tokens() -> None:
    """Every stage (training, the report, export) prepares the data again: the BPE trained
    on the same documents must be the same, and so the blocks."""
    runs = [
        prepare_lm_data(
            DataConfig(source="x.csv"),
            LanguageModelConfig(vocab_size=320),
            context=8,
            frame=corpus(60, seed=1),
        )  # fmt: skip
        for _ in range(2)
    ]
    assert runs[0].fingerprint == runs[1].fingerprint
    assert (
        lm_tokenizer(runs[0].preprocessor).to_str() == lm_tokenizer(runs[1].preprocessor).to_str()
    )


def test_tokenizer_travels_with_the_preprocessor() -> None:
    data = prepare_lm_data(
        DataConfig(source="x.csv"), LanguageModelConfig(vocab_size=300), context=8, frame=corpus()
    )
    saved = Preprocessor.from_dict(json.loads(json.dumps(data.preprocessor.to_dict())))
    a, b = lm_tokenizer(data.preprocessor), lm_tokenizer(saved)
    assert a.encode("the red café").ids == b.encode("the red café").ids
    assert b.decode(b.encode("the red café").ids) == "the red café"
    assert b.get_vocab_size() <= 300 and data.schema.features[0].vocab_size == b.get_vocab_size()
    with pytest.raises(DataError, match="no language-model tokenizer"):
        lm_tokenizer(Preprocessor(target="y", task="regression").fit(
            pd.DataFrame({"x": [1.0, 2.0], "y": [0.0, 1.0]})))  # fmt: skip


def test_where_selects_documents_and_refuses_what_matches_nothing() -> None:
    frame = corpus()
    data = prepare_lm_data(
        DataConfig(source="x.csv"),
        LanguageModelConfig(vocab_size=300, where={"kind": ["a", "b"]}),
        context=8,
        frame=frame,
    )
    assert data.report["documents_kept"] == 20
    with pytest.raises(RecipeDataError) as empty:
        prepare_lm_data(
            DataConfig(source="x.csv"),
            LanguageModelConfig(where={"kind": "zzz"}),
            context=8,
            frame=frame,
        )
    assert empty.value.loc == ("language_model", "where")
    assert "kind: a, b, c" in str(empty.value)  # the values the column holds
    with pytest.raises(RecipeDataError) as column:
        prepare_lm_data(
            DataConfig(source="x.csv"),
            LanguageModelConfig(where={"knd": "a"}),
            context=8,
            frame=frame,
        )
    assert column.value.loc == ("language_model", "where", "knd") and "kind" in str(column.value)
    with pytest.raises(RecipeDataError) as text:
        prepare_lm_data(
            DataConfig(source="x.csv"), LanguageModelConfig(text="body"), context=8, frame=frame
        )
    assert text.value.loc == ("language_model", "text")


def test_vocab_smaller_than_bytes_and_end_token_is_refused() -> None:
    with pytest.raises(RecipeDataError) as small:
        prepare_lm_data(
            DataConfig(source="x.csv"),
            LanguageModelConfig(vocab_size=MIN_VOCAB - 1),
            context=8,
            frame=corpus(),
        )
    assert small.value.loc == ("language_model", "vocab_size") and "257" in str(small.value)


def test_text_folder_reads_nested_files_and_refuses_bad_entries(tmp_path) -> None:
    root = tmp_path / "docs"
    (root / "sport").mkdir(parents=True)
    (root / "sport" / "a.txt").write_text("a goal in the match")
    (root / "b.txt").write_bytes(b"caf\xe9 bytes")  # not UTF-8: replaced
    (root / "notes.md").write_text("not a document")
    frame = read_text_folder(root)
    assert frame["path"].tolist() == ["b.txt", "sport/a.txt"]
    assert frame["folder"].tolist() == ["", "sport"]
    assert frame["text"][0] == "caf\ufffd bytes"

    outside = tmp_path / "secret.txt"
    outside.write_text("outside the corpus")
    (root / "link.txt").symlink_to(outside)
    with pytest.raises(DataError, match="outside the folder"):
        read_text_folder(root)
    (root / "link.txt").unlink()
    (root / "inner.txt").symlink_to(root / "b.txt")  # a link inside the folder is fine
    assert len(read_text_folder(root)) == 3
    (root / "inner.txt").unlink()
    (root / "out").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(DataError, match="outside the folder"):
        read_text_folder(root)
    (root / "out").unlink()
    os.mkfifo(root / "pipe.txt")
    with pytest.raises(DataError, match="not a regular file"):
        read_text_folder(root)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.csv").write_text("x\n1\n")
    with pytest.raises(DataError, match=r"data.source.*no \.txt file"):
        read_text_folder(empty)


def test_unigram_is_add_one() -> None:
    model = Unigram(4).fit(np.array([0, 1, 1, 1]))
    p = np.exp(model.log_p_)
    assert p.tolist() == pytest.approx([2 / 8, 4 / 8, 1 / 8, 1 / 8])


def test_kneser_ney_matches_a_hand_computed_bigram() -> None:
    # stream a b a b c (ids 0 1 0 1 2), V = 3, order 2
    kn = KneserNey(order=2, vocab_size=3).fit(np.array([0, 1, 0, 1, 2]))
    # bigram counts: ab 2, ba 1, bc 1 → n1 = 2, n2 = 1: D2 = 2 / (2 + 2) = 0.5
    # continuation counts N1+(• w): a 1 (b a), b 1 (a b), c 1 (b c) → total 3, types 3
    # unigram counts the same → n1 = 3, n2 = 0: D1 = 1 → clipped to 0.95
    d1 = 0.95
    p1 = {w: (1 - d1) / 3 + d1 * 3 / 3 / 3 for w in range(3)}  # every continuation count is 1
    d2 = 0.5
    # P(w | b): c(b a) = 1, c(b c) = 1, total 2, types 2
    expected = {
        0: (1 - d2) / 2 + d2 * 2 / 2 * p1[0],
        1: 0 + d2 * 2 / 2 * p1[1],
        2: (1 - d2) / 2 + d2 * 2 / 2 * p1[2],
    }
    got = kn.prob(np.array([[1]]))[0]
    assert got.tolist() == pytest.approx([expected[w] for w in range(3)])
    assert kn.prob(np.array([[2]]))[0].tolist() == pytest.approx([p1[w] for w in range(3)])


@pytest.mark.parametrize("order", [2, 3, 5])
def test_kneser_ney_probabilities_sum_to_one(order: int) -> None:
    rng = np.random.default_rng(order)
    stream = rng.integers(0, 12, size=400) // rng.integers(1, 3, size=400)  # skewed
    kn = KneserNey(order=order, vocab_size=12).fit(stream)
    contexts = np.stack([stream[i : i + 4] for i in (0, 50, 100)] + [np.array([11, 11, 11, 11])])
    sums = kn.prob(contexts).sum(axis=1)
    assert sums == pytest.approx(np.ones(len(contexts)))
    # block scoring agrees with prob() target by target
    x = stream[:9].astype(np.float32)[None, :]
    y = np.ones((1, 8), np.float32)
    nll = block_nll(kn, x, y)[0]
    for t in range(8):
        p = kn.prob(stream[max(0, t + 1 - (order - 1)) : t + 1][None, :])[0]
        assert nll[t] == pytest.approx(-np.log(p[stream[t + 1]]))
