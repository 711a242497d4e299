"""Anomaly detection on the task contract: metrics against scikit-learn, the threshold fitted on
validation, the loss that ignores anomalous rows, the two detectors' outputs, bad recipes, and the
whole lifecycle on the digits (train, report, register, ONNX export, load_model, a real server
answering a score and a flag per row)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as skm

import danlu
from danlu.data import FeatureSchema, load_source
from danlu.errors import ConfigError
from danlu.store import SqlStore
from danlu.tasks import AnomalyTask

LABELS = ("bad", "good", "odd")  # "bad" and "odd" are anomalous


def _schema(d: int = 3) -> FeatureSchema:
    return FeatureSchema(
        features=(),
        target="kind",
        task="anomaly",
        classes=LABELS,
        input_dim=d,
        encoded_names=tuple(f"x{j}" for j in range(d)),
        target_kind="label_sets",
    )


def _task(**kwargs) -> AnomalyTask:
    task = AnomalyTask(anomalous=["bad", "odd"], **kwargs)
    task.columns = task._resolve(_schema())
    return task


def _data(n=400, seed=0, share=0.1):
    """Outputs (n, 1 + 3) whose score is higher for anomalous rows, and one-hot labels."""
    rng = np.random.default_rng(seed)
    label = np.where(rng.random(n) < share, rng.choice([0, 2], n), 1)  # 1 = "good"
    y = np.eye(3, dtype=np.float32)[label]
    score = rng.normal(0, 1, n) + 1.5 * (label != 1)
    outputs = np.column_stack([score, rng.random((n, 3))])
    return outputs, y, label != 1


def test_label_values_resolve_to_columns_either_way():
    assert _task().columns == [0, 2]
    normal_given = AnomalyTask(normal=["good"])
    assert normal_given._resolve(_schema()) == [0, 2]


def test_metrics_match_scikit_learn():
    outputs, y, flag = _data()
    task = _task(threshold=1.0)
    got = task.metrics(outputs, y, _schema())
    assert got["auroc"] == pytest.approx(skm.roc_auc_score(flag, outputs[:, 0]))
    assert got["auprc"] == pytest.approx(skm.average_precision_score(flag, outputs[:, 0]))
    flagged = outputs[:, 0] >= 1.0
    assert got["f1"] == pytest.approx(skm.f1_score(flag, flagged))
    assert got["precision"] == pytest.approx(skm.precision_score(flag, flagged))
    assert got["recall"] == pytest.approx(skm.recall_score(flag, flagged))
    k = int(flag.sum())  # default k: the number of anomalous rows
    assert got["k"] == k
    assert got["precision_at_k"] == pytest.approx(flag[np.argsort(-outputs[:, 0])[:k]].mean())
    assert _task(threshold=1.0, k=5).metrics(outputs, y, _schema())["k"] == 5


def test_quick_auroc_and_row_scores_agree_with_the_auroc():
    outputs, y, flag = _data(seed=1)
    task = _task()
    auroc = skm.roc_auc_score(flag, outputs[:, 0])
    quick = task.quick_metrics(torch.as_tensor(outputs), torch.as_tensor(y), _schema())
    assert quick["auroc"] == pytest.approx(auroc)
    assert task.row_scores(outputs, y, _schema()).mean() == pytest.approx(auroc)


def test_contamination_flags_that_share_of_the_normal_validation_rows():
    outputs, y, flag = _data(n=2000, seed=2)
    task = _task(rate=0.05)
    decoding = task.fit_decoding(outputs, y, _schema())
    fitted = task.with_decoding(json.loads(json.dumps(decoding)))  # as saved in decoding.json
    flagged = fitted.predict(outputs, _schema())["prediction"]
    assert flagged[~flag].mean() == pytest.approx(0.05, abs=0.002)
    every = _task(rate=0.05, train_on="all").fit_decoding(outputs, y, _schema())
    assert every["threshold"] > decoding["threshold"]  # high-scored anomalies in the pool
    assert (outputs[:, 0] >= every["threshold"]).mean() == pytest.approx(0.05, abs=0.002)


def test_the_f1_threshold_is_the_best_one_on_the_validation_rows():
    outputs, y, flag = _data(seed=3)
    task = _task(method="f1")
    fitted = task.with_decoding(task.fit_decoding(outputs, y, _schema()))
    best = max(skm.f1_score(flag, outputs[:, 0] >= t) for t in np.unique(outputs[:, 0]))
    assert fitted.metrics(outputs, y, _schema())["f1"] == pytest.approx(best)


def test_the_loss_ignores_anomalous_rows_unless_training_on_all():
    outputs, y, flag = _data(n=64, seed=4)
    scores = torch.tensor(outputs, requires_grad=True)
    _task().make_loss()(scores, torch.as_tensor(y)).backward()
    assert scores.grad is not None
    assert torch.all(scores.grad[torch.as_tensor(flag), 0] == 0)
    assert torch.all(scores.grad[torch.as_tensor(~flag), 0] > 0)
    every = torch.tensor(outputs, requires_grad=True)
    _task(train_on="all").make_loss()(every, torch.as_tensor(y)).backward()
    assert every.grad is not None and torch.all(every.grad[:, 0] > 0)


def test_served_outputs_are_a_flag_and_a_score():
    task = _task(threshold=0.5)
    out = task.predict(np.array([[0.2, 0, 0, 0], [0.9, 0, 0, 0]]), _schema())
    assert out["prediction"].tolist() == [False, True]
    assert out["score"].tolist() == [0.2, 0.9]
    signature = task.signature(_schema())["outputs"]
    assert signature["prediction"]["json_schema"] == {"type": "boolean"}
    assert signature["score"]["json_schema"] == {"type": "number"}


def test_autoencoder_outputs_its_reconstruction_error_per_feature():
    from danlu.models import AutoencoderSpec
    from danlu.models._anomaly import build_autoencoder

    model = build_autoencoder(AutoencoderSpec(hidden=[4, 2]), _schema(d=3), _task()).eval()
    x = torch.randn(5, 3)
    out = model(x)
    assert out.shape == (5, 4)
    with torch.no_grad():
        err = (model.decoder(model.encoder(x)) - x) ** 2
    assert torch.allclose(out[:, 1:], err) and torch.allclose(out[:, 0], err.mean(dim=1))


def test_deep_svdd_has_no_bias_fixes_its_centre_and_outputs_gradient_times_input():
    from danlu.models import DeepSVDDSpec
    from danlu.models._anomaly import build_deep_svdd

    torch.manual_seed(0)
    model = build_deep_svdd(DeepSVDDSpec(hidden=[8, 6], rep_dim=4), _schema(d=3), _task())
    assert not any("bias" in name for name, _ in model.named_parameters())
    first = torch.randn(16, 3)
    with torch.no_grad():
        model.train()(first)  # the first training batch fixes the centre
    assert bool(model.centred)
    centre = model.centre.clone()
    model(torch.randn(16, 3))
    assert torch.equal(model.centre, centre)  # and later batches leave it
    assert torch.all(centre.abs() >= 0.1 - 1e-7)
    x = torch.randn(5, 3, requires_grad=True)
    out = model.eval()(x)
    (grad,) = torch.autograd.grad(out[:, 0].sum(), x)
    assert torch.allclose(out[:, 1:], grad * x, atol=1e-5)


def test_deep_svdd_centre_is_the_mean_initial_output_over_every_training_row():
    """Ruff et al. 2018: c = the mean of the initial network's outputs on the whole training
    set (not on the first batch), coordinates nearer 0 than eps moved to ±eps."""
    from danlu.models import DeepSVDDSpec
    from danlu.models._anomaly import build_deep_svdd

    rows = np.random.default_rng(5).normal(0.5, 1.0, (300, 3)).astype(np.float32)
    task = _task()
    task.centre_rows = rows
    torch.manual_seed(1)
    spec = DeepSVDDSpec(hidden=[8, 6], rep_dim=6, eps=0.05)
    model = build_deep_svdd(spec, _schema(d=3), task)
    assert bool(model.centred)  # fixed at build, before any update
    with torch.no_grad():
        mean = model._represent(torch.as_tensor(rows))[0].mean(dim=0)
    near = mean.abs() < 0.05
    expected = torch.where(near, torch.where(mean < 0, -0.05, 0.05), mean)
    assert torch.allclose(model.centre, expected, atol=1e-6)
    with torch.no_grad():
        first = model._represent(torch.as_tensor(rows[:16]))[0].mean(dim=0)
    assert not torch.allclose(model.centre, first, atol=1e-3)  # not the first batch's mean
    centre = model.centre.clone()
    model.train()(torch.as_tensor(rows[:16]))  # training batches leave it
    assert torch.equal(model.centre, centre)
    small = build_deep_svdd(spec, _schema(d=3), task)  # chunked: the same mean
    small.load_state_dict(model.state_dict())
    small.centred.fill_(False)
    small.init_centre(torch.as_tensor(rows), chunk=7)
    assert torch.allclose(small.centre, model.centre, atol=1e-6)


def test_configure_gives_deep_svdd_the_rows_it_trains_on():
    from danlu.config import load_recipe
    from danlu.train._run import prepare_recipe_data

    recipe = load_recipe(_recipe(model={"type": "deep_svdd", "hidden": [8], "rep_dim": 4}))
    data = prepare_recipe_data(recipe, AnomalyTask())
    task = AnomalyTask().configure(recipe, data)
    normal = ~task.flags(data.y_train)
    assert task.centre_rows is not None and len(task.centre_rows) == normal.sum() < len(normal)
    assert np.array_equal(task.centre_rows, data.x_train[normal])
    every = AnomalyTask().configure(
        load_recipe(_recipe(anomaly={"anomalous": [0], "train_on": "all"})), data
    )
    assert every.centre_rows is not None and len(every.centre_rows) == len(data.x_train)
    assert task.with_decoding({"threshold": 1.0}).centre_rows is None  # not saved with it


# ---- bad recipes --------------------------------------------------------------------------------


def _recipe(**changes):
    recipe = {
        "name": "bc-anomaly",
        "data": {"source": "builtin:breast_cancer", "target": "target"},
        "task": "anomaly",
        "anomaly": {"anomalous": [0]},
        "model": {"type": "autoencoder", "hidden": [4]},
        "train": {"epochs": 1},
        "evaluate": False,
    }
    recipe.update(changes)
    return recipe


@pytest.mark.parametrize(
    ("changes", "key", "words"),
    [
        ({"anomaly": {"anomalous": [0, 1]}}, "anomaly.anomalous", "no training row is normal"),
        ({"anomaly": {"normal": [42]}}, "anomaly.normal", "not a value of the label column"),
        (
            {"anomaly": {"anomalous": [0], "threshold": {"rate": 0.7}}},
            "anomaly.threshold.rate",
            "0.5",
        ),
        ({"anomaly": {"train_on": "normal"}}, "anomaly", "give the label values"),
        ({"anomaly": None}, "anomaly", "needs an anomaly block"),
        ({"model": {"type": "mlp"}}, "model.type", "autoencoder or deep_svdd"),
        ({"task": "classification"}, "anomaly", "applies to task: anomaly only"),
    ],
)
def test_bad_anomaly_recipes_name_the_key_and_a_fix(tmp_path, changes, key, words):
    with pytest.raises(ConfigError) as err:
        danlu.run(_recipe(**changes), home=tmp_path)
    message = str(err.value)
    assert key in message and words in message, message


def test_yahoo_ships_as_rows_of_changes():
    raw = load_source("builtin:yahoo")
    frame = raw.frame
    assert raw.target == "label" and len(frame) == 992 and int(frame["label"].sum()) == 7
    row = frame.iloc[10]  # change_k = x(t) - x(t - k)
    assert row["change_3"] == pytest.approx(row["value"] - frame.iloc[7]["value"])


# ---- the lifecycle on the digits ----------------------------------------------------------------


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The example recipe (digit 0 as the anomaly), trained briefly, reported and registered."""
    home = tmp_path_factory.mktemp("digits-anomaly")
    result = danlu.run(
        "examples/digits_anomaly.yaml",
        overrides=["train.epochs=8", "evaluate.explain.samples=10", "evaluate.bootstrap=100"],
        home=home,
    )
    return home, result


def test_digits_detector_ranks_the_held_out_digit_and_reports_it(digits):
    home, result = digits
    assert result.metrics["auroc"] > 0.7  # one digit held out: well above chance
    assert {"auprc", "precision_at_k", "f1", "threshold"} <= set(result.metrics)
    report = result.report
    rows = {row["model"]: row for row in report.section("baselines").data["rows"]}
    assert {"Isolation Forest", "Local Outlier Factor", "one-class SVM"} <= set(rows)
    scores = report.section("anomaly_scores")
    assert scores is not None and "<svg" in next(iter(scores.figures.values()))
    assert scores.data["anomalous"]["quantiles"]["50%"] > scores.data["normal"]["quantiles"]["50%"]
    drivers = report.section("anomaly_drivers")
    assert drivers is not None and drivers.data["top_rows"][0]["drivers"][0]["feature"]
    decoding = json.loads(
        SqlStore(home=home).artifact_path(result.run_id, "decoding.json").read_text()
    )
    assert decoding["threshold"] == pytest.approx(result.metrics["threshold"])
    assert decoding["anomalous"] == ["0"]


def test_digits_detector_is_exported_and_served_as_a_score_and_a_flag(digits, tmp_path):
    import httpx

    from tests.serve.conftest import start_server

    home, result = digits
    store = SqlStore(home=home)
    mv = store.get_model_version("digits-anomaly", alias="staging")
    export = json.loads(
        store.model_version_path("digits-anomaly", mv.version, "export.json").read_text()
    )
    assert export["status"] == "ok" and export["parity"]["passed"], export
    frame = load_source("builtin:digits").frame.drop(columns=["target"]).head(4)
    expected = danlu.load_model("digits-anomaly@staging", store=store).predict(frame)
    threshold = result.metrics["threshold"]
    assert expected["prediction"].tolist() == (expected["score"] >= threshold).tolist()
    from danlu.export import predict_file

    frame.to_csv(tmp_path / "rows.csv", index=False)  # batch prediction: a column each
    predict_file("digits-anomaly@staging", tmp_path / "rows.csv", tmp_path / "out.csv", store=store)
    written = pd.read_csv(tmp_path / "out.csv")
    assert list(written.columns) == ["prediction", "score"]
    assert written["prediction"].tolist() == expected["prediction"].tolist()
    assert np.allclose(written["score"], expected["score"], rtol=1e-4)
    rows = [{k: float(v) for k, v in row.items()} for row in frame.to_dict("records")]
    with start_server(home, "digits-anomaly@staging", log_dir=tmp_path) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            answer = http.post("/v1/models/digits-anomaly/predict", json={"rows": rows})
            spec = json.dumps(http.get("/openapi.json").json())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["predictions"] == expected["prediction"].tolist()
    assert np.allclose(body["score"], expected["score"], rtol=1e-4)
    assert '"boolean"' in spec and "score" in spec


def test_unlabelled_rows_train_on_all_flag_the_contamination_rate_and_report(tmp_path):
    """Breast cancer without its target, a constant label column (every row normal): no AUROC,
    but a threshold, a served score and flag, and a report whose label-based sections skip."""
    frame = load_source("builtin:breast_cancer").frame.drop(columns=["target"])
    frame["label"] = "unlabelled"
    path = tmp_path / "rows.csv"
    frame.to_csv(path, index=False)
    recipe = _recipe(
        data={"source": str(path), "target": "label"},
        anomaly={"normal": ["unlabelled"], "train_on": "all", "threshold": {"rate": 0.1}},
        evaluate={"bootstrap": 20, "explain": None, "membership": None, "cost": None},
    )
    result = danlu.run(recipe, home=tmp_path / "home")
    metrics = result.metrics
    assert result.metrics["threshold"] > 0
    assert not {"auroc", "auprc", "precision_at_k", "recall", "f1"} & set(metrics), metrics
    out = result.predict(frame.drop(columns=["label"]))
    flagged, score = out["prediction"], out["score"]
    assert 0.02 < flagged.mean() < 0.3  # about the rate (it was fitted on the validation rows)
    assert flagged.tolist() == (score >= metrics["threshold"]).tolist()
    assert 0.02 < metrics["flagged_share"] < 0.3  # the test rows' share flagged
    report = result.report
    for key in ("baselines", "robustness"):  # they compare AUROC: skipped, not failed
        section = report.section(key)
        assert section is not None and not section.flags, (key, section.flags)
        assert "undefined" in section.data["skipped"] and "Skipped" in section.notes[0]
    scores = report.section("anomaly_scores")
    assert scores is not None and "<svg" in next(iter(scores.figures.values()))
    assert scores.data["normal"]["rows"] == 114 and scores.data["anomalous"] == {"rows": 0}
    assert "none is labelled anomalous" in (scores.summary or "")
    drivers = report.section("anomaly_drivers")
    assert drivers is not None and len(drivers.data["features"]) == 10
    assert not [s.key for s in report.sections if s.flags and "failed" in " ".join(s.flags)]


def test_the_resolved_recipe_loads_again_for_resume_and_compress():
    """The run keeps its recipe with every default filled in; it must load again."""
    from danlu.config import load_recipe, recipe_to_dict

    recipe = load_recipe(_recipe(anomaly={"anomalous": [0], "threshold": {"method": "f1"}}))
    again = load_recipe(recipe_to_dict(recipe))
    assert again.anomaly is not None and again.anomaly.threshold.method == "f1"
    assert again.anomaly.threshold.share == 0.05  # contamination's default, unused by f1


def test_tune_and_evaluate_on_a_file_work_for_an_anomaly_recipe(tmp_path, monkeypatch):
    """``danlu tune`` (2 trials, maximising val_auroc) ships the best trial; ``danlu evaluate
    RUN --data FILE`` reports it on labelled rows of a file, baselines included."""
    import yaml

    from tests.cli._runner import danlu as cli

    recipe = _recipe(
        name="bc-anomaly-tune",
        train={"epochs": 2, "seed": 0},
        tune={
            "metric": "val_auroc",
            "trials": 2,
            "sampler": {"name": "random", "seed": 0},
            "space": {"model.hidden": {"choice": [[4], [8, 2]]}},
        },
        register={"name": "bc-anomaly", "alias": "tuned"},
    )
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(recipe))
    monkeypatch.setenv("DANLU_HOME", str(tmp_path / "home"))
    tuned = cli("tune", str(path), "--quiet", "--json")
    assert tuned.code == 0, tuned.stderr
    study = json.loads(tuned.stdout)
    assert study["direction"] == "maximize" and study["counts"]["complete"] == 2, study
    assert study["registered"] == "bc-anomaly:1"
    from danlu.tune import load_study, study_summary

    trials = study_summary(load_study("bc-anomaly-tune", SqlStore(home=tmp_path / "home")))
    values = [row["value"] for row in trials["trials"]]
    assert len(values) == 2 and study["best_value"] == pytest.approx(max(values))  # maximised
    assert 0.5 < study["best_value"] <= 1.0
    rows = load_source("builtin:breast_cancer").frame.sample(120, random_state=0)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    fast = [f"--set={key}=false" for key in ("explain", "membership", "cost", "robustness")]
    data = ("--data", str(tmp_path / "rows.csv"))
    out = cli("evaluate", study["best_run_id"], *data, *fast, "--set=bootstrap=20", "--json")
    assert out.code == 0, out.stderr
    sections = json.loads(out.stdout)["sections"]
    assert {"metrics", "anomaly_scores", "anomaly_drivers", "baselines"} <= set(sections)
    metrics = sections["metrics"]
    assert metrics["rows"] == 120 and 0.5 < metrics["values"]["auroc"] <= 1.0
    assert "Isolation Forest" in {row["model"] for row in sections["baselines"]["rows"]}
    assert not [k for k, s in sections.items() if "failed" in " ".join(s.get("flags", []))]
