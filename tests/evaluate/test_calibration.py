"""Calibration: the ECE formula, temperature scaling, and the report section."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from danlu.config import CalibrationConfig
from danlu.evaluate._calibration import (
    TEMPERATURE_BOUNDS,
    calibration_section,
    choose_temperature,
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


def test_fit_temperature_stays_within_its_bounds():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(500, 3))
    y = z.argmax(axis=1)  # separable: the NLL falls without end as T shrinks
    assert fit_temperature(z, y) == pytest.approx(TEMPERATURE_BOUNDS[0], abs=1e-4)
    noise = rng.integers(0, 3, 500)  # labels unrelated to the logits: T grows without end
    assert fit_temperature(z * 10, noise) == pytest.approx(TEMPERATURE_BOUNDS[1], abs=1e-3)


# --- choosing a temperature that cannot hurt ---------------------------------------------------


def test_an_overconfident_model_keeps_its_temperature():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(600, 3)) * 1.5
    y = sample_labels(z, seed=6)
    choice = choose_temperature(z * 2.5, y)
    assert choice.kept and choice.fitted == choice.temperature
    assert choice.temperature == pytest.approx(2.5, rel=0.2)
    assert choice.improvement is not None and choice.improvement.low > 0
    before, after = choice.val_log_loss
    assert after < before
    assert choice.reason.startswith("Temperature scaling kept")
    assert choice.to_dict()["out_of_fold_improvement"]["low"] > 0


def test_a_temperature_at_the_bound_says_what_to_fix():
    rng = np.random.default_rng(13)
    z = rng.normal(size=(500, 3)) * 3
    y = sample_labels(z, seed=14)
    choice = choose_temperature(z / 10, y)  # ten times under-confident: T = 0.1 is out of range
    assert choice.kept and choice.temperature == pytest.approx(TEMPERATURE_BOUNDS[0], abs=1e-4)
    assert "more than 4× under-confident" in choice.reason


def test_few_validation_rows_are_refused_with_the_reason():
    rng = np.random.default_rng(7)
    z = rng.normal(size=(99, 3)) * 4
    y = sample_labels(z / 4, seed=8)  # over-confident, but only 99 rows
    choice = choose_temperature(z, y, min_rows=100)
    assert (choice.temperature, choice.fitted, choice.kept) == (1.0, None, False)
    assert "99 rows" in choice.reason and "evaluate.calibration.min_rows" in choice.reason
    assert choice.short == "only 99 validation rows"
    assert choose_temperature(z, y, min_rows=50).fitted is not None  # enough rows: fitted


def test_a_model_right_on_every_validation_row_is_refused():
    """Penguins: 35 validation rows all right fitted T = 0.118 and test log-loss rose 6-fold."""
    rng = np.random.default_rng(9)
    z = rng.normal(size=(300, 3)) * 3
    choice = choose_temperature(z, z.argmax(axis=1))
    assert not choice.kept and choice.fitted is None and choice.temperature == 1.0
    assert "right on all 300 validation rows" in choice.reason


def test_a_harmful_temperature_is_not_kept():
    """One confident mistake among 150 rows: in-sample, sharpening still lowers the NLL (T < 1),
    but on held-out folds the mistake costs more than the sharpening gains."""
    rng = np.random.default_rng(10)
    n = 150
    z = rng.normal(size=(n, 3))
    y = z.argmax(axis=1)
    z[np.arange(n), y] += 2.0  # margins of about 2-4: right, and under-confident
    z[0] = [6.0, 0.0, 0.0]  # one confident mistake
    y[0] = 1
    raw_nll = nll(z, y)
    choice = choose_temperature(z, y)
    assert choice.fitted is not None and choice.fitted < 1.0  # in-sample, sharpening helps ...
    assert nll(z / choice.fitted, y) < raw_nll
    assert not choice.kept and choice.temperature == 1.0  # ... held out, it does not
    assert choice.improvement is not None and choice.improvement.low <= 0
    assert choice.reason.startswith("Temperature scaling not kept")
    assert "did not improve validation log-loss beyond noise" in choice.short


def test_calibrated_logits_keep_t_equal_one():
    rng = np.random.default_rng(11)
    z = rng.normal(size=(400, 4)) * 2
    choice = choose_temperature(z, sample_labels(z, seed=12))
    assert choice.fitted == pytest.approx(1.0, abs=0.25)
    assert not choice.kept and choice.temperature == 1.0  # nothing to gain beyond noise


# --- the report section ----------------------------------------------------------------------------


def test_section_refuses_a_small_validation_split(make_eval_data):
    data = make_eval_data()  # breast cancer, val 0.1: 57 rows
    section = calibration_section(data, CalibrationConfig(temperature=True))
    d = section.data
    assert d["temperature"] == 1.0 and d["worse_after_scaling"] == []
    fit = d["temperature_fit"]
    assert fit["fitted"] is None and not fit["kept"] and fit["validation_rows"] == len(data.y_val)
    assert "evaluate.calibration.min_rows" in fit["reason"]
    assert fit["reason"] in section.notes
    assert set(d["test"]) == {"uncalibrated", "served"}
    assert d["test"]["served"] == d["test"]["uncalibrated"]
    assert re.fullmatch(
        rf"ECE \d\.\d{{3}}, log-loss \d\.\d{{3}} \(no temperature scaling: only "
        rf"{len(data.y_val)} validation rows\)",
        section.summary,
    )


def test_section_measures_test_log_loss_and_ece_before_and_after(make_eval_data):
    data = make_eval_data()
    section = calibration_section(data, CalibrationConfig(temperature=True, min_rows=30))
    d = section.data
    fit = d["temperature_fit"]
    assert fit["fitted"] is not None
    assert TEMPERATURE_BOUNDS[0] <= fit["fitted"] <= TEMPERATURE_BOUNDS[1]
    assert d["temperature"] == (fit["fitted"] if fit["kept"] else 1.0)
    y = data.y.astype(int)
    for row, t in (("uncalibrated", 1.0), ("scaled", fit["fitted"]), ("served", d["temperature"])):
        proba = softmax(data.test_outputs / t)
        assert d["test"][row]["log_loss"] == pytest.approx(nll(data.test_outputs / t, y))
        assert d["test"][row]["ece"] == pytest.approx(expected_calibration_error(proba, y, 15))
    assert (
        d["ece"] == d["test"]["served"]["ece"] and d["log_loss"] == d["test"]["served"]["log_loss"]
    )
    val = fit["validation_log_loss"]
    assert val["scaled"] <= val["uncalibrated"] + 1e-9  # the fit's objective
    assert sum(b["count"] for b in d["bins"]) == len(data.y)
    low, high = d["ece_ci"]
    assert 0.0 <= low <= high <= 1.0
    assert "<svg" in next(iter(section.figures.values()))


def test_a_kept_temperature_that_hurts_the_test_rows_is_flagged(make_eval_data):
    """The 5-epoch model is under-confident on its validation rows, so sharpening (T < 1) is
    kept; on test rows with 30% of their labels flipped, sharper is worse: the report says so."""
    data = make_eval_data()
    flip = np.random.default_rng(0).random(len(data.y)) < 0.3
    noisy = dataclasses.replace(data, y=np.where(flip, 1 - data.y, data.y))
    section = calibration_section(noisy, CalibrationConfig(temperature=True, min_rows=30))
    d = section.data
    assert d["temperature_fit"]["kept"] and d["temperature"] < 1.0
    assert "log_loss" in d["worse_after_scaling"]
    assert d["test"]["served"]["log_loss"] > d["test"]["uncalibrated"]["log_loss"]
    assert "(worse)" in section.summary and f"T = {d['temperature']:.2f}" in section.summary
    assert any("made the test" in flag and "worse" in flag for flag in section.flags)


def test_the_fit_ignores_the_temperature_the_model_already_has(make_eval_data):
    data = make_eval_data()
    config = CalibrationConfig(temperature=True, min_rows=30)
    plain = calibration_section(data, config).data
    saved = dataclasses.replace(data, temperature=2.5)
    scaled = calibration_section(saved, config).data
    fit, plain_fit = scaled["temperature_fit"], plain["temperature_fit"]
    assert fit["fitted"] == pytest.approx(plain_fit["fitted"], rel=1e-5)  # raw logits either way
    assert fit["kept"] == plain_fit["kept"]
    assert scaled["test"]["uncalibrated"] == pytest.approx(plain["test"]["uncalibrated"])
    fixed = calibration_section(saved, config, apply=False)  # a registered version's
    assert fixed.data["temperature"] == 2.5  # measured as deployed
    assert fixed.data["ece"] != pytest.approx(plain["test"]["uncalibrated"]["ece"])
    assert any("reported, not applied" in note for note in fixed.notes)


def test_without_temperature_nothing_is_fitted(make_eval_data):
    section = calibration_section(make_eval_data(), CalibrationConfig(bins=10))
    assert section.data["temperature"] == 1.0 and section.data["temperature_fit"] is None
    assert re.fullmatch(r"ECE \d\.\d{3}, log-loss \d\.\d{3}", section.summary)
    assert all(b["high"] - b["low"] == pytest.approx(0.1) for b in section.data["bins"])


def test_an_empty_validation_split_gives_a_note(make_eval_data):
    data = make_eval_data(split={"val": 0.0})
    assert len(data.y_val) == 0
    section = calibration_section(data, CalibrationConfig(temperature=True))
    assert section.data["temperature"] == 1.0
    assert any("validation split is empty" in note for note in section.notes)
    assert section.data["ece"] >= 0.0


def test_regression_is_skipped(make_eval_data):
    section = calibration_section(
        make_eval_data("builtin:diabetes", "regression"), CalibrationConfig()
    )
    assert section.data == {"skipped": "calibration does not apply to the regression task"}
    assert section.notes and not section.figures and section.summary is None
