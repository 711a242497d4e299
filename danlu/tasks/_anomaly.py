"""Anomaly detection: a score per row, a flag above a threshold fitted on validation rows.

The recipe's ``anomaly:`` block (:class:`~danlu.config.AnomalyConfig`) says which values of the
label column (``data.target``) are anomalous. The data layer prepares that column as a one-hot
row per label (``target_kind = "label_sets"``), so any label type works; the task turns it into
"anomalous or not" with the label columns it resolves against the prepared schema
(:meth:`AnomalyTask.configure`).

Models (``autoencoder``, ``deep_svdd``) output ``(N, 1 + d)``: the anomaly score, then one
contribution per prepared feature (what drove the score). The loss is the mean score of the
training rows — of the normal ones only under ``train_on: normal``, where rows labelled
anomalous are masked out. Once training ends the threshold is chosen on the validation split
(``contamination``: the top ``rate`` of the scores of the rows trained on, as scikit-learn's
``contamination``; ``f1``: the best F1 there) and saved with the model (``decoding.json``). Metrics: AUROC (headline), AUPRC, precision@k, and precision,
recall and F1 at the threshold. Baselines: Isolation Forest, Local Outlier Factor
(``novelty=True``) and a one-class SVM, fitted on the same training rows. Served: ``prediction``
(the flag, true for an anomaly) and ``score`` per row.

Unlabelled rows (``data.target: null``, or left out with no label values): the recipe names the
constant column :data:`~danlu.config.UNLABELLED_TARGET` the data layer adds, every row normal;
label values and ``threshold.method: f1`` are refused then (:meth:`AnomalyTask.check_recipe`).
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from danlu.tasks._base import Explained, ExtraSection, Task

if TYPE_CHECKING:
    import numpy as np
    import torch

    from danlu.config import ConfigIssue, LossConfig, Recipe
    from danlu.data import FeatureSchema, PreparedData

__all__ = ["AnomalyTask"]

_POOL = {"normal": "normal validation", "all": "validation"}
_PROLOGUE = re.compile(r"^.*?(?=<svg)", re.S)
# the models danlu ships for other tasks: their outputs are not anomaly scores
_OTHER_MODELS = frozenset({"mlp", "cnn", "gbdt", "auto", "transformer", "text_cnn"})


def _auroc(score: np.ndarray, flag: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(flag, score))


class AnomalyTask(Task):
    """Scores rows by how anomalous they look; flags those above a fitted threshold.

    Args:
        normal: label values of normal rows (every other value is anomalous).
        anomalous: label values of anomalous rows (every other value is normal).
        train_on: ``normal`` (the loss masks rows labelled anomalous) or ``all``.
        method: how :meth:`fit_decoding` chooses the threshold: ``contamination`` or ``f1``.
        rate: ``contamination``: the share of validation rows flagged.
        k: precision@k's k (None: the number of anomalous rows evaluated).
        threshold: the fitted score threshold (``decoding.json``); None before it is fitted.
        columns: the label columns (indices into ``schema.classes``) that mark a row anomalous,
            resolved by :meth:`configure` (None: from ``normal`` / ``anomalous`` and the schema).

    Attributes:
        centre_rows: after :meth:`configure`, the prepared training rows the model trains on (the
            normal ones under ``train_on: normal``; None for streamed data): Deep SVDD's builder
            fixes its centre from the initial outputs on them. Not saved with the model.
    """

    centre_rows: np.ndarray | None = None

    name = "anomaly"
    input_kinds = frozenset({"numeric", "categorical", "image"})
    target_kind = "label_sets"
    target_dtype = "float32"
    fits_decoding = True
    epoch_metrics = ("auroc",)
    headline = "auroc"
    headline_mode = "max"
    headline_label = "AUROC"
    row_score_label = "each row's share of correctly ordered (normal, anomalous) pairs"
    report_metrics = ("auroc", "auprc", "precision_at_k", "f1", "precision", "recall")

    def __init__(
        self,
        normal: list[Any] | None = None,
        anomalous: list[Any] | None = None,
        train_on: str = "normal",
        method: str = "contamination",
        rate: float = 0.05,
        k: int | None = None,
        threshold: float | None = None,
        columns: list[int] | None = None,
    ) -> None:
        self.normal, self.anomalous = normal, anomalous
        self.train_on, self.method, self.rate, self.k = train_on, method, rate, k
        self.threshold, self.columns = threshold, columns

    def _settings(self, **changes: Any) -> AnomalyTask:
        given = dict(
            normal=self.normal, anomalous=self.anomalous, train_on=self.train_on,
            method=self.method, rate=self.rate, k=self.k, threshold=self.threshold,
            columns=self.columns,
        )  # fmt: skip
        return AnomalyTask(**{**given, **changes})

    # ---- recipe --------------------------------------------------------------------------------

    def check_recipe(self, recipe: Recipe) -> list[ConfigIssue]:
        from danlu.config import ConfigIssue

        issues = super().check_recipe(recipe)
        if recipe.anomaly is None:
            issues.append(
                ConfigIssue(
                    ("anomaly",),
                    "task: anomaly needs an anomaly block naming the anomalous label values",
                    None,
                    "Add anomaly: {anomalous: [VALUE]} (or normal: [VALUE]) with values of "
                    "data.target's column.",
                )
            )
        if isinstance(recipe.data.target, list):
            issues.append(
                ConfigIssue(
                    ("data", "target"),
                    "task: anomaly needs one label column (normal / anomalous rows)",
                    recipe.data.target,
                    "Set data.target to the column whose values anomaly.normal / "
                    "anomaly.anomalous name.",
                )
            )
        issues.extend(_unlabelled_issues(recipe))
        if recipe.data.split.val <= 0:
            issues.append(
                ConfigIssue(
                    ("data", "split", "val"),
                    "task: anomaly chooses its threshold on the validation split, and there is "
                    "none",
                    recipe.data.split.val,
                    "Set data.split.val to 0.1 or more.",
                )
            )
        if recipe.model.type in _OTHER_MODELS:
            issues.append(
                ConfigIssue(
                    ("model", "type"),
                    "this model does not score anomalies",
                    recipe.model.type,
                    "Use model type autoencoder or deep_svdd.",
                )
            )
        return issues

    def configure(self, recipe: Recipe, data: PreparedData) -> AnomalyTask:
        """This task with the recipe's ``anomaly:`` settings, its label values resolved against
        the prepared label columns.

        Raises:
            ConfigError: a label value not in the label column, no normal training row to
                learn from, or ``threshold: {method: f1}`` without anomalous validation rows.
        """
        import numpy as np

        from danlu.config import ConfigIssue, raise_issues

        config = recipe.anomaly
        if config is None:  # check_recipe refused it already; keep mypy and direct callers safe
            raise_issues(self.check_recipe(recipe), recipe._source)
            raise AssertionError("unreachable")
        labels = [str(c) for c in data.schema.classes or ()]
        shown = ", ".join(labels[:20]) + (" …" if len(labels) > 20 else "")
        issues = []
        for key in ("normal", "anomalous"):
            unknown = [v for v in getattr(config, key) or () if str(v) not in labels]
            if unknown:
                issues.append(
                    ConfigIssue(
                        ("anomaly", key),
                        f"not a value of the label column '{data.schema.target}'",
                        unknown[0] if len(unknown) == 1 else unknown,
                        f"Use values the column holds: {shown}.",
                    )
                )
        if issues:
            raise_issues(issues, recipe._source)
        task = self._settings(
            normal=config.normal,
            anomalous=config.anomalous,
            train_on=config.train_on,
            method=config.threshold.method,
            rate=config.threshold.share,
            k=config.k,
        )
        task.columns = task._resolve(data.schema)
        flags_train = task.flags(data.y_train)
        if data.stream is None and len(data.x_train):
            x_train = np.asarray(data.x_train)
            task.centre_rows = x_train[~flags_train] if task.train_on == "normal" else x_train
        where = ("anomaly", "anomalous" if config.anomalous else "normal")
        if task.train_on == "normal" and flags_train.all():
            issues.append(
                ConfigIssue(
                    where,
                    f"no training row is normal: all {len(flags_train)} are labelled anomalous, "
                    "so there is nothing to learn normal behaviour from",
                    getattr(config, where[1]),
                    "List the anomalous values only (the rest count as normal), or give data "
                    "whose training split holds normal rows.",
                )
            )
        if task.method == "f1" and not task.flags(data.y_val).any():
            issues.append(
                ConfigIssue(
                    ("anomaly", "threshold", "method"),
                    "f1 chooses the threshold on anomalous validation rows, and the validation "
                    f"split ({len(data.y_val)} rows) has none",
                    "f1",
                    "Use method: contamination, or a larger data.split.val.",
                )
            )
        if issues:
            raise_issues(issues, recipe._source)
        if not np.any(task.flags(data.y_test)):
            from danlu.logging import get_logger

            get_logger(__name__).warning(
                "The test split holds no anomalous row%s: AUROC, AUPRC, precision@k, recall and "
                "F1 are undefined on it (the report skips them and the sections comparing them); "
                "the threshold and flags are fitted as usual.",
                "" if flags_train.any() else " (nor does the training split: unlabelled data)",
            )
        return task

    def _resolve(self, schema: FeatureSchema) -> list[int]:
        labels = [str(c) for c in schema.classes or ()]
        if self.anomalous:
            wanted = {str(v) for v in self.anomalous}
            return [i for i, label in enumerate(labels) if label in wanted]
        normal = {str(v) for v in self.normal or ()}
        return [i for i, label in enumerate(labels) if label not in normal]

    def flags(self, y: Any) -> np.ndarray:
        """Per row, whether its label marks it anomalous, (n,) bool, from the prepared one-hot
        label rows (n, L)."""
        import numpy as np

        if self.columns is None:
            raise RuntimeError("AnomalyTask.flags needs configure() (or decoding.json) first.")
        y = np.asarray(y)
        if y.ndim == 1:  # a single row, or rows already reduced to 0/1 flags
            return y > 0.5
        return y[:, self.columns].sum(axis=1) > 0.5 if self.columns else np.zeros(len(y), bool)

    # ---- engine --------------------------------------------------------------------------------

    def output_dim(self, schema: FeatureSchema) -> int:
        return 1 + schema.input_dim  # the score, then one contribution per prepared feature

    def make_loss(
        self, class_weights: torch.Tensor | None = None, loss: LossConfig | None = None
    ) -> torch.nn.Module:
        import torch

        if self.columns is None and self.train_on == "normal":  # never train on anomalies silently
            raise RuntimeError("AnomalyTask.make_loss needs configure() first (its label columns).")
        columns = list(self.columns or ())
        normal_only = self.train_on == "normal"

        class _MeanScore(torch.nn.Module):
            """The mean anomaly score of the rows trained on (the normal ones only, or all)."""

            def forward(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                score = outputs[:, 0]  # (N,)
                if not normal_only or not columns:
                    return score.mean()
                weight = (y[:, columns].sum(dim=1) < 0.5).to(score.dtype)  # (N,) 1 = normal
                return (score * weight).sum() / weight.sum().clamp_min(1.0)

        return _MeanScore()

    def quick_metrics(
        self, outputs: torch.Tensor, y: torch.Tensor, schema: FeatureSchema
    ) -> dict[str, float]:
        import torch

        flag = y[:, list(self.columns or ())].sum(dim=1) > 0.5  # (N,)
        positives, negatives = int(flag.sum()), int((~flag).sum())
        if not positives or not negatives:
            return {"auroc": float("nan")}
        ranks = torch.empty(len(flag), dtype=torch.float64)  # Mann-Whitney U (ties: order)
        ranks[outputs[:, 0].argsort()] = torch.arange(1, len(flag) + 1, dtype=torch.float64)
        u = ranks[flag].sum().item() - positives * (positives + 1) / 2
        return {"auroc": u / (positives * negatives)}

    # ---- metrics and predictions ---------------------------------------------------------------

    def metrics(self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> dict[str, Any]:
        import numpy as np
        from sklearn.metrics import average_precision_score

        score = np.asarray(outputs, dtype=np.float64)[:, 0]
        flag = self.flags(y)
        result: dict[str, Any] = {
            "anomalous_rows": int(flag.sum()),
            "flagged_rows": int((score >= self._threshold()).sum()),
        }
        if 0 < flag.sum() < len(flag):  # both kinds of row: the ranking metrics are defined
            result["auroc"] = _auroc(score, flag)
            result["auprc"] = float(average_precision_score(flag, score))
            k = min(self.k or int(flag.sum()), len(flag))
            top = np.argsort(-score, kind="stable")[:k]
            result["precision_at_k"] = float(flag[top].mean())
            result["k"] = k
        if flag.any():  # recall and F1 need anomalous rows (unlabelled rows: the flagged share)
            result.update(self._at_threshold(score, flag))
        result["flagged_share"] = result["flagged_rows"] / max(len(score), 1)
        if self.threshold is not None:
            result["threshold"] = float(self.threshold)
        return result

    def _threshold(self) -> float:
        return float("inf") if self.threshold is None else float(self.threshold)

    def _at_threshold(self, score: np.ndarray, flag: np.ndarray) -> dict[str, float]:
        """Precision, recall and F1 of the flag (score ≥ threshold)."""
        flagged = score >= self._threshold()
        tp = float((flagged & flag).sum())
        precision = tp / max(float(flagged.sum()), 1.0)
        recall = tp / max(float(flag.sum()), 1.0)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        return {"precision": precision, "recall": recall, "f1": f1}

    def metric(self, name: str, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> float:
        import numpy as np

        score, flag = np.asarray(outputs, dtype=np.float64)[:, 0], self.flags(y)
        if name == "auroc":
            if not 0 < flag.sum() < len(flag):
                raise ValueError("AUROC is undefined without both normal and anomalous rows")
            return _auroc(score, flag)
        if name in {"precision", "recall", "f1"}:
            if not flag.any():
                raise ValueError(f"{name} is undefined without anomalous rows")
            return self._at_threshold(score, flag)[name]
        return super().metric(name, outputs, y, schema)

    def predict(
        self, outputs: np.ndarray, schema: FeatureSchema, temperature: float = 1.0
    ) -> dict[str, np.ndarray]:
        import numpy as np

        score = np.asarray(outputs, dtype=np.float64)[:, 0]
        return {"prediction": score >= self._threshold(), "score": score}

    def row_scores(self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> np.ndarray:
        """Each anomalous row's share of normal rows scored below it, each normal row's share
        of anomalous rows scored above it: both halves average to the AUROC, so their mean is
        the AUROC (ties count one half)."""
        import numpy as np

        score, flag = np.asarray(outputs, dtype=np.float64)[:, 0], self.flags(y)
        normal, anomalous = np.sort(score[~flag]), np.sort(score[flag])
        result = np.zeros(len(score))
        if len(normal) and len(anomalous):
            below = np.searchsorted(normal, score[flag], "left")
            ties = np.searchsorted(normal, score[flag], "right") - below
            result[flag] = (below + ties / 2) / len(normal)
            above = len(anomalous) - np.searchsorted(anomalous, score[~flag], "right")
            ties = np.searchsorted(anomalous, score[~flag], "right") - np.searchsorted(
                anomalous, score[~flag], "left"
            )
            result[~flag] = (above + ties / 2) / len(anomalous)
        return result

    def row_losses(self, outputs: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Each row's training loss: its anomaly score (membership inference reads it)."""
        import numpy as np

        return np.asarray(outputs, dtype=np.float64)[:, 0]

    def fit_decoding(
        self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema
    ) -> dict[str, Any] | None:
        """The score threshold on the validation rows: their ``1 - rate`` quantile
        (``contamination``), or the score that maximises their F1 (``f1``)."""
        import numpy as np

        if len(y) == 0:
            return None
        score, flag = np.asarray(outputs, dtype=np.float64)[:, 0], self.flags(y)
        if self.method == "f1" and flag.any():
            candidates = np.unique(score)  # flag the rows whose score ≥ a candidate
            order = np.argsort(-score, kind="stable")
            tp = np.cumsum(flag[order])  # (n,) true positives when the top i + 1 are flagged
            flagged = len(score) - np.searchsorted(np.sort(score), candidates, "left")  # (C,)
            f1 = 2 * tp[flagged - 1] / (flagged + flag.sum())
            threshold = float(candidates[int(np.argmax(f1))])
            rule = "max F1 on the validation rows"
        else:
            # as scikit-learn's contamination: the share flagged among the rows trained on
            pool = score[~flag] if self.train_on == "normal" and (~flag).any() else score
            threshold = float(np.quantile(pool, 1.0 - self.rate, method="higher"))
            rule = f"top {100 * self.rate:g}% of the {_POOL[self.train_on]} rows' scores"
        return {
            "threshold": threshold,
            "rule": rule,
            "method": self.method,
            "rate": self.rate,
            "train_on": self.train_on,
            "k": self.k,
            "columns": list(self.columns or ()),
            "anomalous": [
                str(c) for i, c in enumerate(schema.classes or ()) if i in (self.columns or ())
            ],
        }

    def with_decoding(self, decoding: Mapping[str, Any]) -> AnomalyTask:
        return self._settings(
            threshold=float(decoding["threshold"]),
            columns=[int(c) for c in decoding.get("columns", self.columns or ())],
            method=decoding.get("method", self.method),
            rate=float(decoding.get("rate", self.rate)),
            train_on=decoding.get("train_on", self.train_on),
            k=decoding.get("k", self.k),
        )

    # ---- trust report --------------------------------------------------------------------------

    def baselines(self, seed: int) -> dict[str, Any]:
        from sklearn.dummy import DummyRegressor
        from sklearn.ensemble import IsolationForest
        from sklearn.neighbors import LocalOutlierFactor
        from sklearn.svm import OneClassSVM

        rate = self.rate if self.method == "contamination" else "auto"

        class ConstantScore(DummyRegressor):  # type: ignore[misc]
            """The same score for every row (AUROC 0.5): the reference of no detector."""

            def decision_function(self, x: np.ndarray) -> np.ndarray:
                import numpy as np

                return np.zeros(len(x))

        return {
            "constant score (dummy)": ConstantScore(),
            "Isolation Forest": _OnTrainingRows(
                IsolationForest(contamination=rate, random_state=seed), self
            ),
            "Local Outlier Factor": _OnTrainingRows(
                LocalOutlierFactor(novelty=True, contamination=rate), self
            ),
            "one-class SVM": _OnTrainingRows(OneClassSVM(nu=self.rate, gamma="scale"), self),
        }

    def baseline_outputs(self, estimator: Any, x: np.ndarray, schema: FeatureSchema) -> np.ndarray:
        """The baseline's anomaly score (minus scikit-learn's decision function) shifted by
        the model's threshold, so that the model's threshold flags what the baseline itself
        flags; no feature contributions (zeros)."""
        import numpy as np

        score = -np.asarray(estimator.decision_function(x), dtype=np.float64)
        outputs = np.zeros((len(x), 1 + schema.input_dim))
        outputs[:, 0] = score + (0.0 if self.threshold is None else self.threshold)
        return outputs

    def explain(
        self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema, temperature: float = 1.0
    ) -> Explained:
        import numpy as np

        score = np.asarray(outputs, dtype=np.float64)[:, 0]
        flagged = self.predict(outputs, schema)["prediction"]
        flag = self.flags(y) if len(y) else np.zeros(len(score), bool)
        return Explained(
            targets=np.zeros(len(score), dtype=np.int64),
            confidence=score,
            predictions=["anomaly" if f else "normal" for f in flagged],
            truths=["anomaly" if f else "normal" for f in flag],
            what="the anomaly score",
            notes=[
                "Rows are ranked by anomaly score: 'most confident' are the most anomalous rows."
            ],
        )

    def report_sections(
        self,
        outputs: np.ndarray,
        y: np.ndarray,
        schema: FeatureSchema,
        model: torch.nn.Module | None = None,
    ) -> list[ExtraSection]:
        return [self._scores_section(outputs, y), self._drivers_section(outputs, y, schema)]

    def _scores_section(self, outputs: np.ndarray, y: np.ndarray) -> ExtraSection:
        import numpy as np

        score, flag = np.asarray(outputs, dtype=np.float64)[:, 0], self.flags(y)
        flagged = score >= self._threshold()
        data: dict[str, Any] = {
            "threshold": self.threshold,
            "rule": self.method if self.method == "f1" else f"contamination {self.rate:g}",
            "normal": _summary(score[~flag], flagged[~flag]),
            "anomalous": _summary(score[flag], flagged[flag]),
        }
        section = ExtraSection(
            "anomaly_scores",
            "Anomaly scores",
            data=data,
            summary=(
                f"{int((flagged & flag).sum())} of {int(flag.sum())} anomalous and "
                f"{int((flagged & ~flag).sum())} of {int((~flag).sum())} normal test rows flagged"
                if flag.any()
                else f"{int(flagged.sum())} of {len(score)} test rows flagged (none is labelled "
                "anomalous)"
            ),
        )
        section.figures["Scores of normal and anomalous test rows, with the threshold"] = (
            _histogram(score, flag, self.threshold)
        )
        section.notes.append(
            "The threshold was chosen on the validation rows ("
            + (
                "the score of the best F1 there"
                if self.method == "f1"
                else f"the top {100 * self.rate:g}% of the {_POOL[self.train_on]} rows' scores "
                "are flagged, as scikit-learn's contamination"
            )
            + "); the model was trained on "
            + ("normal rows only." if self.train_on == "normal" else "every training row.")
        )
        if not flag.any():
            section.notes.append(
                "No test row is labelled anomalous (unlabelled or normal-only data): the "
                "distribution is that of every test row, and the label-based metrics (AUROC, "
                "AUPRC, precision@k, recall, F1) and the sections that compare them (baselines, "
                "robustness) are skipped."
            )
        if flag.any() and (~flag).any() and np.median(score[flag]) <= np.median(score[~flag]):
            section.flags.append(
                "anomalous rows do not score higher than normal ones (median): the model does "
                "not separate them"
            )
        return section

    def _drivers_section(
        self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema, rows: int = 10
    ) -> ExtraSection:
        """Per row, the features that drove its score (the model's contributions)."""
        import numpy as np

        outputs = np.asarray(outputs, dtype=np.float64)
        score, parts = outputs[:, 0], outputs[:, 1:]
        names = list(schema.encoded_names) or [f"x{j}" for j in range(parts.shape[1])]
        flag = self.flags(y)
        share = np.abs(parts) / np.maximum(np.abs(parts).sum(axis=1, keepdims=True), 1e-12)
        top_rows: list[dict[str, Any]] = []
        for i in np.argsort(-score, kind="stable")[:rows]:
            best = np.argsort(-share[i], kind="stable")[:3]
            top_rows.append(
                {
                    "row": int(i),
                    "score": float(score[i]),
                    "flagged": bool(score[i] >= self._threshold()),
                    "anomalous": bool(flag[i]),
                    "drivers": [
                        {
                            "feature": names[j],
                            "share": float(share[i, j]),
                            "value": float(parts[i, j]),
                        }
                        for j in best
                    ],
                }
            )
        mean_share = share[flag].mean(axis=0) if flag.any() else share.mean(axis=0)
        overall = [
            {"feature": names[j], "share": float(mean_share[j])}
            for j in np.argsort(-mean_share, kind="stable")[:10]
        ]
        section = ExtraSection(
            "anomaly_drivers",
            "What drove the scores",
            data={"top_rows": top_rows, "features": overall},
            summary=(
                "most anomalous test row driven by "
                + ", ".join(d["feature"] for d in top_rows[0]["drivers"])
                if top_rows
                else None
            ),
        )
        section.notes.append(
            "Each feature's share of a row's |contribution|: the per-feature squared "
            "reconstruction error for an autoencoder, gradient × input of the score for Deep "
            "SVDD (features after preprocessing). 'features' averages the shares over the "
            + ("anomalous test rows." if flag.any() else "test rows (none is labelled anomalous).")
        )
        return section

    # ---- signature -----------------------------------------------------------------------------

    def output_signature(self, schema: FeatureSchema) -> dict[str, Any]:
        return {
            "prediction": {
                "type": "flag",
                "description": "true when the row's score reaches the threshold (an anomaly)",
                "threshold": self.threshold,
                "json_schema": {"type": "boolean"},
            },
            "score": {
                "type": "float",
                "description": "the anomaly score: larger is more anomalous",
                "json_schema": {"type": "number"},
            },
        }


class _OnTrainingRows:
    """A scikit-learn novelty detector fitted on the rows the model trains on: the normal ones
    under ``train_on: normal`` (its ``fit`` drops the rows the labels mark anomalous)."""

    def __init__(self, estimator: Any, task: AnomalyTask) -> None:
        self.estimator, self.task = estimator, task

    def fit(self, x: np.ndarray, y: np.ndarray) -> _OnTrainingRows:
        keep = ~self.task.flags(y) if self.task.train_on == "normal" else slice(None)
        self.estimator.fit(x[keep])
        return self

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        result: np.ndarray = self.estimator.decision_function(x)
        return result


def _unlabelled_issues(recipe: Recipe) -> list[ConfigIssue]:
    """Label settings a recipe without ``data.target`` (unlabelled rows) cannot honour."""
    from danlu.config import UNLABELLED_TARGET, UNLABELLED_VALUE, ConfigIssue

    config = recipe.anomaly
    if recipe.data.target != UNLABELLED_TARGET or config is None:
        return []
    issues = []
    for key in ("normal", "anomalous"):
        values = getattr(config, key)
        if values and (key == "anomalous" or [str(v) for v in values] != [UNLABELLED_VALUE]):
            issues.append(
                ConfigIssue(
                    ("anomaly", key),
                    "names label values, but data.target is not set: the rows are unlabelled "
                    "(every row normal)",
                    values,
                    f"Set data.target to the label column, or remove anomaly.{key}.",
                )
            )
    if config.threshold.method == "f1":
        issues.append(
            ConfigIssue(
                ("anomaly", "threshold", "method"),
                "f1 chooses the threshold on anomalous labels, and without data.target the "
                "rows are unlabelled",
                "f1",
                "Use method: contamination (with a rate), or set data.target to a label column.",
            )
        )
    return issues


def _summary(score: np.ndarray, flagged: np.ndarray) -> dict[str, Any]:
    import numpy as np

    if not len(score):
        return {"rows": 0}
    q = np.quantile(score, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {
        "rows": len(score),
        "flagged": int(flagged.sum()),
        "quantiles": {
            p: float(v) for p, v in zip(("5%", "25%", "50%", "75%", "95%"), q, strict=True)
        },
    }


def _histogram(score: np.ndarray, flag: np.ndarray, threshold: float | None) -> str:
    """Overlaid histograms of the normal and anomalous rows' scores, with the threshold, as
    inline SVG (matplotlib on Agg, as the evaluator's figures: the task layer cannot import
    ``danlu.evaluate._plots``)."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    try:
        high = np.quantile(score, 0.995) if len(score) else 1.0
        edges = np.linspace(float(score.min()) if len(score) else 0.0, float(high), 40)
        clipped = np.minimum(score, high)
        for rows, label, colour in ((~flag, "normal", "#4c78a8"), (flag, "anomalous", "#e45756")):
            if rows.any():
                ax.hist(
                    clipped[rows],
                    bins=edges.tolist(),
                    alpha=0.6,
                    density=True,
                    label=label,
                    color=colour,
                )
        if threshold is not None and np.isfinite(threshold):
            ax.axvline(min(threshold, high), color="black", linestyle="--", label="threshold")
        ax.set_xlabel("anomaly score (clipped at the 99.5th percentile)")
        ax.set_ylabel("density")
        ax.legend(frameon=False, loc="upper right")  # "best" warns on many rows
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    finally:
        plt.close(fig)
    return _PROLOGUE.sub("", buffer.getvalue(), count=1)
