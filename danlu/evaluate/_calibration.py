"""Calibration: does a predicted confidence of 0.9 come true nine times in ten?

The expected calibration error (ECE, Guo et al. 2017) sorts the test rows into equal-width bins of
top-label confidence and averages ``|accuracy - confidence|`` over the bins, weighted by their
rows. Temperature scaling divides the logits by one scalar T > 0 fitted on the validation split:
it changes no prediction (the argmax is invariant) and usually removes most of the miscalibration
of an over-confident network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from danlu.evaluate._bootstrap import bootstrap_ci
from danlu.evaluate._context import EvalData, Section
from danlu.logging import get_logger

if TYPE_CHECKING:
    from danlu.config import CalibrationConfig

__all__ = [
    "calibration_section",
    "expected_calibration_error",
    "fit_temperature",
    "reliability_bins",
]

logger = get_logger(__name__)

#: The range searched for the temperature; beyond it the fit is degenerate (all or no confidence).
_T_MIN, _T_MAX = 0.05, 20.0


def _check(proba: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, K) float probabilities and (n,) int labels; a 1-D ``proba`` is P(class 1)."""
    proba = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if proba.ndim == 1:  # binary: the probability of the positive class
        proba = np.stack([1.0 - proba, proba], axis=1)
    if proba.ndim != 2:
        raise ValueError(f"proba must be (rows, classes); got shape {proba.shape}.")
    if len(proba) != len(y):
        raise ValueError(
            f"proba and y must have the same number of rows; got {len(proba)} and {len(y)}."
        )
    if len(y) == 0:
        raise ValueError("Cannot measure calibration on 0 rows.")
    return proba, y


def reliability_bins(proba: np.ndarray, y: np.ndarray, bins: int = 15) -> list[dict[str, float]]:
    """Top-label confidence and accuracy in each non-empty equal-width confidence bin.

    Bin ``b`` holds the rows whose confidence lies in ``(b / bins, (b + 1) / bins]``.

    Args:
        proba: (n, K) class probabilities (or (n,) probabilities of class 1).
        y: (n,) true class indices.
        bins: number of equal-width bins on [0, 1].

    Returns:
        One dict per non-empty bin: ``low``, ``high``, ``count``, ``confidence`` (mean top-label
        probability) and ``accuracy`` (fraction of rows whose top label is right).

    Example:
        >>> import numpy as np
        >>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
        >>> [(b["count"], b["accuracy"]) for b in reliability_bins(p, np.array([0, 1, 1]), 2)]
        [(3, 0.6666666666666666)]
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1; got {bins}.")
    proba, y = _check(proba, y)
    confidence = proba.max(axis=1)  # (n,)
    correct = proba.argmax(axis=1) == y  # (n,)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # searchsorted 'left' on the inner edges puts a confidence equal to an edge in the lower bin.
    index = np.searchsorted(edges[1:-1], confidence, side="left")  # (n,) in [0, bins)
    result = []
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        if count:
            result.append(
                {
                    "low": float(edges[b]),
                    "high": float(edges[b + 1]),
                    "count": count,
                    "confidence": float(confidence[mask].mean()),
                    "accuracy": float(correct[mask].mean()),
                }
            )
    return result


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Top-label expected calibration error: ``Σ_b (n_b / n) · |accuracy_b − confidence_b|``.

    Args:
        proba: (n, K) class probabilities (or (n,) probabilities of class 1).
        y: (n,) true class indices.
        bins: number of equal-width confidence bins (Guo et al. use 15).

    Example:
        >>> import numpy as np
        >>> p = np.array([[0.9, 0.1], [0.9, 0.1]])  # 90% sure, right once in two
        >>> round(expected_calibration_error(p, np.array([0, 1])), 6)
        0.4
    """
    proba, y = _check(proba, y)
    n = len(y)
    return float(
        sum(
            b["count"] / n * abs(b["accuracy"] - b["confidence"])
            for b in reliability_bins(proba, y, bins)
        )
    )


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(np.asarray(logits, dtype=np.float64)))


def _nll(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes under softmax(logits)."""
    log_p = _log_softmax(np.asarray(logits, dtype=np.float64))  # (n, K)
    return float(-log_p[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T > 0 that minimises the NLL of ``softmax(logits / T)`` on ``(logits, y)``.

    The NLL is unimodal in log T (it is convex in 1 / T), so a bounded scalar search over
    T in [0.05, 20] finds the optimum deterministically.

    Args:
        logits: (n, K) raw logits (not already divided by a temperature).
        y: (n,) true class indices.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> z = rng.normal(size=(2000, 3)) * 2
        >>> p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        >>> y = np.array([rng.choice(3, p=row) for row in p])
        >>> 0.8 < fit_temperature(z * 2, y) / 2 < 1.2
        True
    """
    from scipy.optimize import minimize_scalar

    logits, y = _check(logits, y)
    if not np.isfinite(logits).all():
        raise ValueError("logits hold NaN or infinite values; cannot fit a temperature.")

    def objective(log_t: float) -> float:
        return _nll(logits / np.exp(log_t), y)

    result = minimize_scalar(
        objective,
        bounds=(np.log(_T_MIN), np.log(_T_MAX)),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(result.x))


def _reliability_figure(
    bins: list[dict[str, float]],
    calibrated: list[dict[str, float]] | None,
    confidence: np.ndarray,
    n_bins: int,
    temperature: float | None,
) -> str:
    from danlu.evaluate._plots import figure, svg

    fig, (top, bottom) = figure(
        5.2, 4.6, nrows=2, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    width = 1.0 / n_bins
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    top.bar(
        [b["low"] for b in bins],
        [b["accuracy"] for b in bins],
        width=width,
        align="edge",
        alpha=0.6,
        edgecolor="black",
        linewidth=0.5,
        label="model",
    )
    if calibrated is not None:
        top.plot(
            [b["confidence"] for b in calibrated],
            [b["accuracy"] for b in calibrated],
            marker="o",
            color="tab:orange",
            label=f"after temperature scaling (T = {temperature:.2f})",
        )
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    bottom.hist(confidence, bins=np.linspace(0, 1, n_bins + 1), color="grey", edgecolor="black")
    bottom.set_xlabel("confidence (top-label probability)")
    bottom.set_ylabel("rows")
    return svg(fig)


def calibration_section(data: EvalData, config: CalibrationConfig) -> Section:
    """Expected calibration error, a reliability diagram, and optional temperature scaling.

    Args:
        data: the model and its evaluation rows.
        config: the recipe's ``evaluate.calibration`` block.

    Returns:
        Section ``calibration`` with ``ece``, ``ece_ci``, ``bins``, ``log_loss`` and, when
        ``config.temperature`` is set and there are validation rows, the fitted ``temperature``
        with ``ece_calibrated`` / ``log_loss_calibrated`` on the test rows.

    Example:
        >>> from danlu.config import CalibrationConfig
        >>> section = calibration_section(data, CalibrationConfig(temperature=True))  # doctest: +SKIP
        >>> section.summary  # doctest: +SKIP
        'ECE 0.034 (0.012 after temperature scaling)'
    """
    section = Section(key="calibration", title="Calibration")
    if not data.task.calibrates:
        reason = f"calibration does not apply to the {data.task.name} task"
        section.data = {"skipped": reason}
        section.notes.append(f"Skipped: {reason}; this model is a regression.")
        return section
    if len(data.y) == 0:
        section.data = {"skipped": "no evaluation rows"}
        section.notes.append("Skipped: there are no evaluation rows to measure calibration on.")
        return section

    y = np.asarray(data.y, dtype=np.int64)
    proba = data.probabilities(data.test_outputs)  # (n, K), at the model's current temperature
    bins = reliability_bins(proba, y, config.bins)
    ece = expected_calibration_error(proba, y, config.bins)
    ci = bootstrap_ci(
        lambda p, t: expected_calibration_error(p, t, config.bins),
        proba,
        y,
        resamples=200,
        seed=0,
    )
    result: dict[str, Any] = {
        "ece": ece,
        "ece_ci": [ci.low, ci.high],
        "bins": bins,
        "bin_count": config.bins,
        "temperature": None,
        "ece_calibrated": None,
        "bins_calibrated": None,
        "log_loss": _nll(data.test_outputs, y),  # outputs are the scaled logits
        "log_loss_calibrated": None,
    }
    section.notes.append(
        f"Top-label ECE over {config.bins} equal-width confidence bins (Guo et al., 2017); the "
        "interval is a 95% bootstrap over 200 resamples of the evaluation rows."
    )
    if data.temperature != 1.0:
        section.notes.append(
            f"The model is already temperature-scaled (T = {data.temperature:.3g}); the ECE is "
            "measured on its scaled probabilities."
        )

    temperature: float | None = None
    calibrated: list[dict[str, float]] | None = None
    if config.temperature:
        if len(data.y_val) == 0:
            section.notes.append(
                "Temperature scaling was not fitted: the validation split is empty. Set "
                "data.split.val above 0 (e.g. 0.1) to fit it."
            )
        else:
            raw_val = data.outputs(data.x_val) * data.temperature  # (n_val, K) raw logits
            y_val = np.asarray(data.y_val, dtype=np.int64)
            temperature = fit_temperature(raw_val, y_val)
            raw_test = data.test_outputs * data.temperature  # undo the model's own temperature
            proba_cal = _softmax(raw_test / temperature)
            calibrated = reliability_bins(proba_cal, y, config.bins)
            result.update(
                temperature=temperature,
                ece_calibrated=expected_calibration_error(proba_cal, y, config.bins),
                bins_calibrated=calibrated,
                log_loss_calibrated=_nll(raw_test / temperature, y),
                val_log_loss=_nll(raw_val / data.temperature, y_val),
                val_log_loss_calibrated=_nll(raw_val / temperature, y_val),
            )
            section.notes.append(
                f"Temperature T = {temperature:.3g} was fitted on the {len(y_val)} validation rows "
                "(minimum negative log-likelihood); it rescales confidences without changing any "
                "prediction."
            )
            logger.debug("Fitted temperature %.4f on %d validation rows", temperature, len(y_val))

    section.data = result
    section.summary = f"ECE {ece:.3f}"
    if temperature is not None:
        section.summary += f" ({result['ece_calibrated']:.3f} after temperature scaling)"
    section.figures["Reliability diagram: accuracy per confidence bin"] = _reliability_figure(
        bins, calibrated, proba.max(axis=1), config.bins, temperature
    )
    return section
