from __future__ import annotations

import pytest
import torch

from danlu.config import ModelConfig
from danlu.errors import ConfigError, NotFoundError
from danlu.models import MODELS, build_model, check_model_config
from danlu.tasks import get_task
from danlu.testing import tiny_schema


def schema(input_dim=64, image_shape=(1, 8, 8), classes=tuple(range(10))):
    return tiny_schema(input_dim=input_dim, image_shape=image_shape, classes=classes)


def test_mlp_shapes_and_options():
    model = build_model(
        ModelConfig(type="mlp", hidden=[8, 4], batch_norm=True, activation="gelu", dropout=0.0),
        schema(),
        get_task("classification"),
    )
    assert model(torch.randn(5, 64)).shape == (5, 10)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())


def test_cnn_views_flat_inputs_as_images():
    model = build_model(
        ModelConfig(type="cnn", channels=[4, 8], convs_per_stage=2, pool="avg", hidden=0),
        schema(),
        get_task("classification"),
    )
    assert model(torch.randn(3, 64)).shape == (3, 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 4, 8, 8]


def test_cnn_refuses_tabular_or_mismatched_shapes():
    with pytest.raises(ConfigError, match="needs image-shaped inputs"):
        build_model(
            ModelConfig(type="cnn"),
            schema(input_dim=30, image_shape=None),
            get_task("classification"),
        )
    with pytest.raises(ConfigError, match=r"holds 49 values but the prepared data has 64"):
        build_model(ModelConfig(type="cnn"), schema(image_shape=(7, 7)), get_task("classification"))


def test_regression_head_has_one_output():
    s = tiny_schema("regression", input_dim=10)
    model = build_model(ModelConfig(type="mlp"), s, get_task("regression"))
    assert model(torch.randn(2, 10)).shape == (2, 1)


def test_option_errors_name_the_key_and_the_valid_options():
    _, issues = check_model_config(ModelConfig(type="mlp", hiden=[3], dropout=2.0))
    text = {i.path: i for i in issues}
    assert "Did you mean 'hidden'" in text["model.hiden"].fix
    assert "model.dropout" in text


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(NotFoundError, match=r"Did you mean 'mlp'.* cnn, cnn1d,.* gbdt,.* mlp,"):
        MODELS.get("mpl")
