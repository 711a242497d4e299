"""Every example recipe runs (few epochs) and every README command block names real things."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import danlu

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
# a GPT of one narrow layer, larger batches (a quarter of the steps), few bootstrap resamples
LM_SHAPE = [
    "model.width=32",
    "model.layers=1",
    "model.heads=2",
    "model.context=32",
    "train.batch_size=32",
    "evaluate.bootstrap=100",
]
# Examples too heavy for 2 epochs at full size on 2 cores: cut to what shows they run.
SMALLER = {
    # MiniLM reads 16 tokens per article instead of 128 (~1/8 of the compute); the report's text
    # sections look at a few rows.
    "bbc_news_lora.yaml": [
        "data.text.max_length=16",
        "evaluate.robustness.samples=20",
        "evaluate.explain.top_k=1",
        "compress.repeats=2",
        "compress.bootstrap=50",
    ],
    # the GPT on the tech articles only (LoRA: on the sports ones, same shape)
    "bbc_news_lm.yaml": [
        *LM_SHAPE,
        "language_model.vocab_size=300",
        "language_model.where={category: tech}",
    ],
    "bbc_news_lm_lora.yaml": LM_SHAPE,
    # compression: one epoch of fine-tuning, few timing repeats and resamples
    "digits_cnn.yaml": [
        "compress.prune.finetune_epochs=1",
        "compress.repeats=3",
        "compress.bootstrap=100",
    ],
}


# Data an example reads that the repository does not hold: the script that makes it (once).
MADE_BY = {"movielens_bpr.yaml": "make_movielens.py"}
# An example that starts from another's registered model: that one runs first, in the same store.
NEEDS = {"bbc_news_lm_lora.yaml": "bbc_news_lm.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_recipe_runs(path, tmp_path):
    if path.name in MADE_BY:
        import subprocess
        import sys

        script = ROOT / "examples" / MADE_BY[path.name]
        subprocess.run([sys.executable, str(script)], check=True, cwd=ROOT, timeout=120)
    if path.name in NEEDS:
        needed = NEEDS[path.name]
        before = ["train.epochs=1", *SMALLER.get(needed, [])]
        danlu.run(ROOT / "examples" / needed, overrides=before, home=tmp_path)
    overrides = ["train.epochs=2", *SMALLER.get(path.name, [])]
    result = danlu.run(path, overrides=overrides, home=tmp_path)
    if "model_selection" in result.details or result.recipe.model.type == "gbdt":
        assert result.history  # boosting rounds are not epochs: trees may have been shipped
    else:
        assert len(result.history) == 2
    assert result.metrics


def test_readme_python_snippets_run(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "the README shows the Python API"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})  # noqa: S102 - our own README


def test_readme_starts_with_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    first = re.search(r"```(?:bash|sh)\n(.*?)```", readme, flags=re.S)
    assert first is not None
    assert first.group(1).split() == ["make", "demo", "make", "test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, flags=re.M) and re.search(r"^test:", makefile, flags=re.M)
    for recipe in re.findall(r"examples/[\w.]+\.yaml", readme):
        assert (ROOT / recipe).exists(), recipe


def test_serve_demo_runs(tmp_path):
    """`make demo`'s serving steps: a real server on 127.0.0.1, the client, SIGTERM; then the
    version packaged (``danlu package --k8s``) and served from the package without the store."""
    import os
    import subprocess
    import sys

    danlu.run(
        ROOT / "examples" / "digits_cnn.yaml",
        overrides=["train.epochs=2", "compress=false"],
        home=tmp_path,
    )
    env = {**os.environ, "DANLU_HOME": str(tmp_path)}

    def example(script: str, timeout: int) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, str(ROOT / "examples" / script)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    done = example("serve_demo.py", 180)
    assert "digits:1 predicts [" in done.stdout and "raw HTTP: [" in done.stdout
    assert 'danlu_requests_total{code="200",model="digits",version="1"} 2.0' in done.stdout
    # the next step of the demo: the same version packaged, and served from the package alone
    done = example("package_demo.py", 300)
    assert "packaged digits:1 predicts [" in done.stdout
    assert (tmp_path / "build" / "digits" / "k8s" / "deployment.yaml").is_file()
