"""int8 quantization: one :class:`~danlu.compress.Variant` per method the recipe lists.

Which int8 flavour is fastest depends on the model and the runtime (ONNX Runtime's dynamic int8
speeds an MLP up several times and slows a small CNN down; static QDQ helps the CNN a little;
torch's dynamic int8 suits Linear-heavy models served by torch), so every method the recipe asks
for is made and the stage measures them side by side:

- ``int8-torch-dynamic``: torch's dynamic int8 Linear layers, served by torch; stored as plain
  safetensors (:mod:`danlu.models._quantized`), the card says ``quantize: torch-dynamic-int8``.
- ``int8-ort-dynamic``: ONNX Runtime's dynamic int8 (int8 weights, activations quantized per
  batch) of the fp32 ONNX export, served by ONNX Runtime.
- ``int8-ort-static``: ONNX Runtime's static QDQ int8, its activation ranges calibrated on
  ``quantize.calibration_rows`` training rows; per-channel weights.
- ``int8-torchao``: skipped with the reason (torchao's int8 tensors have no pickle-free format
  danlu can store).

A method that cannot quantize the model (no Linear layer, an op a backend refuses, an export
that fails) gives a skipped or failed variant with the reason; the others are still made.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from danlu.compress._types import CompressJob, Variant
from danlu.logging import get_logger

if TYPE_CHECKING:
    import numpy as np

__all__ = ["quantize_variants"]

log = get_logger(__name__)

METHOD = "quantize"
#: ONNX ops holding int8 arithmetic after quantization (dynamic and QDQ)
_INT8_OPS = {
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantizeLinear",
    "DynamicQuantizeMatMul",
    "QuantizeLinear",
    "DequantizeLinear",
    "QLinearMatMul",
    "QLinearConv",
    "QAttention",
}
#: with text inputs the token ids arrive as float32 columns: only weight-bearing matrix products
#: are quantized, so the ids (and the embedding Gather they index) stay exact fp32
_TEXT_DYNAMIC_OPS = ["MatMul", "Gemm"]
_TEXT_STATIC_OPS = ["MatMul", "Gemm", "Conv"]
_CALIBRATION_BATCH = 64


def quantize_variants(job: CompressJob) -> list[Variant]:
    """One int8 variant of ``job.model`` per method in ``job.config.quantize.methods``.

    Each method runs on its own: one that cannot quantize this model gives a ``skipped`` or
    ``failed`` variant with the reason (exception type and message) and the others still run.
    ``job.model`` is never changed.

    Example:
        >>> # [v.name for v in quantize_variants(job)]
        >>> # ['int8-torch-dynamic', 'int8-ort-dynamic', 'int8-ort-static']
    """
    config = job.config.quantize
    if config is None:
        return []
    variants = []
    exports: dict[str, bytes] = {}  # the fp32 ONNX graph, exported once for both ORT methods
    for method in config.methods:
        name = f"int8-{method}"
        try:
            variant = _MAKERS[method](job, name, exports)
        except Exception as exc:  # one backend's failure must not stop the others
            log.warning("Could not make %s: %s: %s", name, type(exc).__name__, exc)
            variant = Variant.failed(name, METHOD, f"{type(exc).__name__}: {exc}")
        if variant.status == "ok":
            log.info(
                "Made %s (%s)", name, ", ".join(f"{k}={v}" for k, v in variant.details.items())
            )
        elif variant.status == "skipped":
            log.info("Skipped %s: %s", name, variant.reason)
        variants.append(variant)
    return variants


def _torch_dynamic(job: CompressJob, name: str, exports: dict[str, bytes]) -> Variant:
    """torch's dynamic int8 of the Linear layers, stored as plain int8 / scale / zero-point
    tensors (no pickle)."""
    from safetensors.torch import save as st_save
    from torch import nn

    from danlu.models._base_weights import BASE_CARD_KEY
    from danlu.models._quantized import (
        TORCH_DYNAMIC_INT8,
        quantize_torch_dynamic,
        quantized_linears,
        quantized_tensors,
    )

    linears = sum(isinstance(m, nn.Linear) for m in job.model.modules())
    if not linears:
        return Variant.skipped(
            name, METHOD, "the model has no nn.Linear layer for torch's dynamic int8 to quantize"
        )
    if BASE_CARD_KEY in job.card:
        return Variant.skipped(
            name,
            METHOD,
            "the model stores its adapters apart from its pretrained base, which torch's "
            "dynamic int8 would change; int8-ort-dynamic quantizes the whole network",
        )
    quantized = quantize_torch_dynamic(copy.deepcopy(job.model).eval())
    done = len(quantized_linears(quantized))
    return Variant(
        name=name,
        method=METHOD,
        runtime="torch",
        model=quantized,
        weights=st_save(quantized_tensors(quantized)),
        card={"quantize": TORCH_DYNAMIC_INT8},
        keep_calibration=True,
        details={"backend": "torch", "quantized_layers": done},
    )


def _sample(job: CompressJob) -> np.ndarray:
    """A few prepared rows for the exporter: test rows, else training rows."""
    data = job.data
    return data.x_test[:8] if len(data.x_test) else data.x_train[:8]


def _has_text(job: CompressJob) -> bool:
    return bool(job.data.schema.text_slices())


def _ort_quantized(
    job: CompressJob,
    name: str,
    exports: dict[str, bytes],
    quantize: Callable[[str, str], None],
    details: dict[str, Any],
) -> Variant:
    """The fp32 ONNX export of ``job.model`` quantized by ``quantize(source, target)`` (ONNX
    Runtime's quantizers work on files) as an ONNX-served variant, or skipped when the graph has
    nothing to quantize."""
    import onnx

    from danlu.export import export_onnx

    if "fp32" not in exports:  # the stage's export of the fp32 model, else one made here
        exports["fp32"] = job.onnx or export_onnx(
            job.model, job.data.schema.input_dim, _sample(job)
        )
    fp32 = exports["fp32"]
    with tempfile.TemporaryDirectory(prefix="danlu-int8-") as folder:
        source, target = os.path.join(folder, "fp32.onnx"), os.path.join(folder, "int8.onnx")
        with open(source, "wb") as f:
            f.write(_mark_preprocessed(fp32))
        quantize(source, target)
        with open(target, "rb") as f:
            int8 = f.read()
    nodes = [n.op_type for n in onnx.load_from_string(int8).graph.node]
    count = sum(op in _INT8_OPS for op in nodes)
    if not count:
        return Variant.skipped(
            name, METHOD, "ONNX Runtime found no op of this model it can quantize to int8"
        )
    return Variant(
        name=name,
        method=METHOD,
        runtime="onnx",
        model=job.model,  # the fp32 parent: explanations and the torch fallback
        onnx=int8,
        keep_calibration=True,
        details={
            "backend": "onnxruntime",
            **details,
            "int8_nodes": count,
            "fp32_bytes": len(fp32),
            "int8_bytes": len(int8),
        },
    )


def _mark_preprocessed(onnx_bytes: bytes) -> bytes:
    """The graph with ONNX's shape inference run (the tensor shapes ONNX Runtime's quantizer
    reads) and marked as pre-processed: unmarked, the quantizer logs advice through the root
    logger, which also installs a stderr handler on it. ORT's full pre-processing (symbolic
    shapes and graph fusions) was measured too: no faster on the MLP and CNN here."""
    import onnx

    proto = onnx.load_from_string(onnx_bytes)
    try:
        proto = onnx.shape_inference.infer_shapes(proto)
    except Exception as exc:  # shapes are a help to the quantizer, not a need
        log.debug("ONNX shape inference failed before quantization: %s", exc)
    if not any(p.key == "onnx.quant.pre_process" for p in proto.metadata_props):
        entry = proto.metadata_props.add()
        entry.key, entry.value = "onnx.quant.pre_process", "onnxruntime.quant"
    return proto.SerializeToString()


def _ort_dynamic(job: CompressJob, name: str, exports: dict[str, bytes]) -> Variant:
    """ONNX Runtime's dynamic int8: int8 weights, activations quantized batch by batch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = _TEXT_DYNAMIC_OPS if _has_text(job) else None
    # per-tensor weights: measured on 1 CPU thread, MLPs 30-256-256-2 and 64-512-512-10 at batch
    # 64 ran 60 / 153 µs per-tensor against 63 / 159 µs per-channel (fp32: 115 / 400 µs), and
    # differed from fp32 as little (max |Δ logit| 0.003-0.004 either way)
    per_channel = False

    def quantize(source: str, target: str) -> None:
        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            op_types_to_quantize=ops,
        )

    details = {"per_channel": per_channel, "op_types": ops or "default"}
    return _ort_quantized(job, name, exports, quantize, details)


def _ort_static(job: CompressJob, name: str, exports: dict[str, bytes]) -> Variant:
    """ONNX Runtime's static QDQ int8, calibrated on training rows, per-channel weights."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    assert job.config.quantize is not None
    rows = job.data.x_train[: job.config.quantize.calibration_rows]
    if not len(rows):
        return Variant.skipped(name, METHOD, "no training rows to calibrate the int8 ranges on")

    class TrainingRows(CalibrationDataReader):  # type: ignore[misc]
        """The calibration rows in batches, as ONNX Runtime's calibrator asks for them."""

        def __init__(self, x: np.ndarray) -> None:
            import numpy as np

            self.batches = iter(
                np.ascontiguousarray(x[i : i + _CALIBRATION_BATCH], dtype=np.float32)
                for i in range(0, len(x), _CALIBRATION_BATCH)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    ops = _TEXT_STATIC_OPS if _has_text(job) else None

    def quantize(source: str, target: str) -> None:
        quantize_static(
            source,
            target,
            TrainingRows(rows),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            op_types_to_quantize=ops,
        )

    details = {
        "calibration_rows": len(rows),
        "per_channel": True,
        "format": "QDQ",
        "op_types": ops or "default",
    }
    return _ort_quantized(job, name, exports, quantize, details)


def _torchao(job: CompressJob, name: str, exports: dict[str, bytes]) -> Variant:
    """torchao's int8: skipped. Its quantized weights are tensor subclasses that only pickle
    (``torch.save``) stores, and danlu never writes or loads a pickled model file."""
    try:
        import torchao  # noqa: F401
    except ImportError:
        return Variant.skipped(name, METHOD, "torchao is not installed: pip install torchao")
    return Variant.skipped(
        name,
        METHOD,
        "torchao's int8 weights are tensor subclasses that only pickle can store, and danlu "
        "never stores a model as a pickle; int8-torch-dynamic gives int8 Linear layers on torch",
    )


_MAKERS: dict[str, Callable[[CompressJob, str, dict[str, bytes]], Variant]] = {
    "torch-dynamic": _torch_dynamic,
    "ort-dynamic": _ort_dynamic,
    "ort-static": _ort_static,
    "torchao": _torchao,
}
