"""Shared fixtures. Torch runs with one thread per process: two processes each using both cores
of a small CI machine slow each other down many times over."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test writes its runs under its own temporary DANLU_HOME."""
    monkeypatch.setenv("DANLU_HOME", str(tmp_path / "home"))
    yield


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    torch.set_num_threads(1)
    yield
