"""Membership inference: can an attacker who sees the model's outputs tell its training rows
("members") from rows it never saw ("non-members")? A model that can be told apart leaks who is
in its training data — the question a team shipping a model trained on customer rows must answer.

Two black-box attacks, neither of which trains a shadow model:

- **Loss threshold** (Yeom et al., 2018): a row is called a member when the model's loss on it
  is low; the score is ``-loss``. Its AUC is the chance that a random member has a lower loss
  than a random non-member — a direct measure of how much the model over-fits.
- **Difficulty-calibrated loss** (Watson et al., 2022; the offline, one-reference case of
  Carlini et al.'s LiRA, 2022): a row's loss is compared with the loss a *reference model that
  never saw the row* gives it. An easy row has a low loss under any model; a row the model fits
  far better than a model without it would is the tell-tale of memorisation. Both losses are
  compared on LiRA's logit scale, ``score = φ(loss) - φ(loss_ref)`` with
  ``φ = log(p / (1 - p))`` of the likelihood ``p = exp(-loss)`` of the true target
  (``-log(squared error)`` for regression): it spreads out the tiny losses of confident rows,
  where a plain difference of losses only adds the reference's noise. The reference is the
  task's linear baseline (logistic / linear regression) fitted on held-out rows only, two-fold
  cross-fitted so that no non-member is scored by a reference that saw it. It costs two linear
  fits instead of a second training of the recipe (a same-recipe reference is stronger but
  would double the cost of every report).

Members are the distinct training rows; non-members are the validation and test rows (none of
them was trained on). The two sides are subsampled to equal counts (at most ``samples`` each), so
an AUC of 0.5 is chance. Results are the attack AUC and the true-positive rate at a 1% (and,
with at least 1,000 non-members, 0.1%) false-positive rate, with percentile bootstrap intervals
over the audited rows; the model is flagged when an attack's AUC is above ``threshold`` with
confidence (the interval's lower bound).

Only the training rows cost anything new: one forward pass, in batches and without gradients,
over at most ``samples`` of them; the test rows' outputs are the report's own.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from danlu.evaluate._bootstrap import bootstrap_ci
from danlu.evaluate._context import EvalData, Section
from danlu.logging import get_logger

if TYPE_CHECKING:
    import numpy as np

    from danlu.config import MembershipConfig
    from danlu.tasks import Task

__all__ = ["attack_auc", "logit_scale", "membership_section", "row_losses", "tpr_at_fpr"]

log = get_logger(__name__)

#: fewest rows per side worth attacking (fewer: the interval would span everything)
MIN_ROWS = 20
#: the false-positive rates the TPR is read at, and the non-members each needs to mean anything
_FPRS = ((0.01, "tpr_at_1pct_fpr", 100), (0.001, "tpr_at_01pct_fpr", 1000))
_ATTACKS = {
    "loss_threshold": "loss threshold",
    "calibrated": "difficulty-calibrated loss",
}
_LOSSES = {
    "classes": "cross-entropy of the true class",
    "values": "squared error (standardized target)",
    "label_sets": "binary cross-entropy summed over the labels",
}


def row_losses(task: Task, outputs: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """The task's loss on each row, (n,) float64; None for a kind of target without one here.

    Classification: cross-entropy of the true class; regression: squared error in standardized
    units (mean over outputs); multi-label: binary cross-entropy summed over labels.

    Example:
        >>> import numpy as np
        >>> from danlu.tasks import get_task
        >>> z = np.array([[2.0, 0.0], [0.0, 2.0]])
        >>> row_losses(get_task("classification"), z, np.array([0, 0])).round(3)
        array([0.127, 2.127])
    """
    import numpy as np

    z = np.asarray(outputs, dtype=np.float64)
    own = getattr(task, "row_losses", None)  # a task whose outputs are its loss (anomaly scores)
    if callable(own):
        losses: np.ndarray = own(z, y)
        return losses
    kind = task.target_kind
    if kind == "classes":  # (n, K) logits, y (n,) class indices
        rows = np.arange(len(z))
        d = z - z[rows, np.asarray(y, dtype=np.int64)][:, None]  # (n, K) margins to the truth
        d[rows, np.asarray(y, dtype=np.int64)] = -np.inf
        top = np.maximum(d.max(axis=1), 0.0)  # (n,) shift that keeps exp() finite
        # log(1 + sum_j exp(d_j)) through log1p: a confident row's 1e-20 loss stays 1e-20, not 0
        rest = np.exp(d - top[:, None]).sum(axis=1)
        return np.where(top > 0, top + np.log(np.exp(-top) + rest), np.log1p(np.exp(d).sum(axis=1)))
    if kind == "values":  # (n, 1) standardized values, y (n,)
        target = np.asarray(y, dtype=np.float64).reshape(len(z), -1)
        return ((z - target) ** 2).mean(axis=1)
    if kind == "label_sets":  # (n, L) logits, y (n, L) in {0, 1}
        t = np.asarray(y, dtype=np.float64)
        bce = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))  # stable BCE with logits
        return bce.sum(axis=1)
    return None


def logit_scale(task: Task, losses: np.ndarray) -> np.ndarray:
    """LiRA's φ of per-row losses: ``log(p / (1 - p))`` with ``p = exp(-loss)`` for likelihood
    losses (classification, multi-label), ``-log(loss)`` for a squared error. Larger: fitted
    better; a loss of 0 maps to a large finite number.

    Example:
        >>> import numpy as np
        >>> from danlu.tasks import get_task
        >>> logit_scale(get_task("classification"), np.array([np.log(2.0), np.log(10.0)])).round(3)
        array([-0.   , -2.197])
    """
    import numpy as np

    tiny = np.maximum(np.asarray(losses, dtype=np.float64), 1e-300)  # (n,), log(0) stays finite
    if task.target_kind == "values":
        return -np.log(tiny)
    return -np.log(np.expm1(tiny))  # log(p / (1 - p)) with p = exp(-loss), stable for tiny loss


def attack_auc(members: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC of ``scores`` (larger: more likely a member) for the 0/1 ``members`` labels:
    the Mann-Whitney statistic, ties counting a half. Raises ValueError with one side empty.

    Example:
        >>> import numpy as np
        >>> attack_auc(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.5, 0.1]))
        0.75
    """
    import numpy as np

    positive = members.astype(bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("the AUC needs members and non-members")
    # average ranks (1-based), ties sharing their mean rank: cheaper than scipy's rankdata,
    # which matters inside a 1,000-resample bootstrap
    order = np.argsort(scores, kind="stable")
    ordered = scores[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # (G,) first of each tie
    counts = np.diff(np.r_[starts, len(ordered)])  # (G,) size of each tie
    ranks = np.repeat(starts + (counts + 1) / 2.0, counts)  # (n,) rank of each sorted score
    rank_sum = float(ranks[positive[order]].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def tpr_at_fpr(members: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """The highest share of members an attacker finds while wrongly accusing at most ``fpr``
    of the non-members (⌊fpr · non-members⌋ of them): the threshold sits just above the
    non-member score ranked that many places from the top.

    Example:
        >>> import numpy as np
        >>> m = np.array([1, 1, 1, 0, 0, 0, 0])
        >>> tpr_at_fpr(m, np.array([9.0, 8.0, 1.0, 7.0, 2.0, 1.0, 0.0]), 0.25)
        0.6666666666666666
    """
    import numpy as np

    positive = members.astype(bool)
    member_scores, others = scores[positive], np.sort(scores[~positive])[::-1]
    if len(member_scores) == 0 or len(others) == 0:
        raise ValueError("the TPR needs members and non-members")
    allowed = int(np.floor(fpr * len(others) + 1e-9))  # false positives tolerated
    if allowed >= len(others):
        return 1.0
    return float((member_scores > others[allowed]).mean())


def _distinct(x: np.ndarray) -> np.ndarray:
    """Positions of the first occurrence of each distinct row (oversampling repeats rows)."""
    import numpy as np

    _, first = np.unique(x, axis=0, return_index=True)
    return np.sort(first)


def _reference_losses(
    data: EvalData,
    x_held: np.ndarray,
    y_held: np.ndarray,
    fold: np.ndarray,
    x_scored: np.ndarray,
    y_scored: np.ndarray,
    scored_fold: np.ndarray,
    seed: int,
    cap: int,
) -> tuple[np.ndarray, str]:
    """Each scored row's loss under a reference fitted on the held-out fold it is *not* in:
    the task's first non-dummy baseline (its dummy when nothing tabular is left to fit on, or a
    fold holds one class only). Returns the losses and the reference's name."""
    import numpy as np
    from sklearn.dummy import DummyClassifier, DummyRegressor

    task, schema = data.task, data.schema
    columns = list(schema.tabular_positions()) if data.text_columns else None
    baselines = task.baselines(seed)
    dummy_name = next(
        n for n, e in baselines.items() if isinstance(e, DummyClassifier | DummyRegressor)
    )
    fitted = next(
        (n for n, e in baselines.items() if not isinstance(e, DummyClassifier | DummyRegressor)),
        None,
    )
    if columns is not None and not columns:
        fitted = None  # text only: token ids are no feature a linear model can use
    rng = np.random.default_rng(seed)
    losses = np.zeros(len(x_scored))
    names = set()
    for side in (0, 1):
        train = np.flatnonzero(fold != side)  # fit on the other fold
        if len(train) > cap:
            train = rng.choice(train, cap, replace=False)
        target = task.baseline_target(y_held[train])
        name = fitted
        if name is not None and task.target_kind != "values":
            labels = np.asarray(target)
            if len(np.unique(labels.reshape(len(labels), -1), axis=0)) < 2:
                name = None  # one class only: nothing to discriminate
        name = name or dummy_name
        estimator = task.baselines(seed)[name]
        x_fit, x_use = x_held[train], x_scored[scored_fold == side]
        if columns is not None and name != dummy_name:
            x_fit, x_use = x_fit[:, columns], x_use[:, columns]
        with warnings.catch_warnings():  # a linear fit that stops at max_iter still informs
            warnings.simplefilter("ignore")
            estimator.fit(x_fit, target)
            outputs = task.baseline_outputs(estimator, x_use, schema)
        scored = row_losses(task, outputs, y_scored[scored_fold == side])
        assert scored is not None  # row_losses of this kind of task was computed above
        losses[scored_fold == side] = scored
        names.add(name)
    return losses, " / ".join(sorted(names))


def _interval(
    metric: Any,
    labels: np.ndarray,
    scores: np.ndarray,
    resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, float]:
    value = float(metric(labels, scores))
    if resamples < 10:
        return {"value": value}
    try:
        ci = bootstrap_ci(
            metric, labels, scores, resamples=resamples, confidence=confidence, seed=seed
        )
    except ValueError:  # too few rows of one side in most resamples
        return {"value": value}
    return {"value": value, "low": ci.low, "high": ci.high, "confidence": confidence}


def _roc_figure(labels: np.ndarray, scores: dict[str, np.ndarray]) -> str:
    """Both attacks' ROC curves on log-log axes (the low false-positive end is what matters)."""
    import numpy as np
    from matplotlib.ticker import FixedLocator, NullLocator

    from danlu.evaluate._plots import figure, svg

    fig, ax = figure(4.6, 3.6)
    n_neg, n_pos = int((labels == 0).sum()), int((labels == 1).sum())
    floor = 1.0 / max(n_neg, n_pos)
    for key, score in scores.items():
        order = np.argsort(-score, kind="stable")
        ordered, hits = score[order], labels[order]
        # one point per distinct threshold: tied scores (losses of exactly 0) move together
        ends = np.r_[np.flatnonzero(ordered[1:] != ordered[:-1]), len(ordered) - 1]
        tpr = np.r_[0.0, np.cumsum(hits)[ends] / n_pos]
        fpr = np.r_[0.0, np.cumsum(1 - hits)[ends] / n_neg]
        ax.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), label=_ATTACKS[key])
    ax.plot([floor, 1], [floor, 1], ":", color="grey", label="chance")
    ax.set(xscale="log", yscale="log", xlabel="false-positive rate", ylabel="true-positive rate")
    ticks = [t for t in (1e-3, 1e-2, 1e-1, 1.0) if t >= floor / 2]
    for axis in (ax.xaxis, ax.yaxis):  # fixed ticks: log locators cost more than the curves
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_minor_locator(NullLocator())
    ax.set_title("Membership-inference ROC", fontsize=10)
    ax.legend(fontsize=8)
    return svg(fig)


def _skip(section: Section, reason: str) -> Section:
    section.data["skipped"] = reason
    section.notes.append(f"Membership inference skipped: {reason}.")
    return section


def _sample(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    import numpy as np

    return np.sort(rng.choice(n, size, replace=False)) if size < n else np.arange(n)


def membership_section(
    data: EvalData,
    config: MembershipConfig,
    resamples: int = 1000,
    confidence: float = 0.95,
) -> Section:
    """The membership-inference audit of ``data.model``: its training rows against its
    held-out (validation and test) rows, by a loss-threshold and a calibrated attack.

    Args:
        data: the model and its splits; ``x_train`` are the members. The evaluation rows count
            as non-members only when ``data.held_out`` (not for a file passed with ``--data``,
            which may hold training rows).
        config: the ``evaluate.membership`` block (threshold, samples, seed).
        resamples: bootstrap resamples behind each interval (fewer than 10: none).
        confidence: the intervals' coverage.

    Example:
        >>> # membership_section(EvalData.from_prepared(model, task, prepared),
        >>> #                    MembershipConfig()).data["loss_threshold"]["auc"]
    """
    import numpy as np

    section = Section("membership", "Membership inference")
    task = data.task
    if task.target_kind not in _LOSSES:
        return _skip(section, f"the {task.name} task has no per-row loss here")
    held = [(data.x_val, data.y_val)] + ([(data.x, data.y)] if data.held_out else [])
    held = [(x, y) for x, y in held if len(y)]
    x_held = np.concatenate([x for x, _ in held]) if held else data.x_val
    y_held = np.concatenate([y for _, y in held]) if held else data.y_val
    source = "validation and test rows" if data.held_out else "validation rows"
    if not data.held_out:
        section.notes.append(
            "The evaluation rows came from a file (--data) that may hold training rows: only "
            "the validation split counts as non-members."
        )
    distinct = _distinct(data.x_train) if len(data.x_train) else np.zeros(0, dtype=np.int64)
    if len(distinct) < MIN_ROWS or len(y_held) < MIN_ROWS:
        few = "training" if len(distinct) < MIN_ROWS else "held-out"
        return _skip(section, f"fewer than {MIN_ROWS} {few} rows")

    rng = np.random.default_rng(config.seed)
    n = min(len(distinct), len(y_held), config.samples)  # rows per side
    members = distinct[_sample(len(distinct), n, rng)]
    others = _sample(len(y_held), n, rng)

    # outputs: the non-members' from the report's test outputs where it has them
    n_val = len(data.y_val)
    member_out = data.outputs(data.x_train[members])  # (n, K), no grad, in batches
    held_out = np.zeros((len(others), member_out.shape[1]), dtype=np.float32)
    from_val = others < n_val
    if from_val.any():
        held_out[from_val] = data.outputs(data.x_val[others[from_val]])
    if (~from_val).any():
        held_out[~from_val] = data.test_outputs[others[~from_val] - n_val]
    member_loss = row_losses(task, member_out, data.y_train[members])
    other_loss = row_losses(task, held_out, y_held[others])
    assert member_loss is not None and other_loss is not None  # target kind checked above

    labels = np.concatenate([np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64)])
    loss = np.concatenate([member_loss, other_loss])
    scores = {"loss_threshold": -loss}

    # reference losses: two folds of the held-out pool; each scored row meets the reference
    # fitted on the fold it is not in (members: a random fold)
    fold = rng.permutation(len(y_held)) % 2
    scored_fold = np.concatenate([rng.integers(0, 2, n), fold[others]])
    x_scored = np.concatenate([data.x_train[members], x_held[others]])
    y_scored = np.concatenate([data.y_train[members], y_held[others]])
    reference_name = None
    try:
        reference, reference_name = _reference_losses(
            data, x_held, y_held, fold, x_scored, y_scored, scored_fold, config.seed, 4 * n
        )
        scores["calibrated"] = logit_scale(task, loss) - logit_scale(task, reference)
    except ValueError as exc:  # a reference that cannot be fitted on these rows
        log.warning("The calibrated membership attack was skipped: %s", exc)
        section.notes.append(
            f"The calibrated attack was skipped: the reference fit failed ({exc})."
        )

    result: dict[str, Any] = {
        "members": n,
        "non_members": n,
        "member_pool": int(len(distinct)),
        "non_member_pool": int(len(y_held)),
        "non_member_source": source,
        "loss": _LOSSES[task.target_kind],
        "mean_loss": {
            "members": float(member_loss.mean()),
            "non_members": float(other_loss.mean()),
        },
        "threshold": config.threshold,
    }
    flagged = []
    for key, score in scores.items():
        attack: dict[str, Any] = {
            "auc": _interval(attack_auc, labels, score, resamples, confidence, config.seed)
        }
        for rate, name, needed in _FPRS:
            if rate == 0.01 or n >= needed:

                def metric(m: np.ndarray, s: np.ndarray, rate: float = rate) -> float:
                    return tpr_at_fpr(m, s, rate)

                attack[name] = _interval(metric, labels, score, resamples, confidence, config.seed)
        result[key] = attack
        auc = attack["auc"]
        if auc.get("low", auc["value"]) > config.threshold:
            flagged.append((key, auc))
    if reference_name is not None:
        result["reference"] = reference_name
    section.data = result

    auc = result["loss_threshold"]["auc"]
    shown = f"{auc['value']:.2f}" + (
        f" [{auc['low']:.2f}, {auc['high']:.2f}]" if "low" in auc else ""
    )
    strongest = max(scores, key=lambda k: result[k]["auc"]["value"])
    best = result[strongest]["auc"]["value"]
    section.summary = f"membership-inference attack AUC {shown}" + (
        f" (calibrated {result['calibrated']['auc']['value']:.2f})"
        if "calibrated" in result
        else ""
    )
    for key, interval in flagged:
        bound = f"lower bound {interval['low']:.3f}" if "low" in interval else "no interval"
        section.flags.append(
            f"the {_ATTACKS[key]} attack tells training rows from held-out rows: AUC "
            f"{interval['value']:.3f} ({bound}) is above evaluate.membership.threshold "
            f"{config.threshold}. The model leaks who is in its training data: train with "
            "differential privacy (train.privacy), more regularisation (weight decay, dropout, "
            "early stopping) or on more rows."
        )
    section.figures["ROC of the membership-inference attacks (log-log)"] = _roc_figure(
        labels, scores
    )
    rate_note = (
        "TPR at 0.1% FPR is reported from 1,000 non-members on."
        if n < 1000
        else "TPR at 0.1% FPR tolerates ⌊0.001 · non-members⌋ false positives."
    )
    section.notes.extend(
        [
            f"{n:,} members (distinct training rows) against {n:,} non-members ({source}), "
            f"a seeded sample of each (evaluate.membership.samples = {config.samples}); 0.5 is "
            f"chance, the strongest attack here reaches {best:.3f}.",
            f"Loss threshold: score = -loss ({_LOSSES[task.target_kind]}). Calibrated: the "
            "model's fit of the row against a reference model's that never saw it, on LiRA's "
            "logit scale (φ(loss) - φ(reference loss)); the reference: "
            f"{reference_name or 'none'}, fitted on one half of the held-out rows, scoring the "
            "other half and the members.",
            "TPR at 1% FPR: the share of members found while wrongly accusing at most "
            f"⌊0.01 · {n}⌋ = {int(0.01 * n)} of the {n:,} non-members. " + rate_note,
            "The validation rows chose the best epoch (early stopping) but were never trained "
            "on. Synthetic training rows (SMOTE) count as members.",
        ]
    )
    return section
