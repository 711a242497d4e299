"""Rebuilding a network whose layers structured pruning made narrower (card ``"resized": true``).

Structured pruning removes whole channels and neurons, so the stored tensors are smaller than the
layers the recipe builds. :func:`resize_to_state` reshapes each layer of the freshly built
architecture to the shapes of its stored tensors — ``in/out_features``, ``in/out_channels``,
``num_features``, ``normalized_shape``, ``embedding_dim`` and the parameters and buffers with
them — so the weights then load strictly. The card holds no code: only the tensors' shapes
decide, and a shape no layer attribute explains is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from danlu.errors import StoreError

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

__all__ = ["resize_to_state"]


def resize_to_state(model: nn.Module, tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Resize, in place, every layer of ``model`` whose stored tensors have other shapes.

    Handles ``Linear``, ``Conv1d/2d/3d``, ``BatchNorm``, ``LayerNorm`` and ``Embedding``: the
    layer's size attributes are set from the stored weight and its parameters and buffers are
    replaced by empty ones of the stored shapes (``load_state_dict`` fills them next). Layers
    whose tensors already fit are left alone.

    Raises:
        StoreError: a stored tensor's shape cannot be given to its layer (another kind of
            layer, another number of dimensions, another kernel size); the message names the
            tensor and ``where``.

    Example:
        >>> # resize_to_state(build_model(config, schema, task), tensors, "run 3f2a")
        >>> # model.load_state_dict(tensors)
    """
    import torch.nn as nn

    for prefix, module in model.named_modules():
        own = {
            name: tensor
            for name, tensor in [*module._parameters.items(), *module._buffers.items()]
            if tensor is not None
        }
        stored, saved = {}, {}
        for name, tensor in own.items():
            key = f"{prefix}.{name}" if prefix else name
            if key in tensors:
                saved[name] = tensors[key]
                if tuple(tensors[key].shape) != tuple(tensor.shape):
                    stored[name] = (key, tensors[key])
        if not stored:
            continue
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = _weight_shape(module, stored, own, 2, where)
        elif isinstance(module, nn.modules.conv._ConvNd):
            _resize_conv(module, _weight_shape(module, stored, own, module.weight.dim(), where))
        elif isinstance(module, nn.modules.batchnorm._NormBase):
            shape = _vector_shape(stored, saved, where)
            module.num_features = shape[0]
        elif isinstance(module, nn.LayerNorm):
            shape = _vector_shape(stored, saved, where, ndim=len(module.normalized_shape))
            module.normalized_shape = tuple(shape)
        elif isinstance(module, nn.Embedding):
            shape = _weight_shape(module, stored, own, 2, where)
            module.num_embeddings, module.embedding_dim = shape
        else:
            key, tensor = next(iter(stored.values()))
            raise StoreError(
                f"{where}: the tensor '{key}' has shape {list(tensor.shape)} but its layer "
                f"({type(module).__name__}) is {list(own[key.rsplit('.', 1)[-1]].shape)} and "
                "cannot be resized (only Linear, Conv, BatchNorm, LayerNorm and Embedding "
                "layers can). The weights do not belong to this model: load them with the "
                "model.json they were saved with."
            )
        _replace_tensors(module, own, stored, where)
        _check_fits(module, prefix, where)


def _weight_shape(
    module: nn.Module,
    stored: dict[str, tuple[str, torch.Tensor]],
    own: Mapping[str, torch.Tensor],
    ndim: int,
    where: str,
) -> tuple[int, ...]:
    """The shape the layer's weight is to have: the stored one (checked), or its own."""
    if "weight" not in stored:
        return tuple(own["weight"].shape)
    key, tensor = stored["weight"]
    if tensor.dim() != ndim:
        raise StoreError(
            f"{where}: the tensor '{key}' has {tensor.dim()} dimensions ({list(tensor.shape)}) "
            f"but the {type(module).__name__} layer it belongs to has {ndim}. The weights do "
            "not belong to this model: load them with the model.json they were saved with."
        )
    return tuple(tensor.shape)


def _vector_shape(
    stored: dict[str, tuple[str, torch.Tensor]],
    saved: Mapping[str, torch.Tensor],
    where: str,
    ndim: int = 1,
) -> tuple[int, ...]:
    """The common shape of a normalisation layer's stored per-feature tensors (``saved``: all
    of them; ``stored``: those whose shape differs from the layer's)."""
    shapes = {tuple(t.shape) for name, t in saved.items() if name != "num_batches_tracked"}
    key, tensor = next(iter(stored.values()))
    if len(shapes) != 1 or len(next(iter(shapes))) != ndim:
        others = sorted({str(list(s)) for s in shapes} - {str(list(tensor.shape))})
        raise StoreError(
            f"{where}: the tensor '{key}' has shape {list(tensor.shape)}, which does not fit "
            f"its normalisation layer's other stored tensors ({', '.join(others)}). The weights "
            "do not belong to this model: load them with the model.json they were saved with."
        )
    return next(iter(shapes))


def _resize_conv(module: nn.modules.conv._ConvNd, shape: tuple[int, ...]) -> None:
    out_channels, in_per_group = shape[0], shape[1]
    depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
    if depthwise:  # one filter per channel: the groups follow the channels
        module.groups = out_channels
    module.out_channels, module.in_channels = out_channels, in_per_group * module.groups


def _replace_tensors(
    module: nn.Module,
    own: Mapping[str, torch.Tensor],
    stored: dict[str, tuple[str, torch.Tensor]],
    where: str,
) -> None:
    """Empty parameters and buffers of the stored shapes; every other tensor must already fit
    the layer's new size (e.g. a bias the store did not resize is a mismatch)."""
    import torch
    import torch.nn as nn

    for name, (key, tensor) in stored.items():
        current = own[name]
        if name == "weight" and isinstance(module, nn.modules.conv._ConvNd):
            if tuple(tensor.shape[2:]) != tuple(current.shape[2:]):
                raise StoreError(
                    f"{where}: the tensor '{key}' has kernel {list(tensor.shape[2:])} but the "
                    f"layer's is {list(current.shape[2:])}; pruning never changes a kernel. "
                    "Load the weights with the model.json they were saved with."
                )
        if tensor.dim() != current.dim():
            raise StoreError(
                f"{where}: the tensor '{key}' has {tensor.dim()} dimensions "
                f"({list(tensor.shape)}) where its layer has {current.dim()}. Load the weights "
                "with the model.json they were saved with."
            )
        empty = torch.empty(tensor.shape, dtype=current.dtype, device=current.device)
        if name in module._parameters:
            grad = bool(module._parameters[name].requires_grad)  # type: ignore[union-attr]
            module._parameters[name] = nn.Parameter(empty, requires_grad=grad)
        else:
            module._buffers[name] = empty


def _check_fits(module: nn.Module, prefix: str, where: str) -> None:
    """Every tensor of the resized layer has the shape its new size implies."""
    import torch.nn as nn

    expected: dict[str, tuple[int, ...]] = {}
    if isinstance(module, nn.Linear):
        expected = {
            "weight": (module.out_features, module.in_features),
            "bias": (module.out_features,),
        }
    elif isinstance(module, nn.modules.conv._ConvNd):
        kernel = tuple(module.weight.shape[2:])
        expected = {
            "weight": (module.out_channels, module.in_channels // module.groups, *kernel),
            "bias": (module.out_channels,),
        }
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        size = (module.num_features,)
        expected = dict.fromkeys(("weight", "bias", "running_mean", "running_var"), size)
    elif isinstance(module, nn.LayerNorm):
        expected = dict.fromkeys(("weight", "bias"), tuple(module.normalized_shape))
    elif isinstance(module, nn.Embedding):
        expected = {"weight": (module.num_embeddings, module.embedding_dim)}
    for name, shape in expected.items():
        tensor = module._parameters.get(name, module._buffers.get(name))
        if tensor is not None and tuple(tensor.shape) != shape:
            key = f"{prefix}.{name}" if prefix else name
            raise StoreError(
                f"{where}: the tensor '{key}' has shape {list(tensor.shape)} but its layer, "
                f"resized to the other stored tensors, needs {list(shape)}. The weights do not "
                "belong to this model: load them with the model.json they were saved with."
            )
