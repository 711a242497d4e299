"""Classification, binary and multi-class: a K-wide head, cross-entropy, sklearn metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from danlu.tasks._base import Explained, Task, score_rows

if TYPE_CHECKING:
    import numpy as np
    import torch

    from danlu.config import LossConfig
    from danlu.data import FeatureSchema

__all__ = ["ClassificationTask"]


def _softmax(outputs: np.ndarray) -> np.ndarray:
    import numpy as np

    shifted = outputs - outputs.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _focal_loss(class_weights: torch.Tensor | None, gamma: float) -> torch.nn.Module:
    """Focal loss (Lin et al., 2017): cross-entropy scaled by ``(1 - p_true) ** gamma``.

    Confident, correct predictions contribute almost nothing, so the rare and hard examples of an
    imbalanced data set drive the gradient. With ``gamma = 0`` it is exactly cross-entropy
    (weighted the same way: the mean over samples of ``w[y] · loss``, divided by the mean ``w[y]``).
    """
    import torch
    import torch.nn.functional as F

    class FocalLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gamma = gamma
            self.weight: torch.Tensor | None
            self.register_buffer("weight", class_weights)

        def forward(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            log_p = F.log_softmax(outputs, dim=1).gather(1, y[:, None]).squeeze(1)  # (N,)
            loss = -((1.0 - log_p.exp()) ** self.gamma) * log_p  # (N,)
            if self.weight is None:
                return loss.mean()
            w = self.weight[y]  # (N,)
            return (w * loss).sum() / w.sum()

    return FocalLoss()


class ClassificationTask(Task):
    """One logit per class (binary included, so probabilities and metrics look the same)."""

    name = "classification"
    input_kinds = frozenset({"numeric", "categorical", "image", "text"})
    target_kind = "classes"
    target_dtype = "int64"
    epoch_metrics = ("accuracy",)
    headline = "accuracy"
    headline_mode = "max"
    headline_label = "accuracy"
    headline_percent = True
    report_metrics = ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "log_loss")
    calibrates = True
    row_score_label = "correctness"

    def output_dim(self, schema: FeatureSchema) -> int:
        assert schema.classes is not None, "classification schema without classes"
        return len(schema.classes)

    def make_loss(
        self, class_weights: torch.Tensor | None = None, loss: LossConfig | None = None
    ) -> torch.nn.Module:
        import torch

        if loss is not None and loss.name == "focal":
            return _focal_loss(class_weights, loss.gamma)
        return torch.nn.CrossEntropyLoss(weight=class_weights)

    def quick_metrics(
        self, outputs: torch.Tensor, y: torch.Tensor, schema: FeatureSchema
    ) -> dict[str, float]:
        # outputs: (N, K) logits; y: (N,) class indices
        return {"accuracy": (outputs.argmax(dim=1) == y).float().mean().item()}

    def metrics(self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> dict[str, Any]:
        import numpy as np
        from sklearn import metrics as skm

        proba = _softmax(outputs.astype(np.float64))  # (N, K)
        pred = proba.argmax(axis=1)
        labels = list(range(proba.shape[1]))
        result: dict[str, Any] = {
            "accuracy": float(skm.accuracy_score(y, pred)),
            "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)),
            "precision_macro": float(
                skm.precision_score(y, pred, labels=labels, average="macro", zero_division=0)
            ),
            "recall_macro": float(
                skm.recall_score(y, pred, labels=labels, average="macro", zero_division=0)
            ),
            "f1_macro": float(
                skm.f1_score(y, pred, labels=labels, average="macro", zero_division=0)
            ),
            "log_loss": float(skm.log_loss(y, proba, labels=labels)),
        }
        present = np.unique(y)
        if len(present) == len(labels) and len(labels) > 1:  # AUC needs every class in y
            if len(labels) == 2:
                auc = skm.roc_auc_score(y, proba[:, 1])
            else:
                auc = skm.roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=labels)
            result["roc_auc"] = float(auc)
        result["confusion_matrix"] = skm.confusion_matrix(y, pred, labels=labels).tolist()
        return result

    def predict(
        self, outputs: np.ndarray, schema: FeatureSchema, temperature: float = 1.0
    ) -> dict[str, np.ndarray]:
        import numpy as np

        proba = _softmax(outputs.astype(np.float64) / temperature)
        classes = np.asarray(schema.classes, dtype=object)
        return {"prediction": classes[proba.argmax(axis=1)], "probabilities": proba}

    def row_scores(self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> np.ndarray:
        return (outputs.argmax(axis=1) == y).astype(float)  # correctness

    def metric(self, name: str, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> float:
        if name == "accuracy":  # alone, without every other metric (bootstrap resamples)
            return float((outputs.argmax(axis=1) == y).mean()) if len(y) else float("nan")
        return super().metric(name, outputs, y, schema)

    def baselines(self, seed: int) -> dict[str, Any]:
        from sklearn.dummy import DummyClassifier
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression

        return {
            "most frequent (dummy)": DummyClassifier(strategy="most_frequent"),
            "logistic regression": LogisticRegression(max_iter=1000),
            "HistGradientBoosting": HistGradientBoostingClassifier(random_state=seed),
        }

    def baseline_outputs(self, estimator: Any, x: np.ndarray, schema: FeatureSchema) -> np.ndarray:
        """Log-probabilities over all K classes (a class absent from the training rows: ~0)."""
        import numpy as np

        proba = np.full((len(x), self.output_dim(schema)), 1e-12)
        proba[:, estimator.classes_.astype(int)] = estimator.predict_proba(x)
        return np.log(np.clip(proba, 1e-12, 1.0))

    def explain(
        self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema, temperature: float = 1.0
    ) -> Explained:
        from danlu.data import to_plain

        classes = list(schema.classes or ())
        proba = self.predict(outputs, schema, temperature)["probabilities"]  # (n, K)
        predicted = proba.argmax(axis=1)
        return Explained(
            targets=predicted,
            confidence=proba.max(axis=1),
            predictions=[to_plain(classes[i]) for i in predicted],
            truths=[to_plain(classes[int(i)]) for i in y],
            what="the predicted class's logit",
        )

    def output_signature(self, schema: FeatureSchema) -> dict[str, Any]:
        from danlu.data import to_plain

        classes = [to_plain(c) for c in schema.classes or ()]
        k = len(classes)
        return {
            "prediction": {"type": "label", "classes": classes, "json_schema": {"enum": classes}},
            "probabilities": score_rows(k),
        }
