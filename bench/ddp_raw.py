"""The ceiling for data-parallel training on this machine, without danlu: a hand-written DDP loop.

For each model and per-rank batch ``b``, three measures of training rows per second (after 5
warm-up steps, ``--steps`` timed steps, 1 thread per process):

- **1 process** at batch ``2b`` (the same global batch as 2 ranks × b);
- **2 independent processes** at batch ``b``, no communication: what the two cores give when
  nothing is shared (the hardware's own ceiling, memory bandwidth included);
- **2 DDP ranks** (``torch.distributed.run``, gloo) at batch ``b``: the same plus the gradient
  all-reduce.

The models are those of ``bench/ddp.py``: the digits CNN (``examples/digits_cnn.yaml``'s model,
8×8 inputs, 10 classes) and the wide MLP (32 → 1024 → 1024 → 4). Also the time of one gloo
all-reduce of each model's gradient size, alone.

    python bench/ddp_raw.py [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ["OMP_NUM_THREADS"] = "1"

CASES = [("cnn", 64), ("cnn", 256), ("mlp", 512), ("mlp", 2048)]


def build(kind: str):  # noqa: ANN201 - a torch module, torch imported lazily
    import torch.nn as nn

    if kind == "cnn":
        import yaml

        from danlu.models._cnn import CNNSpec, _build

        example = Path(__file__).resolve().parent.parent / "examples" / "digits_cnn.yaml"
        spec = yaml.safe_load(example.read_text())["model"]
        spec.pop("type")
        return _build(CNNSpec(**spec), (1, 8, 8), 10), 64, 10
    layers = [nn.Linear(32, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 4)]
    return nn.Sequential(*layers), 32, 4


def worker(kind: str, batch: int, steps: int, ddp: bool) -> None:
    """One process's loop; prints its rows per second as JSON."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, width, classes = build(kind)
    if ddp:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        model = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = torch.randn(batch, width), torch.randint(0, classes, (batch,))
    for step in range(steps + 5):
        if step == 5:
            start = time.perf_counter()
        loss_fn(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    rate = batch * steps / (time.perf_counter() - start)
    print(json.dumps({"rank": int(os.environ.get("RANK", 0)), "rows_per_s": rate}), flush=True)
    if ddp:
        torch.distributed.destroy_process_group()


def all_reduce_worker(kind: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    model, _, _ = build(kind)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    for _ in range(3):
        dist.all_reduce(flat)
    start = time.perf_counter()
    for _ in range(20):
        dist.all_reduce(flat)
    ms = (time.perf_counter() - start) / 20 * 1000
    if dist.get_rank() == 0:
        print(json.dumps({"mb": flat.numel() * 4 / 1e6, "ms": ms}), flush=True)
    dist.destroy_process_group()


def rates(output: str) -> list[float]:
    return [json.loads(line)["rows_per_s"] for line in output.splitlines() if "rows_per_s" in line]


def launch(args: list[str], ddp: bool, port: int) -> str:
    me = [sys.executable, __file__]
    if ddp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        cmd += ["--master_port", str(port), __file__, *args]
    else:
        cmd = [*me, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    return done.stdout


def measure(kind: str, batch: int, steps: int, port: int) -> dict[str, float]:
    one = rates(launch(["--worker", kind, str(2 * batch), str(steps)], False, port))[0]
    pair = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", kind, str(batch), str(steps)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    independent = [rates(p.communicate(timeout=600)[0])[0] for p in pair]
    ddp = rates(launch(["--worker-ddp", kind, str(batch), str(steps)], True, port))
    return {
        "one_process": one,
        "two_independent": sum(independent),
        "two_ddp": sum(ddp),
        "independent_ratio": sum(independent) / one,
        "ddp_ratio": sum(ddp) / one,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--worker", "--worker-ddp"):
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[1] == "--worker-ddp")
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--all-reduce":
        all_reduce_worker(sys.argv[2])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    from _report import machine, write

    load_before = os.getloadavg()
    results = {}
    for i, (kind, batch) in enumerate(CASES):
        results[f"{kind}@{batch}"] = measure(kind, batch, args.steps, 29650 + i)
    reduce = {
        kind: json.loads(launch(["--all-reduce", kind], True, 29660 + i).strip().splitlines()[-1])
        for i, kind in enumerate(("cnn", "mlp"))
    }
    payload = {
        "benchmark": "ddp_raw",
        "machine": machine(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "steps": args.steps,
        "cases": results,
        "all_reduce_alone": reduce,
    }
    names = {"cnn": "digits CNN", "mlp": "wide MLP"}
    rows = []
    for (kind, batch), got in zip(CASES, results.values(), strict=True):
        rows.append(
            [
                f"{names[kind]}, {batch} rows per rank",
                f"{got['one_process']:.0f}",
                f"{got['two_independent']:.0f} ({got['independent_ratio']:.2f}×)",
                f"{got['two_ddp']:.0f} (**{got['ddp_ratio']:.2f}×**)",
                f"{reduce[kind]['mb']:.1f} MB: {reduce[kind]['ms']:.1f} ms",
            ]
        )
    path = write(
        "ddp_raw",
        payload,
        [
            "model, per-rank batch",
            "1 process × 2b (rows/s)",
            "2 independent × b",
            "2 DDP ranks × b",
            "one all-reduce alone",
        ],
        rows,
        notes=f"A hand-written loop, no danlu. Load average {load_before[0]:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after. Command: `python bench/ddp_raw.py --steps {args.steps}`",
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
