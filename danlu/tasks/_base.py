"""What every task provides to the engine: an output size, a loss, cheap per-epoch metrics,
full test metrics and the decoding of raw outputs into predictions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from danlu.config import LossConfig
    from danlu.data import FeatureSchema

__all__ = ["Task"]


class Task(ABC):
    """The contract between a task and the engine.

    ``outputs`` are the model's raw outputs (logits for classification, standardized values for
    regression); ``y`` is the prepared target (class indices, standardized values).
    """

    name: str
    #: dtype name of the target tensor the loss expects ("int64" or "float32").
    target_dtype: str
    #: metrics this task reports each epoch on the validation split, without the ``val_`` prefix.
    epoch_metrics: tuple[str, ...]
    #: headline metric of the test split, and whether larger is better.
    headline: str
    headline_mode: str

    def monitor_mode(self, metric: str) -> str:
        """'min' or 'max' for a metric name such as ``val_loss`` or ``val_accuracy``."""
        base = metric.split("_", 1)[1] if metric.startswith(("val_", "train_", "test_")) else metric
        return "min" if base in {"loss", "mae", "rmse", "mse", "log_loss"} else "max"

    def monitorable(self) -> list[str]:
        """Every metric name the engine records each epoch for this task."""
        return ["train_loss", "val_loss", *(f"val_{m}" for m in self.epoch_metrics)]

    @abstractmethod
    def output_dim(self, schema: FeatureSchema) -> int:
        """Width of the model's last layer."""

    @abstractmethod
    def make_loss(
        self, class_weights: torch.Tensor | None = None, loss: LossConfig | None = None
    ) -> torch.nn.Module:
        """The training loss, taking ``(outputs, y)``; ``loss`` is the recipe's ``train.loss``."""

    @abstractmethod
    def quick_metrics(
        self, outputs: torch.Tensor, y: torch.Tensor, schema: FeatureSchema
    ) -> dict[str, float]:
        """Cheap metrics computed in torch every epoch (names as in ``epoch_metrics``)."""

    @abstractmethod
    def metrics(self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> dict[str, Any]:
        """Full metrics of a split, computed with scikit-learn in the target's original units.

        Returns float metrics plus non-scalar details (e.g. ``confusion_matrix`` as nested lists).
        """

    @abstractmethod
    def predict(self, outputs: np.ndarray, schema: FeatureSchema) -> dict[str, np.ndarray]:
        """Decode raw outputs: ``{"prediction": labels or values[, "probabilities": (N, K)]}``."""

    def signature(self, schema: FeatureSchema) -> dict[str, Any]:
        """The model's request/response contract: what export, ``load_model`` and the server
        accept and answer. ``inputs`` are the raw feature columns; ``outputs`` is this task's
        :meth:`output_signature`.

        Example:
            >>> # get_task("regression").signature(prepared.schema)["outputs"]
        """
        inputs = [
            {
                "name": f.name,
                "kind": f.kind,
                **({"categories": list(f.categories)} if f.categories else {}),
            }
            for f in schema.features
        ]
        return {"task": self.name, "inputs": inputs, "outputs": self.output_signature(schema)}

    @abstractmethod
    def output_signature(self, schema: FeatureSchema) -> dict[str, Any]:
        """Each decoded output's name → its description (``type``, ``classes``, ``shape``...)."""
