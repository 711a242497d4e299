"""Multi-label classification on the task contract: metrics against scikit-learn, thresholds
fitted on validation, and the whole lifecycle on the real MULAN yeast set (train, report,
register, ONNX export, load_model, a real server answering label lists)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

import danlu
from danlu.data import FeatureSchema
from danlu.errors import ConfigError
from danlu.store import SqlStore
from danlu.tasks import MultiLabelTask, get_task

LABELS = ("a", "b", "c", "d")


def _schema(labels=LABELS) -> FeatureSchema:
    return FeatureSchema(
        features=(),
        target="labels",
        task="multilabel",
        classes=labels,
        input_dim=3,
        encoded_names=("x0", "x1", "x2"),
        target_kind="label_sets",
    )


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(LABELS))) < [0.5, 0.3, 0.1, 0.6]).astype(np.float32)
    logits = (y * 2 - 1) * rng.gamma(1.0, 1.5, size=y.shape) + rng.normal(0, 1.5, size=y.shape)
    return logits, y


def test_metrics_match_scikit_learn():
    logits, y = _data()
    got = get_task("multilabel").metrics(logits, y, _schema())
    pred, truth = (logits >= 0).astype(int), y.astype(int)
    assert got["micro_f1"] == pytest.approx(skm.f1_score(truth, pred, average="micro"))
    assert got["macro_f1"] == pytest.approx(
        skm.f1_score(truth, pred, average="macro", zero_division=0)
    )
    assert got["subset_accuracy"] == pytest.approx(skm.accuracy_score(truth, pred))
    assert got["hamming_loss"] == pytest.approx(skm.hamming_loss(truth, pred))
    aucs = [skm.roc_auc_score(truth[:, j], logits[:, j]) for j in range(len(LABELS))]
    assert got["roc_auc_macro"] == pytest.approx(np.mean(aucs))
    assert [r["label"] for r in got["per_label"]] == list(LABELS)
    assert [r["support"] for r in got["per_label"]] == truth.sum(axis=0).tolist()


def test_quick_metrics_agree_with_the_full_ones_at_the_default_threshold():
    logits, y = _data()
    task = get_task("multilabel")
    quick = task.quick_metrics(torch.as_tensor(logits), torch.as_tensor(y), _schema())
    full = task.metrics(logits, y, _schema())
    assert quick["micro_f1"] == pytest.approx(full["micro_f1"])
    assert quick["subset_accuracy"] == pytest.approx(full["subset_accuracy"])


def test_thresholds_fitted_on_validation_maximise_each_labels_f1():
    logits, y = _data(seed=1)
    logits[:, 2] += 1.5  # label c is over-predicted at 0.5: its best threshold is higher
    task = get_task("multilabel")
    decoding = task.fit_decoding(logits, y, _schema())
    assert decoding is not None
    thresholds = np.asarray(decoding["thresholds"])
    assert thresholds.shape == (len(LABELS),) and thresholds[2] > 0.5
    tuned = task.with_decoding(json.loads(json.dumps(decoding)))  # as saved in decoding.json
    scores = 1 / (1 + np.exp(-logits))
    for j in range(len(LABELS)):  # no threshold of the grid does better on that label
        best = max(
            skm.f1_score(y[:, j], scores[:, j] >= t, zero_division=0)
            for t in np.arange(0.05, 1, 0.05)
        )
        assert tuned.metrics(logits, y, _schema())["per_label"][j]["f1"] == pytest.approx(best)
    assert (
        tuned.metrics(logits, y, _schema())["micro_f1"]
        >= task.metrics(logits, y, _schema())["micro_f1"]
    )


def test_predictions_are_label_lists_with_a_score_per_label():
    task = MultiLabelTask(thresholds=[0.5, 0.5, 0.9, 0.5])
    out = task.predict(np.array([[3.0, -3.0, 1.0, 0.0], [-5.0, -5.0, -5.0, -5.0]]), _schema())
    assert out["prediction"].tolist() == [["a", "d"], []]  # c: 0.73 < its threshold 0.9
    assert out["scores"].shape == (2, 4)
    assert task.signature(_schema())["outputs"]["prediction"]["type"] == "labels"


def test_single_label_options_are_refused_with_the_key(tmp_path):
    recipe = {
        "name": "y",
        "data": {"source": "builtin:yeast", "imbalance": {"method": "oversample"}},
        "task": "multilabel",
        "model": {"type": "mlp"},
        "train": {"class_weight": "balanced"},
    }
    with pytest.raises(ConfigError) as err:
        danlu.run(recipe, home=tmp_path)
    assert "data.imbalance.method" in str(err.value) and "train.class_weight" in str(err.value)


@pytest.fixture(scope="module")
def yeast(tmp_path_factory):
    """The example recipe on the real yeast set, trained briefly, reported and registered."""
    home = tmp_path_factory.mktemp("yeast")
    result = danlu.run(
        "examples/yeast_multilabel.yaml",
        overrides=["train.epochs=6", "evaluate.explain.samples=20", "evaluate.bootstrap=200"],
        home=home,
    )
    return home, result


def test_yeast_trains_reports_and_beats_the_label_frequency_baseline(yeast):
    home, result = yeast
    assert result.metrics["micro_f1"] > 0.5  # published MLPs reach ~0.65 on yeast
    report = result.report
    baselines = report.section("baselines").data["rows"]
    by_model = {row["model"]: row for row in baselines}
    assert by_model["danlu model"]["micro_f1"] > by_model["label frequency (dummy)"]["micro_f1"]
    assert "one-vs-rest logistic regression" in by_model
    labels = report.section("labels")
    assert labels is not None and len(labels.data["per_label"]) == 14
    tuned, plain = labels.data["thresholds"]  # the tuned thresholds against 0.5 everywhere
    assert tuned["macro_f1"] >= plain["macro_f1"]
    assert "micro_f1" in report.section("metrics").data["intervals"]
    store = SqlStore(home=home)
    decoding = json.loads(store.artifact_path(result.run_id, "decoding.json").read_text())
    assert len(decoding["thresholds"]) == 14


def test_yeast_is_registered_exported_and_predicts_label_lists(yeast):
    home, _ = yeast
    store = SqlStore(home=home)
    mv = store.get_model_version("yeast", alias="staging")
    export = json.loads(store.model_version_path("yeast", mv.version, "export.json").read_text())
    assert export["status"] == "ok" and export["parity"]["passed"], export
    predictor = danlu.load_model("yeast@staging", store=store)
    from danlu.data import load_source

    raw = load_source("builtin:yeast").frame.drop(columns=["labels"]).head(5)
    out = predictor.predict(raw)
    assert all(isinstance(p, list) for p in out["prediction"])
    assert set().union(*out["prediction"]) <= set(predictor.schema.classes)
    assert out["scores"].shape == (5, 14)
    assert mv.signature["outputs"]["prediction"]["type"] == "labels"


def test_baselines_decide_at_one_half_whatever_the_models_thresholds():
    from sklearn.dummy import DummyClassifier

    x, y = np.zeros((40, 2)), (np.arange(160).reshape(40, 4) % 3 == 0).astype(int)
    dummy = DummyClassifier(strategy="prior").fit(x, y)  # label frequencies 0.35, 0.325 ...
    tuned = MultiLabelTask(thresholds=[0.1, 0.1, 0.9, 0.3])
    outputs = tuned.baseline_outputs(dummy, x, _schema())
    decided = tuned.predict(outputs, _schema())["prediction"]
    assert all(p == [] for p in decided)  # every frequency < 0.5: no label, as at 0.5
    assert np.allclose(1 / (1 + np.exp(-outputs))[0] >= [0.1, 0.1, 0.9, 0.3], False)


def test_yeast_is_served_as_label_lists_with_scores(yeast, tmp_path):
    """A real `danlu serve` on 127.0.0.1: predictions are lists of labels, one score per label,
    and the model's OpenAPI schema says so."""
    import httpx

    from danlu.data import load_source
    from tests.serve.conftest import start_server

    home, _ = yeast
    frame = load_source("builtin:yeast").frame.drop(columns=["labels"]).head(3)
    rows = [{k: float(v) for k, v in row.items()} for row in frame.to_dict("records")]
    with start_server(home, "yeast@staging", log_dir=tmp_path) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            answer = http.post("/v1/models/yeast/predict", json={"rows": rows})
            spec = http.get("/openapi.json").json()
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = danlu.load_model("yeast@staging", store=SqlStore(home=home)).predict(frame)
    assert body["predictions"] == [list(p) for p in expected["prediction"]]
    assert np.allclose(body["scores"], expected["scores"], atol=1e-5)
    assert "scores" in json.dumps(spec) and '"uniqueItems": true' in json.dumps(spec)
