"""Evaluation and the trust report: metrics with confidence intervals, training curves,
cross-validation, baselines, calibration, fairness, robustness, explanations and cost.

Example:
    >>> from danlu.evaluate import evaluate_run
    >>> report = evaluate_run(run_id)  # doctest: +SKIP
    >>> print(report.summary)  # doctest: +SKIP
"""

from __future__ import annotations

from danlu.evaluate._bootstrap import Interval, bootstrap_ci, wilson_interval
from danlu.evaluate._context import EvalData, InputGroup, Section, input_groups
from danlu.evaluate._evaluator import (
    build_report,
    check_columns,
    check_fairness_group,
    evaluate_model,
    evaluate_run,
    save_report,
)
from danlu.evaluate._report import SECTION_ORDER, Report, field_label

__all__ = [
    "SECTION_ORDER",
    "EvalData",
    "InputGroup",
    "Interval",
    "Report",
    "Section",
    "bootstrap_ci",
    "build_report",
    "check_columns",
    "check_fairness_group",
    "evaluate_model",
    "evaluate_run",
    "field_label",
    "input_groups",
    "save_report",
    "wilson_interval",
]
