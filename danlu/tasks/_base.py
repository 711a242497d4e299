"""The task contract: everything that differs between kinds of task, in one place.

A task declares the inputs it accepts, the kind of target the data layer prepares for it, its
output head and loss, how outputs become predictions, its metrics and headline metric, its
baselines, what the explanation section attributes, any extra trust-report sections, and the
request/response signature that export, ``load_model`` and the server derive from. The engine,
the evaluator, the exporter and the server only talk to this contract, so adding a kind of task
is one module under ``tasks/`` and one registration.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import numpy as np
    import torch

    from danlu.config import ConfigIssue, LossConfig, Recipe
    from danlu.data import Feature, FeatureSchema, PreparedData

__all__ = ["Explained", "ExtraSection", "Task", "score_rows"]


@dataclass
class Explained:
    """What the explanation section attributes and how it ranks rows.

    Attributes:
        targets: per row, the output index whose attribution is computed, (n,); None: the
            single output.
        confidence: per row, a score ranking "most" to "least confident" (higher first), (n,).
        predictions: per row, the decoded prediction (JSON types).
        truths: per row, the decoded true target (JSON types).
        what: what the attributions explain, e.g. "the predicted class's logit".
        notes: extra sentences for the section.
    """

    targets: np.ndarray | None
    confidence: np.ndarray
    predictions: list[Any]
    truths: list[Any]
    what: str
    notes: list[str] = field(default_factory=list)


@dataclass
class ExtraSection:
    """A trust-report section a task adds, in plain types (the evaluator renders it).

    ``figures`` maps a caption to inline SVG markup; ``data`` holds JSON types only.
    """

    key: str
    title: str
    data: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)
    summary: str | None = None
    notes: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)


class Task(ABC):
    """The contract between a kind of task and the rest of danlu.

    ``outputs`` are the model's raw outputs (logits for classification, standardized values for
    regression); ``y`` is the prepared target as the data layer encodes it for
    :attr:`target_kind` (class indices, standardized values, multi-hot rows).
    """

    name: ClassVar[str]
    #: the kind of target the data layer prepares: "classes", "values" or "label_sets".
    target_kind: ClassVar[str]
    #: dtype name of the target tensor the loss expects ("int64" or "float32").
    target_dtype: ClassVar[str]
    #: the feature kinds this task's models accept.
    input_kinds: ClassVar[frozenset[str]] = frozenset({"numeric", "categorical", "image"})
    #: metrics this task reports each epoch on the validation split, without the ``val_`` prefix.
    epoch_metrics: ClassVar[tuple[str, ...]]
    #: headline metric of the test split, and whether larger is better.
    headline: ClassVar[str]
    headline_mode: ClassVar[str]
    #: how the headline reads in sentences ("accuracy", "R²"), and whether it is a share (shown
    #: as a percentage).
    headline_label: ClassVar[str] = ""
    headline_percent: ClassVar[bool] = False
    #: what :meth:`row_scores` measures, for the report's notes.
    row_score_label: ClassVar[str] = "the headline metric per row"
    #: the metrics the report's baseline table shows, in order.
    report_metrics: ClassVar[tuple[str, ...]] = ()
    #: whether temperature scaling of the outputs applies (calibrated probabilities).
    calibrates: ClassVar[bool] = False
    #: whether :meth:`fit_decoding` fits anything (the engine then scores the validation rows
    #: once more after training).
    fits_decoding: ClassVar[bool] = False
    #: the trust report's generic sections that do not apply to this task: section key (e.g.
    #: ``explain``, ``robustness``) → why; the report shows each as skipped with the reason
    #: instead of running it.
    report_skips: ClassVar[Mapping[str, str]] = {}
    #: metrics where smaller is better (the rest: larger is better).
    smaller_is_better: ClassVar[frozenset[str]] = frozenset(
        {"loss", "mae", "rmse", "mse", "log_loss", "hamming_loss"}
    )

    # ---- recipe and engine ---------------------------------------------------------------------

    def monitor_mode(self, metric: str) -> str:
        """'min' or 'max' for a metric name such as ``val_loss`` or ``val_accuracy``."""
        base = metric.split("_", 1)[1] if metric.startswith(("val_", "train_", "test_")) else metric
        return "min" if base in self.smaller_is_better else "max"

    def monitorable(self) -> list[str]:
        """Every metric name the engine records each epoch for this task."""
        return ["train_loss", "val_loss", *(f"val_{m}" for m in self.epoch_metrics)]

    def check_recipe(self, recipe: Recipe) -> list[ConfigIssue]:
        """Problems of ``recipe`` specific to this task (all at once; none by default).

        Single-label class weights, imbalance methods and the focal loss need a ``classes``
        target: the default check says so for every other kind of target.
        """
        from danlu.config import ConfigIssue

        if self.target_kind == "classes":
            return []
        issues = []
        train = recipe.train
        if train.class_weight is not None:
            issues.append(
                ConfigIssue(
                    ("train", "class_weight"),
                    f"class weights need single-label classes; the {self.name} task has none",
                    train.class_weight,
                    "Remove train.class_weight.",
                )
            )
        if recipe.data.imbalance.method != "none":
            issues.append(
                ConfigIssue(
                    ("data", "imbalance", "method"),
                    f"class imbalance methods need single-label classes; the {self.name} task "
                    "has none",
                    recipe.data.imbalance.method,
                    "Remove data.imbalance.",
                )
            )
        if train.loss.name == "focal":
            issues.append(
                ConfigIssue(
                    ("train", "loss", "name"),
                    f"the focal loss needs single-label classes; the {self.name} task has none",
                    train.loss.name,
                    "Remove train.loss.",
                )
            )
        return issues

    def prepare_data(self, recipe: Recipe, frame: Any = None) -> PreparedData | None:
        """This task's own preparation of the recipe's data (rows from ``frame`` when given),
        for a task whose rows are not the source's rows: windows of time-ordered series, packed
        token blocks, interactions. None (the default): the standard
        :func:`~danlu.data.prepare_data`. Every stage prepares a recipe's data through
        :func:`danlu.models.prepare_recipe_data`, which asks here first."""
        return None

    def configure(self, recipe: Recipe, data: PreparedData) -> Task:
        """This task with the recipe's task-specific settings, resolved against the prepared
        data (e.g. the anomaly task's label values → label columns); the prepare stage calls it
        once the data is prepared. Raises ConfigError naming the recipe key. Default: self."""
        return self

    @abstractmethod
    def output_dim(self, schema: FeatureSchema) -> int:
        """Width of the model's last layer."""

    @abstractmethod
    def make_loss(
        self, class_weights: torch.Tensor | None = None, loss: LossConfig | None = None
    ) -> torch.nn.Module:
        """The training loss, taking ``(outputs, y)``; ``loss`` is the recipe's ``train.loss``."""

    def collate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Form a training batch from the rows picked for it (identity for fixed-width rows)."""
        return x, y

    @abstractmethod
    def quick_metrics(
        self, outputs: torch.Tensor, y: torch.Tensor, schema: FeatureSchema
    ) -> dict[str, float]:
        """Cheap metrics computed in torch every epoch (names as in ``epoch_metrics``)."""

    # ---- metrics and predictions ---------------------------------------------------------------

    @abstractmethod
    def metrics(self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> dict[str, Any]:
        """Full metrics of a split, computed with scikit-learn in the target's original units.

        Returns float metrics plus non-scalar details (e.g. ``confusion_matrix`` as nested lists).
        """

    @abstractmethod
    def predict(
        self, outputs: np.ndarray, schema: FeatureSchema, temperature: float = 1.0
    ) -> dict[str, np.ndarray]:
        """Decode raw outputs: ``{"prediction": ..., other outputs...}`` as the signature says.

        ``temperature`` divides the outputs first when the task :attr:`calibrates`.
        """

    def metric(self, name: str, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> float:
        """One metric of :meth:`metrics` (the report bootstraps it: a task may compute it alone,
        faster). Raises ValueError when it is undefined on these rows (e.g. one class only)."""
        value = self.metrics(outputs, y, schema).get(name)
        if not isinstance(value, float):
            raise ValueError(f"{name} is undefined on these rows")
        return value

    def fit_decoding(
        self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema
    ) -> dict[str, Any] | None:
        """Decoding parameters fitted on the validation split once training ends (per-label
        thresholds...), saved with the model as ``decoding.json``; None: nothing to fit."""
        return None

    def with_decoding(self, decoding: Mapping[str, Any]) -> Task:
        """This task with fitted decoding parameters (``decoding.json``) applied."""
        return self

    def row_scores(self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> np.ndarray:
        """Per-row scores (larger is better) whose mean tracks the headline: the paired
        bootstrap against a baseline resamples their differences."""
        import numpy as np

        return np.asarray(
            [
                self.metrics(outputs[i : i + 1], y[i : i + 1], schema)[self.headline]
                for i in range(len(y))
            ]
        )

    def describe(self, value: float, margin: float | None = None) -> str:
        """The headline in words: ``93.1% ± 1.2 accuracy`` or ``R² 0.512 ± 0.030``."""
        label = self.headline_label or self.headline
        if self.headline_percent:
            plus = f" ± {100 * margin:.1f}" if margin is not None else ""
            return f"{100 * value:.1f}%{plus} {label}"
        plus = f" ± {margin:.3f}" if margin is not None else ""
        return f"{label} {value:.3f}{plus}"

    # ---- trust report --------------------------------------------------------------------------

    @abstractmethod
    def baselines(self, seed: int) -> dict[str, Any]:
        """scikit-learn estimators fitted on the same prepared training rows: name → estimator."""

    @abstractmethod
    def baseline_outputs(self, estimator: Any, x: np.ndarray, schema: FeatureSchema) -> np.ndarray:
        """A fitted baseline's predictions shaped like the model's raw outputs, so
        :meth:`metrics` applies to them unchanged."""

    def baseline_target(self, y: np.ndarray) -> np.ndarray:
        """The prepared target as the baselines' ``fit`` takes it."""
        return y

    @abstractmethod
    def explain(
        self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema, temperature: float = 1.0
    ) -> Explained:
        """What the explanation section attributes for these rows, and how it ranks them."""

    def report_sections(
        self,
        outputs: np.ndarray,
        y: np.ndarray,
        schema: FeatureSchema,
        model: torch.nn.Module | None = None,
    ) -> list[ExtraSection]:
        """Sections this task adds to the trust report (none by default); ``model`` is the
        model the report describes, in eval mode (a generative model's samples need it)."""
        return []

    # ---- the contract with export, load_model and the server ----------------------------------

    def signature(self, schema: FeatureSchema) -> dict[str, Any]:
        """The model's request/response contract: what export, ``load_model`` and the server
        accept and answer. ``inputs`` are the raw feature columns; ``outputs`` is this task's
        :meth:`output_signature`.

        Example:
            >>> # get_task("regression").signature(prepared.schema)["outputs"]
        """
        inputs = [input_signature(f) for f in schema.features]
        return {"task": self.name, "inputs": inputs, "outputs": self.output_signature(schema)}

    @abstractmethod
    def output_signature(self, schema: FeatureSchema) -> dict[str, Any]:
        """Each decoded output's name → its description: ``type``, a JSON Schema of one row's
        value under ``schema``, and task details (``classes``, ``shape``...)."""


def input_signature(feature: Feature) -> dict[str, Any]:
    """One raw input of the signature: its name, kind and what a value may be.

    A ``datetime`` input is a string in ISO 8601 (``format: date-time``; a date alone is
    accepted too, as is the training data's own format, given as ``date_format``); a numeric
    input read with ``errors: nan`` also takes strings, a string that is not a number counting
    as missing; a frequency-encoded categorical says so (``encoding: frequency``).

    Example:
        >>> from danlu.data import Feature
        >>> input_signature(Feature("d", "datetime", date_format="%d/%m/%Y"))
        {'name': 'd', 'kind': 'datetime', 'type': 'string', 'format': 'date-time', 'date_format': '%d/%m/%Y'}
    """
    entry: dict[str, Any] = {"name": feature.name, "kind": feature.kind}
    if feature.categories:
        entry["categories"] = list(feature.categories)
    if feature.kind == "datetime":
        entry.update(type="string", format="date-time")
        if feature.date_format and feature.date_format != "ISO8601":
            entry["date_format"] = feature.date_format
    if feature.errors != "raise":
        entry["errors"] = feature.errors
    if feature.encoding:
        entry["encoding"] = feature.encoding
    return entry


def score_rows(k: int) -> dict[str, Any]:
    """The signature entry of a (k,) row of scores in [0, 1] (probabilities, label scores)."""
    return {
        "type": "float",
        "shape": [k],
        "json_schema": {
            "type": "array",
            "items": {"type": "number", "minimum": 0, "maximum": 1},
            "minItems": k,
            "maxItems": k,
        },
    }
