"""Multi-label classification: each row holds a *set* of labels (tags, GO terms, topics).

One sigmoid output per label, trained with binary cross-entropy on the multi-hot target the data
layer prepares (``target_kind = "label_sets"``: a column of label lists, ``a|b`` strings, or
several 0/1 columns given as ``data.target: [c1, c2, ...]``). Once training ends, each label gets
its own decision threshold, chosen on the validation split to maximise that label's F1 and saved
with the model (``decoding.json``). Metrics: micro- and macro-F1, subset accuracy, Hamming loss
and per-label ROC-AUC; the baseline is a one-vs-rest logistic regression. Served as a list of
labels per row with a score per label.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from danlu.errors import StoreError
from danlu.tasks._base import Explained, ExtraSection, Task, score_rows

if TYPE_CHECKING:
    import numpy as np
    import torch

    from danlu.config import LossConfig
    from danlu.data import FeatureSchema

__all__ = ["MultiLabelTask"]

_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))  # candidate thresholds 0.05 … 0.95


def _sigmoid(outputs: np.ndarray) -> np.ndarray:
    import numpy as np

    return 1.0 / (1.0 + np.exp(-np.clip(outputs.astype(np.float64), -60, 60)))


def _counts(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-label true positives, false positives and false negatives, each (L,)."""
    tp = (pred & truth).sum(axis=0)
    return tp, (pred & ~truth).sum(axis=0), (~pred & truth).sum(axis=0)


def _f1(tp: Any, fp: Any, fn: Any) -> Any:
    """F1 from counts; 0 where it is undefined (no true and no predicted positives), as
    scikit-learn's ``zero_division=0``."""
    import numpy as np

    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


class MultiLabelTask(Task):
    """Several independent yes/no outputs, one per label.

    Args:
        thresholds: per-label decision thresholds on the sigmoid scores (default 0.5 each);
            fitted on the validation split by :meth:`fit_decoding`.
    """

    name = "multilabel"
    input_kinds = frozenset({"numeric", "categorical", "image", "text"})
    target_kind = "label_sets"
    target_dtype = "float32"
    fits_decoding = True
    epoch_metrics = ("micro_f1", "subset_accuracy")
    headline = "micro_f1"
    headline_mode = "max"
    headline_label = "micro-F1"
    row_score_label = "per-row F1"
    report_metrics = ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss", "roc_auc_macro")

    def __init__(self, thresholds: Any = None) -> None:
        import numpy as np

        self.thresholds = None if thresholds is None else np.asarray(thresholds, dtype=np.float64)

    def _decide(self, scores: np.ndarray) -> np.ndarray:
        """Multi-hot decisions (n, L) bool from sigmoid scores."""
        if self.thresholds is None:
            return scores >= 0.5
        if self.thresholds.shape != (scores.shape[1],):
            raise StoreError(
                f"decoding.json holds {len(self.thresholds)} thresholds for a model with "
                f"{scores.shape[1]} labels; re-register the model."
            )
        return scores >= self.thresholds

    # ---- engine --------------------------------------------------------------------------------

    def output_dim(self, schema: FeatureSchema) -> int:
        assert schema.classes is not None, "multi-label schema without labels"
        return len(schema.classes)

    def make_loss(
        self, class_weights: torch.Tensor | None = None, loss: LossConfig | None = None
    ) -> torch.nn.Module:
        import torch

        return torch.nn.BCEWithLogitsLoss()  # outputs (N, L) logits, y (N, L) in {0, 1}

    def quick_metrics(
        self, outputs: torch.Tensor, y: torch.Tensor, schema: FeatureSchema
    ) -> dict[str, float]:
        pred, truth = outputs > 0, y > 0.5  # (N, L): sigmoid ≥ 0.5 while training
        tp = (pred & truth).sum().item()
        wrong = (pred ^ truth).sum().item()
        return {
            "micro_f1": 2 * tp / max(2 * tp + wrong, 1),
            "subset_accuracy": (pred == truth).all(dim=1).float().mean().item(),
        }

    # ---- metrics and predictions ---------------------------------------------------------------

    def metrics(self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> dict[str, Any]:
        import numpy as np
        from sklearn.metrics import roc_auc_score

        scores = _sigmoid(outputs)
        pred, truth = self._decide(scores), np.asarray(y) > 0.5
        result: dict[str, Any] = dict(self._fast(pred, truth))
        tp, fp, fn = _counts(pred, truth)
        per_label, aucs = [], []
        for j, label in enumerate(schema.classes or range(pred.shape[1])):
            auc = None
            if 0 < truth[:, j].sum() < len(truth):  # ROC-AUC needs both outcomes
                auc = float(roc_auc_score(truth[:, j], scores[:, j]))
                aucs.append(auc)
            per_label.append(
                {
                    "label": str(label),
                    "support": int(truth[:, j].sum()),
                    "predicted": int(pred[:, j].sum()),
                    "f1": float(_f1(tp[j], fp[j], fn[j])),
                    "roc_auc": auc,
                    "threshold": 0.5 if self.thresholds is None else float(self.thresholds[j]),
                }
            )
        if aucs:
            result["roc_auc_macro"] = float(np.mean(aucs))
        result["per_label"] = per_label
        return result

    def _fast(self, pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
        """The count-based metrics, in numpy (the report bootstraps them 1000 times)."""
        tp, fp, fn = _counts(pred, truth)
        return {
            "micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())),
            "macro_f1": float(_f1(tp, fp, fn).mean()),
            "subset_accuracy": float((pred == truth).all(axis=1).mean()),
            "hamming_loss": float((pred != truth).mean()),
        }

    def metric(self, name: str, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> float:
        if name in {"micro_f1", "macro_f1", "subset_accuracy", "hamming_loss"}:
            return self._fast(self._decide(_sigmoid(outputs)), y > 0.5)[name]
        return super().metric(name, outputs, y, schema)

    def predict(
        self, outputs: np.ndarray, schema: FeatureSchema, temperature: float = 1.0
    ) -> dict[str, np.ndarray]:
        import numpy as np

        scores = _sigmoid(outputs)
        decided = self._decide(scores)
        labels = list(schema.classes or ())
        prediction = np.empty(len(scores), dtype=object)  # one list of labels per row
        for i, row in enumerate(decided):
            prediction[i] = [labels[j] for j in np.flatnonzero(row)]
        return {"prediction": prediction, "scores": scores}

    def row_scores(self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> np.ndarray:
        """Example-based F1 of each row (1 when it has no label and none is predicted)."""
        import numpy as np

        pred, truth = self._decide(_sigmoid(outputs)), np.asarray(y) > 0.5
        both = (pred & truth).sum(axis=1)
        sizes = pred.sum(axis=1) + truth.sum(axis=1)
        return np.where(sizes > 0, 2 * both / np.maximum(sizes, 1), 1.0)

    def fit_decoding(
        self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema
    ) -> dict[str, Any] | None:
        """Per-label thresholds maximising each label's F1 on the validation rows (0.5 for a
        label the validation rows never hold: nothing to tune it on)."""
        import numpy as np

        if len(y) == 0:
            return None
        scores, truth = _sigmoid(outputs), np.asarray(y) > 0.5
        grid = np.asarray(_GRID)  # (G,)
        decided = scores[:, :, None] >= grid  # (n, L, G)
        positives = truth[:, :, None]
        tp = (decided & positives).sum(axis=0)  # (L, G)
        fp = (decided & ~positives).sum(axis=0)
        fn = (~decided & positives).sum(axis=0)
        f1 = _f1(tp, fp, fn)  # (L, G)
        # ties go to the threshold nearest 0.5, the untuned default
        order = np.argsort(np.abs(grid - 0.5), kind="stable")
        best = order[np.argmax(f1[:, order], axis=1)]
        thresholds = np.where(truth.any(axis=0), grid[best], 0.5)
        return {"thresholds": [float(t) for t in thresholds], "rule": "max F1 per label"}

    def with_decoding(self, decoding: Mapping[str, Any]) -> MultiLabelTask:
        return MultiLabelTask(thresholds=decoding["thresholds"])

    # ---- trust report --------------------------------------------------------------------------

    def baselines(self, seed: int) -> dict[str, Any]:
        from sklearn.dummy import DummyClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier

        return {
            "label frequency (dummy)": DummyClassifier(strategy="prior"),
            "one-vs-rest logistic regression": OneVsRestClassifier(
                LogisticRegression(max_iter=1000)
            ),
        }

    def baseline_target(self, y: np.ndarray) -> np.ndarray:
        return (y > 0.5).astype("int64")

    def baseline_outputs(self, estimator: Any, x: np.ndarray, schema: FeatureSchema) -> np.ndarray:
        """Logits of the baseline's per-label probabilities, (n, L), decided at 0.5 per label
        (ROC-AUC is unchanged by the shift that makes the model's thresholds do that)."""
        import numpy as np

        proba = estimator.predict_proba(x)
        if isinstance(proba, list):  # multi-output estimators: one (n, 2) array per label
            proba = np.column_stack([p[:, -1] if p.shape[1] > 1 else p[:, 0] for p in proba])
        p = np.clip(np.asarray(proba, dtype=np.float64), 1e-7, 1 - 1e-7)
        logits = np.log(p / (1 - p))
        if self.thresholds is not None:  # shifted so that the model's thresholds decide at 0.5:
            t = np.clip(self.thresholds, 1e-7, 1 - 1e-7)  # a baseline is not tuned on validation
            logits = logits + np.log(t / (1 - t))
        return logits

    def explain(
        self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema, temperature: float = 1.0
    ) -> Explained:
        import numpy as np

        labels = list(schema.classes or ())
        scores = _sigmoid(outputs)
        truth = np.asarray(y) > 0.5 if np.ndim(y) == 2 else np.zeros_like(scores, dtype=bool)
        return Explained(
            targets=scores.argmax(axis=1),
            confidence=scores.max(axis=1),
            predictions=[list(map(str, p)) for p in self.predict(outputs, schema)["prediction"]],
            truths=[[str(labels[j]) for j in np.flatnonzero(row)] for row in truth],
            what="the logit of each row's top-scoring label",
        )

    def report_sections(
        self,
        outputs: np.ndarray,
        y: np.ndarray,
        schema: FeatureSchema,
        model: torch.nn.Module | None = None,
    ) -> list[ExtraSection]:
        import numpy as np

        per_label = self.metrics(outputs, y, schema)["per_label"]
        truth = np.asarray(y) > 0.5
        cardinality = float(truth.sum(axis=1).mean()) if len(truth) else 0.0
        weakest = min(per_label, key=lambda r: r["f1"])
        section = ExtraSection(
            "labels",
            "Labels",
            data={"label_cardinality": cardinality, "per_label": per_label},
            summary=f"{len(per_label)} labels; weakest '{weakest['label']}' (F1 {weakest['f1']:.2f})",
        )
        section.notes.append(
            f"Rows hold {cardinality:.2f} labels on average. Each label's threshold was chosen on "
            "the validation rows to maximise its F1 (0.5 when the validation rows lack it); the "
            "baselines decide at 0.5."
        )
        if self.thresholds is not None:  # what the tuned thresholds bought, on the test rows
            plain = MultiLabelTask()._fast(_sigmoid(outputs) >= 0.5, truth)
            tuned = self._fast(self._decide(_sigmoid(outputs)), truth)
            section.data["thresholds"] = [
                {"thresholds": "tuned on validation", **tuned},
                {"thresholds": "0.5 for every label", **plain},
            ]
            section.notes.append(
                "Per-label F1 thresholds favour the rare labels (macro-F1) and predict more "
                f"labels per row: macro-F1 {plain['macro_f1']:.3f} → {tuned['macro_f1']:.3f}, "
                f"micro-F1 {plain['micro_f1']:.3f} → {tuned['micro_f1']:.3f}, Hamming loss "
                f"{plain['hamming_loss']:.3f} → {tuned['hamming_loss']:.3f} against 0.5 everywhere."
            )
        rare = [r["label"] for r in per_label if r["support"] < 10]
        if rare:
            section.notes.append(
                f"Labels with fewer than 10 test rows give unreliable figures: {', '.join(rare)}."
            )
        return [section]

    # ---- signature -----------------------------------------------------------------------------

    def output_signature(self, schema: FeatureSchema) -> dict[str, Any]:
        from danlu.data import to_plain

        labels = [to_plain(c) for c in schema.classes or ()]
        k = len(labels)
        return {
            "prediction": {
                "type": "labels",
                "classes": labels,
                "json_schema": {"type": "array", "items": {"enum": labels}, "uniqueItems": True},
            },
            "scores": score_rows(k),
        }
