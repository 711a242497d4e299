"""train.distributed: real torchrun jobs of 2 ranks × 1 thread on tiny data (gloo on the CPU).

Each test's job is bounded: the ranks' collectives time out after train.distributed.timeout_s
and every test puts a pytest timeout-free bound on the job through that setting.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import danlu
from danlu.config import load_recipe
from danlu.errors import ConfigError, DataError
from danlu.store import SqlStore
from danlu.train import RankFailed
from danlu.train._torchrun import FAULT_ENV, torchrun_command

ROWS = 250  # 50 test, 40 val: 160 training rows, a multiple of 2 × 16 and of 32


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory):
    """A small 3-class table whose classes depend on the features (learnable in a few epochs)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 6))
    y = (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 0.8).astype(int)
    frame = pd.DataFrame({f"f{i}": x[:, i] for i in range(6)})
    frame["label"] = y
    path = tmp_path_factory.mktemp("dist") / "table.csv"
    frame.to_csv(path, index=False)
    return path


def recipe(path, *, ranks: int | None = 2, batch: int = 16, epochs: int = 2, **train) -> dict:
    """No dropout, no augmentation, no class weights: 2 ranks × b must equal 1 rank × 2b."""
    config = {
        "name": "dist",
        "data": {
            "source": str(path),
            "target": "label",
            "split": {"test": 0.2, "val": 0.16, "stratify": False, "seed": 0},
        },
        "task": "classification",
        "model": {"type": "mlp", "hidden": [32], "dropout": 0.0},
        "train": {
            "epochs": epochs,
            "batch_size": batch,
            "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.9},
            "seed": 0,
            **train,
        },
    }
    if ranks:
        config["train"]["distributed"] = {
            "nproc_per_node": ranks,
            "timeout_s": 60,
            **config["train"].get("distributed", {}),
        }
    return config


def weights(result) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def test_two_ranks_at_b_train_as_one_rank_at_2b(table, tmp_path):
    """Same rows per step (the shuffled index dealt out rank by rank), same parameters and the
    same all-reduced training loss; rank 0 alone writes the store."""
    one = danlu.run(recipe(table, ranks=None, batch=32), home=tmp_path / "one")
    two = danlu.run(recipe(table, ranks=2, batch=16), home=tmp_path / "two")
    assert len(two.history) == 2 and two.details is not None
    w1, w2 = weights(one), weights(two)
    assert w1.keys() == w2.keys()
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-5, atol=1e-6)
    for a, b in zip(one.history, two.history, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
    assert two.metrics["accuracy"] == pytest.approx(one.metrics["accuracy"])
    store = SqlStore(home=tmp_path / "two")
    runs = store.search_runs()
    assert [r.id for r in runs] == [two.run_id]  # one run: no other rank opened one
    assert runs[0].status == "finished"
    names = {a.name for a in store.list_artifacts(two.run_id)}
    assert {"model.safetensors", "summary.json", "checkpoint.safetensors"} <= names
    train = next(s for s in two.stages if s.name == "train")
    assert train.restored  # trained by the ranks, reloaded here
    metrics = store.get_run(two.run_id).metrics
    assert "summed over 2 ranks" in store.get_run(two.run_id).tags["energy_detail"]
    assert metrics["train_cpu_seconds"] > 0


def test_accumulated_batches_are_all_reduced_once_per_step(table, tmp_path):
    """2 ranks × 8 rows × 2 accumulated batches train as 1 rank × 16 × 2; the batches before a
    cycle's last run under DDP's no_sync (one all-reduce per optimizer step)."""
    one = danlu.run(recipe(table, ranks=None, batch=16, grad_accumulation=2), home=tmp_path / "1")
    two = danlu.run(recipe(table, ranks=2, batch=8, grad_accumulation=2), home=tmp_path / "2")
    w1, w2 = weights(one), weights(two)
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-5, atol=1e-6)


def test_gradient_sync_skips_the_all_reduce_inside_a_cycle(tmp_path):
    import torch.distributed as dist

    from danlu.config import DistributedConfig
    from danlu.train._distributed import DataParallel

    store = dist.FileStore(str(tmp_path / "rendezvous"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        strategy = DataParallel(DistributedConfig(nproc_per_node=1), torch.device("cpu"))
        net = strategy.wrap(torch.nn.Linear(3, 2))
        with strategy.gradient_sync(net, False):
            assert net.require_backward_grad_sync is False
            net(torch.ones(4, 3)).sum().backward()
        assert net.require_backward_grad_sync is True
        with strategy.gradient_sync(net, True):
            assert net.require_backward_grad_sync is True
    finally:
        dist.destroy_process_group()


def test_early_stopping_is_decided_once_for_all_ranks(table, tmp_path):
    config = recipe(table, epochs=30, early_stopping={"monitor": "val_loss", "patience": 1})
    config["train"]["optimizer"]["lr"] = 0.8  # overshoots soon: val_loss stops improving
    result = danlu.run(config, home=tmp_path)
    run = SqlStore(home=tmp_path).get_run(result.run_id)
    assert run.status == "finished"
    assert len(result.history) < 30  # stopped early, and no rank went on alone (it would hang)
    assert result.best_epoch == min(
        range(1, len(result.history) + 1), key=lambda e: result.history[e - 1]["val_loss"]
    )


@pytest.mark.parametrize("first, then", [(2, None), (None, 2)], ids=["2-to-1", "1-to-2"])
def test_resume_on_another_number_of_ranks(table, tmp_path, first, then):
    home = tmp_path / "home"
    started = danlu.run(recipe(table, ranks=first, batch=16, epochs=2), home=home)
    more = recipe(table, ranks=then, batch=16, epochs=3)
    resumed = danlu.run(more, home=home, resume=started.run_id)
    assert resumed.run_id == started.run_id
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for kept, first_session in zip(resumed.history[:2], started.history, strict=True):
        assert kept == pytest.approx(first_session)  # kept, not trained again
    assert np.isfinite(resumed.history[2]["train_loss"])
    assert SqlStore(home=home).get_run(started.run_id).status == "finished"


def test_a_killed_rank_restarts_the_job_from_its_checkpoint(table, tmp_path, monkeypatch, capsys):
    # rank 1 exits at its 7th batch (epoch 2 of 5 batches each), on its first attempt only
    monkeypatch.setenv(FAULT_ENV, "1:6")
    config = recipe(table, epochs=3, distributed={"max_restarts": 1})
    result = danlu.run(config, home=tmp_path)
    assert "restart 1: resuming the run" in capsys.readouterr().err
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert SqlStore(home=tmp_path).get_run(result.run_id).status == "finished"


def test_a_killed_rank_without_restarts_fails_the_job_with_its_error(table, tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "1:2")
    with pytest.raises(RankFailed, match=r"Rank 1 exited with code 3") as info:
        danlu.run(recipe(table, epochs=2), home=tmp_path)
    run_id = danlu.train.run_of(info.value)  # the CLI names the run to resume
    assert run_id is not None
    assert SqlStore(home=tmp_path).get_run(run_id).status == "failed"


def test_a_ranks_data_error_keeps_its_class(tmp_path):
    config = recipe(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="missing.csv"):
        danlu.run(config, home=tmp_path)


def test_fsdp_trains_and_exports(table, tmp_path):
    config = recipe(table, epochs=2, distributed={"strategy": "fsdp"})
    config["register"] = {"name": "dist-fsdp"}
    fsdp = danlu.run(config, home=tmp_path / "fsdp")
    ddp = danlu.run(recipe(table, epochs=2), home=tmp_path / "ddp")
    assert fsdp.registered is not None and fsdp.registered.version == 1
    w_fsdp, w_ddp = weights(fsdp), weights(ddp)
    for key in w_ddp:  # the same algorithm: sharding changes where state lives, not the maths
        torch.testing.assert_close(w_fsdp[key], w_ddp[key], rtol=1e-5, atol=1e-6)
    predicted = fsdp.predict(pd.read_csv(table).drop(columns="label").head(5))["prediction"]
    assert len(predicted) == 5


def test_streamed_data_trains_each_ranks_own_row_groups(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 4))
    frame = pd.DataFrame({f"x{i}": x[:, i] for i in range(4)})
    frame["y"] = (x[:, 0] - x[:, 1] > 0).astype("int64")
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=500)
    config = {
        "name": "dist-stream",
        "data": {
            "source": str(path),
            "target": "y",
            "stream": {"chunk_rows": 500, "shuffle_buffer": 1000, "sample_rows": 1000},
        },
        "task": "classification",
        "model": {"type": "mlp", "hidden": [8]},
        "train": {
            "epochs": 2,
            "batch_size": 32,
            "optimizer": {"name": "adam", "lr": 0.02},
            "distributed": {"timeout_s": 60},
        },
    }
    result = danlu.run(config, home=tmp_path / "home")
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]
    assert result.metrics["accuracy"] > 0.8


def test_bad_distributed_settings_never_launch(table, tmp_path):
    with pytest.raises(ConfigError, match="rdzv_endpoint is required"):
        load_recipe(recipe(table), ["train.distributed.nnodes=2"])
    with pytest.raises(ConfigError, match="node_rank must be below nnodes"):
        load_recipe(recipe(table), ["train.distributed.node_rank=1"])
    with pytest.raises(ConfigError, match="host:port"):
        load_recipe(recipe(table), ["train.distributed.rdzv_endpoint=nowhere"])
    with pytest.raises(ConfigError, match="'ddp' or 'fsdp'"):
        load_recipe(recipe(table), ["train.distributed.strategy=zero"])
    gbdt = recipe(table)
    gbdt["model"] = {"type": "gbdt"}
    with pytest.raises(ConfigError, match="trains in one process"):
        danlu.run(gbdt, home=tmp_path)
    nccl = recipe(table, device="cpu", distributed={"backend": "nccl"})
    with pytest.raises(ConfigError, match="nccl runs on CUDA devices only"):
        danlu.run(nccl, home=tmp_path)
    with pytest.raises(ConfigError, match="DataFrame"):
        danlu.run(recipe(table), data=pd.read_csv(table), home=tmp_path)
    assert not (tmp_path / "danlu.db").exists() or not SqlStore(home=tmp_path).search_runs()


def test_the_torchrun_command():
    one = load_recipe(recipe("x.csv"), ["train.distributed.max_restarts=2"]).train.distributed
    cmd = torchrun_command(one, port=29411)
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert cmd[cmd.index("--rdzv_endpoint") + 1] == "127.0.0.1:29411"
    assert cmd[cmd.index("--max_restarts") + 1] == "2"
    assert cmd[-2:] == ["-m", "danlu.train._torchrun"]
    many = load_recipe(
        recipe("x.csv"),
        [
            "train.distributed.nnodes=2",
            "train.distributed.node_rank=1",
            "train.distributed.rdzv_endpoint=10.0.0.1:29400",
        ],
    ).train.distributed
    cmd = torchrun_command(many)
    assert cmd[cmd.index("--rdzv_backend") + 1] == "static"
    assert cmd[cmd.index("--node_rank") + 1] == "1"
    assert cmd[cmd.index("--rdzv_endpoint") + 1] == "10.0.0.1:29400"


def test_two_machines_meet_at_node_0s_endpoint(table, tmp_path):
    """nnodes 2 on loopback: node 1's danlu run trains its rank and returns node 0's run;
    node 0 alone records, evaluates and registers it."""
    import json
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = recipe(table, ranks=1, epochs=2)
    config["train"]["distributed"].update(nnodes=2, rdzv_endpoint=f"127.0.0.1:{port}")
    config["register"] = {"name": "two-nodes"}
    home = tmp_path / "shared"
    code = (
        "import json, sys, danlu\n"
        "r = danlu.run(json.loads(sys.argv[1]), home=sys.argv[2])\n"
        "print('RUN', r.run_id, r.registered is None)\n"
    )
    node1 = {**config, "train": {**config["train"]}}
    node1["train"]["distributed"] = {**config["train"]["distributed"], "node_rank": 1}
    other = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(node1), str(home)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        result = danlu.run(config, home=home)
        out, _ = other.communicate(timeout=180)
    finally:
        other.kill()
    assert other.returncode == 0
    assert f"RUN {result.run_id} True" in out  # the same run, not registered twice
    assert result.registered is not None and result.registered.version == 1
    assert [r.id for r in SqlStore(home=home).search_runs()] == [result.run_id]


@pytest.mark.parametrize(
    ("left", "after"),
    [("interrupted", "failed"), ("running", "failed"), ("finished", "finished")],
)
def test_a_failed_job_marks_a_run_its_rank_0_left_interrupted_as_failed(tmp_path, left, after):
    """torchrun stops the ranks left when one dies (SIGTERM): rank 0 may take that for a
    preemption and leave its run ``interrupted`` before its collective sees the dead peer. The
    launcher then records what happened to the job: failed (the checkpoint stays for --resume)."""
    from danlu.train._torchrun import _mark_failed

    store = SqlStore(home=tmp_path)
    run = store.create_run(experiment="dist", name="dist")
    if left != "running":
        store.set_status(run.id, left)
    _mark_failed(store, run.id, RankFailed("Rank 1 exited with code 3"))
    got = store.get_run(run.id)
    assert got.status == after
    assert (got.error == "Rank 1 exited with code 3") == (after == "failed")
