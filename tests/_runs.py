"""Helpers for tests that drive a real ``danlu`` process and watch its run in the store."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def wait_for_epochs(
    home: Path, proc: subprocess.Popen[str] | subprocess.Popen[bytes], epochs: int
) -> str | None:
    """The id of the first run in ``home`` once it has logged ``epochs`` epochs (None when the
    process ends first, or after two minutes)."""
    from danlu.store import SqlStore

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (home / "danlu.db").exists():
            store = SqlStore(home=home)
            try:
                found = store.search_runs()
                if found and len(store.metric_history(found[0].id, "train_loss")) >= epochs:
                    return found[0].id
            finally:
                store.close()
        time.sleep(0.05)
    return None
