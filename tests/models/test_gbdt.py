"""Gradient-boosted trees end to end: trained by the library, stored as safetensors tables,
registered, served from ONNX-ML trees that agree with the library; model: {type: auto}."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import danlu
from danlu.errors import ConfigError, MissingExtraError, StoreError
from danlu.models._trees import Tree, TreeEnsemble, float32_threshold
from danlu.store import SqlStore
from danlu.train import check_recipe


def recipe(source="builtin:breast_cancer", task="classification", **model):
    return {
        "name": "gbdt-test",
        "data": {"source": source, "split": {"test": 0.2, "val": 0.2, "seed": 0}},
        "task": task,
        "model": {"type": "gbdt", "n_estimators": 40, "early_stopping_rounds": 10, **model},
        "train": {"seed": 0},
    }


@pytest.mark.parametrize("library", ["lightgbm", "sklearn"])
@pytest.mark.parametrize(
    ("source", "task", "metric", "floor"),
    [
        ("builtin:breast_cancer", "classification", "accuracy", 0.85),
        ("builtin:diabetes", "regression", "r2", 0.2),
    ],
)
def test_gbdt_trains_registers_and_serves_what_the_library_predicts(
    library, source, task, metric, floor, tmp_path
):
    import onnxruntime as ort

    spec = {**recipe(source, task, library=library), "register": {"name": "trees"}}
    result = danlu.run(spec, home=tmp_path)
    assert result.metrics[metric] > floor
    rounds = [row["epoch"] for row in result.history]
    assert rounds == list(range(1, len(rounds) + 1)) and 1 <= result.best_epoch <= len(rounds)
    assert "val_loss" in result.history[0] and "train_loss" in result.history[0]
    native = json.loads((result.run_dir / "trees.json").read_text())
    assert native["library"].startswith({"sklearn": "scikit-learn"}.get(library, library))
    assert native["best_round"] == result.best_epoch
    assert native["parity"]["max_abs_diff"] <= native["parity"]["atol"]

    store = SqlStore(home=tmp_path)
    version = store.resolve("trees")
    export = json.loads(store.model_version_path("trees", 1, "export.json").read_text())
    assert export["status"] == "ok" and export["exporter"] == "trees"
    files = sorted(p.name for p in store.model_version_path("trees", 1, "x").parent.iterdir())
    assert "model.safetensors" in files and not any(
        f.endswith((".pkl", ".pt", ".joblib")) for f in files
    )
    weights = store.model_version_path("trees", 1, "model.safetensors").read_bytes()
    assert not weights.startswith(b"\x80") or weights[8:9] == b"{"  # safetensors, not a pickle

    predictor = danlu.load_model("trees", store=store)
    frame = _test_rows(source)
    loaded = predictor.predict(frame)
    session = ort.InferenceSession(store.model_version_path("trees", 1, "model.onnx").read_bytes())
    (served,) = session.run(["output"], {"input": predictor.encode(frame)})
    decoded = predictor.decode(served)
    if task == "classification":
        np.testing.assert_allclose(decoded["probabilities"], loaded["probabilities"], atol=1e-5)
        assert list(decoded["prediction"]) == list(loaded["prediction"])
    else:
        np.testing.assert_allclose(decoded["prediction"], loaded["prediction"], rtol=1e-5)
    assert version.tags["model.type"] == "gbdt"


def _test_rows(source):
    from sklearn import datasets

    loader = {
        "builtin:breast_cancer": datasets.load_breast_cancer,
        "builtin:diabetes": datasets.load_diabetes,
        "builtin:wine": datasets.load_wine,
    }
    frame = loader[source](as_frame=True).frame
    return frame.drop(columns="target").head(64)


def test_trust_report_skips_gradient_methods_for_trees_and_says_why(tmp_path):
    spec = {
        **recipe(library="lightgbm"),
        "evaluate": {
            "robustness": {"fgsm": [0.1], "pgd": [0.1], "noise": [0.2], "samples": 60},
            "explain": {"method": "integrated_gradients", "samples": 12, "top_k": 1},
            "baselines": False,
            "cost": {"repeats": 3, "batch": 8},
        },
    }
    report = danlu.run(spec, home=tmp_path).report
    assert report.section("cost").summary.split(",")[0].endswith(" trees")
    robustness = report.section("robustness")
    assert set(robustness.data["curves"]) == {"noise"}
    assert any("FGSM and PGD were skipped" in note for note in robustness.notes)
    explain = report.section("explain")
    assert explain.data["method"] == "tree_shap"  # exact, from LightGBM's own model
    assert any("integrated_gradients does not apply" in note for note in explain.notes)
    assert len(explain.data["importance"]) == 30 and explain.data["importance"][0]["importance"] > 0


def test_tuning_searches_gbdt_options_and_refits_the_best_round_count(tmp_path):
    from danlu.tune import tune

    spec = {
        **recipe("builtin:diabetes", "regression", library="sklearn"),
        "tune": {
            "metric": "val_r2",
            "direction": "maximize",
            "trials": 2,
            "sampler": {"name": "random", "seed": 0},
            "space": {
                "model.learning_rate": {"loguniform": [0.03, 0.3]},
                "model.num_leaves": {"choice": [4, 15]},
            },
        },
    }
    result = tune(spec, home=tmp_path)
    assert result.best_params and set(result.best_params) == {
        "model.learning_rate",
        "model.num_leaves",
    }
    if result.refit_run_id is not None:  # the refit grows as many rounds as the best trial kept
        refit = SqlStore(home=tmp_path).get_run(result.refit_run_id).recipe
        assert refit["model"]["n_estimators"] == refit["train"]["epochs"] >= 1


def test_auto_trains_each_candidate_and_ships_the_best_on_validation(tmp_path):
    spec = {
        "name": "auto-test",
        "data": {"source": "builtin:diabetes", "split": {"test": 0.2, "val": 0.2, "seed": 0}},
        "task": "regression",
        "model": {
            "type": "auto",
            "candidates": [
                {"type": "mlp", "hidden": [8]},
                {"type": "gbdt", "library": "sklearn", "n_estimators": 30},
            ],
        },
        "train": {"epochs": 2, "seed": 0},
        "evaluate": {
            "baselines": False,
            "cost": False,
            "calibration": False,
            "robustness": False,
            "explain": False,
        },
        "register": {"name": "chosen"},
    }
    result = danlu.run(spec, home=tmp_path)
    selection = result.details["model_selection"]
    scores = [c["validation"] for c in selection["candidates"]]
    assert selection["winner"] == int(np.argmax(scores)) + 1
    winner = selection["candidates"][selection["winner"] - 1]
    store = SqlStore(home=tmp_path)
    run = store.get_run(result.run_id)
    assert run.metrics["candidate1_validation"] == pytest.approx(scores[0])
    assert run.metrics["candidate2_validation"] == pytest.approx(scores[1])
    assert run.tags["model.chosen"] == winner["type"]
    for candidate in selection["candidates"]:  # each a finished child run of this one
        child = store.get_run(candidate["run_id"])
        assert child.parent_id == result.run_id and child.stage == "auto-candidate"
    assert result.metrics["r2"] == pytest.approx(winner["test"], abs=1e-6)
    section = result.report.section("model_selection")
    assert section is not None and len(section.data["candidates"]) == 2
    card = json.loads(store.model_version_path("chosen", 1, "model.json").read_text())
    assert card["type"] == winner["type"]


def test_bad_gbdt_options_are_named_with_a_fix():
    with pytest.raises(ConfigError) as bad:
        check_recipe(danlu.load_recipe(recipe(num_leafs=8, library="catboost")))
    message = str(bad.value)
    assert "model.num_leafs" in message and "num_leaves" in message
    assert "model.library" in message
    multilabel = {**recipe(library="lightgbm"), "task": "multilabel"}
    with pytest.raises(ConfigError, match="gradient-boosted trees support classification"):
        check_recipe(danlu.load_recipe(multilabel))
    with pytest.raises(ConfigError, match="model.subsample"):
        check_recipe(danlu.load_recipe(recipe(library="sklearn", subsample=0.5)))
    with pytest.raises(ConfigError, match=r"model.candidates.1.colsample"):
        auto = {
            **recipe(),
            "model": {
                "type": "auto",
                "candidates": [{"type": "mlp"}, {"type": "gbdt", "colsample": 2}],
            },
        }
        check_recipe(danlu.load_recipe(auto))
    no_validation = {**recipe(), "model": {"type": "auto"}}
    no_validation["data"] = {**no_validation["data"], "split": {"test": 0.2, "val": 0.0}}
    with pytest.raises(ConfigError, match=r"data.split.val"):
        check_recipe(danlu.load_recipe(no_validation))


def test_a_missing_library_names_the_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "xgboost", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"danlu\[gbdt-xgboost\]"):
        danlu.run(recipe(library="xgboost"), home=tmp_path)


def test_xgboost_trees_agree_with_xgboost(tmp_path):
    pytest.importorskip("xgboost", reason="the optional extra danlu[gbdt-xgboost] is not installed")
    result = danlu.run(recipe("builtin:wine", library="xgboost"), home=tmp_path)
    native = json.loads((result.run_dir / "trees.json").read_text())
    assert native["library"].startswith("xgboost") and result.metrics["accuracy"] > 0.8


def test_float32_thresholds_branch_like_the_library_in_float64():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20_000).astype(np.float32)
    t = np.concatenate([rng.normal(size=50), x[:50].astype(np.float64)])  # incl. exact data values
    for strict in (False, True):
        t32 = float32_threshold(t, strict)
        want = x[:, None].astype(np.float64) < t if strict else x[:, None].astype(np.float64) <= t
        assert np.array_equal(x[:, None] <= t32, want)


def test_a_malformed_stored_ensemble_is_refused():
    stump = Tree(
        np.array([0, 0, 0]),
        np.array([0.5, 0, 0]),
        np.array([1, -1, -1]),
        np.array([2, -1, -1]),
        np.array([0.0, -1.0, 1.0]),
    )
    model = TreeEnsemble.from_trees([stump], input_dim=2, output_dim=1)
    assert model(torch.tensor([[0.2, 9.0], [0.9, -9.0]])).flatten().tolist() == [-1.0, 1.0]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["feature"][0] = 7  # a column the model does not have
    with pytest.raises(StoreError, match="outside"):
        TreeEnsemble(2, 1).load_state_dict(state)


def test_a_gbdt_version_is_served_from_its_onnx_trees(tmp_path):
    import httpx

    from danlu.serve import ServeSettings
    from danlu.serve._server import build_app
    from tests.serve.conftest import running_server

    spec = {**recipe("builtin:wine", library="sklearn"), "register": {"name": "wine-trees"}}
    danlu.run(spec, home=tmp_path)
    store = SqlStore(home=tmp_path)
    key = store.create_api_key("predict", name="predict")[1]
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame.drop(columns="target").iloc[::20]
    rows = frame.to_dict(orient="records")
    expected = danlu.load_model("wine-trees", store=store).predict(frame)
    store.close()
    settings = ServeSettings(models=("wine-trees",), poll_seconds=0, max_wait_ms=1.0)
    app = build_app(settings, lambda: SqlStore(home=tmp_path))
    with running_server(app, settings) as (_, url), httpx.Client(base_url=url, timeout=30) as http:
        answer = http.post(
            "/v1/models/wine-trees/predict",
            json={"rows": rows},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [str(p) for p in body["predictions"]] == [str(p) for p in expected["prediction"]]
    served = np.asarray(
        [list(p.values()) if isinstance(p, dict) else p for p in body["probabilities"]]
    )
    np.testing.assert_allclose(served, expected["probabilities"], atol=1e-5)


def test_a_finished_gbdt_run_is_reloaded_not_refitted_on_resume(tmp_path):
    from danlu.config import EvaluateConfig
    from danlu.pipeline import add_report
    from danlu.train import run_training

    store = SqlStore(home=tmp_path)
    trained = run_training(recipe("builtin:diabetes", "regression", library="sklearn"), store=store)
    sections = {"explain": False, "robustness": False, "cost": False}
    result = add_report(trained.run_id, store=store, evaluate=EvaluateConfig(**sections))
    assert [(s.name, s.restored) for s in result.stages][:2] == [
        ("prepare", False),
        ("train", True),
    ]
    assert result.model.n_trees == trained.model.n_trees and result.metrics == trained.metrics
    assert result.report.section("metrics").summary.startswith("R²")


def _explained_report(tmp_path, library, source="builtin:breast_cancer", **evaluate):
    spec = {
        **recipe(source, library=library),
        "evaluate": {"robustness": False, "cost": False, "baselines": False, **evaluate},
        "register": {"name": "trees"},
    }
    return danlu.run(spec, home=tmp_path)


@pytest.mark.parametrize(
    ("library", "source", "file"),
    [
        ("lightgbm", "builtin:breast_cancer", "lightgbm_model.txt"),
        ("xgboost", "builtin:wine", "xgboost_model.json"),
    ],
)
def test_lightgbm_and_xgboost_trees_are_explained_with_exact_treeshap(
    library, source, file, tmp_path
):
    from danlu.evaluate import evaluate_model
    from danlu.models import load_bundle
    from danlu.models._gbdt import tree_contributions

    pytest.importorskip(library)
    result = _explained_report(tmp_path, library, source, explain={"samples": 500, "top_k": 2})
    explain = result.report.section("explain")
    assert explain.data["method"] == "tree_shap" and explain.data["additivity_error"] < 1e-4
    rows = next(note for note in explain.notes if note.startswith("Rows explained"))
    assert "sample" not in rows  # every test row (kernel SHAP stops at 50)
    assert library != "lightgbm" or explain.data["rows"] > 50
    assert any("exact TreeSHAP" in note for note in explain.notes)
    assert explain.data["importance"][0]["importance"] > 0
    assert "boosting round" in result.report.section("training").summary

    store = SqlStore(home=tmp_path)
    raw = store.model_version_path("trees", 1, file).read_bytes()
    assert not raw.startswith(b"\x80")  # the library's text / JSON, never a pickle
    if library == "xgboost":
        assert json.loads(raw)["learner"]["gradient_booster"]["model"]["trees"]
    else:
        assert raw.startswith(b"tree\n")
    # the values sum to the stored trees' raw output on real rows, in danlu's encoded columns
    bundle = load_bundle(store.model_reader(store.resolve("trees")), "trees")
    x = bundle.encode(_test_rows(source))
    contrib = tree_contributions(library, raw, x)  # (n, P, D + 1)
    assert contrib.shape[2] == x.shape[1] + 1 == bundle.schema.input_dim + 1
    features = {row["feature"] for row in explain.data["importance"]}
    assert features == set(bundle.schema.feature_names)  # danlu's features, not f0, f1 ...
    with torch.inference_mode():
        logits = bundle.model(torch.as_tensor(x)).double().numpy()
    want = logits[:, 1:2] - logits[:, :1] if logits.shape[1] == 2 else logits
    np.testing.assert_allclose(contrib.sum(axis=2), want, atol=1e-4)
    # `danlu evaluate` on the registered version finds the stored model too
    again = evaluate_model("trees", store=store, config=_explain_only())
    assert again.section("explain").data["method"] == "tree_shap"


def _explain_only():
    from danlu.config import EvaluateConfig

    return EvaluateConfig(
        explain={"samples": 20, "top_k": 1}, robustness=False, cost=False, baselines=False
    )


def test_sklearn_trees_keep_kernel_shap_and_say_why_and_wording_fits_trees(tmp_path):
    spec = {
        **recipe(library="sklearn", n_estimators=1, learning_rate=0.01),
        "evaluate": {
            "explain": {"samples": 4, "top_k": 1},
            "robustness": False,
            "cost": False,
        },
    }
    report = danlu.run(spec, home=tmp_path).report
    explain = report.section("explain")
    assert explain.data["method"] == "kernel_shap" and "additivity_error" not in explain.data
    assert any("no safe (non-pickle) model format" in note for note in explain.notes)
    training = report.section("training")
    assert training.summary.startswith("trained 1 boosting round,")
    assert "epoch" not in training.summary
    flags = report.section("baselines").flags  # one round at a tiny rate: barely a model
    assert flags and "the model does not earn its keep" in flags[0]
    assert all("neural" not in flag for flag in flags)


def test_a_reloaded_lightgbm_run_still_explains_with_treeshap(tmp_path):
    from danlu.pipeline import add_report
    from danlu.train import run_training

    store = SqlStore(home=tmp_path)
    trained = run_training(recipe(library="lightgbm"), store=store)
    assert (trained.run_dir / "lightgbm_model.txt").is_file()
    result = add_report(trained.run_id, store=store, evaluate=_explain_only())
    assert dict((s.name, s.restored) for s in result.stages)["train"] is True
    explain = result.report.section("explain")
    assert explain.data["method"] == "tree_shap" and explain.data["additivity_error"] < 1e-4
