"""Gradient-boosted trees: ``model: {type: gbdt, library: lightgbm | sklearn | xgboost, ...}``.

The library fits the trees natively on the prepared rows, with early stopping on danlu's own
validation split; the fitted trees are then read out of the library's model (LightGBM's and
XGBoost's JSON dumps, scikit-learn's node arrays — never a pickle) into a
:class:`~danlu.models.TreeEnsemble`, the torch module every later stage uses. Its outputs
follow the task contract: logits for classification (the raw margins: ``[0, m]`` for a binary
model, so softmax gives the library's sigmoid), the standardized target for regression.

The options are one vocabulary across libraries; each maps them to its own names
(:data:`OPTION_NAMES`). LightGBM ships with danlu; XGBoost is the optional extra
``danlu[gbdt-xgboost]``.
"""

from __future__ import annotations

import inspect
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from danlu.config import ConfigIssue
from danlu.errors import ConfigError
from danlu.models._common import ModelSpec

if TYPE_CHECKING:
    import numpy as np

    from danlu.config import Recipe
    from danlu.data import FeatureSchema
    from danlu.models._trees import Tree, TreeEnsemble
    from danlu.tasks import Task

__all__ = ["GBDTSpec", "NATIVE_FILES", "NativeFit", "build_gbdt", "fit_gbdt", "tree_contributions"]

Library = Literal["lightgbm", "sklearn", "xgboost"]
EXTRA = {"xgboost": "gbdt-xgboost", "lightgbm": "gbdt", "sklearn": "gbdt"}
_TASKS = ("classification", "regression")
#: the library's own model file kept beside the torch tables, for exact TreeSHAP explanations:
#: plain text / JSON the library parses (never a pickle); scikit-learn has no such format.
NATIVE_FILES = {"lightgbm": "lightgbm_model.txt", "xgboost": "xgboost_model.json"}
_SMALL_TABLE = 5_000_000  # training values (rows × columns) up to which the library uses 1 thread

#: each option's name in each library (None: the library has no such option).
OPTION_NAMES: dict[str, dict[str, str | None]] = {
    "n_estimators": {"lightgbm": "num_boost_round", "sklearn": "max_iter", "xgboost": "rounds"},
    "learning_rate": {"lightgbm": "learning_rate", "sklearn": "learning_rate", "xgboost": "eta"},
    "max_depth": {"lightgbm": "max_depth", "sklearn": "max_depth", "xgboost": "max_depth"},
    "num_leaves": {"lightgbm": "num_leaves", "sklearn": "max_leaf_nodes", "xgboost": "max_leaves"},
    "min_child_samples": {
        "lightgbm": "min_data_in_leaf",
        "sklearn": "min_samples_leaf",
        "xgboost": "min_child_weight",
    },
    "l2": {"lightgbm": "lambda_l2", "sklearn": "l2_regularization", "xgboost": "lambda"},
    "subsample": {"lightgbm": "bagging_fraction", "sklearn": None, "xgboost": "subsample"},
    "colsample": {
        "lightgbm": "feature_fraction",
        "sklearn": "max_features",
        "xgboost": "colsample_bytree",
    },
    "max_bins": {"lightgbm": "max_bin", "sklearn": "max_bins", "xgboost": "max_bin"},
}


class GBDTSpec(ModelSpec):
    """Options of ``model: {type: gbdt}`` (one vocabulary for every library)."""

    library: Library = Field(
        "lightgbm", description="lightgbm (default) | sklearn (HistGradientBoosting) | xgboost."
    )
    n_estimators: Annotated[int, Field(ge=1, le=100_000)] = Field(
        500, description="Boosting rounds at most (early stopping usually ends sooner)."
    )
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05
    max_depth: Annotated[int, Field(ge=1, le=64)] | None = Field(
        None, description="Depth limit of each tree (none: limited by num_leaves)."
    )
    num_leaves: Annotated[int, Field(ge=2, le=131_072)] = Field(
        31, description="Leaves per tree at most."
    )
    min_child_samples: Annotated[int, Field(ge=1)] = Field(
        20,
        description="Training rows per leaf at least (XGBoost: min_child_weight, a hessian sum: "
        "this many rows for regression, a quarter of it for classification).",
    )
    l2: Annotated[float, Field(ge=0.0)] = Field(0.0, description="L2 penalty on leaf values.")
    subsample: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        1.0, description="Share of rows each tree sees (lightgbm, xgboost)."
    )
    colsample: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        1.0, description="Share of input columns each tree (sklearn: each split) sees."
    )
    max_bins: Annotated[int, Field(ge=2, le=255)] = Field(
        255, description="Histogram bins per feature."
    )
    early_stopping_rounds: Annotated[int, Field(ge=1)] | None = Field(
        50, description="Stop after this many rounds without a better validation loss."
    )

    def recipe_issues(self, recipe: Recipe) -> list[ConfigIssue]:
        """What a gbdt model refuses in the rest of the recipe (checked with the recipe)."""
        issues = []
        if recipe.task not in _TASKS:
            issues.append(
                ConfigIssue(
                    ("model", "type"),
                    f"gradient-boosted trees support {' and '.join(_TASKS)}, not {recipe.task}",
                    "gbdt",
                    "Use model.type: mlp for this task.",
                )
            )
        if self.library == "sklearn" and self.subsample < 1.0:
            issues.append(
                ConfigIssue(
                    ("model", "subsample"),
                    "scikit-learn's HistGradientBoosting does not subsample rows",
                    self.subsample,
                    "Remove model.subsample, or use model.library: lightgbm.",
                )
            )
        if recipe.data.stream is not None:
            issues.append(
                ConfigIssue(
                    ("data", "stream"),
                    "gradient-boosted trees are fitted on rows in memory",
                    "set",
                    "Remove data.stream (or sample the data), or use model.type: mlp.",
                )
            )
        if recipe.train.loss.name != "default":
            issues.append(
                ConfigIssue(
                    ("train", "loss", "name"),
                    "gradient-boosted trees fit the library's own log-loss / squared error",
                    recipe.train.loss.name,
                    "Remove train.loss.",
                )
            )
        return issues


def build_gbdt(spec: GBDTSpec, schema: FeatureSchema, task: Task) -> TreeEnsemble:
    """An empty :class:`~danlu.models.TreeEnsemble` sized for ``schema`` and ``task``; training
    fills it (:func:`fit_gbdt`), loading a stored model replaces its tables.

    The library is not needed here: a stored ensemble predicts with torch alone.

    Example:
        >>> # build_gbdt(GBDTSpec(library="sklearn"), schema, get_task("regression"))
    """
    from danlu.models._trees import TreeEnsemble

    module = TreeEnsemble(schema.input_dim, task.output_dim(schema))
    module.spec = spec  # what training fits with
    return module


def require_library(library: str) -> Any:
    """Import the library's module, or raise MissingExtraError naming the extra to install."""
    from danlu.registry import import_optional

    module = {"lightgbm": "lightgbm", "sklearn": "sklearn.ensemble", "xgboost": "xgboost"}[library]
    return import_optional(module, extra=EXTRA[library])


@dataclass
class NativeFit:
    """Trees fitted by a library, read out for a :class:`~danlu.models.TreeEnsemble`.

    Attributes:
        trees: every tree fitted, in order (``per_round`` trees per boosting round).
        per_round: trees added per round (the number of classes for a multiclass model, else 1).
        bias: (output_dim,) the margins before the first tree.
        strict: the library goes left when ``x < t`` (XGBoost) rather than ``x <= t``.
        native_outputs: ``(x, rounds) →`` the library's own raw outputs of its first ``rounds``
            rounds, in the task's layout (for the parity check).
        library: the library and its version.
        save: ``rounds →`` the library's own model of its first ``rounds`` rounds, in its safe
            text / JSON format (:data:`NATIVE_FILES`); None where the library has none.
    """

    trees: list[Tree]
    per_round: int
    bias: np.ndarray
    strict: bool
    native_outputs: Callable[[np.ndarray, int], np.ndarray]
    library: str
    save: Callable[[int], bytes] | None = None

    @property
    def rounds(self) -> int:
        return len(self.trees) // max(self.per_round, 1)


@dataclass
class FitRows:
    """What every library's fit takes: the rows, the output layout and the seed."""

    x: np.ndarray
    y: np.ndarray
    weight: np.ndarray | None
    x_val: np.ndarray
    y_val: np.ndarray
    outputs: int
    classes: bool
    seed: int


def fit_gbdt(
    spec: GBDTSpec,
    x: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray | None,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    outputs: int,
    classes: bool,
    seed: int,
) -> NativeFit:
    """Fit ``spec.library``'s trees on prepared rows, early stopping on ``x_val`` when it has
    rows (after ``spec.early_stopping_rounds`` rounds without a better validation loss).

    Args:
        x, y: training rows (float32) and targets (class indices, or standardized values).
        weight: per-row training weights (class weights), or None.
        x_val, y_val: validation rows; may be empty (no early stopping).
        outputs: the task's output width (classes, or 1).
        classes: a classification target.
        seed: the library's random seed.

    Raises:
        MissingExtraError: the library is not installed (the message names the extra).
    """
    fit = {"lightgbm": _fit_lightgbm, "sklearn": _fit_sklearn, "xgboost": _fit_xgboost}
    rows = FitRows(x, y, weight, x_val, y_val, outputs, classes, seed)
    return fit[spec.library](spec, rows)


def _threads(x: np.ndarray) -> int:
    """Threads for the library: one on small tables, where OpenMP threads waiting on each other
    (worst on a busy machine) cost far more than they save; torch's count on large ones."""
    import torch

    return 1 if x.size < _SMALL_TABLE else max(1, torch.get_num_threads())


def _binary_layout(margin: np.ndarray, outputs: int, positive: int = 1, negative: int = 0) -> Any:
    """Margins (n,) of a binary model as logits (n, outputs): 0 for the negative class, the
    margin for the positive one, a large negative logit for classes the model never saw."""
    import numpy as np

    out = np.full((len(margin), outputs), -1e4 if outputs > 2 else 0.0)
    out[:, negative] = 0.0
    out[:, positive] = margin
    return out


# -- LightGBM ----------------------------------------------------------------------------------
def _lightgbm_trees(booster: Any, outputs: int, per_round: int, positive: int) -> list[Tree]:
    import numpy as np

    from danlu.models._trees import Tree

    trees = []
    for i, info in enumerate(booster.dump_model(num_iteration=-1)["tree_info"]):
        feature: list[int] = []
        threshold: list[float] = []
        left: list[int] = []
        right: list[int] = []
        value: list[float] = []
        stack = [(info["tree_structure"], -1, "")]
        while stack:  # pre-order, parents before children
            node, parent, side = stack.pop()
            index = len(feature)
            if parent >= 0:
                (left if side == "left" else right)[parent] = index
            leaf = "leaf_value" in node
            if not leaf and node.get("decision_type", "<=") != "<=":
                raise ValueError(f"unsupported LightGBM split {node.get('decision_type')!r}")
            feature.append(0 if leaf else int(node["split_feature"]))
            threshold.append(0.0 if leaf else float(node["threshold"]))
            value.append(float(node["leaf_value"]) if leaf else 0.0)
            left.append(-1)
            right.append(-1)
            if not leaf:
                stack.append((node["right_child"], index, "right"))
                stack.append((node["left_child"], index, "left"))
        output = i % per_round if per_round > 1 else positive
        trees.append(
            Tree(
                feature=np.asarray(feature),
                threshold=np.asarray(threshold),
                left=np.asarray(left),
                right=np.asarray(right),
                value=np.asarray(value),
                output=output,
            )
        )
    return trees


def _fit_lightgbm(spec: GBDTSpec, rows: FitRows) -> NativeFit:
    x, y, weight, x_val, y_val = rows.x, rows.y, rows.weight, rows.x_val, rows.y_val
    outputs, classes, seed = rows.outputs, rows.classes, rows.seed
    import numpy as np

    lgb = require_library("lightgbm")
    objective = "regression" if not classes else "binary" if outputs == 2 else "multiclass"
    params: dict[str, Any] = {
        "objective": objective,
        "learning_rate": spec.learning_rate,
        "num_leaves": spec.num_leaves,
        "max_depth": spec.max_depth or -1,
        "min_data_in_leaf": spec.min_child_samples,
        "lambda_l2": spec.l2,
        "feature_fraction": spec.colsample,
        "max_bin": spec.max_bins,
        "seed": seed,
        "deterministic": True,
        "verbosity": -1,
        "num_threads": _threads(x),
    }
    if spec.subsample < 1.0:
        params.update(bagging_fraction=spec.subsample, bagging_freq=1)
    if objective == "multiclass":
        params["num_class"] = outputs
    train = lgb.Dataset(x, label=y, weight=weight, free_raw_data=False)
    callbacks, valid = [], []
    if len(x_val) and spec.early_stopping_rounds:
        valid = [lgb.Dataset(x_val, label=y_val, reference=train)]
        callbacks.append(lgb.early_stopping(spec.early_stopping_rounds, verbose=False))
    booster = lgb.train(  # keep_training_booster: every round, not only those up to the best
        params,
        train,
        num_boost_round=spec.n_estimators,
        valid_sets=valid,
        callbacks=callbacks,
        keep_training_booster=True,
    )
    per_round = outputs if objective == "multiclass" else 1

    def native(rows: np.ndarray, rounds: int) -> np.ndarray:
        raw = np.asarray(booster.predict(rows, raw_score=True, num_iteration=rounds))
        if objective == "binary":
            return _binary_layout(raw, outputs)
        return raw.reshape(len(rows), -1)

    return NativeFit(
        trees=_lightgbm_trees(booster, outputs, per_round, positive=1 if classes else 0),
        per_round=per_round,
        bias=np.zeros(outputs),
        strict=False,
        native_outputs=native,
        library=f"lightgbm {lgb.__version__}",
        save=lambda rounds: booster.model_to_string(num_iteration=rounds).encode(),
    )


# -- scikit-learn ------------------------------------------------------------------------------
def _sklearn_tree(nodes: np.ndarray, output: int) -> Tree:
    import numpy as np

    from danlu.models._trees import Tree

    leaf = nodes["is_leaf"].astype(bool)
    if nodes["is_categorical"].any():  # pragma: no cover - danlu passes numeric columns only
        raise ValueError("categorical splits are not supported")
    return Tree(
        feature=np.where(leaf, 0, nodes["feature_idx"]).astype(np.int64),
        threshold=np.where(leaf, 0.0, nodes["num_threshold"]),
        left=np.where(leaf, -1, nodes["left"].astype(np.int64)),
        right=np.where(leaf, -1, nodes["right"].astype(np.int64)),
        value=np.where(leaf, nodes["value"], 0.0),
        output=output,
    )


def _fit_sklearn(spec: GBDTSpec, rows: FitRows) -> NativeFit:
    x, y, weight, x_val, y_val = rows.x, rows.y, rows.weight, rows.x_val, rows.y_val
    outputs, classes, seed = rows.outputs, rows.classes, rows.seed
    import numpy as np
    import sklearn

    ensemble = require_library("sklearn")
    stopping = bool(len(x_val) and spec.early_stopping_rounds)
    settings: dict[str, Any] = {
        "learning_rate": spec.learning_rate,
        "max_iter": spec.n_estimators,
        "max_leaf_nodes": spec.num_leaves,
        "max_depth": spec.max_depth,
        "min_samples_leaf": spec.min_child_samples,
        "l2_regularization": spec.l2,
        "max_features": spec.colsample,
        "max_bins": spec.max_bins,
        "categorical_features": None,
        "early_stopping": stopping,
        "n_iter_no_change": spec.early_stopping_rounds or 10,
        "scoring": "loss",
        "random_state": seed,
    }
    kind = (
        ensemble.HistGradientBoostingClassifier
        if classes
        else ensemble.HistGradientBoostingRegressor
    )
    model = kind(**settings)
    if stopping and "X_val" not in inspect.signature(kind.fit).parameters:
        raise ConfigError(
            f"model.library sklearn early-stops on danlu's validation split, which needs "
            f"scikit-learn's fit(X_val=...), added after {sklearn.__version__}. Upgrade "
            "scikit-learn, use model.library: lightgbm, or set model.early_stopping_rounds: null."
        )
    extra = {"X_val": x_val, "y_val": y_val} if stopping else {}
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=_threads(x), user_api="openmp"):
        model.fit(x, y, sample_weight=weight, **extra)
    if classes:
        seen = [int(c) for c in model.classes_]
        per_round = len(seen) if len(seen) > 2 else 1
        targets = seen if per_round > 1 else [seen[-1]]
    else:
        seen, per_round, targets = [0], 1, [0]
    trees = [
        _sklearn_tree(predictor.nodes, targets[k])
        for iteration in model._predictors
        for k, predictor in enumerate(iteration)
    ]
    baseline = np.asarray(model._baseline_prediction, dtype=np.float64).reshape(-1)
    bias = np.full(outputs, -1e4 if classes and len(seen) < outputs else 0.0)
    if classes and per_round == 1:
        bias[seen[0]] = 0.0
    for k, target in enumerate(targets):
        bias[target] = baseline[k]

    def native(rows: np.ndarray, rounds: int) -> np.ndarray:
        staged = model._staged_raw_predict(rows)  # (n, per_round) after each round
        raw = np.asarray(next(itertools.islice(staged, rounds - 1, None)), dtype=np.float64)
        if not classes:
            return raw.reshape(len(rows), 1)
        out = np.full((len(rows), outputs), -1e4 if len(seen) < outputs else 0.0)
        if per_round == 1:
            out[:, seen[0]] = 0.0
        out[:, targets] = raw
        return out

    return NativeFit(
        trees=trees,
        per_round=per_round,
        bias=bias,
        strict=False,
        native_outputs=native,
        library=f"scikit-learn {sklearn.__version__}",
    )


# -- XGBoost -----------------------------------------------------------------------------------
def _xgboost_trees(booster: Any, per_round: int, positive: int) -> list[Tree]:
    import numpy as np

    from danlu.models._trees import Tree

    model = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]["model"]
    trees = []
    for i, tree in enumerate(model["trees"]):
        left = np.asarray(tree["left_children"], dtype=np.int64)
        leaf = left < 0
        # XGBoost keeps its thresholds in float32 and compares float32 inputs with them; the
        # JSON's decimals are only close to those floats
        conditions = np.asarray(tree["split_conditions"], dtype=np.float32).astype(np.float64)
        group = int(model["tree_info"][i]) if per_round > 1 else positive
        trees.append(
            Tree(
                feature=np.where(leaf, 0, np.asarray(tree["split_indices"], dtype=np.int64)),
                threshold=np.where(leaf, 0.0, conditions),
                left=np.where(leaf, -1, left),
                right=np.where(leaf, -1, np.asarray(tree["right_children"], dtype=np.int64)),
                value=np.where(leaf, conditions, 0.0),  # a leaf keeps its value there
                output=group,
            )
        )
    return trees


def _fit_xgboost(spec: GBDTSpec, rows: FitRows) -> NativeFit:
    x, y, weight, x_val, y_val = rows.x, rows.y, rows.weight, rows.x_val, rows.y_val
    outputs, classes, seed = rows.outputs, rows.classes, rows.seed
    import numpy as np

    xgb = require_library("xgboost")
    objective = (
        "reg:squarederror"
        if not classes
        else "binary:logistic"
        if outputs == 2
        else "multi:softprob"
    )
    params: dict[str, Any] = {
        "objective": objective,
        "eta": spec.learning_rate,
        "max_depth": spec.max_depth or 0,
        "max_leaves": spec.num_leaves,
        "grow_policy": "lossguide",
        # a hessian sum: one per row for squared error, p(1 - p) ≤ 1/4 per row for log-loss
        "min_child_weight": spec.min_child_samples * (0.25 if classes else 1.0),
        "lambda": spec.l2,
        "subsample": spec.subsample,
        "colsample_bytree": spec.colsample,
        "max_bin": spec.max_bins,
        "tree_method": "hist",
        "nthread": _threads(x),
        "seed": seed,
        "verbosity": 0,
    }
    if objective == "multi:softprob":
        params["num_class"] = outputs
    train = xgb.DMatrix(x, label=y, weight=weight)
    evals, stopping = [], None
    if len(x_val) and spec.early_stopping_rounds:
        evals, stopping = [(xgb.DMatrix(x_val, label=y_val), "val")], spec.early_stopping_rounds
    booster = xgb.train(
        params,
        train,
        num_boost_round=spec.n_estimators,
        evals=evals,
        early_stopping_rounds=stopping,
        verbose_eval=False,
    )
    per_round = outputs if objective == "multi:softprob" else 1

    def native(rows: np.ndarray, rounds: int) -> np.ndarray:
        raw = booster.predict(xgb.DMatrix(rows), output_margin=True, iteration_range=(0, rounds))
        raw = np.asarray(raw, dtype=np.float64)
        if objective == "binary:logistic":
            return _binary_layout(raw.reshape(-1), outputs)
        return raw.reshape(len(rows), -1)

    trees = _xgboost_trees(booster, per_round, positive=1 if classes else 0)
    # the margin before any tree (base_score, in margin units): what no tree explains
    from danlu.models._trees import TreeEnsemble

    probe = np.ascontiguousarray(x[: min(len(x), 64)], dtype=np.float32)
    tables = TreeEnsemble.from_trees(trees, input_dim=x.shape[1], output_dim=outputs, strict=True)
    import torch

    with torch.inference_mode():
        summed = tables.leaves(torch.from_numpy(probe)).numpy() @ tables.tree_output.numpy()
    bias = np.median(native(probe, len(trees) // per_round) - summed, axis=0)
    return NativeFit(
        trees=trees,
        per_round=per_round,
        bias=bias,
        strict=True,
        native_outputs=native,
        library=f"xgboost {xgb.__version__}",
        save=lambda rounds: bytes(booster[:rounds].save_raw("json")),
    )


# -- exact TreeSHAP from the library's own model -------------------------------------------------
def tree_contributions(library: str, raw: bytes, x: np.ndarray) -> np.ndarray:
    """Exact TreeSHAP values of the library's stored model (:data:`NATIVE_FILES`) for rows ``x``.

    The model is parsed from its text (LightGBM) or JSON (XGBoost): no code is executed. The
    values are in the library's raw margin space: for each row and each of the library's outputs
    (one for regression and binary models, one per class for multiclass), one value per input
    column and last the bias (the expected margin), which sum to the library's raw score.

    Returns:
        float64 (n, outputs, input_dim + 1).

    Example:
        >>> # contrib = tree_contributions("lightgbm", model_text, x)  # (n, 1, D + 1)
        >>> # np.allclose(contrib.sum(axis=2)[:, 0], booster.predict(x, raw_score=True))
    """
    import numpy as np

    x = np.ascontiguousarray(x, dtype=np.float32)
    width = x.shape[1] + 1
    if library == "lightgbm":
        lgb = require_library("lightgbm")
        booster = lgb.Booster(model_str=raw.decode("utf-8"))
        values = np.asarray(booster.predict(x, pred_contrib=True), dtype=np.float64)
    elif library == "xgboost":
        xgb = require_library("xgboost")
        booster = xgb.Booster()
        booster.load_model(bytearray(raw))
        values = np.asarray(booster.predict(xgb.DMatrix(x), pred_contribs=True), dtype=np.float64)
    else:
        raise ValueError(f"{library} has no native model file for TreeSHAP")
    return values.reshape(len(x), -1, width)
