"""The evaluator and the pipeline's report stage: what is stored where, the report's order and
HTML, temperature scaling end to end, evaluation of stored runs, versions and files, and errors."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import danlu
import danlu.pipeline
from danlu.config import EvaluateConfig, load_recipe
from danlu.data import prepare_data
from danlu.errors import DataError, StoreError
from danlu.evaluate import SECTION_ORDER, build_report, evaluate_model, evaluate_run
from danlu.store import SqlStore

RECIPE = {
    "name": "bc-report",
    "data": {"source": "builtin:breast_cancer", "split": {"test": 0.2, "val": 0.15, "seed": 0}},
    "task": "classification",
    "model": {"type": "mlp", "hidden": [16], "dropout": 0.0},
    "train": {"epochs": 5, "checkpoint": {"every": 0}, "seed": 0},
    "evaluate": {
        "bootstrap": 100,
        "cross_validation": 2,
        "calibration": {"temperature": True, "bins": 10, "min_rows": 50},
        "fairness": {"group": "mean radius", "bins": 2},
        "robustness": {"fgsm": [0.05], "noise": [0.1], "samples": 100},
        "explain": {"samples": 20, "top_k": 1, "steps": 8},
        "cost": {"repeats": 3, "batch": 16},
    },
    "register": {"name": "bc"},
}
#: only the metrics section: for the tests that evaluate the stored model again
METRICS_ONLY = EvaluateConfig(
    bootstrap=0,
    baselines=False,
    training=False,
    calibration=None,
    robustness=None,
    membership=None,
    explain=None,
    cost=None,
)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def piped(tmp_path_factory):
    """One pipeline run of RECIPE (all eight sections, registered) in its own store, and the
    report files as the pipeline stored them (later tests evaluate again and replace them)."""
    home = tmp_path_factory.mktemp("pipeline-home")
    store = SqlStore(home=home)
    started: list[str] = []
    result = danlu.pipeline.run(RECIPE, store=store, on_section=started.append)
    recipe = load_recipe(RECIPE)
    prepared = prepare_data(recipe.data, recipe.task)
    version = store.get_model_version("bc")
    snapshot = {
        "run": {
            f: store.artifact_path(result.run_id, f).read_text()
            for f in ("report.html", "report.json", "calibration.json")
        },
        "version": {
            f: store.model_version_path("bc", version.version, f).read_text()
            for f in ("report.html", "report.json", "calibration.json")
        },
    }
    yield result, store, started, prepared, snapshot
    store.close()


@pytest.fixture(scope="module")
def test_rows(piped) -> pd.DataFrame:
    """The run's test rows with their target, as a user would have them in a file."""
    _, _, _, prepared, _ = piped
    classes = prepared.schema.classes
    target = prepared.schema.target
    return prepared.test_frame.assign(**{target: [classes[i] for i in prepared.y_test]})


# --- the pipeline's report stage --------------------------------------------------------------------


def test_pipeline_stores_the_report_with_the_run_and_the_version(piped) -> None:
    result, store, _, _, snapshot = piped
    names = {a.name for a in store.list_artifacts(result.run_id)}
    assert {"report.html", "report.json", "calibration.json"} <= names
    stored = json.loads(snapshot["run"]["report.json"])
    assert stored == json.loads(result.report.to_json())
    assert stored["subject"]["run_id"] == result.run_id

    version = store.get_model_version("bc")
    assert result.registered is not None and result.registered.version == version.version
    assert {"report.html", "report.json", "calibration.json"} <= set(version.files)
    assert snapshot["version"] == snapshot["run"]  # the version carries the run's report

    run = store.get_run(result.run_id)  # a few report figures as run metrics
    assert run.metrics["ece"] == pytest.approx(result.report.section("calibration").data["ece"])
    cv = result.report.section("cross_validation").data["metrics"]["accuracy"]
    assert run.metrics["cv_accuracy_mean"] == pytest.approx(cv["mean"])
    assert len(store.search_runs("stage = 'cv-fold'")) == 2
    assert {r.parent_id for r in store.search_runs("stage = 'cv-fold'")} == {result.run_id}


def test_report_json_follows_the_section_order_with_timings(piped) -> None:
    result, _, started, _, snapshot = piped
    # calibration runs first (its temperature applies to every later section) ...
    assert started == [
        "calibration",
        "metrics",
        "training",
        "baselines",
        "cross_validation",
        "fairness",
        "robustness",
        "membership",
        "explain",
        "cost",
    ]
    report = json.loads(snapshot["run"]["report.json"])
    # ... but the report shows the sections in SECTION_ORDER (compression: added by the compress
    # stage, after the report; this recipe has none; privacy: DP-trained models only)
    made = [s for s in SECTION_ORDER if s not in ("compression", "privacy")]
    assert list(report["sections"]) == made
    assert list(report["timings"]) == made
    assert all(isinstance(t, (int, float)) and t >= 0 for t in report["timings"].values())
    assert sum(report["timings"].values()) > 0
    assert report["seconds"] >= max(report["timings"].values())
    for key, section in report["sections"].items():
        assert "error" not in section, (key, section.get("error"))
    assert report["flags"] == result.report.flags


def test_report_html_is_self_contained_with_every_title(piped) -> None:
    result, _, _, _, snapshot = piped
    page = snapshot["run"]["report.html"]
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert page.count("<svg") >= 8  # figures are inline
    for section in result.report.sections:
        assert f">{html.escape(section.title)} <span" in page, section.title
    assert html.escape(result.report.summary) in page
    assert result.report.summary.endswith(".")


def test_temperature_is_saved_and_applied_by_load_model(piped, test_rows) -> None:
    result, store, _, prepared, snapshot = piped
    run_file = json.loads(snapshot["run"]["calibration.json"])
    version_file = json.loads(snapshot["version"]["calibration.json"])
    temperature = run_file["temperature"]
    assert version_file["temperature"] == temperature == pytest.approx(result.temperature)
    assert temperature > 0 and temperature != 1.0
    calibration = result.report.section("calibration")
    assert calibration.data["temperature"] == pytest.approx(temperature)

    predictor = danlu.load_model("bc", store=store)
    assert predictor.temperature == pytest.approx(temperature)
    rows = test_rows.drop(columns=[prepared.schema.target])
    proba = predictor.predict(rows)["probabilities"]
    with torch.inference_mode():
        logits = result.model(torch.as_tensor(prepared.x_test)).numpy().astype(np.float64)
    np.testing.assert_allclose(proba, softmax(logits / temperature), rtol=1e-5, atol=1e-6)
    assert not np.allclose(proba, softmax(logits), atol=1e-4)  # the temperature really applies
    assert np.array_equal(proba.argmax(axis=1), logits.argmax(axis=1))

    # the report describes the calibrated model: its log loss is the scaled logits'
    from sklearn.metrics import log_loss

    values = result.report.section("metrics").data["values"]
    expected = log_loss(prepared.y_test, softmax(logits / temperature), labels=[0, 1])
    assert values["log_loss"] == pytest.approx(expected, rel=1e-4)
    fit = calibration.data["temperature_fit"]
    assert fit["kept"] and fit["out_of_fold_improvement"]["low"] > 0  # kept: a real gain
    served = calibration.data["test"]["served"]
    assert served["temperature"] == temperature
    assert served["log_loss"] == pytest.approx(values["log_loss"], rel=1e-5)


def test_the_cli_table_and_the_report_show_the_same_metrics(piped) -> None:
    """`danlu run` prints Result.metrics: the served (temperature-scaled) model's, as the report
    and the run's test_* metrics."""
    result, store, _, _, _ = piped
    assert result.temperature != 1.0
    values = result.report.section("metrics").data["values"]
    assert result.metrics.keys() <= values.keys() and "log_loss" in result.metrics
    for key, value in result.metrics.items():
        assert value == values[key], key
    run = store.get_run(result.run_id)
    assert run.metrics["test_log_loss"] == pytest.approx(values["log_loss"])
    uncalibrated = result.report.section("calibration").data["test"]["uncalibrated"]
    assert uncalibrated["log_loss"] != pytest.approx(values["log_loss"])  # T made a difference


def test_the_report_has_training_curves_from_the_runs_history(piped) -> None:
    result, _, _, _, snapshot = piped
    training = result.report.section("training")
    assert training is not None and training.data["epochs"] == len(result.history) == 5
    assert [row["epoch"] for row in training.data["history"]] == [1, 2, 3, 4, 5]
    lowest = training.data["lowest_val_loss"]
    assert lowest["value"] == min(row["val_loss"] for row in result.history)
    page = snapshot["run"]["report.html"]
    assert "Loss and validation metric per epoch" in page
    body = page.split('id="training"')[1].split("<h2")[0]
    assert "<svg" in body and "Loss per epoch" in body and "Accuracy per epoch" in body
    assert training.summary.startswith("trained 5 epochs, lowest validation loss")
    headers = re.findall(r"<th>([^<]*)</th>", page.split('id="metrics"')[1])
    features = {f.name for f in result.schema.features}
    snake = [h for h in headers if re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)+", h) and h not in features]
    assert not snake, snake


# --- evaluating stored runs and versions ------------------------------------------------------------


def test_evaluate_run_recreates_the_runs_test_metrics(piped) -> None:
    result, store, _, prepared, snapshot = piped
    run = store.get_run(result.run_id)
    sections: list[str] = []
    report = evaluate_run(
        result.run_id, store=store, config=METRICS_ONLY, on_section=sections.append
    )
    assert sections == ["metrics"] and [s.key for s in report.sections] == ["metrics"]
    values = report.section("metrics").data["values"]
    assert values["accuracy"] == pytest.approx(run.metrics["test_accuracy"])
    assert report.subject["run_id"] == result.run_id
    assert report.subject["rows"] == len(prepared.y_test)
    assert report.subject["data"] == "test split of builtin:breast_cancer"
    stored = json.loads(store.artifact_path(result.run_id, "report.json").read_text())
    assert stored == json.loads(report.to_json())  # the new report replaced the run's
    assert len(store.search_runs("stage = 'cv-fold'")) == 2  # no cross-validation asked
    calibration = store.artifact_path(result.run_id, "calibration.json").read_text()
    assert calibration == snapshot["run"]["calibration.json"]  # the saved temperature stays


def test_evaluate_model_attaches_the_report_to_the_version(piped) -> None:
    _, store, _, _, _ = piped
    before = store.get_model_version("bc")
    weights = store.model_version_path("bc", before.version, "model.safetensors").read_bytes()
    report = evaluate_model(f"bc:{before.version}", store=store, config=METRICS_ONLY)
    assert report.subject["model"] == before.ref
    path = store.model_version_path("bc", before.version, "report.json")
    assert json.loads(path.read_text()) == json.loads(report.to_json())
    page = store.model_version_path("bc", before.version, "report.html").read_text()
    assert page == report.to_html()
    after = store.get_model_version("bc")
    assert after.version == before.version and set(before.files) <= set(after.files)
    assert store.model_version_path("bc", before.version, "model.safetensors").read_bytes() == (
        weights
    )


def test_evaluate_run_on_a_file(piped, test_rows, tmp_path) -> None:
    result, store, _, prepared, _ = piped
    path = tmp_path / "rows.csv"
    test_rows.to_csv(path, index=False)
    report = evaluate_run(result.run_id, store=store, config=METRICS_ONLY, data=path)
    assert report.subject["data"] == str(path) and report.subject["rows"] == len(test_rows)
    run = store.get_run(result.run_id)
    values = report.section("metrics").data["values"]
    assert values["accuracy"] == pytest.approx(run.metrics["test_accuracy"])  # the same rows


def _missing(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["mean radius"])


def _extra(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(comment="seen twice")


def _not_numeric(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy().astype({"mean texture": object})
    frame.loc[3, "mean texture"] = "abc"
    return frame


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_missing, r"missing column\(s\) mean radius"),
        (_extra, r"extra column\(s\) comment"),
        (_not_numeric, r"column 'mean texture' must be numeric but holds 'abc' at row 3"),
    ],
    ids=["missing", "extra", "not-numeric"],
)
def test_a_file_that_does_not_fit_the_model_names_the_column(
    piped, test_rows, tmp_path, change, message
) -> None:
    result, store, _, _, _ = piped
    path = tmp_path / "rows.csv"
    change(test_rows).to_csv(path, index=False)
    before = store.get_run(result.run_id).metrics
    with pytest.raises(DataError, match=message):
        evaluate_run(result.run_id, store=store, config=METRICS_ONLY, data=path)
    assert store.get_run(result.run_id).metrics == before


def test_an_unfinished_run_cannot_be_evaluated(tmp_path) -> None:
    store = SqlStore(home=tmp_path)
    run = store.create_run(experiment="bc", name="still-running")
    with pytest.raises(StoreError, match=r"is running; only a finished run can be evaluated"):
        evaluate_run(run.id, store=store)
    store.close()


def test_an_absent_fairness_group_fails_before_any_run(tmp_path: Path) -> None:
    store = SqlStore(home=tmp_path)
    recipe = {**RECIPE, "evaluate": {"fairness": {"group": "mean radiuss"}}}
    with pytest.raises(DataError, match=r"evaluate\.fairness\.group: column 'mean radiuss'"):
        danlu.pipeline.run(recipe, store=store)
    assert store.search_runs() == []
    store.close()


# --- one failing section ----------------------------------------------------------------------------


def _robustness_only() -> EvaluateConfig:
    return EvaluateConfig(
        bootstrap=0,
        baselines=False,
        calibration=None,
        robustness={"noise": [0.1], "samples": 50},
        membership=None,
        explain=None,
        cost=None,
    )


def test_a_crashing_section_becomes_a_flag(make_eval_data, monkeypatch) -> None:
    import danlu.evaluate._robustness as robustness

    def boom(data, config):
        raise RuntimeError("boom")

    monkeypatch.setattr(robustness, "robustness_section", boom)
    report = build_report(make_eval_data(), _robustness_only(), subject={"run_id": "r"})
    assert [s.key for s in report.sections] == ["metrics", "robustness"]
    failed = report.section("robustness")
    assert failed.data == {"error": "RuntimeError: boom"}
    assert report.flags == ["Robustness: this section failed (RuntimeError: boom); see the log"]
    assert report.section("metrics").data["values"]["accuracy"] > 0.5  # the rest still ran
    assert "this section failed" in report.to_html()
    assert json.loads(report.to_json())["sections"]["robustness"]["error"] == "RuntimeError: boom"


def test_a_data_error_in_a_section_propagates(make_eval_data, monkeypatch) -> None:
    import danlu.evaluate._robustness as robustness

    def bad_input(data, config):
        raise DataError("column 'x' is not numeric")

    monkeypatch.setattr(robustness, "robustness_section", bad_input)
    with pytest.raises(DataError, match="column 'x' is not numeric"):
        build_report(make_eval_data(), _robustness_only(), subject={})
