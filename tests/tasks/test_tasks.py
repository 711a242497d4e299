from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

import danlu
from danlu.config import LossConfig
from danlu.errors import ConfigError
from danlu.tasks import get_task
from danlu.testing import tiny_schema


def schema(task, classes=None, mean=None, std=None):
    return tiny_schema(task, classes=classes, target_mean=mean, target_std=std)


def test_classification_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 3))
    y = rng.integers(0, 3, size=200)
    got = get_task("classification").metrics(
        logits, y, schema("classification", classes=("a", "b", "c"))
    )
    pred = logits.argmax(1)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"))
    assert np.array(got["confusion_matrix"]).sum() == 200


def test_binary_auc_uses_the_positive_class():
    logits = np.array([[0.0, 2.0], [0.0, -2.0], [0.0, 1.0], [0.0, -1.0]])
    got = get_task("classification").metrics(
        logits, np.array([1, 0, 1, 0]), schema("classification", classes=(0, 1))
    )
    assert got["roc_auc"] == 1.0 and got["accuracy"] == 1.0


def test_classification_predictions_decode_labels():
    out = get_task("classification").predict(
        np.array([[0.0, 3.0], [5.0, 0.0]]), schema("classification", classes=("no", "yes"))
    )
    assert list(out["prediction"]) == ["yes", "no"]
    assert out["probabilities"].sum(1) == pytest.approx([1.0, 1.0])


def test_regression_metrics_are_in_original_units():
    task = get_task("regression")
    s = schema("regression", mean=100.0, std=10.0)
    y_scaled = np.array([0.0, 1.0, -1.0, 2.0])
    outputs = (y_scaled + 0.5).reshape(-1, 1)  # every prediction 5 units too high
    got = task.metrics(outputs, y_scaled, s)
    assert got["mae"] == pytest.approx(5.0) and got["rmse"] == pytest.approx(5.0)
    quick = task.quick_metrics(
        torch.tensor(outputs, dtype=torch.float32), torch.tensor(y_scaled, dtype=torch.float32), s
    )
    assert quick["mae"] == pytest.approx(5.0, rel=1e-5)
    assert quick["r2"] == pytest.approx(got["r2"], rel=1e-5)
    assert task.predict(outputs, s)["prediction"] == pytest.approx([105, 115, 95, 125])


def test_monitor_modes():
    task = get_task("classification")
    assert task.monitor_mode("val_loss") == "min" and task.monitor_mode("val_accuracy") == "max"
    assert "val_accuracy" in task.monitorable() and "val_r2" in get_task("regression").monitorable()


def test_focal_loss_with_gamma_0_is_cross_entropy_weighted_or_not():
    task = get_task("classification")
    torch.manual_seed(0)
    outputs, y = torch.randn(50, 3), torch.randint(0, 3, (50,))
    w = torch.tensor([1.0, 2.0, 0.5])
    for weights in (None, w):
        focal = task.make_loss(weights, LossConfig(name="focal", gamma=0.0))(outputs, y)
        ce = torch.nn.functional.cross_entropy(outputs, y, weight=weights)
        assert torch.allclose(focal, ce, atol=1e-6)


def test_focal_loss_down_weights_easy_examples():
    loss = get_task("classification").make_loss(None, LossConfig(name="focal", gamma=2.0))
    easy = torch.tensor([[6.0, 0.0]]), torch.tensor([0])
    hard = torch.tensor([[0.0, 0.5]]), torch.tensor([0])
    ce = torch.nn.functional.cross_entropy
    assert loss(*easy) / ce(*easy) < 0.01  # (1 - p)^2 with p ≈ 0.9975
    assert loss(*hard) / ce(*hard) > 0.3


def test_focal_loss_on_regression_is_a_config_error():
    recipe = {"name": "r", "data": {"source": "builtin:diabetes"}, "task": "regression",
              "model": {"type": "mlp"}, "train": {"loss": "focal"}}  # fmt: skip
    with pytest.raises(
        ConfigError, match="train.loss.name: the focal loss needs single-label classes"
    ):
        danlu.run(recipe)
