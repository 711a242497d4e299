"""``danlu evaluate`` and ``danlu report`` on a small breast-cancer model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.cli._runner import Outcome, danlu

RECIPE = """
name: bc-eval
data: {source: builtin:breast_cancer, split: {test: 0.2, val: 0.1, seed: 0}}
task: classification
model: {type: mlp, hidden: [8]}
train: {epochs: 3, checkpoint: {every: 0}}
evaluate:
  bootstrap: 200
  robustness: {fgsm: [0.05]}
  explain: {samples: 20, top_k: 1}
  cost: {repeats: 3}
register: {name: bc, alias: staging}
"""


class Trained(NamedTuple):
    home: Path
    run_id: str
    outcome: Outcome


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    root = tmp_path_factory.mktemp("evaluate")
    recipe = root / "bc.yaml"
    recipe.write_text(RECIPE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DANLU_HOME", str(root / "home"))
        outcome = danlu("run", str(recipe), "--json")
    assert outcome.code == 0, outcome.stderr
    yield Trained(root / "home", json.loads(outcome.stdout)["run_id"], outcome)


@pytest.fixture
def home(trained: Trained, monkeypatch: pytest.MonkeyPatch) -> Trained:
    monkeypatch.setenv("DANLU_HOME", str(trained.home))
    return trained


def _rows(tmp_path: Path, drop: str | None = None, **extra: object) -> Path:
    """The breast-cancer rows as a CSV, as the model's signature names them."""
    from sklearn.datasets import load_breast_cancer

    import danlu

    frame = load_breast_cancer(as_frame=True).frame.head(80)
    target = danlu.load_model("bc").schema.target
    frame = frame.rename(columns={"target": target})
    if drop:
        frame = frame.drop(columns=[drop])
    for column, value in extra.items():
        frame[column] = value
    path = tmp_path / "rows.csv"
    frame.to_csv(path, index=False)
    return path


def test_run_prints_the_report_and_registers_it(trained: Trained) -> None:
    result = json.loads(trained.outcome.stdout)
    assert "test accuracy" in result["report"]
    assert Path(result["report_html"]).is_file()
    version = trained.home / "models" / "bc" / "1"
    assert (version / "report.html").is_file() and (version / "report.json").is_file()


def test_run_table_and_report_show_the_same_metrics(tmp_path: Path, monkeypatch) -> None:
    """`danlu run`'s table is the served model's metrics (a kept temperature included): the
    same numbers as the report's metrics section, log-loss computed once."""
    recipe = tmp_path / "cal.yaml"
    recipe.write_text(
        RECIPE.replace("name: bc-eval", "name: bc-cal")
        .replace("register: {name: bc, alias: staging}\n", "")
        .replace("  bootstrap: 200\n", "  bootstrap: 50\n  baselines: false\n")
        .replace("  robustness: {fgsm: [0.05]}\n", "  robustness: false\n")
        .replace("  explain: {samples: 20, top_k: 1}\n", "  explain: false\n")
        .replace(
            "  cost: {repeats: 3}\n",
            "  cost: false\n  calibration: {temperature: true, min_rows: 40}\n",
        )
    )
    monkeypatch.setenv("DANLU_HOME", str(tmp_path / "home"))
    outcome = danlu("run", str(recipe))
    assert outcome.code == 0, outcome.stderr
    run_dir = Path(outcome.stdout.split("report: ")[-1].strip()).parent
    report = json.loads((run_dir / "report.json").read_text())
    values = report["sections"]["metrics"]["values"]
    temperature = report["sections"]["calibration"]["temperature"]
    rows = dict(
        (label.strip(), float(value))
        for label, value in (
            line.strip("│┃ ").split("│")
            for line in outcome.stdout.splitlines()
            if line.count("│") == 3
        )
    )
    assert rows["Log-loss"] == pytest.approx(values["log_loss"], abs=5e-5)
    assert rows["Accuracy"] == pytest.approx(values["accuracy"], abs=5e-5)
    assert "log_loss" not in outcome.stdout  # human labels
    assert temperature != 1  # 3 epochs: under-confident, and sharpening is kept
    assert f"temperature-scaled (T = {temperature:.3g})" in outcome.stdout


def test_evaluate_run_json(home: Trained) -> None:
    outcome = danlu("evaluate", home.run_id, "--json", "--set", "explain=false")
    assert outcome.code == 0, outcome.stderr
    report = json.loads(outcome.stdout)
    assert report["subject"]["run_id"] == home.run_id
    assert "explain" not in report["sections"]  # --set turned it off
    assert list(report["sections"]) == [
        "metrics",
        "training",
        "baselines",
        "calibration",
        "robustness",
        "membership",
        "cost",
    ]
    assert Path(report["html"][0]).is_file()


def test_evaluate_model_on_a_file(home: Trained, tmp_path: Path) -> None:
    outcome = danlu("evaluate", "bc@staging", "--data", str(_rows(tmp_path)), "--quiet")
    assert outcome.code == 0, outcome.stderr
    assert "80 rows" in outcome.stdout and "report.html" in outcome.stdout
    saved = json.loads((home.home / "models" / "bc" / "1" / "report.json").read_text())
    assert saved["subject"]["data"].endswith("rows.csv") and saved["subject"]["rows"] == 80


@pytest.mark.parametrize(
    ("drop", "extra", "named"),
    [
        ("mean radius", {}, "missing column(s) mean radius"),
        (None, {"colour": "red"}, "extra column(s) colour"),
        (None, {"mean texture": "soft"}, "column 'mean texture' must be numeric but holds 'soft'"),
    ],
    ids=["missing", "extra", "wrong-type"],
)
def test_evaluate_refuses_rows_that_do_not_fit(
    home: Trained, tmp_path: Path, drop: str | None, extra: dict[str, object], named: str
) -> None:
    outcome = danlu("evaluate", "bc", "--data", str(_rows(tmp_path, drop, **extra)), "--quiet")
    assert outcome.code == 3  # a DataError
    message = " ".join(outcome.stderr.split())
    assert "does not match the model's signature" in message and named in message
    assert "Traceback" not in outcome.stderr + outcome.stdout


def test_bad_set_and_unknown_targets(home: Trained) -> None:
    bad = danlu("evaluate", home.run_id, "--set", "explain.samples=0")
    assert bad.code == 2 and "evaluate.explain.samples" in bad.stderr
    unknown = danlu("evaluate", "nosuchmodel")
    assert unknown.code != 0 and "nosuchmodel" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_report_shows_the_summary_and_opens(home: Trained, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    outcome = danlu("report", "bc", "--open")
    assert outcome.code == 0, outcome.stderr
    assert "test accuracy" in outcome.stdout and "report.html" in outcome.stdout
    assert opened and opened[0].startswith("file://") and opened[0].endswith("report.html")
    as_json = json.loads(danlu("report", "bc:1", "--json").stdout)
    assert as_json["format"] == 1 and Path(as_json["html"]).is_file()


def test_report_makes_a_missing_report(home: Trained) -> None:
    from danlu.pipeline import register_run
    from danlu.store import SqlStore

    store = SqlStore()
    for file in ("report.html", "report.json"):  # a run registered before it was evaluated
        store.artifact_path(home.run_id, file).unlink()
    mv = register_run(store, home.run_id, "bc-plain")
    assert "report.html" not in mv.files
    outcome = danlu("report", "bc-plain")
    assert outcome.code == 0, outcome.stderr
    assert "no report yet" in outcome.stderr
    assert "report.html" in store.get_model_version("bc-plain").files
