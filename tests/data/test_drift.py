"""Drift reference and the sliding-window monitor, on tiny real schemas (PSI: test_psi.py)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd
import pytest

from danlu.data import (
    DriftMonitor,
    Feature,
    FeatureSchema,
    Preprocessor,
    drift_reference,
)
from danlu.errors import DataError


def _numeric_schema(*names: str) -> FeatureSchema:
    features = tuple(Feature(n, "numeric") for n in names)
    return FeatureSchema(features, "y", "regression", None, 0.0, 1.0, None, len(names), names)


@pytest.fixture(scope="module")
def mixed() -> tuple[np.ndarray, FeatureSchema]:
    """Encoded rows of a frame with a numeric, a categorical and a boolean feature."""
    rng = np.random.default_rng(0)
    n = 2000
    frame = pd.DataFrame(
        {
            "age": rng.normal(40, 10, n),
            "colour": rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2]),
            "member": rng.choice(["yes", "no"], n),
            "y": rng.normal(size=n),
        }
    )
    pre = Preprocessor(target="y", task="regression").fit(frame)
    return pre.transform(frame), pre.schema_


def test_reference_maps_raw_features_to_their_columns(mixed) -> None:
    x, schema = mixed
    ref = drift_reference(x, schema)
    json.dumps(ref)  # JSON-able
    by_name = {f["feature"]: f for f in ref["features"]}
    assert list(by_name) == ["age", "colour", "member"]
    age, colour, member = by_name["age"], by_name["colour"], by_name["member"]
    assert age["kind"] == "numeric" and len(age["edges"]) == 9 and len(age["expected"]) == 10
    assert np.allclose(age["expected"], 0.1, atol=0.01)  # deciles hold a tenth each
    assert colour["categories"] == ["blue", "green", "red"]
    assert colour["columns"] == [1, 2, 3]
    assert colour["expected"][-1] == 0.0  # "other": no unseen category in training
    assert colour["expected"][:3] == pytest.approx([0.2, 0.3, 0.5], abs=0.03)
    assert member["kind"] == "boolean" and sum(member["expected"]) == pytest.approx(1.0)


def test_reduced_columns_are_their_own_numeric_features() -> None:
    schema = FeatureSchema(
        (Feature("a", "numeric"), Feature("b", "numeric")),
        "y",
        "regression",
        None,
        0.0,
        1.0,
        None,
        2,
        ("pc1", "pc2"),
    )
    ref = drift_reference(np.random.default_rng(0).normal(size=(300, 2)), schema)
    assert [(f["feature"], f["kind"], f["columns"]) for f in ref["features"]] == [
        ("pc1", "numeric", [0]),
        ("pc2", "numeric", [1]),
    ]


def test_reference_refuses_rows_of_another_width(mixed) -> None:
    x, schema = mixed
    with pytest.raises(DataError, match="encoded training rows"):
        drift_reference(x[:, :2], schema)


def test_same_distribution_is_ok_and_a_shift_drifts(mixed) -> None:
    x, schema = mixed
    ref = drift_reference(x[:1000], schema)
    same = DriftMonitor(ref, window=1000)
    same.observe(x[1000:])
    report = same.report()
    assert report["reference"] is True and report["window"] == 1000
    assert all(f["status"] == "ok" and f["psi"] < 0.1 for f in report["features"])

    moved = x[1000:].copy()
    moved[:, 0] += 1.0  # age moves by one standard deviation
    moved[:, 1:4] = [0.0, 0.0, 1.0]  # every colour is red
    shifted = DriftMonitor(ref, window=1000)
    shifted.observe(moved)
    status = {f["feature"]: f for f in shifted.report()["features"]}
    assert status["age"]["psi"] > 0.25 and status["age"]["status"] == "drift"
    assert status["colour"]["psi"] > 0.25 and status["colour"]["status"] == "drift"
    assert status["member"]["status"] == "ok"


def test_unseen_categories_count_as_other(mixed) -> None:
    x, schema = mixed
    monitor = DriftMonitor(drift_reference(x, schema), window=500)
    unseen = x[:500].copy()
    unseen[:, 1:4] = 0.0  # all-zero one-hot: a category training never saw
    monitor.observe(unseen)
    colour = next(f for f in monitor.report()["features"] if f["feature"] == "colour")
    assert colour["status"] == "drift"


def test_window_slides_and_keeps_only_the_last_rows() -> None:
    schema = _numeric_schema("x")
    train = np.random.default_rng(1).normal(size=(1000, 1)).astype(np.float32)
    monitor = DriftMonitor(drift_reference(train, schema), window=200)
    monitor.observe(train[:150] + 5.0)  # drifted rows first ...
    assert monitor.report()["window"] == 150
    for start in range(0, 300, 30):  # ... then 300 normal rows in odd-sized pieces
        monitor.observe(train[start : start + 30])
    report = monitor.report()
    assert report["window"] == 200
    assert report["features"][0]["status"] == "ok"  # the drifted rows slid out
    kept = np.sort(monitor.rows()[:, 0])
    assert np.array_equal(kept, np.sort(train[100:300, 0]))
    monitor.observe(train[:1000])  # more rows than the window at once
    assert np.array_equal(np.sort(monitor.rows()[:, 0]), np.sort(train[800:1000, 0]))


def test_fewer_than_100_rows_is_insufficient_data() -> None:
    schema = _numeric_schema("x")
    train = np.random.default_rng(2).normal(size=(500, 1))
    monitor = DriftMonitor(drift_reference(train, schema), window=1000)
    assert monitor.report() == {
        "window": 0,
        "reference": True,
        "features": [{"feature": "x", "psi": None, "status": "insufficient data"}],
    }
    monitor.observe(train[:99])
    assert monitor.report()["features"][0]["status"] == "insufficient data"
    monitor.observe(train[99:100])
    assert monitor.report()["features"][0]["psi"] is not None


def test_without_a_reference_only_rows_are_counted() -> None:
    monitor = DriftMonitor(None, window=10)
    monitor.observe(np.zeros((4, 3)))
    assert monitor.report() == {"window": 4, "reference": False, "features": []}
    with pytest.raises(DataError, match="not a drift reference"):
        DriftMonitor({"features": []}, window=10)


def test_observe_is_thread_safe() -> None:
    schema = _numeric_schema("x")
    monitor = DriftMonitor(drift_reference(np.arange(1000.0).reshape(-1, 1), schema), 1000)

    def feed() -> None:
        for _ in range(200):
            monitor.observe(np.ones((3, 1)))

    threads = [threading.Thread(target=feed) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert monitor.report()["window"] == 1000
    assert np.all(monitor.rows() == 1.0)
