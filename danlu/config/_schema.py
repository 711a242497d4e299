"""The recipe schema: pydantic models, strict (unknown keys are errors).

The model section is the one open block: its ``type`` names a registered builder, and the
builder's own spec validates the remaining keys (see ``danlu.models``).
"""

from __future__ import annotations

import warnings
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    model_validator,
)

__all__ = [
    "SCHEMA_VERSION",
    "CheckpointConfig",
    "DataConfig",
    "EarlyStoppingConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PrepareConfig",
    "Recipe",
    "RegisterConfig",
    "SchedulerConfig",
    "SplitConfig",
    "TrainConfig",
]

SCHEMA_VERSION: Literal[1] = 1

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
FeatureKind = Literal["numeric", "categorical", "boolean", "ignore"]


class Strict(BaseModel):
    """Base of every recipe block: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitConfig(Strict):
    """How rows are split into train / validation / test."""

    test: Fraction = Field(0.2, description="Fraction of rows held out for the final test.")
    val: Fraction = Field(0.1, description="Fraction of rows used for validation each epoch.")
    stratify: bool | None = Field(
        None, description="Keep class proportions in every split (default: on for classification)."
    )
    seed: int = Field(0, description="Seed of the split; the same seed gives the same rows.")

    @model_validator(mode="after")
    def _leave_rows_for_training(self) -> SplitConfig:
        if self.test + self.val >= 0.9:
            raise ValueError(
                f"test + val must leave at least 10% of rows for training; got {self.test} + {self.val}"
            )
        return self


class OutlierConfig(Strict):
    """Remove training rows whose numeric features are outliers (training split only)."""

    method: Literal["zscore", "iqr"] = "zscore"
    threshold: PositiveFloat | None = Field(
        None, description="z-score cut (default 3.0) or IQR multiplier (default 1.5)."
    )


class PrepareConfig(Strict):
    """Preprocessing fitted on the training split only and replayed at prediction time."""

    missing: Literal["drop", "mean", "median", "most_frequent", "constant"] = "median"
    fill_value: float | str = Field(0.0, description="Value used when missing is 'constant'.")
    dedupe: bool = Field(True, description="Drop exact duplicate rows before splitting.")
    outliers: OutlierConfig | None = None
    scale: Literal["standard", "minmax", "robust", "none"] = "standard"
    encode: Literal["onehot", "ordinal"] = "onehot"


class DataConfig(Strict):
    """Where the data comes from and how it is prepared."""

    source: str = Field(
        description="builtin:NAME (see `danlu datasets`) or a path to .csv, .parquet, .jsonl or .npz."
    )
    target: str | None = Field(None, description="Target column (default: the dataset's own).")
    features: dict[str, FeatureKind] | None = Field(
        None, description="Override the inferred kind of some columns; 'ignore' drops a column."
    )
    image_shape: list[PositiveInt] | None = Field(
        None, description="Treat the numeric features as an image of this shape, e.g. [1, 8, 8]."
    )
    split: SplitConfig = Field(default_factory=SplitConfig)
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)


class ModelConfig(BaseModel):
    """The model: ``type`` names a registered builder; the other keys are its options."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    type: str = Field(description="A registered model (mlp, cnn) or 'package.module:function'.")

    def options(self) -> dict[str, Any]:
        """The builder's options: every key but ``type``."""
        return dict(self.model_extra or {})


class OptimizerConfig(Strict):
    name: Literal["sgd", "adam", "adamw", "rmsprop", "adagrad"] = "adamw"
    lr: PositiveFloat = 1e-3
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        0.9, description="Momentum for sgd and rmsprop."
    )
    nesterov: bool = False
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.9,
        0.999,
    )


class SchedulerConfig(Strict):
    """Learning-rate schedule. Epoch-based except one_cycle and cosine warm-up (per step)."""

    name: Literal["none", "step", "exponential", "cosine", "one_cycle", "plateau"] = "none"
    warmup_epochs: Annotated[float, Field(ge=0.0)] = Field(0, description="cosine only.")
    min_lr: Annotated[float, Field(ge=0.0)] = 0.0
    step_size: PositiveInt = Field(10, description="step: epochs between decays.")
    gamma: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.1, description="step / exponential: decay factor."
    )
    max_lr: PositiveFloat | None = Field(None, description="one_cycle: peak lr (default 10 × lr).")
    factor: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(0.5, description="plateau: lr factor.")
    patience: Annotated[int, Field(ge=0)] = Field(3, description="plateau: epochs without gain.")


class EarlyStoppingConfig(Strict):
    monitor: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"
    patience: Annotated[int, Field(ge=0)] = 5
    min_delta: Annotated[float, Field(ge=0.0)] = 0.0
    restore_best: bool = True


class CheckpointConfig(Strict):
    every: Annotated[int, Field(ge=0)] = Field(
        1, description="Save a resumable checkpoint every N epochs (0 turns checkpoints off)."
    )


class TrainConfig(Strict):
    """The engine's settings."""

    epochs: PositiveInt = 20
    batch_size: PositiveInt = 64
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    l1: Annotated[float, Field(ge=0.0)] = Field(0.0, description="L1 penalty on weights.")
    early_stopping: EarlyStoppingConfig | None = None
    grad_clip: PositiveFloat | None = Field(None, description="Clip the gradient norm to this.")
    grad_accumulation: PositiveInt = 1
    precision: Literal["fp32", "bf16"] = "fp32"
    class_weight: Literal["balanced"] | dict[str, PositiveFloat] | None = Field(
        None, description="'balanced' (inverse frequency) or {class: weight}; classification only."
    )
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)


class RegisterConfig(Strict):
    """Register the trained model in the model registry at the end of the run."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")] = Field(
        description="Registered model name; each run adds a version."
    )
    alias: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9._-]{0,99}$")] | None = Field(
        None, description="Point this alias (e.g. staging) at the new version."
    )


# The recipe key "register" shadows ABCMeta.register on the class (harmless: instances read their
# field); pydantic warns about it, and the key name is part of the recipe format.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class Recipe(Strict):
        """A whole recipe: data → task → model → training."""

        name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][\w.-]*$")]
        schema_version: Literal[1] = SCHEMA_VERSION
        data: DataConfig
        task: Literal["classification", "regression"]
        model: ModelConfig
        train: TrainConfig = Field(default_factory=TrainConfig)
        register: RegisterConfig | None = None

        # Where the recipe came from (file lines, --set flags), so later stages can point at the line.
        _source: Any = PrivateAttr(default=None)
