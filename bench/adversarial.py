"""Adversarial training on digits: PGD accuracy (ε = 0.1 in scaled pixel units, 10 steps) of
adversarially trained models against the same model trained without ``train.adversarial``.

Everything goes through ``danlu.run`` and the trust report: for each seed the main recipe
(PGD training, ε = 0.1, 10 steps, ratio 1 — Madry-style) is run with ``evaluate.robustness``
at ε = 0.1, so its report trains the standard reference (the recipe minus train.adversarial,
same split and seed: a child run) and measures both models on the same test rows with the same
attacks. Two cheaper variants (PGD with ratio 0.5, FGSM with ratio 0.5) are run with the
comparison off and read from their own reports; their reference is the main run's (same recipe
but for train.adversarial, same seed, same test rows and attack seeds).

Pixels are minmax-scaled to 0..1 on the training split (as ``examples/digits_cnn.yaml``), so
ε = 0.1 is a tenth of the pixel range (1.6 of 16 grey levels).

    python bench/adversarial.py [--seeds 0 1 2] [--jobs 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine, write  # noqa: E402

EPSILON = 0.1
PGD_STEPS = 10
EPOCHS = 30
MODEL = {"type": "mlp", "hidden": [256, 128]}
#: name -> train.adversarial; the first is the main recipe, whose report trains the reference
VARIANTS: dict[str, dict[str, Any]] = {
    "pgd, ratio 1": {"method": "pgd", "epsilon": EPSILON, "steps": PGD_STEPS, "ratio": 1.0},
    "pgd, ratio 0.5": {"method": "pgd", "epsilon": EPSILON, "steps": PGD_STEPS, "ratio": 0.5},
    "fgsm, ratio 0.5": {"method": "fgsm", "epsilon": EPSILON, "ratio": 0.5},
}
MAIN = next(iter(VARIANTS))


def recipe(seed: int, adversarial: dict[str, Any], compare: bool) -> dict[str, Any]:
    return {
        "name": "digits-adversarial",
        "data": {
            "source": "builtin:digits",
            "split": {"test": 0.2, "val": 0.1, "stratify": True, "seed": seed},
            "prepare": {"scale": "minmax"},
        },
        "task": "classification",
        "model": MODEL,
        "train": {
            "epochs": EPOCHS,
            "batch_size": 64,
            "optimizer": {"name": "adamw", "lr": 2e-3, "weight_decay": 1e-4},
            "seed": seed,
            "adversarial": adversarial,
        },
        "evaluate": {
            "bootstrap": 0,
            "baselines": False,
            "calibration": False,
            "explain": False,
            "membership": False,
            "cost": False,
            "robustness": {
                "fgsm": [EPSILON],
                "pgd": [EPSILON],
                "pgd_steps": PGD_STEPS,
                "compare_standard": compare,
            },
        },
    }


def one(seed: int, variant: str) -> dict[str, Any]:
    """One run of ``variant`` at ``seed``: its clean / FGSM / PGD accuracy (and, for the main
    variant, the standard reference's) from its trust report."""
    import os

    os.environ["OMP_NUM_THREADS"] = "1"
    import logging
    import tempfile
    import time

    import torch

    import danlu
    from danlu.store import SqlStore

    torch.set_num_threads(1)
    logging.getLogger("danlu").setLevel(logging.ERROR)
    home = tempfile.mkdtemp(prefix="danlu-bench-adv-")
    start = time.perf_counter()
    result = danlu.run(recipe(seed, VARIANTS[variant], variant == MAIN), home=home)
    seconds = time.perf_counter() - start
    section = next(s for s in result.report.sections if s.key == "robustness")
    curves = section.data["curves"]
    store = SqlStore(home=home)
    out: dict[str, Any] = {
        "seed": seed,
        "variant": variant,
        "clean": section.data["clean"],
        "fgsm": curves["fgsm"][0]["value"],
        "pgd": curves["pgd"][0]["value"],
        "train_seconds": store.get_run(result.run_id).metrics.get("train_seconds"),
        "wall_seconds": seconds,
    }
    if variant == MAIN:
        gain = section.data["adversarial_training"]
        reference = gain["models"][1]
        out["standard"] = {k: reference[k] for k in ("clean", "fgsm", "pgd")}
        out["standard"]["train_seconds"] = store.get_run(reference["run_id"]).metrics.get(
            "train_seconds"
        )
        out["report_note"] = next(n for n in section.notes if "same recipe trained without" in n)
    return out


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def points(value: float) -> str:
    return f"{100 * value:+.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    jobs = [(seed, variant) for seed in args.seeds for variant in VARIANTS]
    with ProcessPoolExecutor(args.jobs) as pool:
        done = list(pool.map(one, *zip(*jobs, strict=True)))
    results = {(r["seed"], r["variant"]): r for r in done}
    standard = {seed: results[(seed, MAIN)]["standard"] for seed in args.seeds}

    def median(values: list[float]) -> float:
        return statistics.median(values)

    rows: list[list[Any]] = []
    summary: dict[str, Any] = {}
    models = [("standard training", lambda s: standard[s])] + [
        (f"adversarial: {v}", lambda s, v=v: results[(s, v)]) for v in VARIANTS
    ]
    for name, get in models:
        figures = {k: median([get(s)[k] for s in args.seeds]) for k in ("clean", "fgsm", "pgd")}
        gain = {
            k: median([get(s)[k] - standard[s][k] for s in args.seeds])
            for k in ("clean", "fgsm", "pgd")
        }
        times = [get(s)["train_seconds"] / standard[s]["train_seconds"] for s in args.seeds]
        summary[name] = {"median": figures, "median_gain": gain, "train_time_ratio": median(times)}
        rows.append([
            name, pct(figures["clean"]), pct(figures["fgsm"]), pct(figures["pgd"]),
            "" if name == "standard training" else points(gain["pgd"]),
            "" if name == "standard training" else points(gain["clean"]),
            f"{median(times):.1f}×",
        ])  # fmt: skip
    main_gain = summary[f"adversarial: {MAIN}"]["median_gain"]
    rows[1][4] = f"**{rows[1][4]}**"
    per_seed = [
        {"seed": s, "standard": standard[s], **{v: results[(s, v)] for v in VARIANTS}}
        for s in args.seeds
    ]
    payload = {
        "benchmark": "adversarial",
        "data": "builtin:digits, minmax-scaled pixels, split test 0.2 / val 0.1 (stratified)",
        "model": MODEL,
        "epochs": EPOCHS,
        "epsilon": EPSILON,
        "pgd_steps": PGD_STEPS,
        "variants": VARIANTS,
        "seeds": args.seeds,
        "per_seed": per_seed,
        "medians": summary,
        "pgd_gain_points_median": 100 * main_gain["pgd"],
        "clean_drop_points_median": -100 * main_gain["clean"],
        "target_pgd_gain_points": 20.0,
        "machine": machine(),
    }
    per_seed_text = "; ".join(
        f"seed {s}: PGD {pct(standard[s]['pgd'])} → {pct(results[(s, MAIN)]['pgd'])}, clean "
        f"{pct(standard[s]['clean'])} → {pct(results[(s, MAIN)]['clean'])}"
        for s in args.seeds
    )
    notes = (
        f"Digits (1,797 8×8 images, pixels minmax-scaled to 0..1), MLP {MODEL['hidden']}, "
        f"{EPOCHS} epochs, AdamW, seeds {args.seeds} (split and training); medians over the "
        f"seeds of accuracy on the whole test split (360 rows). Attacks: L∞, ε = {EPSILON} in "
        f"scaled pixel units; PGD {PGD_STEPS} steps of 2.5·ε/{PGD_STEPS} from a random start. "
        "Gains are medians of the per-seed differences against standard training of the same "
        "seed, in points; training time is the median per-seed ratio of the run's "
        "train_seconds to standard training's (runs side by side on a shared 2-CPU machine: "
        f"noisy). Main recipe per seed ({MAIN}): {per_seed_text}. "
        "Command: `python bench/adversarial.py`."
    )
    path = write(
        "adversarial", payload,
        ["model", "clean accuracy", f"FGSM ε={EPSILON}", f"PGD ε={EPSILON} ({PGD_STEPS} steps)",
         "PGD gain (points)", "clean change (points)", "training time"],
        rows, notes,
    )  # fmt: skip
    print(
        f"PGD gain {100 * main_gain['pgd']:+.1f} points (target ≥ +20), clean "
        f"{100 * main_gain['clean']:+.1f} points → {path}"
    )


if __name__ == "__main__":
    main()
