"""``danlu runs`` (and ``danlu db``) against a real SQLite store built with the store API."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from danlu.cli import _runs
from danlu.store import MetricPoint, SqlStore
from danlu.store._migrate import HEAD
from tests.cli._runner import danlu


class Runs(NamedTuple):
    store: SqlStore
    best: str  # cnn, lr 1e-3, accuracy 0.99
    fast: str  # cnn, lr 1e-2, accuracy 0.985
    mlp: str  # mlp, accuracy 0.95, failed


@pytest.fixture
def runs() -> Runs:
    store = SqlStore()
    ids = []
    for name, model, lr, acc, status in (
        ("cnn-small", "cnn", 1e-3, 0.99, "finished"),
        ("cnn-fast", "cnn", 1e-2, 0.985, "finished"),
        ("mlp", "mlp", 1e-3, 0.95, "failed"),
    ):
        run = store.create_run(
            experiment="digits",
            name=name,
            recipe_hash="ab" * 32,
            data_fingerprint="cd" * 32,
            git_commit="0123456789abcdef0123",
            git_dirty=True,
            packages={"torch": "2.13.0", "numpy": "2.0"},
            host="lab-1",
            tags={"owner": "ana"},
        )
        store.log_params(run.id, {"model.type": model, "train.lr": lr, "train.epochs": 10})
        store.log_metrics(
            run.id,
            [MetricPoint("val_loss", 1.0 - acc + 0.1 * (2 - s), step=s) for s in range(3)]
            + [MetricPoint("test_accuracy", acc, step=2), MetricPoint("test_loss", 1.0 - acc, 2)],
        )
        store.log_artifact(run.id, "model.safetensors", b"weights-" + name.encode())
        store.set_status(run.id, status, error="boom" if status == "failed" else None)
        ids.append(run.id)
    return Runs(store, *ids)


def ls_ids(*args: str) -> list[str]:
    out = danlu("runs", "ls", "--json", *args)
    assert out.code == 0, out.stderr
    return [r["id"] for r in json.loads(out.stdout)]


def test_ls_filter_sort_and_json(runs):
    query = "metrics.test_accuracy > 0.98 and params.model.type = 'cnn'"
    assert ls_ids("--filter", query, "--sort", "-metrics.test_accuracy") == [runs.best, runs.fast]
    assert ls_ids("--filter", query, "--sort", "metrics.test_accuracy") == [runs.fast, runs.best]
    assert ls_ids("--sort", "-metrics.test_accuracy", "--limit", "1") == [runs.best]
    assert set(ls_ids()) == {runs.best, runs.fast, runs.mlp}

    row = json.loads(danlu("runs", "ls", "--json", "-f", "name = 'mlp'").stdout)[0]
    assert row["status"] == "failed" and row["params"]["model.type"] == "mlp"
    assert row["metrics"]["test_accuracy"] == 0.95 and row["duration"] >= 0

    table = danlu("runs", "ls", "--filter", "metrics.val_loss < 1", "--sort", "-metrics.test_loss")
    assert table.code == 0, table.stderr
    header = table.stdout.splitlines()[1]
    for column in (
        "id",
        "experiment",
        "status",
        "started",
        "test_accuracy",
        "val_loss",
        "test_loss",
    ):
        assert column in header
    assert runs.best in table.stdout and "0.9900" in table.stdout and "failed" in table.stdout


@pytest.mark.parametrize(
    "bad",
    [
        "1=1 or name = 'x'",
        "name = 'x' or 1=1",
        "'; drop table runs",
        "name = ''; drop table runs; --",
        "metrics.test_accuracy > 0.9 union select * from runs",
    ],
)
def test_filter_with_sql_fragments_is_refused_and_changes_nothing(runs, bad):
    out = danlu("runs", "ls", "--filter", bad)
    assert out.code == 2
    assert "filter" in out.stderr.lower() or "clause" in out.stderr.lower()
    assert "Traceback" not in out.stderr
    assert len(ls_ids()) == 3  # the runs table is intact


def test_show_prints_attributes_params_metrics_tags_and_artifacts(runs):
    out = danlu("runs", "show", runs.best)
    assert out.code == 0, out.stderr
    for text in (
        runs.best,
        "cnn-small",
        "finished",
        "0123456789ab (dirty)",
        "lab-1",
        "2 recorded",
        "train.lr",
        "test_accuracy",
        "0.9900",
        "owner",
        "model.safetensors",
        "application/vnd.safetensors",
    ):
        assert text in out.stdout, text

    data = json.loads(danlu("runs", "show", runs.mlp, "--json").stdout)
    assert data["status"] == "failed" and data["error"] == "boom"
    assert data["packages"] == {"torch": "2.13.0", "numpy": "2.0"}
    assert data["git_dirty"] is True and data["recipe_hash"] == "ab" * 32
    assert data["metrics"]["val_loss"] == pytest.approx(0.05)  # the latest step's value
    (artifact,) = data["artifacts"]
    assert artifact["name"] == "model.safetensors" and len(artifact["sha256"]) == 64


def test_show_unknown_or_malformed_id(runs):
    missing = danlu("runs", "show", "20200101-000000-abcdef")
    assert missing.code == 4 and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    traversal = danlu("runs", "show", "../../etc")
    assert traversal.code == 5 and "Invalid run id" in traversal.stderr


def test_compare_shows_only_the_params_that_differ(runs):
    data = json.loads(danlu("runs", "compare", runs.best, runs.fast, "--json").stdout)
    assert data["runs"] == [runs.best, runs.fast]
    assert data["params"] == {"train.lr": {runs.best: "0.001", runs.fast: "0.01"}}
    assert set(data["metrics"]) == {"test_accuracy", "test_loss", "val_loss"}
    assert data["best"]["test_accuracy"] == [runs.best]
    assert data["best"]["test_loss"] == [runs.best]  # lower is better for a loss

    every = json.loads(danlu("runs", "compare", runs.best, runs.fast, "--all", "--json").stdout)
    assert set(every["params"]) == {"model.type", "train.lr", "train.epochs"}

    table = danlu("runs", "compare", runs.best, runs.fast, runs.mlp)
    assert table.code == 0, table.stderr
    assert "train.lr" in table.stdout and "model.type" in table.stdout
    assert "train.epochs" not in table.stdout  # the same in every run

    alone = danlu("runs", "compare", runs.best, runs.best)
    assert alone.code == 2 and "at least two" in alone.stderr


def test_rm_refuses_without_yes_when_not_interactive(runs):
    out = danlu("runs", "rm", runs.best)
    assert out.code == 2 and "--yes" in out.stderr
    assert runs.best in ls_ids()


def test_rm_asks_on_a_terminal(runs, monkeypatch):
    monkeypatch.setattr(_runs, "stdin_is_tty", lambda: True)
    declined = danlu("runs", "rm", runs.fast, input="n\n")
    assert declined.code == 1 and runs.fast in ls_ids()
    accepted = danlu("runs", "rm", runs.fast, input="y\n")
    assert accepted.code == 0 and runs.fast not in ls_ids()


def test_rm_yes_deletes_the_run_and_its_artifacts(runs):
    folder = runs.store.artifact_path(runs.best, "model.safetensors").parent
    assert folder.is_dir()
    out = danlu("runs", "rm", runs.best, runs.mlp, "--yes")
    assert out.code == 0, out.stderr
    assert not folder.exists()
    assert ls_ids() == [runs.fast]
    assert danlu("runs", "show", runs.best).code == 4


def test_rm_refuses_a_running_run_and_unknown_ids_before_deleting_anything(runs):
    live = runs.store.create_run(experiment="digits", name="live")
    out = danlu("runs", "rm", live.id, "--yes")
    assert out.code == 5 and "still running" in out.stderr
    out = danlu("runs", "rm", runs.best, "20200101-000000-abcdef", "--yes")
    assert out.code == 4 and runs.best in ls_ids()


def test_export_csv_round_trip(runs, tmp_path):
    out = danlu("runs", "export", "--format", "csv", "--sort", "-metrics.test_accuracy")
    assert out.code == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["id"] for r in rows] == [runs.best, runs.fast, runs.mlp]
    assert rows[0]["params.model.type"] == "cnn" and rows[2]["params.model.type"] == "mlp"
    assert float(rows[1]["metrics.test_accuracy"]) == 0.985
    assert rows[0]["status"] == "finished" and rows[0]["git_dirty"] == "true"
    assert rows[0]["tags.owner"] == "ana" and rows[2]["error"] == "boom"
    header = next(csv.reader(io.StringIO(out.stdout)))
    assert header[:3] == ["id", "experiment", "name"]
    assert header.index("params.train.lr") < header.index("metrics.test_accuracy")

    target = tmp_path / "out" / "runs.csv"
    to_file = danlu("runs", "export", "--format", "csv", "-o", str(target), "--limit", "2")
    assert to_file.code == 0 and to_file.stdout == ""
    assert len(list(csv.DictReader(io.StringIO(target.read_text())))) == 2


def test_export_json_round_trip(runs, tmp_path):
    target = tmp_path / "runs.json"
    out = danlu(
        "runs",
        "export",
        "--format",
        "json",
        "--filter",
        "params.model.type = 'cnn'",
        "--output",
        str(target),
    )
    assert out.code == 0, out.stderr
    rows = json.loads(target.read_text())
    assert {r["id"] for r in rows} == {runs.best, runs.fast}
    by_id = {r["id"]: r for r in rows}
    assert by_id[runs.best]["metrics.test_accuracy"] == 0.99
    assert by_id[runs.fast]["params.train.lr"] == "0.01"
    assert by_id[runs.best]["git_dirty"] is True and by_id[runs.best]["parent_id"] is None
    # The same columns as the CSV export, in the same order.
    as_csv = danlu("runs", "export", "--format", "csv", "-f", "params.model.type = 'cnn'")
    assert list(rows[0]) == next(csv.reader(io.StringIO(as_csv.stdout)))


def test_export_refuses_a_folder_as_output(runs, tmp_path):
    out = danlu("runs", "export", "--format", "json", "--output", str(tmp_path))
    assert out.code == 2 and "is a folder" in out.stderr


def test_db_upgrade_prints_the_revision_and_hides_the_password(monkeypatch, tmp_path):
    out = danlu("db", "upgrade")
    assert out.code == 0, out.stderr
    assert f"schema revision: {HEAD}" in out.stdout
    assert "sqlite:///" in out.stdout and "danlu.db" in out.stdout
    unreachable = "postgresql://ana:s3cret@127.0.0.1:1/danlu"
    monkeypatch.setenv("DANLU_DB_URL", unreachable)
    failed = danlu("db", "upgrade")
    assert failed.code == 5 and "s3cret" not in failed.stderr


def test_the_danlu_entry_point_lists_runs_as_json(runs):
    env = {**os.environ, "DANLU_HOME": str(Path(os.environ["DANLU_HOME"]))}
    out = subprocess.run(
        [sys.executable, "-m", "danlu", "runs", "ls", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert {r["id"] for r in json.loads(out.stdout)} == {runs.best, runs.fast, runs.mlp}


# -- hostile stored text (issue 13) ---------------------------------------------------------------
ESC = "\x1b[2J\x1b]0;pwned\x07"


@pytest.fixture
def hostile() -> tuple[str, str]:
    """Two runs whose stored text tries to drive the terminal or to be Rich markup."""
    store = SqlStore()
    ids = []
    for name in (f"clear{ESC}", "[red]x[/red]"):
        run = store.create_run(experiment=f"exp{ESC}", name=name, tags={f"t{ESC}": f"v{ESC}"})
        store.log_params(run.id, {f"p{ESC}": f"[bold]{ESC}", "lr": 0.1 if ids else 0.2})
        store.log_metrics(run.id, [MetricPoint(f"test_m{ESC}", 1.0), MetricPoint("test_r2", 0.5)])
        store.set_status(run.id, "failed", error=f"boom{ESC}\nsecond line")
        ids.append(run.id)
    return ids[0], ids[1]


def _inert(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text, repr(text)


def test_stored_text_never_reaches_the_terminal_raw(hostile):
    escaped, marked = hostile
    shown = "\\x1b[2J"  # what a reader sees instead of a cleared screen
    for args, expected in (
        (("runs", "ls"), (shown, "[red]x[/red]")),
        (("runs", "ls", "--filter", "metrics.test_r2 > 0"), (shown, "[red]x[/red]")),
        (("runs", "show", escaped), (shown, "[bold]", "second line")),
        (("runs", "show", marked), (shown, "[red]x[/red]", "[bold]")),
        (("runs", "compare", escaped, marked, "--all"), (shown, "[bold]")),
        (("runs", "rm", escaped, "--yes"), (shown,)),
    ):
        out = danlu(*args)
        assert out.code == 0, out.stderr
        _inert(out.stdout + out.stderr)
        for text in expected:
            assert text in out.stdout, (args, text)


def test_errors_quoting_stored_or_typed_text_are_plain(hostile):
    out = danlu("runs", "ls", "--filter", f"name = '[red]x{ESC}")
    assert out.code == 2
    _inert(out.stderr)
    assert "[red]x" in out.stderr


def test_csv_export_neutralises_formulas_but_keeps_numbers():
    store = SqlStore()
    run = store.create_run(
        experiment="exp", name='=HYPERLINK("http://x","y")', tags={"a": "@SUM(1)"}
    )
    store.log_params(
        run.id,
        {"plus": "+cmd", "minus": "-2+3", "tab": "\tx", "cr": "\rx", "mid": "a\r=1+1"}
        | {"lr": -1.5, "big": "-3e-4"},
    )
    store.log_metrics(run.id, [MetricPoint("test_delta", -1.5)])
    out = danlu("runs", "export", "--format", "csv")
    assert out.code == 0, out.stderr
    [row] = list(csv.DictReader(io.StringIO(out.stdout)))
    assert row["name"] == '\'=HYPERLINK("http://x","y")'
    assert row["tags.a"] == "'@SUM(1)"
    assert row["params.plus"] == "'+cmd" and row["params.minus"] == "'-2+3"
    assert row["params.tab"] == "'\tx" and row["params.cr"] == "'\rx"
    assert row["params.mid"] == "a\r=1+1"  # quoted: a reader cannot start a new row at the \r
    assert row["params.lr"] == "-1.5" and row["params.big"] == "-3e-4"  # numbers stay numbers
    assert row["metrics.test_delta"] == "-1.5"
    as_json = json.loads(danlu("runs", "export", "--format", "json").stdout)[0]
    assert as_json["name"] == '=HYPERLINK("http://x","y")'  # JSON keeps the data as it is


def test_compare_warns_when_runs_were_tested_on_different_rows(tmp_path):
    """Every run records a fingerprint of its test rows: runs with another split warn, runs that
    differ only in training settings (or preprocessing) share it; runs without it (older ones)
    are compared by data fingerprint and split settings, and the warning says so."""
    import danlu as api

    iris = {
        "name": "iris",
        "data": {"source": "builtin:iris", "split": {"seed": 0}},
        "task": "classification",
        "model": {"type": "mlp", "hidden": [4]},
        "train": {"epochs": 1},
    }
    a = api.run(iris).run_id
    b = api.run(iris, overrides=["train.optimizer.lr=0.01", "data.prepare.scale=minmax"]).run_id
    c = api.run(iris, overrides=["data.split.seed=1"]).run_id
    store = SqlStore()
    assert len(store.get_run(a).tags["test_fingerprint"]) == 64
    assert store.get_run(a).tags["test_fingerprint"] == store.get_run(b).tags["test_fingerprint"]
    same = json.loads(danlu("runs", "compare", a, b, "--json").stdout)
    assert same["warnings"] == []
    differ = json.loads(danlu("runs", "compare", a, b, c, "--json").stdout)
    [warning] = differ["warnings"]
    assert "tested on different rows" in warning and f"{a} = {b}; {c}" in warning
    table = danlu("runs", "compare", a, c)
    assert table.code == 0 and "warning: These runs were tested on different rows" in table.stderr

    older = []
    for seed in (0, 0, 1):  # runs made before the fingerprint: no test_fingerprint tag
        run = store.create_run(experiment="old", name="old", data_fingerprint="cd" * 32)
        store.log_params(run.id, {"data.split.seed": seed, "data.split.test": 0.2})
        store.log_metrics(run.id, [MetricPoint("test_accuracy", 0.9, step=1)])
        older.append(run.id)
    alike = json.loads(danlu("runs", "compare", *older[:2], "--json").stdout)["warnings"]
    assert len(alike) == 1 and "no test-set fingerprint" in alike[0] and "match" in alike[0]
    [mixed] = json.loads(danlu("runs", "compare", *older, "--json").stdout)["warnings"]
    assert "split settings differ" in mixed and f"{older[0]} = {older[1]}; {older[2]}" in mixed
