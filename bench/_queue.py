"""What the job-queue benchmarks share: the environment of a process working on a store."""

from __future__ import annotations

import os
from pathlib import Path


def env_for(home: Path) -> dict[str, str]:
    """This environment, pointed at the store under ``home`` (no inherited database URL or job
    id), one thread per process."""
    env = dict(os.environ)
    for key in ("DANLU_DB_URL", "DANLU_JOB_ID"):
        env.pop(key, None)
    env.update({"DANLU_HOME": str(home), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return env
