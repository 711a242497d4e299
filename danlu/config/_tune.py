"""The ``tune:`` block: what to optimise, how to search and prune, and the search space.

A space maps recipe key paths to distributions, one kind each::

    space:
      train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]}
      model.dropout: {uniform: [0.0, 0.5], step: 0.05}
      train.batch_size: {choice: [32, 64, 128]}
      model.type:                       # a conditional choice: each option has its own sub-space
        choice:
          mlp: {model.hidden: {choice: [[64], [128, 64]]}}
          cnn: {model.channels: {choice: [[16, 32], [32, 64]]}}

The shapes are checked here (low <= high, a log range above 0, a non-empty choice); whether each
key path exists in the recipe is checked by ``danlu.tune``, which knows the models.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SerializerFunctionWrapHandler,
    Tag,
    field_validator,
    model_serializer,
    model_validator,
)

__all__ = [
    "DISTRIBUTION_KINDS",
    "Distribution",
    "PrunerConfig",
    "SamplerConfig",
    "TuneConfig",
]

DISTRIBUTION_KINDS = ("uniform", "loguniform", "int", "choice")
SAMPLERS = ("grid", "random", "tpe", "cmaes", "qmc")
PRUNERS = ("none", "median", "asha", "hyperband")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _ordered(pair: tuple[float, float], what: str) -> tuple[float, float]:
    low, high = pair
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{what} bounds must be finite numbers; got [{low}, {high}]")
    if low > high:
        raise ValueError(f"{what} needs low <= high; got [{low}, {high}] (swap the two values)")
    return pair


class Distribution(_Strict):
    """One parameter's distribution: exactly one of uniform, loguniform, int or choice.

    ``step`` discretises uniform and int ranges (and lets the grid sampler enumerate them);
    ``log`` samples an int range on a log scale. A choice whose options map to sub-spaces is
    conditional: the sub-space is searched only when its option is chosen.
    """

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, populate_by_name=True, serialize_by_alias=True
    )

    uniform: tuple[float, float] | None = Field(None, description="[low, high], sampled linearly.")
    loguniform: tuple[float, float] | None = Field(
        None, description="[low, high] with 0 < low, sampled on a log scale."
    )
    int_: tuple[int, int] | None = Field(None, alias="int", description="[low, high] integers.")
    choice: (
        Annotated[
            Annotated[list[Any], Tag("<options>")]
            | Annotated[dict[str, dict[str, Distribution]], Tag("<sub-spaces>")],
            # a map is a conditional choice, anything else a list of options: an error inside a
            # sub-space is then reported once, not once per member of the union
            Discriminator(lambda v: "<sub-spaces>" if isinstance(v, dict) else "<options>"),
        ]
        | None
    ) = Field(None, description="Options, or a map option -> sub-space (a conditional choice).")
    step: PositiveFloat | None = Field(None, description="Spacing of a uniform or int range.")
    log: bool = Field(False, description="int only: sample on a log scale.")

    @field_validator("uniform")
    @classmethod
    def _check_uniform(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        return None if value is None else _ordered(value, "uniform")

    @field_validator("loguniform")
    @classmethod
    def _check_loguniform(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is None:
            return None
        low, high = _ordered(value, "loguniform")
        if low <= 0:
            raise ValueError(
                f"loguniform needs 0 < low (a log scale has no 0 or negative values); got low = {low}. "
                "Use a small positive low such as 1e-6, or uniform"
            )
        return low, high

    @field_validator("int_")
    @classmethod
    def _check_int(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is None:
            return None
        low, high = _ordered(value, "int")
        return int(low), int(high)

    @field_validator("choice")
    @classmethod
    def _check_choice(cls, value: Any) -> Any:
        if value is not None and len(value) == 0:
            raise ValueError("choice needs at least one option")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        chosen = [k for k in DISTRIBUTION_KINDS if self.value_of(k) is not None]
        if len(chosen) != 1:
            found = ", ".join(chosen) or "none"
            raise ValueError(
                f"a distribution names exactly one of {', '.join(DISTRIBUTION_KINDS)} (found {found}), "
                "e.g. {loguniform: [1.0e-4, 1.0e-2]} or {choice: [32, 64]}"
            )
        kind = chosen[0]
        if self.step is not None and kind not in ("uniform", "int"):
            raise ValueError(f"step applies to uniform and int ranges, not to {kind}")
        if self.log and kind != "int":
            raise ValueError(f"log applies to int ranges only (use loguniform instead of {kind})")
        if self.log and self.step not in (None, 1):
            raise ValueError("an int range cannot have both log and a step other than 1")
        if kind == "int" and self.step is not None and self.step != int(self.step):
            raise ValueError(f"an int range needs a whole step; got {self.step}")
        if self.step is not None:
            low, high = self.value_of(kind)
            count = (high - low) / self.step
            if abs(count - round(count)) > 1e-9:  # the top of the range would never be drawn
                top = low + math.floor(count + 1e-9) * self.step
                raise ValueError(
                    f"the range [{low}, {high}] is not a whole number of steps of {self.step}; "
                    f"end it at {round(top, 12)} or change the step"
                )
        return self

    @model_serializer(mode="wrap")
    def _compact(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Saved recipes show only what was written: {loguniform: [0.0001, 0.01]}."""
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None and not (k == "log" and v is False)}

    def value_of(self, kind: str) -> Any:
        return self.int_ if kind == "int" else getattr(self, kind)

    @property
    def kind(self) -> str:
        return next(k for k in DISTRIBUTION_KINDS if self.value_of(k) is not None)

    @property
    def branches(self) -> dict[str, dict[str, Distribution]] | None:
        """The sub-space of each option of a conditional choice (None otherwise)."""
        return self.choice if isinstance(self.choice, dict) else None

    @property
    def is_discrete(self) -> bool:
        """Whether the values can be listed (what the grid sampler needs)."""
        return self.kind in ("choice", "int") or self.step is not None

    def grid_values(self) -> list[Any]:
        """Every value of a discrete distribution, in order."""
        if self.kind == "choice":
            return list(self.choice or [])
        if self.kind == "int":
            low, high = self.int_ or (0, 0)
            step = int(self.step or 1)
            return list(range(low, high + 1, step))
        if self.kind == "uniform" and self.step is not None:
            start, stop = self.uniform or (0.0, 0.0)
            count = int(math.floor((stop - start) / self.step + 1e-9))
            return [round(start + i * self.step, 12) for i in range(count + 1)]
        raise ValueError(f"a {self.kind} distribution without a step has no finite list of values")


class SamplerConfig(_Strict):
    """Optuna's sampler, by name (``tpe`` is Optuna's default)."""

    name: Literal["grid", "random", "tpe", "cmaes", "qmc"] = "tpe"
    seed: int | None = Field(
        0, description="Seed of the sampler (each parallel worker adds its index)."
    )
    startup_trials: NonNegativeInt | None = Field(
        None,
        description="tpe/cmaes: random trials before the model takes over (Optuna's default 10).",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class PrunerConfig(_Strict):
    """Optuna's pruner, by name: stops unpromising trials from their per-epoch metric."""

    name: Literal["none", "median", "asha", "hyperband"] = "none"
    min_resource: PositiveInt = Field(1, description="asha/hyperband: epochs before the first cut.")
    reduction_factor: Annotated[int, Field(ge=2)] = Field(
        3, description="asha/hyperband: keep 1 in this many trials at each rung."
    )
    startup_trials: NonNegativeInt = Field(5, description="median: trials that are never pruned.")
    warmup_epochs: NonNegativeInt = Field(1, description="median: epochs before pruning starts.")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class TuneConfig(_Strict):
    """Hyperparameter search over the recipe with Optuna (``danlu tune``)."""

    metric: str = Field(
        "val_loss", description="A per-epoch validation metric, e.g. val_loss or val_accuracy."
    )
    direction: Literal["auto", "maximize", "minimize"] = Field(
        "auto", description="auto: minimize losses and errors, maximize the rest."
    )
    trials: PositiveInt | None = Field(
        20,
        description="Trials in the study (all workers together); finished ones count on resume. "
        "A grid sampler runs every point unless trials is given.",
    )
    timeout: PositiveFloat | None = Field(
        None, description="Seconds after which a tune session starts no new trial."
    )
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    space: dict[str, Distribution] = Field(
        default_factory=dict,
        validate_default=True,  # a tune block without a space is as empty as `space: {}`
        description="Recipe key path -> distribution.",
    )
    study: Annotated[str, Field(pattern=r"^[A-Za-z0-9][\w.-]{0,99}$")] | None = Field(
        None, description="Study name (default: the recipe's name); the same name resumes it."
    )
    refit: bool = Field(
        False, description="Retrain the best parameters on train + validation before registering."
    )

    @field_validator("space")
    @classmethod
    def _not_empty(cls, value: dict[str, Distribution]) -> dict[str, Distribution]:
        if not value:
            raise ValueError(
                "the search space is empty; add at least one key, e.g. "
                "train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]}"
            )
        return value

    @model_validator(mode="after")
    def _budget(self) -> TuneConfig:
        if self.sampler.name == "grid" and "trials" not in self.model_fields_set:
            self.__dict__["trials"] = None  # a grid runs every point unless told otherwise
        if self.trials is None and self.timeout is None and self.sampler.name != "grid":
            raise ValueError("give tune.trials or tune.timeout (or both) so the study ends")
        return self
