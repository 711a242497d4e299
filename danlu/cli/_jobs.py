"""``danlu submit``, ``danlu jobs ...`` and ``danlu agent``: the job queue from the command line.

Thin: parse, call :mod:`danlu.jobs`, render with Rich. ``submit`` validates the recipe as
``danlu run`` would (a broken recipe never queues) and estimates its memory first.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Column, Table
from rich.text import Text

from danlu.cli._console import cell, err, out, setup_logging, state
from danlu.cli._options import JsonOption, QuietOption, SetOption
from danlu.errors import ConfigError

if TYPE_CHECKING:
    from danlu.jobs import Agent, DaskExecutor, Job, JobQueue

__all__ = ["agent_command", "jobs_app", "submit_command"]

jobs_app = typer.Typer(
    help="Queued jobs: list, inspect, follow the logs of, cancel and retry them.",
    no_args_is_help=True,
)

JobArg = Annotated[str, typer.Argument(help="The job's id (see danlu jobs ls).", metavar="JOB")]


def _queue(backoff_s: float | None = None) -> JobQueue:
    from danlu.jobs import JobQueue
    from danlu.store import SqlStore

    store = SqlStore()
    return JobQueue(store) if backoff_s is None else JobQueue(store, backoff_s=backoff_s)


def _ago(when: float | None) -> str:
    if when is None:
        return "-"
    seconds = max(time.time() - when, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _job_dict(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "name": job.name,
        "recipe_path": job.recipe_path,
        "overrides": list(job.overrides),
        "project": job.project,
        "priority": job.priority,
        "cpus": job.resources.cpus,
        "gpus": job.resources.gpus,
        "memory_gb": job.resources.memory_gb,
        "preemptible": job.preemptible,
        "status": job.status,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "preemptions": job.preemptions,
        "agent_id": job.agent_id,
        "slot": None
        if job.slot is None
        else {"cpus": list(job.slot.cpus), "gpus": list(job.slot.gpus)},
        "run_ids": list(job.run_ids),
        "exit_code": job.exit_code,
        "error": job.error,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
        "cancel_requested": job.cancel_requested,
        "estimate": job.estimate,
        "submitted_by": job.submitted_by,
    }


def _needs(job: Job) -> str:
    need = job.resources
    text = f"{need.cpus} CPU" + (f" {need.gpus} GPU" if need.gpus else "")
    return text + (f" {need.memory_gb:g} GB" if need.memory_gb else "")


_STATUS_STYLE = {
    "queued": "cyan",
    "running": "yellow",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "dim",
}


# -- danlu submit ---------------------------------------------------------------------------------
def submit_command(
    recipe: Annotated[Path, typer.Argument(help="Path to a YAML recipe.", metavar="RECIPE")],
    set_: SetOption = None,
    tune: Annotated[
        bool, typer.Option("--tune", help="Queue `danlu tune RECIPE` (its tune: block).")
    ] = False,
    priority: Annotated[
        int, typer.Option("--priority", "-p", help="Higher runs first (FIFO within one).")
    ] = 0,
    cpus: Annotated[
        int | None,
        typer.Option(
            "--cpus",
            min=1,
            help="CPUs (threads) the job needs (default 1; train.distributed: nproc_per_node).",
            show_default=False,
        ),
    ] = None,
    gpus: Annotated[int, typer.Option("--gpus", min=0, help="GPUs the job needs.")] = 0,
    memory: Annotated[
        float | None,
        typer.Option(
            "--memory",
            min=0,
            help="Memory in GB the job needs (default: the pre-flight estimate).",
            metavar="GB",
            show_default=False,
        ),
    ] = None,
    project: Annotated[
        str, typer.Option("--project", help="The project the job counts against (quotas).")
    ] = "default",
    preemptible: Annotated[
        bool,
        typer.Option(
            "--preemptible",
            help="May be stopped (checkpointed, requeued, resumed) for a higher-priority job.",
        ),
    ] = False,
    max_attempts: Annotated[
        int,
        typer.Option("--max-attempts", min=1, help="Attempts before a crashing job fails."),
    ] = 3,
    as_json: JsonOption = False,
) -> None:
    """Queue a recipe to run on an agent's slots (`danlu agent`), validated first."""
    from danlu.cli._access import allow

    queue = _queue()  # first: who may submit to the project, before any work
    who = allow(queue.store, "train", project, subject="*jobs*", recipe=str(recipe))
    from danlu.config import load_recipe
    from danlu.jobs import Resources
    from danlu.train import check_recipe

    loaded = load_recipe(recipe, set_ or ())  # errors name the key and the YAML line
    check_recipe(loaded)
    if tune:
        if loaded.tune is None:
            raise ConfigError(
                f"The recipe {recipe} has no tune: block, so `danlu submit --tune` has nothing "
                "to search. Add a tune: block (see examples/digits_tune.yaml) or submit it "
                "without --tune."
            )
        from danlu.config import raise_issues
        from danlu.tune import check_tune

        raise_issues(check_tune(loaded), loaded._source)
    distributed = loaded.train.distributed
    need_cpus = cpus or (distributed.nproc_per_node if distributed is not None else 1)
    from danlu.train import estimate_memory

    guess = estimate_memory(loaded)  # prepares the data: a data error is refused here too
    estimate = guess.to_dict() | {"summary": guess.describe()}
    # the slot's memory is the host's: all of it on the CPU, the process (and data) with a GPU
    host_bytes = guess.process + (guess.total if guess.device == "cpu" else guess.data)
    need_memory = memory if memory is not None else round(host_bytes / 1e9, 3)
    job = queue.submit(
        recipe=recipe.read_text(encoding="utf-8"),
        recipe_path=str(recipe),
        name=loaded.name,
        kind="tune" if tune else "run",
        overrides=list(set_ or ()),
        project=project,
        priority=priority,
        resources=Resources(need_cpus, gpus, need_memory),
        preemptible=preemptible,
        max_attempts=max_attempts,
        estimate=estimate,
        workdir=str(Path.cwd()),
        submitted_by=who.name,
    )
    queue.store.record_action(who, "submit_job", "*jobs*", job=job.id, project=project)
    if as_json:
        out.print_json(json.dumps(_job_dict(job)))
        return
    out.print(
        Text.assemble(
            ("queued", "cyan"),
            f" job {job.id} ({job.name}, {job.kind}, priority {job.priority}, "
            f"{job.resources.describe()}). Follow it: danlu jobs logs {job.id} -f",
        ),
        soft_wrap=True,
    )
    out.print(Text(f"memory estimate: {guess.describe()}", style="dim"), soft_wrap=True)


# -- danlu jobs ------------------------------------------------------------------------------------
@jobs_app.command("ls")
def list_command(
    status: Annotated[
        str | None, typer.Option("--status", help="Only jobs in this status.")
    ] = None,
    project: Annotated[str | None, typer.Option("--project", help="Only this project.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List jobs, newest first."""
    queue = _queue()
    jobs = queue.list_jobs(status=status, project=project, limit=limit)
    if as_json:
        out.print_json(json.dumps([_job_dict(j) for j in jobs]))
        return
    if not jobs:
        out.print("No jobs. Queue one with: danlu submit RECIPE")
        return
    table = Table(
        Column("id", no_wrap=True),
        "name",
        Column("status", no_wrap=True),
        Column("prio", justify="right"),
        "project",
        Column("tries", justify="right"),
        "needs",
        "runs",
        "age",
    )
    for job in jobs:
        status_text = Text(job.status, style=_STATUS_STYLE.get(job.status, ""))
        if job.preemptions:
            status_text.append(f" ({job.preemptions}× preempted)", style="dim")
        if job.cancel_requested and job.status == "running":
            status_text.append(" (cancelling)", style="dim")
        table.add_row(
            job.id,
            cell(job.name + (" [tune]" if job.kind == "tune" else "")),
            status_text,
            str(job.priority),
            cell(job.project),
            f"{job.attempts}/{job.max_attempts}",
            _needs(job),
            "\n".join(job.run_ids) or "-",
            _ago(job.created_at),
        )
    out.print(table)
    counts = queue.counts()
    out.print(" · ".join(f"{n} {s}" for s, n in sorted(counts.items())), highlight=False)


@jobs_app.command("show")
def show_command(job_id: JobArg, as_json: JsonOption = False) -> None:
    """One job: what it runs, what it needs, its attempts and runs, its error."""
    job = _queue().get(job_id)
    data = _job_dict(job)
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table("field", "value", show_header=False)
    for key, value in data.items():
        if value in (None, [], {}) and key not in ("status",):
            continue
        if key.endswith("_at") and isinstance(value, float):
            value = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
        table.add_row(key, cell(value if isinstance(value, str) else json.dumps(value)))
    out.print(table)
    if job.run_ids:
        out.print(Text(f"runs: danlu runs show {job.run_ids[-1]}"), soft_wrap=True)


@jobs_app.command("logs")
def logs_command(
    job_id: JobArg,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the job finishes.")
    ] = False,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=0, help="With -f: stop following after this many seconds."),
    ] = 86400.0,
) -> None:
    """Print a job's output (every attempt's); -f follows it while it runs."""
    import sys

    queue = _queue()
    job = queue.get(job_id)
    path = queue.log_path(job.id)
    offset = 0
    deadline = time.monotonic() + timeout
    while True:
        if path.is_file():
            with open(path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            if chunk:
                sys.stdout.write(chunk.decode("utf-8", errors="replace"))
                sys.stdout.flush()
                offset += len(chunk)
        if not follow or job.finished or time.monotonic() >= deadline:
            break
        time.sleep(0.3)
        job = queue.get(job.id)  # read the status after the log: the last lines are in
    if not follow and not path.is_file():
        err.print(f"Job {job.id} has no output yet ({job.status}).")


def _checked(job_id: str, action: str) -> Job:
    """Cancel or retry a job once the acting user may: their own job with the editor role on
    its project, anybody's with admin; audited either way."""
    from danlu.cli._access import acting

    queue = _queue()
    job = queue.get(job_id)
    who = acting(queue.store)
    need = "jobs.own" if job.submitted_by == who.name else "jobs.any"
    queue.store.check_access(who, need, job.project, subject="*jobs*", job=job.id)
    done: Job = getattr(queue, action)(job.id)
    queue.store.record_action(who, f"{action}_job", "*jobs*", job=job.id, project=job.project)
    return done


@jobs_app.command("cancel")
def cancel_command(job_id: JobArg) -> None:
    """Cancel a job: a queued one at once, a running one is stopped (SIGTERM, then SIGKILL)."""
    job = _checked(job_id, "cancel")
    if job.status == "cancelled":
        out.print(f"Job {job.id} cancelled.")
    else:
        out.print(f"Job {job.id} is running: its agent stops it now (it ends as cancelled).")


@jobs_app.command("retry")
def retry_command(job_id: JobArg) -> None:
    """Queue a failed or cancelled job again (it resumes its last run from its checkpoint)."""
    job = _checked(job_id, "retry")
    resume = f", resuming run {job.last_run}" if job.last_run else ""
    out.print(f"Job {job.id} queued again{resume}.")


@jobs_app.command("quota")
def quota_command(
    project: Annotated[
        str | None, typer.Argument(help="The project (none: list the quotas).", metavar="PROJECT")
    ] = None,
    max_running: Annotated[
        int | None,
        typer.Argument(help="Jobs of the project that may run at once.", metavar="N"),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the project's quota.")] = False,
) -> None:
    """Set (PROJECT N), clear (PROJECT --clear) or list the per-project quotas of running jobs."""
    queue = _queue()
    if project is not None:
        if max_running is None and not clear:
            raise ConfigError(
                "Give the number of jobs the project may run at once (danlu jobs quota "
                f"{project} 2) or --clear to remove its quota."
            )
        from danlu.cli._access import allow

        who = allow(queue.store, "jobs.any", project, subject="*jobs*")
        queue.set_quota(project, None if clear else max_running)
        queue.store.record_action(
            who, "set_quota", "*jobs*", project=project, max_running=None if clear else max_running
        )
    quotas = queue.quotas()
    if not quotas:
        out.print("No quotas: every project may use every free slot.")
        return
    table = Table("project", Column("running at most", justify="right"))
    for name, limit in sorted(quotas.items()):
        table.add_row(cell(name), str(limit))
    out.print(table)


@jobs_app.command("agents")
def agents_command(
    all_: Annotated[bool, typer.Option("--all", help="Also stopped and silent agents.")] = False,
) -> None:
    """The executors registered on this store (live ones; --all for every one)."""
    queue = _queue()
    now = time.time()
    agents = queue.agents(live=not all_)
    if not agents:
        out.print("No live agent. Start one with: danlu agent")
        return
    table = Table("id", "name", "host", "kind", "CPUs", "GPUs", "memory", "slots", "heartbeat")
    for a in agents:
        table.add_row(
            a.id,
            cell(a.name),
            cell(a.host),
            a.kind,
            str(a.cpus),
            ",".join(map(str, a.gpus)) or "-",
            f"{a.memory_gb:.1f} GB",
            str(a.slots),
            _ago(a.heartbeat_at) + ("" if a.live(now) else " (gone)"),
        )
    out.print(table)


# -- danlu agent -----------------------------------------------------------------------------------
def _parse_gpus(text: str | None, detected: tuple[int, ...]) -> tuple[int, ...]:
    if text is None:
        return detected
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        ids = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(
            f"--gpus takes device ids separated by commas (0,1) or 'none'; got {text!r}."
        ) from None
    unknown = [i for i in ids if i not in detected]
    if unknown:
        raise ConfigError(
            f"--gpus {text}: this machine has no GPU {', '.join(map(str, unknown))} (its GPUs: "
            f"{', '.join(map(str, detected)) or 'none'})."
        )
    return ids


def agent_command(
    cpus: Annotated[
        int | None,
        typer.Option("--cpus", min=1, help="CPUs to run jobs on (default: all it may use)."),
    ] = None,
    gpus: Annotated[
        str | None,
        typer.Option("--gpus", help="GPU ids to run jobs on, e.g. 0,1 (default: all; 'none')."),
    ] = None,
    memory: Annotated[
        float | None,
        typer.Option(
            "--memory", min=0, help="Memory in GB to hand out (default: all).", metavar="GB"
        ),
    ] = None,
    slots: Annotated[
        int | None,
        typer.Option("--slots", min=1, help="Jobs at once at most (default: one per CPU)."),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Shown in danlu jobs agents.")] = None,
    exit_when_idle: Annotated[
        bool,
        typer.Option("--exit-when-idle", help="Exit once no job is running or waiting for it."),
    ] = False,
    poll: Annotated[
        float, typer.Option("--poll", min=0.05, help="Seconds between looks at the queue.")
    ] = 1.0,
    lease: Annotated[
        float,
        typer.Option(
            "--lease", min=0.5, help="Seconds a job's lease lasts without renewal (requeue after)."
        ),
    ] = 30.0,
    retry_backoff: Annotated[
        float,
        typer.Option(
            "--retry-backoff", min=0, help="Seconds before a crashed job's first retry (doubles)."
        ),
    ] = 10.0,
    preempt_grace: Annotated[
        float,
        typer.Option(
            "--preempt-grace",
            min=0,
            help="Seconds a preempted job has to checkpoint before SIGKILL.",
        ),
    ] = 120.0,
    dask: Annotated[
        str | None,
        typer.Option(
            "--dask",
            help="Hand the jobs to the Dask cluster of this scheduler instead (tcp://HOST:8786): "
            "each job is a task asking for its CPUs and GPUs as worker resources.",
            metavar="ADDRESS",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Serve the queue (jobs by state, jobs running here) and the progress of the "
            "runs it executes for Prometheus at http://HOST:PORT/metrics (docs/monitoring.md).",
            metavar="PORT",
        ),
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option(
            "--metrics-host",
            help="Address the metrics endpoint listens on (no authentication: keep it local).",
        ),
    ] = "127.0.0.1",
    quiet: QuietOption = False,
) -> None:
    """Run queued jobs on this machine's CPU/GPU slots until stopped (SIGTERM or Ctrl-C
    preempts the running jobs: they checkpoint and go back to the queue). With --dask, hand
    them to a Dask cluster (stopping the executor leaves its running tasks alone)."""
    setup_logging(bool(state.get("verbose")), quiet)
    on_event = None if quiet else (lambda line: err.print(Text(line), soft_wrap=True))
    if dask is not None:
        local = {"--cpus": cpus, "--gpus": gpus, "--memory": memory, "--slots": slots}
        given = [flag for flag, value in local.items() if value is not None]
        given += ["--name"] if name is not None else []
        if given:
            raise ConfigError(
                f"{', '.join(given)} {'describes' if len(given) == 1 else 'describe'} this "
                "machine's agent; with --dask the Dask "
                'workers\' resources decide (dask worker ADDRESS --resources "CPU=8,GPU=1"). '
                "Drop them."
            )
        from danlu.jobs import DaskExecutor

        executor = DaskExecutor(
            _queue(retry_backoff),
            dask,
            poll_s=poll,
            lease_s=lease,
            exit_when_idle=exit_when_idle,
            preempt_grace_s=preempt_grace,
            on_event=on_event,
        )
        _serve_metrics(executor, metrics_port, metrics_host, on_event)
        _run_executor(executor, quiet)
        return
    from danlu.jobs import Agent, SlotPool, machine_resources

    here = machine_resources()
    if cpus is not None and cpus > here.cpus:
        raise ConfigError(
            f"--cpus {cpus}: this process may use {here.cpus} CPUs "
            f"({', '.join(map(str, here.cpu_ids))})."
        )
    pool = SlotPool(
        cpu_ids=here.cpu_ids[: cpus or here.cpus],
        gpu_ids=_parse_gpus(gpus, here.gpu_ids),
        memory_gb=memory if memory is not None else here.memory_gb,
        max_jobs=slots,
    )
    agent = Agent(
        _queue(retry_backoff),
        pool=pool,
        name=name,
        poll_s=poll,
        lease_s=lease,
        exit_when_idle=exit_when_idle,
        preempt_grace_s=preempt_grace,
        on_event=on_event,
    )
    _serve_metrics(agent, metrics_port, metrics_host, on_event)
    _run_executor(agent, quiet)


def _serve_metrics(agent: Agent | DaskExecutor, port: int | None, host: str, on_event: Any) -> None:
    """``--metrics-port``: the queue and this executor's runs for Prometheus (a daemon thread)."""
    if port is None:
        return
    from danlu.jobs._metrics import serve_agent_metrics

    bound = serve_agent_metrics(agent.queue, lambda: agent.report.agent_id, port, host)
    if on_event is not None:
        on_event(f"metrics for Prometheus at http://{host}:{bound}/metrics")


def _run_executor(agent: Agent | DaskExecutor, quiet: bool) -> None:
    """Run an executor until it stops (SIGTERM and Ctrl-C stop it), then sum up."""

    def _stop(signum: int, frame: object) -> None:
        agent.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    report = agent.run()
    if not quiet:
        ended: dict[str, int] = {}
        for _, outcome in report.attempts:
            key = outcome.status or "lease lost"
            ended[key] = ended.get(key, 0) + 1
        summary = ", ".join(f"{n} -> {k}" for k, n in sorted(ended.items())) or "none"
        err.print(f"attempts run: {len(report.attempts)} ({summary})", highlight=False)
