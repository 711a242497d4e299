from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def danlu(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DANLU_HOME": str(home), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "danlu", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_run_prints_epochs_and_a_summary_when_not_a_tty(tmp_path):
    out = danlu("run", str(EXAMPLES / "wine_mlp.yaml"), "--set", "train.epochs=3", home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "epoch 1/3" in out.stderr and "epoch 3/3" in out.stderr  # one plain line per epoch
    assert "accuracy" in out.stdout and "danlu runs show" in out.stdout
    assert "\x1b[" not in out.stderr  # no escape codes in logs


def test_run_json_and_quiet(tmp_path):
    out = danlu(
        "run", str(EXAMPLES / "wine_mlp.yaml"), "-s", "train.epochs=2", "--json", home=tmp_path
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["epochs_run"] == 2 and "accuracy" in result["test"]
    assert Path(result["run_dir"]).is_dir()
    assert [s["name"] for s in result["stages"]] == ["prepare", "train"]
    assert all(s["status"] == "finished" and s["seconds"] >= 0 for s in result["stages"])
    quiet = danlu(
        "run", str(EXAMPLES / "wine_mlp.yaml"), "-s", "train.epochs=2", "--quiet", home=tmp_path
    )
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert "stages: prepare " in quiet.stdout and " · train " in quiet.stdout


def test_config_error_exits_non_zero_without_traceback_and_writes_nothing(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(
        (EXAMPLES / "wine_mlp.yaml").read_text().replace("batch_size: 16", "batch_sise: 16")
    )
    out = danlu("run", str(recipe), home=tmp_path / "home")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "train.batch_sise: unknown key. Did you mean 'batch_size'?" in out.stderr
    assert f"{recipe}:" in out.stderr
    assert not (tmp_path / "home").exists()
    debug = danlu("--debug", "run", str(recipe), home=tmp_path / "home")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_data_error_exit_code(tmp_path):
    out = danlu(
        "run", str(EXAMPLES / "wine_mlp.yaml"), "--set", "data.source=builtin:wines", home=tmp_path
    )
    assert out.returncode == 4
    assert "Did you mean 'wine'" in out.stderr and "Traceback" not in out.stderr


def test_the_script_exits_without_the_interpreters_teardown_but_loses_nothing():
    """_exit_now: other threads finish, atexit handlers run, output is flushed, the code kept."""
    code = (
        "import atexit, sys, threading, time\n"
        "from danlu.cli._app import _exit_now\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('thread done'))).start()\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "ThreadPoolExecutor(1).submit(print, 'pool done')  # left open: must not hang the exit\n"
        "print('buffered', end='')\n"
        "_exit_now(int(sys.argv[1]) if sys.argv[1].isdigit() else sys.argv[1])\n"
    )
    for arg, status in (("3", 3), ("0", 0), ("a message", 1)):
        out = subprocess.run(
            [sys.executable, "-c", code, arg], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == status
        assert (
            "buffered" in out.stdout and "thread done" in out.stdout and "pool done" in out.stdout
        )
        assert out.stdout.rstrip().endswith("atexit ran")
        assert ("a message" in out.stderr) == (status == 1)


def test_validate(tmp_path):
    ok = danlu("validate", str(EXAMPLES / "digits_cnn.yaml"), "--data", home=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout and "1797" in ok.stdout
    bad = danlu(
        "validate", str(EXAMPLES / "digits_cnn.yaml"), "--set", "model.chanels=[4]", home=tmp_path
    )
    assert bad.returncode == 2 and "Did you mean 'channels'" in bad.stderr


def test_schema_and_datasets(tmp_path):
    schema = danlu("schema", home=tmp_path)
    assert schema.returncode == 0
    assert json.loads(schema.stdout)["title"] == "Recipe"
    listing = danlu("datasets", "--json", home=tmp_path)
    names = {d["name"] for d in json.loads(listing.stdout)}
    assert names == {
        "digits", "breast_cancer", "wine", "iris", "diabetes", "yeast", "penguins", "titanic",
        "diamonds", "bbc_news", "gunpoint", "italy_power_demand", "basic_motions", "yahoo",
        "airline", "shampoo_sales", "co2", "sunspots", "macrodata",
    }  # fmt: skip
    targets = {d["name"]: d["target"] for d in json.loads(listing.stdout)}
    assert targets["penguins"] == "species" and targets["diamonds"] == "price"


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"]])
def test_help(tmp_path, argv):
    out = danlu(*argv, home=tmp_path)
    assert out.returncode == 0 and "Usage" in out.stdout


def test_ctrl_c_names_the_run_to_resume_and_the_run_resumes(tmp_path):
    """SIGINT to a real `danlu run`: exit 130, the message names the run id in a command that
    resumes it (with the same --set), and that command continues the run from its checkpoint."""
    import signal

    from danlu.store import SqlStore
    from tests._runs import wait_for_epochs

    recipe = tmp_path / "wine.yaml"
    recipe.write_text((EXAMPLES / "wine_mlp.yaml").read_text())
    home = tmp_path / "home"
    env = {**os.environ, "DANLU_HOME": str(home), "OMP_NUM_THREADS": "1", "COLUMNS": "300"}
    # many epochs, no early stopping: the run is still training when SIGINT comes
    sets = ("--set", "train.epochs=5000", "--set", "train.early_stopping=null")
    proc = subprocess.Popen(
        [sys.executable, "-m", "danlu", "run", str(recipe), *sets],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_id = wait_for_epochs(home, proc, 2)  # interrupt once 2 epochs are in
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert run_id is not None, "the run never logged 2 epochs"
    assert proc.returncode == 130, stderr
    assert f"Run {run_id} is kept (status interrupted)" in stderr
    command = (
        f"danlu run {recipe} --set train.epochs=5000 --set train.early_stopping=null "
        f"--resume {run_id}"
    )
    assert command in stderr and "Traceback" not in stderr
    store = SqlStore(home=home)
    assert store.get_run(run_id).status == "interrupted"
    done = len(store.metric_history(run_id, "train_loss"))

    # the printed command, with fewer epochs: it continues the same run to its end
    args = command.split()[1:] + ["--set", f"train.epochs={done + 2}", "--json"]
    resumed = danlu(*args, home=home)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["run_id"] == run_id
    assert store.get_run(run_id).status == "finished"
    steps = [p.step for p in store.metric_history(run_id, "train_loss")]
    assert steps == list(range(1, done + 3))


def test_a_recipe_asking_for_a_missing_gpu_is_refused_before_any_run(tmp_path):
    """train.device: cuda without a GPU is a recipe error naming the key and its line, found
    by `danlu validate` and by `danlu run` before the run opens: nothing is left in the store."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    recipe = tmp_path / "gpu.yaml"
    recipe.write_text((EXAMPLES / "wine_mlp.yaml").read_text() + "\n")
    text = recipe.read_text()
    assert "train:\n" in text
    recipe.write_text(text.replace("train:\n", "train:\n  device: cuda\n", 1))
    line = recipe.read_text().splitlines().index("  device: cuda") + 1
    for command in ("validate", "run"):
        out = danlu(command, str(recipe), home=tmp_path / "home")
        assert out.returncode == 2, out.stderr
        assert f"{recipe}:{line}: train.device: no CUDA device is visible" in out.stderr
        assert "device: auto" in out.stderr and "Traceback" not in out.stderr
    listed = danlu("runs", "ls", "--json", home=tmp_path / "home")
    assert json.loads(listed.stdout or "[]") == []


def test_run_prints_where_the_rows_went_and_what_dedupe_dropped(tmp_path):
    import pandas as pd

    rows = pd.DataFrame(
        {"x": [float(i % 20) for i in range(40)], "target": [i % 2 for i in range(40)]}
    )
    rows.to_csv(tmp_path / "rows.csv", index=False)  # rows 20-39 repeat rows 0-19
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"name: copies\ndata:\n  source: {tmp_path / 'rows.csv'}\n  prepare: {{dedupe: true}}\n"
        "task: classification\nmodel: {type: mlp, hidden: [4]}\ntrain: {epochs: 1}\n"
    )
    out = danlu("run", str(recipe), "--quiet", home=tmp_path / "home")
    assert out.returncode == 0, out.stderr
    assert "rows: 40 loaded" in out.stdout
    assert "dropped 20 exact duplicates (data.prepare.dedupe)" in out.stdout


def test_a_split_column_not_in_the_data_is_named_with_its_recipe_line(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "name: grouped\ndata:\n  source: builtin:wine\n  split:\n    group: cultivar\n"
        "task: classification\nmodel: {type: mlp}\n"
    )
    out = danlu("run", str(recipe), home=tmp_path / "home")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{recipe}:5: data.split.group: column 'cultivar' is not in" in out.stderr
    assert not (tmp_path / "home" / "artifacts").exists()  # nothing recorded


def test_a_run_that_fails_after_it_opened_is_kept_as_failed_and_named(tmp_path):
    """A failure once the run exists (here the loss diverges) keeps the run as failed with its
    error; the CLI prints the error, the run id and the commands that resume or delete it."""
    from danlu.store import SqlStore

    recipe = str(EXAMPLES / "diabetes_regression.yaml")
    sets = ["--set", "train.epochs=2", "--set", "train.optimizer.name=sgd"]
    sets += ["--set", "train.optimizer.lr=1e30"]
    out = danlu("run", recipe, *sets, "--quiet", home=tmp_path)
    assert out.returncode == 3, out.stderr  # a DataError's exit code
    [run] = SqlStore(home=tmp_path).search_runs()
    assert run.status == "failed" and "training loss became" in (run.error or "")
    assert "error: The training loss became" in out.stderr and "Traceback" not in out.stderr
    assert f"Run {run.id} is kept as failed" in out.stderr
    assert f"danlu run {recipe} {' '.join(sets)} --resume {run.id}" in out.stderr
    assert f"danlu runs rm {run.id}" in out.stderr
