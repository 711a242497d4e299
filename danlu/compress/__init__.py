"""Compression: int8 quantization, pruning, knowledge distillation and low-rank factorisation of
a trained model — each variant measured on the test split and the runtime that serves it, kept
only when it passes the recipe's accuracy gate, and registered like any version."""

from __future__ import annotations

from danlu.compress._measure import Measurement
from danlu.compress._run import compress, compress_stage
from danlu.compress._stage import CompressResult, VariantResult, compress_model
from danlu.compress._types import CompressJob, Variant

__all__ = [
    "CompressJob",
    "CompressResult",
    "Measurement",
    "Variant",
    "VariantResult",
    "compress",
    "compress_model",
    "compress_stage",
]
