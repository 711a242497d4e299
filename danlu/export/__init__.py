"""Registration, export and loading of models (safetensors weights, JSON preprocessing, signature,
and ONNX with a parity check against torch), and batch prediction over files (``predict_file``)."""

from __future__ import annotations

from danlu.export._batch import BatchPredictor, BatchResult, predict_file
from danlu.export._onnx import (
    ExportResult,
    export_onnx,
    export_version,
    onnx_ready,
    parity_check,
    read_export,
    read_onnx,
)
from danlu.export._predictor import Predictor, load_model, parse_model_ref
from danlu.export._register import register_model

__all__ = [
    "BatchPredictor",
    "BatchResult",
    "ExportResult",
    "Predictor",
    "export_onnx",
    "export_version",
    "load_model",
    "onnx_ready",
    "parity_check",
    "parse_model_ref",
    "predict_file",
    "read_export",
    "read_onnx",
    "register_model",
]
