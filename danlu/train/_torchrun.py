"""Launching a distributed run through ``torchrun``, and what each of its ranks runs.

The parent (:func:`launch`, called by :func:`danlu.run` for a recipe with ``train.distributed``)
writes the validated recipe into a job folder and starts PyTorch's elastic launcher::

    python -m torch.distributed.run --nproc_per_node N --nnodes 1 --max_restarts R
        --rdzv_backend c10d --rdzv_endpoint 127.0.0.1:PORT -m danlu.train._torchrun

(several machines: ``--nnodes K --node_rank I --rdzv_backend static --rdzv_endpoint
HOST:PORT``, so node 0 hosts rank 0). Each rank (:func:`main`) joins the process group and
prepares the data the same way (same seed, same split). Rank 0 runs the prepare → train plan
through the :class:`~danlu.train.Runner`, the only rank that opens the run, tracks, checkpoints
and writes artifacts; the others train their shard with the same :class:`~danlu.train.Trainer`
and write nothing to the store. The run id goes into the job folder as soon as the run opens,
so when a rank dies and ``torchrun`` restarts every rank (``max_restarts``), the new rank 0
resumes that run from its last checkpoint. The parent then evaluates and registers the run
like any other (:func:`danlu.run` resumes it with the trained stages reloaded).

A rank that fails writes ``error-RANK-ATTEMPT.json`` (its error's class and message) into the
folder; when ``torchrun`` gives up, :func:`launch` raises the error of the rank that failed
first (a recipe or data error keeps its class, so exit codes still tell them apart), else
:class:`~danlu.train.RankFailed` with its exit status.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from danlu.config import load_recipe, recipe_to_yaml
from danlu.errors import DanluError, Preempted
from danlu.logging import get_logger
from danlu.train._distributed import RankFailed

if TYPE_CHECKING:
    from danlu.config import DistributedConfig, Recipe
    from danlu.store import Store
    from danlu.train._callbacks import Callback
    from danlu.train._runner import Context

__all__ = ["FAULT_ENV", "JOB_ENV", "launch", "main", "torchrun_command"]

log = get_logger(__name__)

JOB_ENV = "DANLU_DIST_DIR"  # the job folder the parent and the ranks share
FAULT_ENV = "DANLU_TEST_KILL_RANK"  # tests only: "RANK:BATCH[:always]" makes that rank os._exit
_RUN_FILE = "run_id"
_RECIPE_FILE = "recipe.yaml"
_TAGS_FILE = "tags.json"  # tags of a new run (a queued job's runs carry job=<id>)
_STOP_WAIT_S = 60.0  # after Ctrl-C / SIGTERM: how long the ranks get to stop before SIGKILL


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def torchrun_command(config: DistributedConfig, *, port: int | None = None) -> list[str]:
    """The ``torchrun`` command line for ``train.distributed`` (this machine's part of it).

    Example:
        >>> from danlu.config import DistributedConfig
        >>> " ".join(torchrun_command(DistributedConfig(nproc_per_node=2), port=29400)[3:9])
        '--nproc_per_node 2 --nnodes 1 --max_restarts 0'
    """
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    cmd += [
        "--nproc_per_node",
        str(config.nproc_per_node),
        "--nnodes",
        str(config.nnodes),
    ]
    cmd += ["--max_restarts", str(config.max_restarts), "--monitor_interval", "0.2"]
    if config.nnodes == 1:  # one machine: meet on loopback, on a free port unless one is given
        endpoint = config.rdzv_endpoint or f"127.0.0.1:{port or _free_port()}"
        cmd += ["--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint]
    else:  # static: node_rank 0 hosts global rank 0, which records the run
        assert config.rdzv_endpoint is not None  # the schema requires it
        cmd += ["--rdzv_backend", "static", "--rdzv_endpoint", config.rdzv_endpoint]
        cmd += ["--node_rank", str(config.node_rank)]
    return [*cmd, "-m", "danlu.train._torchrun"]


# -- the parent ---------------------------------------------------------------------------------


def launch(
    recipe: Recipe,
    *,
    store: Store,
    resume: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Train ``recipe`` (already validated) on ``train.distributed``'s ranks; returns the run id.

    Blocks until ``torchrun`` ends. The ranks' output goes to this process's stdout/stderr.
    Ctrl-C or SIGTERM here stops the ranks (SIGTERM, then SIGKILL after a minute) and is
    re-raised.
    """
    config = recipe.train.distributed
    assert config is not None
    with tempfile.TemporaryDirectory(prefix="danlu-dist-") as tmp:
        folder = Path(tmp)
        (folder / _RECIPE_FILE).write_text(recipe_to_yaml(recipe))
        if resume is not None:
            (folder / _RUN_FILE).write_text(resume)
        (folder / _TAGS_FILE).write_text(json.dumps(tags or {}))
        env = {**os.environ, JOB_ENV: str(folder)}
        home = getattr(store, "home", None)
        url = getattr(store, "url", None)
        if home is not None:  # the ranks open the same store
            env["DANLU_HOME"] = str(Path(home).resolve())
        if url is not None:
            env["DANLU_DB_URL"] = str(url)
        env.setdefault("OMP_NUM_THREADS", "1")  # ranks share the cores (torchrun's default too)
        cmd = torchrun_command(config)
        log.info("launching: %s", " ".join(cmd))
        code, tail = _run_torchrun(cmd, env)
        run_id = _read(folder / _RUN_FILE)
        if code != 0:
            exc = _rank_error(folder, tail, code, config.max_restarts, run_id)
            if run_id is not None and not isinstance(exc, Preempted):
                _mark_failed(store, run_id, exc)
            raise exc
        if run_id is None:
            raise RankFailed(
                "The distributed run ended without a run: rank 0 did not record one. "
                "See the ranks' output above."
            )
        return run_id


def _run_torchrun(cmd: Sequence[str], env: dict[str, str]) -> tuple[int, list[str]]:
    """Run ``torchrun``, passing its stderr through and keeping its tail; stop it on Ctrl-C."""
    tail: deque[str] = deque(maxlen=400)
    with subprocess.Popen(
        cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace"
    ) as proc:
        assert proc.stderr is not None
        try:
            for line in proc.stderr:
                sys.stderr.write(line)
                tail.append(line)
            return proc.wait(), list(tail)
        except BaseException:  # Ctrl-C, SIGTERM (Preempted): the ranks stop too, then we go
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=_STOP_WAIT_S)
            raise


def _mark_failed(store: Store, run_id: str, exc: DanluError) -> None:
    """The job failed, so its run did. When one rank dies, torchrun stops the others with
    SIGTERM, and rank 0, taking that for a preemption, may have saved a checkpoint and marked
    the run ``interrupted`` before its collective noticed the dead peer: a race. The run's
    checkpoint stays (``danlu run --resume`` continues it); its status says what happened."""
    with contextlib.suppress(DanluError):
        if store.get_run(run_id).status in ("interrupted", "running"):
            store.set_status(run_id, "failed", error=str(exc))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


_FAILURE = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank.*?exitcode\s*:\s*(-?\d+)", re.S)
# gloo's errors in the ranks left when one rank dies
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "remote worker")
_ROOT_CAUSE = re.compile(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.S)


def _rank_error(
    folder: Path, tail: Sequence[str], code: int, restarts: int, run_id: str | None
) -> DanluError:
    """The error of the rank that failed first, as the job's error."""
    import danlu.errors

    errors = []
    for path in folder.glob("error-*.json"):
        with contextlib.suppress(ValueError, OSError):
            errors.append(json.loads(path.read_text()))
    last = max((e["attempt"] for e in errors), default=0)
    errors = sorted((e for e in errors if e["attempt"] == last), key=lambda e: e["time"])
    found = _ROOT_CAUSE.search("".join(tail))
    rank, exit_code = (int(found.group(1)), int(found.group(2))) if found else (None, code)
    own = [e for e in errors if e["rank"] == rank] if rank is not None else errors[:1]
    if own and any(
        mark in own[0]["message"] for mark in _PEER_GONE
    ):  # a consequence: another rank died first
        failed = {int(r): int(c) for r, c in _FAILURE.findall("".join(tail))}
        others = [r for r in failed if r != rank and not any(e["rank"] == r for e in errors)]
        if others:  # it died without a Python error (killed, os._exit): the real cause
            rank, exit_code, own = others[0], failed[others[0]], []
    if own:  # the failed rank said why: keep its class (a recipe / data error stays one)
        cls = getattr(danlu.errors, own[0]["type"], None)
        if isinstance(cls, type) and issubclass(cls, DanluError):
            exc: DanluError = cls(own[0]["message"])
        else:
            exc = RankFailed(
                f"Rank {own[0]['rank']} failed with {own[0]['type']}: {own[0]['message']}"
            )
    else:
        how = (
            f"was killed by signal {signal.Signals(-exit_code).name}"
            if exit_code < 0 and -exit_code in signal.Signals._value2member_map_
            else f"exited with code {exit_code}"
        )
        who = f"Rank {rank}" if rank is not None else "A rank"
        exc = RankFailed(f"{who} {how} without a Python error (killed, out of memory, os._exit).")
    tries = f" after {restarts} restart(s)" if restarts else " (train.distributed.max_restarts: 0)"
    exc.args = (f"Distributed training failed{tries}. {exc.args[0]}",)
    if run_id is not None:  # the CLI says how to resume it (danlu.train.run_of)
        with contextlib.suppress(AttributeError):
            exc.danlu_run_id = run_id  # type: ignore[attr-defined]
    return exc


# -- the ranks ----------------------------------------------------------------------------------


class _Fault:
    """Tests only: ``$DANLU_TEST_KILL_RANK=RANK:BATCH[:always]`` makes that rank ``os._exit(3)``
    at that batch (counted over the run) of its first attempt (every attempt with ``always``)."""

    def __init__(self, rank: int, attempt: int) -> None:
        self.at: int | None = None
        spec = os.environ.get(FAULT_ENV, "")
        parts = spec.split(":")
        if len(parts) >= 2 and int(parts[0]) == rank and (attempt == 0 or parts[2:] == ["always"]):
            self.at = int(parts[1])
        self.seen = 0

    def callbacks(self) -> list[Callback]:
        if self.at is None:
            return []
        from danlu.train._callbacks import Callback

        fault = self

        class _KillAt(Callback):
            def on_batch_end(self, trainer: Any, batch: int, loss: Any) -> None:
                fault.seen += 1
                if fault.seen > (fault.at or 0):
                    os._exit(3)

        return [_KillAt()]


def _noting_run_id(folder: Path, stage_run: Callable[[Context], Context]) -> Any:
    """The train stage, first writing the run's id where a restarted rank 0 finds it."""

    def run(ctx: Context) -> Context:
        from danlu.store import atomic_write_bytes

        atomic_write_bytes(folder / _RUN_FILE, ctx.run_id.encode())
        return stage_run(ctx)

    return run


def _train_main(recipe: Recipe, folder: Path, callbacks: Sequence[Callback]) -> None:
    """Rank 0: the prepare → train plan through the Runner (opens or resumes the run)."""
    from danlu.train._run import PREPARE, TRAIN, make_context
    from danlu.train._runner import Runner

    train = dataclasses.replace(TRAIN, run=_noting_run_id(folder, TRAIN.run))
    tags = json.loads((folder / _TAGS_FILE).read_text())
    ctx = make_context(recipe, resume=_read(folder / _RUN_FILE), callbacks=callbacks, tags=tags)
    try:
        Runner((PREPARE, train)).run(ctx)
    finally:
        close = getattr(ctx.store, "close", None)
        if close is not None:
            close()


def _train_other(recipe: Recipe, callbacks: Sequence[Callback]) -> None:
    """Ranks > 0: the same data and model as rank 0, trained on their shard; nothing stored."""
    from danlu.models import MODELS
    from danlu.tasks import get_task
    from danlu.train._distributed import active_strategy
    from danlu.train._energy import EnergyMeter
    from danlu.train._loop import Trainer, resolve_device, seed_everything
    from danlu.train._run import check_recipe, prepare_recipe_data

    options = check_recipe(recipe)
    task = get_task(recipe.task)
    data = prepare_recipe_data(recipe, task)
    task = task.configure(recipe, data)  # as the prepare stage (anomaly: its label columns)
    seed_everything(recipe.train.seed)  # the same initial weights as rank 0
    model = MODELS.get(recipe.model.type).builder(options, data.schema, task)
    meter = EnergyMeter(device=str(resolve_device(recipe.train.device))).start()
    Trainer(recipe.train, callbacks=callbacks).fit(model, task, data)
    active_strategy().after_fit(meter.stop())


def _write_error(folder: Path, rank: int, attempt: int, exc: BaseException) -> None:
    from danlu.store import atomic_write_bytes

    record = {
        "rank": rank,
        "attempt": attempt,
        "type": type(exc).__name__,
        "message": str(exc) or type(exc).__name__,
        "time": time.time(),
    }
    with contextlib.suppress(OSError):
        atomic_write_bytes(folder / f"error-{rank}-{attempt}.json", json.dumps(record).encode())


def main() -> None:
    """What ``torchrun`` runs in each rank (``python -m danlu.train._torchrun``).

    The rank ends with ``os._exit`` once its work is done, its files written and its output
    flushed: tearing gloo / FSDP down in the interpreter's own exit sometimes aborts
    (``terminate called without an active exception``), which would fail a finished job.
    """
    import logging
    import traceback

    from danlu.train._distributed import end_process_group, start_process_group

    folder = Path(os.environ[JOB_ENV])
    rank = int(os.environ.get("RANK", "0"))
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    code = 0
    try:
        recipe = load_recipe(folder / _RECIPE_FILE)
        assert recipe.train.distributed is not None
        strategy = start_process_group(recipe.train.distributed, recipe.train.device)
        callbacks = _Fault(rank, attempt).callbacks()
        if strategy.is_main and attempt:
            sys.stderr.write(f"rank 0: restart {attempt}: resuming the run from its checkpoint\n")
        if strategy.is_main:
            _train_main(recipe, folder, callbacks)
        else:
            _train_other(recipe, callbacks)
            if strategy.local_rank == 0 and strategy.run_id:  # another machine's parent reads it
                (folder / _RUN_FILE).write_text(strategy.run_id)
        end_process_group()
    except BaseException as exc:  # noqa: BLE001 - recorded for the parent, then the exit code
        _write_error(folder, rank, attempt, exc)
        if isinstance(exc, DanluError):
            sys.stderr.write(f"rank {rank}: {type(exc).__name__}: {exc}\n")
            code = exc.exit_code
        else:
            sys.stderr.write(f"rank {rank}:\n{traceback.format_exc()}")
            code = 130 if isinstance(exc, KeyboardInterrupt) else 1
        with contextlib.suppress(Exception):
            end_process_group(clean=False)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
