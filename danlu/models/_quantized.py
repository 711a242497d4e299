"""torch's dynamic int8 quantization of a model's Linear layers, stored as plain tensors.

A quantized Linear keeps its weight packed for the int8 kernels (fbgemm / qnnpack), a format
that only ``torch.save`` (pickle) writes. danlu stores it as plain safetensors instead: for each
quantized Linear at ``PATH``

- ``PATH.weight_int8``: the int8 weight (out_features, in_features);
- ``PATH.weight_scale``: float64, a scalar (per-tensor) or one per output row (per-channel);
- ``PATH.weight_zero_point``: int64, shaped like the scale;
- ``PATH.bias``: the fp32 bias, when the layer has one;

and every other tensor of the model (embeddings, norms, convolutions...) under its usual
state-dict name. :func:`load_quantized` rebuilds the module: the fp32 architecture, quantized the
same way, each packed weight set from the stored integers, so its outputs are those of the model
that was saved, bit for bit. The card says ``"quantize": "torch-dynamic-int8"``
(:data:`TORCH_DYNAMIC_INT8`); another value is refused.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from danlu.errors import StoreError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "QUANTIZED_KINDS",
    "TORCH_DYNAMIC_INT8",
    "load_quantized",
    "quantize_torch_dynamic",
    "quantized_linears",
    "quantized_tensors",
]

#: the card's ``quantize`` value of a model whose Linear layers are torch's dynamic int8
TORCH_DYNAMIC_INT8 = "torch-dynamic-int8"
QUANTIZED_KINDS = (TORCH_DYNAMIC_INT8,)

_INT8, _SCALE, _ZERO_POINT, _BIAS = "weight_int8", "weight_scale", "weight_zero_point", "bias"


@contextlib.contextmanager
def _quiet_quantization() -> Iterator[None]:
    """torch.ao.quantization warns on import and on every quantized tensor it makes that the
    API is deprecated in favour of torchao; it still works and is what danlu measures."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.ao")
        warnings.filterwarnings("ignore", category=UserWarning, message=r".*quantized tensor")
        yield


def quantize_torch_dynamic(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """``model`` with every ``nn.Linear`` replaced by torch's dynamic int8 Linear (int8 weights,
    activations quantized per batch at run time). A copy unless ``inplace``.

    Example:
        >>> import torch
        >>> q = quantize_torch_dynamic(torch.nn.Sequential(torch.nn.Linear(4, 2)))
        >>> type(q[0]).__name__
        'Linear'
    """
    import torch
    from torch import nn

    with _quiet_quantization():
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=inplace)


def quantized_linears(model: nn.Module) -> dict[str, Any]:
    """The dynamic int8 Linear layers of ``model``, by module path."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return {name: m for name, m in model.named_modules() if isinstance(m, DynamicLinear)}


def _owned_by(key: str, prefixes: set[str]) -> bool:
    """Whether state-dict ``key`` belongs to one of the modules at ``prefixes``."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in prefixes for i in range(len(parts)))


def quantized_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain tensors that store ``model`` (made by :func:`quantize_torch_dynamic`): each
    quantized Linear's int8 weight, scale, zero point and bias, and every other tensor of the
    model's state dict. Safetensors-ready: contiguous, unshared.

    Raises:
        ValueError: a quantized weight has a scheme other than per-tensor or per-channel
            (along the output rows).
    """
    import torch

    linears = quantized_linears(model)
    tensors: dict[str, torch.Tensor] = {}
    with _quiet_quantization():
        for path, layer in linears.items():
            weight, bias = layer._weight_bias()  # (out, in) quantized; fp32 (out,) or None
            scheme = weight.qscheme()
            if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
                scale = torch.tensor(weight.q_scale(), dtype=torch.float64)
                zero_point = torch.tensor(weight.q_zero_point(), dtype=torch.int64)
            elif (
                scheme in (torch.per_channel_affine, torch.per_channel_symmetric)
                and weight.q_per_channel_axis() == 0
            ):
                scale = weight.q_per_channel_scales().to(torch.float64)
                zero_point = weight.q_per_channel_zero_points().to(torch.int64)
            else:
                raise ValueError(f"{path}: unsupported int8 weight scheme {scheme}")
            tensors[f"{path}.{_INT8}"] = weight.int_repr()
            tensors[f"{path}.{_SCALE}"] = scale
            tensors[f"{path}.{_ZERO_POINT}"] = zero_point
            if bias is not None:
                tensors[f"{path}.{_BIAS}"] = bias.detach()
    prefixes = set(linears)
    for key, value in model.state_dict().items():
        if not _owned_by(key, prefixes):
            tensors[key] = value.detach()
    return {key: value.contiguous().clone() for key, value in tensors.items()}


def _packed_weight(tensors: dict[str, torch.Tensor], path: str, where: str) -> torch.Tensor:
    """The quantized weight of the Linear at ``path``, rebuilt from its stored integers."""
    import torch

    try:
        int8, scale, zero_point = (tensors[f"{path}.{k}"] for k in (_INT8, _SCALE, _ZERO_POINT))
    except KeyError as exc:
        raise StoreError(
            f"{where} lacks {exc.args[0]!r}: the int8 Linear layer {path!r} of the model its card "
            "describes is not stored. Compress the model again."
        ) from None
    if int8.dtype != torch.int8 or int8.dim() != 2 or scale.shape != zero_point.shape:
        raise StoreError(
            f"{where}: the int8 Linear layer {path!r} is malformed (weight {int8.dtype} "
            f"{tuple(int8.shape)}, scale {tuple(scale.shape)}, zero point "
            f"{tuple(zero_point.shape)}). Compress the model again."
        )
    if scale.dim() == 0:
        return torch._make_per_tensor_quantized_tensor(
            int8, float(scale), int(zero_point)
        )  # same integers, scale and zero point: the same packed weight
    if scale.shape != (int8.shape[0],):
        raise StoreError(
            f"{where}: the int8 Linear layer {path!r} has {scale.numel()} per-channel scales for "
            f"{int8.shape[0]} output rows. Compress the model again."
        )
    return torch._make_per_channel_quantized_tensor(int8, scale, zero_point, 0)


def load_quantized(
    model: nn.Module, tensors: dict[str, torch.Tensor], kind: str, where: str
) -> nn.Module:
    """The fp32 ``model`` (as built from its card) quantized as ``kind`` says, with ``tensors``
    (:func:`quantized_tensors` of the saved model) loaded into it. Returns the quantized module
    (``model`` itself is quantized in place).

    Raises:
        StoreError: ``kind`` is not one this version of danlu knows, or ``tensors`` do not fit
            the quantized model (a layer missing, of another shape, or a tensor left over).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 2))
        >>> saved = quantized_tensors(quantize_torch_dynamic(net))
        >>> fresh = torch.nn.Sequential(torch.nn.Linear(4, 2))
        >>> type(load_quantized(fresh, saved, "torch-dynamic-int8", "x")[0]).__name__
        'Linear'
    """
    if kind != TORCH_DYNAMIC_INT8:
        raise StoreError(
            f"{where}: the model card's quantize is {kind!r}, which this version of danlu does "
            f"not know (known: {', '.join(QUANTIZED_KINDS)}). Upgrade danlu, or register the "
            "unquantized model."
        )
    quantized = quantize_torch_dynamic(model, inplace=True)
    linears = quantized_linears(quantized)
    import torch

    remaining = dict(tensors)
    packed: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for path, layer in linears.items():
        with _quiet_quantization():
            weight = _packed_weight(remaining, path, where)
        if tuple(weight.shape) != (layer.out_features, layer.in_features):
            raise StoreError(
                f"{where}: the int8 Linear layer {path!r} is stored as {tuple(weight.shape)}, "
                f"the model has ({layer.out_features}, {layer.in_features}). Compress the model "
                "again."
            )
        bias = remaining.pop(f"{path}.{_BIAS}", None)
        packed[path] = weight, None if bias is None else bias.float()
        for key in (_INT8, _SCALE, _ZERO_POINT):
            del remaining[f"{path}.{key}"]
    # the quantized layers' own entries (packed params) come from the model, the rest from file
    state = quantized.state_dict(keep_vars=True)  # the model's own tensors, to copy into
    expected = {k for k in state if not _owned_by(k, set(linears))}
    missing, extra = sorted(expected - set(remaining)), sorted(set(remaining) - expected)
    if missing or extra:
        raise StoreError(
            f"{where} does not fit the int8 model its card describes: missing "
            f"{missing[:5] or 'none'}, unexpected {extra[:5] or 'none'}. Compress the model again."
        )
    # the quantized layers load their own entries differently: copy the others one by one
    with torch.no_grad():
        for key, value in remaining.items():
            target = state[key]
            if target.shape != value.shape:
                raise StoreError(
                    f"{where}: {key!r} is stored as {tuple(value.shape)}, the int8 model has "
                    f"{tuple(target.shape)}. Compress the model again."
                )
            target.copy_(value)
    with _quiet_quantization():
        for path, (weight, bias) in packed.items():
            linears[path].set_weight_bias(weight, bias)
    return quantized.eval()
