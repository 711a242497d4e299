from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import danlu
from danlu.errors import ConfigError, DataError, NotFoundError, StoreError
from danlu.pipeline import recipe_json_schema
from danlu.store import SqlStore
from danlu.testing import wine_recipe
from tests._runs import wait_for_epochs

WINE = wine_recipe()


def runs(home: Path) -> list[str]:
    """Ids of the runs stored under ``home`` (none when the store was never created)."""
    if not (home / "danlu.db").exists():
        return []
    return [r.id for r in SqlStore(home=home).search_runs()]


def test_run_records_everything_in_the_store(tmp_path):
    result = danlu.run(WINE, home=tmp_path)
    store = SqlStore(home=tmp_path)
    run = store.get_run(result.run_id)
    assert run.status == "finished" and run.stage == "train" and run.experiment == "wine"
    assert run.data_fingerprint == result.data_fingerprint
    assert run.recipe is not None and run.recipe["train"]["epochs"] == 4
    assert len(run.recipe_hash or "") == 64
    assert run.packages["torch"] and run.host
    assert run.params["train.epochs"] == "4" and run.params["model.hidden"] == "[16]"
    assert run.metrics["test_accuracy"] == pytest.approx(result.metrics["accuracy"])
    energy_method = run.tags.pop("energy_method")
    assert energy_method in {"rapl", "nvml", "estimate"} and run.tags.pop("energy_detail")
    assert len(run.tags.pop("test_fingerprint")) == 64  # which rows test_* come from
    assert run.tags == {"task": "classification", "model.type": "mlp"}
    assert run.metrics["train_seconds"] > 0 and run.metrics["energy_joules"] > 0
    assert 0 < run.metrics["train_cpu_seconds"]
    history = store.metric_history(result.run_id, "val_loss")
    assert [p.step for p in history] == [1, 2, 3, 4]
    assert [p.value for p in history] == pytest.approx([h["val_loss"] for h in result.history])
    names = {a.name for a in store.list_artifacts(result.run_id)}
    assert names == {
        "recipe.yaml",
        "preprocessing.json",
        "data_report.json",
        "data_quality.json",
        "data_quality.html",
        "model.safetensors",
        "model.json",
        "drift_reference.json",
        "summary.json",
        "checkpoint.safetensors",
        "stages.json",
    }
    stages = json.loads((result.run_dir / "stages.json").read_text())["stages"]
    assert [(s["name"], s["status"]) for s in stages] == [
        ("prepare", "finished"),
        ("train", "finished"),
    ]
    assert stages[0]["artifacts"] == [
        "data_quality.html",
        "data_quality.json",
        "data_report.json",
        "preprocessing.json",
    ]
    assert set(stages[1]["artifacts"]) == {
        "checkpoint.safetensors",
        "drift_reference.json",
        "model.json",
        "model.safetensors",
        "summary.json",
    }
    assert [(s.name, s.seconds) for s in result.stages] == [
        (s["name"], s["seconds"]) for s in stages
    ]
    assert run.metrics["stage_train_seconds"] == pytest.approx(stages[1]["seconds"])
    assert run.metrics["stage_prepare_seconds"] > 0
    for artifact in store.list_artifacts(result.run_id):  # every row points at a real file
        assert store.artifact_path(result.run_id, artifact.name).stat().st_size == artifact.size
    assert not [p for p in result.run_dir.rglob("*") if p.name.endswith(".tmp")]
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["test"] == result.metrics and len(summary["confusion_matrix"]) == 3
    weights = load_file(result.run_dir / "model.safetensors")
    assert torch.equal(weights["0.weight"], result.model.state_dict()["0.weight"])


def test_register_block_registers_and_load_model_predicts(tmp_path):
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame.drop(columns="target")
    result = danlu.run(
        WINE,
        overrides=["train.epochs=20", "register.name=wine", "register.alias=staging"],
        home=tmp_path,
    )
    assert result.registered is not None and result.registered.ref == "wine:1"
    store = SqlStore(home=tmp_path)
    model = danlu.load_model("wine@staging", store=store)
    expected = result.predict(frame.head(10))
    got = model.predict(frame.head(10))
    assert list(got["prediction"]) == list(expected["prediction"])
    assert got["probabilities"] == pytest.approx(expected["probabilities"])
    assert model.predict(frame.head(3).to_dict(orient="records"))["prediction"].shape == (3,)
    assert model.signature["outputs"]["prediction"]["classes"] == [0, 1, 2]
    store.delete_run(result.run_id)  # the registered version keeps its own copy of the files
    assert len(danlu.load_model("wine:1", store=store).predict(frame.head(2))["prediction"]) == 2


def test_load_model_refuses_pickled_weights(tmp_path):
    import pickle

    danlu.run(WINE, overrides=["register.name=wine"], home=tmp_path)
    store = SqlStore(home=tmp_path)
    store.model_version_path("wine", 1, "model.safetensors").write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(StoreError, match="refuses to load pickled"):
        danlu.load_model("wine", store=store)
    with pytest.raises(ConfigError, match="NAME@ALIAS"):
        danlu.load_model("wine@@x", store=store)
    with pytest.raises(NotFoundError, match="Did you mean 'wine'"):
        danlu.load_model("wines", store=store)


def test_result_predicts_raw_rows():
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame
    result = danlu.run(WINE, overrides=["train.epochs=30"])
    out = result.predict(frame.drop(columns="target").head(20))
    assert out["probabilities"].shape == (20, 3)
    assert (out["prediction"] == frame["target"].head(20).to_numpy()).mean() > 0.8
    rows = frame.drop(columns="target").head(2).to_dict(orient="records")
    assert len(result.predict(rows)["prediction"]) == 2


def test_same_seed_same_metrics(tmp_path):
    a = danlu.run(WINE, home=tmp_path)
    b = danlu.run(WINE, home=tmp_path)
    assert a.metrics == b.metrics and a.history == b.history
    assert a.run_id != b.run_id


@pytest.mark.parametrize(
    ("overrides", "error", "fragment"),
    [
        (["data.source=builtin:digitz"], NotFoundError, "digits"),
        (["data.source=/nonexistent/data.csv"], DataError, "/nonexistent/data.csv"),
        (["data.target=label"], DataError, "label"),
        (["model={type: cnn}"], ConfigError, "data.image_shape"),
        (["model.type=transformr"], ConfigError, "model.type"),
        (["model.hiddn=[4]"], ConfigError, "Did you mean 'hidden'"),
        (["train.early_stopping.monitor=val_r2"], ConfigError, "val_accuracy"),
        (
            ["task=regression", "train.class_weight=balanced"],
            ConfigError,
            "need single-label classes",
        ),
        (["train.optimizer.lr=-1"], ConfigError, "train.optimizer.lr"),
        (["train.batch_size=0"], ConfigError, "train.batch_size"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, overrides, error, fragment):
    with pytest.raises(error, match=fragment):
        danlu.run(WINE, overrides=overrides, home=tmp_path)
    assert runs(tmp_path) == []


def test_bad_data_files(tmp_path):
    home = tmp_path / "home"
    cases = {
        "nan_target.csv": (
            pd.DataFrame({"a": [1.0, 2, 3, 4] * 5, "y": [1.0, None, 2, 3] * 5}),
            "regression",
            "missing",
        ),
        "text_target.csv": (
            pd.DataFrame({"a": range(20), "y": ["x", "y"] * 10}),
            "regression",
            "numeric",
        ),
        "one_class.csv": (
            pd.DataFrame({"a": range(20), "y": ["same"] * 20}),
            "classification",
            "at least two classes",
        ),
        "empty.csv": (pd.DataFrame({"a": [], "y": []}), "classification", "zero rows"),
    }
    for name, (frame, task, fragment) in cases.items():
        path = tmp_path / name
        frame.to_csv(path, index=False)
        recipe = {**WINE, "task": task, "data": {"source": str(path), "target": "y"}}
        with pytest.raises(DataError, match=fragment):
            danlu.run(recipe, home=home)
    assert runs(home) == []


def test_csv_with_categoricals_and_missing_values_trains(tmp_path):
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.iloc[:, [0, 1, 2, 3, -1]].copy()
    frame.columns = ["radius", "texture", "perimeter", "area", "diagnosis"]
    frame["size"] = pd.cut(frame["area"], 3, labels=["small", "medium", "large"]).astype(str)
    frame.loc[::7, "texture"] = None
    frame["diagnosis"] = frame["diagnosis"].map({0: "malignant", 1: "benign"})
    path = tmp_path / "cancer.csv"
    frame.to_csv(path, index=False)
    recipe = {
        **WINE,
        "name": "csv",
        "data": {"source": str(path), "target": "diagnosis"},
        "train": {"epochs": 15},
    }
    result = danlu.run(recipe, home=tmp_path / "home")
    assert result.metrics["accuracy"] > 0.8
    assert set(result.schema.classes) == {"benign", "malignant"}
    assert set(result.predict(frame.head(5))["prediction"]) <= {"benign", "malignant"}


def test_resume_continues_a_killed_process_to_the_same_result(tmp_path):
    """A run killed with SIGKILL mid-training resumes from its checkpoint to the same metrics."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        json.dumps(
            {
                **WINE,
                "train": {"epochs": 12, "batch_size": 8, "seed": 1},
                "model": {"type": "mlp", "hidden": [64], "dropout": 0.3},
            }
        )
    )
    home = tmp_path / "home"
    env = {**os.environ, "DANLU_HOME": str(home), "OMP_NUM_THREADS": "1"}
    full = danlu.run(recipe, home=tmp_path / "reference")

    proc = subprocess.Popen(
        [sys.executable, "-m", "danlu", "run", str(recipe), "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run_id = wait_for_epochs(home, proc, 3)  # kill once 3 epochs are stored
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert run_id is not None, "the run never logged 3 epochs"
    store = SqlStore(home=home, heartbeat_timeout=0.5)
    time.sleep(0.6)
    killed = store.get_run(run_id)
    assert killed.status == "interrupted" and "heartbeat" in (killed.error or "")
    assert "summary.json" not in {a.name for a in store.list_artifacts(run_id)}

    resumed = danlu.run(recipe, resume=run_id, home=home)
    assert resumed.run_id == run_id
    assert resumed.metrics == full.metrics
    assert resumed.history == full.history
    assert [p.step for p in store.metric_history(run_id, "train_loss")] == list(range(1, 13))
    assert store.get_run(run_id).status == "finished"


def test_resume_refuses_a_changed_recipe(tmp_path):
    result = danlu.run(WINE, home=tmp_path)
    with pytest.raises(ConfigError, match="train.batch_size"):
        danlu.run(WINE, overrides=["train.batch_size=8"], resume=result.run_id, home=tmp_path)
    extended = danlu.run(WINE, overrides=["train.epochs=6"], resume=result.run_dir, home=tmp_path)
    assert len(extended.history) == 6
    assert SqlStore(home=tmp_path).get_run(result.run_id).params["train.epochs"] == "6"
    with pytest.raises(NotFoundError, match="does not exist"):
        danlu.run(WINE, resume="20200101-000000-abcdef", home=tmp_path)


def test_json_schema_lists_model_options():
    schema = recipe_json_schema()
    assert "train" in schema["properties"]
    variants = schema["$defs"]["ModelConfig"]["anyOf"]
    names = [v["properties"]["type"].get("const") for v in variants]
    assert {"mlp", "cnn"} <= set(names)
    cnn = variants[names.index("cnn")]
    assert "channels" in cnn["properties"]


def test_user_model_by_import_path(tmp_path, monkeypatch):
    module = tmp_path / "my_models.py"
    module.write_text(
        "import torch\n"
        "def build(options, schema, task):\n"
        "    return torch.nn.Linear(schema.input_dim, task.output_dim(schema))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = danlu.run(
        WINE,
        overrides=["model.type=my_models:build", "train.epochs=20", "train.optimizer.lr=0.01"],
        home=tmp_path / "home",
    )
    assert isinstance(result.model, torch.nn.Linear)
    assert result.metrics["accuracy"] > 0.8
    with pytest.raises(ConfigError, match="Cannot import module 'nope'"):
        danlu.run(WINE, overrides=["model.type=nope:build"], home=tmp_path / "home")


def test_a_failure_during_training_marks_the_run_failed(tmp_path, monkeypatch):
    import threading

    from danlu.train import Trainer

    def boom(self, *args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(Trainer, "fit", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        danlu.run(WINE, home=tmp_path)
    store = SqlStore(home=tmp_path)
    [run] = store.search_runs()
    assert run.status == "failed" and "simulated" in (run.error or "")
    assert not [t for t in threading.enumerate() if t.name.startswith("danlu-heartbeat")]
    stages = json.loads(store.artifact_path(run.id, "stages.json").read_text())["stages"]
    assert [(s["name"], s["status"]) for s in stages] == [
        ("prepare", "finished"),
        ("train", "failed"),
    ]
    assert "simulated" in stages[1]["error"]


def test_resume_continues_from_the_stage_that_failed(tmp_path, monkeypatch):
    """Evaluation crashes once after training finished: the resumed run reuses the trained model
    (no epoch runs again, same weights), then makes the report and registers and exports."""
    import danlu.evaluate
    from danlu.train import Trainer, check_recipe

    recipe = {
        **WINE,
        "evaluate": {"bootstrap": 0, "baselines": False, "robustness": False, "explain": False},
        "register": {"name": "wine", "alias": "staging"},
    }
    build_report, fit, checks = danlu.evaluate.build_report, Trainer.fit, []
    crashes = ["evaluation crashed (simulated)"]
    epochs: list[int] = []

    def flaky_report(*args, **kwargs):
        if crashes:
            raise RuntimeError(crashes.pop())
        return build_report(*args, **kwargs)

    def counted_fit(self, *args, **kwargs):
        out = fit(self, *args, **kwargs)
        epochs.append(self.epoch)
        return out

    def counted_check(recipe):
        checks.append(recipe.name)
        return check_recipe(recipe)

    monkeypatch.setattr("danlu.evaluate.build_report", flaky_report)
    monkeypatch.setattr(Trainer, "fit", counted_fit)
    monkeypatch.setattr("danlu.train._run.check_recipe", counted_check)
    with pytest.raises(RuntimeError, match="simulated"):
        danlu.run(recipe, home=tmp_path)
    assert checks == ["wine"]  # the recipe is validated once per run
    store = SqlStore(home=tmp_path)
    [run] = store.search_runs()
    assert run.status == "failed" and "simulated" in (run.error or "")
    stages = json.loads(store.artifact_path(run.id, "stages.json").read_text())["stages"]
    assert [(s["name"], s["status"]) for s in stages] == [
        ("prepare", "finished"),
        ("train", "finished"),
        ("evaluate", "failed"),
    ]
    assert "simulated" in stages[2]["error"]
    assert store.list_models() == []
    weights = load_file(store.artifact_path(run.id, "model.safetensors"))

    resumed = danlu.run(recipe, resume=run.id, home=tmp_path)
    assert epochs == [4]  # training ran once, in the first session
    assert resumed.run_id == run.id and len(resumed.history) == 4
    for name, tensor in resumed.model.state_dict().items():
        assert torch.equal(tensor, weights[name])
    assert resumed.report is not None and resumed.metrics["accuracy"] > 0
    assert [p.step for p in store.metric_history(run.id, "train_loss")] == [1, 2, 3, 4]
    assert store.get_run(run.id).status == "finished"
    stages = json.loads(store.artifact_path(run.id, "stages.json").read_text())["stages"]
    assert [(s["name"], s["status"], s["restored"]) for s in stages] == [
        ("prepare", "finished", False),
        ("train", "finished", True),
        ("evaluate", "finished", False),
        ("register", "finished", False),
    ]
    assert "report.json" in stages[2]["artifacts"]
    assert resumed.registered is not None and resumed.registered.ref == "wine:1"
    files = set(store.get_model_version("wine", alias="staging").files)
    assert {"report.html", "model.safetensors", "export.json"} <= files


def test_run_takes_a_dataframe_and_records_its_fingerprint_and_rows(tmp_path):
    from danlu.data import fingerprint_frame, load_source

    frame = load_source("builtin:wine").frame
    recipe = wine_recipe(epochs=1)
    recipe["data"] = {"target": "target"}  # no data.source: the frame stands in for it
    result = danlu.run(recipe, data=frame, home=tmp_path)
    run = SqlStore(home=tmp_path).get_run(result.run_id)
    assert run.data_fingerprint == fingerprint_frame(frame) == result.data_fingerprint
    assert run.recipe["data"]["source"] == f"dataframe:{fingerprint_frame(frame)[:12]}"
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["rows"]["loaded"] == 178 and sum(summary["rows"]["used"].values()) == 178
    assert run.metrics["rows_loaded"] == 178 and run.metrics["rows_dropped_duplicates"] == 0
    assert run.metrics["rows_test"] == summary["rows"]["used"]["test"]
