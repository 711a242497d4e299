"""What every compression method hands to the stage: a :class:`Variant` of the model, made from a
:class:`CompressJob` (the trained model, its data and the recipe's ``compress:`` block).

A method (``_quantize``, ``_prune``, ``_distill``, ``_lowrank``) is a function
``make(job) -> list[Variant]``. It never measures, gates or registers: the stage does that for
every variant alike (``_measure``, ``_stage``). A variant a method cannot make is returned with
``status="skipped"`` and the reason (the others are kept); one that breaks is ``failed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from danlu.config import CompressConfig, Recipe
    from danlu.data import PreparedData
    from danlu.store import Store
    from danlu.tasks import Task
    from danlu.train import Callback

__all__ = ["CompressJob", "Variant"]


@dataclass
class CompressJob:
    """The inputs of every compression method.

    Attributes:
        config: the recipe's ``compress:`` block.
        recipe: the recipe the model was trained with.
        model: the trained model (fp32, eval mode). Methods must not change it: copy it
            (``copy.deepcopy``) before pruning or factorising.
        card: the model card (``model.json``) of the trained model.
        task: its task.
        data: the prepared data (train / val / test splits, schema, preprocessor).
        store: the store; methods that train (fine-tuning, distillation) open child runs of
            ``run_id`` in it.
        run_id: the run that trained ``model``.
        callbacks: the run's callbacks (progress), for methods that train.
        onnx: the fp32 ONNX export of ``model``, once the stage has made it (None before, or
            when the model cannot be exported): methods that start from it need not export
            again.
    """

    config: CompressConfig
    recipe: Recipe
    model: torch.nn.Module
    card: dict[str, Any]
    task: Task
    data: PreparedData
    store: Store
    run_id: str
    callbacks: Sequence[Callback] = ()
    onnx: bytes | None = None


@dataclass
class Variant:
    """One compressed model, as a method made it (before it is measured).

    Attributes:
        name: short and unique in the run: ``int8-ort-dynamic``, ``pruned-50-structured``,
            ``distilled``, ``low-rank-0.9``. It becomes the version's ``compression`` tag.
        method: ``quantize``, ``prune``, ``distill`` or ``low_rank``.
        runtime: where it is served and measured first: ``onnx`` (ONNX Runtime) or ``torch``.
        model: the torch model (fp32, or torch-quantized); the fp32 parent for an ONNX-only
            int8 variant (explanations and the torch fallback use it).
        onnx: the ONNX graph to serve as is (ONNX Runtime int8); None: the stage exports
            ``model`` to ONNX (fp32) when the variant is registered.
        weights: the safetensors bytes to store as ``model.safetensors`` (None: the stage saves
            ``model``'s state dict).
        card: keys merged into the model card (``model.json``) so that ``load_bundle`` rebuilds
            the variant: e.g. ``{"options": {...}}`` for a distilled student,
            ``{"resized": true}`` for structured pruning, ``{"low_rank": {"fc1": 8}}``,
            ``{"quantize": "torch-dynamic-int8"}``.
        run_id: the child run that trained it (fine-tuning, distillation), or None.
        keep_calibration: the parent's temperature still applies (quantization of the same
            network); False for retrained networks.
        status: ``ok``, ``skipped`` (this method does not apply to this model) or ``failed``.
        reason: why it was skipped or failed.
        details: method-specific facts for the report (sparsity reached, ranks, parameters,
            teacher).
    """

    name: str
    method: str
    runtime: str = "torch"
    model: torch.nn.Module | None = None
    onnx: bytes | None = None
    weights: bytes | None = None
    card: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    keep_calibration: bool = False
    status: str = "ok"
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def skipped(cls, name: str, method: str, reason: str) -> Variant:
        return cls(name=name, method=method, status="skipped", reason=reason)

    @classmethod
    def failed(cls, name: str, method: str, reason: str) -> Variant:
        return cls(name=name, method=method, status="failed", reason=reason)
