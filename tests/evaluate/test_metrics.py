"""The metrics section: fast rank-based areas, every metric against scikit-learn, intervals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from danlu.evaluate import Report
from danlu.evaluate._metrics import (
    _average_precision,
    _balanced_accuracy,
    _f1_macro,
    _pr_auc,
    _roc_auc,
    classification_metrics,
    metrics_section,
    regression_metrics,
)


def tied_scores(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities with many ties in every column (rows drawn from a few distinct vectors) and
    labels containing every class."""
    rng = np.random.default_rng(seed)
    vectors = rng.dirichlet(np.ones(k), size=6)  # 6 distinct rows: heavy ties per column
    proba = vectors[rng.integers(0, len(vectors), n)]
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    rng.shuffle(y)
    return proba, y


def sklearn_roc_auc(y: np.ndarray, proba: np.ndarray) -> float:
    if proba.shape[1] == 2:
        return float(skm.roc_auc_score(y, proba[:, 1]))
    return float(skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"))


def sklearn_pr_auc(y: np.ndarray, proba: np.ndarray) -> float:
    k = proba.shape[1]
    if k == 2:
        return float(skm.average_precision_score(y, proba[:, 1]))
    onehot = label_binarize(y, classes=list(range(k)))
    return float(skm.average_precision_score(onehot, proba, average="macro"))


# --- the fast areas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3, 10])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_areas_equal_scikit_learn_with_ties(k: int, seed: int) -> None:
    proba, y = tied_scores(300, k, seed)
    assert len(np.unique(proba[:, 0])) <= 6  # the scores really are tied
    assert _roc_auc(k)(y, proba) == pytest.approx(sklearn_roc_auc(y, proba), abs=1e-12)
    assert _pr_auc(k)(y, proba) == pytest.approx(sklearn_pr_auc(y, proba), abs=1e-12)


@pytest.mark.parametrize("k", [2, 3, 10])
def test_fast_areas_equal_scikit_learn_on_continuous_scores(k: int) -> None:
    rng = np.random.default_rng(k)
    proba = rng.dirichlet(np.ones(k), size=500)
    y = np.concatenate([np.arange(k), rng.integers(0, k, 500 - k)])
    assert _roc_auc(k)(y, proba) == pytest.approx(sklearn_roc_auc(y, proba), abs=1e-12)
    assert _pr_auc(k)(y, proba) == pytest.approx(sklearn_pr_auc(y, proba), abs=1e-12)


def test_average_precision_of_a_single_tied_block() -> None:
    # every score equal: one threshold, precision = positive share, recall jumps 0 → 1
    truth = np.array([1.0, 0.0, 0.0, 1.0, 0.0])
    score = np.full(5, 0.3)
    assert _average_precision(truth, score) == pytest.approx(0.4)
    assert _average_precision(truth, score) == pytest.approx(
        skm.average_precision_score(truth, score)
    )


def test_areas_raise_when_a_class_is_missing() -> None:
    proba, _ = tied_scores(50, 3, 0)
    y = np.zeros(50, dtype=int)
    y[:10] = 1  # class 2 absent
    with pytest.raises(ValueError, match="missing"):
        _roc_auc(3)(y, proba)
    with pytest.raises(ValueError, match="missing"):
        _pr_auc(3)(y, proba)


@pytest.mark.parametrize("k", [2, 4])
def test_bootstrap_metrics_equal_scikit_learn(k: int) -> None:
    rng = np.random.default_rng(k)
    y = rng.integers(0, k, 200)
    pred = np.where(rng.random(200) < 0.6, y, rng.integers(0, k, 200))
    pred[pred == k - 1] = 0  # one class never predicted: zero_division applies
    assert _balanced_accuracy(k)(y, pred) == pytest.approx(skm.balanced_accuracy_score(y, pred))
    expected = skm.f1_score(y, pred, average="macro", labels=list(range(k)), zero_division=0)
    assert _f1_macro(k)(y, pred) == pytest.approx(expected)


# --- classification_metrics -------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3, 10])
def test_classification_metrics_equal_scikit_learn(k: int) -> None:
    rng = np.random.default_rng(10 + k)
    n = 400
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.5  # better than chance, far from perfect
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pred = proba.argmax(axis=1)
    classes = [f"c{i}" for i in range(k)]
    m = classification_metrics(proba, y, classes)

    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y, pred, average=average, zero_division=0)
        assert m[f"precision_{average}"] == pytest.approx(p)
        assert m[f"recall_{average}"] == pytest.approx(r)
        assert m[f"f1_{average}"] == pytest.approx(f)
    assert "log_loss" not in m  # the task computes it (one definition, CLI and report agree)
    assert m["roc_auc"] == pytest.approx(sklearn_roc_auc(y, proba), abs=1e-12)
    assert m["pr_auc"] == pytest.approx(sklearn_pr_auc(y, proba), abs=1e-12)

    per_class = m["per_class"]
    assert [c["class"] for c in per_class] == classes
    assert sum(c["support"] for c in per_class) == n
    assert [c["support"] for c in per_class] == np.bincount(y, minlength=k).tolist()
    recall = skm.recall_score(y, pred, average=None, zero_division=0)
    assert [c["recall"] for c in per_class] == pytest.approx(recall.tolist())
    matrix = np.array(m["confusion_matrix"])
    assert matrix.shape == (k, k) and matrix.sum() == n
    assert np.trace(matrix) / n == pytest.approx(m["accuracy"])


def test_classification_metrics_skip_areas_when_a_class_is_absent() -> None:
    proba = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    y = np.array([0, 1, 0, 0])  # class 2 absent from the rows
    m = classification_metrics(proba, y, ["a", "b", "c"])
    assert "roc_auc" not in m and "pr_auc" not in m
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["per_class"][2]["support"] == 0
    assert np.array(m["confusion_matrix"]).shape == (3, 3)


def test_regression_metrics_equal_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    true = rng.normal(10.0, 3.0, 200)
    pred = true + rng.normal(0.0, 1.0, 200)
    m = regression_metrics(pred, true)
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(true, pred))
    assert m["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(true, pred)))
    assert m["r2"] == pytest.approx(skm.r2_score(true, pred))
    assert m["mape"] == pytest.approx(skm.mean_absolute_percentage_error(true, pred))


# --- the section ------------------------------------------------------------------------------------


def test_classification_section_values_intervals_and_figures(make_eval_data) -> None:
    data = make_eval_data()
    section = metrics_section(data, resamples=200, confidence=0.9)
    proba = data.probabilities(data.test_outputs)
    y = data.y.astype(int)
    expected = classification_metrics(proba, y, [str(c) for c in data.schema.classes])
    values = section.data["values"]
    assert values["accuracy"] == pytest.approx(skm.accuracy_score(y, proba.argmax(axis=1)))
    assert values["accuracy"] == pytest.approx(
        data.task.metrics(data.test_outputs, data.y, data.schema)["accuracy"]
    )
    assert values["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba[:, 1]))
    for name in ("balanced_accuracy", "f1_macro", "pr_auc", "precision_weighted"):
        assert values[name] == pytest.approx(expected[name])
    task_values = data.task.metrics(data.test_outputs, data.y, data.schema)
    assert values["log_loss"] == task_values["log_loss"]  # the train stage's number, exactly
    assert values["log_loss"] == pytest.approx(skm.log_loss(y, proba))
    assert section.data["rows"] == len(y)
    assert sum(c["support"] for c in section.data["per_class"]) == len(y)
    assert np.array(section.data["confusion_matrix"]).sum() == len(y)

    intervals = section.data["intervals"]
    assert set(intervals) == {"accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "pr_auc"}
    for name, ci in intervals.items():
        assert ci["low"] <= ci["value"] <= ci["high"], name
        assert ci["value"] == pytest.approx(values[name])
        assert ci["std"] >= 0
    assert intervals["accuracy"]["low"] < intervals["accuracy"]["high"]  # a real spread
    # accuracy is a proportion of rows: Wilson's interval; the others are bootstrapped
    assert intervals["accuracy"]["method"] == "wilson"
    assert {ci["method"] for n, ci in intervals.items() if n != "accuracy"} == {"bootstrap"}
    hits = round(values["accuracy"] * len(y))
    wilson = skm_free_wilson(hits, len(y), 0.9)
    assert (intervals["accuracy"]["low"], intervals["accuracy"]["high"]) == pytest.approx(wilson)
    assert section.data["bootstrap"] == {"resamples": 200, "confidence": 0.9}
    assert any("90%" in note and "200 resamples" in note for note in section.notes)
    assert any("Wilson" in note for note in section.notes)
    assert {ci["confidence"] for ci in intervals.values()} == {0.9}
    page = Report(subject={}, sections=[section]).to_html()
    assert "<th>90% CI</th>" in page and "95% CI</th>" not in page

    assert set(section.figures) == {"Confusion matrix", "ROC curves", "Precision-recall curves"}
    assert all("<svg" in markup for markup in section.figures.values())
    assert section.summary is not None and "test accuracy" in section.summary
    assert f"{100 * values['accuracy']:.1f}%" in section.summary
    low, high = intervals["accuracy"]["low"], intervals["accuracy"]["high"]
    assert f"90% CI [{100 * low:.1f}%, {100 * high:.1f}%]" in section.summary
    assert "±" not in section.summary


def skm_free_wilson(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson's score interval written out from its formula (Wilson, 1927)."""
    from scipy.stats import norm

    z = norm.ppf(0.5 + confidence / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_a_perfect_score_gets_an_honest_interval(make_eval_data) -> None:
    """360 of 360 right is not "100.0% ± 0.0": a bootstrap of it is [1, 1]; Wilson's is not."""
    import dataclasses

    data = make_eval_data()
    right = data.test_outputs.argmax(axis=1) == data.y  # keep only the rows the model gets right
    perfect = dataclasses.replace(data, x=data.x[right], y=data.y[right], frame=data.frame[right])
    n = int(right.sum())
    section = metrics_section(perfect, resamples=100)
    ci = section.data["intervals"]["accuracy"]
    assert ci["value"] == 1.0 and ci["high"] == 1.0
    assert ci["low"] == pytest.approx(n / (n + 1.959964**2))  # Wilson's bound at k = n
    assert ci["low"] < 0.99
    assert f"[{100 * ci['low']:.1f}%, 100.0%]" in section.summary


def test_multiclass_section_has_one_row_per_class(make_eval_data) -> None:
    data = make_eval_data("builtin:wine", epochs=10)
    section = metrics_section(data, resamples=50)
    assert [c["class"] for c in section.data["per_class"]] == [str(c) for c in data.schema.classes]
    proba = data.probabilities(data.test_outputs)
    assert section.data["values"]["roc_auc"] == pytest.approx(
        skm.roc_auc_score(data.y, proba, multi_class="ovr", average="macro")
    )
    for ci in section.data["intervals"].values():
        assert ci["low"] <= ci["value"] <= ci["high"]


def test_no_resamples_means_no_intervals(make_eval_data) -> None:
    section = metrics_section(make_eval_data(), resamples=0)
    assert "intervals" not in section.data and "bootstrap" not in section.data
    assert section.data["values"]["accuracy"] > 0
    assert "±" not in (section.summary or "")


def test_no_rows_is_a_note_not_an_error(make_eval_data) -> None:
    import dataclasses

    data = make_eval_data()
    empty = dataclasses.replace(data, x=data.x[:0], y=data.y[:0], frame=data.frame.iloc[:0])
    section = metrics_section(empty, resamples=50)
    assert section.data["rows"] == 0 and "skipped" in section.data
    assert "values" not in section.data


def test_regression_section_is_in_the_targets_units(make_eval_data) -> None:
    from sklearn.datasets import load_diabetes

    data = make_eval_data("builtin:diabetes", "regression")
    section = metrics_section(data, resamples=100)
    # the true targets, looked up in the raw data set by the test rows' features
    raw = load_diabetes(as_frame=True, scaled=False).frame
    features = [f.name for f in data.schema.features]
    matched = data.frame[features].merge(raw, on=features, how="left")
    assert len(matched) == len(data.frame) and matched["target"].notna().all()
    true = matched["target"].to_numpy()
    pred = data.test_outputs.reshape(-1) * data.schema.target_std + data.schema.target_mean

    values = section.data["values"]
    assert values["mae"] == pytest.approx(skm.mean_absolute_error(true, pred), rel=1e-5)
    assert values["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(true, pred)), rel=1e-5)
    assert values["r2"] == pytest.approx(skm.r2_score(true, pred), rel=1e-5)
    assert values["mape"] == pytest.approx(skm.mean_absolute_percentage_error(true, pred), rel=1e-5)
    assert values["mae"] > 10  # in the target's units, not standardized ones

    assert set(section.data["intervals"]) == {"mae", "rmse", "r2", "mape"}
    for name, ci in section.data["intervals"].items():
        assert ci["low"] <= ci["value"] <= ci["high"], name
        assert ci["value"] == pytest.approx(values[name], rel=1e-6)
    assert "per_class" not in section.data and "confusion_matrix" not in section.data
    assert list(section.figures) == ["Predicted vs true, and residuals"]
    assert "<svg" in section.figures["Predicted vs true, and residuals"]
    assert section.summary is not None and section.summary.startswith("R² ")
    assert f"MAE {values['mae']:.4g}" in section.summary


def test_docstring_example_numbers() -> None:
    m = classification_metrics(
        np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), np.array([0, 1, 1]), ["no", "yes"]
    )
    assert round(m["accuracy"], 3) == 0.667 and m["per_class"][1]["recall"] == 0.5
