"""Runtimes: what turns a batch of prepared rows into the network's raw outputs.

ONNX Runtime is the default (the version's parity-checked ``model.onnx``); torch is the fallback:
the version's :class:`~danlu.models.ModelBundle` (the one predictor), rebuilt from the
safetensors weights. Either way the served model decodes the raw outputs with the bundle's
``decode``, so both runtimes answer what ``danlu.load_model(...).predict`` answers. A version
whose export failed, or was never made, is served by torch: a failed export is never served. A
runtime is called by one thread at a time (the micro-batcher's worker), so neither needs locking.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from danlu.errors import ConfigError, StoreError
from danlu.logging import get_logger
from danlu.store._crypt import read_bytes

if TYPE_CHECKING:
    from danlu.models import ModelBundle
    from danlu.store import ModelVersion, Store

__all__ = ["OnnxRuntime", "Runtime", "TorchRuntime", "load_runtime"]

logger = get_logger(__name__)

RUNTIMES = ("onnx", "torch")


class Runtime(Protocol):
    """Raw outputs for a batch of prepared rows; called by one thread at a time."""

    name: str

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """``x``: (n, input_dim) float32 → raw outputs (n, out) float32 (logits, not labels)."""
        ...


class OnnxRuntime:
    """An ONNX Runtime session on the CPU.

    Args:
        model: the ONNX model, as bytes or a path to ``model.onnx``.
        threads: intra-op threads (one is best when several models or processes share the CPU).

    Example:
        >>> # runtime = OnnxRuntime(store.model_version_path("wine", 3, "model.onnx"))
        >>> # runtime.outputs(x)  # (n, classes) logits
    """

    name = "onnx"

    def __init__(self, model: bytes | str | Path, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover - the [serve] extra installs it
            raise ConfigError(
                "The ONNX runtime needs onnxruntime: pip install 'danlu[serve]', or serve with "
                "--runtime torch."
            ) from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # A path is read here (decrypted when the store encrypts it): ONNX Runtime gets bytes.
        source = model if isinstance(model, bytes) else read_bytes(model)
        self.session = ort.InferenceSession(
            source, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name

    def outputs(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})
        return np.asarray(out[0], dtype=np.float32)


class TorchRuntime:
    """The version's predictor itself (:meth:`ModelBundle.outputs`: eval mode, under
    ``inference_mode``, on the CPU), with the serving thread count.

    Example:
        >>> # runtime = TorchRuntime(load_bundle(store.model_reader(mv), "wine:3"), threads=1)
    """

    name = "torch"

    def __init__(self, bundle: ModelBundle, threads: int = 1) -> None:
        self.bundle = bundle
        self.threads = max(1, int(threads))

    def outputs(self, x: np.ndarray) -> np.ndarray:
        import torch

        # torch's thread count is per process; setting it here keeps the serving setting even
        # when something else changed it.
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        return self.bundle.outputs(np.ascontiguousarray(x, np.float32))


def load_runtime(
    store: Store,
    mv: ModelVersion,
    kind: str = "onnx",
    threads: int = 1,
    *,
    bundle: ModelBundle | None = None,
) -> Runtime:
    """The runtime serving version ``mv``: ``onnx`` (falls back to torch when not ONNX-ready).

    Args:
        store: the store holding the version.
        mv: the version.
        kind: ``onnx`` or ``torch``.
        threads: intra-op threads.
        bundle: the version's already loaded bundle (saves loading it again for torch).

    Raises:
        ConfigError: an unknown ``kind``.
        StoreError: the version's files are missing or corrupt.

    Example:
        >>> # runtime = load_runtime(store, store.resolve("wine:3"), "onnx")
    """
    if kind not in RUNTIMES:
        raise ConfigError(
            f"The runtime must be one of {', '.join(RUNTIMES)}; got '{kind}'. Use --runtime onnx "
            "(the default) or --runtime torch."
        )
    from danlu.models._bundle import torch_installed

    why = "--runtime torch was asked for"
    if kind == "onnx":
        from danlu.export._onnx import onnx_ready, read_onnx

        if onnx_ready(store, mv):
            try:
                return OnnxRuntime(read_onnx(store, mv), threads)
            except StoreError as exc:  # not the file the parity check passed: never serve it
                why = f"its model.onnx failed its check: {exc}"
                if torch_installed():
                    logger.warning("%s Serving model %s with torch instead.", exc, mv.ref)
        elif _torch_variant(store, mv):
            why = "it is a torch int8 variant: its int8 layers are torch's own"
            if torch_installed():
                logger.info("Model %s is a torch int8 variant; serving it with torch.", mv.ref)
        else:
            why = f"it has no successful ONNX export ({_export_failure(store, mv)})"
            if torch_installed():
                logger.warning(
                    "Model %s has no successful ONNX export (its export failed or was never "
                    "made); serving it with torch. Run `danlu export %s --format onnx` to serve "
                    "it with ONNX Runtime.",
                    mv.ref,
                    mv.ref,
                )
    if not torch_installed():
        from danlu.errors import MissingExtraError

        export = (
            f"; or export it again (danlu export {mv.ref} --format onnx) to serve it with ONNX "
            "Runtime"
            if why.startswith("it has no") or why.startswith("its model.onnx")
            else ""
        )
        raise MissingExtraError(
            f"Model {mv.ref} serves with the torch runtime ({why}), but torch is not installed "
            f"here. Install torch (pip install torch), or package the model with torch{export}."
        )
    if bundle is None:
        from danlu.models import load_bundle

        bundle = load_bundle(store.model_reader(mv), f"Model {mv.ref}")
    return TorchRuntime(bundle, threads)


def _export_failure(store: Store, mv: ModelVersion) -> str:
    """Why the version has no ONNX model to serve, from its ``export.json``, in a few words."""
    from danlu.export._onnx import read_export

    try:
        export = read_export(store, mv)
    except StoreError as exc:
        return f"its export.json is unreadable: {exc}"
    if export is None:
        return "it was never exported"
    status = export.get("status")
    if status == "ok":
        return "its model.onnx is missing or not the file its export wrote"
    error = export.get("error")
    return f"its export {status or 'failed'}: {error}" if error else f"its export {status}"


def _torch_variant(store: Store, mv: ModelVersion) -> bool:
    """A compressed variant that ``danlu compress`` measured on torch (its int8 layers are
    torch's): torch is its runtime, not a fallback."""
    from danlu.export._onnx import read_export

    try:
        export = read_export(store, mv) or {}
    except StoreError:
        return False
    return export.get("runtime") == "torch" and bool(export.get("compression"))
