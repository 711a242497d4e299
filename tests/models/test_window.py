"""The forecasting window models: per-window normalisation makes them follow a series' level
and scale; lstm / gru and tcn train through the engine, export to ONNX with parity, register."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import danlu
from danlu.config import DataConfig, ForecastConfig, ModelConfig
from danlu.data import prepare_forecast_data
from danlu.errors import ConfigError
from danlu.models import build_model
from danlu.tasks import get_task


@pytest.fixture(scope="module")
def airline():
    task = get_task("forecasting")
    config = ForecastConfig(time="month", horizon=6, lags=12)
    return prepare_forecast_data(DataConfig(source="builtin:airline"), config, task), task


@pytest.mark.parametrize(
    "model",
    [
        {"type": "mlp", "hidden": [16]},
        {"type": "lstm", "hidden": 8},
        {"type": "gru_alias"},
        {"type": "tcn", "channels": 8, "blocks": 2},
    ],  # fmt: skip
    ids=["mlp", "lstm", "gru", "tcn"],
)
def test_outputs_follow_the_windows_level_and_scale(airline, model):
    data, task = airline
    if model["type"] == "gru_alias":
        model = {"type": "lstm", "cell": "gru", "hidden": 8}
    torch.manual_seed(0)
    net = build_model(ModelConfig.model_validate(model), data.schema, task).eval()
    x = torch.from_numpy(data.x_train[:8])
    with torch.no_grad():
        out = net(x)
        assert out.shape == (8, 6 * 3)  # 6 steps x the 0.1 / 0.5 / 0.9 quantiles
        np.testing.assert_allclose(net(x + 2.5), out + 2.5, atol=1e-4)  # level
        np.testing.assert_allclose(net(3 * x), 3 * out, rtol=1e-3, atol=1e-3)  # scale


def test_window_models_refuse_tabular_data():
    from danlu.testing import tiny_schema

    with pytest.raises(ConfigError, match="forecasts windows of a series"):
        build_model(ModelConfig(type="tcn"), tiny_schema("regression"), get_task("regression"))


@pytest.mark.parametrize(
    "model", [{"type": "lstm", "cell": "gru", "hidden": 8}, {"type": "tcn", "channels": 8}]
)
def test_trained_exported_and_registered(tmp_path, model):
    frame = pd.DataFrame(
        {
            "t": np.arange(80),
            "y": 50 + np.arange(80) * 0.5 + 5 * np.sin(np.arange(80) / 2),
        }
    )
    recipe = {
        "name": "w",
        "task": "forecasting",
        "data": {"source": "unused.csv", "target": "y"},
        "forecast": {"time": "t", "horizon": 4, "lags": 8, "test": 8},
        "model": model,
        "train": {"epochs": 2, "batch_size": 16, "checkpoint": {"every": 0}},
        "register": {"name": "w"},
    }
    result = danlu.run(recipe, data=frame, home=tmp_path)
    mv = result.registered
    assert mv is not None and "model.onnx" in mv.files
    assert mv.signature["forecast"]["lags"] == 8 and mv.signature["outputs"]["quantiles"]
    export = json.loads((tmp_path / "models" / "w" / "1" / "export.json").read_text())
    assert export["parity"]["passed"] and export["parity"]["rows"] == 5
    assert np.isfinite(result.metrics["mase"]) and 0 <= result.metrics["coverage"] <= 1
