"""The job queue in the store: submit, claim by lease, heartbeat, finish, cancel, retry.

Every executor (``danlu agent``, the Dask executor) goes through :class:`JobQueue`, so the rules
live here once:

- **Order**: the highest ``priority`` first, first come first served within a priority. A job
  that fits an executor but not its free slots right now holds the line there (lower-priority
  jobs do not overtake it), so it cannot starve.
- **Claims are leases.** A claim writes a random token and an expiry; the holder renews it
  (:meth:`JobQueue.heartbeat`) and only the token's holder can finish the job. A lease that
  expires (its executor died) puts the job back in the queue (:meth:`JobQueue.requeue_expired`)
  and the next attempt resumes the run from its last checkpoint. PostgreSQL claims with
  ``SELECT ... FOR UPDATE SKIP LOCKED``; SQLite's ``BEGIN IMMEDIATE`` serialises writers.
- **Quotas**: at most ``max_running`` jobs of a project run at once (:meth:`JobQueue.set_quota`),
  counted across every executor on the store.
- **Retries**: a crash (a signal, an unexpected exit status) is retried with exponential backoff
  up to ``max_attempts``; a recipe or data error (exit status 2, 3, 4, 6) never is.
- **Preemption**: when the first waiting job cannot get a slot, the lowest-priority preemptible
  jobs running on that executor are asked to stop (:meth:`JobQueue.preempt_for`); they write a
  checkpoint, exit with status 75 and are queued again without counting an attempt.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.exc import OperationalError

from danlu.errors import ConfigError, DanluError, NotFoundError, StoreError
from danlu.jobs._entities import (
    EXIT_PREEMPTED,
    FINAL_STATUSES,
    JOB_KINDS,
    JOB_STATUSES,
    NO_RETRY_EXIT_CODES,
    AgentInfo,
    Job,
    Outcome,
    Resources,
    Signal,
    Slot,
)
from danlu.jobs._rows import agent_from_row, describe_agent, job_from_row, loads, merge_runs
from danlu.logging import get_logger
from danlu.store import SqlStore, agents_table, current_actor, host_name, jobs_table, quotas_table

__all__ = ["JobQueue", "Placer"]

log = get_logger(__name__)

_PROJECT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_JOB_ID = re.compile(r"^[0-9a-f]{12}$")
_CANDIDATES = 50  # queued jobs a claim looks at (the head of the queue)


class Placer(Protocol):
    """Where jobs can go: an executor's free compute. ``place`` reserves a slot for ``job`` (or
    says None: no room now); ``fits`` says whether the job could ever run there (it fits the
    executor's whole capacity); ``can_place`` asks ``place``'s question without reserving,
    as if ``releasing`` were free already."""

    def place(self, job: Job) -> Slot | None: ...

    def release(self, slot: Slot) -> None: ...

    def fits(self, job: Job) -> bool: ...

    def can_place(self, job: Job, releasing: Sequence[Slot] = ()) -> bool: ...


class JobQueue:
    """The job queue of a store (SQLite or PostgreSQL).

    Args:
        store: the store the jobs live in (its database and artifact folder).
        backoff_s: the first retry of a crashed job waits this long; each further retry
            doubles it, up to ``max_backoff_s``.

    Example:
        >>> import tempfile
        >>> from danlu.store import SqlStore
        >>> queue = JobQueue(SqlStore(home=tempfile.mkdtemp()))
        >>> job = queue.submit(recipe="name: x\\n", recipe_path="x.yaml", name="x")
        >>> queue.get(job.id).status
        'queued'
    """

    def __init__(
        self, store: SqlStore, *, backoff_s: float = 10.0, max_backoff_s: float = 600.0
    ) -> None:
        self.store = store
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._pg = store.engine.dialect.name == "postgresql"

    # -- transactions ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction: ``BEGIN IMMEDIATE`` on SQLite (it waits out the busy timeout
        for the lock up front), a plain transaction on PostgreSQL (rows are locked as read)."""
        conn = self.store.engine.connect().execution_options(danlu_write=True)
        try:
            conn.begin()
            yield conn
            conn.commit()
        except OperationalError as exc:
            conn.rollback()
            raise StoreError(f"Job queue write failed: {exc.orig}") from None
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.store.engine.connect() as conn, conn.begin():
                yield conn
        except OperationalError as exc:
            raise StoreError(f"Job queue read failed: {exc.orig}") from None

    # -- submit ---------------------------------------------------------------------------------
    def submit(
        self,
        *,
        recipe: str,
        recipe_path: str,
        name: str,
        kind: str = "run",
        overrides: Sequence[str] = (),
        project: str = "default",
        priority: int = 0,
        resources: Resources | None = None,
        preemptible: bool = False,
        max_attempts: int = 3,
        estimate: dict[str, Any] | None = None,
        workdir: str = ".",
        submitted_by: str | None = None,
    ) -> Job:
        """Queue a recipe (validated by the caller: the CLI loads and checks it first).

        Raises ConfigError for a bad setting, and for a job no slot can hold: more CPUs, GPUs or
        memory than the largest slot of any live executor (or of this machine, with none live);
        the message names that slot.
        """
        resources = resources or Resources()
        if kind not in JOB_KINDS:
            raise ConfigError(f"A job's kind must be one of {', '.join(JOB_KINDS)}; got {kind!r}.")
        if not isinstance(project, str) or not _PROJECT.match(project):
            raise ConfigError(
                f"The project name {project!r} is not valid: use letters, digits, '.', '_' and "
                "'-' (at most 100), starting with a letter or digit."
            )
        if resources.cpus < 1 or resources.gpus < 0 or resources.memory_gb < 0:
            raise ConfigError(
                f"A job needs at least 1 CPU, 0 or more GPUs and 0 or more GB; got "
                f"{resources.describe()}. Check --cpus, --gpus and --memory."
            )
        if max_attempts < 1:
            raise ConfigError(f"--max-attempts must be at least 1; got {max_attempts}.")
        self.check_fits(resources)
        now = time.time()
        job_id = secrets.token_hex(6)
        with self._write() as conn:
            conn.execute(
                insert(jobs_table).values(
                    id=job_id,
                    kind=kind,
                    name=name[:200],
                    recipe=recipe,
                    recipe_path=recipe_path,
                    workdir=workdir,
                    overrides=json.dumps(list(overrides)),
                    project=project,
                    priority=int(priority),
                    cpus=resources.cpus,
                    gpus=resources.gpus,
                    memory_gb=float(resources.memory_gb),
                    preemptible=bool(preemptible),
                    status="queued",
                    attempts=0,
                    max_attempts=max_attempts,
                    preemptions=0,
                    not_before=now,
                    run_ids="[]",
                    created_at=now,
                    cancel_requested=False,
                    preempt_requested=False,
                    estimate=json.dumps(estimate) if estimate is not None else None,
                    submitted_by=(submitted_by or current_actor())[:200],
                )
            )
        log.info("job %s queued (%s, priority %d)", job_id, name, priority)
        return self.get(job_id)

    def largest_slots(self) -> list[tuple[str, Resources]]:
        """Each live executor's largest slot, described; this machine's when none is live."""
        now = time.time()
        live = [a for a in self.agents() if a.live(now)]
        if live:
            return [(describe_agent(a), a.largest_slot) for a in live]
        from danlu.jobs._machine import machine_resources

        here = machine_resources()
        gpus = ",".join(map(str, here.gpu_ids)) or "none"
        return [
            (
                f"this machine ({host_name()}, no agent is running): {here.cpus} CPUs, "
                f"GPUs {gpus}, {here.memory_gb:.1f} GB",
                Resources(here.cpus, len(here.gpu_ids), here.memory_gb),
            )
        ]

    def check_fits(self, need: Resources) -> None:
        """Raise ConfigError naming the largest slot when no slot can hold ``need``."""
        slots = self.largest_slots()
        if any(offer.covers(need) for _, offer in slots):
            return
        short = []
        for label, attr, unit, flag in (
            ("CPUs", "cpus", "", "--cpus"),
            ("GPUs", "gpus", "", "--gpus"),
            ("memory", "memory_gb", " GB", "--memory"),
        ):
            most_label, most = max(slots, key=lambda s: getattr(s[1], attr))
            if getattr(most, attr) < getattr(need, attr) - 1e-9:
                short.append(
                    f"it asks for {getattr(need, attr):g}{unit} {label} but the largest slot has "
                    f"{getattr(most, attr):g}{unit} ({most_label}); ask for less ({flag})"
                )
        if not short:  # each amount fits some slot, but no one slot has all of them
            short.append(
                "no single slot has all of it; the slots are: "
                + "; ".join(label for label, _ in slots)
            )
        raise ConfigError(
            f"No slot can hold this job ({need.describe()}): "
            + "; ".join(short)
            + ". Or start an agent with more (danlu agent --cpus N --gpus 0,1 --memory GB)."
        )

    # -- reading --------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job:
        """The job. Raises NotFoundError."""
        if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
            raise NotFoundError(
                f"No job with id {str(job_id)[:40]!r}: a job id is 12 hex digits. "
                "List jobs with `danlu jobs ls`."
            )
        with self._read() as conn:
            row = conn.execute(select(jobs_table).where(jobs_table.c.id == job_id)).first()
        if row is None:
            raise NotFoundError(f"No job with id '{job_id}'. List jobs with `danlu jobs ls`.")
        return job_from_row(row)

    def list_jobs(
        self, *, status: str | None = None, project: str | None = None, limit: int = 50
    ) -> list[Job]:
        """Jobs, newest first, optionally of one status and project."""
        if status is not None and status not in JOB_STATUSES:
            raise ConfigError(
                f"Unknown job status {status!r}; use one of: {', '.join(JOB_STATUSES)}."
            )
        c = jobs_table.c
        query = select(jobs_table).order_by(c.created_at.desc(), c.id.desc()).limit(limit)
        if status is not None:
            query = query.where(c.status == status)
        if project is not None:
            query = query.where(c.project == project)
        with self._read() as conn:
            return [job_from_row(r) for r in conn.execute(query).all()]

    def counts(self) -> dict[str, int]:
        """How many jobs are in each status."""
        c = jobs_table.c
        with self._read() as conn:
            rows = conn.execute(select(c.status, func.count()).group_by(c.status)).all()
        return {status: int(n) for status, n in rows}

    def log_path(self, job_id: str) -> Path:
        """The job's log (every attempt's output), in the store's artifact area."""
        return self.store.artifact_root / "jobs" / job_id / "job.log"

    # -- claiming and leases --------------------------------------------------------------------
    def _quota_full(self, conn: Connection, project: str) -> bool:
        quota = select(quotas_table.c.max_running).where(quotas_table.c.project == project)
        if self._pg:  # claims of one project's jobs queue up here, so the count below is exact
            quota = quota.with_for_update()
        limit = conn.execute(quota).scalar()
        if limit is None:
            return False
        c = jobs_table.c
        running = conn.execute(
            select(func.count()).where(c.project == project, c.status == "running")
        ).scalar()
        return int(running or 0) >= int(limit)

    def _queued_head(self, conn: Connection, now: float) -> list[Job]:
        c = jobs_table.c
        query = (
            select(jobs_table)
            .where(c.status == "queued", c.not_before <= now)
            .order_by(c.priority.desc(), c.created_at, c.id)
            .limit(_CANDIDATES)
        )
        if self._pg:
            query = query.with_for_update(skip_locked=True)
        return [job_from_row(r) for r in conn.execute(query).all()]

    def claim(self, agent_id: str, placer: Placer, *, lease_s: float = 30.0) -> Job | None:
        """Claim the first queued job ``placer`` has room for, holding its lease for ``lease_s``
        seconds; None when there is none. The returned job carries the lease token and slot.

        A job that ``placer`` could hold but has no room for now stops the search (it waits for
        the room; lower-priority jobs do not overtake it here).
        """
        now = time.time()
        placed: Slot | None = None
        claimed: Job | None = None
        try:
            with self._write() as conn:
                quota_full: dict[str, bool] = {}
                for job in self._queued_head(conn, now):
                    if job.project not in quota_full:
                        quota_full[job.project] = self._quota_full(conn, job.project)
                    if quota_full[job.project]:
                        continue
                    placed = placer.place(job)
                    if placed is None:
                        if placer.fits(job):
                            break  # it waits for room here; nothing overtakes it
                        continue
                    claimed = self._take(conn, job, agent_id, placed, now + lease_s)
                    if claimed is not None:
                        break
                    placer.release(placed)  # taken meanwhile (SQLite cannot get here)
                    placed = None
        except BaseException:
            if placed is not None:
                placer.release(placed)
            raise
        if claimed is not None:
            log.info("job %s claimed by %s (attempt %d)", claimed.id, agent_id, claimed.attempts)
        return claimed

    def _take(
        self, conn: Connection, job: Job, agent_id: str, slot: Slot, expires: float
    ) -> Job | None:
        c = jobs_table.c
        done = conn.execute(
            update(jobs_table)
            .where(c.id == job.id, c.status == "queued")
            .values(
                status="running",
                attempts=job.attempts + 1,
                lease_owner=agent_id,
                lease_token=secrets.token_hex(16),
                lease_expires_at=expires,
                agent_id=agent_id,
                slot=slot.to_json(),
                started_at=time.time(),
                ended_at=None,
                exit_code=None,
                preempt_requested=False,
            )
        )
        if done.rowcount != 1:
            return None
        return job_from_row(conn.execute(select(jobs_table).where(c.id == job.id)).one())

    def heartbeat(self, job: Job, *, lease_s: float = 30.0, run_ids: Sequence[str] = ()) -> Signal:
        """Renew ``job``'s lease (held by ``job.lease_token``) and note the runs its attempt has
        made. The answer says whether the lease is still held and whether cancellation or
        preemption was asked for."""
        c = jobs_table.c
        with self._write() as conn:
            row = conn.execute(
                select(c.status, c.lease_token, c.run_ids, c.cancel_requested, c.preempt_requested)
                .where(c.id == job.id)
                .with_for_update()
            ).first()
            if row is None or row.status != "running" or row.lease_token != job.lease_token:
                return Signal(held=False)
            values: dict[str, Any] = {"lease_expires_at": time.time() + lease_s}
            merged = merge_runs(loads(row.run_ids, []), run_ids)
            if merged != loads(row.run_ids, []):
                values["run_ids"] = json.dumps(merged)
            conn.execute(
                update(jobs_table)
                .where(c.id == job.id, c.lease_token == job.lease_token)
                .values(**values)
            )
            return Signal(
                held=True,
                cancel=bool(row.cancel_requested),
                preempt=bool(row.preempt_requested),
            )

    def take_over(self, job: Job, token: str, slot: Slot, *, lease_s: float = 30.0) -> Job | None:
        """Swap a claim's lease ``token`` for a new one held by whoever calls this (a Dask task
        running the job a scheduler claimed), in one conditional update, and record ``slot``.
        None when ``token`` no longer holds the job (a second run of the task, or the job was
        requeued, cancelled or finished meanwhile)."""
        c = jobs_table.c
        with self._write() as conn:
            done = conn.execute(
                update(jobs_table)
                .where(c.id == job.id, c.status == "running", c.lease_token == token)
                .values(
                    lease_token=secrets.token_hex(16),
                    lease_expires_at=time.time() + lease_s,
                    slot=slot.to_json(),
                )
            )
        return self.get(job.id) if done.rowcount == 1 else None

    def peek(self, job: Job) -> Signal:
        """What :meth:`heartbeat` would answer, read only (the lease is not renewed)."""
        c = jobs_table.c
        with self._read() as conn:
            row = conn.execute(
                select(c.status, c.lease_token, c.cancel_requested, c.preempt_requested).where(
                    c.id == job.id
                )
            ).first()
        if row is None or row.status != "running" or row.lease_token != job.lease_token:
            return Signal(held=False)
        return Signal(
            held=True, cancel=bool(row.cancel_requested), preempt=bool(row.preempt_requested)
        )

    def _backoff(self, attempts: int) -> float:
        return float(min(self.max_backoff_s, self.backoff_s * 2 ** max(attempts - 1, 0)))

    def _after(self, row: Any, outcome: Outcome, now: float) -> dict[str, Any]:
        """The job's next state after an attempt ended with ``outcome``."""
        code = outcome.exit_code
        if code == 0 and outcome.reason != "not_started":  # finished before any stop took hold
            return {"status": "succeeded", "error": None, "ended_at": now}
        if outcome.reason == "cancelled" or row.cancel_requested:
            return {"status": "cancelled", "error": "cancelled by request", "ended_at": now}
        if outcome.reason == "preempted" or code == EXIT_PREEMPTED:
            return {  # back in the queue at once; a preemption is not a failed attempt
                "status": "queued",
                "attempts": max(row.attempts - 1, 0),
                "preemptions": row.preemptions + 1,
                "not_before": now,
                "error": None,
            }
        error = outcome.error or f"exit status {code}"
        if outcome.reason == "not_started" or code in NO_RETRY_EXIT_CODES:
            return {"status": "failed", "error": error, "ended_at": now}
        if row.attempts < row.max_attempts:
            wait = self._backoff(row.attempts)
            return {
                "status": "queued",
                "not_before": now + wait,
                "error": f"attempt {row.attempts} of {row.max_attempts} crashed ({error}); "
                f"retried after {wait:g} s from its last checkpoint",
            }
        return {
            "status": "failed",
            "ended_at": now,
            "error": f"{error}; gave up after {row.attempts} attempts (--max-attempts)",
        }

    def finish(self, job: Job, outcome: Outcome) -> Job | None:
        """Record how ``job``'s attempt ended and move it on: succeeded, failed, cancelled, or
        back to the queue (preempted; a crash with attempts left, after its backoff). Returns
        the job as it now stands, or None when the lease was lost meanwhile (nothing is
        written: another attempt owns the job now)."""
        c = jobs_table.c
        now = time.time()
        with self._write() as conn:
            row = conn.execute(select(jobs_table).where(c.id == job.id).with_for_update()).first()
            if row is None or row.status != "running" or row.lease_token != job.lease_token:
                return None
            values = {
                "lease_owner": None,
                "lease_token": None,
                "lease_expires_at": None,
                "slot": None,
                "exit_code": outcome.exit_code,
                "preempt_requested": False,
                "run_ids": json.dumps(merge_runs(loads(row.run_ids, []), outcome.run_ids)),
                **self._after(row, outcome, now),
            }
            if values["status"] != "cancelled":
                values["cancel_requested"] = False
            conn.execute(update(jobs_table).where(c.id == job.id).values(**values))
            final = job_from_row(conn.execute(select(jobs_table).where(c.id == job.id)).one())
        log.info(
            "job %s: attempt %d ended (%s) -> %s",
            job.id,
            job.attempts,
            outcome.reason,
            final.status,
        )
        return final

    def requeue_expired(self, *, grace_s: float = 0.0) -> list[str]:
        """Put running jobs whose lease expired (their executor died) back in the queue; the
        next attempt resumes the run from its last checkpoint. A job that has used all its
        attempts fails instead. Returns the ids of the jobs moved."""
        c = jobs_table.c
        now = time.time()
        moved = []
        with self._write() as conn:
            query = select(jobs_table).where(
                c.status == "running", c.lease_expires_at < now - grace_s
            )
            if self._pg:
                query = query.with_for_update(skip_locked=True)
            for row in conn.execute(query).all():
                lost = f"attempt {row.attempts} lost its executor ({row.lease_owner} stopped renewing its lease)"
                values: dict[str, Any] = {
                    "lease_owner": None,
                    "lease_token": None,
                    "lease_expires_at": None,
                    "slot": None,
                    "preempt_requested": False,
                }
                if row.cancel_requested:
                    values |= {"status": "cancelled", "ended_at": now, "error": lost}
                elif row.attempts >= row.max_attempts:
                    values |= {
                        "status": "failed",
                        "ended_at": now,
                        "error": f"{lost}; gave up after {row.attempts} attempts",
                    }
                else:
                    values |= {"status": "queued", "not_before": now, "error": lost}
                conn.execute(
                    update(jobs_table)
                    .where(c.id == row.id, c.lease_token == row.lease_token)
                    .values(**values)
                )
                moved.append(row.id)
        for job_id in moved:
            log.warning("job %s: its lease expired; requeued", job_id)
        return moved

    # -- user actions ---------------------------------------------------------------------------
    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once, or ask its executor to stop a running one (SIGTERM, then
        SIGKILL after a grace period). A finished job cannot be cancelled: DanluError."""
        job = self.get(job_id)
        c = jobs_table.c
        with self._write() as conn:
            row = conn.execute(select(jobs_table).where(c.id == job.id).with_for_update()).one()
            if row.status in FINAL_STATUSES:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.ended_at or 0))
                raise DanluError(
                    f"Job {job_id} already {row.status} at {when}: there is nothing to cancel. "
                    f"See it with `danlu jobs show {job_id}`"
                    + (
                        f"; run it again with `danlu jobs retry {job_id}`."
                        if row.status != "succeeded"
                        else "."
                    )
                )
            if row.status == "queued":
                values: dict[str, Any] = {
                    "status": "cancelled",
                    "ended_at": time.time(),
                    "error": "cancelled by request before it ran",
                    "cancel_requested": True,
                }
            else:
                values = {"cancel_requested": True}
            conn.execute(update(jobs_table).where(c.id == job.id).values(**values))
        return self.get(job_id)

    def retry(self, job_id: str) -> Job:
        """Queue a failed or cancelled job again, with its attempts reset; it resumes its last
        run from its checkpoint. Other jobs: DanluError saying why."""
        job = self.get(job_id)
        c = jobs_table.c
        with self._write() as conn:
            row = conn.execute(select(jobs_table).where(c.id == job.id).with_for_update()).one()
            if row.status not in ("failed", "cancelled"):
                hint = (
                    "submit the recipe again to run it once more"
                    if row.status == "succeeded"
                    else f"cancel it first (`danlu jobs cancel {job_id}`) to start it over"
                )
                raise DanluError(
                    f"Job {job_id} is {row.status}: only a failed or cancelled job can be "
                    f"retried; {hint}."
                )
            conn.execute(
                update(jobs_table)
                .where(c.id == job.id)
                .values(
                    status="queued",
                    attempts=0,
                    not_before=time.time(),
                    error=None,
                    exit_code=None,
                    ended_at=None,
                    cancel_requested=False,
                    preempt_requested=False,
                )
            )
        return self.get(job_id)

    def set_quota(self, project: str, max_running: int | None) -> None:
        """At most ``max_running`` jobs of ``project`` run at once (None: no limit)."""
        if not _PROJECT.match(project):
            raise ConfigError(f"The project name {project!r} is not valid.")
        if max_running is not None and max_running < 0:
            raise ConfigError(f"A quota is 0 or more running jobs; got {max_running}.")
        with self._write() as conn:
            conn.execute(quotas_table.delete().where(quotas_table.c.project == project))
            if max_running is not None:
                conn.execute(
                    insert(quotas_table).values(
                        project=project, max_running=max_running, updated_at=time.time()
                    )
                )

    def quotas(self) -> dict[str, int]:
        with self._read() as conn:
            rows = conn.execute(select(quotas_table.c.project, quotas_table.c.max_running)).all()
        return {p: int(n) for p, n in rows}

    # -- preemption -----------------------------------------------------------------------------
    def preempt_for(self, agent_id: str, placer: Placer, *, min_wait_s: float = 0.0) -> list[str]:
        """Ask the lowest-priority preemptible jobs running on ``agent_id`` to stop when the
        first waiting job that could run there has no room now and stopping them makes room.
        Only jobs waiting for ``min_wait_s`` seconds count (another executor with room may
        claim a new one first). Returns the ids of the jobs asked (none while an earlier request
        is still pending)."""
        c = jobs_table.c
        now = time.time()
        with self._write() as conn:
            running = [
                job_from_row(r)
                for r in conn.execute(
                    select(jobs_table).where(c.status == "running", c.agent_id == agent_id)
                ).all()
            ]
            if any(j.preempt_requested for j in running):
                return []
            for waiting in self._queued_head(conn, now):
                if max(waiting.created_at, waiting.not_before) > now - min_wait_s:
                    continue
                if not placer.fits(waiting) or self._quota_full(conn, waiting.project):
                    continue
                if placer.can_place(waiting):
                    return []  # it will be claimed as it is
                victims = sorted(
                    (
                        j
                        for j in running
                        if j.preemptible and j.priority < waiting.priority and j.slot is not None
                    ),
                    key=lambda j: (j.priority, -(j.started_at or 0.0)),
                )
                chosen: list[Job] = []
                for victim in victims:
                    chosen.append(victim)
                    if placer.can_place(waiting, [j.slot for j in chosen if j.slot]):
                        conn.execute(
                            update(jobs_table)
                            .where(c.id.in_([j.id for j in chosen]))
                            .values(preempt_requested=True)
                        )
                        log.info(
                            "preempting %s for job %s (priority %d)",
                            ", ".join(j.id for j in chosen),
                            waiting.id,
                            waiting.priority,
                        )
                        return [j.id for j in chosen]
                return []  # the head of the queue waits; nothing to preempt for it
        return []

    def request_preemption(self, job_id: str) -> Job:
        """Ask a running job's executor to preempt it (as the scheduler does)."""
        c = jobs_table.c
        with self._write() as conn:
            conn.execute(
                update(jobs_table)
                .where(c.id == job_id, c.status == "running")
                .values(preempt_requested=True)
            )
        return self.get(job_id)

    # -- executors ------------------------------------------------------------------------------
    def register_agent(
        self,
        *,
        name: str,
        kind: str = "local",
        cpus: int,
        gpus: Sequence[int] = (),
        memory_gb: float,
        slots: int,
        timeout_s: float,
        host: str | None = None,
    ) -> AgentInfo:
        """Record a running executor (its largest slot is what ``submit`` checks against)."""
        agent_id = secrets.token_hex(8)
        now = time.time()
        with self._write() as conn:
            conn.execute(
                insert(agents_table).values(
                    id=agent_id,
                    host=(host or host_name())[:255],
                    name=name[:200],
                    kind=kind,
                    cpus=cpus,
                    gpus=json.dumps(list(gpus)),
                    memory_gb=float(memory_gb),
                    slots=slots,
                    timeout_s=float(timeout_s),
                    started_at=now,
                    heartbeat_at=now,
                )
            )
        return self.agent(agent_id)

    def agent(self, agent_id: str) -> AgentInfo:
        with self._read() as conn:
            row = conn.execute(select(agents_table).where(agents_table.c.id == agent_id)).first()
        if row is None:
            raise NotFoundError(f"No agent with id '{agent_id}'.")
        return agent_from_row(row)

    def agents(self, *, live: bool = False) -> list[AgentInfo]:
        """Registered executors, newest first (only the live ones with ``live``)."""
        with self._read() as conn:
            rows = conn.execute(
                select(agents_table).order_by(agents_table.c.started_at.desc())
            ).all()
        found = [agent_from_row(r) for r in rows]
        now = time.time()
        return [a for a in found if a.live(now)] if live else found

    def agent_heartbeat(self, agent_id: str) -> None:
        with self._write() as conn:
            conn.execute(
                update(agents_table)
                .where(agents_table.c.id == agent_id)
                .values(heartbeat_at=time.time())
            )

    def deregister_agent(self, agent_id: str) -> None:
        with self._write() as conn:
            conn.execute(
                update(agents_table)
                .where(agents_table.c.id == agent_id)
                .values(stopped_at=time.time())
            )

    def has_work_for(self, agent_id: str, placer: Placer) -> bool:
        """Whether a job is or may become waiting that ``placer`` could run: a queued one (in
        its backoff too) that fits it and whose project's quota is not 0, or one running
        elsewhere (its executor may die and its lease expire). ``danlu agent --exit-when-idle``
        stops when there is none."""
        c = jobs_table.c
        with self._read() as conn:
            queued = [
                job_from_row(r)
                for r in conn.execute(select(jobs_table).where(c.status == "queued")).all()
            ]
            elsewhere = conn.execute(
                select(func.count()).where(c.status == "running", c.lease_owner != agent_id)
            ).scalar()
        paused = {project for project, limit in self.quotas().items() if limit == 0}
        return bool(elsewhere) or any(placer.fits(j) and j.project not in paused for j in queued)
