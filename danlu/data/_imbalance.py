"""Class imbalance: resample the *training* arrays, or hand class weights to the trainer.

``data.imbalance`` picks one strategy. The resampling methods (imbalanced-learn's samplers) run
on the encoded training arrays after the preprocessor is fitted, so validation and test rows are
never touched and no synthetic row leaks into evaluation. ``class_weight`` changes nothing here:
it travels on :class:`~danlu.data.PreparedData` and the trainer weights the loss with it.

``ratio`` is the wanted minority/majority ratio after resampling. imbalanced-learn takes a float
for two classes only, so it is turned into a ``{class: count}`` target for any number of classes:
over-sampling lifts every class to ``ratio × majority`` rows, under-sampling cuts every class to
``minority / ratio`` rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from danlu.config import ImbalanceConfig
from danlu.errors import DataError

__all__ = ["RESAMPLING_METHODS", "SMOTE_METHODS", "imbalance_class_weight", "resample_training"]

_KIND_WORDS = {"values": "numbers", "label_sets": "label sets (several labels per row)"}


def _not_classes(what: str, target_kind: str) -> DataError:
    """The error for an imbalance method on a target that is not one class per row."""
    holds = _KIND_WORDS.get(target_kind, f"a '{target_kind}' target")
    return DataError(
        f"{what} needs a single-label class target (one class per row), but this task's target "
        f"holds {holds}. Remove data.imbalance (the default is none)."
    )


#: Methods that synthesise rows by interpolating between neighbours of the same class.
SMOTE_METHODS = ("smote", "borderline_smote", "svm_smote", "adasyn", "smote_tomek", "smote_enn")
#: Methods that change the training rows (everything but none and class_weight).
RESAMPLING_METHODS = ("oversample", "undersample", *SMOTE_METHODS)


def _counts(y: np.ndarray, classes: Sequence[Any]) -> dict[str, int]:
    """Rows per class, keyed by the class label as a string (JSON-friendly)."""
    counts = np.bincount(y.astype(np.int64), minlength=len(classes))
    return {str(c): int(n) for c, n in zip(classes, counts, strict=True)}


def _strategy(method: str, ratio: float | None, present: dict[int, int]) -> str | dict[int, int]:
    """imbalanced-learn's ``sampling_strategy``: 'auto', or a per-class target row count."""
    if ratio is None:
        return "auto"
    if method == "undersample":
        cap = int(min(present.values()) / ratio)
        return {c: min(n, cap) for c, n in present.items()}
    floor = int(ratio * max(present.values()))
    return {c: max(n, floor) for c, n in present.items()}


def _check_neighbours(
    config: ImbalanceConfig,
    strategy: str | dict[int, int],
    present: dict[int, int],
    classes: Sequence[Any],
) -> None:
    """A SMOTE variant needs more than ``k_neighbors`` rows in every class it synthesises."""
    majority = max(present, key=lambda c: present[c])
    if isinstance(strategy, dict):
        grown = [c for c, target in strategy.items() if target > present[c]]
    else:
        grown = [c for c in present if c != majority]
    k = config.k_neighbors
    for c in sorted(grown, key=lambda c: present[c]):
        n = present[c]
        if n <= k:
            lower = (
                f"lower data.imbalance.k_neighbors to below {n} (e.g. {n - 1}), or "
                if n > 1
                else ""
            )
            raise DataError(
                f"data.imbalance method '{config.method}' interpolates between a row and its "
                f"k_neighbors={k} nearest rows of the same class, but class '{classes[c]}' has "
                f"only {n} training row(s). To fix it, {lower}use method: oversample (which "
                "copies rows), or add rows of that class."
            )


def _sampler(config: ImbalanceConfig, strategy: str | dict[int, int], seed: int) -> Any:
    """The imbalanced-learn sampler for ``config.method`` (imported here: it is slow to load)."""
    try:
        from imblearn import combine, over_sampling, under_sampling
    except ImportError:  # pragma: no cover - a core dependency
        raise DataError(
            "data.imbalance resampling needs the package 'imbalanced-learn', which is not "
            "installed. Install it with: pip install 'imbalanced-learn>=0.12'"
        ) from None
    k, method = config.k_neighbors, config.method
    if method == "oversample":
        return over_sampling.RandomOverSampler(sampling_strategy=strategy, random_state=seed)
    if method == "undersample":
        return under_sampling.RandomUnderSampler(sampling_strategy=strategy, random_state=seed)
    if method == "adasyn":
        return over_sampling.ADASYN(sampling_strategy=strategy, n_neighbors=k, random_state=seed)
    over = {"smote": "SMOTE", "borderline_smote": "BorderlineSMOTE", "svm_smote": "SVMSMOTE"}
    if method in over:
        cls = getattr(over_sampling, over[method])
        return cls(sampling_strategy=strategy, k_neighbors=k, random_state=seed)
    smote = over_sampling.SMOTE(sampling_strategy=strategy, k_neighbors=k, random_state=seed)
    combined = combine.SMOTETomek if method == "smote_tomek" else combine.SMOTEENN
    return combined(sampling_strategy=strategy, smote=smote, random_state=seed)


def resample_training(
    x: np.ndarray,
    y: np.ndarray,
    config: ImbalanceConfig,
    classes: Sequence[Any] | None,
    seed: int,
    *,
    target_kind: str = "classes",
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Resample the encoded training rows as ``config.method`` asks.

    ``none`` and ``class_weight`` return the arrays unchanged. Call it on the training split
    only: validation and test rows must keep their real distribution.

    Args:
        x: float32 training features, shape (n, d).
        y: int64 class indices into ``classes``, shape (n,).
        config: the recipe's ``data.imbalance`` block.
        classes: the class labels (``schema.classes``); None for a numeric target.
        seed: the resampling seed (``config.seed`` wins when it is set).
        target_kind: the target's kind; resampling needs ``classes`` (one class per row).

    Returns:
        The resampled ``(x, y)`` (float32, int64) and a report: method, seed, rows and class
        counts before and after.

    Raises:
        DataError: resampling asked for a target that is not one class per row (numbers, label
            sets); a SMOTE variant with a class of
            ``k_neighbors`` rows or fewer; imbalanced-learn rejects the data.

    Example:
        >>> import numpy as np
        >>> from danlu.config import ImbalanceConfig
        >>> x, y = np.arange(20, dtype=np.float32).reshape(10, 2), np.array([0] * 8 + [1] * 2)
        >>> _, y2, report = resample_training(x, y, ImbalanceConfig(method="oversample"), ["a", "b"], 0)
        >>> report["counts_after"]
        {'a': 8, 'b': 8}
    """
    method = config.method
    if classes is None:  # no classes: a numeric target, whatever the caller said
        target_kind = "values" if target_kind == "classes" else target_kind
    if method not in RESAMPLING_METHODS:
        counts = {"counts": _counts(y, classes)} if target_kind == "classes" and classes else {}
        return x, y, {"method": method, **counts}
    if classes is None or target_kind != "classes":
        raise _not_classes(
            f"data.imbalance method '{method}' resamples rows by class, which", target_kind
        )
    seed = config.seed if config.seed is not None else seed
    before = _counts(y, classes)
    present = {i: n for i, n in enumerate(before.values()) if n > 0}
    if len(present) < 2:
        raise DataError(
            f"data.imbalance method '{method}' needs at least two classes in the training rows; "
            f"found {len(present)}. Add rows of the other classes or remove data.imbalance."
        )
    strategy = _strategy(method, config.ratio, present)
    if method in SMOTE_METHODS:
        _check_neighbours(config, strategy, present, classes)
    sampler = _sampler(config, strategy, seed)
    try:
        x_out, y_out = sampler.fit_resample(x, y)
    except (ValueError, RuntimeError) as exc:
        raise DataError(
            f"data.imbalance method '{method}' failed on the training rows (class counts "
            f"{before}): {exc}. Try method: oversample, or a smaller data.imbalance.k_neighbors."
        ) from exc
    y_out = np.asarray(y_out, dtype=np.int64)
    report = {
        "method": method,
        "seed": seed,
        "ratio": config.ratio,
        "rows_before": len(y),
        "rows_after": len(y_out),
        "counts_before": before,
        "counts_after": _counts(y_out, classes),
    }
    if method in SMOTE_METHODS:
        report["k_neighbors"] = config.k_neighbors
    return np.asarray(x_out, dtype=np.float32), y_out, report


def imbalance_class_weight(
    config: ImbalanceConfig, classes: Sequence[Any] | None, *, target_kind: str = "classes"
) -> str | dict[str, float] | None:
    """The loss weights ``data.imbalance: class_weight`` asks for, checked against the classes.

    Returns None for every other method. The trainer reads the result from
    ``PreparedData.class_weight`` (``train.class_weight`` wins when both are set).

    Raises:
        DataError: class weights on a target that is not one class per row (numbers, label
            sets), or weights naming unknown classes.

    Example:
        >>> from danlu.config import ImbalanceConfig
        >>> imbalance_class_weight(ImbalanceConfig(method="class_weight"), ["a", "b"])
        'balanced'
    """
    if config.method != "class_weight":
        return None
    if classes is None or target_kind != "classes":
        kind = "values" if classes is None and target_kind == "classes" else target_kind
        raise _not_classes("data.imbalance: class_weight weights the loss per class, which", kind)
    if isinstance(config.weights, str):
        return config.weights
    labels = [str(c) for c in classes]
    unknown = sorted(set(config.weights) - set(labels))
    if unknown:
        raise DataError(
            f"data.imbalance.weights names class(es) {unknown} that are not in the data; the "
            f"classes are {labels}. Use those labels as keys, or weights: balanced."
        )
    return dict(config.weights)
