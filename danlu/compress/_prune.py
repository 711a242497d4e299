"""Pruning: the smallest weights zeroed (unstructured), or whole channels and neurons removed
(structured, with torch-pruning), each step fine-tuned by the engine.

- **Unstructured** (``prune: {sparsity: 0.5}``): global magnitude pruning — the ``sparsity``
  share of the weights of every Linear and Conv layer but the output head, smallest magnitude
  first across all layers (``torch.nn.utils.prune.global_unstructured`` with L1 importance).
  With ``steps: k`` the sparsity grows linearly over k steps, each fine-tuned with the masks in
  place (a pruned weight stays zero); the masks are then made permanent, so the weights file is
  a plain state dict of the same shapes. The model is no smaller on disk nor faster on dense
  kernels: it is the starting point of sparse runtimes, and a measure of how much is redundant.
- **Structured** (``prune: {sparsity: 0.5, structured: true}``): torch-pruning's dependency
  graph removes the ``sparsity`` share of the channels / neurons of every layer (ranked by the
  L1 or L2 norm of their coupled weights, ``norm``), keeping coupled layers consistent
  (BatchNorm, the flatten before a dense layer); the output head keeps its outputs. The network
  really is smaller and faster. Its card says ``"resized": true``: ``load_bundle`` reshapes the
  recipe's architecture to the stored tensors (``danlu.models._resize``).

A layer that the target sparsity would leave without any channel makes the variant ``failed``
(checked before anything is trained, naming the layer); networks torch-pruning cannot prune
safely (attention, trees) are ``skipped`` with the reason.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from danlu.compress._finetune import finetune
from danlu.compress._types import Variant
from danlu.logging import get_logger

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from danlu.compress._types import CompressJob
    from danlu.config import PruneConfig

__all__ = ["STRUCTURED_TYPES", "output_layer", "prune_variants", "prunable_layers"]

log = get_logger(__name__)

#: model types whose channels torch-pruning removes safely (no attention heads, no trees)
STRUCTURED_TYPES = ("mlp", "cnn", "text_cnn")
_INSTALL = "pip install 'danlu[compress]'"


def prune_variants(job: CompressJob) -> list[Variant]:
    """The pruned variant the recipe's ``compress.prune`` asks for (none without the block).

    Example:
        >>> # [v.name for v in prune_variants(job)]  # ['pruned-50-structured']
    """
    config = job.config.prune
    if config is None:
        return []
    if config.structured:
        return [_structured(job, config)]
    return [_unstructured(job, config)]


def _percent(sparsity: float) -> str:
    return f"{round(sparsity * 100):d}"


def _is_layer(module: nn.Module) -> bool:
    import torch.nn as nn

    return isinstance(module, nn.Linear | nn.modules.conv._ConvNd)


def output_layer(model: nn.Module, outputs: int | None = None) -> str | None:
    """The name of the layer that produces the model's outputs: the last Linear / Conv layer
    (in the order the model registers them) with ``outputs`` outputs, else the last one."""
    layers = [(n, m) for n, m in model.named_modules() if _is_layer(m)]
    if not layers:
        return None
    if outputs is not None:
        for name, module in reversed(layers):
            width = getattr(module, "out_features", getattr(module, "out_channels", None))
            if width == outputs:
                return name
    return layers[-1][0]


def prunable_layers(model: nn.Module, head: str | None) -> dict[str, nn.Module]:
    """Every Linear / Conv layer but the output head, by name."""
    return {n: m for n, m in model.named_modules() if _is_layer(m) and n != head}


def _head(job: CompressJob, model: nn.Module) -> str | None:
    try:
        outputs = job.task.output_dim(job.data.schema)
    except Exception:  # a task without a fixed output width: the last layer
        outputs = None
    return output_layer(model, outputs)


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- unstructured ------------------------------------------------------------------------------
def _unstructured(job: CompressJob, config: PruneConfig) -> Variant:
    import torch
    import torch.nn.utils.prune as prune

    name = f"pruned-{_percent(config.sparsity)}"
    if job.card.get("quantize") or job.card.get("low_rank"):
        return Variant.skipped(name, "prune", "the model is already compressed")
    model = copy.deepcopy(job.model)
    head = _head(job, model)
    layers = prunable_layers(model, head)
    if not layers:
        return Variant.skipped(
            name,
            "prune",
            f"a {job.card.get('type', 'model')} model has no Linear or Conv layer besides its "
            "output head: there are no weights to prune",
        )
    targets = [(module, "weight") for module in layers.values()]
    total = sum(_weight(m).numel() for m in layers.values())

    def permanent(net: nn.Module) -> nn.Module:
        for module in prunable_layers(net, head).values():
            if prune.is_pruned(module):
                prune.remove(module, "weight")
        return net

    runs: list[str] = []
    try:
        for step in range(1, config.steps + 1):
            count = round(total * config.sparsity * step / config.steps)  # cumulative target
            # after the last step's masks were made permanent, its zeros are the smallest
            # magnitudes, so they are pruned again first: the mask only grows
            prune.global_unstructured(
                targets, pruning_method=prune.L1Unstructured, amount=int(count)
            )
            model, run_id = finetune(
                job,
                model,
                name=name,
                epochs=config.finetune_epochs,
                learning_rate=config.learning_rate,
                tags={"prune_step": f"{step}/{config.steps}"},
                finalize=permanent,
            )
            model = permanent(model)
            if run_id is not None:
                runs.append(run_id)
            layers = prunable_layers(model, head)
            targets = [(module, "weight") for module in layers.values()]
    except Exception as exc:
        log.warning("Unstructured pruning failed: %s", exc)
        return Variant.failed(name, "prune", f"unstructured pruning failed: {exc}")
    with torch.no_grad():
        zeros = sum(int((_weight(m) == 0).sum()) for m in layers.values())
    return Variant(
        name=name,
        method="prune",
        runtime="onnx",
        model=model.cpu().eval(),
        run_id=runs[-1] if runs else None,
        details={
            "sparsity": zeros / total,
            "target_sparsity": config.sparsity,
            "pruned_weights": zeros,
            "prunable_weights": total,
            "parameters": _parameters(model),
            "steps": config.steps,
            "finetune_epochs": config.finetune_epochs,
            "runs": runs,
        },
    )


# -- structured --------------------------------------------------------------------------------
def _structured(job: CompressJob, config: PruneConfig) -> Variant:
    import torch

    name = f"pruned-{_percent(config.sparsity)}-structured"
    model_type = str(job.card.get("type", job.recipe.model.type))
    if model_type not in STRUCTURED_TYPES:
        what = "its trees have no channels" if model_type == "gbdt" else "attention heads"
        return Variant.skipped(
            name,
            "prune",
            f"structured pruning removes channels of {', '.join(STRUCTURED_TYPES)} networks; "
            f"a {model_type} model cannot be pruned this way ({what}). Use prune.structured: "
            "false (unstructured) or quantization.",
        )
    if job.card.get("quantize") or job.card.get("low_rank") or job.card.get("resized"):
        return Variant.skipped(name, "prune", "the model is already compressed")
    try:
        import torch_pruning as tp
    except ImportError:
        return Variant.skipped(name, "prune", f"structured pruning needs torch-pruning: {_INSTALL}")
    model = copy.deepcopy(job.model).cpu().eval()
    head = _head(job, model)
    layers = prunable_layers(model, head)
    empty = {n: _width(m) for n, m in layers.items() if int(_width(m) * (1 - config.sparsity)) < 1}
    if empty:
        smallest = min(empty.values())
        limit = 1 - 1 / smallest
        listed = ", ".join(f"layer '{n}' ({w} outputs)" for n, w in empty.items())
        return Variant.failed(
            name,
            "prune",
            f"compress.prune.sparsity {config.sparsity} would remove every channel of "
            f"{listed}. Lower compress.prune.sparsity below {limit:.3g} or widen "
            "the layer.",
        )
    before = {n: _width(m) for n, m in layers.items()}
    parameters_before = _parameters(model)
    example = torch.as_tensor(job.data.x_train[:2])  # (2, D): torch-pruning traces the graph
    modules = dict(model.named_modules())
    try:
        pruner = tp.pruner.MetaPruner(
            model,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=1 if config.norm == "l1" else 2),
            pruning_ratio=config.sparsity,
            iterative_steps=config.steps,
            ignored_layers=[modules[head]] if head is not None else [],
        )
    except Exception as exc:  # a graph torch-pruning cannot trace
        return Variant.skipped(
            name,
            "prune",
            f"torch-pruning cannot trace this {model_type} network ({exc}); use "
            "prune.structured: false",
        )
    runs: list[str] = []
    try:
        for step in range(1, config.steps + 1):
            pruner.step()
            model, run_id = finetune(
                job,
                model,
                name=name,
                epochs=config.finetune_epochs,
                learning_rate=config.learning_rate,
                card={"resized": True},
                tags={"prune_step": f"{step}/{config.steps}"},
            )
            model = model.cpu().eval()
            if run_id is not None:
                runs.append(run_id)
    except Exception as exc:
        log.warning("Structured pruning failed: %s", exc)
        return Variant.failed(name, "prune", f"structured pruning failed: {exc}")
    after = {n: _width(m) for n, m in prunable_layers(model, head).items()}
    return Variant(
        name=name,
        method="prune",
        runtime="onnx",
        model=model,
        card={"resized": True},
        run_id=runs[-1] if runs else None,
        details={
            "parameters_before": parameters_before,
            "parameters": _parameters(model),
            "channels": {n: [before[n], after.get(n, 0)] for n in before},
            "target_sparsity": config.sparsity,
            "norm": config.norm,
            "steps": config.steps,
            "finetune_epochs": config.finetune_epochs,
            "runs": runs,
        },
    )


def _weight(module: nn.Module) -> torch.Tensor:
    import torch

    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _width(module: Any) -> int:
    """A layer's outputs: neurons of a Linear layer, channels of a Conv layer."""
    return int(getattr(module, "out_features", getattr(module, "out_channels", 0)))
