"""Graceful preemption: SIGTERM stops training after the current batch with a checkpoint of the
position inside the epoch, the run is kept ``interrupted``, the process exits 75, and
``--resume`` finishes it bit-for-bit as an uninterrupted run would have.

The SIGTERM comes from inside the process at a chosen training batch, through a user model
builder (``model: {type: tests.train.test_preempt:build}``, the plug-in path any user has): an
MLP that sends SIGTERM to its own process on its k-th training forward pass when
``DANLU_TEST_SIGTERM_AT`` says so, so the batch where training stops is exact.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from danlu.errors import Preempted
from danlu.models._mlp import MLPSpec, build_mlp
from danlu.train import Callback, preemptible

ROOT = Path(__file__).resolve().parents[2]
SIGTERM_AT = "DANLU_TEST_SIGTERM_AT"  # "k" or "k,k" (twice): training forward passes
SIGTERM_IN_BUILD = "DANLU_TEST_SIGTERM_IN_BUILD"


class _SelfPreempting(nn.Module):
    """An MLP that sends SIGTERM to its own process on chosen training forward passes."""

    def __init__(self, net: nn.Module, at: list[int]) -> None:
        super().__init__()
        self.net = net
        self.at = at
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            for _ in range(self.at.count(self.calls)):  # the handler runs between two
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)
        return self.net(x)


def build(spec: MLPSpec, schema, task) -> nn.Module:
    """The test's model builder: ``build_mlp`` wrapped in :class:`_SelfPreempting`."""
    if os.environ.get(SIGTERM_IN_BUILD):  # preparing the run (before it opens)
        os.kill(os.getpid(), signal.SIGTERM)
    at = [int(k) for k in os.environ.get(SIGTERM_AT, "").split(",") if k]
    return _SelfPreempting(build_mlp(spec, schema, task), at)


build.spec = MLPSpec  # type: ignore[attr-defined]


# -- in process: the engine ---------------------------------------------------------------------
WINE_RECIPE = {
    "name": "preempt",
    "data": {"source": "builtin:wine"},
    "task": "classification",
    "model": {"type": "mlp", "hidden": [8]},
}


def _fit(tmp_path: Path, name: str | None, at: list[int], *, resume: bool = False, **train):
    from danlu.config import load_recipe
    from danlu.data import prepare_data
    from danlu.tasks import get_task
    from danlu.train import Trainer, seed_everything

    recipe = load_recipe(
        {
            "name": "preempt",
            "data": {"source": "builtin:wine", "augment": [{"noise": 0.05}]},
            "task": "classification",
            "model": {"type": "mlp", "hidden": [16], "dropout": 0.2},
            "train": {"epochs": 3, "batch_size": 16, "grad_accumulation": 3, **train},
        }
    )
    data = prepare_data(recipe.data, recipe.task)
    task = get_task(recipe.task)
    seed_everything(0)
    model = _SelfPreempting(build_mlp(MLPSpec(hidden=[16], dropout=0.2), data.schema, task), at)
    trainer = Trainer(recipe.train, checkpoint_path=None if name is None else tmp_path / name)
    with preemptible():  # as the Runner wraps every run
        return trainer.fit(model, task, data, resume=resume)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_sigterm_stops_after_the_batch_and_resume_is_exact_mid_accumulation(tmp_path):
    """SIGTERM in the 12th training batch (epoch 2, batch 4 of 8, one batch into a cycle of
    3 accumulated batches): Preempted after that batch; the checkpoint holds the position and
    the pending gradients; resuming gives the uninterrupted run's history and weights."""
    from danlu.train import load_checkpoint

    before = signal.getsignal(signal.SIGTERM)
    full = _fit(tmp_path, "full.safetensors", [])
    assert signal.getsignal(signal.SIGTERM) is before  # fit put the old handler back
    with pytest.raises(Preempted, match="batch 4 of epoch 2"):
        _fit(tmp_path, "cut.safetensors", [12])
    assert signal.getsignal(signal.SIGTERM) is before
    state = load_checkpoint(tmp_path / "cut.safetensors")
    assert state["epoch"] == 1 and len(state["history"]) == 1
    position = state["position"]
    assert (position["epoch"], position["batch"]) == (2, 4)
    assert position["grads"] and position["loss_sum"] > 0  # batch 4 opened a new cycle
    resumed = _fit(tmp_path, "cut.safetensors", [], resume=True)
    assert resumed.history_ == full.history_ and resumed.global_step == full.global_step
    assert _same_weights(resumed.model, full.model)


def test_sigterm_during_validation_stops_at_the_epoch_end(tmp_path):
    """A SIGTERM that comes after the epoch's last batch stops at the epoch's end (a plain
    end-of-epoch checkpoint); a pending request is not lost."""
    from danlu.train import load_checkpoint

    with pytest.raises(Preempted, match="batch 8 of epoch 1"):
        _fit(tmp_path, "c.safetensors", [8])  # the epoch's last batch
    state = load_checkpoint(tmp_path / "c.safetensors")
    assert state["position"]["batch"] == 8 and state["epoch"] == 0
    full = _fit(tmp_path, "full.safetensors", [], epochs=2)
    resumed = _fit(tmp_path, "c.safetensors", [], resume=True, epochs=2)
    assert resumed.history_ == full.history_ and _same_weights(resumed.model, full.model)


def test_a_second_sigterm_stops_at_once(tmp_path):
    with pytest.raises(Preempted, match=r"preempted \(SIGTERM\)\.$"):
        _fit(tmp_path, "c.safetensors", [3, 3])


def test_without_checkpoints_sigterm_still_stops(tmp_path):
    with pytest.raises(Preempted, match="train.checkpoint.every is 0"):
        _fit(tmp_path, None, [2])  # the train stage's choice under train.checkpoint.every: 0


def test_a_bare_fit_and_a_tuning_trial_keep_the_process_sigterm_handling(tmp_path):
    """Outside preemptible() the loop installs nothing; a tuning worker counts a DanluError as
    a failed trial and goes on, so its trials keep SIGTERM's own handling (the process ends)."""
    from danlu.config import load_recipe
    from danlu.data import prepare_data
    from danlu.models import build_model
    from danlu.tasks import get_task
    from danlu.train import Trainer, run_training

    class Handler(Callback):
        def __init__(self) -> None:
            self.seen: list[object] = []

        def on_fit_start(self, trainer) -> None:
            self.seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    recipe = load_recipe({**WINE_RECIPE, "train": {"epochs": 1}})
    data = prepare_data(recipe.data, recipe.task)
    task = get_task(recipe.task)
    bare = Handler()
    Trainer(recipe.train, callbacks=[bare]).fit(
        build_model(recipe.model, data.schema, task), task, data
    )
    runs = {stage: Handler() for stage in ("train", "tune-trial")}
    for stage, seen in runs.items():
        run_training(recipe, home=tmp_path, stage=stage, callbacks=[seen], prepared=data)
    assert bare.seen == runs["tune-trial"].seen == [before]
    assert runs["train"].seen != [before]  # the Runner's own, for the run
    assert signal.getsignal(signal.SIGTERM) is before


def test_preemption_is_a_main_thread_affair():
    """Off the main thread (a tuning trial on a thread) nothing is installed; in it, the
    handler is installed once for nested blocks and the previous one put back."""
    from danlu.train import preemptible
    from danlu.train._preempt import safe_points

    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def worker() -> None:
        with preemptible(), safe_points():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [before]
    with preemptible():
        inner = signal.getsignal(signal.SIGTERM)
        assert inner is not before
        with preemptible(), safe_points():
            assert signal.getsignal(signal.SIGTERM) is inner
        assert signal.getsignal(signal.SIGTERM) is inner
        with pytest.raises(Preempted):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler raises here
    assert signal.getsignal(signal.SIGTERM) is before


# -- a real `danlu run` process -----------------------------------------------------------------
RECIPE = """\
name: preempt-cli
data:
  source: builtin:wine
  split: {test: 0.2, val: 0.1, stratify: true, seed: 0}
  prepare: {scale: standard}
  augment: [{noise: 0.05}]
task: classification
model: {type: "tests.train.test_preempt:build", hidden: [16], dropout: 0.2}
train:
  epochs: 3
  batch_size: 16
  grad_accumulation: 3
  optimizer: {name: adam, lr: 1.0e-3}
  seed: 0
"""


def _danlu(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "DANLU_HOME": str(home),
        "OMP_NUM_THREADS": "1",
        "COLUMNS": "300",
        "PYTHONPATH": str(ROOT),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "danlu", *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _finished(home: Path, run_id: str) -> dict[str, object]:
    """What must match between two runs: test metrics, history and the final weights."""
    from danlu.store import SqlStore

    store = SqlStore(home=home)
    try:
        assert store.get_run(run_id).status == "finished"
        summary = json.loads(store.artifact_path(run_id, "summary.json").read_text())
        weights = store.artifact_path(run_id, "model.safetensors").read_bytes()
        losses = [(p.step, p.value) for p in store.metric_history(run_id, "train_loss")]
    finally:
        store.close()
    return {"test": summary["test"], "history": summary["history"], "w": weights, "l": losses}


def _preempt_and_resume(
    tmp_path: Path, recipe: Path, at: str, *, position: int | None, json_out: bool = False
) -> tuple[Path, str]:
    """Run until SIGTERM at training forward pass(es) ``at``, check the exit and that the
    checkpoint stopped at batch ``position`` of its epoch (None: at an epoch's end), resume."""
    from danlu.store import SqlStore
    from danlu.train import load_checkpoint

    home = tmp_path / f"home-{at}"
    cut = _danlu(home, "run", str(recipe), *["--json"] * json_out, **{SIGTERM_AT: at})
    assert cut.returncode == 75, cut.stderr
    assert "Traceback" not in cut.stderr
    line = next(t for t in cut.stderr.splitlines() if t.startswith("preempted"))
    assert line.startswith(f"preempted; resume with: danlu run {recipe} --resume ")
    run_id = line.rsplit(" ", 1)[1]
    if json_out:  # for programs: the run and the command that resumes it, on stdout
        said = json.loads(cut.stdout)
        assert said == {"preempted": True, "run_id": run_id, "resume": line.split(": ", 1)[1]}
    store = SqlStore(home=home)
    try:
        run = store.get_run(run_id)
        assert run.status == "interrupted" and run.error == "preempted (SIGTERM)"
        state = load_checkpoint(store.artifact_path(run_id, "checkpoint.safetensors"))
    finally:
        store.close()
    assert state.get("position", {}).get("batch") == position
    resumed = _danlu(home, *line.split()[4:], "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["run_id"] == run_id
    return home, run_id


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    recipe = folder / "preempt.yaml"
    recipe.write_text(RECIPE)
    out = _danlu(folder / "home", "run", str(recipe), "--json")
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout)["run_id"]
    return recipe, _finished(folder / "home", run_id)


def test_danlu_run_preempted_mid_epoch_resumes_bit_exact(uninterrupted, tmp_path):
    recipe, full = uninterrupted
    home, run_id = _preempt_and_resume(tmp_path, recipe, "12", position=4)
    assert _finished(home, run_id) == full


def test_a_second_sigterm_exits_75_at_once_and_the_run_still_resumes(uninterrupted, tmp_path):
    """Two SIGTERMs in one batch (epoch 2): the second stops at once; the run resumes from
    its end-of-epoch-1 checkpoint and still matches."""
    recipe, full = uninterrupted
    home, run_id = _preempt_and_resume(tmp_path, recipe, "12,12", position=None, json_out=True)
    assert _finished(home, run_id) == full


def test_sigterm_while_preparing_exits_75_and_records_nothing(uninterrupted, tmp_path):
    from danlu.store import SqlStore

    recipe, _ = uninterrupted
    home = tmp_path / "home"
    out = _danlu(home, "run", str(recipe), **{SIGTERM_IN_BUILD: "1"})
    assert out.returncode == 75, out.stderr
    assert "preempted before the run started: nothing was recorded" in out.stderr
    assert "Traceback" not in out.stderr
    store = SqlStore(home=home)
    try:
        assert store.search_runs() == []
    finally:
        store.close()


def test_a_streamed_run_preempted_mid_epoch_resumes_bit_exact(tmp_path):
    """data.stream: the resumed epoch reads its batches again in the same order and skips
    those already trained on."""
    from tests.data.test_stream import STREAM, write_folder

    folder = write_folder(tmp_path / "data", sizes=(1500, 1500))
    recipe = tmp_path / "stream.yaml"
    text = RECIPE.replace("source: builtin:wine", f"source: {folder}\n  target: y")
    text = text.replace("  split: {test: 0.2, val: 0.1, stratify: true, seed: 0}\n", "")
    text = text.replace("  prepare: {scale: standard}\n", f"  stream: {json.dumps(STREAM)}\n")
    text = text.replace("epochs: 3", "epochs: 2").replace("batch_size: 16", "batch_size: 256")
    recipe.write_text(text)
    full = _danlu(tmp_path / "full", "run", str(recipe), "--json")
    assert full.returncode == 0, full.stderr
    expected = _finished(tmp_path / "full", json.loads(full.stdout)["run_id"])
    home, run_id = _preempt_and_resume(tmp_path, recipe, "13", position=4)  # epoch 2 of 9 batches
    assert _finished(home, run_id) == expected
