"""Calibration: the ECE formula, temperature scaling, and the report section."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from danlu.config import CalibrationConfig
from danlu.evaluate._calibration import (
    calibration_section,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def nll(z, y):
    return float(-np.log(softmax(z)[np.arange(len(y)), y]).mean())


def sample_labels(z, seed=0):
    """Labels drawn from softmax(z): the logits z are then perfectly calibrated."""
    rng = np.random.default_rng(seed)
    p = softmax(z)
    return (rng.random((len(z), 1)) > p.cumsum(axis=1)).sum(axis=1)


def test_calibrated_predictions_have_an_ece_near_zero():
    rng = np.random.default_rng(0)
    p1 = rng.random(20_000)
    y = (rng.random(20_000) < p1).astype(int)  # y ~ Bernoulli(p): calibrated by construction
    proba = np.stack([1 - p1, p1], axis=1)
    assert expected_calibration_error(proba, y) < 0.02
    assert expected_calibration_error(p1, y) == expected_calibration_error(proba, y)  # 1-D form


def test_overconfident_predictions_have_a_large_ece():
    rng = np.random.default_rng(0)
    y = (rng.random(5000) < 0.6).astype(int)  # right 60% of the time ...
    proba = np.tile([0.01, 0.99], (5000, 1))  # ... while 99% sure
    assert expected_calibration_error(proba, y) == pytest.approx(0.99 - y.mean())
    assert expected_calibration_error(proba, y) > 0.35


def test_ece_equals_the_formula_on_a_hand_computed_example():
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45], [0.75, 0.25]])
    y = np.array([0, 1, 0, 1, 1, 0])
    # 4 bins: (0.5, 0.75] holds 0.6 ✓, 0.7 ✓, 0.55 ✗ and 0.75 ✓ (an edge goes to the lower bin);
    # (0.75, 1] holds 0.9 ✓ and 0.8 ✗.
    bins = reliability_bins(proba, y, bins=4)
    assert [(b["low"], b["high"], b["count"]) for b in bins] == [(0.5, 0.75, 4), (0.75, 1.0, 2)]
    assert bins[0]["accuracy"] == pytest.approx(3 / 4)
    assert bins[0]["confidence"] == pytest.approx((0.6 + 0.7 + 0.55 + 0.75) / 4)
    assert bins[1]["accuracy"] == pytest.approx(1 / 2)
    assert bins[1]["confidence"] == pytest.approx(0.85)
    expected = 4 / 6 * abs(3 / 4 - 0.65) + 2 / 6 * abs(0.5 - 0.85)
    assert expected_calibration_error(proba, y, bins=4) == pytest.approx(expected)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="same number of rows"):
        expected_calibration_error(np.full((3, 2), 0.5), np.zeros(2, dtype=int))
    with pytest.raises(ValueError, match="0 rows"):
        expected_calibration_error(np.zeros((0, 2)), np.zeros(0, dtype=int))


@pytest.mark.parametrize("true_t", [1.0, 3.0, 0.5])
def test_fit_temperature_recovers_a_known_temperature(true_t):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(4000, 4)) * 2.0  # (n, K) calibrated logits
    y = sample_labels(z)
    fitted = fit_temperature(z * true_t, y)
    assert fitted == pytest.approx(true_t, rel=0.15)
    assert fit_temperature(z * true_t, y) == fitted  # deterministic


def test_temperature_scaling_lowers_the_nll_and_keeps_every_prediction():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(3000, 3)) * 1.5
    y = sample_labels(z, seed=3)
    overconfident = z * 4.0
    t = fit_temperature(overconfident, y)
    assert t > 1.0
    assert nll(overconfident / t, y) < nll(overconfident, y) - 0.1
    assert (softmax(overconfident / t).argmax(axis=1) == overconfident.argmax(axis=1)).all()
    before = expected_calibration_error(softmax(overconfident), y)
    assert expected_calibration_error(softmax(overconfident / t), y) < before


def test_section_fits_a_temperature_on_breast_cancer(make_eval_data):
    data = make_eval_data()
    section = calibration_section(data, CalibrationConfig(temperature=True))
    d = section.data
    assert (section.key, section.title) == ("calibration", "Calibration")
    assert 0.05 <= d["temperature"] <= 20.0
    assert 0.0 <= d["ece_calibrated"] <= 1.0 and 0.0 <= d["ece"] <= 1.0
    proba = data.probabilities(data.test_outputs)
    assert d["ece"] == pytest.approx(expected_calibration_error(proba, data.y, 15))
    assert sum(b["count"] for b in d["bins"]) == len(data.y)
    assert d["val_log_loss_calibrated"] <= d["val_log_loss"] + 1e-9  # the fit's objective
    assert d["log_loss"] > 0 and d["log_loss_calibrated"] > 0
    low, high = d["ece_ci"]
    assert 0.0 <= low <= high <= 1.0
    assert re.fullmatch(r"ECE \d\.\d{3} \(\d\.\d{3} after temperature scaling\)", section.summary)
    assert "<svg" in next(iter(section.figures.values()))
    assert any("validation rows" in note for note in section.notes)


def test_the_fit_ignores_the_temperature_the_model_already_has(make_eval_data):
    data = make_eval_data()
    config = CalibrationConfig(temperature=True)
    plain = calibration_section(data, config).data
    scaled = calibration_section(dataclasses.replace(data, temperature=2.5), config).data
    assert scaled["temperature"] == pytest.approx(plain["temperature"], rel=1e-3)
    assert scaled["ece_calibrated"] == pytest.approx(plain["ece_calibrated"], abs=1e-6)
    assert scaled["ece"] != pytest.approx(plain["ece"])  # measured as deployed, at T = 2.5


def test_without_temperature_nothing_is_fitted(make_eval_data):
    section = calibration_section(make_eval_data(), CalibrationConfig(bins=10))
    assert section.data["temperature"] is None and section.data["ece_calibrated"] is None
    assert re.fullmatch(r"ECE \d\.\d{3}", section.summary)
    assert all(b["high"] - b["low"] == pytest.approx(0.1) for b in section.data["bins"])


def test_an_empty_validation_split_gives_a_note(make_eval_data):
    data = make_eval_data(split={"val": 0.0})
    assert len(data.y_val) == 0
    section = calibration_section(data, CalibrationConfig(temperature=True))
    assert section.data["temperature"] is None
    assert any("validation split is empty" in note for note in section.notes)
    assert section.data["ece"] >= 0.0


def test_regression_is_skipped(make_eval_data):
    section = calibration_section(
        make_eval_data("builtin:diabetes", "regression"), CalibrationConfig()
    )
    assert section.data == {"skipped": "calibration does not apply to the regression task"}
    assert section.notes and not section.figures and section.summary is None
