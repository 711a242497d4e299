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
    assert names == {"digits", "breast_cancer", "wine", "iris", "diabetes", "yeast"}


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"]])
def test_help(tmp_path, argv):
    out = danlu(*argv, home=tmp_path)
    assert out.returncode == 0 and "Usage" in out.stdout
