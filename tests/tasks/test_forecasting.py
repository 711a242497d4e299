"""The forecasting task on the task contract: output width, MSE or pinball loss, decoding to
original units (log inverted, quantiles uncrossed), metrics, signature and recipe checks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from danlu.errors import ConfigError
from danlu.tasks import get_task
from danlu.tasks._forecast_metrics import forecast_metrics
from danlu.testing import tiny_schema

TASK = get_task("forecasting")


def schema(quantiles=(0.1, 0.5, 0.9), transform="none", horizon=3):
    meta = {"horizon": horizon, "lags": 4, "quantiles": list(quantiles), "transform": transform,
            "frequency": "MS", "season": 12, "mase_scale": 2.0, "known": [], "observed": []}  # fmt: skip
    return replace(
        tiny_schema("regression", target_mean=10.0, target_std=2.0),
        task="forecasting",
        forecast=meta,
    )


def test_output_width_and_loss_follow_the_quantiles():
    quantile, point = schema(), schema(quantiles=())
    task = get_task("forecasting")
    assert task.output_dim(quantile) == 9 and task.quantile_levels == [0.1, 0.5, 0.9]
    loss = task.make_loss()
    y = torch.zeros(2, 3)
    out = torch.ones(2, 9)  # every quantile 1 above the truth
    expected = float(np.mean([(1 - q) * 1.0 for q in (0.1, 0.5, 0.9)]))  # over-forecast cost
    assert loss(out, y).item() == pytest.approx(expected)
    point_task = get_task("forecasting")
    assert point_task.output_dim(point) == 3
    assert point_task.make_loss()(torch.ones(2, 3), y).item() == pytest.approx(1.0)  # MSE
    with pytest.raises(ConfigError, match="train.loss 'focal'"):
        task.make_loss(loss=type("L", (), {"name": "focal"})())


def test_predict_decodes_to_original_units_with_sorted_quantiles():
    s = schema()
    raw = np.array([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, -1.0, -1.0]])  # crossed: 0.1 above 0.9
    got = TASK.predict(raw, s)
    np.testing.assert_allclose(got["prediction"], [[10.0, 10.0, 10.0]])
    np.testing.assert_allclose(got["lower"], [[8.0, 8.0, 8.0]])  # sorted back: 10 - 2
    np.testing.assert_allclose(got["upper"], [[12.0, 12.0, 12.0]])
    assert got["quantiles"].shape == (1, 3, 3)
    logged = TASK.predict(np.zeros((1, 9)), schema(transform="log"))
    np.testing.assert_allclose(logged["prediction"], np.expm1([[10.0] * 3]))


def test_metrics_are_forecast_metrics_in_original_units():
    s = schema()
    rng = np.random.default_rng(0)
    outputs = rng.normal(size=(5, 9))
    y = rng.normal(size=(5, 3))
    got = TASK.metrics(outputs, y, s)
    decoded = np.sort(outputs.reshape(5, 3, 3) * 2 + 10, axis=1)
    expected = forecast_metrics(
        y * 2 + 10, decoded[:, 1], scale=2.0, y_quant=decoded, quantiles=[0.1, 0.5, 0.9]
    )
    assert got == pytest.approx(expected)
    assert TASK.headline == "mase" and TASK.monitor_mode("val_mase") == "min"
    quick = TASK.quick_metrics(torch.from_numpy(outputs), torch.from_numpy(y), s)
    assert quick["mae"] == pytest.approx(got["mae"], rel=0.2)  # quick skips the uncrossing
    assert TASK.baselines(0) == {}
    assert TASK.row_scores(outputs, y, s).shape == (5,)


def test_signature_carries_the_window_settings_and_interval_outputs():
    s = schema()
    sig = TASK.signature(s)
    assert sig["task"] == "forecasting" and sig["forecast"]["lags"] == 4
    outputs = sig["outputs"]
    assert set(outputs) == {"prediction", "lower", "upper", "quantiles"}
    assert outputs["prediction"]["shape"] == [3] and outputs["quantiles"]["shape"] == [3, 3]
    assert set(TASK.output_signature(schema(quantiles=()))) == {"prediction"}
    with pytest.raises(ConfigError, match="not trained with task: forecasting"):
        TASK.output_dim(tiny_schema("regression"))


def test_the_trust_report_of_a_forecaster_has_no_failed_section(tmp_path):
    import pandas as pd

    import danlu

    t = np.arange(72)
    noise = np.random.default_rng(0).normal(scale=0.5, size=len(t))
    frame = pd.DataFrame({"t": t, "y": 20 + 0.3 * t + 3 * np.sin(2 * np.pi * t / 6) + noise})
    recipe = {
        "name": "f",
        "task": "forecasting",
        "data": {"source": "unused.csv", "target": "y"},
        "forecast": {"time": "t", "horizon": 3, "season": 6, "test": 6},
        "model": {"type": "mlp", "hidden": [8]},
        "train": {"epochs": 2, "checkpoint": {"every": 0}},
        "evaluate": True,
    }
    report = danlu.run(recipe, data=frame, home=tmp_path).report
    sections = {s.key: s for s in report.sections}
    assert not [k for k, s in sections.items() if any("failed" in f for f in s.flags)]
    assert sections["metrics"].summary.startswith("MASE")
    assert set(sections["metrics"].data["values"]) >= {"mase", "mape", "smape", "coverage"}
    assert "no row baselines" in sections["baselines"].data["skipped"]


def test_one_test_window_shows_no_collapsed_interval():
    """A single test window resamples to itself: the summary shows the value, not '± 0.000'."""
    from types import SimpleNamespace

    from danlu.evaluate._metrics import _headline_summary
    from danlu.tasks import get_task

    task = get_task("forecasting")
    one = SimpleNamespace(y=np.zeros((1, 12)), classification=False, task=task)
    collapsed = {"low": 0.786, "high": 0.786}
    assert _headline_summary(one, {"mase": 0.786}, collapsed, 0.95) == "MASE 0.786 (1 test row)"
    four = SimpleNamespace(y=np.zeros((4, 12)), classification=False, task=task)
    wide = {"low": 0.7, "high": 0.9}
    assert _headline_summary(four, {"mase": 0.8}, wide, 0.95) == "MASE 0.800 ± 0.100 (4 test rows)"
