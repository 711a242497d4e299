"""``task: anomaly`` on rows with no label column at all: ``data.target`` left out or null."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import danlu
from danlu.config import UNLABELLED_TARGET, UNLABELLED_VALUE, load_recipe, recipe_to_dict
from danlu.data import load_source
from danlu.errors import ConfigError, DataError
from danlu.tasks import AnomalyTask


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> tuple[pd.DataFrame, str]:
    """Breast cancer's 30 features without its target, as a CSV with no label column."""
    frame = load_source("builtin:breast_cancer").frame.drop(columns=["target"])
    path = tmp_path_factory.mktemp("unlabelled") / "features.csv"
    frame.to_csv(path, index=False)
    return frame, str(path)


def _recipe(source: str, **changes):
    recipe = {
        "name": "bc-unlabelled",
        "data": {"source": source},
        "task": "anomaly",
        "model": {"type": "autoencoder", "hidden": [4]},
        "train": {"epochs": 2, "seed": 0},
        "evaluate": False,
    }
    recipe.update(changes)
    return recipe


def test_no_target_means_a_constant_normal_label_and_training_on_all_rows(features):
    recipe = load_recipe(_recipe(features[1]))
    assert recipe.data.target == UNLABELLED_TARGET
    assert recipe.anomaly is not None and recipe.anomaly.normal == [UNLABELLED_VALUE]
    assert recipe.anomaly.train_on == "all" and recipe.anomaly.threshold.method == "contamination"
    again = load_recipe(recipe_to_dict(recipe))  # the stored recipe loads as it was
    assert again.data.target == UNLABELLED_TARGET and again.anomaly == recipe.anomaly
    kept = load_recipe(_recipe(features[1], anomaly={"train_on": "normal"}))
    assert kept.anomaly is not None and kept.anomaly.train_on == "normal"  # given: kept
    raw = load_source(features[1], UNLABELLED_TARGET)
    assert raw.target == UNLABELLED_TARGET and len(raw.frame.columns) == 31
    assert set(raw.frame[UNLABELLED_TARGET]) == {UNLABELLED_VALUE}


def test_a_builtins_own_label_is_dropped_not_used_as_a_feature():
    """``data.target: null`` on breast cancer: unlabelled rows, and its 'target' column (the
    diagnosis) is no feature; ``data.target: target`` still uses it as the label."""
    recipe = load_recipe(_recipe("builtin:breast_cancer", data={"source": "builtin:breast_cancer",
                                                                "target": None}))  # fmt: skip
    assert recipe.data.target == UNLABELLED_TARGET
    raw = load_source("builtin:breast_cancer", UNLABELLED_TARGET)
    assert "target" not in raw.frame.columns and raw.frame.shape == (569, 31)
    labelled = load_recipe(
        _recipe("x", data={"source": "builtin:breast_cancer", "target": "target"},
                anomaly={"anomalous": [0]})
    )  # fmt: skip
    assert labelled.data.target == "target" and labelled.anomaly.anomalous == [0]
    own = load_recipe(_recipe("builtin:breast_cancer", anomaly={"anomalous": [0]}))
    assert own.data.target is None and own.anomaly.anomalous == [0]  # left out + values: its own
    assert AnomalyTask().check_recipe(own) == []
    assert load_source("builtin:breast_cancer", own.data.target).target == "target"


def test_left_out_target_with_label_values_on_a_file_needs_its_target_column(features, tmp_path):
    with pytest.raises(DataError) as err:
        danlu.run(_recipe(features[1], anomaly={"anomalous": [0]}), home=tmp_path)
    assert "has no column named 'target' and data.target is not set" in str(err.value)


@pytest.mark.parametrize(
    ("anomaly", "key", "words"),
    [
        ({"threshold": {"method": "f1"}}, "anomaly.threshold.method", "unlabelled"),
        ({"normal": [0]}, "anomaly.normal", "data.target is not set"),
        ({"anomalous": ["x"]}, "anomaly.anomalous", "data.target is not set"),
    ],
)
def test_label_settings_without_a_label_column_are_refused(features, tmp_path, anomaly, key, words):
    unlabelled = {"source": features[1], "target": None}
    with pytest.raises(ConfigError) as err:
        danlu.run(_recipe(features[1], data=unlabelled, anomaly=anomaly), home=tmp_path)
    message = str(err.value)
    assert key in message and words in message and "data.target to" in message, message


def test_other_tasks_still_need_their_target_column(features, tmp_path):
    with pytest.raises(DataError) as err:
        danlu.run(_recipe(features[1], task="classification", model={"type": "mlp"}),
                  home=tmp_path)  # fmt: skip
    assert "has no column named 'target' and data.target is not set" in str(err.value)


def test_unlabelled_file_trains_serves_predicts_and_evaluates(features, tmp_path, monkeypatch):
    """A CSV with no label column: trained on every row, the contamination threshold, a score and
    a flag per row, ``danlu predict`` and ``danlu evaluate RUN --data`` on the same file, and a
    report whose label-based sections skip with a note."""
    import httpx

    from tests.cli._runner import danlu as cli
    from tests.serve.conftest import start_server

    frame, path = features
    fast = {"bootstrap": 20, "explain": None, "membership": None, "cost": None}
    home = tmp_path / "home"
    register = {"name": "bc-unlabelled", "alias": "staging"}
    recipe = _recipe(path, anomaly={"threshold": {"rate": 0.1}}, evaluate=fast, register=register)
    result = danlu.run(recipe, home=home)
    metrics = result.metrics
    assert metrics["threshold"] > 0 and 0.02 < metrics["flagged_share"] < 0.3
    assert not {"auroc", "auprc", "precision_at_k", "recall", "f1"} & set(metrics), metrics
    out = result.predict(frame)
    assert out["prediction"].tolist() == (out["score"] >= metrics["threshold"]).tolist()
    assert 0.02 < out["prediction"].mean() < 0.3  # about the rate fitted on validation rows
    for key in ("baselines", "robustness"):  # they compare AUROC: skipped with a note
        section = result.report.section(key)
        assert section is not None and "Skipped" in section.notes[0] and not section.flags
    monkeypatch.setenv("DANLU_HOME", str(home))
    predicted = cli("predict", result.run_id, path, "--out", str(tmp_path / "out.csv"))
    assert predicted.code == 0, predicted.stderr
    written = pd.read_csv(tmp_path / "out.csv")
    assert list(written.columns) == ["prediction", "score"] and len(written) == len(frame)
    assert written["prediction"].tolist() == out["prediction"].tolist()
    flags = ("explain", "membership", "cost", "robustness")
    fast_flags = [f"--set={key}=false" for key in flags]
    evaluated = cli("evaluate", result.run_id, "--data", path, *fast_flags, "--set=bootstrap=20",
                    "--json")  # fmt: skip
    assert evaluated.code == 0, evaluated.stderr
    sections = json.loads(evaluated.stdout)["sections"]
    assert sections["metrics"]["rows"] == len(frame)
    assert "auroc" not in sections["metrics"]["values"]
    assert sections["anomaly_scores"]["normal"]["rows"] == len(frame)
    assert "undefined" in sections["baselines"]["skipped"]
    rows = [{k: float(v) for k, v in row.items()} for row in frame.head(5).to_dict("records")]
    with start_server(home, "bc-unlabelled@staging", log_dir=tmp_path) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            answer = http.post("/v1/models/bc-unlabelled/predict", json={"rows": rows})
    assert answer.status_code == 200, answer.text  # served: a flag and a score per row
    body = answer.json()
    assert body["predictions"] == out["prediction"][:5].tolist()
    assert np.allclose(body["score"], out["score"][:5], rtol=1e-4)
