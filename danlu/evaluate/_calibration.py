"""Calibration: does a predicted confidence of 0.9 come true nine times in ten?

The expected calibration error (ECE, Guo et al. 2017) sorts the test rows into equal-width bins of
top-label confidence and averages ``|accuracy - confidence|`` over the bins, weighted by their
rows. Temperature scaling divides the logits by one scalar T > 0 fitted on the validation split:
it changes no prediction (the argmax is invariant) and usually removes most of the miscalibration
of an over-confident network.

A temperature can also make things worse: fitted on 35 validation rows that the model gets all
right, the validation log-loss falls without end as T shrinks, and the model ships absurdly sure
of itself. So :func:`choose_temperature` fits T only on enough rows (``min_rows``) that hold at
least one mistake, keeps T within [0.25, 4], and keeps it only when it lowers the log-loss of
validation rows *it was not fitted on* beyond noise (5-fold cross-fitting, then a paired bootstrap
of the per-row change); otherwise the model is served at T = 1 and the report says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from danlu.evaluate._bootstrap import Interval, bootstrap_ci
from danlu.evaluate._context import EvalData, Section
from danlu.logging import get_logger

if TYPE_CHECKING:
    from danlu.config import CalibrationConfig

__all__ = [
    "TEMPERATURE_BOUNDS",
    "TemperatureChoice",
    "calibration_section",
    "choose_temperature",
    "expected_calibration_error",
    "fit_temperature",
    "log_loss",
    "reliability_bins",
]

logger = get_logger(__name__)

#: The range searched for the temperature. Fitted temperatures of trained networks lie around 1-3
#: (Guo et al., 2017, table 1); a logit scale off by more than a factor of 4 is a problem of the
#: model (over- or under-training) that one rescaling should not paper over, and at the bound the
#: fit says so. At T = 0.25 a margin of 10 between two logits becomes a probability of 4e-18.
TEMPERATURE_BOUNDS = (0.25, 4.0)
_T_MIN, _T_MAX = TEMPERATURE_BOUNDS
_FOLDS = 5  # cross-fitting folds of the keep test
_LABEL = {"ece": "ECE", "log_loss": "log-loss"}


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


def log_loss(proba: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes: scikit-learn's ``log_loss`` over all K
    classes, the definition the train stage's test metrics use (``Task.metrics``).

    Example:
        >>> import numpy as np
        >>> round(log_loss(np.array([[0.5, 0.5], [0.9, 0.1]]), np.array([0, 0])), 4)
        0.3993
    """
    from sklearn.metrics import log_loss as sk_log_loss

    proba, y = _check(proba, y)
    return float(sk_log_loss(y, proba, labels=list(range(proba.shape[1]))))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T that minimises the NLL of ``softmax(logits / T)`` on ``(logits, y)``,
    within :data:`TEMPERATURE_BOUNDS`.

    The NLL is unimodal in log T (it is convex in 1 / T), so a bounded scalar search over
    T in [0.25, 4] finds the optimum deterministically. It does not say whether T is worth
    using: :func:`choose_temperature` does.

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
    return float(np.clip(np.exp(result.x), _T_MIN, _T_MAX))


def _row_nll(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n,) negative log-likelihood of each row's true class under softmax(logits)."""
    return -_log_softmax(np.asarray(logits, dtype=np.float64))[np.arange(len(y)), y]


@dataclass(frozen=True)
class TemperatureChoice:
    """What :func:`choose_temperature` decided, and why.

    Attributes:
        temperature: the temperature to serve: the fitted one when kept, else 1.0.
        fitted: the temperature fitted on all validation rows (None when refused).
        kept: whether the fitted temperature passed the keep test.
        reason: one sentence for the report: why it was refused, kept or not kept.
        short: the reason in a few words, for the summary sentence.
        rows: validation rows.
        val_log_loss: validation log-loss at T = 1 and at the fitted T (None when refused).
        improvement: the cross-fitted per-row log-loss improvement (positive: T helps) and
            its bootstrap interval (None when refused).
    """

    temperature: float
    fitted: float | None
    kept: bool
    reason: str
    short: str
    rows: int
    val_log_loss: tuple[float, float] | None = None
    improvement: Interval | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for the report."""
        imp = self.improvement
        return {
            "fitted": self.fitted,
            "kept": self.kept,
            "reason": self.reason,
            "validation_rows": self.rows,
            "bounds": list(TEMPERATURE_BOUNDS),
            "validation_log_loss": None
            if self.val_log_loss is None
            else {"uncalibrated": self.val_log_loss[0], "scaled": self.val_log_loss[1]},
            "out_of_fold_improvement": None
            if imp is None
            else {"value": imp.value, "low": imp.low, "high": imp.high},
        }


def _refuse(reason: str, short: str, rows: int) -> TemperatureChoice:
    return TemperatureChoice(1.0, None, False, reason, short, rows)


def _cross_fitted_gain(logits: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """(n,) per-row NLL at T = 1 minus NLL at a temperature fitted without that row's fold.

    In-sample the fitted T can only look good (it minimises the validation NLL); on the rows
    held out of its fit it shows what it does to rows it has not seen, as the test rows will be.
    """
    n = len(y)
    fold = np.random.default_rng(seed).permutation(n) % _FOLDS  # (n,) fold of each row
    gain = np.empty(n)
    for k in range(_FOLDS):
        held = fold == k
        t = fit_temperature(logits[~held], y[~held])
        gain[held] = _row_nll(logits[held], y[held]) - _row_nll(logits[held] / t, y[held])
    return gain


def choose_temperature(
    logits: np.ndarray, y: np.ndarray, *, min_rows: int = 100, seed: int = 0
) -> TemperatureChoice:
    """Fit a temperature on validation logits, and keep it only when it cannot hurt.

    Refused (T stays 1) with fewer than ``min_rows`` rows, or when the model is right on every
    row (the NLL then falls without end as T shrinks: nothing shows how sure the model should be
    when it is wrong). Otherwise T is fitted within [0.25, 4] on all rows and kept when 5-fold
    cross-fitting (T fitted on four folds, measured on the fifth) lowers the mean per-row
    log-loss with the lower end of a 95% paired-bootstrap interval above 0.

    Args:
        logits: (n, K) raw validation logits (not divided by any temperature).
        y: (n,) true class indices.
        min_rows: the fewest validation rows to fit on.
        seed: seeds the folds and the bootstrap.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> z = rng.normal(size=(2000, 3)) * 2
        >>> y = np.array([rng.choice(3, p=np.exp(r) / np.exp(r).sum()) for r in z])
        >>> over = choose_temperature(z * 3, y)  # three times over-confident
        >>> over.kept, round(over.temperature, 1)
        (True, 3.0)
        >>> choose_temperature(z[:40] * 3, y[:40]).short
        'only 40 validation rows'
    """
    logits, y = _check(logits, y)
    n = len(y)
    if n < min_rows:
        return _refuse(
            f"Temperature scaling was not fitted: the validation split has {n} rows, fewer than "
            f"the {min_rows} needed (evaluate.calibration.min_rows); on so few rows the fitted "
            "temperature is mostly noise. Give data.split.val more rows to fit it.",
            f"only {n} validation rows",
            n,
        )
    if not np.isfinite(logits).all():
        raise ValueError("logits hold NaN or infinite values; cannot fit a temperature.")
    if (logits.argmax(axis=1) == y).all():
        return _refuse(
            f"Temperature scaling was not fitted: the model is right on all {n} validation rows, "
            "so the validation log-loss keeps falling as T shrinks and nothing shows how "
            "confident the model should be when it is wrong.",
            "no validation mistakes to fit on",
            n,
        )
    fitted = fit_temperature(logits, y)
    before, after = _nll(logits, y), _nll(logits / fitted, y)
    gain = bootstrap_ci(lambda d: float(d.mean()), _cross_fitted_gain(logits, y, seed), seed=seed)
    at_bound = ""
    if abs(np.log(fitted / _T_MIN)) < 1e-3:
        at_bound = (
            " (at the bound of the search: the model is more than 4× under-confident; more "
            "epochs or less regularisation would fix the model itself)"
        )
    elif abs(np.log(fitted / _T_MAX)) < 1e-3:
        at_bound = (
            " (at the bound of the search: the model is more than 4× over-confident; early "
            "stopping or more regularisation would fix the model itself)"
        )
    measured = (
        f"T = {fitted:.3g}{at_bound} fitted on the {n} validation rows changes the log-loss of "
        f"held-out validation rows by {-gain.value:+.4f} per row (5-fold cross-fitting; 95% "
        f"interval [{-gain.high:+.4f}, {-gain.low:+.4f}])"
    )
    kept = gain.low > 0
    if kept:
        reason, short = f"Temperature scaling kept: {measured}, a gain beyond noise.", "kept"
    else:
        reason = f"Temperature scaling not kept (T stays 1): {measured}, no gain beyond noise."
        short = f"T = {fitted:.2f} did not improve validation log-loss beyond noise"
    logger.debug("Temperature %.4f on %d rows: gain %s, kept %s", fitted, n, gain, kept)
    return TemperatureChoice(
        fitted if kept else 1.0, fitted, kept, reason, short, n, (before, after), gain
    )


def _reliability_figure(
    bins: list[dict[str, float]],
    scaled: list[dict[str, float]] | None,
    confidence: np.ndarray,
    n_bins: int,
    scaled_label: str,
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
        label="model (T = 1)",
    )
    if scaled is not None:
        top.plot(
            [b["confidence"] for b in scaled],
            [b["accuracy"] for b in scaled],
            marker="o",
            color="tab:orange",
            label=scaled_label,
        )
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    bottom.hist(confidence, bins=np.linspace(0, 1, n_bins + 1), color="grey", edgecolor="black")
    bottom.set_xlabel("confidence (top-label probability, T = 1)")
    bottom.set_ylabel("rows")
    return svg(fig)


def _measure(raw: np.ndarray, y: np.ndarray, temperature: float, bins: int) -> dict[str, float]:
    """Test log-loss and ECE of ``softmax(raw / temperature)``."""
    proba = _softmax(raw / temperature)
    return {
        "temperature": temperature,
        "log_loss": log_loss(proba, y),
        "ece": expected_calibration_error(proba, y, bins),
    }


def _choice(data: EvalData, config: CalibrationConfig) -> TemperatureChoice | None:
    """The temperature decision on the validation split (None when not asked)."""
    if not config.temperature:
        return None
    if len(data.y_val) == 0:
        return _refuse(
            "Temperature scaling was not fitted: the validation split is empty. Set "
            "data.split.val above 0 (e.g. 0.1) to fit it.",
            "no validation split",
            0,
        )
    raw_val = data.outputs(data.x_val) * data.temperature  # (n_val, K) raw logits
    return choose_temperature(
        raw_val, np.asarray(data.y_val, dtype=np.int64), min_rows=config.min_rows
    )


def _summary(
    tests: dict[str, dict[str, float]], worse: list[str], choice: TemperatureChoice | None
) -> str:
    """``ECE 0.033 → 0.014, log-loss 0.050 → 0.041 with temperature scaling (T = 1.31)``."""
    before, served = tests["uncalibrated"], tests["served"]
    t = served["temperature"]
    if t == 1.0:
        text = f"ECE {served['ece']:.3f}, log-loss {served['log_loss']:.3f}"
        if choice is not None:
            text += f" (no temperature scaling: {choice.short})"
        return text
    parts = [
        f"{_LABEL[key]} {before[key]:.3f} → {served[key]:.3f}{' (worse)' if key in worse else ''}"
        for key in ("ece", "log_loss")
    ]
    return f"{', '.join(parts)} with temperature scaling (T = {t:.2f})"


def calibration_section(
    data: EvalData, config: CalibrationConfig, *, apply: bool = True
) -> Section:
    """Expected calibration error and log-loss, a reliability diagram, and temperature scaling
    when it cannot hurt (:func:`choose_temperature`).

    Args:
        data: the model and its evaluation rows; ``data.temperature`` is the one it has now.
        config: the recipe's ``evaluate.calibration`` block.
        apply: whether a kept temperature will be served (the evaluator applies it); False
            for a registered version, whose predictions never change.

    Returns:
        Section ``calibration``. ``temperature`` is the served model's temperature (1: none);
        ``ece``, ``ece_ci``, ``log_loss`` and ``bins`` describe the served model on the test
        rows; ``test`` has log-loss and ECE uncalibrated (T = 1), at the fitted temperature
        (``scaled``) and as served; ``worse_after_scaling`` names those the served temperature
        made worse than T = 1; ``temperature_fit`` is the decision and its reason.

    Example:
        >>> from danlu.config import CalibrationConfig
        >>> section = calibration_section(data, CalibrationConfig(temperature=True))  # doctest: +SKIP
        >>> section.summary  # doctest: +SKIP
        'ECE 0.034 → 0.012, log-loss 0.110 → 0.095 with temperature scaling (T = 1.42)'
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
    raw = data.test_outputs * data.temperature  # (n, K) raw logits: undo the model's temperature
    choice = _choice(data, config)
    # fitting now decides the served temperature (1 when refused or not kept); otherwise the
    # model keeps the one it has (a registered version's never changes)
    served_t = choice.temperature if choice is not None and apply else data.temperature
    tests = {"uncalibrated": _measure(raw, y, 1.0, config.bins)}
    if choice is not None and choice.fitted is not None:
        tests["scaled"] = _measure(raw, y, choice.fitted, config.bins)
    tests["served"] = _measure(raw, y, served_t, config.bins)
    worse = [
        k
        for k in ("log_loss", "ece")
        if served_t != 1.0 and tests["served"][k] > tests["uncalibrated"][k]
    ]
    proba = _softmax(raw / served_t)  # (n, K) as served
    ci = bootstrap_ci(
        lambda p, t: expected_calibration_error(p, t, config.bins), proba, y, resamples=200, seed=0
    )
    section.data = {
        "temperature": served_t,
        "ece": tests["served"]["ece"],
        "ece_ci": [ci.low, ci.high],
        "log_loss": tests["served"]["log_loss"],
        "test": tests,
        "worse_after_scaling": worse,
        "temperature_fit": choice.to_dict() if choice is not None else None,
        "bins": reliability_bins(proba, y, config.bins),
        "bin_count": config.bins,
    }
    section.summary = _summary(tests, worse, choice)
    if choice is not None:
        section.notes.append(choice.reason)
        if not apply:
            section.notes.append(
                "This model's temperature is fixed (a registered version's predictions never "
                "change; a run keeps the calibration.json it has): the fit is reported, not applied."
            )
    if served_t != 1.0 and (choice is None or not apply):
        section.notes.append(f"The model's saved temperature T = {served_t:.3g} is served.")
    if worse:
        names = " and ".join(_LABEL[k] for k in worse)
        changes = "; ".join(
            f"{_LABEL[k]} {tests['uncalibrated'][k]:.4f} → {tests['served'][k]:.4f}" for k in worse
        )
        section.flags.append(
            f"Temperature scaling (T = {served_t:.3g}) made the test {names} worse ({changes}); "
            "the validation rows may not represent the test rows."
        )
    section.notes.append(
        f"Top-label ECE over {config.bins} equal-width confidence bins (Guo et al., 2017) and "
        "log-loss on the test rows; the ECE's interval is a 95% bootstrap over 200 resamples."
    )
    section.figures["Reliability diagram: accuracy per confidence bin"] = _figure(
        raw, y, config.bins, served_t, choice
    )
    return section


def _figure(
    raw: np.ndarray, y: np.ndarray, bins: int, served_t: float, choice: TemperatureChoice | None
) -> str:
    """The reliability diagram at T = 1, with the served (else the fitted) temperature's line."""
    fitted = choice.fitted if choice is not None else None
    scaled_t = served_t if served_t != 1.0 else fitted
    scaled_bins, label = None, ""
    if scaled_t is not None:
        scaled_bins = reliability_bins(_softmax(raw / scaled_t), y, bins)
        state = "served" if scaled_t == served_t else "not kept"
        if scaled_t != served_t and choice is not None and choice.kept:
            state = "not applied"
        label = f"temperature-scaled (T = {scaled_t:.2f}, {state})"
    proba = _softmax(raw)
    return _reliability_figure(
        reliability_bins(proba, y, bins), scaled_bins, proba.max(axis=1), bins, label
    )
