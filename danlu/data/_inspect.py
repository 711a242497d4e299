"""``inspect_data``: the quality report of a recipe's data, on the very splits training would use.

It loads the source, cleans and splits it with :func:`~danlu.data._prepare.split_rows` (the
steps ``prepare_data`` runs), evaluates ``data.checks`` without stopping at a failure, and returns
:func:`~danlu.data.quality_report`'s report. Nothing is fitted or trained.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from danlu.config import DataConfig
from danlu.data._checks import find_violations
from danlu.data._prepare import normalized_target, split_rows
from danlu.data._quality import quality_report
from danlu.data._sources import load_source
from danlu.data._target import TaskLike, resolve_task
from danlu.errors import DataError

__all__ = ["infer_task", "inspect_data"]

_MAX_CLASSES = 20


def infer_task(column: pd.Series) -> str:
    """``classification`` when ``column`` looks like class labels, else ``regression``.

    Labels are text, booleans, or whole numbers with few distinct values (at most 20, and on
    average at least 5 rows each); any other numbers are a quantity.

    Example:
        >>> import pandas as pd
        >>> infer_task(pd.Series([0, 1, 2] * 10)), infer_task(pd.Series([0.5, 1.7, 2.2]))
        ('classification', 'regression')
    """
    values = column.dropna()
    dtype = column.dtype
    if not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
        return "classification"
    distinct = values.nunique()
    whole = bool((values == values.round()).all())
    if whole and distinct <= _MAX_CLASSES and distinct * 5 <= max(len(values), 10):
        return "classification"
    return "regression"


def inspect_data(config: DataConfig, task: str | TaskLike | None = None) -> dict[str, Any]:
    """Load, clean and split the data of ``config`` as ``prepare_data`` would, and report on it.

    Args:
        config: a recipe's ``data`` block.
        task: ``classification``, ``regression``, or a task object with ``name`` and
            ``target_kind``; None infers classification or regression from the target column
            (a label-set target needs its task named).

    Returns:
        :func:`~danlu.data.quality_report`'s report of the cleaned rows with the train / test
        split, plus ``source``, ``task`` (its name), ``target_kind``, ``cleaning`` (rows loaded and dropped), the split sizes
        (``split.val`` included) and ``checks`` (the ``data.checks`` violations, when set).

    Raises:
        DataError: the source or target cannot be used.
        NotFoundError: an unknown built-in data set.

    Example:
        >>> from danlu.config import DataConfig
        >>> report = inspect_data(DataConfig(source="builtin:iris"))
        >>> report["task"], report["split"]["test"], report["cleaning"]["duplicates_dropped"]
        ('classification', 30, 0)
    """
    raw = load_source(config.source, config.target, read=config.read)
    if task is None:
        if raw.label_columns:
            raise DataError(
                f"data.target lists {len(raw.label_columns)} label columns, which make a "
                "label-set target; name the task to inspect it (a task whose target kind is "
                "label_sets)."
            )
        task = infer_task(raw.frame[raw.target])
    ref = resolve_task(task)
    raw = normalized_target(raw, ref)
    violations = find_violations(raw.frame, config.checks) if config.checks else []
    rows = split_rows(raw, config, ref)
    report = quality_report(
        rows.frame,
        rows.target,
        ref,
        train_idx=rows.train_idx,
        test_idx=rows.test_idx,
        features=rows.features,
        kinds=rows.kinds,
        max_categories=config.prepare.max_categories,
    )
    report["split"]["val"] = len(rows.val_idx)
    report["split"]["stratified"] = rows.stratify
    report["cleaning"] = {
        "rows_loaded": rows.rows_loaded,
        "target_dropped": rows.target_dropped,
        "missing_dropped": rows.missing_dropped,
        "duplicates_dropped": rows.duplicates_dropped,
    }
    report["split"]["by"] = rows.split_by
    if config.checks is not None:
        report["checks"] = {
            "passed": not violations,
            "violations": [v.to_dict() for v in violations],
        }
        report["warnings"] = [
            *(f"Data check failed: {v.line()}" for v in violations),
            *report["warnings"],
        ]
    return {"source": raw.source, "task": ref.name, "target_kind": ref.target_kind, **report}
