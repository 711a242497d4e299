"""Text generation from a GPT: the key/value cache's speed-up, and the time to the first streamed
token through ``danlu serve``.

The model has the shape of the language-model benchmark's (bench/language_model.py): width 128
(``--width``), 4 layers, 4 heads, context 128 (``--context``), a byte-level BPE of 2,048 tokens
(``--vocab``).
It is trained for one epoch on ``--docs`` BBC News sports articles (a CSV written in the home)
and registered as ``gen-bench@production``; speed depends on the shape, not on how well it was
trained. Another shape writes its own results (``generation_w256_v4096`` for ``--width 256
--vocab 4096``).

1. In process (torch, ``OMP_NUM_THREADS=1``, one thread): ``generate()`` of ``--tokens`` (256)
   new tokens after a 16-token prompt, greedy, with the key/value cache and without it (every
   token re-reads the whole window). 256 new tokens pass the context of 128, so the window jumps
   (the cache is rebuilt from the newest 64 tokens) as in real use; at ``--context 256`` the
   window grows to 256 and jumps once. Tokens/s: the median of
   ``--runs`` runs each, the two alternating.
2. ``danlu serve gen-bench@production`` (a subprocess on 127.0.0.1, ``OMP_NUM_THREADS=1``), one
   connection: ``POST /v1/models/gen-bench/generate`` with ``"stream": true``, timed from sending
   the request to the first ``data:`` event carrying text (time to first token), and to the end
   (tokens/s of the whole stream, 64 new tokens). Medians of ``--requests`` requests after 3
   warm-up requests.

    python bench/generation.py [--home DIR] [--width 128] [--vocab 2048] [--docs 80] [--runs 5]
        [--tokens 256] [--requests 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("DANLU_DB_URL", None)

from _report import machine, write  # noqa: E402

NAME, REF = "gen-bench", "gen-bench@production"
SHAPE = {"type": "gpt", "width": 128, "layers": 4, "heads": 4, "context": 128, "dropout": 0.0}
PROMPT = "The England coach said on Saturday that the team"
CACHE_TARGET = 5.0  # cached / uncached tokens per second
TTFT_TARGET_MS = 100.0


def prepare(home: Path, docs: int, shape: dict[str, Any], vocab: int) -> Any:
    """Train and register the model once in ``home``; returns the store."""
    import danlu.pipeline
    from danlu.data._sources import _load_bbc_news
    from danlu.store import SqlStore

    store = SqlStore(home=home)
    if NAME in {m.name for m in store.list_models()}:
        return store
    frame = _load_bbc_news()
    corpus = home / "sports.csv"
    frame[frame["category"] == "sports"][["text"]].head(docs).to_csv(corpus, index=False)
    recipe = {
        "name": NAME,
        "task": "language_model",
        "data": {"source": str(corpus)},
        "language_model": {"vocab_size": vocab, "samples": {"temperatures": []}},
        "model": shape,
        "train": {"epochs": 1, "batch_size": 16},
        "register": {"name": NAME, "alias": "production"},
    }
    print(f"training {NAME} (1 epoch on {docs} articles) ...", flush=True)
    danlu.pipeline.run(recipe, store=store)
    return store


def in_process(store: Any, tokens: int, runs: int) -> dict[str, Any]:
    """Tokens/s of greedy generation with and without the key/value cache."""
    import torch

    from danlu.data._lm import lm_tokenizer
    from danlu.export import load_model
    from danlu.models._generate import generate

    torch.set_num_threads(1)
    bundle = load_model(REF, store=store)
    tokenizer = lm_tokenizer(bundle)
    ids = tokenizer.encode(PROMPT * 3).ids[:16]
    prompt = tokenizer.decode(ids)
    rates: dict[bool, list[float]] = {True: [], False: []}
    texts: dict[bool, str] = {}
    rebuilds = 0
    windows = _windows(len(ids), tokens, bundle.model.context)
    for run in range(runs + 1):  # the first round warms up
        for use_cache in (True, False):
            began = time.perf_counter()
            gen = generate(
                bundle.model,
                tokenizer,
                prompt,
                max_tokens=tokens,
                temperature=0,
                use_cache=use_cache,
            )
            text = "".join(gen)
            seconds = time.perf_counter() - began
            assert gen.tokens == tokens, (gen.tokens, gen.finish_reason)
            texts[use_cache] = text
            rebuilds = max(rebuilds, gen.rebuilds)
            if run:
                rates[use_cache].append(gen.tokens / seconds)
    cached, uncached = statistics.median(rates[True]), statistics.median(rates[False])
    # the ceiling of the speed-up, the model alone (no sampling, decoding): one cached step
    # (3/4 of the context cached) against one forward over the window the uncached path reads
    # there; the cached step as generation runs it (the GPT's Decoder: a preallocated cache,
    # written in place) and through ``logits(ids, cache)`` (a list of tensors, concatenated)
    net = bundle.model
    n = 3 * net.context // 4
    window = torch.tensor([tokenizer.encode(PROMPT * 40).ids[: n + 1]])
    step_ms, logits_ms, window_ms = [], [], []
    with torch.inference_mode():
        _, cache = net.logits(window[:, :n])
        decoder = net.decoder()
        decoder.feed(window[:, :n])
        for _ in range(runs):
            began = time.perf_counter()
            for _ in range(20):
                decoder.length = n
                decoder.feed(window[:, n:])
            step_ms.append((time.perf_counter() - began) / 20 * 1000)
            began = time.perf_counter()
            for _ in range(20):
                net.logits(window[:, n:], cache, last_only=True)
            logits_ms.append((time.perf_counter() - began) / 20 * 1000)
            began = time.perf_counter()
            for _ in range(5):
                net.logits(window, last_only=True)
            window_ms.append((time.perf_counter() - began) / 5 * 1000)
    params = sum(p.numel() for p in bundle.model.parameters())
    return {
        "new_tokens": tokens,
        "prompt_tokens": len(ids),
        "parameters": params,
        "vocab": tokenizer.get_vocab_size(),
        "cached_tokens_per_s": round(cached, 1),
        "uncached_tokens_per_s": round(uncached, 1),
        "speedup": round(cached / uncached, 2),
        # each run's cached rate over the uncached run right after it: robust to a load that
        # changes between runs
        "speedup_paired_median": round(
            statistics.median(c / u for c, u in zip(rates[True], rates[False], strict=True)), 2
        ),
        "runs_cached": [round(r, 1) for r in rates[True]],
        "runs_uncached": [round(r, 1) for r in rates[False]],
        "model_window_tokens": n + 1,
        "model_step_ms_cached": round(statistics.median(step_ms), 3),
        "model_step_ms_cached_logits_path": round(statistics.median(logits_ms), 3),
        "model_step_ms_window": round(statistics.median(window_ms), 3),
        "speedup_ceiling": round(statistics.median(window_ms) / statistics.median(step_ms), 2),
        "mean_window_tokens_uncached": round(statistics.mean(windows), 1),
        "same_text": texts[True] == texts[False],
        "window_rebuilds": rebuilds,
    }


def _windows(prompt: int, tokens: int, context: int) -> list[int]:
    """The window each uncached step reads (generation's jumps to the newest half)."""
    sizes, length, start = [], prompt, 0
    for _ in range(tokens):
        if length - start > context:
            start = length - max(1, context // 2)
        sizes.append(length - start)
        length += 1
    return sizes


def through_server(home: Path, requests: int) -> dict[str, Any]:
    """Time to the first streamed token and stream tokens/s through ``danlu serve``."""
    import httpx
    from serve_load import Server

    danlu = str(Path(sys.executable).with_name("danlu"))
    server = Server("danlu", [danlu, "serve", REF, "--poll", "0"], "/readyz", home, pin=False)
    try:
        server.wait_ready()
        body = {"prompt": PROMPT, "max_tokens": 64, "temperature": 0.8, "stream": True}
        first_ms: list[float] = []
        rates: list[float] = []
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for i in range(requests + 3):
                began = time.perf_counter()
                first = None
                with http.stream(
                    "POST", f"/v1/models/{NAME}/generate", json={**body, "seed": i}
                ) as answer:
                    assert answer.status_code == 200, answer.read()
                    for line in answer.iter_lines():
                        if not line.startswith("data: "):
                            continue
                        event = json.loads(line[6:])
                        if first is None and "text" in event:
                            first = time.perf_counter() - began
                        if event.get("done"):
                            done = event
                total = time.perf_counter() - began
                if i >= 3 and first is not None:
                    first_ms.append(first * 1000)
                    rates.append(done["completion_tokens"] / total)
            metrics = http.get("/metrics").text
    finally:
        server.stop()
    counted = [
        line for line in metrics.splitlines() if line.startswith("danlu_generated_tokens_total")
    ]
    return {
        "requests": len(first_ms),
        "new_tokens": 64,
        "ttft_ms_median": round(statistics.median(first_ms), 1),
        "ttft_ms_p90": round(sorted(first_ms)[int(0.9 * (len(first_ms) - 1))], 1),
        "stream_tokens_per_s_median": round(statistics.median(rates), 1),
        "metrics_tokens_line": counted[0] if counted else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, help="reuse a home where the model was registered")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--docs", type=int, default=80)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = args.home or Path(tmp)
        home.mkdir(parents=True, exist_ok=True)
        shape = {**SHAPE, "width": args.width, "context": args.context}
        store = prepare(home, args.docs, shape, args.vocab)
        local = in_process(store, args.tokens, args.runs)
        print(json.dumps(local, indent=1), flush=True)
        served = through_server(home, args.requests)
        print(json.dumps(served, indent=1), flush=True)
    payload = {
        "model": {**shape, "trained": f"1 epoch on {args.docs} BBC News sports articles"},
        "in_process": local,
        "server": served,
        "targets": {"speedup": CACHE_TARGET, "ttft_ms": TTFT_TARGET_MS},
        "machine": machine(),
        "command": "OMP_NUM_THREADS=1 python bench/generation.py " + " ".join(sys.argv[1:]),
    }
    rows = [
        [
            "tokens/s, key/value cache (in process)",
            local["cached_tokens_per_s"],
            f"≥ {CACHE_TARGET:g}× uncached",
            "pass" if local["speedup"] >= CACHE_TARGET else "FAIL",
        ],
        ["tokens/s, no cache (in process)", local["uncached_tokens_per_s"], "", ""],
        [
            "speed-up (ratio of the medians; median of the paired runs' ratios)",
            f"{local['speedup']}× ({local['speedup_paired_median']}×)",
            f"≥ {CACHE_TARGET:g}×",
            "",
        ],
        [
            f"model alone: {local['model_window_tokens']}-token window / 1 cached step",
            f"{local['speedup_ceiling']}× ({local['model_step_ms_window']} ms / "
            f"{local['model_step_ms_cached']} ms; through logits(ids, cache): "
            f"{local['model_step_ms_cached_logits_path']} ms)",
            "",
            "",
        ],
        [
            "time to first token, 1 connection (ms)",
            served["ttft_ms_median"],
            f"≤ {TTFT_TARGET_MS:g}",
            "pass" if served["ttft_ms_median"] <= TTFT_TARGET_MS else "FAIL",
        ],
        ["stream tokens/s, 1 connection", served["stream_tokens_per_s_median"], "", ""],
    ]
    notes = (
        f"GPT width {args.width}, 4 layers, 4 heads, context {args.context}, vocab {local['vocab']} "
        f"({local['parameters']:,} parameters), trained 1 epoch on {args.docs} BBC News sports "
        f"articles. In process: {local['new_tokens']} new tokens after a "
        f"{local['prompt_tokens']}-token prompt, greedy, median of {args.runs} runs (the uncached "
        f"path reads {local['mean_window_tokens_uncached']} tokens per step on average; cached and "
        f"uncached give the same text: {local['same_text']}; the window was rebuilt "
        f"{local['window_rebuilds']} times). Server: `danlu serve` on 127.0.0.1, 64 new tokens at "
        f"temperature 0.8, median of {served['requests']} requests. OMP_NUM_THREADS=1.\n\n"
        f"Command: `{payload['command']}`"
    )
    default = (args.width, args.vocab) == (128, 2048)
    name = "generation" if default else f"generation_w{args.width}_v{args.vocab}"
    name += "" if args.context == 128 else f"_c{args.context}"
    path = write(name, payload, ["measure", "value", "target", ""], rows, notes)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
