"""Evaluation and the trust report: metrics with confidence intervals, cross-validation,
baselines, calibration, fairness, robustness, explanations and cost."""

from __future__ import annotations

from danlu.evaluate._bootstrap import Interval, bootstrap_ci
from danlu.evaluate._context import EvalData, InputGroup, Section, input_groups

__all__ = ["EvalData", "InputGroup", "Interval", "Section", "bootstrap_ci", "input_groups"]
