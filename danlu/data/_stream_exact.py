"""What a streamed preparation knows before and after its one pass over the files: the recipe
options streaming can honour, the feature kinds the Parquet schema fixes, and the exact
statistics of the pass put into the sample-fitted preprocessor."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from danlu.config import DataConfig
from danlu.data._parquet import ParquetLayout
from danlu.data._preprocessor import Preprocessor
from danlu.data._schema import Feature, encoded_columns
from danlu.data._stream_stats import StreamStats
from danlu.errors import DataError
from danlu.logging import get_logger

if TYPE_CHECKING:
    from collections import Counter

    from danlu.config import PrepareConfig
    from danlu.data._stream_stats import Moments

logger = get_logger("danlu.data._stream")


def _check_supported(config: DataConfig) -> None:
    prep = config.prepare
    unsupported = []
    if prep.outliers is not None:
        unsupported.append("data.prepare.outliers (remove it)")
    if prep.missing_target == "drop":
        unsupported.append("data.prepare.missing_target: drop (fill the targets first)")
    if config.imbalance.method not in ("none", "class_weight"):
        unsupported.append(f"data.imbalance: {config.imbalance.method} (use class_weight, or none)")
    if config.split.by in ("time", "column"):
        unsupported.append(f"data.split.by: {config.split.by} (use data.split.group, or no stream)")
    if unsupported:
        raise DataError(
            f"Streaming (data.stream) cannot use {'; '.join(unsupported)}: resampling, "
            "outlier removal and a split by time need every row in memory (a stream splits "
            "rows by a hash of the row number or of split.group). Remove data.stream to load "
            "the data into memory instead."
        )
    if prep.dedupe:
        logger.warning(
            "Streaming does not drop duplicate rows (data.prepare.dedupe needs every row in "
            "memory); no row is dropped as a duplicate."
        )
    if config.split.group is None:
        logger.info(
            "Streaming splits rows by a hash of the row number: copies of a row may land in "
            "different splits (the in-memory path keeps them together; data.split.group keeps "
            "the rows of a group together when streaming too)."
        )
    if config.split.stratify:
        logger.info("Streaming splits rows by a hash of the row number; it cannot stratify.")
    if config.checks is not None:
        logger.warning("data.checks are not run when streaming (they need every row in memory).")


def _static_kinds(layout: ParquetLayout, target: str, overrides: dict[str, str]) -> dict[str, str]:
    """Kinds known before any row is read: the recipe's, dates and times datetime, numbers
    numeric."""
    import pyarrow as pa

    kinds: dict[str, str] = {}
    for field_ in layout.schema:
        name, dtype = field_.name, field_.type
        if name == target:
            continue
        if name in overrides:
            kinds[name] = overrides[name]
        elif pa.types.is_timestamp(dtype) or pa.types.is_date(dtype):
            kinds[name] = "datetime"
        elif pa.types.is_temporal(dtype):  # durations, times of day: not encoded
            kinds[name] = "ignore"
        elif (
            pa.types.is_integer(dtype)
            or pa.types.is_floating(dtype)
            or pa.types.is_boolean(dtype)
            or pa.types.is_decimal(dtype)
            or pa.types.is_null(dtype)
        ):
            kinds[name] = "numeric"
        else:
            kinds[name] = "categorical"
    return kinds


def _exact(pre: Preprocessor, stats: StreamStats, kind: str) -> tuple[Preprocessor, list[str]]:
    """The sample-fitted preprocessor with every statistic the pass knows exactly put in.

    Fitting on the sample reuses all of :class:`Preprocessor` (kinds, encoders, the reducer);
    the exact values then go through the preprocessor's own JSON state (``to_dict`` →
    ``from_dict``), the format a saved model is rebuilt from, so no private attribute is
    touched. Returns the new preprocessor and the names of the exact statistics.
    """
    config = pre.config
    state = pre.to_dict()
    exact = ["split sizes", *_exact_target(state["schema"], stats.target, kind)]
    if pre.reducer_ is not None:
        logger.info(
            "data.reduce is fitted on the %d sampled rows; scaling and categories stay those of "
            "the sample so that the reducer replays what it was fitted on.",
            len(stats.sample),
        )
        return Preprocessor.from_dict(state), exact
    features = state["schema"]["features"]
    for f in features:
        name, moments = f["name"], stats.moments.get(f["name"])
        if f["kind"] == "numeric" and moments is not None and moments.count:
            _exact_numeric(state, name, moments, config)
        elif f["kind"] == "boolean" and moments is not None and moments.count:
            _exact_boolean(state, name, moments, config)
        elif f["kind"] == "categorical" and name not in stats.truncated:
            _exact_categorical(state, f, stats.categories.get(name), config)
    schema_features = [Feature.from_dict(f) for f in features]
    names = encoded_columns(schema_features, config.encode)
    state["schema"]["encoded_names"], state["schema"]["input_dim"] = list(names), len(names)
    if stats.moments:
        exact.append("count/mean/variance/min/max/missing of numeric and boolean columns")
    if stats.categories:
        exact.append("category counts")
    return Preprocessor.from_dict(state), exact


def _exact_target(schema: dict[str, Any], target: Moments, kind: str) -> list[str]:
    """Put a numeric target's exact mean and std into ``schema``; returns what is exact."""
    if kind == "values" and target.count:
        schema["target_mean"] = target.mean
        std = math.sqrt(target.var())
        schema["target_std"] = std if std > 0 else 1.0
        return ["target mean/std"]
    return ["classes"] if kind == "classes" else []


def _exact_numeric(
    state: dict[str, Any], name: str, moments: Moments, config: PrepareConfig
) -> None:
    """A numeric column's exact mean fill and its standard or min-max scaling."""
    fill = state["fill"].get(name)
    if config.missing == "mean":
        state["fill"][name] = fill = moments.mean
    filled = moments.with_fill(fill) if fill is not None else moments
    if config.scale not in ("standard", "minmax"):
        return
    if config.scale == "standard":
        center, scale = filled.mean, math.sqrt(filled.var())
    else:
        center, scale = filled.min, filled.max - filled.min
    state["center"][name] = center
    state["scale"][name] = scale if math.isfinite(scale) and scale != 0 else 1.0


def _exact_boolean(
    state: dict[str, Any], name: str, moments: Moments, config: PrepareConfig
) -> None:
    """A boolean column's fill: its exact most frequent value (ties: 0)."""
    if config.missing not in ("drop", "constant"):
        ones = round(moments.mean * moments.count)
        state["fill"][name] = 1.0 if ones > moments.count - ones else 0.0


def _exact_categorical(
    state: dict[str, Any],
    feature: dict[str, Any],
    counts: Counter[str] | None,
    config: PrepareConfig,
) -> None:
    """A categorical column's categories from every training row, and its most frequent fill."""
    if not counts:
        return
    feature["categories"] = sorted(counts)
    if feature.get("encoding") == "frequency":  # the shares of every training row
        total = sum(counts.values())
        feature["frequencies"] = [counts[c] / total for c in feature["categories"]]
    if config.missing not in ("drop", "constant"):
        state["fill"][feature["name"]] = min(counts, key=lambda c: (-counts[c], c))
