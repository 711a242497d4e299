"""The one PSI: its smoothing, its thresholds, and that quality report and drift both use them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from danlu.data import (
    PSI_MAJOR,
    PSI_MODERATE,
    DriftMonitor,
    Feature,
    FeatureSchema,
    drift_reference,
    drift_status,
    psi,
    quality_report,
)
from danlu.data._psi import psi_pvalue
from danlu.errors import DataError


def _smoothed(counts: list[float]) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    return (c + 0.5) / (c.sum() + 0.5 * len(c))


def test_identical_shares_give_zero_whatever_the_sizes() -> None:
    assert psi([25, 25, 25, 25], [25, 25, 25, 25]) == 0.0
    assert psi([10, 30, 60], [100, 300, 600]) == pytest.approx(0.0, abs=1e-3)
    assert psi([50, 50, 0], [50, 50, 0]) == pytest.approx(0.0, abs=1e-12)


def test_psi_is_the_symmetric_kl_of_counts_smoothed_by_half_a_row() -> None:
    p, q = _smoothed([500, 500]), _smoothed([600, 400])
    assert psi([500, 500], [600, 400]) == pytest.approx(float(np.sum((q - p) * np.log(q / p))))
    assert psi([500, 500], [600, 400]) == pytest.approx(psi([600, 400], [500, 500]))
    # with many rows the smoothing vanishes: the textbook value of the shares
    big = psi([5e6, 5e6], [6e6, 4e6])
    assert big == pytest.approx(0.1 * np.log(1.2) + 0.1 * np.log(1.25), rel=1e-5)


def test_an_empty_bin_stays_finite_and_shrinks_with_the_rows() -> None:
    small = psi([50, 50, 0], [0, 50, 50])
    large = psi([5000, 5000, 0], [0, 5000, 5000])
    assert np.isfinite(small) and np.isfinite(large)
    assert PSI_MAJOR < small < large  # half a row is a smaller share of more rows


def test_bad_counts_are_refused() -> None:
    with pytest.raises(DataError, match="same bins"):
        psi([50, 50], [100])
    with pytest.raises(DataError, match="bin counts"):
        psi([0.5, -0.5], [0.5, 0.5])


def test_pvalue_tells_a_shift_from_the_noise_of_small_samples() -> None:
    value = psi([30, 30], [40, 20])
    assert psi_pvalue(value, 60, 60, 2) > 0.01  # 60 rows each: could be chance
    value = psi([3000, 3000], [4000, 2000])
    assert psi_pvalue(value, 6000, 6000, 2) < 1e-10


def test_the_thresholds_are_the_credit_scoring_rule_of_thumb() -> None:
    assert (PSI_MODERATE, PSI_MAJOR) == (0.1, 0.25)
    statuses = [drift_status(v) for v in (0.0, PSI_MODERATE - 1e-9, PSI_MODERATE, PSI_MAJOR)]
    assert statuses == ["ok", "ok", "moderate", "drift"]


def test_quality_shift_and_serving_drift_give_one_psi_for_one_pair_of_samples() -> None:
    """The same train and test rows of a categorical feature: the quality report's train/test
    PSI, the drift monitor's PSI and psi() of the counts are one number, judged by one threshold."""
    rng = np.random.default_rng(0)
    train = rng.choice(["a", "b", "c"], 2000, p=[0.6, 0.3, 0.1])
    test = rng.choice(["a", "b", "c"], 1000, p=[0.2, 0.3, 0.5])
    counts = [[int((s == c).sum()) for c in "abc"] for s in (train, test)]
    expected = psi(counts[0], counts[1])
    assert expected >= PSI_MAJOR

    frame = pd.DataFrame({"c": np.r_[train, test], "y": rng.integers(0, 2, 3000)})
    report = quality_report(
        frame, "y", "classification", train_idx=np.arange(2000), test_idx=np.arange(2000, 3000)
    )
    shift = report["details"][0]["shift"]
    assert shift["psi"] == pytest.approx(expected, rel=1e-3) and shift["shifted"]

    schema = FeatureSchema(
        (Feature("c", "categorical", ("a", "b", "c")),),
        "y",
        "classification",
        None,
        0.0,
        1.0,
        None,
        3,
        ("c=a", "c=b", "c=c"),
    )
    onehot = {k: np.eye(3, dtype=np.float32)[i] for i, k in enumerate("abc")}
    monitor = DriftMonitor(
        drift_reference(np.stack([onehot[v] for v in train]), schema), window=1000
    )
    monitor.observe(np.stack([onehot[v] for v in test]))
    (feature,) = monitor.report()["features"]
    # the reference adds an "other" bin (empty in both): half a row each, nothing else changes
    assert feature["psi"] == pytest.approx(psi([*counts[0], 0], [*counts[1], 0]))
    assert feature["psi"] == pytest.approx(expected, rel=1e-2)
    assert feature["status"] == "drift"
