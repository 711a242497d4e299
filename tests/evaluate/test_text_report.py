"""The trust report on a text model: the TF-IDF baseline beside the model, the text
perturbations (typos, word dropout, casing) and their robustness curve, and gradient attacks
that leave token ids alone (issue 17)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from danlu.config import RobustnessConfig
from danlu.evaluate._baselines import baselines_section
from danlu.evaluate._robustness import _attacked, _continuous_columns, robustness_section
from danlu.evaluate._text_baseline import fit_tfidf_baseline, join_columns, linear_model
from danlu.evaluate._text_robustness import (
    TEXT_RATES,
    casing,
    perturb_texts,
    typos,
    word_dropout,
)

WORDS = {
    "fruit": ["apple", "banana", "cherry", "mango"],
    "sport": ["goal", "match", "team", "score"],
    "politics": ["vote", "party", "election", "senate"],
}
FILLER = ["the", "a", "of", "today", "new", "big", "was", "and"]


def _texts(n: int = 60) -> pd.DataFrame:
    """``n`` short texts in 3 classes: 4 filler words and 2 words of the row's class."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = list(WORDS)[i % 3]
        words = [*rng.choice(FILLER, 4), *rng.choice(WORDS[label], 2)]
        rng.shuffle(words)
        rows.append({"body": " ".join(words), "n": float(rng.normal()), "topic": label})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    """A 2-epoch text_cnn on 60 texts with one numeric column beside, and its EvalData."""
    from danlu.config import load_recipe
    from danlu.data import prepare_data
    from danlu.evaluate import EvalData
    from danlu.store import SqlStore
    from danlu.train import run_training

    home: Path = tmp_path_factory.mktemp("text-report")
    source = home / "topics.csv"
    _texts().to_csv(source, index=False)
    recipe = load_recipe(
        {
            "name": "text-report",
            "data": {
                "source": str(source),
                "target": "topic",
                "features": {"body": "text"},
                "text": {"max_length": 16},
                "split": {"test": 0.3, "val": 0.15, "seed": 0},
            },
            "task": "classification",
            "model": {"type": "text_cnn", "embedding": 8, "channels": 8, "kernels": [2]},
            "train": {"epochs": 2, "batch_size": 16, "checkpoint": {"every": 0}, "seed": 0},
        }
    )
    prepared = prepare_data(recipe.data, recipe.task, text_models=True)
    store = SqlStore(home=home / "store")
    result = run_training(recipe, prepared=prepared, store=store)
    store.close()
    return EvalData.from_prepared(result.model.eval(), result.task, prepared)


# -- the baseline --------------------------------------------------------------------------------


def test_the_text_baseline_sits_beside_the_model_with_an_interval_and_a_verdict(text_data):
    assert text_data.texts is not None and text_data.texts.columns == ("body",)
    section = baselines_section(text_data)
    rows = {r["model"]: r for r in section.data["rows"]}
    name = "TF-IDF + logistic regression"
    assert name in rows
    row = rows[name]
    low, high = row["accuracy_ci"]  # Wilson interval on the same test rows
    assert low <= row["accuracy"] <= high
    # the class words decide every text: the bag of words gets most test rows right
    assert row["accuracy"] > 0.8
    # tabular baselines read the numeric column only (token ids are no feature for them)
    assert {"most frequent (dummy)", "logistic regression"} <= set(rows)
    verdict = section.data["text_baseline"]
    assert verdict["model"] == name
    assert verdict["difference"] == pytest.approx(rows["danlu model"]["accuracy"] - row["accuracy"])
    paired = verdict["paired"]
    assert paired["low"] <= verdict["difference"] <= paired["high"]
    expected = "beats" if paired["low"] > 0 else "trails" if paired["high"] < 0 else "ties"
    assert verdict["verdict"] == expected
    assert verdict["sentence"] in section.notes
    assert verdict["sentence"].startswith(
        f"The model beats {name}" if expected == "beats" else f"The model does not beat {name}"
    )
    assert verdict["C"] in (1.0, 10.0, 100.0)


def test_the_baseline_is_the_one_the_bench_fits():
    """The shared core: TF-IDF fitted on the training texts, C picked on validation."""
    train = ["good film", "good plot", "bad film", "bad plot"] * 3
    fit = fit_tfidf_baseline(train, [1, 1, 0, 0] * 3, ["so good", "so bad"], [1, 0])
    assert fit.predict(["a good one", "a bad one"]).tolist() == [1, 0]
    assert set(fit.validation) == {1.0, 10.0, 100.0}
    assert fit.c == min(c for c, v in fit.validation.items() if v == max(fit.validation.values()))
    assert "good" in fit.vectorizer.vocabulary_ and fit.vocabulary > 0
    joined = join_columns({"a": np.array(["x", "y"], object), "b": np.array(["1", "2"], object)})
    assert joined == ["x\n1", "y\n2"]


def test_a_numeric_target_gets_tfidf_and_ridge():
    train = ["great film", "great plot", "poor film", "poor plot"] * 3
    fit = fit_tfidf_baseline(
        train, [5.0, 5.0, 1.0, 1.0] * 3, ["so great", "so poor"], [5.0, 1.0],
        make=linear_model("values"),
    )  # fmt: skip
    assert type(fit.model).__name__ == "Ridge"
    high, low = fit.predict(["a great one", "a poor one"])
    assert high > 3 > low
    assert set(fit.validation) == {1.0, 10.0, 100.0}  # C by validation R²


def test_label_sets_get_one_vs_rest_logistic_regression():
    train = ["red car", "blue car", "red boat", "blue boat"] * 3
    y = np.array([[1, 0, 1], [0, 1, 1], [1, 0, 0], [0, 1, 0]] * 3)  # red, blue, car
    fit = fit_tfidf_baseline(train, y, make=linear_model("label_sets"))
    proba = fit.predict_proba(["a red car", "a blue boat"])  # (2, 3)
    assert proba.shape == (2, 3)
    assert (proba[0] > 0.5).tolist() == [True, False, True]
    assert (proba[1] > 0.5).tolist() == [False, True, False]


def test_the_raw_training_texts_keep_their_targets_when_the_rows_are_oversampled(tmp_path):
    """``texts`` holds the training rows before resampling, each with its own target."""
    from danlu.config import DataConfig
    from danlu.data import prepare_data

    frame = _texts(60).iloc[list(range(60)) + list(range(0, 60, 3)) * 2]  # fruit: 3x as many
    config = DataConfig(
        source="frame",
        target="topic",
        features={"body": "text"},
        text={"max_length": 16},
        imbalance={"method": "oversample"},
    )
    data = prepare_data(config, "classification", frame=frame.reset_index(drop=True))
    texts = data.texts
    assert texts is not None and texts.columns == ("body",)
    assert len(data.x_train) > len(texts.y_train) == data.report["rows"]["train"]
    classes = list(data.schema.classes)
    for text, label in zip(texts.train["body"], texts.y_train, strict=True):
        assert set(text.split()) & set(WORDS[classes[label]])  # its class's words
    assert len(texts.val["body"]) == len(data.y_val)
    assert all(isinstance(t, str) for t in texts.val["body"])


def test_tabular_data_carries_no_texts():
    from danlu.config import DataConfig
    from danlu.data import prepare_data

    assert prepare_data(DataConfig(source="builtin:iris"), "classification").texts is None


def test_no_text_columns_no_text_baseline(make_eval_data):
    section = baselines_section(make_eval_data())
    assert "text_baseline" not in section.data
    assert not any(r["model"].startswith("TF-IDF") for r in section.data["rows"])


# -- the perturbations ---------------------------------------------------------------------------

TEXT = "The quick brown Fox jumps  over the lazy dog."


@pytest.mark.parametrize("perturb", [typos, word_dropout, casing])
def test_a_rate_of_zero_changes_nothing(perturb):
    for text in (TEXT, "", "   ", " lead and trail "):
        assert perturb(text, 0.0, np.random.default_rng(0)) == text


@pytest.mark.parametrize("kind", ["typos", "word_dropout", "casing"])
def test_perturbations_are_seeded(kind):
    texts = [TEXT, "another short text here", "and one more"] * 3
    first = perturb_texts(texts, kind, 0.5, seed=3)
    assert first.tolist() == perturb_texts(texts, kind, 0.5, seed=3).tolist()
    others = [perturb_texts(texts, kind, 0.5, seed=s).tolist() for s in range(4, 8)]
    assert any(o != first.tolist() for o in others)


def test_word_dropout_drops_words_and_empties_at_one():
    assert word_dropout(TEXT, 1.0, np.random.default_rng(0)) == ""
    half = word_dropout(TEXT, 0.5, np.random.default_rng(0))
    words = TEXT.split()
    kept = half.split()
    assert 0 < len(kept) < len(words)
    it = iter(words)  # the kept words, in their order
    assert all(word in it for word in kept)


def test_casing_keeps_the_letters_and_changes_case():
    out = casing(TEXT, 1.0, np.random.default_rng(0))
    assert out.lower() == TEXT.lower()
    assert out != TEXT
    for word in out.split():
        assert word in {word.upper(), word.lower(), word.title()}


def test_typos_make_one_character_edit_per_word():
    out = typos(TEXT, 1.0, np.random.default_rng(0))
    before, after = TEXT.split(), out.split()
    assert len(before) == len(after)
    changed = 0
    for a, b in zip(before, after, strict=True):
        assert abs(len(a) - len(b)) <= 1  # a swap or replacement keeps the length
        if len(a) == len(b) and a != b:  # a swap: same letters; a replacement: one differs
            assert sorted(a) == sorted(b) or sum(x != y for x, y in zip(a, b, strict=True)) == 1
        changed += a != b
    assert changed >= len(before) - 2  # a swap of equal letters is the only no-op


def test_a_rate_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="between 0 and 1"):
        typos(TEXT, 1.5, np.random.default_rng(0))


# -- robustness ----------------------------------------------------------------------------------


def test_the_text_robustness_curve(text_data):
    config = RobustnessConfig(fgsm=[0.1], dropout=[0.5], text=list(TEXT_RATES[1:]))
    section = robustness_section(text_data, config)
    text = section.data["text"]
    assert text["rates"] == list(TEXT_RATES)
    clean = text_data.task.metrics(text_data.test_outputs, text_data.y, text_data.schema)
    assert section.data["clean"] == pytest.approx(clean["accuracy"])
    for kind in ("typos", "word_dropout", "casing"):
        points = text["curves"][kind]
        assert [p["rate"] for p in points] == list(TEXT_RATES)
        assert points[0]["value"] == pytest.approx(clean["accuracy"])  # rate 0: the clean rows
        assert text["drop"][kind] == pytest.approx(clean["accuracy"] - points[-1]["value"])
    assert len(text["table"]) == len(TEXT_RATES)
    assert any("texts perturbed" in c for c in section.figures)
    assert "words perturbed" in section.summary
    # the numeric column beside the text is still attacked; dropout leaves the text alone
    assert section.data["continuous_columns"] == 1
    assert "fgsm" in section.data["curves"] and "dropout" in section.data["curves"]


def test_without_the_preprocessor_the_text_perturbations_are_skipped_with_a_note(text_data):
    import dataclasses

    data = dataclasses.replace(text_data, preprocessor=None)
    section = robustness_section(data, RobustnessConfig(dropout=[0.5], text=[0.1]))
    assert "text" not in section.data
    assert any("Text perturbations were skipped" in note for note in section.notes)


def test_text_rates_come_from_the_config(text_data):
    section = robustness_section(text_data, RobustnessConfig(text=[0.3, 0.1], samples=20))
    assert section.data["text"]["rates"] == [0.0, 0.1, 0.3]  # 0 always, then ascending
    assert "curves" not in section.data or not section.data["curves"]  # nothing else asked
    none = robustness_section(text_data, RobustnessConfig(dropout=[0.5]))
    assert "text" not in none.data  # text: [] measures no perturbation of the texts


def test_word_dropout_at_full_rate_changes_what_the_model_sees(text_data):
    """Perturbed texts are tokenized again: with every word dropped, the text columns hold
    special tokens and padding only."""
    rows = np.arange(len(text_data.y))
    frame = text_data.frame.iloc[rows].copy()
    frame["body"] = perturb_texts(text_data.test_texts["body"], "word_dropout", 1.0, seed=0)
    x = text_data.preprocessor.transform(frame)
    (text,) = text_data.schema.text_slices()
    ids = x[:, text.start : text.stop]
    assert (ids == ids[:1]).all()  # every row: the empty text
    assert not np.array_equal(ids, text_data.x[:, text.start : text.stop])


def test_fgsm_does_not_attack_token_ids(text_data):
    width = text_data.x.shape[1]
    mask = _continuous_columns(text_data, width)
    (text,) = text_data.schema.text_slices()
    assert not mask[text.start : text.stop].any()
    assert mask.sum() == 1  # the numeric column
    x, y = text_data.x, text_data.y
    config = RobustnessConfig(fgsm=[0.5])
    adv = _attacked(text_data, x, y, "fgsm", 0.5, mask, config)
    np.testing.assert_array_equal(adv[:, text.start : text.stop], x[:, text.start : text.stop])
    numeric = list(text_data.schema.tabular_positions())
    assert not np.allclose(adv[:, numeric], x[:, numeric])


# -- end to end ----------------------------------------------------------------------------------


def test_danlu_run_and_evaluate_run_report_the_text_baseline_and_perturbations(tmp_path):
    """The raw texts reach the report both ways: ``danlu run``'s evaluate stage (the prepared
    data in hand) and ``evaluate_run`` (the recipe's data prepared again)."""
    import danlu
    from danlu.config import EvaluateConfig
    from danlu.evaluate import evaluate_run

    source = tmp_path / "topics.csv"
    _texts().to_csv(source, index=False)
    recipe = {
        "name": "text-report-run",
        "data": {
            "source": str(source),
            "target": "topic",
            "features": {"body": "text"},
            "text": {"max_length": 16},
        },
        "task": "classification",
        "model": {"type": "text_cnn", "embedding": 8, "channels": 8, "kernels": [2]},
        "train": {"epochs": 1, "batch_size": 16, "checkpoint": {"every": 0}},
        "evaluate": {
            "calibration": False,
            "explain": False,
            "cost": False,
            "robustness": {"text": list(TEXT_RATES[1:]), "samples": 10},
        },
    }
    home = tmp_path / "home"
    result = danlu.run(recipe, home=home)
    sections = {s.key: s for s in result.report.sections}
    assert sections["baselines"].data["text_baseline"]["model"] == "TF-IDF + logistic regression"
    text = sections["robustness"].data["text"]
    assert sections["robustness"].data["rows"] == 10  # the robustness sample bounds the cost
    assert all(len(points) == len(TEXT_RATES) for points in text["curves"].values())
    config = EvaluateConfig(calibration=None, robustness=None, explain=None, cost=None)
    again = evaluate_run(result.run_id, home=home, config=config)
    baselines = next(s for s in again.sections if s.key == "baselines")
    assert baselines.data["text_baseline"] == sections["baselines"].data["text_baseline"]
