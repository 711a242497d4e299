"""What every section of the trust report reads (:class:`EvalData`) and returns (:class:`Section`).

A section is a plain function ``section(data, config) -> Section``: it reads the model and the
prepared splits from ``data``, and returns JSON-able results, inline SVG figures, one phrase for
the report's summary and notes. The evaluator times each one and assembles the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from danlu.tasks import ExtraSection

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

    from danlu.data import FeatureSchema, PreparedData, Preprocessor
    from danlu.data._prepared import TextSplits
    from danlu.tasks import Task

__all__ = ["EvalData", "InputGroup", "Section", "input_groups"]


@dataclass(frozen=True)
class InputGroup:
    """One raw feature and the model input columns it became.

    Attributes:
        name: the raw feature's name (or the encoded column's, after feature reduction).
        kind: ``numeric``, ``categorical``, ``boolean`` or ``text`` (a text column's token ids);
            reduced columns (PCA ...) are numeric.
        columns: positions of its columns in the model's input, ascending.
    """

    name: str
    kind: str
    columns: tuple[int, ...]

    @property
    def continuous(self) -> bool:
        """Whether small perturbations of this input are meaningful (numeric features)."""
        return self.kind == "numeric"


def input_groups(schema: FeatureSchema) -> list[InputGroup]:
    """Map each model input column back to its raw feature (one-hot columns share one group).

    Example:
        >>> from danlu.data import Feature, FeatureSchema
        >>> s = FeatureSchema((Feature("x", "numeric"), Feature("c", "categorical", ("a", "b"))),
        ...                   "y", "regression", None, 0.0, 1.0, None, 3, ("x", "c=a", "c=b"))
        >>> [(g.name, g.columns) for g in input_groups(s)]
        [('x', (0,)), ('c', (1, 2))]
    """
    kinds = {f.name: f.kind for f in schema.features}
    # a text column's max_length token-id columns (body#0 ...) are one input
    text_of = {i: t.name for t in schema.text_slices() for i in range(t.start, t.stop)}
    groups: dict[str, list[int]] = {}
    group_kind: dict[str, str] = {}
    for i, name in enumerate(schema.encoded_names):
        base = text_of.get(i) or (name if name in kinds else name.split("=", 1)[0])
        if base not in kinds:  # a reduced column (pc1, ...): its own numeric group
            base, kind = name, "numeric"
        else:
            kind = kinds[base]
        groups.setdefault(base, []).append(i)
        group_kind[base] = kind
    return [InputGroup(n, group_kind[n], tuple(cols)) for n, cols in groups.items()]


@dataclass
class EvalData:
    """The model and the data a report is made from.

    Attributes:
        model: the trained model (put in eval mode by the evaluator).
        task: the task (metrics, decoding of outputs).
        schema: the model's feature schema.
        x: the evaluation rows after preprocessing, float32 (n, input_dim).
        y: their prepared targets (class indices, or standardized values for regression).
        frame: the same rows raw (every column but the target), aligned with ``x`` row by row.
        x_train, y_train: the training split (may have zero rows, e.g. for an external --data).
        x_val, y_val: the validation split (may have zero rows).
        temperature: the logits' temperature when the model is temperature-scaled (else 1).
        files: size in bytes of each stored model file (``model.safetensors``, ``model.onnx``).
        run_metrics: the training run's metrics (``train_seconds``, ``energy_joules`` ...).
        run_tags: the training run's tags (``energy_method`` ...).
        history: the training run's metrics per epoch (``train_loss``, ``val_loss`` ...), if known.
        device: where the model runs.
        preprocessor: the fitted preprocessing (its text columns' tokenizers turn token ids
            back into tokens, and raw strings into ids), when known.
        texts: the raw strings of the text columns for the training and validation rows (the
            TF-IDF baseline's); None without text columns or training data. The evaluation
            rows' are in ``frame`` (:attr:`test_texts`).
        privacy: the DP-SGD record of the model's training (the model card's ``privacy``: ε
            spent, δ, noise multiplier ...); None when it was not trained with ``train.privacy``.
        held_out: whether the evaluation rows were held out from training (the test split);
            False for a file passed with ``--data``, which may hold training rows (the
            membership audit then counts only the validation rows as non-members).
    """

    model: torch.nn.Module
    task: Task
    schema: FeatureSchema
    x: np.ndarray
    y: np.ndarray
    frame: pd.DataFrame
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    temperature: float = 1.0
    files: dict[str, int] = field(default_factory=dict)
    run_metrics: dict[str, float] = field(default_factory=dict)
    run_tags: dict[str, str] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    device: str = "cpu"
    preprocessor: Preprocessor | None = None
    texts: TextSplits | None = None
    privacy: dict[str, Any] | None = None
    held_out: bool = True

    @classmethod
    def from_prepared(
        cls, model: torch.nn.Module, task: Task, data: PreparedData, **kwargs: Any
    ) -> EvalData:
        """Evaluate on the test split of ``data`` (its train / val splits feed baselines and
        calibration). ``kwargs`` set the other attributes (``temperature``, ``files`` ...)."""
        return cls(
            model=model,
            task=task,
            schema=data.schema,
            x=data.x_test,
            y=data.y_test,
            frame=data.test_frame,
            x_train=data.x_train,
            y_train=data.y_train,
            x_val=data.x_val,
            y_val=data.y_val,
            **{"preprocessor": data.preprocessor, "texts": data.texts, **kwargs},
        )

    @property
    def classification(self) -> bool:
        """A single-label class target: per-class tables, confusion matrix, parity per class."""
        return self.task.target_kind == "classes"

    def outputs(self, x: np.ndarray, batch_size: int = 2048) -> np.ndarray:
        """The model's raw outputs (logits / standardized values) for prepared rows, in batches.

        Logits are divided by ``temperature``; shape (n, output_dim), float32.
        """
        import numpy as np
        import torch

        self.model.eval()
        parts = []
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                batch = torch.as_tensor(x[start : start + batch_size], device=self.device)
                parts.append(self.model(batch).float().cpu().numpy())
        width = self.task.output_dim(self.schema)
        out = np.concatenate(parts) if parts else np.zeros((0, width), dtype=np.float32)
        return out / self.temperature if self.task.calibrates else out

    @cached_property
    def test_outputs(self) -> np.ndarray:
        """``outputs(x)``, computed once."""
        return self.outputs(self.x)

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """Classification: softmax of outputs, (n, K) float64."""
        return self.task.predict(outputs, self.schema)["probabilities"]

    @cached_property
    def groups(self) -> list[InputGroup]:
        return input_groups(self.schema)

    @property
    def text_columns(self) -> tuple[str, ...]:
        """The schema's text features, in order (empty for tabular and image data)."""
        return tuple(t.name for t in self.schema.text_slices())

    @cached_property
    def test_texts(self) -> dict[str, np.ndarray]:
        """Each text column of the evaluation rows as an object array of ``str`` (read from
        ``frame``), aligned with ``x``; empty without text columns."""
        from danlu.data._prepared import raw_texts

        return raw_texts(self.frame, self.text_columns) if self.text_columns else {}


@dataclass
class Section(ExtraSection):
    """One section of the trust report.

    Attributes:
        key: stable identifier (``metrics``, ``robustness`` ...), the JSON key.
        title: the heading in the HTML report.
        data: the results, plain JSON types only.
        figures: caption → inline SVG markup (``danlu.evaluate._plots.svg``).
        summary: one phrase for the report's opening paragraph, or None.
        notes: sentences shown under the section (what was skipped and why, methods used).
        flags: problems a reviewer must see (a fairness gap over its threshold ...).
        seconds: time the section took (set by the evaluator).
    """

    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form (figures are left to the HTML report)."""
        return {
            "title": self.title,
            "summary": self.summary,
            "notes": list(self.notes),
            "flags": list(self.flags),
            "seconds": round(self.seconds, 3),
            **self.data,
        }
