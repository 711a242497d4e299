"""model: {type: gpt}: the NLL forward, causality, the key/value cache and the spec."""

from __future__ import annotations

import pytest
import torch

from danlu.config import ModelConfig
from danlu.errors import ConfigError
from danlu.models import GPTSpec, build_model
from danlu.models._gpt import is_language_model
from danlu.models._gpt_nets import GPT

VOCAB, CONTEXT = 300, 16


def tiny_gpt(seed: int = 0, **options: object) -> GPT:
    torch.manual_seed(seed)
    shape: dict = {"context": CONTEXT, "width": 32, "layers": 2, "heads": 4, "dropout": 0.0}
    return GPT(VOCAB, **{**shape, **options}).eval()


def test_forward_is_the_cross_entropy_of_each_next_token():
    gpt = tiny_gpt()
    x = torch.randint(0, VOCAB, (3, CONTEXT + 1))
    nll = gpt(x.float())  # the prepared matrix holds ids as float32
    assert nll.shape == (3, CONTEXT) and nll.dtype == torch.float32
    logits, _ = gpt.logits(x[:, :-1])
    for b in range(3):
        for t in range(CONTEXT):
            row = logits[b, t].double()
            expected = row.logsumexp(0) - row[x[b, t + 1]]  # -log softmax of the target
            assert nll[b, t].item() == pytest.approx(expected.item(), abs=1e-4)
    assert torch.equal(gpt(x), nll)  # int64 ids give the same


def test_bf16_autocast_attends_in_fp32_and_keeps_the_losses_and_gradients(monkeypatch):
    """Under the engine's bf16 autocast on a CPU the projections run in bf16 and attention in
    fp32 (its CPU kernels are several times faster there): the losses and gradients stay those
    of fp32 to bf16's rounding, and the cache keeps the projections' dtype."""
    import torch.nn.functional as F

    gpt = tiny_gpt().train()
    x = torch.randint(0, VOCAB, (4, CONTEXT + 1))
    seen: list[torch.dtype] = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        seen.append(q.dtype)
        return sdpa(q, *args, **kwargs)

    reference = gpt(x)
    reference.mean().backward()
    grads = {n: p.grad.clone() for n, p in gpt.named_parameters()}
    gpt.zero_grad()
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nll = gpt(x)
        _, cache = gpt.logits(x[:, :4])
    nll.mean().backward()
    assert seen and set(seen) == {torch.float32}
    assert cache[0][0].dtype == torch.bfloat16
    assert nll.dtype == torch.float32
    assert torch.allclose(nll, reference, atol=0.1) and not torch.equal(nll, reference)
    checked = 0
    for name, p in gpt.named_parameters():
        if grads[name].norm() < 1e-6:  # the key's bias: softmax ignores it, its gradient is 0
            continue
        cosine = F.cosine_similarity(p.grad.flatten(), grads[name].flatten(), dim=0)
        assert cosine > 0.95, name
        checked += 1
    assert checked >= 20


def test_a_later_token_does_not_change_earlier_losses():
    gpt = tiny_gpt()
    x = torch.randint(0, VOCAB, (2, CONTEXT + 1))
    changed = x.clone()
    k = 9
    changed[:, k] = (x[:, k] + 1) % VOCAB
    before, after = gpt(x), gpt(changed)
    assert torch.equal(before[:, : k - 1], after[:, : k - 1])  # targets before k: untouched
    assert not torch.allclose(before[:, k - 1 :], after[:, k - 1 :])  # x[k] is a target and input


def test_the_cache_gives_the_logits_of_the_whole_sequence():
    gpt = tiny_gpt()
    ids = torch.randint(0, VOCAB, (2, 12))
    full, _ = gpt.logits(ids)
    first, cache = gpt.logits(ids[:, :5])
    parts = [first]
    chunk, cache = gpt.logits(ids[:, 5:8], cache)  # several new tokens at once
    parts.append(chunk)
    for t in range(8, 12):  # then one by one
        step, cache = gpt.logits(ids[:, t : t + 1], cache)
        parts.append(step)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    last, _ = gpt.logits(ids, last_only=True)  # the head on the last position only
    torch.testing.assert_close(last, full[:, -1:], atol=1e-5, rtol=1e-5)
    assert len(cache) == 2 and cache[0][0].shape == (2, 4, 12, 8)  # (B, heads, t, head width)
    with pytest.raises(ValueError, match="context of 16"):
        gpt.logits(ids[:, :5], cache)


def test_the_decoder_gives_the_cached_logits_with_its_cache_written_in_place():
    gpt = tiny_gpt(tie_weights=False)
    ids = torch.randint(0, VOCAB, (2, CONTEXT))
    with torch.inference_mode():
        full, _ = gpt.logits(ids)
        decoder = gpt.decoder(batch=2)
        storage = decoder.cache.data_ptr()
        steps = [decoder.feed(ids[:, :5]), decoder.feed(ids[:, 5:9])]  # a prompt, then a chunk
        steps += [decoder.feed(ids[:, t : t + 1]) for t in range(9, CONTEXT)]  # one by one
        ends = [4, 8, *range(9, CONTEXT)]
        torch.testing.assert_close(torch.cat(steps, 1), full[:, ends], atol=1e-5, rtol=1e-5)
        assert decoder.length == CONTEXT and decoder.cache.data_ptr() == storage
        with pytest.raises(ValueError, match="context of 16"):
            decoder.feed(ids[:, :1])
        decoder.reset()  # the window jumped: the next feed starts at position 0 again
        again = decoder.feed(ids[:, 3:10])
    torch.testing.assert_close(again, gpt.logits(ids[:, 3:10], last_only=True)[0])


def test_the_decoder_runs_lora_adapters():
    from peft import LoraConfig, get_peft_model

    gpt = tiny_gpt()
    tuned = get_peft_model(gpt, LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"]))
    with torch.no_grad():  # adapters that change the output (peft starts B at zero)
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    net = tuned.get_base_model().eval()
    ids = torch.randint(0, VOCAB, (1, 10))
    with torch.inference_mode():
        want, _ = net.logits(ids, last_only=True)
        decoder = net.decoder()
        decoder.feed(ids[:, :6])
        got = decoder.feed(ids[:, 6:])
        with tuned.disable_adapter():
            plain, _ = net.logits(ids, last_only=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(want, plain, atol=1e-3)  # the adapters mattered


def test_the_head_shares_the_token_embedding_unless_untied():
    tied, untied = tiny_gpt(), tiny_gpt(tie_weights=False)
    assert tied.head.weight is tied.tokens.weight
    assert untied.head.weight is not untied.tokens.weight
    n = sum(p.numel() for p in tied.parameters())
    assert sum(p.numel() for p in untied.parameters()) == n + VOCAB * 32


def test_it_learns_a_repeating_sequence():
    gpt = tiny_gpt()
    gpt.train()
    x = torch.tensor([[5, 6, 7, 8] * 4 + [5]] * 4)
    optimizer = torch.optim.Adam(gpt.parameters(), lr=3e-3)
    first = gpt(x).mean().item()
    for _ in range(40):
        optimizer.zero_grad()
        loss = gpt(x).mean()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 4


class _Task:
    def output_dim(self, schema: object) -> int:
        return VOCAB


def test_the_builder_takes_the_vocabulary_from_the_task():
    config = ModelConfig.model_validate(
        {"type": "gpt", "width": 32, "layers": 1, "heads": 2, "context": 8}
    )
    gpt = build_model(config, None, _Task())  # type: ignore[arg-type]
    assert isinstance(gpt, GPT) and is_language_model(gpt)
    assert (gpt.vocab_size, gpt.context, len(gpt.blocks)) == (VOCAB, 8, 1)
    assert not is_language_model(torch.nn.Linear(2, 2))


def test_the_spec_refuses_a_width_heads_do_not_divide():
    with pytest.raises(ValueError, match="multiple of heads"):
        GPTSpec(width=30, heads=4)
    with pytest.raises(ValueError, match="finetune: lora"):
        GPTSpec(lora={"r": 4})
    config = ModelConfig.model_validate({"type": "gpt", "width": 30, "heads": 4})
    with pytest.raises(ConfigError, match="multiple of heads"):
        build_model(config, None, _Task())  # type: ignore[arg-type]


def test_the_engine_forward_exports_to_onnx_and_agrees_with_torch():
    import numpy as np

    from danlu.export._onnx import _export, parity_check

    gpt = tiny_gpt()
    x = np.random.default_rng(0).integers(0, VOCAB, (6, CONTEXT + 1)).astype(np.float32)
    onnx_bytes, exporter = _export(gpt, CONTEXT + 1, x)  # warnings are errors here
    assert exporter == "dynamo"
    assert parity_check(gpt, onnx_bytes, x, atol=1e-4)["passed"]
