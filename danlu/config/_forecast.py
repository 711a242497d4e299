"""The ``forecast:`` block: how ``task: forecasting`` reads a time series and what it predicts::

    task: forecasting
    data: {source: builtin:airline, target: passengers}
    forecast:
      time: month               # datetime or integer column
      series_id: null           # column naming the series: many series in one table
      horizon: 12               # steps forecast from each origin
      frequency: auto           # pandas offset alias (MS, W-SUN, D, h ...) or an integer step
      season: auto              # seasonal period in steps (auto: from the frequency)
      lags: auto                # window length (auto: max(2*season, 2*horizon), capped)
      covariates: {known: [], observed: []}
      missing: refuse           # refuse | interpolate
      transform: none           # none | log (log1p, inverted on output)
      quantiles: [0.1, 0.5, 0.9]
      test: auto                # points held out at the end of each series (auto: horizon)
      val: auto                 # points before the test block for validation (auto: horizon)
      backtest: {folds: 5}      # rolling-origin folds

Each row the model sees is one forecast origin of one series: the last ``lags`` values (and the
covariates) in, the next ``horizon`` values out. Splits are by time within each series, never
random.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["BacktestConfig", "CovariatesConfig", "ForecastConfig"]

Column = Annotated[str, Field(min_length=1, max_length=300)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CovariatesConfig(_Strict):
    """Extra columns the model reads besides the target's own history."""

    known: list[Column] = Field(
        default_factory=list,
        description="Known in advance (a holiday flag, a price plan): the model reads their "
        "values over the forecast horizon too, so a request must give those future values.",
    )
    observed: list[Column] = Field(
        default_factory=list,
        description="Observed only up to the origin (temperature, another sensor): the model "
        "reads their last `lags` values.",
    )

    @model_validator(mode="after")
    def _disjoint(self) -> CovariatesConfig:
        both = sorted(set(self.known) & set(self.observed))
        if both:
            raise ValueError(
                f"column(s) {', '.join(both)} are listed as both known and observed; keep each "
                "in one list"
            )
        return self


class BacktestConfig(_Strict):
    """Rolling-origin backtesting: k time-ordered folds, each forecasting after its origin."""

    folds: Annotated[int, Field(ge=1, le=100)] = Field(
        5, description="Number of rolling origins; each refits on the data before it."
    )


class ForecastConfig(_Strict):
    """What ``task: forecasting`` forecasts, from which history, and how it is split."""

    time: Column = Field(description="The time column: datetimes, or integer steps.")
    series_id: Column | None = Field(
        None, description="Column naming the series, for many series in one table; null: one."
    )
    horizon: Annotated[int, Field(ge=1, le=10_000)] = Field(
        description="How many steps each forecast covers."
    )
    frequency: Annotated[str, Field(min_length=1, max_length=40)] | Annotated[int, Field(ge=1)] = (
        Field(
            "auto",
            description="The step between points: a pandas offset alias (MS, W-SUN, D, h, QS-OCT "
            "...) for datetimes, an integer for integer times; auto: inferred from the data.",
        )
    )
    season: Literal["auto"] | Annotated[int, Field(ge=1, le=10_000)] = Field(
        "auto",
        description="The seasonal period in steps; auto: 12 monthly, 52 weekly, 7 daily, 24 "
        "hourly, 4 quarterly, else 1 (none).",
    )
    lags: Literal["auto"] | Annotated[int, Field(ge=1, le=10_000)] = Field(
        "auto",
        description="Window length (past values per row); auto: max(2*season, 2*horizon), "
        "capped so enough training windows remain.",
    )
    covariates: CovariatesConfig = Field(default_factory=CovariatesConfig)
    missing: Literal["refuse", "interpolate"] = Field(
        "refuse",
        description="Missing target values or gaps in the time axis: refuse (an error naming "
        "the series and times) or interpolate (linear in time, the gaps reindexed first).",
    )
    transform: Literal["none", "log"] = Field(
        "none",
        description="log: model log1p(y) (multiplicative seasonality; values must be > -1), "
        "inverted on every output.",
    )
    quantiles: list[Annotated[float, Field(gt=0.0, lt=1.0)]] = Field(
        default_factory=lambda: [0.1, 0.5, 0.9],
        description="Quantile levels forecast (pinball loss); 0.5 is always added and is the "
        "point forecast; []: point forecasts only (MSE).",
    )
    test: Literal["auto"] | Annotated[int, Field(ge=1)] = Field(
        "auto", description="Points held out at the end of each series; auto: the horizon."
    )
    val: Literal["auto"] | Annotated[int, Field(ge=0)] = Field(
        "auto",
        description="Points before the test block for validation; auto: the horizon.",
    )
    backtest: BacktestConfig = Field(default_factory=BacktestConfig)

    @field_validator("frequency")
    @classmethod
    def _frequency(cls, value: str | int) -> str | int:
        if isinstance(value, str) and value != "auto":
            import pandas as pd

            try:
                pd.tseries.frequencies.to_offset(value)
            except ValueError:
                raise ValueError(
                    f"'{value}' is not a pandas frequency; use auto, an offset alias such as "
                    "MS, W-SUN, D or h, or an integer step"
                ) from None
        return value

    @field_validator("quantiles")
    @classmethod
    def _quantiles(cls, value: list[float]) -> list[float]:
        if not value:
            return []
        return sorted({round(q, 6) for q in [*value, 0.5]})

    @property
    def test_points(self) -> int:
        """The test block's length in points (``test``, or the horizon)."""
        return self.horizon if self.test == "auto" else int(self.test)

    @property
    def val_points(self) -> int:
        """The validation block's length in points (``val``, or the horizon)."""
        return self.horizon if self.val == "auto" else int(self.val)
