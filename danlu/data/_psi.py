"""The population stability index (PSI): one definition for the quality report and serving drift.

PSI compares how rows fall into the same bins in two populations (train and test, or training and
the rows a served model sees): ``Σ (q − p) · ln(q / p)`` over the bins, with ``p`` and ``q`` the
two populations' shares. It is the symmetric Kullback-Leibler divergence of the two histograms.

Both populations are given as **bin counts** (rows per bin), and each count is smoothed by half a
row before the shares are taken (``(count + 0.5) / (rows + 0.5 · bins)``, the Jeffreys prior):
an empty bin then neither makes the logarithm infinite nor, with many rows, dominates the sum, and
the smoothing shrinks as the samples grow.

The thresholds are the usual rule of thumb of credit scoring, where PSI comes from (Siddiqi,
*Credit Risk Scorecards*, 2006): below :data:`PSI_MODERATE` (0.1) the population is stable, from
0.1 to :data:`PSI_MAJOR` (0.25) it moved moderately, from 0.25 on it shifted enough to act on.
"""

from __future__ import annotations

import numpy as np

from danlu.errors import DataError

__all__ = ["PSI_MAJOR", "PSI_MODERATE", "psi", "psi_pvalue"]

PSI_MODERATE = 0.1  # from here the population moved moderately (watch it)
PSI_MAJOR = 0.25  # from here it shifted: a model trained on one may not hold on the other
_SMOOTHING = 0.5  # rows added to every bin before the shares are taken


def psi(expected: np.ndarray | list[float], actual: np.ndarray | list[float]) -> float:
    """The population stability index of bin counts ``actual`` against bin counts ``expected``.

    Args:
        expected: rows per bin of the reference population (training rows).
        actual: rows per bin of the population compared with it, the same bins in the same order.

    Returns:
        PSI >= 0; 0 for identical shares. Below :data:`PSI_MODERATE` (0.1) stable, from
        :data:`PSI_MAJOR` (0.25) a major shift.

    Example:
        >>> psi([50, 50], [50, 50])
        0.0
        >>> psi([500, 500], [900, 100]) >= PSI_MAJOR
        True
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1:
        raise DataError(
            f"psi needs the same bins for both populations (two 1-d arrays of counts of one "
            f"length); got shapes {e.shape} and {a.shape}."
        )
    if (e < 0).any() or (a < 0).any():
        raise DataError("psi needs bin counts (rows per bin, >= 0); got a negative count.")
    p = (e + _SMOOTHING) / (e.sum() + _SMOOTHING * len(e))
    q = (a + _SMOOTHING) / (a.sum() + _SMOOTHING * len(a))
    return float(np.sum((q - p) * np.log(q / p)))


def psi_pvalue(value: float, expected_rows: float, actual_rows: float, bins: int) -> float:
    """How likely a PSI this large is from the noise of the sample sizes alone (no shift).

    Under "no shift" ``PSI / (1/n1 + 1/n2)`` is roughly chi-square with ``bins - 1`` degrees of
    freedom, so a small p-value tells a real shift from the noise of small samples.

    Example:
        >>> psi_pvalue(0.3, 10_000, 10_000, 10) < 1e-10
        True
    """
    from scipy.stats import chi2

    if expected_rows <= 0 or actual_rows <= 0:
        return 1.0
    dof = max(bins - 1, 1)
    return float(chi2.sf(value / (1.0 / expected_rows + 1.0 / actual_rows), dof))
