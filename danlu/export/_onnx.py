"""ONNX export of a registered model, checked against torch before anything may serve it.

``export_version(store, "digits:3")`` rebuilds the version from its files, exports the network
to ONNX (a dynamic batch axis; one self-contained file), runs ONNX Runtime and torch on the same
real, preprocessed rows and writes beside the version's other files:

- ``model.onnx`` and ``export.json`` (status ``ok``) when the outputs agree within ``atol`` and
  every row's argmax agrees;
- only ``export.json`` (status ``failed``, with the diff) when they do not.

A version's files are written, never deleted, so a failed re-export cannot remove an older
``model.onnx``: servers ask :func:`onnx_ready`, which trusts ``model.onnx`` only while
``export.json`` says ``ok`` and describes that very file (size and SHA-256).

The graph maps the preprocessed float32 matrix ``input`` (batch, input_dim) to the raw model
outputs ``output`` (batch, out): logits before ``calibration.json``'s temperature for
classification, the standardised target for regression. The preprocessing (``preprocessing.json``)
and the signature already live in the version; the weights stay in safetensors.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from danlu.errors import DataError, MissingExtraError, NotFoundError, StoreError
from danlu.logging import get_logger
from danlu.store import ModelVersion, Store
from danlu.store._crypt import plaintext_size, read_bytes

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = [
    "ExportResult",
    "export_onnx",
    "export_version",
    "onnx_outputs",
    "onnx_ready",
    "parity_check",
    "read_export",
    "read_onnx",
]

log = get_logger(__name__)

ONNX_FILE = "model.onnx"
EXPORT_FILE = "export.json"
SAMPLE_ROWS = 256  # real test rows the parity check runs when none are given
_EXAMPLE_ROWS = 8  # rows traced by the exporter (≥ 2, so the batch axis is not specialised to 1)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(
            f"ONNX export needs onnx, onnxscript and onnxruntime ({exc.name} is missing). "
            "Install them with: pip install 'danlu[serve]'"
        ) from None


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' chatter, narrowly: their progress lines on stdout/stderr, torch's
    registration log lines, and the deprecation notices they raise as warnings."""
    torch_onnx_log = logging.getLogger("torch.onnx")
    level = torch_onnx_log.level
    torch_onnx_log.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with (
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
            warnings.catch_warnings(),
        ):
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*LeafSpec")
            # torch.export's LSTM / GRU decomposition (the forecasting models) warns about its
            # own internals: a deprecated size check, the flat weights, a .grad read
            warnings.filterwarnings(
                "ignore", category=FutureWarning, message=r"_check_is_size will be removed"
            )
            for message in (r"The tensor attributes .*_flat_weights", r"The \.grad attribute"):
                warnings.filterwarnings("ignore", category=UserWarning, message=message)
            warnings.filterwarnings(
                "ignore", category=DeprecationWarning, message=r".*legacy TorchScript-based ONNX"
            )
            warnings.filterwarnings(
                "ignore", category=DeprecationWarning, message=r"The feature will be removed"
            )
            # the legacy exporter warns when it meets an op it folds (e.g. dropout in eval mode)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            yield
    finally:
        torch_onnx_log.setLevel(level)


def _example(sample: np.ndarray, input_dim: int) -> torch.Tensor:
    """A few rows of ``sample`` as the traced example, shape (rows, input_dim)."""
    import numpy as np
    import torch

    x = np.asarray(sample, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != input_dim or x.shape[0] == 0:
        raise DataError(
            f"The sample rows must be a float32 array of shape (rows ≥ 1, {input_dim}) "
            f"(preprocessed model inputs); got shape {x.shape}."
        )
    x = x[:_EXAMPLE_ROWS]
    if x.shape[0] == 1:  # trace with 2 rows: a batch of 1 can get specialised into the graph
        x = np.concatenate([x, x])
    return torch.from_numpy(np.ascontiguousarray(x))


def _dynamo_export(model: torch.nn.Module, example: torch.Tensor, path: str) -> None:
    import torch

    batch = torch.export.Dim("batch")
    torch.onnx.export(
        model,
        (example,),
        path,
        dynamo=True,
        external_data=False,  # one self-contained file, no side model.onnx.data
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes=({0: batch},),
        verbose=False,
    )


def _legacy_export(model: torch.nn.Module, example: torch.Tensor, path: str) -> None:
    import torch

    torch.onnx.export(
        model,
        (example,),
        path,
        dynamo=False,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        opset_version=18,
    )


def _export(model: torch.nn.Module, input_dim: int, sample: np.ndarray) -> tuple[bytes, str]:
    """ONNX bytes and the exporter that made them (``dynamo`` or ``torchscript``)."""
    _require_onnx()
    import onnx
    from onnx.external_data_helper import uses_external_data

    example = _example(sample, input_dim)
    native = getattr(model, "to_onnx", None)
    if callable(native):  # a tree ensemble writes its own graph (ONNX-ML trees, run natively)
        proto = onnx.load_from_string(native())
        entry = proto.metadata_props.add()
        entry.key, entry.value = "danlu.exporter", "trees"
        return proto.SerializeToString(), "trees"
    if any(type(m).__module__.startswith("peft.") for m in model.modules()):
        from danlu.models import merge_adapters

        model = merge_adapters(model)  # LoRA folded into plain Linear layers: one matmul each
    training = model.training
    model.eval()
    errors: list[str] = []
    try:
        for exporter, run in (("dynamo", _dynamo_export), ("torchscript", _legacy_export)):
            with tempfile.TemporaryDirectory(prefix="danlu-onnx-") as folder:
                path = os.path.join(folder, ONNX_FILE)
                try:
                    with _quiet_exporter():
                        run(model, example, path)
                except Exception as exc:  # any exporter failure: try the next one, then report
                    errors.append(f"{exporter}: {type(exc).__name__}: {str(exc)[:500]}")
                    log.info("The %s ONNX exporter failed: %s", exporter, exc)
                    continue
                written = sorted(os.listdir(folder))
                proto = onnx.load(path, load_external_data=False)
                if written != [ONNX_FILE] or any(
                    uses_external_data(t) for t in proto.graph.initializer
                ):
                    errors.append(f"{exporter}: wrote {written}, not one self-contained file")
                    continue
            entry = proto.metadata_props.add()
            entry.key, entry.value = "danlu.exporter", exporter
            return proto.SerializeToString(), exporter
    finally:
        model.train(training)
    raise StoreError("ONNX export failed with every exporter: " + "; ".join(errors))


def export_onnx(model: torch.nn.Module, input_dim: int, sample: np.ndarray) -> bytes:
    """The model as ONNX bytes: ``input`` float32 (batch, input_dim) → ``output`` (batch, out).

    The batch axis is dynamic (a batch of 1 works) and the file is self-contained (no external
    data). LoRA adapters (peft) are merged into their base weights first, on a copy. The
    torch.export-based exporter is tried first, the TorchScript one only if it fails; the one
    used is recorded in the model's metadata (``danlu.exporter``).

    Args:
        model: the network (it is exported in eval mode; its mode is restored afterwards).
        input_dim: the number of model inputs (``schema.input_dim``).
        sample: preprocessed float32 rows, shape (rows, input_dim); a few are traced.

    Raises:
        DataError: ``sample`` has the wrong shape.
        StoreError: every exporter failed (the message has each one's error).

    Example:
        >>> # onnx_bytes = export_onnx(bundle.model, schema.input_dim, prepared.x_test[:8])
    """
    return _export(model, input_dim, sample)[0]


def _session(onnx_bytes: bytes) -> Any:
    _require_onnx()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT's warnings go to the process's stderr
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def onnx_outputs(
    onnx_bytes: bytes, threads: int | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """Prepared rows → the graph's raw outputs (float32), on an ONNX Runtime CPU session with
    every graph optimization and ``threads`` intra-op threads (ONNX Runtime's default when
    None): what batch prediction and the compression measurements run."""
    _require_onnx()
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def outputs(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return np.asarray(session.run(None, {name: x})[0], dtype=np.float32)

    return outputs


def _abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| elementwise, 0 where both are the same non-finite value, inf where one is NaN."""
    import numpy as np

    with np.errstate(invalid="ignore"):
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))


def parity_check(
    model: torch.nn.Module, onnx_bytes: bytes, x: np.ndarray, atol: float = 1e-4
) -> dict[str, Any]:
    """Run ONNX Runtime and torch on the same rows and compare: a batch of 1, then all of ``x``.

    Returns:
        ``rows``, ``max_abs_diff`` (over both batches), ``argmax_agreement`` (share of rows whose
        argmax over the last axis agrees; with a single output column, the share of rows within
        ``atol``), ``atol``, ``passed`` (max diff ≤ atol and every argmax agrees) and
        ``batch_sizes_checked``.

    Example:
        >>> # parity_check(model, export_onnx(model, 13, x), x)["passed"]
        True
    """
    import numpy as np
    import torch

    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2 or x.shape[0] == 0:
        raise DataError(
            f"The parity check needs preprocessed rows of shape (rows ≥ 1, input_dim); got {x.shape}."
        )
    session = _session(onnx_bytes)
    training = model.training
    model.eval()
    worst, full_onnx, full_torch = 0.0, None, None
    try:
        for batch in (x[:1], x):
            (got,) = session.run(["output"], {"input": batch})
            with torch.inference_mode():
                want = model(torch.from_numpy(batch)).float().numpy()
            if got.shape != want.shape:
                raise StoreError(
                    f"The ONNX model's output has shape {got.shape} where torch's has {want.shape} "
                    f"on a batch of {len(batch)}."
                )
            diff = _abs_diff(got, want)
            worst = max(worst, float(diff.max()) if diff.size else 0.0)
            full_onnx, full_torch = got, want
    finally:
        model.train(training)
    assert full_onnx is not None and full_torch is not None
    if full_onnx.ndim >= 2 and full_onnx.shape[-1] > 1:
        same = np.argmax(full_onnx, axis=-1) == np.argmax(full_torch, axis=-1)
    else:  # one output column (regression): "agreement" is being within atol
        same = _abs_diff(full_onnx, full_torch).reshape(len(x), -1).max(axis=1) <= atol
    agreement = float(np.mean(same))
    return {
        "rows": int(len(x)),
        "max_abs_diff": worst,
        "argmax_agreement": agreement,
        "atol": float(atol),
        "passed": bool(worst <= atol and agreement == 1.0),
        "batch_sizes_checked": [1, int(len(x))],
    }


@dataclass
class ExportResult:
    """What :func:`export_version` did.

    Attributes:
        ref: the version exported (``name:version``).
        status: ``ok`` (``model.onnx`` written) or ``failed`` (only ``export.json``).
        parity: the :func:`parity_check` result (None when the export itself failed).
        size_bytes: the ONNX file's size (0 when nothing was exported).
        exporter: ``dynamo`` or ``torchscript`` (None when both failed); ``trees`` for a tree
            ensemble, which writes its own ONNX-ML graph (:meth:`TreeEnsemble.to_onnx`).
        opset: the ONNX opset of the graph (None when nothing was exported).
        seconds: time spent exporting and checking.
        error: why the export failed, with the diff for a failed parity check.
    """

    ref: str
    status: str
    parity: dict[str, Any] | None = None
    size_bytes: int = 0
    exporter: str | None = None
    opset: int | None = None
    seconds: float = 0.0
    error: str | None = None
    export: dict[str, Any] = field(default_factory=dict)  # the export.json written

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "export"}


def _parity_message(parity: dict[str, Any]) -> str:
    return (
        f"max |onnx − torch| = {parity['max_abs_diff']:.3g} "
        f"{'≤' if parity['max_abs_diff'] <= parity['atol'] else '>'} atol {parity['atol']:g} "
        f"on {parity['rows']} rows; argmax agrees on {100 * parity['argmax_agreement']:.1f}%"
    )


def _sample_rows(store: Store, mv: ModelVersion) -> np.ndarray:
    """The first rows of the version's run's test split, prepared again from its recipe."""
    from danlu.config import load_recipe
    from danlu.models import prepare_recipe_data
    from danlu.tasks import get_task

    hint = (
        "Pass preprocessed sample rows instead: export_version(store, ref, sample=x) with x of "
        "shape (rows, input_dim)."
    )
    if mv.run_id is None:
        raise StoreError(
            f"The run that trained model {mv.ref} was deleted (or the version was registered "
            f"without one), so no real test rows can be prepared for the parity check. {hint}"
        )
    try:
        run = store.get_run(mv.run_id)
    except NotFoundError:
        raise StoreError(
            f"The run {mv.run_id} that trained model {mv.ref} was deleted, so its test rows for "
            f"the parity check cannot be prepared again. {hint}"
        ) from None
    if not run.recipe:
        raise StoreError(
            f"The run {mv.run_id} that trained model {mv.ref} kept no recipe, so its test rows "
            f"for the parity check cannot be prepared again. {hint}"
        )
    recipe = load_recipe(run.recipe)
    prepared = prepare_recipe_data(recipe, get_task(recipe.task))
    for x in (prepared.x_test, prepared.x_val, prepared.x_train):
        if len(x):
            return x[:SAMPLE_ROWS]
    raise DataError(f"The data of run {mv.run_id} has no rows for the parity check. {hint}")


def _opset(onnx_bytes: bytes) -> int | None:
    import onnx

    proto = onnx.load_from_string(onnx_bytes)
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def export_version(
    store: Store,
    ref: str,
    *,
    sample: np.ndarray | None = None,
    atol: float = 1e-4,
    actor: str = "danlu",
) -> ExportResult:
    """Export a registered version to ONNX, check it against torch and record the outcome.

    Args:
        store: the store holding the version.
        ref: ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS``.
        sample: preprocessed float32 rows (rows, input_dim) to check on; by default the first
            256 test rows of the version's run, prepared again from its recipe.
        atol: the largest absolute difference between ONNX Runtime's and torch's outputs allowed.
        actor: who exports, for the registry's audit log.

    Returns:
        The result; ``status`` is ``failed`` (and nothing is served) when the export or its
        parity check failed — that is not raised, the error says why and shows the diff.

    Raises:
        NotFoundError: no such model version.
        StoreError: no sample given and the version's run (or its recipe) is gone.
        DataError: ``sample`` has the wrong shape.

    Example:
        >>> # result = export_version(SqlStore(), "digits@production")
        >>> # result.status, result.parity["max_abs_diff"]
    """
    import numpy as np

    from danlu.models import load_bundle

    if not atol >= 0:
        raise DataError(f"atol must be a number ≥ 0 (e.g. 1e-4); got {atol}.")
    _require_onnx()
    started = time.perf_counter()
    mv = store.resolve(ref)
    _refuse_compressed(store, mv)
    bundle = load_bundle(store.model_reader(mv), f"Model {mv.ref}")
    input_dim = bundle.schema.input_dim
    if sample is None:
        x = _sample_rows(store, mv)
    else:
        x = np.asarray(sample, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != input_dim or x.shape[0] == 0:
        raise DataError(
            f"The sample rows for model {mv.ref} must be preprocessed float32 of shape "
            f"(rows ≥ 1, {input_dim}); got shape {x.shape}. Turn raw rows into model inputs "
            "with the version's preprocessor (Preprocessor.transform)."
        )

    result = ExportResult(ref=mv.ref, status="failed")
    onnx_bytes = b""
    try:
        onnx_bytes, result.exporter = _export(bundle.model, input_dim, x)
    except StoreError as exc:
        result.error = str(exc)
    if result.exporter is not None:
        result.size_bytes = len(onnx_bytes)
        result.opset = _opset(onnx_bytes)
        try:
            result.parity = parity_check(bundle.model, onnx_bytes, x, atol=atol)
        except StoreError as exc:
            result.error = f"The exported ONNX model cannot be checked: {exc}"
        except Exception as exc:  # ONNX Runtime refusing the graph is a failed export, not a crash
            result.error = (
                f"ONNX Runtime cannot run the exported model: {type(exc).__name__}: {exc}"
            )
        else:
            if result.parity["passed"]:
                result.status = "ok"
            else:
                result.error = (
                    f"The ONNX export of model {mv.ref} disagrees with torch: "
                    f"{_parity_message(result.parity)}."
                )
    result.seconds = time.perf_counter() - started

    out_dim = None
    if result.status == "ok":
        import torch

        with torch.inference_mode():
            out_dim = int(bundle.model(torch.from_numpy(np.ascontiguousarray(x[:1]))).shape[-1])
    export: dict[str, Any] = {
        "format": "onnx",
        "status": result.status,
        "file": ONNX_FILE if result.status == "ok" else None,
        "opset": result.opset,
        "exporter": result.exporter,
        "parity": result.parity,
        "input": {"name": "input", "dtype": "float32", "shape": [None, input_dim]},
        "output": {"name": "output", "dtype": "float32", "shape": [None, out_dim]},
        "size_bytes": result.size_bytes if result.status == "ok" else None,
        "sha256": hashlib.sha256(onnx_bytes).hexdigest() if result.status == "ok" else None,
        "error": result.error,
        "seconds": round(result.seconds, 3),
        "created_at": datetime.now(UTC).isoformat(),
    }
    files = {EXPORT_FILE: json.dumps(export, indent=2, allow_nan=False).encode()}
    if result.status == "ok":  # model.onnx first: export.json then describes a file that exists
        files = {ONNX_FILE: onnx_bytes, **files}
    store.attach_model_files(mv.name, mv.version, files, actor=actor)
    result.export = export
    if result.ok:
        log.info(
            "Exported model %s to ONNX (%s, %d bytes).", mv.ref, result.exporter, len(onnx_bytes)
        )
    else:
        log.info("ONNX export of model %s failed: %s", mv.ref, result.error)
    return result


def _refuse_compressed(store: Store, mv: ModelVersion) -> None:
    """A variant made by ``danlu compress`` is served as it was measured: its int8 graph is not
    replaced by an fp32 export of its torch weights, nor its torch int8 layers exported."""
    try:
        export = read_export(store, mv) or {}
    except StoreError:
        export = {}
    variant = mv.tags.get("compression") or export.get("compression")
    if variant and (export.get("exporter") == "danlu compress" or export.get("runtime") == "torch"):
        raise StoreError(
            f"Model {mv.ref} is the compressed variant {variant} of {mv.tags.get('parent', 'its parent')}; "
            "it is served as danlu compress measured it and is not exported again. Compress "
            "the parent again to remake it: danlu compress "
            f"{mv.tags.get('parent', 'PARENT')}"
        )


def read_export(store: Store, mv: ModelVersion) -> dict[str, Any] | None:
    """The version's ``export.json``, or None when it was never exported."""
    path = store.model_version_path(mv.name, mv.version, EXPORT_FILE)
    if not path.is_file():
        return None
    try:
        data = json.loads(read_bytes(path))
    except (ValueError, OSError) as exc:
        raise StoreError(f"Model {mv.ref}'s {EXPORT_FILE} cannot be read ({exc}).") from None
    return data if isinstance(data, dict) else None


def onnx_ready(store: Store, mv: ModelVersion) -> bool:
    """True when the version may be served from ONNX: its last export passed the parity check
    and ``model.onnx`` is the file that export wrote (same size).

    A failed re-export leaves an older ``model.onnx`` in place; this says False for it.
    """
    try:
        export = read_export(store, mv)
    except StoreError:
        return False
    if not export or export.get("status") != "ok":
        return False
    path = store.model_version_path(mv.name, mv.version, ONNX_FILE)
    if not path.is_file():
        return False
    size = export.get("size_bytes")
    return size is None or plaintext_size(path) == size


def read_onnx(store: Store, mv: ModelVersion) -> bytes:
    """The version's ``model.onnx`` bytes, only when :func:`onnx_ready` and its SHA-256 matches.

    Raises:
        StoreError: the version has no passing export, or the file is not the one exported.
    """
    if not onnx_ready(store, mv):
        export = read_export(store, mv)
        why = (
            "it was never exported"
            if export is None
            else f"its last export failed: {export.get('error')}"
            if export.get("status") != "ok"
            else f"its {ONNX_FILE} is missing"
        )
        raise StoreError(
            f"Model {mv.ref} has no servable ONNX file: {why}. Run: danlu export {mv.ref}"
        )
    data = read_bytes(store.model_version_path(mv.name, mv.version, ONNX_FILE))
    export = read_export(store, mv) or {}
    digest = export.get("sha256")
    if digest and hashlib.sha256(data).hexdigest() != digest:
        raise StoreError(
            f"Model {mv.ref}'s {ONNX_FILE} is not the file its export checked (SHA-256 differs). "
            f"Export it again: danlu export {mv.ref}"
        )
    return data
