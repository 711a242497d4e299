"""How long does the trust report take? The full default report (``evaluate: {}``: metrics with
bootstrap intervals, baselines, calibration, robustness, explanations, cost; no cross-validation,
no fairness) of the two example recipes, timed section by section.

Each run trains ``examples/breast_cancer_mlp.yaml`` or ``examples/digits_cnn.yaml`` (their
``register:`` block removed, ``evaluate: {}`` added) with ``danlu.pipeline.run`` into a temporary
store. Timed: the report alone (``report.seconds``, from the first section to the assembled
report), each section (``section.seconds``), and, separately, the rest of the run (data
preparation, training and the test metrics: the run's wall time minus the report's).
Medians over ``--repeats`` runs (the same seeds each time, so the runs differ only in timing).

Target (the issue): each report in at most 60 s on this machine, without cross-validation.

    OMP_NUM_THREADS=1 python bench/report_timing.py [--repeats 3] [--examples breast_cancer digits]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from _report import machine, write  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = {
    "breast_cancer": ROOT / "examples" / "breast_cancer_mlp.yaml",
    "digits": ROOT / "examples" / "digits_cnn.yaml",
}
TITLES = {"breast_cancer": "breast cancer (MLP)", "digits": "digits (CNN)"}
TARGET_SECONDS = 60.0


def one(example: str, home: Path) -> dict[str, Any]:
    """Train one example with ``evaluate: {}`` and return its timings and summary."""
    import logging

    import torch
    import yaml

    from danlu.pipeline import run
    from danlu.store import SqlStore

    torch.set_num_threads(1)
    logging.getLogger("danlu").setLevel(logging.ERROR)
    recipe = yaml.safe_load(EXAMPLES[example].read_text())
    recipe.pop("register", None)  # nothing is registered
    recipe["evaluate"] = {}
    store = SqlStore(home=home)
    try:
        start = time.perf_counter()
        result = run(recipe, store=store)
        wall = time.perf_counter() - start
    finally:
        store.close()
    report = result.report
    return {
        "run_seconds": wall,
        "train_seconds": wall - report.seconds,
        "report_seconds": report.seconds,
        "sections": {s.key: s.seconds for s in report.sections},
        "titles": {s.key: s.title for s in report.sections},
        "test_accuracy": result.metrics.get("accuracy"),
        "epochs": len(result.history),
        "summary": report.summary,
        "flags": report.flags,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repeats of each section, the report and the rest of the run."""
    keys = list(runs[0]["sections"])
    report = statistics.median(r["report_seconds"] for r in runs)
    return {
        "sections_median": {k: statistics.median(r["sections"][k] for r in runs) for k in keys},
        "report_median": report,
        "report_max": max(r["report_seconds"] for r in runs),
        "train_median": statistics.median(r["train_seconds"] for r in runs),
        "titles": runs[0]["titles"],
        "met": report <= TARGET_SECONDS,
        "summary_last": runs[-1]["summary"],
        "flags_last": runs[-1]["flags"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--examples", nargs="+", choices=list(EXAMPLES), default=list(EXAMPLES))
    args = parser.parse_args()
    start = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="danlu-report-timing-") as tmp:
        for example in args.examples:
            runs[example] = [
                one(example, Path(tmp) / f"{example}_{i}") for i in range(args.repeats)
            ]
    elapsed = time.perf_counter() - start
    results = {e: summarise(r) for e, r in runs.items()}

    keys: list[str] = []
    for e in args.examples:
        keys += [k for k in results[e]["sections_median"] if k not in keys]
    titles = {k: t for e in args.examples for k, t in results[e]["titles"].items()}
    rows = [
        [
            titles[k],
            *(
                f"{results[e]['sections_median'][k]:.2f}"
                if k in results[e]["sections_median"]
                else "–"
                for e in args.examples
            ),
        ]
        for k in keys
    ]
    rows.append(
        [
            "**report total**",
            *(
                f"**{results[e]['report_median']:.2f}** "
                f"({'met' if results[e]['met'] else '**not met**'})"
                for e in args.examples
            ),
        ]
    )
    rows.append(
        [
            "training (data, fit, test metrics; not in the report)",
            *(f"{results[e]['train_median']:.2f}" for e in args.examples),
        ]
    )
    payload = {
        "benchmark": "report_timing",
        "recipes": {e: str(EXAMPLES[e].relative_to(ROOT)) for e in args.examples},
        "evaluate": {},
        "repeats": args.repeats,
        "target_seconds": TARGET_SECONDS,
        "results": results,
        "runs": runs,
        "seconds": elapsed,
        "machine": machine(),
    }
    verdicts = "; ".join(
        f"{TITLES[e]} {results[e]['report_median']:.1f} s "
        f"({'met' if results[e]['met'] else 'not met'})"
        for e in args.examples
    )
    summaries = " ".join(
        f"Summary of the last {TITLES[e]} report: “{results[e]['summary_last']}”"
        for e in args.examples
    )
    notes = (
        "Seconds, median of "
        f"{args.repeats} runs. Each run: `danlu.pipeline.run` of the example recipe with "
        "`register:` removed and `evaluate: {}` (every default section: metrics with 1,000 "
        "bootstrap resamples, baselines, calibration, robustness (FGSM and PGD at ε 0.01/0.05/0.1, "
        "noise 0.1/0.5, feature dropout 0.1/0.3), integrated-gradients explanations of 200 rows, "
        "cost; no cross-validation, no fairness), in a temporary store. Report total = "
        "`report.seconds` (the report only; the sections plus their assembly); training = the "
        "run's wall time minus the report's (data preparation, training with early stopping, "
        f"test metrics, storing). Target: each report ≤ {TARGET_SECONDS:g} s; {verdicts}. "
        f"{summaries} "
        f"Total {elapsed:.0f} s on {machine()['cpus']} CPUs, one torch thread. "
        "Command: `OMP_NUM_THREADS=1 .venv/bin/python bench/report_timing.py`"
    )
    header = ["section", *(TITLES[e] for e in args.examples)]
    path = write("report_timing", payload, header, rows, notes=notes)
    print(path.read_text())


if __name__ == "__main__":
    main()
