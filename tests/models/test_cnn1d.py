"""model.type: cnn1d: rows viewed as (channels, length), trained, exported to ONNX and served."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from danlu.config import ModelConfig
from danlu.errors import ConfigError
from danlu.models import build_model, check_model_config
from danlu.tasks import get_task
from danlu.testing import tiny_schema


def schema(input_dim: int, image_shape: tuple[int, ...] | None) -> object:
    return tiny_schema(input_dim=input_dim, image_shape=image_shape, classes=(0, 1, 2))


@pytest.mark.parametrize(
    ("input_dim", "shape", "channels"), [(24, None, 1), (24, (24,), 1), (60, (3, 20), 3)]
)
def test_rows_are_viewed_as_channels_by_length(
    input_dim: int, shape: tuple[int, ...] | None, channels: int
) -> None:
    config = ModelConfig(type="cnn1d", channels=[4, 6], kernel_sizes=[4], global_pool="max")
    model = build_model(config, schema(input_dim, shape), get_task("classification"))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv1d)]
    assert [c.in_channels for c in convs] == [channels, 4]
    assert [c.kernel_size for c in convs] == [(4,), (4,)]
    length = input_dim // channels
    # an even kernel keeps the length too
    assert model.features(torch.randn(2, channels, length)).shape == (2, 6, length)
    assert model(torch.randn(5, input_dim)).shape == (5, 3)


def test_images_and_mismatched_shapes_are_refused() -> None:
    task = get_task("classification")
    with pytest.raises(ConfigError, match="model.type: cnn for images"):
        build_model(ModelConfig(type="cnn1d"), schema(64, (1, 8, 8)), task)
    with pytest.raises(ConfigError, match="holds 50 values but the prepared data has 52"):
        build_model(ModelConfig(type="cnn1d"), schema(52, (2, 25)), task)


def test_kernel_sizes_need_one_per_block_or_one() -> None:
    _, issues = check_model_config(
        ModelConfig(type="cnn1d", channels=[4, 4, 4], kernel_sizes=[3, 5])
    )
    assert issues and "one entry per entry of channels" in issues[0].message
    _, issues = check_model_config(ModelConfig(type="cnn1d", chanels=[4]))
    assert issues and issues[0].loc == ("model", "chanels")


def test_basic_motions_trains_exports_and_serves(tmp_path: Path) -> None:
    from danlu.data import load_source
    from danlu.export import export_version, load_model
    from danlu.pipeline import run
    from danlu.serve._pool import ModelPool
    from danlu.serve._types import ServeSettings
    from danlu.store import SqlStore

    home = tmp_path / "home"
    store = SqlStore(home=home)
    recipe = {
        "name": "motions",
        "data": {
            "source": "builtin:basic_motions",  # 6 series of 100 steps per row
            "split": {"by": "column", "column": "split", "val": 0.2},
        },
        "task": "classification",
        "model": {"type": "cnn1d", "channels": [8, 8], "kernel_sizes": [5, 3]},
        "train": {"epochs": 3, "batch_size": 8, "checkpoint": {"every": 0}},
        "register": {"name": "motions", "alias": "production"},
    }
    result = run(recipe, store=store, home=home)
    assert result.schema.image_shape == (6, 100) and result.schema.input_dim == 600
    assert result.data_report["rows"] == {"train": 32, "val": 8, "test": 40}
    assert 0.0 <= result.metrics["accuracy"] <= 1.0
    assert result.registered is not None

    exported = export_version(store, "motions@production")
    assert exported.status == "ok", exported.error
    assert exported.parity is not None and exported.parity["passed"]

    frame = load_source("builtin:basic_motions").frame
    rows = frame[frame["split"] == "test"].drop(columns=["split", "target"]).head(4)
    expected = load_model("motions@production", store=store).predict(rows)["prediction"]
    assert set(expected) <= {"Standing", "Walking", "Running", "Badminton"}

    async def serve() -> list[object]:
        settings = ServeSettings(models=("motions@production",), max_wait_ms=1.0, poll_seconds=0.0)
        pool = ModelPool(lambda: SqlStore(home=home), settings)
        await pool.start()
        try:
            model = pool.route("motions")
            assert model.runtime.name == "onnx"  # the parity-checked export answers
            body = {"rows": [{k: float(v) for k, v in row.items()} for _, row in rows.iterrows()]}
            return list((await model.predict(model.parse(body, 10)))["predictions"])
        finally:
            await pool.stop()

    assert asyncio.run(serve()) == list(expected)
    store.close()
    assert np.isfinite(result.metrics["log_loss"])
