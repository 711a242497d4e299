"""The GPT's training step on a CPU: fp32 against bf16 autocast, torch's default Adam loop
against the fused step, and the attention's backward in bf16 against fp32 (why the GPT attends
in fp32 under CPU autocast).

Each variant runs the same random batches; rounds are interleaved (variant A, B, C, A, B, C, …)
so that a drifting load hits every variant alike; the table gives medians of the rounds.

    OMP_NUM_THREADS=2 python bench/gpt_step.py [--width 256] [--batch 8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine, write  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per round")
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from danlu.models._gpt_nets import GPT

    torch.set_num_threads(args.threads)
    x = torch.randint(0, args.vocab, (args.batch, args.context + 1))

    def gpt_step(bf16: bool, fused: bool) -> Any:
        torch.manual_seed(0)
        model = GPT(args.vocab, args.context, args.width, args.layers, 4, dropout=0.0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused or None)
        cast = (
            (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
            if bf16
            else contextlib.nullcontext
        )

        def step() -> None:
            with cast():
                loss = model(x).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    heads, head_width = 4, args.width // 4
    qkv = torch.randn(3, args.batch, heads, args.context, head_width)

    def attention(dtype: torch.dtype) -> Any:
        q, k, v = (t.to(dtype).requires_grad_() for t in qkv)

        def step() -> None:
            F.scaled_dot_product_attention(q, k, v, is_causal=True).float().sum().backward()

        return step

    variants = {
        "GPT step, fp32, default Adam": gpt_step(bf16=False, fused=False),
        "GPT step, fp32, fused Adam": gpt_step(bf16=False, fused=True),
        "GPT step, bf16 autocast (attention in fp32), fused Adam": gpt_step(bf16=True, fused=True),
        "attention forward + backward, fp32": attention(torch.float32),
        "attention forward + backward, bf16": attention(torch.bfloat16),
    }
    for step in variants.values():  # warm-up
        for _ in range(3):
            step()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in variants.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - start) / args.steps * 1e3)
    ms = {name: statistics.median(t) for name, t in times.items()}
    fp32 = ms["GPT step, fp32, default Adam"]
    ratios = {
        "fused_vs_default_adam": fp32 / ms["GPT step, fp32, fused Adam"],
        "bf16_vs_fp32_step": ms["GPT step, fp32, fused Adam"]
        / ms["GPT step, bf16 autocast (attention in fp32), fused Adam"],
        "bf16_attention_slowdown": ms["attention forward + backward, bf16"]
        / ms["attention forward + backward, fp32"],
    }
    payload = {
        "benchmark": "gpt_step",
        "args": vars(args),
        "ms_per_step": ms,
        "rounds_ms": times,
        "ratios": ratios,
        "machine": machine(),
    }
    rows = [[name, f"{value:.1f}"] for name, value in ms.items()]
    notes = (
        f"GPT of {args.layers} layers, width {args.width}, context {args.context}, vocabulary "
        f"{args.vocab}, batches of {args.batch}, {args.threads} thread(s); medians of "
        f"{args.rounds} interleaved rounds of {args.steps} steps. Fused Adam: "
        f"{ratios['fused_vs_default_adam']:.2f}× the default loop's speed; bf16 autocast: "
        f"{ratios['bf16_vs_fp32_step']:.2f}× fp32's (both fused); the attention's forward and "
        f"backward in bf16 take {ratios['bf16_attention_slowdown']:.2f}× the time of fp32. "
        f"Command: `python bench/gpt_step.py {' '.join(sys.argv[1:])}`."
    )
    path = write("gpt_step", payload, ["variant", "ms per step"], rows, notes)
    print(path.read_text())


if __name__ == "__main__":
    main()
