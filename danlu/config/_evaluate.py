"""The ``evaluate:`` block: what goes into a model's trust report.

Every section has defaults, so ``evaluate: {}`` (or ``danlu evaluate RUN`` on a recipe without the
block) produces the whole report; ``false`` turns one section off::

    evaluate:
      bootstrap: 1000              # resamples behind every confidence interval (0: none)
      cross_validation: 5          # k stratified folds, each a child run
      calibration: {temperature: true}
      fairness: {group: sex}
      robustness: {fgsm: [0.01, 0.05], noise: [0.1]}
      explain: {method: integrated_gradients, samples: 200}
      membership: {threshold: 0.6}
      cost: false
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

__all__ = [
    "CalibrationConfig",
    "CostConfig",
    "EvaluateConfig",
    "ExplainConfig",
    "FairnessConfig",
    "MembershipConfig",
    "RobustnessConfig",
    "OFF_SWITCH",
    "SWITCH",
    "switch_blocks",
]

Epsilon = Annotated[float, Field(ge=0.0, le=100.0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CalibrationConfig(_Strict):
    """Expected calibration error and a reliability diagram (classification)."""

    bins: Annotated[int, Field(ge=2, le=100)] = Field(
        15, description="Equal-width confidence bins of the ECE and the reliability diagram."
    )
    temperature: bool = Field(
        False,
        description="Fit temperature scaling on the validation split and save it with the model "
        "(predictions then use the calibrated probabilities) when it lowers the log-loss of "
        "held-out validation rows beyond noise.",
    )
    min_rows: Annotated[int, Field(ge=10)] = Field(
        100,
        description="Fewest validation rows to fit the temperature on; with fewer, T stays 1 "
        "and the report says why.",
    )


class FairnessConfig(_Strict):
    """Per-group results for one column of the raw data (a feature or any other column)."""

    group: Annotated[str, Field(min_length=1)] = Field(
        description="The column whose values define the groups, e.g. sex."
    )
    bins: Annotated[int, Field(ge=2, le=20)] | None = Field(
        None, description="Cut a numeric group column into this many quantile bins (e.g. age)."
    )
    threshold: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.1,
        description="Flag a demographic-parity or equalized-odds difference, or a gap in the "
        "headline metric between groups, above this.",
    )
    ratio_threshold: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.8, description="Flag a demographic-parity ratio below this (the four-fifths rule)."
    )


class RobustnessConfig(_Strict):
    """The headline metric under attack and corruption of the continuous inputs.

    ε and the noise level are in the units of the model's inputs after preprocessing (standard
    deviations, with the default standard scaling). A list left out is not measured.
    """

    fgsm: list[Epsilon] = Field(default_factory=list, description="FGSM attack strengths ε.")
    pgd: list[Epsilon] = Field(default_factory=list, description="PGD (L∞) attack strengths ε.")
    pgd_steps: PositiveInt = Field(10, description="PGD iterations.")
    noise: list[Epsilon] = Field(
        default_factory=list, description="Standard deviations of added Gaussian noise."
    )
    dropout: list[Fraction] = Field(
        default_factory=list,
        description="Fractions of features set to their training mean (random feature dropout).",
    )
    text: list[Fraction] = Field(
        default_factory=list,
        description="Shares of words perturbed in text columns (typos, word dropout, casing); "
        "0 is always scored.",
    )
    samples: PositiveInt = Field(1000, description="Test rows used (a seeded sample if more).")
    seed: int = 0
    compare_standard: bool = Field(
        True,
        description="With train.adversarial: also train the recipe without it (same data and "
        "seed, a child run) and report both models' clean and attacked metric and the gain.",
    )

    @model_validator(mode="after")
    def _something(self) -> RobustnessConfig:
        if not (self.fgsm or self.pgd or self.noise or self.dropout or self.text):
            raise ValueError(
                "robustness measures nothing: give at least one of fgsm, pgd, noise, dropout or "
                "text (e.g. fgsm: [0.01, 0.05]), or set robustness: false"
            )
        return self


def _default_robustness() -> RobustnessConfig:
    return RobustnessConfig(
        fgsm=[0.01, 0.05, 0.1],
        pgd=[0.01, 0.05, 0.1],
        noise=[0.1, 0.5],
        dropout=[0.1, 0.3],
        text=[0.05, 0.1, 0.2, 0.3],
    )


class ExplainConfig(_Strict):
    """Attributions with captum: global importance, the k most / least confident test rows."""

    method: Literal["integrated_gradients", "gradient_shap", "kernel_shap"] = Field(
        "integrated_gradients",
        description="integrated_gradients | gradient_shap (need gradients) | kernel_shap (any "
        "model, slower).",
    )
    samples: PositiveInt = Field(200, description="Test rows explained (a seeded sample if more).")
    top_k: Annotated[int, Field(ge=0, le=50)] = Field(
        3, description="Explain the k most and the k least confident test rows one by one."
    )
    steps: Annotated[int, Field(ge=2, le=1000)] = Field(
        32, description="integrated_gradients: integration steps."
    )
    background: Annotated[int, Field(ge=1, le=1000)] = Field(
        20, description="gradient_shap / kernel_shap: training rows used as the baseline."
    )
    seed: int = 0


class MembershipConfig(_Strict):
    """The membership-inference audit: how well an attacker tells training rows from held-out
    rows by the model's loss on them (a loss-threshold and a reference-calibrated attack)."""

    threshold: Annotated[float, Field(ge=0.5, le=1.0)] = Field(
        0.6,
        description="Flag the model when an attack's AUC is above this with confidence (the "
        "lower bound of its interval; the value itself without bootstrap).",
    )
    samples: Annotated[int, Field(ge=10)] = Field(
        2000,
        description="Most rows per side: members (training rows) and non-members (held-out "
        "rows), a seeded sample of each, equal in number.",
    )
    seed: int = 0


class CostConfig(_Strict):
    """Size, latency, throughput and energy."""

    batch: PositiveInt = Field(64, description="Batch size of the throughput measurement.")
    repeats: Annotated[int, Field(ge=3, le=10_000)] = Field(
        50, description="Timed calls per latency / throughput figure (their median is reported)."
    )
    tdp_watts: Annotated[float, Field(gt=0.0)] | None = Field(
        None,
        description="The CPU's TDP for the energy estimate when no power counter is readable "
        "(default $DANLU_CPU_TDP_WATTS, else 15 W per core).",
    )


def _variant(extra: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def add(schema: dict[str, Any]) -> None:
        variants = schema.get("anyOf")
        if isinstance(variants, list) and extra not in variants:
            variants.insert(0, extra)

    return add


# json_schema_extra of a block that also takes true (its defaults) and false (off)
SWITCH: dict[str, Any] = {"json_schema_extra": _variant({"type": "boolean"})}
# json_schema_extra of a block that false turns off (tune, register: true would lack their keys)
OFF_SWITCH: dict[str, Any] = {"json_schema_extra": _variant({"const": False})}


def switch_blocks(data: Any) -> Any:
    """``evaluate: false`` (and ``tune: false``, ``register: false``) turns a recipe block off, as
    leaving it out does; ``evaluate: true`` makes the whole report with its defaults
    (``true`` elsewhere reads as an empty block, whose missing keys are then named).

    Example:
        >>> switch_blocks({"evaluate": True, "register": False})
        {'evaluate': {}, 'register': None}
    """
    if not isinstance(data, dict):
        return data
    switched = dict(data)
    for block in ("evaluate", "tune", "register", "compress"):
        value = data.get(block)
        if isinstance(value, bool):
            switched[block] = {} if value else None
    return switched


_SECTIONS: dict[str, Callable[[], BaseModel]] = {
    "calibration": CalibrationConfig,
    "robustness": _default_robustness,
    "explain": ExplainConfig,
    "membership": MembershipConfig,
    "cost": CostConfig,
}


class EvaluateConfig(_Strict):
    """The trust report's sections; each can be turned off with ``false``."""

    bootstrap: Annotated[int, Field(ge=0, le=100_000)] = Field(
        1000, description="Bootstrap resamples behind each confidence interval (0: none)."
    )
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)] = Field(
        0.95, description="Confidence level of the intervals."
    )
    cross_validation: Annotated[int, Field(ge=2, le=20)] | None = Field(
        None, description="k folds, each trained with the same recipe and recorded as a child run."
    )
    baselines: bool = Field(
        True,
        description="Fit scikit-learn baselines (dummy, linear, HistGradientBoosting) on the same "
        "split and preprocessing.",
    )
    training: bool = Field(
        True, description="Training curves (loss and the headline metric per epoch)."
    )
    calibration: CalibrationConfig | None = Field(default_factory=CalibrationConfig, **SWITCH)
    fairness: FairnessConfig | None = Field(None, **SWITCH)
    robustness: RobustnessConfig | None = Field(default_factory=_default_robustness, **SWITCH)
    explain: ExplainConfig | None = Field(default_factory=ExplainConfig, **SWITCH)
    membership: MembershipConfig | None = Field(default_factory=MembershipConfig, **SWITCH)
    cost: CostConfig | None = Field(default_factory=CostConfig, **SWITCH)

    @field_validator("calibration", "robustness", "explain", "membership", "cost", mode="before")
    @classmethod
    def _switch(cls, value: Any, info: Any) -> Any:
        """``true`` keeps a section's defaults, ``false`` turns it off."""
        if value is True:
            return _SECTIONS[info.field_name]()
        if value is False:
            return None
        return value

    @field_validator("fairness", mode="before")
    @classmethod
    def _group_only(cls, value: Any) -> Any:
        if isinstance(value, str):  # fairness: sex
            return {"group": value}
        return None if value is False else value
