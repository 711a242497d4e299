"""Robustness: the headline metric under adversarial attack and random corruption of the inputs.

Attacks (FGSM, PGD) and Gaussian noise perturb only the continuous input columns: a one-hot
column moved by 0.05 is not a value the model can ever see, nor is a token id. Feature dropout
replaces whole raw features (all the one-hot columns of a categorical together) by their
training mean, the way a missing value would be imputed; text columns are left to their own
perturbations (typos, word dropout, casing: ``danlu.evaluate._text_robustness``), which change
the raw text and tokenize it again.

Every perturbation is in the units of the model's inputs after preprocessing, so with the default
standard scaling ε = 0.1 moves each feature by a tenth of its training standard deviation. The
inputs are not clipped to a data range afterwards: scaled features have none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from danlu.evaluate._context import EvalData, Section
from danlu.logging import get_logger

if TYPE_CHECKING:
    import numpy as np
    import torch

    from danlu.config import RobustnessConfig

__all__ = ["feature_dropout", "fgsm", "gaussian_noise", "pgd", "robustness_section"]

logger = get_logger(__name__)

LossFn = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]

#: Rows attacked at once: bounds the autograd graph's memory, whatever ``samples`` is.
_CHUNK = 512

_KIND_LABEL = {"fgsm": "FGSM", "pgd": "PGD", "noise": "noise", "dropout": "dropout"}


def _column_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``mask`` as a float (1, D) multiplier on ``x``'s device (all ones when None)."""
    import torch

    if mask is None:
        return torch.ones(1, x.shape[1], dtype=x.dtype, device=x.device)
    mask = torch.as_tensor(mask, device=x.device)
    if mask.shape != (x.shape[1],):
        raise ValueError(
            f"mask must be a boolean vector of the input width {x.shape[1]}; got shape "
            f"{tuple(mask.shape)}."
        )
    return mask.to(dtype=x.dtype).unsqueeze(0)  # (1, D)


def _input_gradient(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
) -> torch.Tensor:
    """d loss / d x only: ``autograd.grad`` leaves the parameters' ``.grad`` untouched."""
    import torch

    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        loss = loss_fn(model(x), y)
        (grad,) = torch.autograd.grad(loss, x)
    return grad  # (N, D)


def fgsm(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    epsilon: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al., 2015): one L∞ step of size ε up the loss.

    Args:
        model: the model; evaluated in eval mode (its mode is restored afterwards), its
            parameters and their gradients are left unchanged.
        x: inputs, (N, D) float.
        y: targets as ``loss_fn`` takes them.
        loss_fn: ``loss_fn(model(x), y)`` -> scalar loss to increase.
        epsilon: the step size, in input units (>= 0).
        mask: boolean (D,), the columns that may move (default: all).

    Returns:
        The adversarial inputs, detached, (N, D).

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 2)
        >>> x, y = torch.zeros(4, 2), torch.tensor([0, 1, 0, 1])
        >>> x_adv = fgsm(model, x, y, torch.nn.CrossEntropyLoss(), 0.1,
        ...              mask=torch.tensor([True, False]))
        >>> bool((x_adv[:, 0].abs() <= 0.1).all()), bool((x_adv[:, 1] == 0).all())
        (True, True)
    """
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0; got {epsilon}.")
    keep = _column_mask(x, mask)
    if epsilon == 0:
        return x.detach().clone()
    was_training = model.training
    model.eval()
    try:
        grad = _input_gradient(model, x, y, loss_fn)
    finally:
        model.train(was_training)
    return (x.detach() + epsilon * grad.sign() * keep).detach()


def pgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    epsilon: float,
    steps: int = 10,
    step_size: float | None = None,
    mask: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Projected gradient descent in the L∞ ball (Madry et al., 2018).

    Starts at a seeded uniform point of the ε-ball, takes ``steps`` signed-gradient steps up the
    loss and projects back onto the ball after each one. Only the ``mask`` columns move.

    Args:
        model: the model; evaluated in eval mode, parameters and gradients left unchanged.
        x: inputs, (N, D) float.
        y: targets as ``loss_fn`` takes them.
        loss_fn: ``loss_fn(model(x), y)`` -> scalar loss to increase.
        epsilon: radius of the L∞ ball, in input units (>= 0); 0 returns ``x``.
        steps: iterations (>= 1).
        step_size: size of each step; default 2.5·ε / steps (enough to cross the ball).
        mask: boolean (D,), the columns that may move (default: all).
        seed: seed of the random start.

    Returns:
        The adversarial inputs, detached, (N, D), with ``|x_adv - x| <= ε`` everywhere.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 2)
        >>> x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
        >>> x_adv = pgd(model, x, y, torch.nn.CrossEntropyLoss(), 0.2, steps=5)
        >>> bool(((x_adv - x).abs() <= 0.2 + 1e-6).all())
        True
    """
    import torch

    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0; got {epsilon}.")
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}.")
    keep = _column_mask(x, mask)
    x = x.detach()
    if epsilon == 0:
        return x.clone()
    alpha = 2.5 * epsilon / steps if step_size is None else step_size
    generator = torch.Generator().manual_seed(seed)
    start = torch.rand(x.shape, generator=generator, dtype=x.dtype)  # (N, D) in [0, 1)
    delta = (2 * start.to(x.device) - 1) * epsilon * keep
    was_training = model.training
    model.eval()
    try:
        for _ in range(steps):
            grad = _input_gradient(model, x + delta, y, loss_fn)
            delta = (delta + alpha * grad.sign() * keep).clamp(-epsilon, epsilon)
    finally:
        model.train(was_training)
    return (x + delta).detach()


def gaussian_noise(
    x: np.ndarray, sigma: float, mask: np.ndarray, generator: np.random.Generator
) -> np.ndarray:
    """``x`` plus N(0, σ²) noise on the ``mask`` columns (a new float32 array).

    Example:
        >>> import numpy as np
        >>> x = np.zeros((3, 2), dtype=np.float32)
        >>> noisy = gaussian_noise(x, 1.0, np.array([True, False]), np.random.default_rng(0))
        >>> bool((noisy[:, 0] != 0).all()), bool((noisy[:, 1] == 0).all())
        (True, True)
    """
    import numpy as np

    if sigma < 0:
        raise ValueError(f"sigma must be >= 0; got {sigma}.")
    out = np.array(x, dtype=np.float32, copy=True)
    columns = np.flatnonzero(mask)
    if sigma == 0 or len(columns) == 0:
        return out
    noise = generator.normal(0.0, sigma, size=(len(out), len(columns)))  # (N, K)
    out[:, columns] += noise.astype(np.float32)
    return out


def feature_dropout(
    x: np.ndarray,
    fraction: float,
    groups: Sequence[Sequence[int]],
    fill: np.ndarray,
    generator: np.random.Generator,
) -> np.ndarray:
    """Set a random ``fraction`` of each row's input groups to ``fill`` (a new float32 array).

    A group is the columns of one raw feature (the one-hot columns of a categorical), dropped
    together. Each row drops ``fraction · len(groups)`` groups, rounded up or down at random so
    that the expected count is exact (10% of 4 features drops one feature in 40% of the rows).

    Args:
        x: inputs, (N, D).
        fraction: share of the groups dropped per row, in [0, 1].
        groups: the column positions of each group.
        fill: (D,) the value a dropped column takes (its training mean).
        generator: the source of randomness.

    Example:
        >>> import numpy as np
        >>> x = np.ones((2, 3), dtype=np.float32)
        >>> feature_dropout(x, 1.0, [(0,), (1, 2)], np.zeros(3), np.random.default_rng(0))
        array([[0., 0., 0.],
               [0., 0., 0.]], dtype=float32)
    """
    import numpy as np

    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be between 0 and 1; got {fraction}.")
    out = np.array(x, dtype=np.float32, copy=True)
    n, g = len(out), len(groups)
    if fraction == 0 or n == 0 or g == 0:
        return out
    fill = np.asarray(fill, dtype=np.float32)
    rank = np.argsort(np.argsort(generator.random((n, g)), axis=1), axis=1)  # (N, G) permutation
    count = np.minimum(np.floor(fraction * g + generator.random(n)), g)  # (N,) stochastic round
    dropped = rank < count[:, None]  # (N, G)
    for j, columns in enumerate(groups):
        rows = np.flatnonzero(dropped[:, j])
        cols = np.asarray(columns, dtype=np.intp)
        out[np.ix_(rows, cols)] = fill[cols]
    return out


def _attacked(
    data: EvalData,
    x: np.ndarray,
    y: np.ndarray,
    attack: str,
    epsilon: float,
    mask: np.ndarray,
    config: RobustnessConfig,
) -> np.ndarray:
    """The rows ``x`` after ``attack`` at ``epsilon``, attacked ``_CHUNK`` rows at a time."""
    import numpy as np
    import torch

    loss = data.task.make_loss().to(data.device)
    temperature = data.temperature if data.task.calibrates else 1.0

    def loss_fn(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # attack the model as it predicts: calibrated logits when temperature-scaled
        return loss(outputs / temperature, target)

    target_dtype = getattr(torch, data.task.target_dtype)
    keep = torch.as_tensor(mask, device=data.device)
    parts = []
    for i, start in enumerate(range(0, len(x), _CHUNK)):
        xb = torch.as_tensor(x[start : start + _CHUNK], device=data.device)
        yb = torch.as_tensor(y[start : start + _CHUNK], dtype=target_dtype, device=data.device)
        if attack == "fgsm":
            adv = fgsm(data.model, xb, yb, loss_fn, epsilon, mask=keep)
        else:
            adv = pgd(
                data.model,
                xb,
                yb,
                loss_fn,
                epsilon,
                steps=config.pgd_steps,
                mask=keep,
                seed=config.seed + i,
            )
        parts.append(adv.cpu().numpy())
    return np.concatenate(parts).astype(np.float32, copy=False)


def _format_value(metric: str, value: float) -> str:
    if metric == "accuracy":
        return f"{100 * value:.1f}%"
    return f"{value:.3f}"


def _metric_label(metric: str) -> str:
    return {"r2": "R²", "accuracy": "accuracy"}.get(metric, metric)


def _summary(metric: str, clean: float, curves: dict[str, list[dict[str, float]]]) -> str | None:
    """E.g. ``accuracy at ε=0.05 FGSM: 61.2% (clean 95.1%)``: the middle level of one curve."""
    label = _metric_label(metric)
    for kind, symbol in (("fgsm", "ε"), ("pgd", "ε"), ("noise", "σ"), ("dropout", None)):
        points = curves.get(kind)
        if not points:
            continue
        point = points[len(points) // 2]
        value = _format_value(metric, point["value"])
        if symbol is None:
            where = f"with {100 * point['fraction']:g}% of features dropped"
        else:
            level = point["epsilon" if symbol == "ε" else "sigma"]
            where = f"at {symbol}={level:g} {_KIND_LABEL[kind]}"
        return f"{label} {where}: {value} (clean {_format_value(metric, clean)})"
    return None


def _figure(metric: str, clean: float, curves: dict[str, list[dict[str, float]]]) -> str:
    """The metric against the perturbation level, one line per kind, clean as a dashed line."""
    from danlu.evaluate._plots import figure, svg

    fig, ax = figure()
    level_key = {"fgsm": "epsilon", "pgd": "epsilon", "noise": "sigma", "dropout": "fraction"}
    names = {"fgsm": "FGSM (ε)", "pgd": "PGD (ε)", "noise": "Gaussian noise (σ)"}
    names["dropout"] = "feature dropout (fraction)"
    for kind, points in curves.items():
        ordered = sorted(points, key=lambda p: p[level_key[kind]])
        ax.plot(
            [p[level_key[kind]] for p in ordered],
            [p["value"] for p in ordered],
            marker="o",
            label=names[kind],
        )
    ax.axhline(clean, linestyle="--", color="grey", label="clean")
    ax.set_xlabel("perturbation: ε, σ (input units) or fraction of features")
    ax.set_ylabel(_metric_label(metric))
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return svg(fig)


def robustness_section(data: EvalData, config: RobustnessConfig) -> Section:
    """The headline metric under FGSM / PGD attacks, Gaussian noise and feature dropout.

    Uses at most ``config.samples`` test rows (a seeded sample). Attacks and noise move only the
    continuous (numeric) input columns; dropout replaces whole raw features by their training
    mean. A model whose inputs are all categorical skips attacks and noise with a note. With
    text columns, their raw texts are perturbed (typos, word dropout, casing at
    ``config.text`` rates) and tokenized again by ``data.preprocessor`` (``data["text"]``).

    Args:
        data: the model and its test split.
        config: the levels to measure (``fgsm``, ``pgd``, ``noise``, ``dropout``) and the sample.

    Returns:
        Section ``robustness``; ``data`` holds ``metric``, ``clean``, ``rows``,
        ``continuous_columns`` and ``curves`` (``{"fgsm": [{"epsilon": e, "value": v}, ...]}``,
        ``noise`` points have ``sigma``, ``dropout`` points ``fraction``), with text columns
        ``text`` (``rates``, ``curves``: ``{"typos": [{"rate": r, "value": v}, ...]}``, ``table``,
        ``drop`` at the largest rate), or ``skipped``.

    Example:
        >>> from danlu.config import RobustnessConfig
        >>> section = robustness_section(data, RobustnessConfig(fgsm=[0.01, 0.1]))  # doctest: +SKIP
        >>> section.data["curves"]["fgsm"][0]  # doctest: +SKIP
        {'epsilon': 0.01, 'value': 0.947}
    """
    section = Section(key="robustness", title="Robustness")
    total = len(data.x)
    if total == 0:
        return _skipped(section, "the evaluation split has no rows")
    rows, x, y = _sample_rows(data, config)
    metric = data.task.headline

    def score(inputs: np.ndarray) -> float:
        return float(data.task.metrics(data.outputs(inputs), y, data.schema)[metric])

    width = x.shape[1]
    continuous = _continuous_columns(data, width)
    k = int(continuous.sum())
    notes: list[str] = []
    if (config.fgsm or config.pgd or config.noise) and k == 0:
        notes.append(
            "Attacks and Gaussian noise were skipped: the model has no continuous input column "
            "(every feature is text, categorical or boolean, and a token id or one-hot column "
            "moved by ε is not a value the model can meet)."
        )
    tabular = [g.columns for g in data.groups if g.kind != "text"]
    if not data.text_columns and not config.dropout and k == 0:
        reason = "no continuous input column to attack or add noise to, and no dropout asked"
        return _skipped(section, reason, notes)

    clean = score(x)
    curves = _perturbation_curves(data, x, y, continuous, config, score) if k > 0 else {}
    if config.dropout and tabular:
        curves["dropout"] = _dropout_curve(data, x, tabular, config, score, notes)
    text = _text_curves(data, rows, clean, score, config, notes)

    label = _metric_label(metric)
    notes.insert(
        0,
        f"{label[0].upper()}{label[1:]} on {len(x)} test rows"
        + (f" (a seeded sample of {total})" if len(x) < total else "")
        + ". ε and σ are in the model's input units after preprocessing: standard deviations of "
        "each feature under the default standard scaling; inputs are not clipped afterwards.",
    )
    notes.extend(_method_notes(config, curves, k, width, bool(data.text_columns)))
    if (config.fgsm or config.pgd) and not getattr(data.model, "differentiable", True):
        notes.append(
            "FGSM and PGD were skipped: they follow the loss's input gradient, and a tree "
            "ensemble's output is piecewise constant (its gradient is zero almost everywhere), "
            "so a gradient attack would report robustness it did not test. Noise and dropout "
            "still measure it."
        )
    section.data = {
        "metric": metric,
        "clean": clean,
        "rows": len(x),
        "continuous_columns": k,
        "curves": curves,
    }
    section.notes = notes
    summaries = [_summary(metric, clean, curves)]
    if text is not None:
        from danlu.evaluate._text_robustness import text_figure

        section.data["text"] = text
        summaries.insert(0, _text_summary(metric, clean, text))
        caption = f"{label[0].upper()}{label[1:]} with the test texts perturbed"
        section.figures[caption] = text_figure(label, clean, text["curves"])
    section.summary = "; ".join(s for s in summaries if s) or None
    if curves:
        caption = f"{label[0].upper()}{label[1:]} under attack and corruption"
        section.figures[caption] = _figure(metric, clean, curves)
    logger.debug("robustness: %s", section.summary)
    return section


def _skipped(section: Section, reason: str, notes: Sequence[str] = ()) -> Section:
    """``section`` saying robustness was not measured, and why."""
    section.data = {"skipped": reason}
    section.notes.extend(notes or [f"Robustness was not measured: {reason}."])
    return section


def _sample_rows(
    data: EvalData, config: RobustnessConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At most ``config.samples`` test rows (a seeded sample, in their original order): their
    positions, inputs and targets."""
    import numpy as np

    total = len(data.x)
    if total > config.samples:
        rows = np.sort(np.random.default_rng(config.seed).choice(total, config.samples, False))
    else:
        rows = np.arange(total)
    x, y = np.asarray(data.x[rows], dtype=np.float32), np.asarray(data.y[rows])  # (n, D), (n,)
    return rows, x, y


def _text_curves(
    data: EvalData,
    rows: np.ndarray,
    clean: float,
    score: Callable[[np.ndarray], float],
    config: RobustnessConfig,
    notes: list[str],
) -> dict[str, Any] | None:
    """The metric with the sampled rows' raw texts perturbed (None without text columns, or,
    with a note, without the preprocessing to tokenize them again)."""
    from danlu.evaluate._text_robustness import text_robustness

    if not data.text_columns or not config.text:
        return None
    if data.preprocessor is None:
        notes.append(
            "Text perturbations were skipped: the model's fitted preprocessing (its tokenizer) "
            "is not at hand to tokenize the perturbed texts."
        )
        return None
    rates = (0.0, *sorted(set(config.text) - {0.0}))
    text = text_robustness(data, rows, score, config.seed, rates)
    top = text["rates"][-1]
    text["drop"] = {
        kind: clean - points[-1]["value"] for kind, points in text["curves"].items()
    }  # at the largest rate
    names = {"typos": "character typos", "word_dropout": "word dropout", "casing": "casing"}
    label = _metric_label(data.task.headline)
    notes.append(
        f"Text ({', '.join(data.text_columns)}): each word perturbed with probability "
        f"{', '.join(f'{r:g}' for r in text['rates'])} (seeded) — a character typo (swap, drop, "
        "insert or replace one), the word dropped, or its case set to upper, lower or title — "
        "and the text tokenized again by the model's own tokenizer; the other columns stay."
    )
    notes.append(
        f"At {100 * top:g}% of words perturbed, {label} "
        + ", ".join(
            (
                f"{'falls' if d > 0 else 'rises'} by {_format_delta(data.task.headline, abs(d))}"
                if d
                else "is unchanged"
            )
            + f" with {names[kind]}"
            for kind, d in text["drop"].items()
        )
        + f" (clean {_format_value(data.task.headline, clean)})."
    )
    return text


def _format_delta(metric: str, value: float) -> str:
    return f"{100 * value:.1f} points" if metric == "accuracy" else f"{value:.3f}"


def _text_summary(metric: str, clean: float, text: dict[str, Any]) -> str:
    """E.g. ``accuracy with 30% of words perturbed: typos 71.0%, ... (clean 95.1%)``."""
    top = text["rates"][-1]
    names = {"typos": "typos", "word_dropout": "word dropout", "casing": "casing"}
    values = ", ".join(
        f"{names[kind]} {_format_value(metric, points[-1]['value'])}"
        for kind, points in text["curves"].items()
    )
    return (
        f"{_metric_label(metric)} with {100 * top:g}% of words perturbed: {values} "
        f"(clean {_format_value(metric, clean)})"
    )


def _continuous_columns(data: EvalData, width: int) -> np.ndarray:
    """(D,) boolean: the input columns of continuous features, the ones attacks may move."""
    import numpy as np

    continuous = np.zeros(width, dtype=bool)
    for group in data.groups:
        if group.continuous:
            continuous[list(group.columns)] = True
    return continuous


def _perturbation_curves(
    data: EvalData,
    x: np.ndarray,
    y: np.ndarray,
    continuous: np.ndarray,
    config: RobustnessConfig,
    score: Callable[[np.ndarray], float],
) -> dict[str, list[dict[str, float]]]:
    """The metric under FGSM and PGD at each ε and under Gaussian noise at each σ."""
    import numpy as np

    curves: dict[str, list[dict[str, float]]] = {}
    for attack in ("fgsm", "pgd"):
        levels: list[float] = getattr(config, attack)
        if levels and getattr(data.model, "differentiable", True):
            curves[attack] = [
                {"epsilon": e, "value": score(_attacked(data, x, y, attack, e, continuous, config))}
                for e in levels
            ]
    if config.noise:
        # the same seed at every σ: common random numbers make the curve smooth in σ
        curves["noise"] = [
            {
                "sigma": s,
                "value": score(
                    gaussian_noise(x, s, continuous, np.random.default_rng(config.seed))
                ),
            }
            for s in config.noise
        ]
    return curves


def _dropout_curve(
    data: EvalData,
    x: np.ndarray,
    groups: Sequence[Sequence[int]],
    config: RobustnessConfig,
    score: Callable[[np.ndarray], float],
    notes: list[str],
) -> list[dict[str, float]]:
    """The metric with each fraction of the raw features ``groups`` (their column positions)
    set to their training mean.

    Without training rows the dropped features are set to 0, and a note in ``notes`` says so.
    """
    import numpy as np

    if len(data.x_train):
        fill = np.asarray(data.x_train, dtype=np.float64).mean(axis=0).astype(np.float32)
    else:
        fill = np.zeros(x.shape[1], dtype=np.float32)
        notes.append("No training rows: dropped features were set to 0 instead of their mean.")
    return [
        {
            "fraction": f,
            "value": score(feature_dropout(x, f, groups, fill, np.random.default_rng(config.seed))),
        }
        for f in config.dropout
    ]


def _method_notes(
    config: RobustnessConfig,
    curves: dict[str, list[dict[str, float]]],
    k: int,
    width: int,
    text: bool = False,
) -> list[str]:
    """What moved, and how each measured perturbation works."""
    notes = []
    if k > 0 and (config.fgsm or config.pgd or config.noise):
        if k == width:
            notes.append(f"Attacks and noise move all {width} input columns.")
        else:
            kept = "categorical and boolean (one-hot) columns" + (
                ", and token ids," if text else ""
            )
            notes.append(
                f"Attacks and noise move the {k} continuous of the {width} input columns; "
                f"{kept} stay as they are."
            )
    if text and config.dropout and "dropout" not in curves:
        notes.append(
            "Feature dropout was skipped: every input is text, which the text perturbations "
            "below measure."
        )
    if "pgd" in curves:
        notes.append(
            f"PGD: L∞, {config.pgd_steps} steps of 2.5·ε/{config.pgd_steps} from a random start "
            "in the ε-ball (Madry et al., 2018); FGSM: one step of ε (Goodfellow et al., 2015)."
        )
    if "dropout" in curves:
        notes.append(
            "Dropout sets a random fraction of each row's raw features (all one-hot columns of a "
            "categorical together) to their training mean"
            + (" (text columns aside)." if text else ".")
        )
    return notes
