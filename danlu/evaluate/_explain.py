"""Explanations: captum attributions, global feature importance and the k most / least confident
test rows, explained one by one.

Attributions are per model input column; one-hot columns are summed back into their raw feature
(:class:`~danlu.evaluate.InputGroup`) before anything is reported, so the report speaks of
``colour``, never of ``colour=red``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from danlu.errors import ConfigError, MissingExtraError
from danlu.evaluate._context import EvalData, InputGroup, Section
from danlu.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import numpy as np
    import torch

    from danlu.config import ExplainConfig

__all__ = ["attributions", "explain_section", "global_importance", "tree_shap"]

logger = get_logger(__name__)

_METHODS = ("integrated_gradients", "gradient_shap", "kernel_shap")
_KERNEL_SAMPLES = 200  # coalitions per row for kernel SHAP
_TREE_SAMPLES = 50  # rows kernel SHAP explains when it stands in for a gradient method (trees)
_GRADIENT_SHAP_SAMPLES = 16  # (baseline, α) draws per row for gradient SHAP
_BATCH_EVALS = 8192  # model rows per captum call (rows × steps), which bounds memory
_TOP_FEATURES_PER_ROW = 5
_SWARM_FEATURES = 12
_BAR_FEATURES = 15
_SALIENCY_ROWS = 3  # most and least confident rows shown as images
_CONTRIB_ARG = {"lightgbm": "pred_contrib", "xgboost": "pred_contribs"}  # for the note
_NO_NATIVE = (
    "scikit-learn's HistGradientBoosting has no safe (non-pickle) model format to run exact "
    "TreeSHAP on, so its trees are explained with kernel SHAP; model.library: lightgbm or "
    "xgboost get exact TreeSHAP."
)


def _captum() -> Any:
    try:
        import captum.attr
    except ImportError as error:  # pragma: no cover - captum is a core dependency
        raise MissingExtraError(
            "Explanations need the package 'captum', which is not installed. "
            "Install it with: pip install captum, or set evaluate.explain: false"
        ) from error
    return captum.attr


def _forward(data: EvalData) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's outputs as ``EvalData.outputs`` computes them (logits / temperature)."""
    scale = data.temperature if data.task.calibrates else 1.0
    model = data.model

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x) / scale  # (N, K) or (N, 1)

    return forward


def _mean_baseline(data: EvalData) -> np.ndarray:
    """The training mean of each input column, (1, D); zeros when there are no training rows."""
    import numpy as np

    width = data.x.shape[1]
    if len(data.x_train) == 0:
        return np.zeros((1, width), dtype=np.float32)
    return data.x_train.mean(axis=0, keepdims=True).astype(np.float32)


def _background(data: EvalData, config: ExplainConfig) -> np.ndarray:
    """``config.background`` seeded training rows, (B, D); the zero row without training rows."""
    import numpy as np

    if len(data.x_train) == 0:
        return np.zeros((1, data.x.shape[1]), dtype=np.float32)
    rng = np.random.default_rng(config.seed)
    count = min(config.background, len(data.x_train))
    rows = np.sort(rng.choice(len(data.x_train), count, replace=False))
    return np.asarray(data.x_train[rows], dtype=np.float32)


def _feature_mask(groups: list[InputGroup], width: int) -> np.ndarray:
    """(1, D) int64: the index of each input column's raw feature (one-hot columns share one)."""
    import numpy as np

    mask = np.arange(width, dtype=np.int64)
    for index, group in enumerate(groups):
        mask[list(group.columns)] = index
    return mask[None, :]


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's and numpy's global generators (captum draws from both: gradient SHAP's
    baselines and α with numpy, kernel SHAP's coalitions with torch), restoring them after."""
    import numpy as np
    import torch

    state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        np.random.set_state(state)


def _default_target(data: EvalData, x: np.ndarray) -> np.ndarray | None:
    """The output the task explains for each row (the predicted class for classification); None
    (the single output) when the task explains its only output."""
    if data.task.output_dim(data.schema) == 1:
        return None
    outputs = data.outputs(x)
    # outputs are already divided by the temperature (EvalData.outputs)
    return data.task.explain(outputs, _no_truth(outputs), data.schema).targets


def _no_truth(outputs: np.ndarray) -> np.ndarray:
    """Placeholder targets for :meth:`Task.explain` when only the explained outputs matter."""
    import numpy as np

    return np.zeros(len(outputs), dtype=np.int64)


def attributions(
    data: EvalData, x: np.ndarray, config: ExplainConfig, target: np.ndarray | None = None
) -> np.ndarray:
    """Per-input-column attributions of the model's output for prepared rows ``x``.

    ``integrated_gradients`` integrates from the training mean of each column (``config.steps``
    steps); ``gradient_shap`` samples baselines among ``config.background`` seeded training rows;
    ``kernel_shap`` needs no gradients: it perturbs raw features (one-hot columns together)
    towards the training mean and fits the Shapley kernel's linear model, one row at a time.
    Rows are processed in batches, so memory stays bounded; the sampling methods run under a
    forked torch generator seeded with ``config.seed``, so results are reproducible and the
    global random state is left as it was.

    Args:
        data: the model and its data (training rows give the baselines).
        x: prepared rows, (n, input_dim).
        config: the ``evaluate.explain`` block.
        target: the output explained per row, (n,); default the one the task picks (the
            predicted class). Ignored for a single-output model.

    Returns:
        float64 (n, input_dim) attributions, in the units of the model's output (logits /
        standardized target).

    Example:
        >>> from danlu.config import ExplainConfig
        >>> attr = attributions(data, data.x[:10], ExplainConfig())  # doctest: +SKIP
        >>> attr.shape == (10, data.x.shape[1])  # doctest: +SKIP
        True
    """
    import numpy as np
    import torch

    if config.method not in _METHODS:  # pragma: no cover - the config's Literal guards this
        raise ConfigError(
            f"evaluate.explain.method must be one of {', '.join(_METHODS)}. "
            f"Got '{config.method}' instead."
        )
    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        return np.zeros(x.shape, dtype=np.float64)
    targets: np.ndarray | None = None  # a single-output model: output 0
    if data.task.output_dim(data.schema) > 1:
        chosen = _default_target(data, x) if target is None else target
        targets = np.asarray(chosen, dtype=np.int64).reshape(-1)
        if len(targets) != len(x):
            raise ValueError(f"target has {len(targets)} entries for {len(x)} rows")
    attr = _captum()
    device = torch.device(data.device)
    data.model.eval()
    columns, forward, context = _explained_inputs(data, x, device)
    out = np.zeros(x.shape, dtype=np.float64)
    if len(columns) == 0:  # text only: its tokens are explained by the text section
        return out
    try:
        with _seeded(config.seed):
            out[:, columns] = _attribute(
                attr, data, x[:, columns], columns, context, config, targets, forward, device
            )
        return out
    except RuntimeError as error:
        if config.method == "kernel_shap" or "grad" not in str(error):
            raise
        raise ConfigError(
            f"evaluate.explain.method '{config.method}' needs the model's gradients, but its "
            f"outputs have none ({error}). Use evaluate.explain.method: kernel_shap, which only "
            "calls the model."
        ) from error


def _explained_inputs(
    data: EvalData, x: np.ndarray, device: torch.device
) -> tuple[np.ndarray, Callable[..., torch.Tensor], torch.Tensor | None]:
    """The input columns the feature attributions perturb, the forward over them, and what the
    forward also needs per row.

    A text model's token-id columns are not features (interpolating ids is meaningless, and
    the model takes no gradient through them): its tabular columns are explained with the
    pooled text vectors held fixed (:func:`~danlu.evaluate._explain_text.text_parts`, run once
    per row); its tokens are explained by :func:`~danlu.evaluate._explain_text.token_section`.
    """
    import numpy as np
    import torch

    from danlu.evaluate._explain_text import is_text_model, text_parts

    model: Any = data.model
    if not is_text_model(model):
        return np.arange(x.shape[1]), _forward(data), None
    columns = model.tabular.cpu().numpy()  # the order the head reads them in
    if len(columns) == 0:
        return columns, _forward(data), None
    scale = data.temperature if data.task.calibrates else 1.0
    with torch.no_grad():
        parts = torch.cat(
            [
                text_parts(model, torch.as_tensor(x[start : start + 64], device=device))
                for start in range(0, len(x), 64)
            ]
        )  # (n, H)

    def forward(tabular: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return model.head(torch.cat([pooled, tabular], 1)) / scale  # type: ignore[no-any-return]

    return columns, forward, parts


def _attribute(
    attr: Any,
    data: EvalData,
    x: np.ndarray,
    columns: np.ndarray,
    context: torch.Tensor | None,
    config: ExplainConfig,
    targets: np.ndarray | None,
    forward: Callable[..., torch.Tensor],
    device: torch.device,
) -> np.ndarray:
    """The batched captum calls of :func:`attributions` over the input ``columns`` (``x`` holds
    just those; ``context`` rows go to the forward as well), generators already seeded."""
    import numpy as np
    import torch

    def tensor(values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.float32, device=device)

    def target_of(start: int, stop: int) -> Any:
        return 0 if targets is None else torch.as_tensor(targets[start:stop], device=device)

    def extra(start: int, stop: int) -> Any:
        return None if context is None else (context[start:stop],)

    parts: list[np.ndarray] = []
    if config.method == "integrated_gradients":
        method = attr.IntegratedGradients(forward)
        baseline = tensor(_mean_baseline(data)[:, columns])  # (1, D), broadcast over the batch
        rows = max(1, _BATCH_EVALS // config.steps)
        with torch.enable_grad():
            for start in range(0, len(x), rows):
                batch = tensor(x[start : start + rows])  # (B, D)
                out = method.attribute(
                    batch,
                    baselines=baseline.expand_as(batch),
                    target=target_of(start, start + len(batch)),
                    additional_forward_args=extra(start, start + len(batch)),
                    n_steps=config.steps,
                )
                parts.append(out.detach().double().cpu().numpy())
    elif config.method == "gradient_shap":
        method = attr.GradientShap(forward)
        background = tensor(_background(data, config)[:, columns])  # (B, D)
        rows = max(1, _BATCH_EVALS // _GRADIENT_SHAP_SAMPLES)
        with torch.enable_grad():
            for start in range(0, len(x), rows):
                batch = tensor(x[start : start + rows])
                out = method.attribute(
                    batch,
                    baselines=background,
                    target=target_of(start, start + len(batch)),
                    additional_forward_args=extra(start, start + len(batch)),
                    n_samples=_GRADIENT_SHAP_SAMPLES,
                )
                parts.append(out.detach().double().cpu().numpy())
    else:
        method = attr.KernelShap(forward)
        baseline = tensor(_mean_baseline(data)[:, columns])
        full = _feature_mask(data.groups, data.x.shape[1])[0, columns]  # (D,)
        mask = np.unique(full, return_inverse=True)[1].reshape(1, -1)  # (1, D), from 0
        # One Shapley value per raw feature, shared evenly by its columns, so that summing
        # a feature's columns gives back its value (captum would copy it to every column).
        share = 1.0 / np.bincount(mask[0])[mask[0]]  # (D,)
        with torch.no_grad():
            for row in range(len(x)):
                if mask.max() == 0:  # one feature: its Shapley value is the whole change
                    one = tensor(x[row : row + 1])
                    args = (target_of(row, row + 1), extra(row, row + 1), share)
                    parts.append(_one_feature(forward, one, baseline, *args))
                    continue
                coefs = method.attribute(
                    tensor(x[row : row + 1]),  # (1, D)
                    baselines=baseline,
                    target=target_of(row, row + 1),
                    additional_forward_args=extra(row, row + 1),
                    feature_mask=torch.as_tensor(mask, device=device),
                    n_samples=_KERNEL_SAMPLES,
                    perturbations_per_eval=_KERNEL_SAMPLES,
                    return_input_shape=False,
                )  # (1, G)
                values = coefs.detach().double().cpu().numpy().reshape(-1)
                parts.append((values[mask[0]] * share)[None, :])
    return np.concatenate(parts)


def _one_feature(
    forward: Callable[..., torch.Tensor],
    row: torch.Tensor,
    baseline: torch.Tensor,
    target: Any,
    extra: Any,
    share: np.ndarray,
) -> np.ndarray:
    """Kernel SHAP's value for a model of one feature (captum's sampler needs two): the
    explained output at the row minus at the baseline, shared by the feature's columns."""
    args = extra or ()
    change = forward(row, *args) - forward(baseline, *args)  # (1, K)
    picked = change[0, target if isinstance(target, int) else int(target[0])]
    return (float(picked) * share)[None, :]


def tree_shap(
    data: EvalData, x: np.ndarray, target: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact TreeSHAP of a tree ensemble from its library's own model (``model.native_model``).

    Each row's attributions explain the output the report explains (the predicted class's
    logit; for a binary model, whose logits are ``[0, margin]``, the predicted class's log-odds:
    the margin, negated for the first class), in the model's output units (divided by the
    temperature like :meth:`EvalData.outputs`). Attributions plus the bias sum to that output.

    Returns:
        float64 attributions (n, input_dim) and bias (n,).

    Example:
        >>> # attr, bias = tree_shap(data, data.x[:100])
        >>> # np.allclose(attr.sum(axis=1) + bias, explained_output)
    """
    import numpy as np

    from danlu.models._gbdt import tree_contributions

    native = _native(data)
    if native is None:
        raise ValueError("the model has no stored native tree model to run TreeSHAP on")
    library, raw = native
    contrib = tree_contributions(library, raw, x)  # (n, P, D + 1)
    n = len(x)
    if contrib.shape[1] > 1:  # multiclass: one output per class
        chosen = _default_target(data, x) if target is None else target
        picked = contrib[np.arange(n), np.asarray(chosen, dtype=np.int64).reshape(-1)]
    else:
        picked = contrib[:, 0]
        if data.task.output_dim(data.schema) == 2:  # binary: log-odds of the predicted class
            chosen = _default_target(data, x) if target is None else target
            picked = picked * np.where(np.asarray(chosen).reshape(-1) == 0, -1.0, 1.0)[:, None]
    scale = data.temperature if data.task.calibrates else 1.0
    return picked[:, :-1] / scale, picked[:, -1] / scale


def _native(data: EvalData) -> tuple[str, bytes] | None:
    """The tree ensemble's library and its own stored model, or None (any other model)."""
    native = getattr(data.model, "native_model", None)
    return native if isinstance(native, tuple) else None


def _explained_outputs(data: EvalData, x: np.ndarray, target: np.ndarray | None) -> np.ndarray:
    """The output :func:`tree_shap` explains, from the torch model (n,)."""
    import numpy as np

    outputs = data.outputs(x).astype(np.float64)  # (n, K), already / temperature
    if outputs.shape[1] == 1:
        return outputs[:, 0]
    if target is None:
        target = _default_target(data, x)
    if outputs.shape[1] == 2:  # binary trees: logits [0, margin]
        margin = outputs[:, 1] - outputs[:, 0]
        return np.where(np.asarray(target) == 0, -margin, margin)
    return outputs[np.arange(len(x)), np.asarray(target, dtype=np.int64)]


def _grouped(attr: np.ndarray, groups: list[InputGroup]) -> np.ndarray:
    """(n, n_groups): each raw feature's attribution, its columns' attributions summed."""
    import numpy as np

    if not groups:
        return np.zeros((len(attr), 0))
    return np.stack([attr[:, list(g.columns)].sum(axis=1) for g in groups], axis=1)


def global_importance(attr: np.ndarray, groups: list[InputGroup]) -> dict[str, float]:
    """Each raw feature's mean over rows of ``|sum of its columns' attributions|``, descending.

    Example:
        >>> import numpy as np
        >>> from danlu.evaluate import InputGroup
        >>> groups = [InputGroup("x", "numeric", (0,)), InputGroup("c", "categorical", (1, 2))]
        >>> global_importance(np.array([[0.1, 1.0, -0.5], [-0.3, 0.2, 0.0]]), groups)
        {'c': 0.35, 'x': 0.2}
    """
    import numpy as np

    merged = np.abs(_grouped(np.asarray(attr, dtype=np.float64), groups))
    means = merged.mean(axis=0) if len(merged) else np.zeros(len(groups))
    scores = {g.name: round(float(v), 12) for g, v in zip(groups, means, strict=True)}
    return dict(sorted(scores.items(), key=lambda item: -item[1]))


def _short(value: Any) -> str:
    """A prediction or truth as a figure label: numbers to 3 significant digits."""
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "{" + ", ".join(map(str, value)) + "}"
    return str(value)


def _plain(value: Any) -> Any:
    """A JSON-able form of one raw value (numpy scalars unwrapped, NaN / NaT as None)."""
    import numpy as np
    import pandas as pd

    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (not isinstance(value, str) and bool(pd.isna(value))):
        return None
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _swarm_offsets(values: np.ndarray, width: float = 0.38, bins: int = 60) -> np.ndarray:
    """Vertical offsets that spread points with similar values apart (a beeswarm)."""
    import numpy as np

    offsets = np.zeros(len(values))
    if len(values) == 0:
        return offsets
    low, high = float(values.min()), float(values.max())
    span = high - low if high > low else 1.0
    index = np.floor((values - low) / span * (bins - 1)).astype(int)
    crowd = 1
    for b in np.unique(index):
        members = np.flatnonzero(index == b)
        ranks = np.arange(len(members))
        offsets[members] = ((ranks + 1) // 2) * np.where(ranks % 2 == 1, 1.0, -1.0)
        crowd = max(crowd, len(members))
    return offsets * min(0.06, width / max(1, crowd // 2))


def _colour_values(x: np.ndarray, group: InputGroup) -> np.ndarray:
    """A feature's value per row for the summary plot's colour, scaled to [0, 1].

    Numeric: its (preprocessed) column, clipped to the 5th-95th percentiles as SHAP does;
    one-hot: the index of the active category over the number of categories.
    """
    import numpy as np

    if len(group.columns) == 1:
        values = x[:, group.columns[0]].astype(np.float64)
        low, high = np.nanpercentile(values, [5, 95]) if len(values) else (0.0, 0.0)
        if high <= low:
            low, high = float(np.nanmin(values)), float(np.nanmax(values))
        if high <= low:
            return np.full(len(values), 0.5)
        return np.clip((values - low) / (high - low), 0.0, 1.0)
    block = x[:, list(group.columns)]
    return block.argmax(axis=1) / max(1, len(group.columns) - 1)


def _summary_plot(
    grouped: np.ndarray, x: np.ndarray, groups: list[InputGroup], order: list[int]
) -> str:
    """SHAP-style summary: one row per feature, a dot per row at its attribution, coloured by
    the feature's value."""
    import matplotlib as mpl

    from danlu.evaluate._plots import figure, svg

    shown = order[:_SWARM_FEATURES]
    fig, ax = figure(6.0, 0.42 * len(shown) + 1.2)
    cmap = mpl.colormaps["coolwarm"]
    scatter = None
    for position, g in enumerate(reversed(shown)):  # most important at the top
        values = grouped[:, g]
        y = position + _swarm_offsets(values)
        scatter = ax.scatter(
            values, y, c=_colour_values(x, groups[g]), cmap=cmap, vmin=0.0, vmax=1.0,
            s=9, alpha=0.85, linewidths=0, rasterized=False,
        )  # fmt: skip
    ax.axvline(0.0, color="0.6", lw=0.8, zorder=0)
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels([groups[g].name for g in reversed(shown)])
    ax.set_ylim(-0.6, len(shown) - 0.4)
    ax.set_xlabel("attribution (effect on the model output)")
    if scatter is not None:
        bar = fig.colorbar(scatter, ax=ax, pad=0.02, aspect=30, ticks=[0.0, 1.0])
        bar.ax.set_yticklabels(["low", "high"])
        bar.set_label("feature value")
    return svg(fig)


def _bar_plot(importance: dict[str, float]) -> str:
    from danlu.evaluate._plots import figure, svg

    items = list(importance.items())[:_BAR_FEATURES]
    fig, ax = figure(5.2, 0.3 * len(items) + 1.0)
    names = [name for name, _ in reversed(items)]
    ax.barh(names, [value for _, value in reversed(items)], color="#4c72b0")
    ax.set_xlabel("mean |attribution|")
    return svg(fig)


def _image(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """One row's columns as a displayable (H, W) or (H, W, 3) array."""
    import numpy as np

    image = values.reshape(shape)
    if len(shape) == 2:
        return image
    if shape[0] == 3:  # RGB, channels first
        rgb = np.moveaxis(image, 0, -1)
        low, high = rgb.min(), rgb.max()
        return (rgb - low) / (high - low) if high > low else np.zeros_like(rgb)
    return image.mean(axis=0)


def _raw_pixels(data: EvalData, rows: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The explained rows' raw pixel values when the raw columns are the pixels (the prepared,
    per-pixel standardized values are hard to read as an image), else the prepared values."""
    import numpy as np

    names = list(data.schema.feature_names)
    if len(names) != x.shape[1] or not all(name in data.frame.columns for name in names):
        return x
    try:
        return np.asarray(data.frame.iloc[rows][names], dtype=np.float64)
    except (TypeError, ValueError):  # non-numeric raw columns
        return x


def _saliency_plot(
    x: np.ndarray,
    attr: np.ndarray,
    shape: tuple[int, ...],
    picks: list[tuple[str, int]],
    labels: list[str],
) -> str:
    """Top: each picked row's input image; bottom: its attribution map (red for, blue against)."""
    import numpy as np

    from danlu.evaluate._plots import figure, svg

    fig, axes = figure(1.45 * len(picks) + 0.6, 3.4, nrows=2, ncols=len(picks), squeeze=False)
    image = None
    for column, (kind, row) in enumerate(picks):
        top, bottom = axes[0][column], axes[1][column]
        top.imshow(_image(x[row], shape), cmap="gray_r")
        top.set_title(f"{kind}\n{labels[column]}", fontsize=7)
        saliency = attr[row].reshape(shape)
        saliency = saliency if len(shape) == 2 else saliency.sum(axis=0)  # (H, W)
        bound = float(np.abs(saliency).max()) or 1.0
        image = bottom.imshow(saliency, cmap="RdBu_r", vmin=-bound, vmax=bound)
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_ylabel("input", fontsize=8)
    axes[1][0].set_ylabel("attribution", fontsize=8)
    if image is not None:
        bar = fig.colorbar(image, ax=list(axes[1]), shrink=0.8, pad=0.02, ticks=[])
        bar.set_label("− against · for +", fontsize=7)
    return svg(fig)


def _sequence_plot(
    x: np.ndarray,
    attr: np.ndarray,
    shape: tuple[int, int],
    picks: list[tuple[str, int]],
    labels: list[str],
) -> str:
    """One panel per picked row: its series (a line per channel) over a band coloured by each
    step's attribution, summed over the channels (red for the prediction, blue against)."""
    import numpy as np

    from danlu.evaluate._plots import figure, svg

    channels, length = shape
    fig, axes = figure(
        6.4,
        1.2 * len(picks) + 0.6,
        nrows=len(picks),
        ncols=1,
        squeeze=False,
        sharex=True,
        layout="constrained",
    )
    steps = np.arange(length)
    band = None
    for panel, ((kind, row), label) in enumerate(zip(picks, labels, strict=True)):
        ax = axes[panel][0]
        series = x[row].reshape(shape)  # (C, L)
        saliency = attr[row].reshape(shape).sum(axis=0)  # (L,)
        bound = float(np.abs(saliency).max()) or 1.0
        low, high = float(series.min()), float(series.max())
        pad = 0.08 * (high - low) or 1.0
        extent = (-0.5, length - 0.5, low - pad, high + pad)
        band = ax.imshow(
            saliency[None, :], aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound,
            extent=extent, interpolation="nearest", alpha=0.8,
        )  # fmt: skip
        for c in range(channels):
            colour = "black" if channels == 1 else f"C{c % 10}"
            ax.plot(steps, series[c], color=colour, linewidth=0.9, label=f"series {c}")
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_title(f"{kind}: {label.replace(chr(10), ', ')}", fontsize=7, loc="left")
        ax.tick_params(labelsize=6)
    axes[-1][0].set_xlabel("step", fontsize=7)
    if channels > 1:
        axes[0][0].legend(fontsize=5, ncol=min(channels, 6), loc="upper right")
    if band is not None:
        bar = fig.colorbar(band, ax=[row[0] for row in axes], shrink=0.8, ticks=[])
        bar.set_label("− against · for +", fontsize=7)
    return svg(fig)


def _steps_plot(attr: np.ndarray, shape: tuple[int, int]) -> str:
    """The mean |attribution| of each step over the explained rows (a line per channel): where
    in the series the model looks."""
    import numpy as np

    from danlu.evaluate._plots import figure, svg

    channels, length = shape
    mean = np.abs(attr.reshape(len(attr), channels, length)).mean(axis=0)  # (C, L)
    fig, ax = figure(6.4, 2.2)
    for c in range(channels):
        ax.plot(np.arange(length), mean[c], linewidth=1.0, label=f"series {c}")
    if channels > 1:
        ax.legend(fontsize=6, ncol=min(channels, 6), loc="upper right")
    ax.set_xlabel("step", fontsize=7)
    ax.set_ylabel("mean |attribution|", fontsize=7)
    ax.tick_params(labelsize=6)
    return svg(fig)


def _method_note(config: ExplainConfig, data: EvalData) -> tuple[str, str]:
    no_train = len(data.x_train) == 0
    if config.method == "integrated_gradients":
        method = f"integrated gradients (captum, {config.steps} steps)"
        base = "zeros (no training rows)" if no_train else "the training mean of each input column"
    elif config.method == "gradient_shap":
        method = f"gradient SHAP (captum, {_GRADIENT_SHAP_SAMPLES} draws per row)"
        base = (
            "zeros (no training rows)"
            if no_train
            else f"{min(config.background, len(data.x_train))} seeded training rows"
        )
    else:
        method = (
            f"kernel SHAP (captum, {_KERNEL_SAMPLES} coalitions per row, one-hot columns of a "
            "feature perturbed together)"
        )
        base = "zeros (no training rows)" if no_train else "the training mean of each input column"
    return method, base


def _add_tokens(section: Section, data: EvalData, config: ExplainConfig) -> None:
    """The token attributions of a text model's most and least confident test rows."""
    from danlu.evaluate._explain_text import is_text_model, token_section

    texts = [g.name for g in data.groups if g.kind == "text"]
    if not texts or not is_text_model(data.model):
        return
    records, block, notes = token_section(data, config)
    section.data["token_attributions"] = records
    section.notes.append(
        f"Text column{'s' if len(texts) > 1 else ''} {', '.join(texts)}: explained token by "
        "token, not as features (their token-id columns are held as they are while the other "
        "columns are attributed, with each text's pooled encoding fixed)."
    )
    shown = sum(len(rows) for rows in records.values())
    if not shown:  # evaluate.explain.top_k: 0
        return
    if block:
        section.figures[
            "Token attributions of the most and least confident test rows: red toward the "
            "prediction, blue against"
        ] = block
    section.notes.extend(notes)
    words = "token attributions of " + (f"{shown} test rows" if shown != 1 else "1 test row")
    section.summary = f"{section.summary}; {words}" if section.summary else words


def explain_section(data: EvalData, config: ExplainConfig) -> Section:
    """The report's explanations: global importance per raw feature, a summary plot, saliency
    maps for images (for a sequence model: each series over its attribution per step), and the ``top_k`` most and least confident test rows explained.

    Args:
        data: the model and its test split.
        config: the ``evaluate.explain`` block.

    Returns:
        Section ``explain``; its data holds ``method``, ``rows``, ``importance`` (every raw
        feature, descending) and ``samples`` (``most_confident`` / ``least_confident``, each a
        list of rows with their prediction, confidence, true value and top-5 features).

    Example:
        >>> from danlu.config import ExplainConfig
        >>> section = explain_section(data, ExplainConfig(samples=100))  # doctest: +SKIP
        >>> section.summary  # doctest: +SKIP
        'top features: worst radius, worst concave points, mean texture'
    """
    import numpy as np

    section = Section("explain", "Explanations")
    total = len(data.x)
    if total == 0:
        section.notes.append("No test rows to explain.")
        section.data = {
            "method": config.method,
            "rows": 0,
            "importance": [],
            "samples": {"most_confident": [], "least_confident": []},
        }
        return section

    switched = None
    trees = not getattr(data.model, "differentiable", True)
    native = _native(data) if trees else None
    exact = native is not None
    if native is not None:
        switched = (
            "Tree ensemble: attributions are exact TreeSHAP values computed by "
            f"{native[0]} from its own stored model (evaluate.explain.method {config.method} "
            "does not apply)."
        )
    elif trees and config.method == "kernel_shap":
        switched = _NO_NATIVE
    elif trees:
        samples = min(config.samples, _TREE_SAMPLES)
        switched = (
            f"{config.method.replace('_', ' ')} follows input gradients, which a tree ensemble "
            "does not have (its output is piecewise constant in the inputs): explained with "
            f"kernel SHAP instead, which only calls the model, on {samples} rows at most (it "
            "costs far more per row; evaluate.explain.method: kernel_shap explains "
            f"evaluate.explain.samples rows). {_NO_NATIVE}"
        )
        config = config.model_copy(update={"method": "kernel_shap", "samples": samples})
    rng = np.random.default_rng(config.seed)
    count = min(config.samples, total)
    rows = np.arange(total) if count == total else np.sort(rng.choice(total, count, replace=False))
    x = np.asarray(data.x[rows], dtype=np.float32)
    outputs = data.test_outputs[rows]
    # outputs are already divided by the temperature (EvalData.outputs)
    explained_rows = data.task.explain(outputs, data.y[rows], data.schema)
    confidence = explained_rows.confidence
    predictions, truths = explained_rows.predictions, explained_rows.truths

    additivity = None
    if exact:
        attr, bias = tree_shap(data, x, explained_rows.targets)  # (n, D), (n,)
        want = _explained_outputs(data, x, explained_rows.targets)
        additivity = float(np.abs(attr.sum(axis=1) + bias - want).max())
    else:
        attr = attributions(data, x, config, explained_rows.targets)  # (n, D)
    # token ids are no feature: a text column is explained token by token (_explain_text)
    groups = [g for g in data.groups if g.kind != "text"]
    grouped = _grouped(attr, groups)  # (n, G)
    importance = global_importance(attr, groups)
    position = {g.name: i for i, g in enumerate(groups)}
    order = [position[name] for name in importance]

    by_confidence = np.argsort(-confidence, kind="stable")  # most confident first

    def explained(i: int) -> dict[str, Any]:
        row = int(rows[i])
        top = np.argsort(-np.abs(grouped[i]), kind="stable")[:_TOP_FEATURES_PER_ROW]
        raw = data.frame.iloc[row]
        return {
            "row": row,
            "prediction": predictions[i],
            "confidence": float(confidence[i]),
            "true": truths[i],
            "top": [
                {
                    "feature": groups[g].name,
                    "value": _plain(raw[groups[g].name]) if groups[g].name in raw.index else None,
                    "attribution": float(grouped[i, g]),
                }
                for g in top
            ],
        }

    k = min(config.top_k, count)
    section.data = {
        "method": "tree_shap" if exact else config.method,
        "rows": int(count),
        "importance": [{"feature": n, "importance": v} for n, v in importance.items()],
        "samples": {
            "most_confident": [explained(int(i)) for i in by_confidence[:k]],
            "least_confident": [explained(int(i)) for i in by_confidence[::-1][:k]],
        },
    }

    if groups:
        section.figures["Summary of attributions: each dot is a test row"] = _summary_plot(
            grouped, x, groups, order
        )
    n_pick = min(_SALIENCY_ROWS, count)
    most = [int(i) for i in by_confidence[:n_pick]]
    least = [int(i) for i in by_confidence[::-1][:n_pick] if int(i) not in most]
    picks = [("most confident", i) for i in most] + [("least confident", i) for i in least]
    labels = [
        f"pred {_short(predictions[i])} ({confidence[i]:.2f})\ntrue {_short(truths[i])}"
        for _, i in picks
    ]
    shape = data.schema.image_shape
    # a sequence model (cnn1d) views its rows as (channels, length), whatever the data's shape
    sequence = getattr(data.model, "sequence_shape", None)
    if sequence is not None and math.prod(sequence) == x.shape[1] and len(sequence) == 2:
        sequence = (int(sequence[0]), int(sequence[1]))
        section.figures[
            "Saliency: each series over its attribution per step (red for the prediction, blue "
            "against)"
        ] = _sequence_plot(_raw_pixels(data, rows, x), attr, sequence, picks, labels)
        section.figures["Mean |attribution| per step over the explained rows"] = _steps_plot(
            attr, sequence
        )
    elif shape is not None and math.prod(shape) == x.shape[1] and len(shape) in (2, 3):
        section.figures["Saliency: inputs and their attributions"] = _saliency_plot(
            _raw_pixels(data, rows, x), attr, tuple(shape), picks, labels
        )
    elif groups:
        section.figures["Global feature importance"] = _bar_plot(importance)

    top3 = list(importance)[:3]
    section.summary = "top features: " + ", ".join(top3) if top3 else None
    what = explained_rows.what
    if native is not None:
        section.data["additivity_error"] = additivity
        if data.task.output_dim(data.schema) == 2 and data.task.target_kind == "classes":
            what = "the predicted class's log-odds (the trees' margin, negated for the first class)"
        if additivity is not None and additivity > 1e-3:
            section.flags.append(
                f"TreeSHAP attributions plus the bias differ from the model's output by up to "
                f"{additivity:.2g}: the stored {native[0]} model does not match the trees."
            )
        method = (
            f"exact TreeSHAP ({native[0]}'s own {_CONTRIB_ARG.get(native[0], 'TreeSHAP')} "
            "on its stored "
            f"model; attributions plus the bias give the model's output within {additivity:.1e})"
        )
        base = "the expected output over the training rows (the trees' cover)"
    else:
        method, base = _method_note(config, data)
    section.notes.append(f"Method: {method}.")
    if switched:
        section.notes.append(switched)
    section.notes.append(f"Baseline: {base}.")
    sampled = "a seeded sample of " if count < total else ""
    section.notes.append(f"Rows explained: {count} ({sampled}{total} test rows).")
    section.notes.append(
        f"Attributions explain {what}; one-hot columns are summed into their raw "
        "feature, and a feature's importance is the mean over rows of its |attribution|."
    )
    section.notes.extend(explained_rows.notes)
    _add_tokens(section, data, config)
    logger.debug("explained %d rows with %s", count, section.data["method"])
    return section
