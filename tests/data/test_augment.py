"""Augmentation: each step does what it says, is seeded, fits the data, and never touches evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sklearn.datasets import load_digits

import danlu
from danlu.config import AugmentStep, load_recipe
from danlu.data import Augmenter, check_augment, prepare_data
from danlu.errors import ConfigError, DataError
from danlu.train import Callback

SHAPE = (1, 8, 8)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return torch.tensor(load_digits().data[:32] / 16.0, dtype=torch.float32)  # (32, 64)


def _aug(seed: int = 0, **step: object) -> Augmenter:
    return Augmenter([AugmentStep(**step)], SHAPE, seed=seed)


def _centre_of_mass(x: torch.Tensor) -> torch.Tensor:
    img = x.reshape(-1, 8, 8)
    cols = torch.arange(8.0)
    mass = img.sum(dim=(1, 2))
    return (img.sum(dim=1) * cols).sum(dim=1) / mass  # (B,) horizontal centre


def test_hflip_with_p_1_mirrors_every_image(digits):
    out, mix = _aug(hflip=True, p=1.0)(digits, step=0)
    assert mix is None
    assert torch.equal(out.reshape(-1, 8, 8), digits.reshape(-1, 8, 8).flip(-1))


def test_rotation_keeps_shape_and_changes_pixels_but_not_total_ink_much(digits):
    out, _ = _aug(rotate=30)(digits, step=0)
    assert out.shape == digits.shape
    assert not torch.allclose(out, digits)
    ratio = out.sum(dim=1) / digits.sum(dim=1)
    assert torch.all((ratio > 0.6) & (ratio < 1.4))  # a warp moves ink, it does not erase it


def test_tiny_warps_are_close_to_identity(digits):
    out, _ = _aug(rotate=0.01)(digits, step=0)
    assert torch.allclose(out, digits, atol=1e-2)


def test_shift_moves_the_centre_of_mass(digits):
    out, _ = _aug(shift=0.25)(digits, step=3)
    moved = (_centre_of_mass(out) - _centre_of_mass(digits)).abs()
    assert moved.mean() > 0.3  # pixels; a 25% shift of 8 pixels is up to 2 pixels


def test_cutout_erases_a_square_of_the_asked_size():
    x = torch.ones(16, 64)
    out, _ = _aug(cutout=0.25, p=1.0)(x, step=0)
    assert torch.all((out == 0).sum(dim=1) == 4)  # a 2 × 2 square in each 8 × 8 image


def test_noise_has_the_asked_spread():
    x = torch.zeros(2000, 10)
    out, _ = Augmenter([AugmentStep(noise=0.3)], None, seed=0)(x, step=0)
    assert abs(out.std().item() - 0.3) < 0.01


def test_mixup_blends_pairs_and_reports_how():
    x = torch.randn(64, 5)
    out, mix = Augmenter([AugmentStep(mixup=0.4, p=1.0)], None, seed=1)(x, step=0)
    assert mix is not None and 0.0 <= mix.lam <= 1.0
    assert torch.allclose(out, mix.lam * x + (1 - mix.lam) * x[mix.perm])


def test_probability_zero_point_something_skips_some_batches():
    aug = Augmenter([AugmentStep(mixup=0.4, p=0.5)], None, seed=0)
    used = [aug(torch.randn(8, 3), step=s)[1] is not None for s in range(200)]
    assert 60 < sum(used) < 140


def test_seeded_by_step_and_seed(digits):
    aug = Augmenter([AugmentStep(rotate=20), AugmentStep(noise=0.1)], SHAPE, seed=0)
    a, _ = aug(digits, step=5)
    b, _ = aug(digits, step=5)
    c, _ = aug(digits, step=6)
    d, _ = Augmenter(aug.steps, SHAPE, seed=1)(digits, step=5)
    assert torch.equal(a, b)
    assert not torch.equal(a, c) and not torch.equal(a, d)


def test_image_augmentation_on_tabular_data_is_a_clear_error():
    with pytest.raises(DataError, match=r"data.augment\[1\] \(rotate\) needs image data"):
        check_augment([AugmentStep(noise=0.1), AugmentStep(rotate=10)], None)
    recipe = {
        "name": "bc",
        "data": {"source": "builtin:breast_cancer", "augment": [{"rotate": 10}]},
        "task": "classification",
        "model": {"type": "mlp"},
    }
    with pytest.raises(DataError, match="tabular"):
        danlu.run(recipe)


def test_a_step_names_exactly_one_kind():
    base = {"name": "d", "data": {"source": "builtin:digits"}, "task": "classification",
            "model": {"type": "mlp"}}  # fmt: skip
    for bad in ([{"rotate": 10, "shift": 0.1}], [{"p": 0.5}], [{"rotat": 10}]):
        with pytest.raises(ConfigError, match=r"data\.augment\.0"):
            load_recipe({**base, "data": {**base["data"], "augment": bad}})


class _RecordInputs(Callback):
    """Wraps the model's forward to keep what it saw in training and in evaluation."""

    def __init__(self) -> None:
        self.train_inputs: list[torch.Tensor] = []
        self.eval_inputs: list[torch.Tensor] = []

    def on_fit_start(self, trainer):
        model, original = trainer.model, trainer.model.forward

        def forward(x):
            (self.train_inputs if model.training else self.eval_inputs).append(x.detach().clone())
            return original(x)

        model.forward = forward


def test_training_batches_are_augmented_and_evaluation_never_is(tmp_path):
    recorder = _RecordInputs()
    recipe = {
        "name": "wine-aug",
        "data": {"source": "builtin:wine", "augment": [{"noise": 0.5}, {"mixup": 0.4, "p": 1.0}]},
        "task": "classification",
        "model": {"type": "mlp", "hidden": [8]},
        "train": {"epochs": 2, "batch_size": 16},
    }
    result = danlu.run(recipe, callbacks=[recorder], home=tmp_path)
    prepared = prepare_data(result.recipe.data, "classification")
    train_rows = {tuple(r) for r in torch.as_tensor(prepared.x_train).tolist()}
    seen = torch.cat(recorder.train_inputs)
    assert not any(tuple(r) in train_rows for r in seen.tolist())  # every training row was changed
    evaluated = torch.cat(recorder.eval_inputs)
    assert torch.equal(evaluated[: len(prepared.x_val)], torch.as_tensor(prepared.x_val))


def test_augmented_run_is_reproducible(tmp_path):
    overrides = ["train.epochs=2", "register=null", "data.augment=[{rotate: 10}, {cutout: 0.25}]"]
    a = danlu.run(ROOT / "examples/digits_cnn.yaml", overrides=overrides, home=tmp_path)
    b = danlu.run(ROOT / "examples/digits_cnn.yaml", overrides=overrides, home=tmp_path)
    assert a.history == b.history
