"""Fairness: groups from a raw column, fairlearn's parity figures, flags and errors."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pandas as pd
import pytest
import torch

from danlu.config import FairnessConfig
from danlu.data import Feature, FeatureSchema
from danlu.errors import DataError
from danlu.evaluate import EvalData
from danlu.evaluate._fairness import fairness_section
from danlu.tasks import get_task


def logits_data(logits, y, frame, classes=(0, 1)) -> EvalData:
    """An EvalData whose 'model' returns its input: the logits are the test rows themselves."""
    k = len(classes)
    names = tuple(f"z{i}" for i in range(k))
    schema = FeatureSchema(
        tuple(Feature(n, "numeric") for n in names), "y", "classification", tuple(classes),
        input_dim=k, encoded_names=names,
    )  # fmt: skip
    x = np.asarray(logits, dtype=np.float32)
    empty = np.zeros((0, k), dtype=np.float32)
    return EvalData(
        model=torch.nn.Identity(), task=get_task("classification"), schema=schema, x=x,
        y=np.asarray(y), frame=frame, x_train=empty, y_train=np.zeros(0, dtype=np.int64),
        x_val=empty, y_val=np.zeros(0, dtype=np.int64),
    )  # fmt: skip


def one_hot_logits(pred, k=2):
    return np.eye(k)[np.asarray(pred)] * 4.0  # (n, k): argmax is pred


def test_figures_match_a_hand_computation():
    y = [0, 1, 0, 1, 0, 1, 1, 0]
    pred = [0, 1, 1, 1, 0, 0, 1, 0]
    frame = pd.DataFrame({"sex": list("ffffmmmm")})
    data = logits_data(one_hot_logits(pred), y, frame, classes=("no", "yes"))
    section = fairness_section(data, FairnessConfig(group="sex"))
    d = section.data
    # f: selected 3 of 4, 3 of 4 right, TPR 2/2, FPR 1/2; m: selected 1 of 4, 3 of 4 right,
    # TPR 1/2, FPR 0/2.
    f, m = d["groups"]
    # each group's accuracy carries its Wilson interval on the group's own rows: 3 of 4 is wide
    assert f.pop("accuracy_ci") == pytest.approx([0.3006, 0.9544], abs=1e-4)
    assert f == {
        "group": "f", "count": 4, "accuracy": 0.75, "selection_rate": 0.75, "recall": 1.0,
        "false_positive_rate": 0.5,
    }  # fmt: skip
    assert (m["selection_rate"], m["recall"], m["false_positive_rate"]) == (0.25, 0.5, 0.0)
    assert d["demographic_parity_difference"] == pytest.approx(0.75 - 0.25)
    assert d["demographic_parity_ratio"] == pytest.approx(0.25 / 0.75)
    assert d["equalized_odds_difference"] == pytest.approx(0.5)  # max(TPR gap 0.5, FPR gap 0.5)
    assert d["headline_gap"] == 0.0 and d["positive_class"] == "yes"
    assert d["within_thresholds"] is False
    assert len(section.flags) == 3  # DP difference, equalized odds, DP ratio; not the accuracy gap
    assert any("0.500, above the threshold 0.10" in f for f in section.flags)
    assert section.summary.startswith("fairness: demographic-parity difference 0.50 > 0.10")
    assert section.summary.endswith("across sex")
    assert any("fewer than 30" in n for n in section.notes)  # 4-row groups are unreliable


def test_loose_thresholds_pass_and_the_summary_says_so():
    y = [0, 1, 0, 1, 0, 1, 0, 1]
    frame = pd.DataFrame({"site": [1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]})
    data = logits_data(one_hot_logits(y), y, frame)  # a perfect model, equal selection rates
    section = fairness_section(data, FairnessConfig(group="site"))
    assert [g["group"] for g in section.data["groups"]] == ["1", "2"]  # 1.0 reads 1
    assert section.data["demographic_parity_ratio"] == 1.0
    assert section.data["within_thresholds"] is True and section.flags == []
    assert section.summary == "fairness within thresholds across site"
    assert "<svg" in next(iter(section.figures.values()))


def test_missing_values_form_their_own_group():
    y = [0, 1] * 6
    frame = pd.DataFrame({"region": ["n", "s", None, "n", "s", np.nan] * 2})
    section = fairness_section(
        logits_data(one_hot_logits(y), y, frame), FairnessConfig(group="region")
    )
    counts = {g["group"]: g["count"] for g in section.data["groups"]}
    assert counts == {"n": 4, "s": 4, "missing": 4}
    assert section.data["groups"][-1]["group"] == "missing"


def test_missing_values_of_a_binned_column_form_their_own_group():
    y = [0, 1] * 6
    frame = pd.DataFrame({"age": [20, 30, 40, 50, np.nan, 60] * 2})
    config = FairnessConfig(group="age", bins=2)
    section = fairness_section(logits_data(one_hot_logits(y), y, frame), config)
    counts = {g["group"]: g["count"] for g in section.data["groups"]}
    assert counts == {"[20, 40)": 4, "[40, 60]": 6, "missing": 2}


def test_the_target_is_not_a_group_column():
    y = [0, 1] * 4
    frame = pd.DataFrame({"sex": list("ffffmmmm")})
    with pytest.raises(DataError, match="'y' is the target"):
        fairness_section(logits_data(one_hot_logits(y), y, frame), FairnessConfig(group="y"))


def test_an_absent_column_is_an_error_with_a_suggestion(make_eval_data):
    data = make_eval_data()
    with pytest.raises(
        DataError, match=r"'mean radus' is not a column.*Did you mean 'mean radius'"
    ):
        fairness_section(data, FairnessConfig(group="mean radus"))
    with pytest.raises(DataError, match=r"'zzz' is not a column.*The columns are: 'mean radius'"):
        fairness_section(data, FairnessConfig(group="zzz"))


def test_a_single_group_is_an_error(make_eval_data):
    data = make_eval_data()
    data = dataclasses.replace(data, frame=data.frame.assign(site="A"))
    with pytest.raises(
        DataError, match=rf"single value 'A' in the {len(data.y)} evaluation rows.*bins"
    ):
        fairness_section(data, FairnessConfig(group="site"))


@pytest.mark.parametrize("bins", [2, 3])
def test_a_numeric_column_is_cut_into_quantile_bins(make_eval_data, bins):
    data = make_eval_data()
    section = fairness_section(data, FairnessConfig(group="mean radius", bins=bins))
    groups = section.data["groups"]
    assert len(groups) == bins
    assert sum(g["count"] for g in groups) == len(data.y)
    assert all(abs(g["count"] - len(data.y) / bins) <= 2 for g in groups)  # quantiles: even
    assert all(re.fullmatch(r"\[[\d.]+, [\d.]+\)", g["group"]) for g in groups[:-1])
    assert groups[-1]["group"].endswith("]")
    radius = data.frame["mean radius"]
    assert groups[-1]["group"].endswith(f"{radius.max():.4g}]")
    assert groups[0]["group"].startswith(f"[{radius.min():.4g},")
    accuracies = [g["accuracy"] for g in groups]
    assert section.data["headline_gap"] == pytest.approx(max(accuracies) - min(accuracies))


def _write_csv(path, fair: bool, n: int = 1500) -> str:
    rng = np.random.default_rng(0)
    group = rng.choice(["A", "B"], size=n)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    if fair:  # the label follows x1 only; the group is noise
        label = (x1 + 0.1 * rng.normal(size=n) > 0).astype(int)
    else:  # the label follows the group: 90% positive in A, 10% in B
        label = (rng.random(n) < np.where(group == "A", 0.9, 0.1)).astype(int)
    pd.DataFrame({"group": group, "x1": x1, "x2": x2, "label": label}).to_csv(path, index=False)
    return str(path)


def test_a_deliberately_unfair_model_is_flagged(make_eval_data, tmp_path):
    source = _write_csv(tmp_path / "unfair.csv", fair=False)
    data = make_eval_data(source, epochs=20, target="label")
    section = fairness_section(data, FairnessConfig(group="group"))
    d = section.data
    rates = {g["group"]: g["selection_rate"] for g in d["groups"]}
    assert rates["A"] > 0.8 and rates["B"] < 0.2
    assert d["demographic_parity_difference"] > 0.6 and d["demographic_parity_ratio"] < 0.25
    assert d["within_thresholds"] is False
    assert any("demographic-parity difference" in f for f in section.flags)
    assert any(
        "demographic-parity ratio" in f and "below the threshold 0.80" in f for f in section.flags
    )
    assert section.summary.startswith("fairness: demographic-parity difference")


def test_a_noise_group_that_is_not_a_feature_is_within_loose_thresholds(make_eval_data, tmp_path):
    source = _write_csv(tmp_path / "fair.csv", fair=True)
    data = make_eval_data(source, epochs=20, target="label", features={"group": "ignore"})
    assert "group" not in data.schema.feature_names and "group" in data.frame.columns
    section = fairness_section(
        data, FairnessConfig(group="group", threshold=0.3, ratio_threshold=0.5)
    )
    assert section.data["within_thresholds"] is True, section.flags
    assert section.summary == "fairness within thresholds across group"
    assert section.data["thresholds"] == {"difference": 0.3, "ratio": 0.5}


def test_multiclass_reports_the_worst_class(make_eval_data):
    data = make_eval_data("builtin:wine", epochs=10)
    section = fairness_section(data, FairnessConfig(group="alcohol", bins=2))
    d = section.data
    per_class = d["per_class"]
    assert set(per_class) == {"0", "1", "2"}
    worst = d["worst_class"]
    for key, pick in (
        ("demographic_parity_difference", max),
        ("demographic_parity_ratio", min),
        ("equalized_odds_difference", max),
    ):
        assert d[key] == pick(v[key] for v in per_class.values())
        assert per_class[worst[key]][key] == d[key]
    # High-alcohol wines are mostly class 0, low ones class 1: parity differs a lot by class.
    assert d["demographic_parity_difference"] > 0.3
    assert {"count", "accuracy", "recall_macro"} <= set(d["groups"][0])
    assert any(f"class '{worst['demographic_parity_difference']}'" in f for f in section.flags)


def test_regression_reports_errors_per_group(make_eval_data):
    data = make_eval_data("builtin:diabetes", "regression")
    section = fairness_section(data, FairnessConfig(group="sex"))
    d = section.data
    assert [g["group"] for g in d["groups"]] == ["1", "2"]
    for g in d["groups"]:
        assert g["mae"] > 0 and g["rmse"] >= g["mae"] and g["r2"] is not None
    assert d["headline"] == "r2"
    assert d["headline_gap"] == pytest.approx(abs(d["groups"][0]["r2"] - d["groups"][1]["r2"]))
    assert d["demographic_parity_difference"] is None and d["equalized_odds_difference"] is None
    assert sum(g["count"] for g in d["groups"]) == len(data.y)
    assert "<svg" in next(iter(section.figures.values()))
