"""The job queue: recipes queued in the store and run on CPU/GPU slots by executors.

``JobQueue`` holds the rules (order, leases, quotas, retries, preemption); ``run_job`` runs one
attempt as a ``danlu run`` subprocess pinned to its slot, for every executor; ``Agent`` is the
embedded executor behind ``danlu agent``. See docs/scaling.md.
"""

from __future__ import annotations

from danlu.jobs._agent import Agent, AgentReport
from danlu.jobs._dask import DaskExecutor
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
from danlu.jobs._execute import JOB_ID_ENV, child_command, run_job
from danlu.jobs._machine import MachineResources, machine_resources
from danlu.jobs._queue import JobQueue, Placer
from danlu.jobs._slots import SlotPool

__all__ = [
    "EXIT_PREEMPTED",
    "FINAL_STATUSES",
    "JOB_ID_ENV",
    "JOB_KINDS",
    "JOB_STATUSES",
    "NO_RETRY_EXIT_CODES",
    "Agent",
    "AgentInfo",
    "AgentReport",
    "DaskExecutor",
    "Job",
    "JobQueue",
    "MachineResources",
    "Outcome",
    "Placer",
    "Resources",
    "Signal",
    "Slot",
    "SlotPool",
    "child_command",
    "machine_resources",
    "run_job",
]
