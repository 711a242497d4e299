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

from danlu.config._adversarial import AdversarialConfig
from danlu.config._anomaly import AnomalyConfig, unlabelled_anomaly
from danlu.config._compress import CompressConfig
from danlu.config._evaluate import OFF_SWITCH, SWITCH, EvaluateConfig, switch_blocks
from danlu.config._forecast import ForecastConfig
from danlu.config._generation import unlabelled_generation
from danlu.config._lm import LanguageModelConfig
from danlu.config._metrics import MetricsConfig
from danlu.config._privacy import PrivacyConfig
from danlu.config._recommend import RecommendConfig
from danlu.config._tune import TuneConfig

__all__ = [
    "AUGMENT_KINDS",
    "IMAGE_ONLY_AUGMENTS",
    "SCHEMA_VERSION",
    "AugmentStep",
    "CheckpointConfig",
    "ChecksConfig",
    "ColumnCheck",
    "DataConfig",
    "DistributedConfig",
    "ImbalanceConfig",
    "LossConfig",
    "ReduceConfig",
    "StreamConfig",
    "EarlyStoppingConfig",
    "FeatureSpec",
    "ModelConfig",
    "OptimizerConfig",
    "PrepareConfig",
    "ReadConfig",
    "Recipe",
    "RegisterConfig",
    "SchedulerConfig",
    "SplitConfig",
    "TextConfig",
    "TrainConfig",
    "TrainDistillConfig",
]

SCHEMA_VERSION: Literal[1] = 1

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
FeatureKind = Literal["numeric", "categorical", "boolean", "datetime", "text", "ignore"]


class Strict(BaseModel):
    """Base of every recipe block: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FeatureSpec(Strict):
    """One column's kind with its options, e.g. ``{kind: numeric, errors: nan}``."""

    kind: FeatureKind = Field(
        description="numeric, categorical, boolean, datetime, text or ignore."
    )
    errors: Literal["raise", "nan"] = Field(
        "raise",
        description="numeric / datetime: a value that does not parse is an error naming its row "
        "(raise), or a missing value filled by data.prepare.missing (nan).",
    )

    @model_validator(mode="after")
    def _errors_apply(self) -> FeatureSpec:
        if self.errors == "nan" and self.kind not in ("numeric", "datetime"):
            raise ValueError(
                f"errors: nan applies to numeric and datetime columns; this one is {self.kind}"
            )
        return self


class SplitConfig(Strict):
    """How rows are split into train / validation / test.

    ``by: random`` (default) shuffles rows; exact duplicate rows always stay in one split.
    ``by: time`` with ``column`` puts the earliest rows in train and the latest in test.
    ``by: column`` with ``column`` keeps a split the data already names (a benchmark's own
    train/test split): each row's value is ``train``, ``test`` or ``validation`` (``val``); when
    no row is marked validation, ``val`` of the train rows are held out for it. ``test`` is not
    read, and the column is not a feature.
    ``group: COLUMN`` keeps the rows sharing a value of that column in one split.
    """

    test: Fraction = Field(0.2, description="Fraction of rows held out for the final test.")
    val: Fraction = Field(0.1, description="Fraction of rows used for validation each epoch.")
    stratify: bool | None = Field(
        None,
        description="Keep class proportions in every split (default: on for classification, "
        "off for by: time).",
    )
    seed: int = Field(0, description="Seed of the split; the same seed gives the same rows.")
    by: Literal["random", "time", "column"] = Field(
        "random",
        description="random (shuffled); time: train earliest, test latest rows; column: the "
        "split named in a column (train / validation / test).",
    )
    column: str | None = Field(
        None,
        description="by: time: the column that orders rows (dates, times or numbers); "
        "by: column: the column naming each row's split.",
    )
    group: str | None = Field(
        None, description="Rows sharing a value of this column stay in one split."
    )

    @model_validator(mode="after")
    def _leave_rows_for_training(self) -> SplitConfig:
        if self.test + self.val >= 0.9:
            raise ValueError(
                f"test + val must leave at least 10% of rows for training; got {self.test} + {self.val}"
            )
        if self.by == "time":
            if self.column is None:
                raise ValueError("by: time needs column: the column that orders the rows")
            if self.stratify:
                raise ValueError(
                    "stratify: true cannot be kept with by: time (the split is decided by time, "
                    "not by class); remove stratify"
                )
            if self.group is not None:
                raise ValueError("by: time and group cannot be combined; keep one")
        elif self.by == "column":
            if self.column is None:
                raise ValueError(
                    "by: column needs column: the column naming each row's split (train / test)"
                )
            if self.group is not None:
                raise ValueError("by: column and group cannot be combined; keep one")
        elif self.column is not None:
            raise ValueError(
                "column is read only with by: time or by: column; add one or remove column"
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
    dedupe: bool = Field(
        False,
        description="Drop exact duplicate rows before splitting (the count is reported). Off by "
        "default: duplicates are kept, each set of copies in one split.",
    )
    missing_target: Literal["error", "drop"] = Field(
        "error", description="Rows without a target: error (default), or drop them (counted)."
    )
    outliers: OutlierConfig | None = None
    scale: Literal["standard", "minmax", "robust", "none"] = "standard"
    encode: Literal["onehot", "ordinal"] = "onehot"
    max_categories: PositiveInt = Field(
        50,
        description="A categorical column with more distinct training values than this is "
        "frequency-encoded (one column: the share of training rows holding the value) instead "
        "of one-hot or ordinal.",
    )


class ColumnCheck(Strict):
    """Expectations on one column; every one that fails is reported (all at once)."""

    present: bool = Field(True, description="The column must exist in the data.")
    type: Literal["numeric", "integer", "categorical", "boolean", "string"] | None = Field(
        None, description="Expected type of the column's values."
    )
    min: float | None = Field(None, description="Smallest allowed value (numeric columns).")
    max: float | None = Field(None, description="Largest allowed value (numeric columns).")
    allowed: list[str | int | float | bool] | None = Field(
        None, description="The only values allowed (categorical columns)."
    )
    max_missing: Annotated[float, Field(ge=0.0, le=1.0)] | None = Field(
        None, description="Largest allowed fraction of missing values, e.g. 0.05 for 5%."
    )
    unique: bool = Field(False, description="Every value must be distinct (an id column).")

    @model_validator(mode="after")
    def _ordered(self) -> ColumnCheck:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is larger than max {self.max}")
        return self


class ChecksConfig(Strict):
    """Expectations the raw data must meet before anything is trained (``data.checks``)."""

    min_rows: Annotated[int, Field(ge=0)] | None = Field(
        None, description="The data must hold at least this many rows."
    )
    columns: dict[str, ColumnCheck] = Field(
        default_factory=dict, description="Column name → expectations on it."
    )


ImbalanceMethod = Literal[
    "none",
    "class_weight",
    "oversample",
    "undersample",
    "smote",
    "borderline_smote",
    "svm_smote",
    "adasyn",
    "smote_tomek",
    "smote_enn",
]


class ImbalanceConfig(Strict):
    """How to counter skewed classes; resampling touches the training split only."""

    method: ImbalanceMethod = Field(
        "none", description="none, class_weight, oversample, undersample, or a SMOTE variant."
    )
    weights: Literal["balanced"] | dict[str, PositiveFloat] = Field(
        "balanced", description="class_weight: 'balanced' (inverse frequency) or {class: weight}."
    )
    ratio: Annotated[float, Field(gt=0.0, le=1.0)] | None = Field(
        None,
        description="Resampling: wanted minority/majority ratio after resampling (default 1.0).",
    )
    k_neighbors: PositiveInt = Field(5, description="SMOTE variants: neighbours to interpolate.")
    seed: int | None = Field(None, description="Resampling seed (default: data.split.seed).")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"method": value} if isinstance(value, str) else value


#: Augmentations that need image data (``data.image_shape``); the others work on any numbers.
IMAGE_ONLY_AUGMENTS = ("rotate", "shift", "scale", "shear", "hflip", "cutout")
AUGMENT_KINDS = (*IMAGE_ONLY_AUGMENTS, "noise", "mixup")


class AugmentStep(Strict):
    """One on-the-fly augmentation, applied per training batch (never at evaluation).

    Written as a one-key map in the recipe, e.g. ``{rotate: 10}``; ``p`` is the probability that a
    sample (a batch, for mixup) is augmented.
    """

    rotate: PositiveFloat | None = Field(None, description="Max rotation in degrees (images).")
    shift: Annotated[float, Field(gt=0.0, lt=1.0)] | None = Field(
        None, description="Max shift as a fraction of height/width (images)."
    )
    scale: Annotated[float, Field(gt=0.0, lt=1.0)] | None = Field(
        None, description="Max zoom in or out, e.g. 0.1 for 0.9x-1.1x (images)."
    )
    shear: PositiveFloat | None = Field(None, description="Max shear in degrees (images).")
    hflip: bool | None = Field(None, description="Mirror left-right with probability p (images).")
    cutout: Annotated[float, Field(gt=0.0, lt=1.0)] | None = Field(
        None, description="Erase a random square of this fraction of the side (images)."
    )
    noise: PositiveFloat | None = Field(
        None, description="Gaussian noise std, in units of the scaled features (any data)."
    )
    mixup: PositiveFloat | None = Field(
        None, description="Mixup: Beta(alpha, alpha) blend of sample pairs and targets (any data)."
    )
    p: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.5, description="Probability of applying the step (hflip, cutout, mixup); others: 1."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> AugmentStep:
        chosen = [k for k in AUGMENT_KINDS if getattr(self, k) not in (None, False)]
        if len(chosen) != 1:
            found = ", ".join(chosen) or "none"
            raise ValueError(
                f"each augment step names exactly one of {', '.join(AUGMENT_KINDS)} (found {found}); "
                "write one list item per step, e.g. [{rotate: 10}, {shift: 0.1}]"
            )
        return self

    @property
    def kind(self) -> str:
        """The augmentation this step applies (``rotate``, ``mixup`` ...)."""
        return next(k for k in AUGMENT_KINDS if getattr(self, k) not in (None, False))


class ReduceConfig(Strict):
    """Feature reduction fitted on the training split only, replayed at prediction time."""

    method: Literal["variance", "mutual_info", "model", "pca"] = Field(
        description="variance threshold, top-k by mutual information or by a model, or PCA."
    )
    threshold: Annotated[float, Field(ge=0.0)] = Field(
        0.0, description="variance: drop encoded columns whose variance is <= this."
    )
    k: PositiveInt | None = Field(None, description="mutual_info / model: keep the k best.")
    n_components: PositiveInt | Annotated[float, Field(gt=0.0, lt=1.0)] | None = Field(
        None, description="pca: a number of components, or the explained-variance ratio to keep."
    )

    @model_validator(mode="after")
    def _needs(self) -> ReduceConfig:
        if self.method in ("mutual_info", "model") and self.k is None:
            raise ValueError(f"method '{self.method}' needs k (the number of features to keep)")
        if self.method == "pca" and self.n_components is None:
            raise ValueError("method 'pca' needs n_components (a count, or a ratio like 0.95)")
        return self


class TextConfig(Strict):
    """How text columns become token ids (``data.text``); fitted on the training split only."""

    max_length: Annotated[int, Field(ge=2, le=8192)] = Field(
        128,
        description="Tokens kept per text (special tokens included); longer texts are truncated "
        "(counted and warned), shorter ones padded.",
    )
    tokenizer: Literal["auto", "wordpiece", "bpe"] = Field(
        "auto",
        description="auto: the pretrained model's own tokenizer when model.pretrained is set, "
        "else a WordPiece trained on the training split; wordpiece / bpe: trained on it.",
    )
    vocab_size: Annotated[int, Field(ge=100, le=1_000_000)] = Field(
        8000, description="Vocabulary size of a tokenizer trained on the training split."
    )
    lowercase: bool = Field(
        True, description="Lowercase text before a trained tokenizer (a pretrained one decides)."
    )
    cache: bool = Field(
        True,
        description="Keep each split's token ids under $DANLU_HOME/cache/tokens, keyed by the "
        "texts, the tokenizer and max_length, so preparing the same data again skips "
        "tokenizing; false: always tokenize, write nothing.",
    )


class StreamConfig(Strict):
    """Read a Parquet file or folder in row-group chunks instead of loading it into memory."""

    chunk_rows: PositiveInt = Field(
        262_144, description="Rows read per chunk; bounds the memory held at once."
    )
    shuffle_buffer: PositiveInt = Field(
        262_144, description="Rows mixed together when shuffling training batches."
    )
    sample_rows: PositiveInt = Field(
        100_000,
        description="Seeded reservoir of training rows for statistics a single pass cannot give "
        "exactly (medians, robust scaling, most frequent values, feature reduction).",
    )


# The key "json" shadows BaseModel.json (deprecated) on the class; pydantic warns, and instances
# read their field. The key name is the recipe format (data.read.json).
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "json"', category=UserWarning)

    class ReadConfig(Strict):
        """How a data file is read (``data.read``); every key is optional."""

        sep: Annotated[str, Field(min_length=1)] | None = Field(
            None, description="CSV separator (default: sniffed from the file; tab for .tsv)."
        )
        encoding: Annotated[str, Field(min_length=1)] | None = Field(
            None, description="Text encoding of CSV/JSON files (default utf-8), e.g. latin-1."
        )
        sheet: str | Annotated[int, Field(ge=0)] | None = Field(
            None, description="Excel: the sheet's name or 0-based position (default: the first)."
        )
        json: Literal["records", "lines"] | None = Field(  # type: ignore[assignment]
            None,
            description="JSON layout: records (one array of objects) or lines (JSON Lines); "
            "default: records when the file starts with '[', else lines.",
        )


class DataConfig(Strict):
    """Where the data comes from and how it is prepared."""

    source: str = Field(
        description="builtin:NAME (see `danlu datasets`) or a path to .csv, .tsv, .parquet, "
        ".json, .jsonl, .xlsx or .npz."
    )
    read: ReadConfig = Field(
        default_factory=ReadConfig, description="How the file is read: sep, encoding, sheet, json."
    )
    target: str | Annotated[list[str], Field(min_length=1)] | None = Field(
        None,
        description=(
            "Target column (default: the dataset's own). For a label-set (multi-label) task, "
            "either one column whose cells hold label sets (lists, JSON lists, or 'a|b' "
            "strings) or a list of 0/1 columns, one per label, packed into one label-set "
            "column named 'labels'; listed columns are not features. task: anomaly: null "
            "(or left out with no label values in anomaly) means unlabelled rows, all normal."
        ),
    )
    features: dict[str, FeatureKind | FeatureSpec] | None = Field(
        None,
        description="Override the inferred kind of some columns: a kind, or {kind, errors}; "
        "'ignore' drops a column, 'text' tokenizes it (see data.text).",
    )
    text: TextConfig = Field(
        default_factory=TextConfig,
        description="Tokenization of text columns: max_length, tokenizer, vocab_size, lowercase.",
    )
    image_shape: list[PositiveInt] | None = Field(
        None, description="Treat the numeric features as an image of this shape, e.g. [1, 8, 8]."
    )
    split: SplitConfig = Field(default_factory=SplitConfig)
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    checks: ChecksConfig | None = Field(
        None, description="Expectations checked before training; every failure is listed."
    )
    imbalance: ImbalanceConfig = Field(
        default_factory=ImbalanceConfig,
        description="none | class_weight | oversample | undersample | smote (and variants).",
    )
    augment: list[AugmentStep] = Field(
        default_factory=list, description="On-the-fly augmentation of training batches."
    )
    reduce: ReduceConfig | None = Field(None, description="Feature selection or PCA.")
    stream: StreamConfig | None = Field(
        None, description="Stream a Parquet file or folder instead of loading it into memory."
    )


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


class LossConfig(Strict):
    """The training loss (default: the task's own, cross-entropy or MSE)."""

    name: Literal["default", "focal"] = Field(
        "default", description="focal: down-weights easy examples (classification)."
    )
    gamma: Annotated[float, Field(ge=0.0)] = Field(2.0, description="focal: focusing strength.")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class CheckpointConfig(Strict):
    every: Annotated[int, Field(ge=0)] = Field(
        1, description="Save a resumable checkpoint every N epochs (0 turns checkpoints off)."
    )


class DistributedConfig(Strict):
    """Data-parallel training over several processes (and machines), launched through torchrun.

    ``danlu run`` starts ``nproc_per_node`` ranks on this machine through PyTorch's elastic
    launcher (``torch.distributed.run``); each trains on its own shard of the training rows.
    """

    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="ddp: every rank holds the whole model (DistributedDataParallel); fsdp: "
        "parameters, gradients and optimizer state are sharded over the ranks (fully_shard).",
    )
    nproc_per_node: PositiveInt = Field(
        2, description="Ranks on each machine: one per GPU, or one per core given on a CPU."
    )
    nnodes: PositiveInt = Field(1, description="Machines taking part (each runs danlu run).")
    node_rank: Annotated[int, Field(ge=0)] = Field(
        0, description="This machine's index, 0 … nnodes-1; node 0 hosts rank 0 (nnodes > 1)."
    )
    rdzv_endpoint: str | None = Field(
        None,
        description="host:port where the ranks meet: node 0's address when nnodes > 1 "
        "(default on one machine: 127.0.0.1 and a free port).",
    )
    max_restarts: Annotated[int, Field(ge=0, le=100)] = Field(
        0, description="Restarts of all ranks after one fails; each resumes from the checkpoint."
    )
    timeout_s: Annotated[float, Field(gt=0.0, le=86_400.0)] = Field(
        300.0, description="Seconds a collective waits for a silent rank before failing."
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="auto: nccl on CUDA, gloo on the CPU."
    )

    @model_validator(mode="after")
    def _where_ranks_meet(self) -> DistributedConfig:
        if self.node_rank >= self.nnodes:
            raise ValueError(
                f"node_rank must be below nnodes ({self.nnodes}). Got {self.node_rank} instead: "
                f"number the machines 0 … {self.nnodes - 1}."
            )
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise ValueError(
                f"nnodes is {self.nnodes}, so rdzv_endpoint is required: set it to node 0's "
                "address and a free port, the same on every machine (e.g. 10.0.0.1:29400)."
            )
        if self.rdzv_endpoint is not None:
            host, sep, port = self.rdzv_endpoint.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    f"rdzv_endpoint must be host:port with a port 1-65535. Got "
                    f"{self.rdzv_endpoint!r} instead (e.g. 127.0.0.1:29400)."
                )
        return self


class TrainDistillConfig(Strict):
    """Knowledge distillation: train this model on a teacher's soft targets as well as the
    labels, ``α·KL(softmax(teacher/T) ‖ softmax(student/T))·T² + (1 − α)·task loss`` (MSE to
    the teacher's output for regression)."""

    teacher: Annotated[str, Field(min_length=1, max_length=300)] = Field(
        description="The teacher: a run id, or a registered model (NAME:VERSION, NAME@ALIAS)."
    )
    alpha: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.5, description="Weight of the teacher's soft targets; 1 - alpha weighs the labels."
    )
    temperature: Annotated[float, Field(gt=0.0, le=100.0)] = Field(
        4.0, description="The softmax temperature of the soft targets (classification)."
    )


class TrainConfig(Strict):
    """The engine's settings."""

    epochs: PositiveInt = 20
    batch_size: PositiveInt = 64
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    l1: Annotated[float, Field(ge=0.0)] = Field(0.0, description="L1 penalty on weights.")
    loss: LossConfig = Field(default_factory=LossConfig)
    early_stopping: EarlyStoppingConfig | None = None
    grad_clip: PositiveFloat | None = Field(None, description="Clip the gradient norm to this.")
    grad_accumulation: PositiveInt = 1
    bucket_by_length: bool = Field(
        True,
        description="With text columns: each batch holds rows of similar token length (less "
        "padding; shuffled in chunks of about 50 batches, the batches' order shuffled too), "
        "and evaluation predicts in length order; false: a plain shuffle. No effect otherwise.",
    )
    precision: Literal["fp32", "bf16"] = "fp32"
    class_weight: Literal["balanced"] | dict[str, PositiveFloat] | None = Field(
        None, description="'balanced' (inverse frequency) or {class: weight}; classification only."
    )
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    distill: TrainDistillConfig | None = Field(
        None, description="Learn from a teacher model's outputs too (knowledge distillation)."
    )
    privacy: PrivacyConfig | None = Field(
        None,
        description="Differentially private training (DP-SGD): per-row clipping, noise, "
        "Poisson batches and the ε spent (danlu.config.PrivacyConfig); null: none.",
    )
    adversarial: AdversarialConfig | None = Field(
        None,
        description="Adversarial training: FGSM / PGD examples of the continuous inputs in each "
        "batch (danlu.config.AdversarialConfig); null: none.",
    )
    distributed: DistributedConfig | None = Field(
        None,
        description="Train over several processes / machines through torchrun; false: one process.",
        **OFF_SWITCH,
    )
    metrics: MetricsConfig | None = Field(
        None,
        description="Expose the run's progress to Prometheus while it trains: an endpoint (port) "
        "and/or a Pushgateway push (danlu.config._metrics.MetricsConfig); null: off.",
    )

    @model_validator(mode="before")
    @classmethod
    def _distributed_switch(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("distributed"), bool):
            return {**data, "distributed": {} if data["distributed"] else None}
        return data


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
        task: Annotated[
            str,
            Field(
                min_length=1,
                max_length=100,
                pattern=r"^[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?$",
                description="The kind of task: classification, regression, multilabel (any "
                "registered task; checked against danlu.tasks when the recipe is run).",
            ),
        ]
        model: ModelConfig
        forecast: ForecastConfig | None = Field(
            None,
            description="task: forecasting's time axis, horizon, lags, quantiles and splits "
            "(danlu.config.ForecastConfig); required by that task, refused by the others.",
        )
        anomaly: AnomalyConfig | None = Field(
            None,
            description="task: anomaly's normal / anomalous label values, training rows and "
            "threshold (danlu.config.AnomalyConfig); required by that task, refused by others.",
        )
        recommend: RecommendConfig | None = Field(
            None,
            description="task: recommendation's interaction columns (user, item, time, rating), "
            "split, K, negatives and evaluation (danlu.config._recommend.RecommendConfig).",
        )
        language_model: LanguageModelConfig | None = Field(
            None,
            description="task: language_model's text column, document filter (where), BPE "
            "vocabulary size and report baselines / samples (danlu.config.LanguageModelConfig); "
            "optional for that task, refused by the others.",
        )
        train: TrainConfig = Field(default_factory=TrainConfig)
        tune: TuneConfig | None = Field(
            None, description="Hyperparameter search (danlu tune); false: none.", **OFF_SWITCH
        )
        evaluate: EvaluateConfig | None = Field(
            None,
            description="The trust report made after training (danlu evaluate / report); "
            "true: every section's defaults, false: no report.",
            **SWITCH,
        )
        compress: CompressConfig | None = Field(
            None,
            description="Compressed variants of the trained model (int8, pruning, distillation, "
            "low-rank), each measured and gated on accuracy (danlu compress); true: every int8 "
            "quantization, false: none.",
            **SWITCH,
        )
        register: RegisterConfig | None = Field(None, **OFF_SWITCH)

        # Where the recipe came from (file lines, --set flags), so later stages can point at the line.
        _source: Any = PrivateAttr(default=None)

        @model_validator(mode="before")
        @classmethod
        def _switches(cls, data: Any) -> Any:
            # evaluate: false, tune: false, register: false; anomaly / generation data without a
            # label column
            return unlabelled_generation(unlabelled_anomaly(switch_blocks(data)))
