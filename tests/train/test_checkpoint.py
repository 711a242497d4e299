from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from danlu.errors import StoreError
from danlu.train import load_checkpoint, save_checkpoint
from danlu.train._checkpoint import CheckpointWriter
from tests.store._writers import blocked_writer, kill


def test_round_trip_of_an_arbitrary_state_tree(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), betas=(0.8, 0.9))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "numbers": [1, 2.5, math.inf, None, True, "x"],
        "tuple": (1, (2, 3)),
        "int_keys": {0: "a", 7: torch.ones(2)},
        "numpy": np.random.get_state(),
    }
    path = save_checkpoint(tmp_path / "c.safetensors", state)
    back = load_checkpoint(path)
    assert torch.equal(back["model"]["weight"], model.weight)
    assert back["tuple"] == (1, (2, 3))
    assert back["numbers"][2] == math.inf
    assert list(back["int_keys"]) == [0, 7]
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.9)
    restored = torch.optim.AdamW(model.parameters())
    restored.load_state_dict(back["optimizer"])
    assert torch.equal(
        restored.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )
    assert back["numpy"][0] == "MT19937"
    assert np.array_equal(back["numpy"][1], np.random.get_state()[1])


def test_checkpoint_file_is_plain_safetensors(tmp_path):
    from safetensors import safe_open

    path = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.arange(3.0)})
    with safe_open(str(path), "pt") as f:
        assert "danlu_state" in f.metadata()
        assert torch.equal(f.get_tensor("s.w"), torch.arange(3.0))


def test_overwrite_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"v": 1})
    save_checkpoint(path, {"v": 2})
    assert load_checkpoint(path)["v"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def test_corrupt_or_pickled_files_are_refused(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04\x95 pickle-ish bytes")
    with pytest.raises(StoreError, match="not a readable danlu checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(StoreError, match="No checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_unsupported_values_fail_loudly(tmp_path):
    with pytest.raises(TypeError, match="cannot checkpoint"):
        save_checkpoint(tmp_path / "c.safetensors", {"f": object()})
    assert not (tmp_path / "c.safetensors").exists()


def test_start_and_resume_remove_temp_files_of_killed_writers(tmp_path):
    """Issue 13: 100 SIGKILLs during checkpoint writes left 78 temp files (789 MB)."""
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, {"epoch": 1})
    code = f"""
        import torch
        from danlu.train import save_checkpoint
        save_checkpoint({str(path)!r}, {{"epoch": 2, "w": torch.zeros(10_000)}})
    """
    for _ in range(2):
        kill(blocked_writer(code))

    def temps():
        return sorted(p.name for p in tmp_path.glob("*.tmp"))

    assert len(temps()) == 2
    live = blocked_writer(code)
    try:
        [live_temp] = [t for t in temps() if f".{live.pid}@" in t]
        assert load_checkpoint(path)["epoch"] == 1  # resume: the killed writers' files go
        assert temps() == [live_temp]  # a writer still writing keeps its own
    finally:
        kill(live)
    writer = CheckpointWriter()  # a run starting to write checkpoints in the folder
    writer.save(path, {"epoch": 3})
    writer.close()
    assert temps() == []
    assert load_checkpoint(path)["epoch"] == 3
