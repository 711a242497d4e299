"""Evaluation: metrics with confidence intervals (more of the trust report lands here)."""

from __future__ import annotations

from danlu.evaluate._bootstrap import Interval, bootstrap_ci

__all__ = ["Interval", "bootstrap_ci"]
