"""Baselines: scikit-learn models on the model's own split, and the verdict against the best."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.linear_model import LinearRegression

from danlu.evaluate._baselines import baselines_section, fit_baselines
from danlu.evaluate._bootstrap import wilson_interval


class FixedOutputs(torch.nn.Module):
    """A "model" that answers the evaluation rows with given outputs (one batch: the rows in
    order), or with the same output row for every input."""

    def __init__(self, outputs: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("fixed", torch.as_tensor(outputs, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.fixed) == 1:
            return self.fixed.expand(len(x), -1)
        assert len(x) == len(self.fixed)
        return self.fixed


def test_classification_rows_and_dummy_accuracy(make_eval_data) -> None:
    data = make_eval_data()
    section = baselines_section(data)
    rows = {r["model"]: r for r in section.data["rows"]}
    assert list(rows) == [
        "danlu model",
        "most frequent (dummy)",
        "logistic regression",
        "HistGradientBoosting",
    ]
    assert section.data["metric"] == "accuracy"
    majority = np.bincount(data.y_train.astype(int)).argmax()  # what the dummy always predicts
    assert rows["most frequent (dummy)"]["accuracy"] == pytest.approx(np.mean(data.y == majority))
    assert np.bincount(data.y.astype(int)).argmax() == majority  # stratified: same majority
    model = data.task.metrics(data.test_outputs, data.y, data.schema)
    assert rows["danlu model"]["accuracy"] == pytest.approx(model["accuracy"])
    assert rows["danlu model"]["seconds"] is None
    assert all(rows[name]["seconds"] > 0 for name in list(rows)[1:])
    for name in ("logistic regression", "HistGradientBoosting"):
        assert rows[name]["accuracy"] > rows["most frequent (dummy)"]["accuracy"] + 0.2
    strongest = section.data["strongest"]
    best = max(list(rows)[1:], key=lambda n: rows[n]["accuracy"])
    assert strongest["model"] == best
    assert strongest["difference"] == pytest.approx(
        rows["danlu model"]["accuracy"] - rows[best]["accuracy"]
    )
    paired = strongest["paired"]
    assert paired["low"] <= strongest["difference"] <= paired["high"]
    assert "<svg" in next(iter(section.figures.values()))
    n = len(data.y)  # every row's accuracy carries its Wilson interval on the same test rows
    for row in rows.values():
        low, high = row["accuracy_ci"]
        assert low < row["accuracy"] < high or row["accuracy"] in (0.0, 1.0)
        ci = wilson_interval(round(row["accuracy"] * n), n)
        assert (low, high) == pytest.approx((ci.low, ci.high))


def test_regression_rows(make_eval_data) -> None:
    data = make_eval_data("builtin:diabetes", "regression")
    section = baselines_section(data)
    rows = {r["model"]: r for r in section.data["rows"]}
    assert list(rows) == [
        "danlu model",
        "mean (dummy)",
        "linear regression",
        "HistGradientBoosting",
    ]
    assert section.data["metric"] == "r2" and section.data["columns"] == ["r2", "mae", "rmse"]
    # R² is unchanged by the affine map back to the target's units: compare standardized values
    fitted = LinearRegression().fit(data.x_train, data.y_train).predict(data.x)
    ss_res = ((data.y - fitted) ** 2).sum()
    ss_tot = ((data.y - data.y.mean()) ** 2).sum()
    assert rows["linear regression"]["r2"] == pytest.approx(1 - ss_res / ss_tot, rel=1e-4)
    assert rows["mean (dummy)"]["r2"] < 0.05  # the training mean explains nothing
    assert rows["linear regression"]["r2"] > 0.2
    assert rows["mean (dummy)"]["mae"] > 10  # in the target's units
    assert "R²" in (section.summary or "")
    assert not any(k.endswith("_ci") for k in rows["danlu model"])  # no proportion here


def test_a_constant_model_is_flagged(make_eval_data) -> None:
    data = make_eval_data()
    minority = int(np.bincount(data.y_train.astype(int)).argmin())
    logits = np.full((1, 2), -5.0)
    logits[0, minority] = 5.0  # always the minority class
    constant = dataclasses.replace(data, model=FixedOutputs(logits))
    section = baselines_section(constant)
    assert section.data["rows"][0]["accuracy"] == pytest.approx(np.mean(data.y == minority))
    assert section.summary is not None and section.summary.startswith("trails ")
    assert "within noise" not in section.summary
    assert section.data["strongest"]["paired"]["high"] < 0
    assert len(section.flags) == 1 and "does not earn its keep" in section.flags[0]
    assert section.data["strongest"]["model"] in section.flags[0]


def test_a_model_tied_with_the_best_baseline_is_not_flagged(make_eval_data) -> None:
    data = make_eval_data()
    first = baselines_section(data)
    best = first.data["strongest"]["model"]
    outputs = fit_baselines(data)[best]["outputs"]
    tied = baselines_section(dataclasses.replace(data, model=FixedOutputs(outputs)))
    assert tied.data["strongest"]["model"] == best
    assert tied.data["strongest"]["difference"] == 0
    assert tied.data["strongest"]["paired"] == {"low": 0.0, "high": 0.0}
    assert tied.summary is not None and tied.summary.startswith(f"ties with {best}")
    assert tied.flags == []

    # one right answer turned wrong: behind, but within noise, so still no flag
    worse = outputs.copy()
    row = int(np.flatnonzero(outputs.argmax(axis=1) == data.y)[0])
    worse[row] = worse[row][::-1]
    behind = baselines_section(dataclasses.replace(data, model=FixedOutputs(worse)))
    assert behind.data["strongest"]["difference"] == pytest.approx(-1 / len(data.y))
    assert behind.summary is not None and f"below {best}" in behind.summary
    assert behind.summary.endswith("(within noise)")
    assert behind.flags == []


def test_no_training_rows_skips_the_section(make_eval_data) -> None:
    data = make_eval_data()
    empty = dataclasses.replace(data, x_train=data.x_train[:0], y_train=data.y_train[:0])
    section = baselines_section(empty)
    assert section.data == {"skipped": "no training rows"}
    assert section.notes == ["Baselines skipped: no training rows."]
    assert section.summary is None and section.flags == [] and section.figures == {}
