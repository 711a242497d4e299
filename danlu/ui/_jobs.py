"""The jobs pages: the queue of ``danlu submit`` (running jobs with their slots, queued ones in
the order they will be claimed, finished ones), the executors, and one job with its log split
by attempt; Cancel and Retry need a key from a page of this dashboard whose user may (the
editor role for one's own job, admin for anybody's, on the job's project: docs/access.md).

Everything goes through :class:`danlu.jobs.JobQueue`, the same rules as ``danlu jobs``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse

from danlu.errors import DanluError, NotFoundError
from danlu.ui._app import check_access, render, ui_principal

if TYPE_CHECKING:
    from fastapi.responses import Response

    from danlu.jobs import Job, JobQueue

__all__ = ["attempts", "router"]

router = APIRouter()

FINISHED_SHOWN = 50
FINISHED = ("succeeded", "failed", "cancelled")
QUEUED_SHOWN = 500
#: the most of a job's log a page shows (its end); the whole file stays on disk
LOG_LIMIT = 1_000_000
_ATTEMPT = re.compile(r"^── \S+ \S+ attempt (\d+) on agent ")


def _queue(request: Request) -> JobQueue:
    from danlu.jobs import JobQueue
    from danlu.store import SqlStore

    store = request.app.state.store
    if not isinstance(store, SqlStore):
        raise HTTPException(404, "This store has no job queue.")
    return JobQueue(store)


@router.get("/jobs")
def jobs_page(
    request: Request,
    project: str = Query("", max_length=100),
    status: str = Query("", max_length=20),
) -> Response:
    """The queue; ``project`` and ``status`` (both optional) narrow every table to matching jobs."""
    from danlu.jobs import JOB_STATUSES

    queue = _queue(request)
    project = project.strip()
    if status and status not in JOB_STATUSES:
        return render(
            request,
            "not_found.html",
            status=400,
            message=f"Unknown job status {status!r} in the filter; use one of: "
            f"{', '.join(JOB_STATUSES)}.",
        )

    def listed(wanted: str, limit: int) -> list[Job]:
        if status and status != wanted:
            return []
        return queue.list_jobs(status=wanted, project=project or None, limit=limit)

    running = listed("running", QUEUED_SHOWN)
    queued = sorted(listed("queued", QUEUED_SHOWN), key=lambda j: (-j.priority, j.created_at, j.id))
    finished = sorted(
        [job for ended in FINISHED for job in listed(ended, FINISHED_SHOWN)],
        key=lambda j: -(j.ended_at or j.created_at),
    )[:FINISHED_SHOWN]
    agents = {a.id: a for a in queue.agents()}
    return render(
        request,
        "jobs.html",
        counts=queue.counts(),
        running=running,
        queued=queued,
        finished=finished,
        agents=agents,
        live=queue.agents(live=True),
        project_filter=project,
        status_filter=status,
        statuses=JOB_STATUSES,
    )


def _read_log(queue: JobQueue, job_id: str, offset: int = 0) -> tuple[str, int, bool]:
    """(text from ``offset``, the file's size, whether the start was cut to LOG_LIMIT)."""
    path = queue.log_path(job_id)
    if not path.is_file():
        return "", 0, False
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        start = max(offset, size - LOG_LIMIT, 0)
        handle.seek(start)
        data = handle.read(size - start)
    return data.decode("utf-8", errors="replace"), size, start > offset


def attempts(text: str) -> list[dict[str, Any]]:
    """A job's log split by attempt: each ``── TIME attempt N on agent ...`` header starts one
    (text before the first header, if any, is attempt None).

    Example:
        >>> [a["attempt"] for a in attempts("── 2026-01-01 10:00:00 attempt 1 on agent a (slot)\\nx\\n")]
        [1]
    """
    found: list[dict[str, Any]] = []
    for line in text.splitlines(keepends=True):
        match = _ATTEMPT.match(line)
        if match or not found:
            found.append({"attempt": int(match.group(1)) if match else None, "lines": []})
        found[-1]["lines"].append(line)
    return [{"attempt": a["attempt"], "text": "".join(a["lines"])} for a in found]


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str) -> Response:
    try:
        queue = _queue(request)
        job = queue.get(job_id)
    except NotFoundError as exc:
        return render(request, "not_found.html", status=404, message=str(exc))
    except HTTPException as exc:
        return render(request, "not_found.html", status=exc.status_code, message=str(exc.detail))
    text, size, cut = _read_log(queue, job.id)
    agent = None
    if job.agent_id:
        try:
            agent = queue.agent(job.agent_id)
        except NotFoundError:
            agent = None
    return render(
        request,
        "job.html",
        job=job,
        agent=agent,
        attempts=attempts(text),
        log_size=size,
        log_cut=cut,
        error=None,
    )


@router.get("/api/jobs/{job_id}/log")
def job_log(request: Request, job_id: str, offset: int = Query(0, ge=0)) -> Response:
    """What the job's log gained since ``offset``, with the job's status (the page polls it)."""
    queue = _queue(request)
    try:
        job = queue.get(job_id)
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    text, size, cut = _read_log(queue, job.id, offset)
    return JSONResponse(
        {
            "status": job.status,
            "attempts": job.attempts,
            "finished": job.finished,
            "text": text,
            "offset": size,
            "cut": cut,
        }
    )


def _act(request: Request, job_id: str, key: str, action: str) -> Response:
    who = ui_principal(request, key or None, subject="*jobs*")
    queue = _queue(request)
    try:
        found = queue.get(job_id)
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    need = "jobs.own" if found.submitted_by == who.name else "jobs.any"
    check_access(request, who, need, found.project, subject="*jobs*", job=found.id)
    try:
        job = getattr(queue, action)(job_id)
        queue.store.record_action(who, f"{action}_job", "*jobs*", job=job.id, project=job.project)
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    except DanluError as exc:  # e.g. cancelling a finished job: say why on its page
        try:
            current = queue.get(job_id)
        except NotFoundError:
            raise HTTPException(404, str(exc)) from None
        text, size, cut = _read_log(queue, current.id)
        return render(
            request,
            "job.html",
            status=409,
            job=current,
            agent=None,
            attempts=attempts(text),
            log_size=size,
            log_cut=cut,
            error=str(exc),
        )
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


@router.post("/jobs/{job_id}/cancel")
def cancel_job(request: Request, job_id: str, key: str = Form("", max_length=500)) -> Response:
    """Cancel a queued job, or ask the executor of a running one to stop it."""
    return _act(request, job_id, key, "cancel")


@router.post("/jobs/{job_id}/retry")
def retry_job(request: Request, job_id: str, key: str = Form("", max_length=500)) -> Response:
    """Queue a failed or cancelled job again."""
    return _act(request, job_id, key, "retry")
