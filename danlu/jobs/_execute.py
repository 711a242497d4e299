"""One attempt of one job, the same for every executor: :func:`run_job`.

The attempt is a ``danlu run`` (or ``danlu tune``) subprocess — stages run "by name", the jobs
layer never imports the engine — pinned to its slot: ``CUDA_VISIBLE_DEVICES`` to the slot's GPUs,
the CPU affinity to its CPUs, ``OMP_NUM_THREADS`` and ``--threads`` to its CPU count. The child
asks the kernel for SIGKILL when the thread that started it dies (``PR_SET_PDEATHSIG``), so a
``kill -9`` of the executor takes the child with it and the job can never run twice at once.

While the child runs, the lease is renewed every third of its length (and the cancel and preempt
flags are read every second). When renewal fails (the
job was requeued elsewhere) or no renewal succeeded for most of the lease (the database is out
of reach), the child is killed at once: another executor may take the job once the lease ends.
A cancel request stops the child with SIGTERM, then SIGKILL after a grace period; a preempt
request (or the executor shutting down) sends SIGTERM and waits longer, for the run to write its
checkpoint and exit with status 75. The child's output goes to the job's log (every attempt,
appended) and, when the attempt ends, to its run as the artifact ``job.log``.

The child's run is tagged ``job=<id>`` (``DANLU_JOB_ID`` in its environment): that is how the
attempt learns its run id, and how the next attempt knows which run to resume.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from danlu.jobs._entities import Job, Outcome, Slot
from danlu.jobs._queue import JobQueue
from danlu.logging import get_logger
from danlu.store import atomic_write_text

__all__ = ["JOB_ID_ENV", "child_command", "run_job"]

log = get_logger(__name__)

JOB_ID_ENV = "DANLU_JOB_ID"
_PR_SET_PDEATHSIG = 1
_TAIL_LINES = 20  # log lines kept for the error message of a failed attempt
_LOOK_EVERY_S = 1.0  # how often a running attempt reads its cancel and preempt flags


def _runs_of(queue: JobQueue, job: Job) -> list[str]:
    """The runs tagged with this job, oldest first."""
    try:
        runs = queue.store.search_runs(f"tags.job = '{job.id}'", order_by=["created_at"])
    except Exception as exc:  # bookkeeping never stops the attempt
        log.warning("job %s: could not look up its runs: %s", job.id, exc)
        return []
    return [r.id for r in runs]


def child_command(job: Job, recipe_file: Path, slot: Slot, resume: str | None) -> list[str]:
    """The ``python -m danlu ...`` command line of an attempt."""
    sets = [arg for item in job.overrides for arg in ("--set", item)]
    if job.kind == "tune":
        return [sys.executable, "-m", "danlu", "tune", str(recipe_file), *sets]
    command = [sys.executable, "-m", "danlu", "run", str(recipe_file), *sets]
    command += ["--threads", str(max(slot.threads, 1))]
    if resume is not None:
        command += ["--resume", resume]
    return command


def _child_env(queue: JobQueue, job: Job, slot: Slot) -> dict[str, str]:
    env = dict(os.environ)
    threads = str(max(slot.threads, 1))
    env.update(
        {
            JOB_ID_ENV: job.id,
            "DANLU_DB_URL": queue.store.engine.url.render_as_string(hide_password=False),
            "DANLU_HOME": str(Path(queue.store.home).resolve()),
            "CUDA_VISIBLE_DEVICES": ",".join(map(str, slot.gpus)),
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _preexec(cpus: Sequence[int]) -> Callable[[], None]:
    """What the child does between fork and exec: die with its parent thread, take its CPUs.

    Only async-signal-safe work here (a libc call, a syscall): the parent has threads."""
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()
    cpu_set = set(cpus)

    def setup() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: follow it now
            os._exit(1)
        if cpu_set:
            os.sched_setaffinity(0, cpu_set)

    return setup


class _LogPump(threading.Thread):
    """Copies the child's output into the job's log, line by line, and keeps the last lines."""

    def __init__(
        self, stream: object, log_file: Path, on_line: Callable[[str], None] | None
    ) -> None:
        super().__init__(daemon=True, name="danlu-job-log")
        self.stream = stream
        self.log_file = log_file
        self.on_line = on_line
        self.tail: list[str] = []

    def run(self) -> None:
        with (
            open(self.log_file, "a", encoding="utf-8", errors="replace") as handle,
            contextlib.suppress(ValueError),  # the pipe was closed under a reader left behind
        ):
            for line in self.stream:  # type: ignore[attr-defined]
                handle.write(line)
                handle.flush()
                self.tail = (self.tail + [line.rstrip("\n")])[-_TAIL_LINES:]
                if self.on_line is not None:
                    with contextlib.suppress(Exception):  # a display never stops the job
                        self.on_line(line)


def _signal(proc: subprocess.Popen[str], sig: int, *, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(proc.pid, sig)  # the child leads its own process group (workers too)
        else:
            proc.send_signal(sig)


def _write_header(log_file: Path, text: str) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", encoding="utf-8") as handle:
        handle.write(f"── {time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")


def run_job(
    queue: JobQueue,
    job: Job,
    slot: Slot,
    agent_id: str,
    *,
    lease_s: float = 30.0,
    stop: threading.Event | None = None,
    on_line: Callable[[str], None] | None = None,
    cancel_grace_s: float = 10.0,
    preempt_grace_s: float = 120.0,
    on_exit: Callable[[], None] | None = None,
) -> Outcome:
    """Run one attempt of a claimed ``job`` in ``slot`` and record how it ended.

    Used by every executor (``danlu agent`` calls it in a thread per job, the Dask executor
    inside a task on a worker): it depends on nothing but its arguments. ``job`` is the job as
    :meth:`JobQueue.claim` returned it (its lease token proves the claim). Setting ``stop``
    preempts the attempt (the executor is shutting down): SIGTERM, the run checkpoints, the job
    goes back to the queue. Returns the attempt's :class:`Outcome`, with ``status`` the job's
    status afterwards (None when the lease was lost). ``on_exit`` is called once the child is
    gone, before the outcome is recorded: an executor frees the slot there, so that nobody
    sees a queued job blocked by a slot whose process has already ended.

    Must be called from a thread that stays alive until it returns: the child is bound to that
    thread's life (``PR_SET_PDEATHSIG``).

    Example:
        >>> # job = queue.claim(agent_id, pool); outcome = run_job(queue, job, job.slot, agent_id)
    """
    log_file = queue.log_path(job.id)
    recipe_file = log_file.parent / "recipe.yaml"
    if not recipe_file.is_file():
        recipe_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(recipe_file, job.recipe)
    known = _merge(job.run_ids, _runs_of(queue, job) if job.kind == "run" else [])
    resume = known[-1] if known else None
    command = child_command(job, recipe_file, slot, resume)
    _write_header(
        log_file,
        f"attempt {job.attempts} on agent {agent_id} (slot: CPUs {list(slot.cpus)}, GPUs "
        f"{list(slot.gpus)}, {slot.threads} threads)"
        + (f", resuming run {resume}" if resume else ""),
    )
    workdir = job.workdir if Path(job.workdir).is_dir() else None
    try:
        proc = subprocess.Popen(
            command,
            cwd=workdir,
            env=_child_env(queue, job, slot),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            preexec_fn=_preexec(slot.cpus),  # noqa: PLW1509 - prctl and affinity only
            start_new_session=True,  # a Ctrl-C of the executor's terminal is the executor's
        )
    except OSError as exc:
        outcome = Outcome("not_started", error=f"could not start {command[:4]}: {exc}")
        return _record(queue, job, outcome, log_file)
    _write_header(log_file, f"started pid {proc.pid}: {' '.join(command[1:])}")
    pump = _LogPump(proc.stdout, log_file, on_line)
    pump.start()
    reason, known = _supervise(
        queue, job, proc, known, lease_s=lease_s, stop=stop,
        cancel_grace_s=cancel_grace_s, preempt_grace_s=preempt_grace_s,
    )  # fmt: skip
    pump.join(timeout=60)  # the child is gone: only what it left in the pipe remains
    if proc.stdout is not None:
        proc.stdout.close()
    code = proc.returncode
    if on_exit is not None:
        on_exit()
    known = _merge(known, _runs_of(queue, job) if job.kind == "run" else [])
    error = None
    if code != 0:
        tail = "\n".join(pump.tail[-5:])
        error = f"exit status {code}" + (f"; last output:\n{tail}" if tail else "")
    outcome = Outcome(reason, exit_code=code, run_ids=tuple(known), error=error)
    return _record(queue, job, outcome, log_file)


def _merge(known: Sequence[str], new: Sequence[str]) -> list[str]:
    merged = list(known)
    merged += [r for r in new if r not in merged]
    return merged


def _supervise(
    queue: JobQueue,
    job: Job,
    proc: subprocess.Popen[str],
    known: list[str],
    *,
    lease_s: float,
    stop: threading.Event | None,
    cancel_grace_s: float,
    preempt_grace_s: float,
) -> tuple[str, list[str]]:
    """Renew the lease until the child exits; stop it when asked. Returns why it ended.

    The lease is renewed (a write) every third of its length; in between, the job's cancel and
    preempt flags are read every second, so a request takes effect within about a second."""
    every = max(lease_s / 3, 0.05)
    look_every = min(every, _LOOK_EVERY_S)
    renewed = last_look = time.monotonic()
    reason = "exited"
    kill_at: float | None = None
    while True:
        try:
            proc.wait(timeout=0.2 if kill_at is not None else min(look_every, 0.5))
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if kill_at is not None and now >= kill_at:
            log.warning("job %s: still running after SIGTERM; killing it", job.id)
            _signal(proc, signal.SIGKILL, group=True)
            kill_at = None
        if reason == "exited" and stop is not None and stop.is_set():
            reason, kill_at = "preempted", now + preempt_grace_s
            _signal(proc, signal.SIGTERM)
        if reason != "lost" and now - renewed > lease_s * 0.75:  # before anyone may requeue it
            log.error("job %s: its lease was not renewed in time; killing its process", job.id)
            _signal(proc, signal.SIGKILL, group=True)
            reason = "lost"
        if now - last_look < look_every:
            continue
        last_look = now
        renew = now - renewed >= every
        try:
            if renew:
                if job.kind == "run":
                    known = _merge(known, _runs_of(queue, job))
                answer = queue.heartbeat(job, lease_s=lease_s, run_ids=known)
                renewed = time.monotonic()  # the new expiry was written during the call
            else:
                answer = queue.peek(job)
        except Exception as exc:  # the database is out of reach: keep trying while we may
            log.warning(
                "job %s: could not %s: %s",
                job.id,
                "renew its lease" if renew else "look at its flags",
                exc,
            )
            continue
        if not answer.held and reason != "lost":
            log.error("job %s: its lease was lost (requeued); killing its process", job.id)
            _signal(proc, signal.SIGKILL, group=True)
            reason = "lost"
        elif reason == "exited" and answer.cancel:
            reason, kill_at = "cancelled", now + cancel_grace_s
            _signal(proc, signal.SIGTERM)
        elif reason == "exited" and answer.preempt:
            reason, kill_at = "preempted", now + preempt_grace_s
            _signal(proc, signal.SIGTERM)
    return reason, known


def _record(queue: JobQueue, job: Job, outcome: Outcome, log_file: Path) -> Outcome:
    """Finish the attempt in the queue, and keep the job's log with its latest run."""
    if outcome.reason == "lost":
        _write_header(log_file, "attempt stopped: its lease was lost")
        return outcome
    final = queue.finish(job, outcome)
    status = final.status if final is not None else None
    _write_header(
        log_file,
        f"attempt {job.attempts} ended: {outcome.reason}, exit status {outcome.exit_code}"
        + (f" -> job {status}" if status else " (lease lost: nothing recorded)"),
    )
    if outcome.run_ids:
        try:
            queue.store.log_artifact(
                outcome.run_ids[-1], "job.log", log_file.read_bytes(), "text/plain"
            )
        except Exception as exc:  # the log stays in the job's folder
            log.warning(
                "job %s: could not keep its log with run %s: %s", job.id, outcome.run_ids[-1], exc
            )
    return Outcome(
        outcome.reason if final is not None else "lost",
        exit_code=outcome.exit_code,
        run_ids=outcome.run_ids,
        error=outcome.error,
        status=status,
    )
