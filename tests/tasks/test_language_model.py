"""task: language_model on the task contract: the loss and metrics on padded blocks, the recipe
checks, a tiny GPT trained from a folder of .txt files through danlu.run (its n-gram baselines
and samples), and LoRA fine-tuning from a registered base on a narrower corpus."""

from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import pytest
import torch

import danlu
from danlu.config import load_recipe
from danlu.data._lm import lm_tokenizer
from danlu.errors import ConfigError
from danlu.evaluate._context import EvalData
from danlu.evaluate._lm_report import lm_sections
from danlu.models import prepare_recipe_data
from danlu.tasks import LanguageModelTask, get_task
from danlu.train import check_recipe

SPORT = "the team won the match with a late goal and the fans sang".split()
TECH = "the new phone runs a fast chip and the app saves power".split()
MODEL = {"type": "gpt", "width": 32, "layers": 2, "heads": 2, "context": 16, "dropout": 0.0}


def _docs(n: int, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = SPORT if i % 2 else TECH
        start = rng.randrange(len(words))
        text = " ".join(words[(start + j) % len(words)] for j in range(rng.randint(12, 30)))
        rows.append({"text": text.capitalize() + ".", "category": "sport" if i % 2 else "tech"})
    return pd.DataFrame(rows)


def _recipe(source: str, **extra) -> dict:
    return {
        "name": "tiny-lm",
        "task": "language_model",
        "data": {"source": source, "split": {"val": 0.15, "test": 0.15, "seed": 0}},
        "language_model": {
            "vocab_size": 300,
            "samples": {"temperatures": [0.0], "tokens": 8},
            "near_duplicates": None,  # the documents are rotations of two sentences
        },
        "model": dict(MODEL),
        "train": {
            "epochs": 2,
            "batch_size": 8,
            "optimizer": {"lr": 0.01},
            "seed": 0,
            "bucket_by_length": False,
        },
        **extra,
    }


def test_loss_and_metrics_ignore_padding():
    task = LanguageModelTask()
    nll = np.array([[1.0, 2.0, 9.0], [3.0, 0.5, 0.5]])
    y = np.array([[2.0, 1.0, 0.0], [4.0, 1.0, 1.0]])  # the 9.0 target is padding
    metrics = task.metrics(nll, y, None)
    assert metrics["tokens"] == 5 and metrics["bytes"] == 9
    assert metrics["nll"] == pytest.approx(7.0 / 5)
    assert metrics["perplexity"] == pytest.approx(math.exp(7.0 / 5))
    assert metrics["bits_per_byte"] == pytest.approx(7.0 / math.log(2) / 9)
    loss = task.make_loss()(torch.tensor(nll), torch.tensor(y))
    assert loss.item() == pytest.approx(7.0 / 5)
    quick = task.quick_metrics(torch.tensor(nll), torch.tensor(y), None)
    assert quick["perplexity"] == pytest.approx(metrics["perplexity"])
    assert task.row_scores(nll, y, None).tolist() == pytest.approx([-1.5, -4.0 / 3])
    assert task.monitor_mode("val_perplexity") == "min" and task.headline_mode == "min"


def test_recipe_checks_name_the_key_and_a_fix():
    recipe = load_recipe(
        _recipe(
            "x.csv",
            model={**MODEL, "finetune": "lora"},
            language_model={"vocab_size": 100, "eval_stride": 10_000},
            train={"adversarial": {"method": "fgsm", "epsilon": 0.1}, "class_weight": "balanced"},
        )
        | {"data": {"source": "x.csv", "target": "text", "augment": [{"noise": 0.1}]}}
    )
    with pytest.raises(ConfigError) as caught:
        check_recipe(recipe)
    text = str(caught.value)
    for key in (
        "language_model.vocab_size",
        "language_model.eval_stride",
        "model.finetune",
        "train.adversarial",
        "train.class_weight",
        "data.target",
        "data.augment",
    ):
        assert key in text, key
    assert "257" in text and "model.base" in text


def test_trains_from_a_folder_reports_baselines_and_serves_its_tokenizer(tmp_path):
    folder = tmp_path / "corpus"
    for i, row in _docs(36).iterrows():
        (folder / row["category"]).mkdir(parents=True, exist_ok=True)
        (folder / row["category"] / f"{i}.txt").write_text(row["text"])
    recipe = _recipe(str(folder))
    recipe["train"]["epochs"] = 8
    result = danlu.run(recipe)
    assert result.task.name == "language_model"
    metrics = result.metrics
    vocab = len(lm_tokenizer(result.predictor).get_vocab())
    assert metrics["perplexity"] < vocab / 10, (metrics, vocab)  # far below guessing uniformly
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["nll"]))
    nats = metrics["nll"] * metrics["tokens"]
    assert metrics["bits_per_byte"] == pytest.approx(nats / math.log(2) / metrics["bytes"])
    prepared = prepare_recipe_data(load_recipe(recipe))
    data = EvalData.from_prepared(result.model, result.task, prepared)
    data.preprocessor = result.preprocessor
    sections = {s.key: s for s in lm_sections(data, load_recipe(recipe).language_model)}
    baselines = sections["lm_baselines"].data
    names = [r["model"] for r in baselines["rows"]]
    assert names == ["danlu model", "unigram (add-one)", "Kneser-Ney 5-gram"]
    assert baselines["rows"][0]["perplexity"] == pytest.approx(metrics["perplexity"], rel=1e-4)
    unigram = baselines["rows"][1]
    assert unigram["perplexity"] > baselines["rows"][0]["perplexity"]  # beats add-one counting
    assert baselines["strongest"]["paired"] is not None
    samples = sections["lm_samples"].data
    assert samples["rows"][0]["temperature"] == 0.0 and samples["rows"][0]["text"]
    tok = lm_tokenizer(result.predictor)  # the tokenizer comes back with the model
    assert tok.decode(tok.encode("the team won").ids) == "the team won"
    signature = get_task("language_model").signature(result.schema)
    assert signature["inputs"][0]["name"] == "prompt" and signature["context"] == 16
    assert "text" in signature["generate"]["outputs"]
    scored = result.predict(pd.DataFrame({"prompt": ["the team won the match", "zq xv kj"]}))
    assert scored["prediction"][0] < scored["prediction"][1]  # familiar text is likelier
    skipped = get_task("language_model").report_skips
    assert {"explain", "robustness", "membership", "baselines"} <= set(skipped)


def test_lora_on_a_narrower_corpus_from_a_registered_base(tmp_path):
    source = tmp_path / "news.csv"
    _docs(60).to_csv(source, index=False)
    home = tmp_path / "store"  # not $DANLU_HOME: model.base is read from the run's own store
    base = danlu.run(
        _recipe(str(source), register={"name": "base-lm", "alias": "production"}), home=home
    )
    assert base.registered is not None
    recipe = _recipe(
        str(source),
        model={**MODEL, "base": "base-lm@production", "finetune": "lora", "lora": {"r": 2}},
        language_model={"where": {"category": "sport"}, "vocab_size": 999, "near_duplicates": None},
    )
    recipe["name"] = "sport-lm"
    recipe["register"] = {"name": "sport-lm"}
    tuned = danlu.run(recipe, home=home)
    base_tok = lm_tokenizer(base.preprocessor)
    assert lm_tokenizer(tuned.preprocessor).get_vocab() == base_tok.get_vocab()  # base's BPE
    trainable = sum(p.numel() for p in tuned.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in tuned.model.parameters())
    assert 0 < trainable / total < 0.1
    assert tuned.details["parameters"] == {"total": total, "trainable": trainable}  # summary
    # the saved model loads on its own (no base read) and scores as trained
    from danlu.store import SqlStore

    with SqlStore(home=home) as store:
        bundle = danlu.load_model("sport-lm", store=store)
    x = torch.tensor(np.arange(17, dtype=np.float32)[None, :])
    with torch.no_grad():
        assert torch.allclose(bundle.model(x), tuned.model.eval()(x), atol=1e-5)


def test_a_base_that_is_not_a_language_model_is_refused(tmp_path):
    danlu.run(
        {
            "name": "iris",
            "task": "classification",
            "data": {"source": "builtin:iris"},
            "model": {"type": "mlp", "hidden": [4]},
            "train": {"epochs": 1},
            "register": {"name": "iris-clf"},
        }
    )
    source = tmp_path / "news.csv"
    _docs(12).to_csv(source, index=False)
    recipe = _recipe(str(source), model={**MODEL, "base": "iris-clf", "finetune": "lora"})
    with pytest.raises(ConfigError, match=r"model.base.*classification model, not a language"):
        danlu.run(recipe)


def test_the_trust_report_holds_the_lm_sections_and_skips_row_sections(tmp_path, monkeypatch):
    from danlu.pipeline import add_report
    from danlu.store import SqlStore

    source = tmp_path / "news.csv"
    _docs(40).to_csv(source, index=False)
    home = tmp_path / "store"
    result = danlu.run(_recipe(str(source), evaluate=True), home=home)
    sections = {s.key: s for s in result.report.sections}
    assert sections["lm_baselines"].data["rows"][0]["model"] == "danlu model"
    assert sections["lm_samples"].data["rows"]
    for key in ("explain", "robustness", "membership", "baselines"):  # asked for by true
        assert sections[key].data["skipped"], key
        assert "not applicable to the language_model task" in sections[key].notes[0].lower()

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("danlu.evaluate._lm_report.lm_sections", broken)
    with SqlStore(home=home) as store:
        again = add_report(result.run_id, store=store).report
    failed = {s.key: s for s in again.sections}["lm_baselines"]
    assert "failed (RuntimeError: boom)" in failed.flags[0]
    assert {s.key for s in again.sections} >= {"metrics", "cost"}  # the rest of the report
