"""Bootstrap intervals: exact where the answer is known, the right width where theory says."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from danlu.evaluate import bootstrap_ci


def accuracy(y, p):
    return float((y == p).mean())


def test_a_perfect_model_has_a_zero_width_interval():
    y = np.arange(50) % 3
    ci = bootstrap_ci(accuracy, y, y, resamples=200)
    assert (ci.value, ci.low, ci.high, ci.std) == (1.0, 1.0, 1.0, 0.0)


def test_width_matches_the_binomial_standard_error():
    rng = np.random.default_rng(1)
    n, p = 400, 0.9
    correct = rng.random(n) < p
    y = np.ones(n, dtype=int)
    pred = np.where(correct, 1, 0)
    ci = bootstrap_ci(accuracy, y, pred, resamples=2000, seed=3)
    acc = correct.mean()
    se = math.sqrt(acc * (1 - acc) / n)
    assert ci.low < acc < ci.high
    assert ci.high - ci.low == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert ci.std == pytest.approx(se, rel=0.15)


def test_the_same_seed_gives_the_same_interval():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    a = bootstrap_ci(accuracy, y, p, resamples=300, seed=5)
    b = bootstrap_ci(accuracy, y, p, resamples=300, seed=5)
    c = bootstrap_ci(accuracy, y, p, resamples=300, seed=6)
    assert a == b and (a.low, a.high) != (c.low, c.high)
    narrow = bootstrap_ci(accuracy, y, p, resamples=300, confidence=0.5, seed=5)
    assert a.low < narrow.low < narrow.high < a.high


def test_resamples_where_the_metric_is_undefined_are_skipped():
    y = np.array([0] * 38 + [1] * 2)  # many resamples hold no positive row
    scores = np.linspace(0, 1, 40)
    ci = bootstrap_ci(roc_auc_score, y, scores, resamples=400)
    assert 200 <= ci.resamples < 400
    assert ci.low <= ci.value <= ci.high


@pytest.mark.parametrize(
    ("kwargs", "arrays", "message"),
    [
        ({"confidence": 1.0}, 2, "confidence must be between 0 and 1"),
        ({"resamples": 5}, 2, "resamples must be at least 10"),
        ({}, 0, "needs at least one array"),
    ],
)
def test_bad_arguments_are_refused(kwargs, arrays, message):
    y = np.zeros(10, dtype=int)
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(accuracy, *([y] * arrays), **kwargs)


def test_arrays_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match=r"same number of rows; got \[3, 4\]"):
        bootstrap_ci(accuracy, np.zeros(3), np.zeros(4))


def test_a_metric_defined_on_too_few_resamples_is_refused():
    def fragile(y):  # defined only when the two positive rows appear exactly twice in all
        if int(y.sum()) != 2:
            raise ValueError("undefined here")
        return 1.0

    y = np.array([0] * 98 + [1, 1])
    with pytest.raises(ValueError, match="only .* of 200 resamples"):
        bootstrap_ci(fragile, y, resamples=200)


# --- Wilson's interval of a proportion ---------------------------------------------------------


def test_wilson_gives_room_below_a_perfect_score():
    from danlu.evaluate import wilson_interval

    ci = wilson_interval(360, 360)  # the bootstrap above says [1, 1]
    assert ci.value == 1.0 and ci.high == 1.0
    assert ci.low == pytest.approx(360 / (360 + 1.959964**2), abs=1e-6)  # k = n: n / (n + z²)
    assert round(ci.low, 4) == 0.9894
    assert ci.method == "wilson" and ci.resamples == 0
    zero = wilson_interval(0, 20)
    assert zero.low == 0.0 and zero.high == pytest.approx(1.959964**2 / (20 + 1.959964**2))


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_published_values(k, n, low, high):
    """Newcombe (1998), Statistics in Medicine 17:857, table I, method 3 (Wilson score)."""
    from danlu.evaluate import wilson_interval

    ci = wilson_interval(k, n)
    assert (ci.low, ci.high) == pytest.approx((low, high), abs=1e-4)
    narrow = wilson_interval(k, n, confidence=0.5)
    assert ci.low <= narrow.low <= k / n < narrow.high < ci.high


def test_wilson_refuses_impossible_counts():
    from danlu.evaluate import wilson_interval

    with pytest.raises(ValueError, match="between 0 and n"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="at least one row"):
        wilson_interval(0, 0)
