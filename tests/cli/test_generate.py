"""``danlu generate MODEL``: a language model's text streamed to stdout (a registry reference or a
run id), an image generator's samples as PNG files, and clear errors without a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.cli._runner import danlu

WORDS = "the cat sat on a mat while the dog ran to the park and a bird sang in the tree".split()
OFF = {"bootstrap": 0, "robustness": False, "explain": False, "membership": False, "cost": False}


class Home(NamedTuple):
    path: Path
    lm_run: str


def _documents(n: int = 40) -> list[str]:
    """Short documents of a small vocabulary (deterministic)."""
    docs = []
    for i in range(n):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(30 + i % 7)]
        docs.append(" ".join(words).capitalize() + ".")
    return docs


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    import pandas as pd

    from danlu.pipeline import run
    from danlu.store import SqlStore

    folder = tmp_path_factory.mktemp("cli-generate")
    corpus = folder / "docs.csv"
    pd.DataFrame({"text": _documents()}).to_csv(corpus, index=False)
    store = SqlStore(home=folder / "home")
    lm = run(
        {
            "name": "lm",
            "task": "language_model",
            "data": {"source": str(corpus)},
            "language_model": {
                "vocab_size": 300,
                "samples": {"temperatures": []},
                "near_duplicates": None,  # the documents repeat one pattern
            },
            "model": {"type": "gpt", "width": 32, "layers": 2, "heads": 4, "context": 16},
            "train": {"epochs": 1, "batch_size": 16},
            "evaluate": False,
            "register": {"name": "lm", "alias": "staging"},
        },
        store=store,
    )
    run(
        {
            "name": "iris",
            "data": {"source": "builtin:iris"},
            "task": "classification",
            "model": {"type": "mlp", "hidden": [8]},
            "train": {"epochs": 2, "checkpoint": {"every": 0}},
            "evaluate": False,
            "register": {"name": "iris", "alias": "staging"},
        },
        store=store,
    )
    run(
        {
            "name": "vae",
            "data": {"source": "builtin:digits", "prepare": {"scale": "minmax"}},
            "task": "generation",
            "model": {"type": "vae", "latent": 2, "hidden": [16]},
            "train": {"epochs": 1, "batch_size": 256},
            "evaluate": False,
            "register": {"name": "vae", "alias": "staging"},
        },
        store=store,
    )
    store.close()
    yield Home(folder / "home", lm.run_id)


@pytest.fixture
def home(trained: Home, monkeypatch: pytest.MonkeyPatch) -> Home:
    monkeypatch.setenv("DANLU_HOME", str(trained.path))
    return trained


def test_text_is_streamed_to_stdout_as_the_library_generates_it(home: Home) -> None:
    from danlu import load_model
    from danlu.data._lm import lm_tokenizer
    from danlu.models._generate import generate_text

    bundle = load_model("lm@staging")
    expected = generate_text(
        bundle.model, lm_tokenizer(bundle), "the cat", max_tokens=12, temperature=0
    )
    outcome = danlu(
        "generate", "lm@staging", "--prompt", "the cat", "--max-tokens", "12", "-t", "0"
    )
    assert outcome.code == 0, outcome.stderr
    assert outcome.stdout == expected + "\n"
    assert "12 tokens from lm:1" in outcome.stderr and "finish: length" in outcome.stderr


def test_a_run_id_and_a_seed_give_the_same_text_again(home: Home) -> None:
    args = ["--prompt", "a dog", "--max-tokens", "20", "--seed", "3", "--top-k", "20", "-q"]
    first = danlu("generate", home.lm_run, *args)
    again = danlu("generate", "lm:1", *args)
    assert first.code == again.code == 0, first.stderr
    assert first.stdout == again.stdout and first.stdout.strip()
    assert first.stderr == ""  # -q: nothing but the text


def test_a_long_prompt_keeps_its_newest_tokens_with_a_warning(home: Home) -> None:
    outcome = danlu("generate", "lm@staging", "--prompt", "the cat sat " * 20, "--max-tokens", "3")
    assert outcome.code == 0, outcome.stderr
    assert "tokens are dropped" in outcome.stderr and "prompt 16 tokens" in outcome.stderr


def test_images_are_written_as_png_files(home: Home, tmp_path: Path) -> None:
    out = tmp_path / "samples"
    outcome = danlu("generate", "vae@staging", "--n", "4", "--out", str(out), "--seed", "1")
    assert outcome.code == 0, outcome.stderr
    files = sorted(p.name for p in out.glob("*.png"))
    assert len(files) == 4 and files[0].startswith("sample_")
    assert (out / files[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = danlu("generate", "vae@staging", "--n", "4")
    assert missing.code == 2 and "--out DIR" in missing.stderr


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["iris@staging", "--prompt", "x"], 2, "is a classification model"),
        (["lm@staging"], 2, "--prompt"),
        (["nope@staging", "--prompt", "x"], 4, "nope"),
        (["lm@staging", "--prompt", "x", "--top-p", "0"], 3, "top_p"),
    ],
)
def test_errors_are_a_message_and_an_exit_code(
    home: Home, args: list[str], code: int, says: str
) -> None:
    outcome = danlu("generate", *args)
    assert outcome.code == code, (outcome.code, outcome.stderr)
    assert says in outcome.stderr
    assert "Traceback" not in outcome.stderr + outcome.stdout
