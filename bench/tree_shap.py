"""Exact TreeSHAP against kernel SHAP on the same LightGBM trees (breast cancer).

Trains one LightGBM model through danlu, then explains test rows both ways on the same
EvalData: TreeSHAP from the library's stored model (every test row) and captum's kernel SHAP on
the torch form (the reference, on a few rows: it costs far more per row). Reports the median
seconds per row over repeats, the ratio, TreeSHAP's additivity error (attributions + bias vs the
model's output) and the rank agreement of the two global importances.

    OMP_NUM_THREADS=1 .venv/bin/python bench/tree_shap.py
"""

from __future__ import annotations

import statistics
import tempfile
import time

import numpy as np
from _report import machine, write

from danlu.config import ExplainConfig
from danlu.evaluate import EvalData
from danlu.evaluate._explain import attributions, global_importance, tree_shap
from danlu.store import SqlStore
from danlu.train import run_training

KERNEL_ROWS, REPEATS = 20, 3


def main() -> None:
    from sklearn.datasets import load_breast_cancer

    recipe = {
        "name": "tree-shap-bench",
        "data": {"source": "builtin:breast_cancer", "split": {"test": 0.2, "val": 0.2, "seed": 0}},
        "task": "classification",
        "model": {"type": "gbdt", "library": "lightgbm", "n_estimators": 200},
        "train": {"seed": 0},
    }
    with tempfile.TemporaryDirectory() as home:
        trained = run_training(recipe, store=SqlStore(home=home))
    frame = load_breast_cancer(as_frame=True).frame
    x = trained.preprocessor.transform(frame.drop(columns="target"))
    y = frame["target"].to_numpy()
    data = EvalData(trained.model, trained.task, trained.schema, x, y, frame, x, y, x[:0], y[:0])
    target = data.outputs(x).argmax(axis=1)

    tree_times, kernel_times = [], []
    for _ in range(REPEATS):
        start = time.perf_counter()
        attr, bias = tree_shap(data, x, target)
        tree_times.append((time.perf_counter() - start) / len(x))
    logits = data.outputs(x).astype(np.float64)
    margin = logits[:, 1] - logits[:, 0]
    explained = np.where(target == 0, -margin, margin)
    additivity = float(np.abs(attr.sum(axis=1) + bias - explained).max())
    config = ExplainConfig(method="kernel_shap")
    for _ in range(REPEATS):
        start = time.perf_counter()
        kernel = attributions(data, x[:KERNEL_ROWS], config, target[:KERNEL_ROWS])
        kernel_times.append((time.perf_counter() - start) / KERNEL_ROWS)
    exact_top = list(global_importance(attr[:KERNEL_ROWS], data.groups))[:5]
    kernel_top = list(global_importance(kernel, data.groups))[:5]
    tree_s, kernel_s = statistics.median(tree_times), statistics.median(kernel_times)
    payload = {
        "machine": machine(),
        "rows_tree_shap": len(x),
        "rows_kernel_shap": KERNEL_ROWS,
        "repeats": REPEATS,
        "tree_shap_seconds_per_row": tree_s,
        "kernel_shap_seconds_per_row": kernel_s,
        "speedup": kernel_s / tree_s,
        "additivity_error": additivity,
        "top5_overlap": len(set(exact_top) & set(kernel_top)),
        "trees": trained.model.n_trees,
    }
    rows = [
        ["exact TreeSHAP (LightGBM pred_contrib)", len(x), f"{tree_s * 1e3:.3f}", "1.0", f"{additivity:.1e}"],
        ["kernel SHAP (captum, reference)", KERNEL_ROWS, f"{kernel_s * 1e3:.1f}", f"{kernel_s / tree_s:.0f}", "n/a (approximate)"],
    ]  # fmt: skip
    path = write(
        "tree_shap",
        payload,
        ["method", "rows", "median ms / row", "× TreeSHAP time", "max abs(Σ attr + bias − output)"],
        rows,
        f"{trained.model.n_trees} LightGBM trees on breast cancer, {REPEATS} repeats, median; "
        f"top-5 features shared by the two methods on the same {KERNEL_ROWS} rows: "
        f"{payload['top5_overlap']}/5. `OMP_NUM_THREADS=1 .venv/bin/python bench/tree_shap.py`",
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
