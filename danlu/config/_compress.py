"""The ``compress:`` block: smaller and faster variants of the trained model, each measured on
the test split and the runtime that serves it, kept only when it passes the accuracy gate::

    compress:
      quantize: {methods: [torch-dynamic, ort-dynamic, ort-static]}
      prune: {sparsity: 0.5, structured: true, steps: 2, finetune_epochs: 3}
      distill: {student: {type: mlp, hidden: [32]}, alpha: 0.5, temperature: 4}
      low_rank: {energy: 0.9, finetune_epochs: 2}
      max_metric_drop: 0.005       # in the headline metric's units: 0.005 = half a point
      objective: latency           # or size, throughput: the best passing variant gets `alias`
      alias: fast

Every method is optional; ``compress: {}`` tries every int8 quantization. Variants that pass are
registered as versions of the recipe's ``register.name`` (or ``compress.name``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

__all__ = [
    "QUANTIZE_METHODS",
    "CompressConfig",
    "DistillConfig",
    "LowRankConfig",
    "PruneConfig",
    "QuantizeConfig",
]

#: int8 quantizations danlu can make; which is fastest depends on the model, so each is measured.
QUANTIZE_METHODS = ("torch-dynamic", "ort-dynamic", "ort-static", "torchao")
QuantizeMethod = Literal["torch-dynamic", "ort-dynamic", "ort-static", "torchao"]


def _default_methods() -> list[QuantizeMethod]:
    return ["torch-dynamic", "ort-dynamic", "ort-static"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class QuantizeConfig(_Strict):
    """int8 variants of the trained model, each measured where it will be served."""

    methods: list[QuantizeMethod] = Field(
        default_factory=_default_methods,
        min_length=1,
        description="torch-dynamic: torch's dynamic int8 Linear layers (served by torch); "
        "ort-dynamic / ort-static: ONNX Runtime's dynamic int8 and static QDQ int8 calibrated "
        "on training rows (served by ONNX Runtime); torchao: torchao's int8 weights, when it "
        "is installed.",
    )
    calibration_rows: Annotated[int, Field(ge=1, le=100_000)] = Field(
        256, description="Training rows that calibrate the static quantization's ranges."
    )


class PruneConfig(_Strict):
    """Pruning to a target sparsity, fine-tuned by the engine."""

    sparsity: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        description="Share of the weights (unstructured) or of the channels / neurons "
        "(structured) to remove, in [0, 1)."
    )
    structured: bool = Field(
        False,
        description="Remove whole channels / neurons (the model really is smaller and faster); "
        "false: zero the smallest weights globally (global magnitude pruning).",
    )
    norm: Literal["l1", "l2"] = Field(
        "l2", description="The norm that ranks channels / neurons for structured pruning."
    )
    steps: Annotated[int, Field(ge=1, le=20)] = Field(
        1,
        description="Iterative schedule: prune a little and fine-tune, this many times, up to "
        "the target sparsity.",
    )
    finetune_epochs: Annotated[int, Field(ge=0, le=1000)] = Field(
        2, description="Epochs of fine-tuning after each pruning step (0: none)."
    )
    learning_rate: float | None = Field(
        None,
        gt=0,
        description="The fine-tuning learning rate (default: the recipe's: a structurally pruned "
        "network needs real training to recover, measured on the digits CNN).",
    )


class DistillConfig(_Strict):
    """Knowledge distillation: a student trained on the teacher's soft targets."""

    student: dict[str, Any] = Field(
        description="The student's model block (any model the recipe can build), e.g. "
        "{type: mlp, hidden: [32]}."
    )
    teacher: str | None = Field(
        None,
        description="A run id or a registered model (NAME:VERSION, NAME@ALIAS); default: the "
        "model this run trained.",
    )
    alpha: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.5,
        description="Weight of the soft-target loss: α·KL(teacher ‖ student at T)·T² + "
        "(1 − α)·task loss.",
    )
    temperature: Annotated[float, Field(gt=0.0, le=100.0)] = Field(
        4.0, description="The softmax temperature of the soft targets."
    )
    epochs: PositiveInt | None = Field(
        None, description="The student's training epochs (default: the recipe's train.epochs)."
    )
    augment: bool = Field(
        True,
        description="Train the student on the recipe's augmented batches (data.augment); "
        "false: on the rows as prepared, the teacher's soft targets its regulariser.",
    )


class LowRankConfig(_Strict):
    """SVD factorisation of the Linear layers, then fine-tuning."""

    rank: PositiveInt | None = Field(
        None, description="Keep this many singular values in every factorised layer."
    )
    energy: Annotated[float, Field(gt=0.0, le=1.0)] | None = Field(
        None,
        description="Keep the fewest singular values holding this share of each layer's "
        "squared singular values (e.g. 0.9).",
    )
    min_features: Annotated[int, Field(ge=2)] = Field(
        32,
        description="Layers whose smaller side is below this are left whole (factorising them "
        "saves nothing).",
    )
    finetune_epochs: Annotated[int, Field(ge=0, le=1000)] = Field(
        2, description="Epochs of fine-tuning after factorising (0: none)."
    )

    @model_validator(mode="after")
    def _one_target(self) -> LowRankConfig:
        if (self.rank is None) == (self.energy is None):
            raise ValueError(
                "set exactly one of rank (e.g. 16) or energy (e.g. 0.9) to say how much of each "
                "layer to keep"
            )
        return self


class CompressConfig(_Strict):
    """Compression after training: each variant measured, gated on accuracy, registered."""

    quantize: QuantizeConfig | None = Field(
        default_factory=QuantizeConfig,
        description="int8 quantization (default: every method; false: none).",
    )
    prune: PruneConfig | None = None
    distill: DistillConfig | None = None
    low_rank: LowRankConfig | None = None
    max_metric_drop: Annotated[float, Field(ge=0.0)] = Field(
        0.005,
        description="The largest drop of the headline test metric a variant may have against "
        "the model it compresses, in the metric's units (0.005: half a point of accuracy).",
    )
    objective: Literal["latency", "size", "throughput"] = Field(
        "latency",
        description="What the best passing variant is best at: batch-1 latency, size on disk "
        "or batch-64 throughput; it gets `alias`.",
    )
    alias: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9._-]{0,99}$")] | None = Field(
        "fast", description="The alias of the best passing variant (null: none)."
    )
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")] | None = Field(
        None,
        description="The registered model the variants become versions of (default: "
        "register.name; without either, nothing is registered).",
    )
    bootstrap: Annotated[int, Field(ge=0, le=100_000)] = Field(
        1000, description="Resamples behind each variant's confidence interval (0: none)."
    )
    repeats: Annotated[int, Field(ge=1, le=1000)] = Field(
        20, description="Timed repeats of each latency / throughput measurement (the median)."
    )

    @model_validator(mode="before")
    @classmethod
    def _switches(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("quantize"), bool | str):
            value = data["quantize"]  # quantize: int8 / true: every method; false: none
            if value is False:
                return {**data, "quantize": None}
            if value is True or value == "int8":
                return {**data, "quantize": {}}
        return data
