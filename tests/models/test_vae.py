"""The VAE (``model: {type: vae}``): its output layout and terms against torch's own formulas,
deterministic eval-mode outputs, the sampling API and the PNG writer, and the recipes it refuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from danlu.config import load_recipe
from danlu.data import FeatureSchema
from danlu.errors import ConfigError, DataError
from danlu.models import VAESpec, build_vae, sample_images, write_images
from danlu.tasks import get_task
from danlu.train._run import check_recipe


def _schema(side: int = 4) -> FeatureSchema:
    d = side * side
    return FeatureSchema(
        features=(),
        target="target",
        task="generation",
        classes=("a", "b"),
        input_dim=d,
        encoded_names=tuple(f"p{j}" for j in range(d)),
        target_kind="label_sets",
        image_shape=(1, side, side),
    )


def _vae(latent: int = 3, **kwargs):
    torch.manual_seed(0)
    task = get_task("generation")
    model = build_vae(VAESpec(latent=latent, hidden=[12], **kwargs), _schema(), task)
    return model, task


def test_outputs_hold_nll_kl_bound_latent_mean_reconstruction_and_residual():
    model, task = _vae(latent=3)
    x = torch.rand(5, 16)
    model.eval()
    out = model(x)
    assert out.shape == (5, 3 + 3 + 2 * 16) == (5, task.output_dim(_schema()))
    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, std), torch.distributions.Normal(0.0, 1.0)
    ).sum(dim=1)
    assert torch.allclose(out[:, 1], kl, atol=1e-5)
    assert torch.allclose(out[:, 3:6], mu)
    recon = torch.sigmoid(model.decode(mu))
    assert torch.allclose(out[:, 6:22], recon, atol=1e-6)
    assert torch.allclose(out[:, 6:22] + out[:, 22:], x, atol=1e-6)  # the originals come back
    # the reconstruction term averages Bernoulli NLLs over the fixed posterior draws
    z = mu[:, None] + std[:, None] * model.eps[None]  # (5, S, 3)
    logits = model.decode(z)
    nll = F.binary_cross_entropy_with_logits(
        logits, x[:, None].expand_as(logits), reduction="none"
    ).sum(dim=2)
    assert torch.allclose(out[:, 0], nll.mean(dim=1), atol=1e-4)
    assert torch.allclose(model.eps[:8], -model.eps[8:])  # antithetic pairs


def test_eval_outputs_are_deterministic_and_training_ones_are_sampled():
    model, _ = _vae()
    x = torch.rand(4, 16)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    first, second = model(x), model(x)
    assert not torch.allclose(first[:, 0], second[:, 0])  # a new ε each pass
    assert torch.allclose(first[:, 1], second[:, 1])  # KL is analytic


def test_pixels_beyond_the_training_range_are_clipped_to_zero_one():
    model, _ = _vae()
    model.eval()
    x = torch.rand(3, 16)
    wild = x.clone()
    wild[:, 0] = 2.0  # minmax scaling may put a test pixel past the training maximum
    clipped = x.clone()
    clipped[:, 0] = 1.0
    assert torch.allclose(model(wild), model(clipped))


def test_samples_are_seeded_images_in_zero_one():
    model, _ = _vae()
    images = sample_images((model, _schema()), 6, seed=3)
    assert images.shape == (6, 4, 4) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert np.array_equal(images, sample_images((model, _schema()), 6, seed=3))
    assert not np.allclose(images, sample_images((model, _schema()), 6, seed=4))
    assert model.training  # left as it was found
    for n in (0, -1, 10_001, 2.5, True):
        with pytest.raises(ConfigError, match="number of images"):
            sample_images((model, _schema()), n)
    with pytest.raises(ConfigError, match="VAE"):
        sample_images((torch.nn.Linear(16, 2), _schema()), 2)


def test_images_are_written_as_png_files_atomically(tmp_path):
    from PIL import Image

    images = np.linspace(0, 1, 3 * 4 * 4).reshape(3, 4, 4)
    paths = write_images(images, tmp_path / "out" / "deep", zoom=2)
    assert [p.name for p in paths] == ["sample_0000.png", "sample_0001.png", "sample_0002.png"]
    with Image.open(paths[2]) as png:
        assert png.size == (8, 8) and png.mode == "L"
        assert np.asarray(png)[-1, -1] == 255  # the last pixel of the last image is 1.0
    assert sorted(p.name for p in (tmp_path / "out" / "deep").iterdir()) == [
        p.name for p in paths
    ]  # no temporary file left behind
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        write_images(images, tmp_path / "file")
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        write_images(images * 2, tmp_path / "out")
    with pytest.raises(DataError, match="n, H, W"):
        write_images(images[0], tmp_path / "out")
    with pytest.raises(ConfigError, match="prefix"):
        write_images(images, tmp_path / "out", prefix="../up")


def _recipe(**changes):
    recipe = {
        "name": "vae",
        "data": {"source": "builtin:digits", "prepare": {"scale": "minmax"}},
        "task": "generation",
        "model": {"type": "vae", "latent": 2},
    }
    for key, value in changes.items():
        recipe[key] = value
    return recipe


@pytest.mark.parametrize(
    ("changes", "key", "words"),
    [
        ({"model": {"type": "vae", "latent": 0}}, "model.latent", "greater than 0"),
        ({"task": "classification"}, "model.type", "task: generation"),
        ({"model": {"type": "mlp"}}, "model.type", "generative model"),
        ({"data": {"source": "builtin:digits"}}, "data.prepare.scale", "minmax"),
        ({"model": {"type": "vae", "samples": 5}}, "model.samples", "antithetic"),
    ],
)
def test_bad_recipes_name_the_key_and_the_fix(changes, key, words):
    with pytest.raises(ConfigError) as info:
        check_recipe(load_recipe(_recipe(**changes)))
    assert key in str(info.value) and words in str(info.value)


def test_a_vae_is_built_for_task_generation_only():
    with pytest.raises(ConfigError, match="task: generation"):
        build_vae(VAESpec(), _schema(), get_task("regression"))


def test_a_convolutional_vae_mirrors_its_channels_and_needs_divisible_images():
    task = get_task("generation")
    model = build_vae(VAESpec(latent=2, hidden=[8], channels=[3, 5]), _schema(4), task)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [3, 5]
    model.eval()
    x = torch.rand(3, 16)
    out = model(x)
    assert out.shape == (3, 3 + 2 + 32)
    assert torch.allclose(out[:, 5:21] + out[:, 21:], x, atol=1e-6)
    assert sample_images((model, _schema(4)), 2).shape == (2, 4, 4)
    with pytest.raises(ConfigError, match="divisible by 8"):
        build_vae(VAESpec(channels=[2, 2, 2]), _schema(4), task)
    flat = _schema(4).__class__(**{**vars(_schema(4)), "image_shape": None})
    with pytest.raises(ConfigError, match="needs images"):
        build_vae(VAESpec(channels=[2]), flat, task)
