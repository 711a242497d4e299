"""One served model version: its predictor, request parsing, micro-batching, answers, drift.

A :class:`ServedModel` holds the version's :class:`~danlu.models.ModelBundle` (the one predictor)
and a runtime (ONNX Runtime, or the bundle's own torch model) that computes raw outputs. Requests
are checked and encoded by :class:`~danlu.serve._parse.RequestParser` (the bundle's
preprocessor), queued for a micro-batch, run on the runtime and decoded with the bundle's
``decode`` — the task's ``predict`` with the temperature and any decoding fitted on validation —
so whatever the task, a served model answers what ``danlu.load_model(...).predict`` answers:
``predictions`` plus every other output its signature names, as JSON values.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from danlu.errors import StoreError
from danlu.logging import get_logger
from danlu.serve._batcher import MicroBatcher
from danlu.serve._outputs import PREDICTION, json_rows, response_key, response_outputs
from danlu.serve._parse import RequestParser
from danlu.serve._runtime import Runtime, load_runtime
from danlu.serve._types import BatchHook, ServeSettings

if TYPE_CHECKING:
    from danlu.data import DriftMonitor, FeatureSchema, Preprocessor
    from danlu.models import ModelBundle
    from danlu.store import ModelVersion, Store
    from danlu.tasks import Task

__all__ = ["ServedModel"]

logger = get_logger(__name__)


class ServedModel:
    """A registered model version ready to answer requests (implements ``ServedModelLike``).

    Build it with :meth:`load` (it starts its micro-batcher); stop it with :meth:`close`.

    Args:
        mv: the registered version.
        runtime: computes the raw outputs (``OnnxRuntime``, or ``TorchRuntime`` of ``bundle``).
        bundle: the version's predictor: preprocessing, task, temperature, fitted decoding.
        settings: batching and drift settings.
        monitor: the drift window (default: one without a reference).
        on_batch: called after every micro-batch.

    Example:
        >>> # model = await ServedModel.load(store, store.resolve("wine:3"), settings)
        >>> # x = model.parse({"rows": [{"alcohol": 13.2, ...}]}, max_rows=1024)
        >>> # await model.predict(x)  # {"predictions": [1], "probabilities": [[0.1, 0.8, 0.1]]}
    """

    def __init__(
        self,
        mv: ModelVersion,
        runtime: Runtime,
        bundle: ModelBundle,
        settings: ServeSettings,
        *,
        monitor: DriftMonitor | None = None,
        on_batch: BatchHook | None = None,
    ) -> None:
        from danlu.data import DriftMonitor

        self.model_version = mv
        self.name = mv.name
        self.version = mv.version
        self.ref = mv.ref
        self.metrics = dict(mv.metrics)
        self.runtime = runtime
        self.runtime_name = runtime.name
        self.bundle = bundle
        self.monitor = monitor or DriftMonitor(None, settings.drift_window)
        self.on_batch = on_batch
        self.batches = 0  # batches run, and the rows in them
        self.rows = 0
        self.input_dim = self.preprocessor.schema_.input_dim  # after the reducer, if any
        self._parser = RequestParser(self.preprocessor, self.ref, bundle.sequence_shape)
        # the signature as served: each input says whether null is accepted (a fill was learned)
        nullable = {i.name: i.nullable for i in self._parser.inputs}
        self.signature: dict[str, Any] = {
            **mv.signature,
            "inputs": [
                {**f, "nullable": nullable.get(f.get("name"), False)}
                for f in mv.signature.get("inputs") or ()
            ],
        }
        if bundle.sequence_shape is not None:  # a row may also be {"series": [[...]]}
            channels, length = bundle.sequence_shape
            self.signature["sequence"] = {"field": "series", "channels": channels, "length": length}
        # decoded output → JSON Schema of one row's value; trimmed by warm_up() to the outputs
        # the decoding returns
        self.outputs = response_outputs(self.signature)
        self._keys = tuple(response_key(name) for name in self.outputs)
        self._batcher = MicroBatcher(
            self._run_batch,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            name=self.ref,
            on_batch=self._batch_done,
        )

    @property
    def task(self) -> Task:
        return self.bundle.task

    @property
    def schema(self) -> FeatureSchema:
        return self.bundle.schema

    @property
    def preprocessor(self) -> Preprocessor:
        return self.bundle.preprocessor

    # ---- building ------------------------------------------------------------------------

    @classmethod
    async def load(
        cls,
        store: Store,
        mv: ModelVersion,
        settings: ServeSettings,
        *,
        on_batch: BatchHook | None = None,
    ) -> ServedModel:
        """Load version ``mv`` (files read in a worker thread), warm it up and start batching.

        Raises:
            StoreError: a file is missing or corrupt, or the model fails its warm-up prediction.
        """
        model = await asyncio.to_thread(cls._build, store, mv, settings, on_batch)
        model._batcher.start()
        return model

    @classmethod
    def _build(
        cls, store: Store, mv: ModelVersion, settings: ServeSettings, on_batch: BatchHook | None
    ) -> ServedModel:
        from danlu.data import DriftMonitor
        from danlu.models import load_bundle
        from danlu.models._bundle import torch_installed

        if settings.require_signed:  # before a byte of it is loaded (SignatureError)
            from danlu.store import verify_version

            verify_version(store, mv).raise_for_problems()
        # Without torch (a slim image), the network is built only if something needs it: the
        # ONNX runtime needs the preprocessing, the decoding and the signature alone. With
        # torch, it is built now, so weights that do not fit it are refused at load.
        lazy = not torch_installed()
        bundle = load_bundle(store.model_reader(mv), f"Model {mv.ref}", lazy=lazy)
        bundle.version = mv
        runtime = load_runtime(store, mv, settings.runtime, settings.threads, bundle=bundle)
        monitor = DriftMonitor(_drift_reference(store, mv), settings.drift_window)
        model = cls(mv, runtime, bundle, settings, monitor=monitor, on_batch=on_batch)
        model.warm_up()
        return model

    def warm_up(self) -> None:
        """Answer one row of zeros through the whole path (runtime, decode, JSON), and keep the
        outputs of the signature that the decoding returns (a version registered with a task
        that answers less is logged and served without them).

        Raises:
            StoreError: the model cannot answer one row (a model that cannot must not replace
                one that can).
        """
        try:
            decoded = self._decoded(np.zeros((1, self.input_dim), dtype=np.float32))
            if PREDICTION not in decoded:
                raise ValueError("the task's decoding returned no prediction")
            for name, values in decoded.items():
                if len(values) != 1:
                    raise ValueError(f"1 input row gave {len(values)} rows of {name!r}")
        except Exception as exc:
            raise StoreError(
                f"Model {self.ref} ({self.runtime_name} runtime) failed its warm-up prediction: "
                f"{exc}"
            ) from exc
        absent = [name for name in self.outputs if name not in decoded]
        if absent:
            logger.warning(
                "Model %s: its signature names the output(s) %s, which its task does not "
                "return; it is served without them.",
                self.ref,
                ", ".join(absent),
            )
            self.outputs = {k: v for k, v in self.outputs.items() if k in decoded}
        self._keys = tuple(response_key(name) for name in self.outputs)

    # ---- requests ------------------------------------------------------------------------

    def parse(self, payload: Any, max_rows: int) -> np.ndarray:
        """Validate a decoded JSON body and encode it: ``(n, input_dim)`` float32.

        Accepts ``{"rows": [{feature: value}, ...]}`` or ``{"columns": {feature: [values]}}``;
        a sequence model (``signature["sequence"]``) also ``{"rows": [{"series": [[...]]}]}``.

        Raises:
            RequestError: naming the field (``rows[2].alcohol``); 413 for more than ``max_rows``.
        """
        return self._parser.parse(payload, max_rows)

    async def predict(self, x: np.ndarray) -> dict[str, list[Any]]:
        """Queue ``x`` for the next micro-batch: ``{"predictions": [...], other outputs...}``,
        one JSON value per row.

        Raises:
            QueueFull: the model's queue is full.
        """
        answers = await self._batcher.submit(x)  # one tuple of output values per row
        return {key: [a[j] for a in answers] for j, key in enumerate(self._keys)}

    def _decoded(self, x: np.ndarray) -> dict[str, list[Any]]:
        """The served outputs of prepared rows, as JSON values: runtime → bundle.decode."""
        decoded = self.bundle.decode(self.runtime.outputs(x))
        return {name: json_rows(decoded[name]) for name in self.outputs if name in decoded}

    def _run_batch(self, x: np.ndarray) -> np.ndarray:
        """A batch's answers, in the batcher's worker thread: one tuple of the served outputs'
        values per row (JSON types), in an object array the batcher slices per request.

        The raw outputs are decoded for the whole batch at once, and the batch joins the drift
        window at once — here, off the event loop, not per request on it (tasks decode row by
        row, so a batch decodes as its requests would alone).
        """
        decoded = self._decoded(x)
        columns = [decoded[name] for name in self.outputs]
        answers = np.empty(len(x), dtype=object)
        for i, answer in enumerate(zip(*columns, strict=True)):
            answers[i] = answer
        try:
            self.monitor.observe(x)
        except Exception:  # drift is a side measurement: it must never cost an answer
            logger.exception("Model %s: the drift window could not take a batch", self.ref)
        return answers

    def _batch_done(self, rows: int, seconds: float) -> None:
        self.batches += 1
        self.rows += rows
        if self.on_batch is not None:
            self.on_batch(self, rows, seconds)

    def queue_depth(self) -> int:
        """Requests waiting for a batch."""
        return self._batcher.depth()

    def drift(self) -> dict[str, Any]:
        """``{"window", "reference", "features": [{"feature", "psi", "status"}]}``."""
        return self.monitor.report()

    async def close(self) -> None:
        """Answer every queued request, then stop the batcher."""
        await self._batcher.stop(drain=True)

    def __repr__(self) -> str:
        return f"ServedModel({self.ref}, runtime={self.runtime_name})"


def _drift_reference(store: Store, mv: ModelVersion) -> dict[str, Any] | None:
    """The version's ``drift_reference.json``, or None (absent or unreadable: drift is off)."""
    raw = store.model_reader(mv)("drift_reference.json")
    if raw is None:
        return None
    try:
        reference = json.loads(raw)
    except ValueError as exc:
        logger.warning(
            "Model %s: drift_reference.json is not JSON (%s); drift is off.", mv.ref, exc
        )
        return None
    if not isinstance(reference, dict) or reference.get("format") != "danlu.drift_reference":
        logger.warning(
            "Model %s: drift_reference.json is not a drift reference; drift is off.", mv.ref
        )
        return None
    return reference
