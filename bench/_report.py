"""Write a benchmark's results as JSON plus a Markdown table under bench/results/."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    import os

    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def write(
    name: str, payload: dict[str, Any], header: list[str], rows: list[list[Any]], notes: str = ""
) -> Path:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    md = "\n".join(lines) + ("\n\n" + notes if notes else "") + "\n"
    path = RESULTS / f"{name}.md"
    path.write_text(md)
    return path
