"""Data-parallel training as a strategy the training loop calls, never a second loop.

:class:`Strategy` is the single-process default: every hook returns what it was given, so the
loop in ``_loop.py`` costs exactly what it cost before. :class:`DataParallel` is what each rank
of a ``torchrun`` job uses (``train.distributed``; ``_torchrun.py`` starts the ranks):

- ``wrap``: DDP (``DistributedDataParallel``, the whole model on every rank, gradients averaged
  in backward) or FSDP2 (``fully_shard``: parameters, gradients and optimizer state sharded);
- ``shard``: each epoch's shuffled index (the same on every rank: same seed, same generator) is
  padded to a multiple of the world size and dealt out ``order[rank::world]``, as
  ``DistributedSampler`` does, so every rank runs the same number of steps and step ``k`` of
  ``world`` ranks at batch ``b`` sees exactly the rows of step ``k`` of one rank at batch
  ``world·b``. Streamed data: each rank reads its own Parquet row groups, and an epoch ends for
  all when the first rank runs out (an all-reduce per batch, so no rank waits on a missing one);
- ``sum`` / ``same_metrics`` / ``agree``: the training loss is summed over ranks, validation
  metrics and stop decisions are rank 0's, broadcast, so the ranks never diverge;
- ``full_state`` / ``load_*``: checkpoints hold the full, unsharded state in the single-process
  format (an FSDP shard is gathered), so a run resumes on any number of ranks;
- ``finish``: the plain trained model (FSDP: gathered into an unsharded copy) for rank 0's
  evaluation and export, after a barrier.

Every collective runs under the process group's timeout (``train.distributed.timeout_s``), so a
rank that dies makes the others fail (and ``torchrun`` restart the job) instead of waiting.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from danlu.errors import ConfigError, DanluError, DataError
from danlu.logging import get_logger

if TYPE_CHECKING:
    import torch

    from danlu.config import DistributedConfig, Recipe
    from danlu.config._loader import ConfigIssue
    from danlu.data import TrainStream
    from danlu.train._energy import EnergyReading

__all__ = [
    "DataParallel",
    "RankFailed",
    "Strategy",
    "active_strategy",
    "distributed_issues",
    "end_process_group",
    "start_process_group",
]

log = get_logger(__name__)

_RANK_SEED_STRIDE = 1_000_000_007  # keeps the ranks' augmentation / dropout streams apart


class RankFailed(DanluError, RuntimeError):
    """A rank of a distributed run failed and ``max_restarts`` were used up (or none were set)."""


class Strategy:
    """Training in one process: every hook is a no-op (the loop's default).

    Example:
        >>> s = Strategy()
        >>> s.world_size, s.is_main, s.agree(True)
        (1, True, True)
    """

    rank = 0
    local_rank = 0
    world_size = 1
    sharded = False  # parameters live on several ranks (FSDP)
    epoch_rows = 0  # streamed rows this rank trained on in the current epoch (distributed)

    @property
    def is_main(self) -> bool:
        """Whether this process tracks, checkpoints, evaluates and registers (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to run forward/backward through (the model itself here)."""
        return model

    def gradient_sync(
        self, net: torch.nn.Module, sync: bool
    ) -> contextlib.AbstractContextManager[Any]:
        """Where one batch's backward runs: ``sync`` is false for the batches of a gradient
        accumulation cycle before its last (the ranks then skip the all-reduce)."""
        return contextlib.nullcontext()

    def rows_per_rank(self, rows: int) -> int:
        """Training rows each rank sees per epoch (padded so every rank has as many)."""
        return rows

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's part of the epoch's shuffled index."""
        return order

    def stream_batches(
        self, stream: TrainStream, batch_size: int, epoch: int
    ) -> Iterator[tuple[Any, Any]]:
        """This rank's training batches of a streamed epoch."""
        return stream.batches("train", batch_size, epoch=epoch)

    def rank_seed(self, seed: int) -> int:
        """The seed of this rank's augmentation (rank 0 keeps the run's seed)."""
        return seed

    def seed_epoch(self, seed: int, epoch: int) -> None:
        """Reseed dropout per rank and epoch (distributed only: one process keeps its RNG)."""

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks."""
        return values

    def same_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Rank 0's metrics, on every rank."""
        return metrics

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision, on every rank."""
        return flag

    def any(self, flag: bool) -> bool:
        """True on every rank when any rank says so."""
        return flag

    def share_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's bytes (a checkpoint), on every rank."""
        assert data is not None
        return data

    def full_state(self, state: Any) -> Any:
        """The state with every shard gathered into a full tensor (FSDP)."""
        return state

    def load_model_state(self, model: torch.nn.Module, state: Mapping[str, Any]) -> None:
        model.load_state_dict(state)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)

    def finish(self, model: torch.nn.Module) -> torch.nn.Module:
        """The plain trained model, once every rank is done training."""
        return model

    def after_fit(self, reading: EnergyReading, run_id: str | None = None) -> EnergyReading:
        """Time and energy summed over the ranks (rank 0 gets the total); rank 0's run id is
        handed to the others."""
        return reading

    @property
    def run_id(self) -> str | None:
        """Rank 0's run id, once :meth:`after_fit` shared it."""
        return None


class DataParallel(Strategy):
    """One rank of a ``torchrun`` job (the process group is already initialised)."""

    def __init__(self, config: DistributedConfig, device: torch.device) -> None:
        import torch.distributed as dist

        self.config = config
        self.device = device
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.sharded = config.strategy == "fsdp"
        self._plain: torch.nn.Module | None = None  # FSDP: an unsharded copy for the end
        self._run_id: str | None = None

    # -- the model -------------------------------------------------------------------------
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.sharded:
            from torch.distributed.fsdp import fully_shard

            self._plain = copy.deepcopy(model).to("cpu")  # receives the full weights at the end
            for child in model.children():  # each top-level block its own unit, then the root
                if any(p.requires_grad for p in child.parameters()):
                    fully_shard(child)
            fully_shard(model)
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # Rank 0's weights are broadcast once, here. Buffers (BatchNorm statistics) are not
        # broadcast at every forward, a collective per step saved: each rank keeps its own
        # shard's, and rank 0's (whose metrics, checkpoints and model count) are what they
        # would be with the broadcast, which only copies rank 0's to the others.
        # (torch ≥ 2.13 names the setting forward_sync_buffers; broadcast_buffers warns there)
        params = inspect.signature(DistributedDataParallel).parameters
        no_sync = (
            "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
        )
        options: dict[str, Any] = {no_sync: False}
        return DistributedDataParallel(model, device_ids=ids, **options)

    def finish(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.sharded:
            full = self.full_state(model.state_dict())
            assert self._plain is not None
            self._plain.load_state_dict(full)
            model = self._plain.to(self.device)
        self._barrier()
        return model

    # -- the data --------------------------------------------------------------------------
    def gradient_sync(
        self, net: torch.nn.Module, sync: bool
    ) -> contextlib.AbstractContextManager[Any]:
        # DDP: gradients of an accumulation cycle add up locally and are all-reduced once, in
        # its last backward (one collective per optimizer step, as in Lightning). FSDP keeps
        # reducing every batch: deferring would hold unsharded gradients, what it exists to avoid.
        if sync or self.sharded:
            return contextlib.nullcontext()
        return net.no_sync()  # type: ignore[operator]

    def rows_per_rank(self, rows: int) -> int:
        return math.ceil(rows / self.world_size)

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        import torch

        pad = self.rows_per_rank(len(order)) * self.world_size - len(order)
        if pad:  # repeat the first rows, as DistributedSampler does: equal steps on every rank
            order = torch.cat([order, order[:pad]])
        return order[self.rank :: self.world_size]

    def stream_batches(
        self, stream: TrainStream, batch_size: int, epoch: int
    ) -> Iterator[tuple[Any, Any]]:
        groups = len(stream.layout.row_groups)
        if groups < self.world_size:
            raise DataError(
                f"data.stream: the Parquet data has {groups} row group(s), fewer than the "
                f"{self.world_size} ranks, so some rank would have nothing to read. Write it "
                "with smaller row groups (pyarrow: row_group_size) or use fewer ranks."
            )
        return self._until_one_runs_out(
            stream.batches("train", batch_size, epoch=epoch, shard=(self.rank, self.world_size))
        )

    def _until_one_runs_out(self, batches: Iterator[tuple[Any, Any]]) -> Iterator[tuple[Any, Any]]:
        import torch
        import torch.distributed as dist

        flag = torch.ones(1, dtype=torch.int32, device=self._comm_device)
        self.epoch_rows = 0
        try:
            for item in batches:
                flag.fill_(1)
                dist.all_reduce(flag, op=dist.ReduceOp.MIN)
                if not flag.item():
                    return
                self.epoch_rows += len(item[1])
                yield item
            flag.fill_(0)  # this rank ran out: the others stop at this step too
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # stops the read-ahead thread

    def rank_seed(self, seed: int) -> int:
        return seed + self.rank * _RANK_SEED_STRIDE

    def seed_epoch(self, seed: int, epoch: int) -> None:
        import torch

        torch.manual_seed((seed * 7919 + epoch) * 1_000_003 + self.rank)

    # -- collectives -----------------------------------------------------------------------
    @property
    def _comm_device(self) -> torch.device:
        import torch

        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = values.detach().to(self._comm_device, copy=True)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(values.device)

    def _broadcast(self, values: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = values.to(self._comm_device, copy=True)
        dist.broadcast(out, src=0)
        return out.cpu()

    def same_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        import torch

        keys = sorted(metrics)  # every rank computed the same keys
        values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
        shared = self._broadcast(values).tolist()
        return {k: (int(v) if k == "epoch" else v) for k, v in zip(keys, shared, strict=True)}

    def agree(self, flag: bool) -> bool:
        import torch

        return bool(self._broadcast(torch.tensor([int(flag)], dtype=torch.int32)).item())

    def any(self, flag: bool) -> bool:
        import torch
        import torch.distributed as dist

        out = torch.tensor([int(flag)], dtype=torch.int32, device=self._comm_device)
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return bool(out.item())

    def share_bytes(self, data: bytes | None) -> bytes:
        import torch

        size = self._broadcast(torch.tensor([len(data) if data is not None else 0]))
        buffer = (
            torch.frombuffer(bytearray(data), dtype=torch.uint8)
            if self.is_main and data
            else torch.empty(int(size.item()), dtype=torch.uint8)
        )
        return bytes(self._broadcast(buffer).numpy().tobytes())

    def _barrier(self) -> None:
        import torch.distributed as dist

        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index or 0])
        else:
            dist.barrier()

    # -- state -----------------------------------------------------------------------------
    def full_state(self, state: Any) -> Any:
        if not self.sharded:
            return state
        return _gather(state)

    def load_model_state(self, model: torch.nn.Module, state: Mapping[str, Any]) -> None:
        if not self.sharded:
            model.load_state_dict(state)
            return
        template = model.state_dict()
        model.load_state_dict(
            {k: _shard_like(state[k], v) if k in state else v for k, v in template.items()}
        )

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        if self.sharded:  # full moments → this rank's shard of each, like its parameter
            params = [p for group in optimizer.param_groups for p in group["params"]]
            state = {
                **state,
                "state": {
                    i: {
                        k: _shard_like(v, params[i]) if _is_tensor(v) and v.ndim else v
                        for k, v in entry.items()
                    }
                    for i, entry in state["state"].items()
                },
            }
        optimizer.load_state_dict(state)

    # -- the end ---------------------------------------------------------------------------
    def after_fit(self, reading: EnergyReading, run_id: str | None = None) -> EnergyReading:
        import torch

        from danlu.train._energy import EnergyReading

        # RAPL counts the whole CPU package: one rank per machine reports it, or it counts twice
        joules = reading.joules if reading.method != "rapl" or self.local_rank == 0 else 0.0
        total = self.sum(
            torch.tensor([reading.seconds, reading.cpu_seconds, joules], dtype=torch.float64)
        ).tolist()
        self._run_id = self.share_bytes(run_id.encode() if run_id else b"").decode() or None
        detail = f"{reading.detail}; summed over {self.world_size} ranks"
        return EnergyReading(total[0], total[1], total[2], reading.method, detail)

    @property
    def run_id(self) -> str | None:
        return self._run_id


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def _gather(state: Any) -> Any:
    """The state with each DTensor shard replaced by its full tensor (a collective: every rank
    walks the same tree in the same order)."""
    from torch.distributed.tensor import DTensor

    if isinstance(state, DTensor):
        return state.full_tensor()
    if isinstance(state, dict):
        return {k: _gather(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_gather(v) for v in state]
    if isinstance(state, tuple):
        return tuple(_gather(v) for v in state)
    return state


def _shard_like(full: Any, like: Any) -> Any:
    """``full`` as this rank's shard of a tensor laid out like ``like`` (each rank holds the
    full tensor, so nothing is sent)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor) or not _is_tensor(full) or full.shape != like.shape:
        return full
    if isinstance(full, DTensor):
        return full
    return distribute_tensor(
        full.to(like.device_mesh.device_type),
        like.device_mesh,
        like.placements,
        src_data_rank=None,
    )


# -- the process group -------------------------------------------------------------------------

_ACTIVE: Strategy = Strategy()


def active_strategy() -> Strategy:
    """The strategy of this process: :class:`DataParallel` inside a rank of a ``torchrun`` job
    (between :func:`start_process_group` and :func:`end_process_group`), else the no-op one."""
    return _ACTIVE


def start_process_group(config: DistributedConfig, device_name: str = "auto") -> DataParallel:
    """Join the job's process group (``torchrun`` set ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``
    …) with ``config.timeout_s`` on every collective, and make :class:`DataParallel` active.

    gloo on the CPU, nccl on CUDA (``backend: auto``); a CUDA rank uses GPU ``LOCAL_RANK``.
    """
    global _ACTIVE
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    backend = config.backend if config.backend != "auto" else ("nccl" if cuda else "gloo")
    if backend == "nccl" and not cuda:
        raise ConfigError(
            "train.distributed.backend: nccl needs CUDA devices and this rank has none. Use "
            "backend: gloo (or auto) to train on the CPU."
        )
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    timeout = timedelta(seconds=config.timeout_s)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    # torchrun keeps one store across restarts: keys of the attempt before (the dead ranks'
    # addresses) would be read again, so each attempt gets its own prefix
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=not agent_store and rank == 0,
        timeout=timeout,
        multi_tenant=not agent_store,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group(
        backend=backend,
        store=dist.PrefixStore(f"danlu/attempt_{attempt}", store),
        rank=rank,
        world_size=world,
        timeout=timeout,
    )
    _ACTIVE = DataParallel(config, device)
    log.info(
        "rank %d of %d joined (%s, %s)",
        _ACTIVE.rank,
        _ACTIVE.world_size,
        backend,
        config.strategy,
    )
    return _ACTIVE


def end_process_group(clean: bool = True) -> None:
    """Leave the process group: a barrier first when ``clean`` (so no rank tears down gloo while
    a peer still talks to it), then destroy it; the no-op strategy is active again."""
    global _ACTIVE
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if clean:
            with contextlib.suppress(Exception):  # a failed peer: nothing left to wait for
                dist.barrier()
        dist.destroy_process_group()
    _ACTIVE = Strategy()


def distributed_issues(recipe: Recipe) -> list[ConfigIssue]:
    """What ``train.distributed`` cannot do with this recipe (checked before any rank starts)."""
    from danlu.config import ConfigIssue

    dist = recipe.train.distributed
    if dist is None:
        return []
    issues = []
    if recipe.model.type in {"auto", "gbdt"}:
        issues.append(
            ConfigIssue(
                ("train", "distributed"),
                f"model.type {recipe.model.type} trains in one process (libraries fit the trees)",
                recipe.model.type,
                "Remove train.distributed, or choose a neural model (mlp, cnn …).",
            )
        )
    if dist.backend == "nccl" and recipe.train.device == "cpu":
        issues.append(
            ConfigIssue(
                ("train", "distributed", "backend"),
                "nccl runs on CUDA devices only, and train.device is cpu",
                "nccl",
                "Use backend: gloo (or auto), or train.device: cuda.",
            )
        )
    return issues
