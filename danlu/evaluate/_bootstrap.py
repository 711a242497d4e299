"""Confidence intervals: the percentile bootstrap for any metric, and the Wilson score interval
for a proportion of rows (accuracy).

A test split of a few hundred rows gives a headline metric that moves by whole points between
seeds; the interval says how much of a difference between two models is noise. The bootstrap
resamples the evaluated rows with replacement, recomputes the metric and reads the interval off
the percentiles. It cannot see beyond the sample: 360 rows out of 360 right resample to 100% every
time, so it reports [1, 1]. A proportion near 0 or 1 needs the Wilson interval (Wilson, 1927;
recommended over the normal and exact intervals by Brown, Cai & DasGupta, 2001), which gives
[0.989, 1] there.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "bootstrap_ci", "wilson_interval"]


@dataclass(frozen=True)
class Interval:
    """A metric's value on all rows and its bootstrap interval.

    ``resamples`` counts the resamples the metric could be computed on (a resample without a
    second class has no ROC-AUC, for one; 0 for a Wilson interval); ``confidence`` is the
    interval's coverage; ``method`` is ``bootstrap`` or ``wilson``.
    """

    value: float
    low: float
    high: float
    std: float
    confidence: float
    resamples: int
    method: str = "bootstrap"

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}]"


def bootstrap_ci(
    metric: Callable[..., float],
    *arrays: np.ndarray,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of ``metric(*arrays)``; rows are resampled jointly.

    Args:
        metric: called as ``metric(*arrays)`` on each resample, returns a float.
        arrays: equal-length arrays (targets, predictions, probabilities, ...), rows first.
        resamples: how many resamples (at least 10; 1000 is a common choice).
        confidence: the interval's coverage, between 0 and 1.
        seed: the same seed gives the same interval.

    Example:
        >>> import numpy as np
        >>> y = np.array([0, 1, 1, 0, 1, 1, 0, 1])
        >>> acc = lambda t, p: float((t == p).mean())
        >>> ci = bootstrap_ci(acc, y, y, resamples=100)
        >>> (ci.value, ci.low, ci.high)
        (1.0, 1.0, 1.0)
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive); got {confidence}.")
    if resamples < 10:
        raise ValueError(f"resamples must be at least 10; got {resamples}.")
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array to resample.")
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(
            f"The arrays to resample must have the same number of rows; got {sorted(lengths)}."
        )
    n = lengths.pop()
    if n == 0:
        raise ValueError("Cannot bootstrap a metric over 0 rows.")
    value = float(metric(*arrays))
    rng = np.random.default_rng(seed)
    scores = []
    with warnings.catch_warnings():  # undefined resamples are expected, counted, and skipped
        warnings.simplefilter("ignore")
        for _ in range(resamples):
            idx = rng.integers(0, n, size=n)  # (n,) rows drawn with replacement
            try:
                score = float(metric(*(a[idx] for a in arrays)))
            except ValueError:  # e.g. ROC-AUC on a resample that holds one class only
                continue
            if math.isfinite(score):  # newer scikit-learn returns NaN (and warns) instead
                scores.append(score)
    if len(scores) < resamples // 2:
        raise ValueError(
            f"The metric could be computed on only {len(scores)} of {resamples} resamples; "
            "the data is too small or too one-sided for a bootstrap interval."
        )
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(scores, [tail, 100 - tail])
    return Interval(
        value=value,
        low=float(low),
        high=float(high),
        std=float(np.std(scores, ddof=1)),
        confidence=confidence,
        resamples=len(scores),
    )


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """The Wilson score interval of a proportion ``successes / n`` (e.g. accuracy).

    Unlike a bootstrap, it stays honest at 0 and 1: all rows right still leaves room below 100%.
    ``std`` is the binomial standard error ``sqrt(p (1 - p) / n)``.

    Args:
        successes: rows counted (e.g. correctly classified), between 0 and ``n``.
        n: rows in all, at least 1.
        confidence: the interval's coverage, between 0 and 1.

    Example:
        >>> ci = wilson_interval(360, 360)
        >>> round(ci.low, 4), ci.high
        (0.9894, 1.0)
        >>> str(wilson_interval(7, 10))
        '0.7 [0.3968, 0.8922]'
    """
    from scipy.stats import binomtest

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive); got {confidence}.")
    if n < 1:
        raise ValueError(f"A proportion needs at least one row; got n = {n}.")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n = {n}; got {successes}.")
    p = successes / n
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    low, high = float(ci.low), float(ci.high)
    return Interval(
        value=p,
        low=low,
        high=high,
        std=math.sqrt(p * (1 - p) / n),
        confidence=confidence,
        resamples=0,
        method="wilson",
    )
