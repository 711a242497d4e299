"""Export and loading of registered models (safetensors weights, JSON preprocessing, signature)."""

from __future__ import annotations

from danlu.export._predictor import Predictor, load_model, parse_model_ref

__all__ = ["Predictor", "load_model", "parse_model_ref"]
