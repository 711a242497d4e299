"""The membership-inference section: the attacks' statistics, an over-fitted model flagged, a
regularised one near chance, and the section in the report's JSON and HTML."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from danlu.config import EvaluateConfig, MembershipConfig, load_recipe
from danlu.errors import ConfigError
from danlu.evaluate import EvalData, build_report
from danlu.evaluate._membership import (
    attack_auc,
    logit_scale,
    membership_section,
    row_losses,
    tpr_at_fpr,
)
from danlu.tasks import get_task

#: an MLP far wider than 130 rows need, trained until it has memorised them
OVERFIT = {"type": "mlp", "hidden": [256, 256], "dropout": 0.0}
OVERFIT_TRAIN = {"epochs": 150, "batch_size": 16}
ONLY_MEMBERSHIP = {
    "bootstrap": 200,
    "baselines": False,
    "training": False,
    "calibration": False,
    "robustness": False,
    "explain": False,
    "cost": False,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``trained(source, task, model, train, split)`` trains once per argument set and returns a
    fresh EvalData on the test split."""
    from danlu.data import prepare_data
    from danlu.store import SqlStore
    from danlu.train import run_training

    cache: dict[str, Any] = {}

    def make(
        source: str, task: str, model: dict[str, Any], train: dict[str, Any], split: dict[str, Any]
    ) -> EvalData:
        key = repr((source, task, model, train, split))
        if key not in cache:
            recipe = load_recipe(
                {
                    "name": "membership-test",
                    "data": {"source": source, "split": {**split, "seed": 0}},
                    "task": task,
                    "model": model,
                    "train": {"checkpoint": {"every": 0}, "seed": 0, **train},
                }
            )
            prepared = prepare_data(recipe.data, recipe.task)
            store = SqlStore(home=tmp_path_factory.mktemp("membership-home"))
            result = run_training(recipe, prepared=prepared, store=store)
            store.close()
            cache[key] = (result, prepared)
        result, prepared = cache[key]
        return EvalData.from_prepared(result.model.eval(), result.task, prepared)

    return make


@pytest.fixture(scope="module")
def noisy_csv(tmp_path_factory):
    """Breast cancer with a quarter of the labels flipped (seeded): a wide MLP memorises the
    flipped training rows, and the flipped held-out rows keep a high loss."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.copy()
    rng = np.random.default_rng(0)
    flip = rng.random(len(frame)) < 0.25
    frame.loc[flip, "target"] = 1 - frame.loc[flip, "target"]
    path = tmp_path_factory.mktemp("noisy") / "noisy.csv"
    frame.to_csv(path, index=False)
    return path


def _overfit_regression(trained) -> EvalData:
    return trained(
        "builtin:diabetes", "regression", OVERFIT, OVERFIT_TRAIN, {"test": 0.4, "val": 0.3}
    )


def _regularised(trained) -> EvalData:
    return trained(
        "builtin:breast_cancer",
        "classification",
        {"type": "mlp", "hidden": [16], "dropout": 0.2},
        {"epochs": 5, "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01}},
        {"test": 0.2, "val": 0.2},
    )


# -- the statistics ------------------------------------------------------------------------------


def test_attack_auc_and_tpr_match_scikit_learn() -> None:
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(3)
    labels = np.r_[np.ones(400, dtype=int), np.zeros(400, dtype=int)]
    scores = rng.normal(size=800) + 0.8 * labels
    scores[:50] = scores[400:450]  # ties between members and non-members count a half
    assert attack_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    fpr, tpr, _ = roc_curve(labels, scores)
    for rate in (0.01, 0.05, 0.2):
        assert tpr_at_fpr(labels, scores, rate) == pytest.approx(tpr[fpr <= rate].max())
    with pytest.raises(ValueError, match="members and non-members"):
        attack_auc(np.ones(5, dtype=int), np.arange(5.0))


def test_row_losses_are_the_tasks_losses_per_row() -> None:
    import torch

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 3)) * 4
    y = np.array([0, 1, 2, 2, 1, 0])
    expected = torch.nn.functional.cross_entropy(
        torch.tensor(logits), torch.tensor(y), reduction="none"
    )
    got = row_losses(get_task("classification"), logits, y)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-10)
    # a confident row's loss stays positive (log1p), so its rank among members still counts
    assert row_losses(get_task("classification"), np.array([[60.0, 0.0]]), np.array([0]))[0] > 0
    values = row_losses(get_task("regression"), np.array([[1.0], [-2.0]]), np.array([0.5, 0.0]))
    np.testing.assert_allclose(values, [0.25, 4.0])
    multi = rng.normal(size=(4, 5))
    hot = (rng.random((4, 5)) > 0.5).astype(np.float32)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(multi), torch.tensor(hot, dtype=torch.float64), reduction="none"
    ).sum(dim=1)
    np.testing.assert_allclose(row_losses(get_task("multilabel"), multi, hot), bce.numpy())
    # φ: larger for a better fit, finite for a loss of 0
    phi = logit_scale(get_task("classification"), np.array([0.0, 1e-9, 0.5, 3.0]))
    assert np.all(np.isfinite(phi)) and np.all(np.diff(phi) < 0)


# -- the audit on trained models -----------------------------------------------------------------


def test_an_overfitted_model_is_told_apart_and_flagged(trained) -> None:
    data = _overfit_regression(trained)
    section = membership_section(data, MembershipConfig(), resamples=200)
    result = section.data
    assert (
        result["members"]
        == result["non_members"]
        == min(len(data.y_train), len(data.y_val) + len(data.y))
    )
    assert result["non_member_source"] == "validation and test rows"
    assert result["mean_loss"]["members"] < 0.1 * result["mean_loss"]["non_members"]
    for attack in ("loss_threshold", "calibrated"):
        auc = result[attack]["auc"]
        assert auc["low"] > 0.6, (attack, auc)
    assert len(section.flags) == 2
    assert "differential privacy (train.privacy)" in section.flags[0]
    assert "evaluate.membership.threshold 0.6" in section.flags[0]
    # a threshold of 1 flags nothing: the lower bound can never be above it
    relaxed = membership_section(data, MembershipConfig(threshold=1.0), resamples=200)
    assert relaxed.flags == []


def test_an_overfitted_classifier_on_noisy_labels_is_flagged(trained, noisy_csv) -> None:
    data = trained(
        str(noisy_csv), "classification", OVERFIT, OVERFIT_TRAIN, {"test": 0.4, "val": 0.3}
    )
    section = membership_section(data, MembershipConfig(), resamples=200)
    loss_auc = section.data["loss_threshold"]["auc"]
    assert loss_auc["low"] > 0.6, loss_auc
    assert section.data["reference"] == "logistic regression"
    assert any("loss threshold attack" in flag for flag in section.flags)


def test_a_regularised_model_is_near_chance_and_not_flagged(trained) -> None:
    data = _regularised(trained)
    section = membership_section(data, MembershipConfig(), resamples=200)
    for attack in ("loss_threshold", "calibrated"):
        auc = section.data[attack]["auc"]
        assert abs(auc["value"] - 0.5) < 0.1, (attack, auc)
        assert auc["low"] < 0.5 < auc["high"], (attack, auc)
    assert section.flags == []


def test_rates_and_intervals_are_ordered_and_counted(trained) -> None:
    data = _regularised(trained)
    section = membership_section(data, MembershipConfig(samples=150, seed=2), resamples=200)
    assert section.data["members"] == section.data["non_members"] == 150
    for attack in ("loss_threshold", "calibrated"):
        for name in ("auc", "tpr_at_1pct_fpr"):
            cell = section.data[attack][name]
            assert 0.0 <= cell["low"] <= cell["high"] <= 1.0 and 0.0 <= cell["value"] <= 1.0
        assert "tpr_at_01pct_fpr" not in section.data[attack]  # fewer than 1,000 non-members
    # no bootstrap: values without intervals
    bare = membership_section(data, MembershipConfig(samples=150, seed=2), resamples=0)
    assert set(bare.data["loss_threshold"]["auc"]) == {"value"}
    assert (
        bare.data["loss_threshold"]["auc"]["value"]
        == section.data["loss_threshold"]["auc"]["value"]
    )


def test_rows_from_a_file_are_not_counted_as_non_members(trained) -> None:
    data = _regularised(trained)
    data.held_out = False  # as for evaluate --data FILE
    section = membership_section(data, MembershipConfig(), resamples=0)
    assert section.data["non_member_pool"] == len(data.y_val)
    assert section.data["non_member_source"] == "validation rows"
    assert any("--data" in note for note in section.notes)


def test_without_training_rows_the_audit_is_skipped(trained) -> None:
    data = _regularised(trained)
    data.x_train, data.y_train = data.x_train[:0], data.y_train[:0]
    section = membership_section(data, MembershipConfig(), resamples=0)
    assert section.data == {"skipped": "fewer than 20 training rows"}
    assert section.flags == [] and "skipped" in section.notes[0]


# -- the report ----------------------------------------------------------------------------------


def test_the_section_is_in_the_report_json_and_html(trained) -> None:
    data = _overfit_regression(trained)
    config = EvaluateConfig(**ONLY_MEMBERSHIP)
    report = build_report(data, config, subject={"run_id": "r"})
    assert [s.key for s in report.sections] == ["metrics", "membership"]
    saved = json.loads(report.to_json())
    section = saved["sections"]["membership"]
    assert section["title"] == "Membership inference"
    assert section["loss_threshold"]["auc"]["low"] > 0.6
    assert section["members"] > 0 and saved["timings"]["membership"] > 0
    assert any(
        f.startswith("Membership inference: the loss threshold attack") for f in saved["flags"]
    )
    assert "membership-inference attack AUC" in saved["summary"]
    page = report.to_html()
    for text in ("Membership inference", "Loss-threshold attack", "TPR at 1% FPR", "<svg"):
        assert text in page, text
    off = build_report(data, EvaluateConfig(**{**ONLY_MEMBERSHIP, "membership": False}), subject={})
    assert off.section("membership") is None


def test_a_bad_threshold_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"evaluate\.membership\.threshold"):
        load_recipe(
            {
                "name": "x",
                "data": {"source": "builtin:iris"},
                "task": "classification",
                "model": {"type": "mlp"},
                "evaluate": {"membership": {"threshold": 0.3}},
            }
        )


# -- text models ---------------------------------------------------------------------------------

TOPICS = {
    "sport": ["match", "goal", "team", "coach"],
    "money": ["bank", "market", "price", "trade"],
    "tech": ["chip", "code", "robot", "cloud"],
}
FILLER = ["the", "a", "of", "today", "new", "big", "was", "and"]


@pytest.mark.parametrize(("numeric", "reference"), [(True, "logistic regression"), (False, None)])
def test_a_text_model_is_audited(tmp_path, numeric: bool, reference: str | None) -> None:
    """Token ids are no feature for the linear reference: it fits the other columns, or falls
    back to the class prior (the dummy) when the text is all there is."""
    import pandas as pd

    from danlu.data import prepare_data
    from danlu.store import SqlStore
    from danlu.train import run_training

    rng = np.random.default_rng(0)
    rows = []
    for i in range(160):
        label = list(TOPICS)[i % 3]
        words = [*rng.choice(FILLER, 4), *rng.choice(TOPICS[label], 2)]
        rows.append({"body": " ".join(rng.permutation(words)), "topic": label})
        if numeric:
            rows[-1]["n"] = float(rng.normal())
    pd.DataFrame(rows).to_csv(tmp_path / "topics.csv", index=False)
    recipe = load_recipe(
        {
            "name": "text-membership",
            "data": {
                "source": str(tmp_path / "topics.csv"),
                "target": "topic",
                "features": {"body": "text"},
                "text": {"max_length": 12},
                "split": {"test": 0.3, "val": 0.15, "seed": 0},
            },
            "task": "classification",
            "model": {"type": "text_cnn", "embedding": 8, "channels": 8, "kernels": [2]},
            "train": {"epochs": 2, "batch_size": 16, "checkpoint": {"every": 0}, "seed": 0},
        }
    )
    prepared = prepare_data(recipe.data, recipe.task, text_models=True)
    store = SqlStore(home=tmp_path / "store")
    result = run_training(recipe, prepared=prepared, store=store)
    store.close()
    data = EvalData.from_prepared(result.model.eval(), result.task, prepared)
    section = membership_section(data, MembershipConfig(), resamples=50)
    assert "skipped" not in section.data
    held = len(prepared.y_val) + len(prepared.y_test)
    assert section.data["members"] == min(len(np.unique(prepared.x_train, axis=0)), held)
    expected = reference or next(iter(data.task.baselines(0)))  # the dummy comes first
    assert section.data["reference"] == expected
    for attack in ("loss_threshold", "calibrated"):
        assert 0.0 <= section.data[attack]["auc"]["value"] <= 1.0
