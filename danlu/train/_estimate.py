"""A pre-flight estimate of the memory a recipe's training needs, without training or a run.

What a training process holds at its peak, on the device it trains on:

- **parameters**: every parameter and buffer of the model the recipe builds (counted);
- **gradients**: one tensor per trainable parameter (counted);
- **optimizer**: its state per trainable parameter, by the optimizer's rule (Adam / AdamW: two
  moments and a step counter; SGD: a momentum buffer when ``momentum > 0``; RMSprop: the square
  average, plus a momentum buffer; Adagrad: the sum), as torch allocates it;
- **activations**: the tensors autograd saves for the backward pass of one training batch,
  measured by running the real model forward under ``saved_tensors_hooks`` on 2 and on 4 rows
  and extrapolating to ``train.batch_size`` (under ``precision: bf16`` the forward runs under the
  same autocast, so the saved tensors are bf16 where autocast makes them so), or the evaluation
  pass in chunks of up to 8192 rows (256 for text rows predicted in length order) when that is
  larger;
- **data**: the training tensors the engine puts on the device (``x_train`` and ``y_train``), or
  for ``data.stream`` the rows its reader holds at once (``shuffle_buffer + chunk_rows``);
- **overhead**: 10 % of the above for allocator slack and backward temporaries, plus what the
  framework itself takes once training starts: on the CPU 128 MiB (measured here: the first
  backward and optimizer step load autograd and optimizer internals, oneDNN kernels and the
  modules they import, ~95 MiB whatever the model's size); on a GPU 512 MiB (the CUDA context
  and the cuBLAS / cuDNN workspaces; not measured here).

Not counted in ``total``: the Python process itself (interpreter, torch, pandas, scikit-learn
and danlu imported), ``process`` bytes of host memory (~400 MiB resident here) that every job's
process holds whatever it trains; compare ``total + process`` with a CPU slot's memory.

The input width comes from preparing the data once (about a second for the example recipes; a
``data.stream`` prepares from its sample rows, never reading all the data). Boosted trees and
``model: {type: auto}`` get a rough figure from the data's size (marked ``rough``). Nothing is
written: no run is opened.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from danlu.types import StrPath

if TYPE_CHECKING:
    import torch

    from danlu.config import Recipe
    from danlu.data import PreparedData

__all__ = ["MemoryEstimate", "estimate_memory"]

_MIB = 2**20
_EVAL_CHUNK = 8192  # rows per evaluation forward pass (the engine's chunk, _loop._EVAL_CHUNK)
_OVERHEAD_SHARE = 0.10
_FRAMEWORK = {"cpu": 128 * _MIB, "cuda": 512 * _MIB}
PROCESS_BYTES = 400 * _MIB  # a danlu process's resident memory before training (CPU, measured)
_ROUGH_FACTOR = 4  # trees: binned copies, gradients and the library's own buffers


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a recipe's training needs at its peak on its device (see the module docstring).

    Example:
        >>> # est = estimate_memory("examples/digits_cnn.yaml")
        >>> # est.total, est.describe()
    """

    parameters: int
    gradients: int
    optimizer: int
    activations: int
    data: int
    overhead: int
    device: str  # cpu | cuda: where training would run
    batch_size: int
    optimizer_name: str
    rough: bool = False  # a rule of thumb (trees, auto), not a count and a measurement
    note: str = ""
    process: int = PROCESS_BYTES  # the Python process itself, on the host (not in total)

    @property
    def total(self) -> int:
        return (
            self.parameters
            + self.gradients
            + self.optimizer
            + self.activations
            + self.data
            + self.overhead
        )

    def describe(self) -> str:
        """One line for people: the total, then each part."""
        head = f"{'roughly ' if self.rough else '~'}{_size(self.total)} on {self.device}"
        tail = f"; plus ~{_size(self.process)} for the Python process on the host"
        if self.rough:
            return f"{head} ({self.note}){tail}"
        parts = (
            f"parameters {_size(self.parameters)}",
            f"gradients {_size(self.gradients)}",
            f"optimizer ({self.optimizer_name}) {_size(self.optimizer)}",
            f"activations at batch {self.batch_size} {_size(self.activations)}",
            f"data {_size(self.data)}",
            f"overhead {_size(self.overhead)}",
        )
        return f"{head}: {', '.join(parts)}{tail}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "parameters": self.parameters,
            "gradients": self.gradients,
            "optimizer": self.optimizer,
            "activations": self.activations,
            "data": self.data,
            "overhead": self.overhead,
            "total": self.total,
            "device": self.device,
            "batch_size": self.batch_size,
            "optimizer_name": self.optimizer_name,
            "rough": self.rough,
            "note": self.note,
            "process": self.process,
        }


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", _MIB), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def estimate_memory(
    recipe: StrPath | Mapping[str, Any] | Recipe,
    *,
    overrides: Iterable[str] = (),
    data: PreparedData | None = None,
) -> MemoryEstimate:
    """Estimate the memory ``recipe``'s training needs, before (and without) running it.

    Args:
        recipe: a YAML path, a mapping or a :class:`~danlu.config.Recipe`.
        overrides: ``key.path=value`` strings applied on top of the recipe.
        data: the recipe's data already prepared (else it is prepared here, once).

    Raises:
        ConfigError / DataError: as ``danlu run`` would for this recipe, before training.

    Example:
        >>> from danlu.train import estimate_memory
        >>> est = estimate_memory("examples/wine_mlp.yaml")  # doctest: +SKIP
        >>> est.describe()  # doctest: +SKIP
        '~32.6 MiB on cpu: parameters 2.4 KiB, gradients 2.3 KiB, optimizer (adam) ...'
    """
    import torch

    from danlu.config import load_recipe
    from danlu.models import MODELS
    from danlu.tasks import get_task
    from danlu.train._loop import resolve_device, seed_everything
    from danlu.train._run import check_recipe, prepare_recipe_data

    recipe = load_recipe(recipe, overrides)
    options = check_recipe(recipe)
    task = get_task(recipe.task)
    if data is None:
        data = prepare_recipe_data(recipe, task)
    device = resolve_device(recipe.train.device).type
    train = recipe.train
    target_size = torch.empty((), dtype=getattr(torch, task.target_dtype)).element_size()
    data_bytes = _data_bytes(data, target_size)
    if recipe.model.type == "auto":
        return _rough(data_bytes, device, train.batch_size, train.optimizer.name, "auto")
    seed_everything(train.seed)
    model = MODELS.get(recipe.model.type).builder(options, data.schema, task)
    from danlu.train._boost import is_boosted

    if is_boosted(model):
        return _rough(data_bytes, device, train.batch_size, train.optimizer.name, "trees")
    rows = data.stream.rows["train"] if data.stream is not None else len(data.x_train)
    batch = max(1, min(train.batch_size, rows))
    val_rows = data.stream.rows["val"] if data.stream is not None else len(data.x_val)
    parameters = sum(_nbytes(t) for t in (*model.parameters(), *model.buffers()))
    trainable = [p for p in model.parameters() if p.requires_grad]
    gradients = sum(_nbytes(p) for p in trainable)
    optimizer = _optimizer_bytes(train.optimizer, trainable)
    sample = _sample_rows(data)
    bf16 = train.precision == "bf16"  # the engine's autocast, in training and in evaluation
    from danlu.train._buckets import EVAL_CHUNK_ROWS  # text rows in length order: smaller chunks

    bucketed = train.bucket_by_length and bool(data.schema.text_slices())
    chunk = EVAL_CHUNK_ROWS if bucketed else _EVAL_CHUNK
    chunk = max(1, min(chunk, int(getattr(model, "eval_chunk_rows", chunk))))  # as the engine
    activations = max(
        _train_activations(model, sample, batch, bf16=bf16),
        _eval_activations(model, sample, min(chunk, max(val_rows, len(data.x_test))), bf16=bf16),
    )
    counted = parameters + gradients + optimizer + activations + data_bytes
    overhead = int(counted * _OVERHEAD_SHARE) + _FRAMEWORK.get(device, _FRAMEWORK["cpu"])
    return MemoryEstimate(
        parameters=parameters,
        gradients=gradients,
        optimizer=optimizer,
        activations=activations,
        data=data_bytes,
        overhead=overhead,
        device=device,
        batch_size=batch,
        optimizer_name=train.optimizer.name,
    )


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _data_bytes(data: PreparedData, target_size: int) -> int:
    """The training tensors on the device; for a stream, the rows its reader holds at once."""
    import numpy as np

    if data.stream is None:
        y = np.asarray(data.y_train)
        return int(np.asarray(data.x_train).nbytes) + y.size * target_size
    width = max(data.schema.input_dim, int(np.prod(data.x_train.shape[1:]) or 0))
    held = data.stream.shuffle_buffer + data.stream.chunk_rows
    return held * (width * 4 + target_size)


def _rough(data_bytes: int, device: str, batch: int, optimizer: str, kind: str) -> MemoryEstimate:
    """Trees and ``auto``: a multiple of the training data, plus the framework."""
    framework = _FRAMEWORK.get(device, _FRAMEWORK["cpu"])
    return MemoryEstimate(
        parameters=0,
        gradients=0,
        optimizer=0,
        activations=0,
        data=data_bytes,
        overhead=(_ROUGH_FACTOR - 1) * data_bytes + framework,
        device=device,
        batch_size=batch,
        optimizer_name=optimizer,
        rough=True,
        note=(
            f"rough: {_ROUGH_FACTOR}x the training data ({_size(data_bytes)}) plus "
            f"{_size(framework)} for the framework; "
            + (
                "boosted trees are fitted by their library"
                if kind == "trees"
                else "model: auto trains several candidates, one at a time"
            )
        ),
    )


def _optimizer_bytes(config: Any, params: list[torch.Tensor]) -> int:
    """The optimizer's state as torch allocates it once it has stepped: per parameter tensor,
    buffers the parameter's size and a float32 step counter (a 0-d tensor) where it keeps one."""
    size = sum(_nbytes(p) for p in params)
    step = 4 * len(params)  # torch keeps ``step`` as a float32 scalar tensor per parameter
    momentum = getattr(config, "momentum", 0.0) or 0.0
    match config.name:
        case "adam" | "adamw":
            return 2 * size + step
        case "sgd":
            return size if momentum > 0 else 0
        case "rmsprop":
            return size * (2 if momentum > 0 else 1) + step
        case "adagrad":
            return size + step
    raise AssertionError(config.name)  # the schema admits no other name


def _sample_rows(data: PreparedData) -> torch.Tensor:
    """Four rows of model input: real training rows, or zeros shaped like them (a stream)."""
    import numpy as np
    import torch

    for x in (data.x_train, data.x_val, data.x_test):
        if len(x) >= 4:
            return torch.as_tensor(np.asarray(x[:4]))
        if len(x):
            return torch.as_tensor(np.asarray(x)[np.arange(4) % len(x)])
    width = max(data.schema.input_dim, 1)
    shape = (4, *data.x_train.shape[1:]) if data.x_train.ndim > 1 else (4, width)
    if int(np.prod(shape[1:])) == 0:
        shape = (4, width)
    return torch.zeros(shape, dtype=torch.float32)


def _train_activations(model: torch.nn.Module, sample: torch.Tensor, batch: int, bf16: bool) -> int:
    """Bytes autograd saves for the backward pass of a ``batch``-row training forward: measured
    on 2 and 4 rows (a per-row part and a fixed part, e.g. bf16 copies of the weights)."""
    saved = {n: _saved_bytes(model, sample[:n], bf16) for n in (2, 4)}
    per_row = max(0.0, (saved[4] - saved[2]) / 2)
    fixed = max(0.0, saved[2] - 2 * per_row)
    return int(math.ceil(fixed + per_row * batch))


def _autocast(bf16: bool) -> contextlib.AbstractContextManager[Any]:
    import torch

    if bf16:  # as the engine does on the CPU (estimates are made there, for any device)
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _saved_bytes(model: torch.nn.Module, x: torch.Tensor, bf16: bool) -> int:
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in params and key not in seen:  # weights are held anyway; views count once
            seen.add(key)
            total += storage.nbytes()
        return t

    was_training = model.training
    model.train()
    state = torch.get_rng_state()  # dropout draws: leave the caller's RNG as it was
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _autocast(bf16):
            out = model(x)
        total += _nbytes(out)
    finally:
        torch.set_rng_state(state)
        model.train(was_training)
    return total


def _eval_activations(model: torch.nn.Module, sample: torch.Tensor, rows: int, bf16: bool) -> int:
    """The evaluation pass (no autograd, ``rows`` per chunk): the input chunk and the two largest
    module outputs alive at once, per row, times ``rows``."""
    import torch

    if rows <= 0:
        return 0
    outputs: list[int] = []

    def hook(module: torch.nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            outputs.append(_nbytes(out))

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), _autocast(bf16):
            model(sample)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    largest = sorted(outputs, reverse=True)[:2]
    per_row = (_nbytes(sample) + sum(largest)) / len(sample)
    return int(math.ceil(per_row * rows))
