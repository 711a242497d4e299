"""Database rows of the job queue as frozen entities (and back)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from danlu.jobs._entities import AgentInfo, Job, Resources, Slot

__all__ = ["agent_from_row", "describe_agent", "job_from_row", "loads", "merge_runs"]


def loads(text: str | None, default: Any) -> Any:
    return json.loads(text) if text else default


def job_from_row(row: Any) -> Job:
    return Job(
        id=row.id,
        kind=row.kind,
        name=row.name,
        recipe=row.recipe,
        recipe_path=row.recipe_path,
        workdir=row.workdir,
        overrides=tuple(loads(row.overrides, [])),
        project=row.project,
        priority=row.priority,
        resources=Resources(row.cpus, row.gpus, row.memory_gb),
        preemptible=bool(row.preemptible),
        status=row.status,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        preemptions=row.preemptions,
        not_before=row.not_before,
        created_at=row.created_at,
        submitted_by=row.submitted_by,
        lease_owner=row.lease_owner,
        lease_token=row.lease_token,
        lease_expires_at=row.lease_expires_at,
        agent_id=row.agent_id,
        slot=Slot.from_json(row.slot),
        run_ids=tuple(loads(row.run_ids, [])),
        exit_code=row.exit_code,
        error=row.error,
        started_at=row.started_at,
        ended_at=row.ended_at,
        cancel_requested=bool(row.cancel_requested),
        preempt_requested=bool(row.preempt_requested),
        estimate=loads(row.estimate, None),
    )


def agent_from_row(row: Any) -> AgentInfo:
    return AgentInfo(
        id=row.id,
        host=row.host,
        name=row.name,
        kind=row.kind,
        cpus=row.cpus,
        gpus=tuple(loads(row.gpus, [])),
        memory_gb=row.memory_gb,
        slots=row.slots,
        timeout_s=row.timeout_s,
        started_at=row.started_at,
        heartbeat_at=row.heartbeat_at,
        stopped_at=row.stopped_at,
    )


def merge_runs(known: Sequence[str], new: Sequence[str]) -> list[str]:
    merged = list(known)
    merged += [r for r in new if r not in merged]
    return merged


def describe_agent(agent: AgentInfo) -> str:
    gpus = ",".join(map(str, agent.gpus)) or "none"
    return (
        f"{agent.kind} agent '{agent.name}' on {agent.host}: {agent.cpus} CPUs, GPUs {gpus}, "
        f"{agent.memory_gb:.1f} GB"
    )
