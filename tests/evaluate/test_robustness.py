"""Robustness: FGSM / PGD attacks, Gaussian noise and feature dropout, and their report section."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from danlu.config import RobustnessConfig
from danlu.evaluate._robustness import (
    feature_dropout,
    fgsm,
    gaussian_noise,
    pgd,
    robustness_section,
)

EPSILONS = [0.0, 0.05, 0.1, 0.3, 1.0]


def _tensors(data, rows: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(data.x[:rows])
    y = torch.as_tensor(data.y[:rows], dtype=getattr(torch, data.task.target_dtype))
    return x, y


def _categorical_csv(path, numeric: bool = False):
    """300 rows of three categorical features (and an optional numeric one) with a label."""
    rng = np.random.default_rng(0)
    colour = rng.choice(["red", "green", "blue"], 300)
    size = rng.choice(["small", "medium", "large"], 300)
    shape = rng.choice(["round", "square", "flat", "tall"], 300)
    label = np.where((colour == "red") | (size == "large"), "yes", "no")
    lines = ["colour,size,shape" + (",weight" if numeric else "") + ",label"]
    for i in range(300):
        extra = f",{rng.normal():.4f}" if numeric else ""
        lines.append(f"{colour[i]},{size[i]},{shape[i]}{extra},{label[i]}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _values(section, kind: str) -> list[float]:
    return [p["value"] for p in section.data["curves"][kind]]


# --- the attacks -----------------------------------------------------------------------------------


def test_attacks_stay_in_the_ball_and_off_masked_columns(make_eval_data):
    data = make_eval_data()
    x, y = _tensors(data)
    mask = torch.zeros(x.shape[1], dtype=torch.bool)
    mask[::2] = True  # every other column may move
    loss = data.task.make_loss()
    eps = 0.2
    for x_adv in (
        fgsm(data.model, x, y, loss, eps, mask=mask),
        pgd(data.model, x, y, loss, eps, steps=7, mask=mask),
    ):
        delta = x_adv - x
        assert not x_adv.requires_grad
        assert delta.abs().max().item() <= eps + 1e-6
        assert torch.equal(x_adv[:, ~mask], x[:, ~mask])
        assert delta[:, mask].abs().max().item() > 0.5 * eps  # it did move
    # FGSM moves every column with a non-zero gradient by exactly ε
    moved = (fgsm(data.model, x, y, loss, eps, mask=mask) - x)[:, mask].abs()
    assert torch.allclose(moved[moved > 0], torch.full_like(moved[moved > 0], eps), atol=1e-6)


def test_attacks_leave_the_model_alone(make_eval_data):
    data = make_eval_data()
    x, y = _tensors(data)
    before = {k: v.detach().clone() for k, v in data.model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in data.model.parameters()]
    data.model.train()  # the attack evaluates in eval mode and gives the mode back
    try:
        fgsm(data.model, x, y, data.task.make_loss(), 0.3)
        pgd(data.model, x, y, data.task.make_loss(), 0.3, steps=3)
        assert data.model.training
    finally:
        data.model.eval()
    for name, value in data.model.state_dict().items():
        assert torch.equal(value, before[name]), name
    for p, g in zip(data.model.parameters(), grads, strict=True):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)


def test_zero_epsilon_returns_the_inputs_and_pgd_is_seeded(make_eval_data):
    data = make_eval_data()
    x, y = _tensors(data)
    loss = data.task.make_loss()
    assert torch.equal(fgsm(data.model, x, y, loss, 0.0), x)
    assert torch.equal(pgd(data.model, x, y, loss, 0.0), x)
    a = pgd(data.model, x, y, loss, 0.1, steps=3, seed=1)
    b = pgd(data.model, x, y, loss, 0.1, steps=3, seed=1)
    c = pgd(data.model, x, y, loss, 0.1, steps=3, seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_attack_arguments_are_checked(make_eval_data):
    data = make_eval_data()
    x, y = _tensors(data, 4)
    with pytest.raises(ValueError, match="epsilon"):
        fgsm(data.model, x, y, data.task.make_loss(), -0.1)
    with pytest.raises(ValueError, match="steps"):
        pgd(data.model, x, y, data.task.make_loss(), 0.1, steps=0)
    with pytest.raises(ValueError, match="mask"):
        fgsm(data.model, x, y, data.task.make_loss(), 0.1, mask=torch.ones(3, dtype=torch.bool))


# --- the corruptions -------------------------------------------------------------------------------


def test_gaussian_noise_touches_masked_columns_only():
    x = np.zeros((4000, 3), dtype=np.float32)
    mask = np.array([True, False, True])
    noisy = gaussian_noise(x, 0.5, mask, np.random.default_rng(0))
    assert noisy.dtype == np.float32
    assert np.all(noisy[:, 1] == 0)
    assert noisy[:, [0, 2]].std() == pytest.approx(0.5, rel=0.05)
    assert np.array_equal(gaussian_noise(x, 0.0, mask, np.random.default_rng(0)), x)
    assert np.all(x == 0)  # the input is not modified


def test_feature_dropout_drops_whole_groups_to_the_fill():
    x = np.ones((500, 5), dtype=np.float32)
    groups = [(0,), (1, 2, 3), (4,)]  # (1, 2, 3): one one-hot feature
    fill = np.array([10, 20, 30, 40, 50], dtype=np.float32)
    out = feature_dropout(x, 2 / 3, groups, fill, np.random.default_rng(0))
    dropped = np.stack([out[:, g[0]] != 1 for g in groups], axis=1)  # (N, 3)
    assert np.all(dropped.sum(axis=1) == 2)  # exactly 2 of 3 groups in every row
    one_hot = out[:, [1, 2, 3]]
    assert np.all((one_hot == 1).all(axis=1) | (one_hot == fill[[1, 2, 3]]).all(axis=1))
    assert np.all((out[:, 0] == 1) | (out[:, 0] == 10))
    # a fraction below one group per row drops one group in that share of rows, on average
    partial = feature_dropout(x, 0.1, groups, fill, np.random.default_rng(0))
    assert (partial != 1).any(axis=1).mean() == pytest.approx(0.3, abs=0.06)
    assert np.array_equal(feature_dropout(x, 0.0, groups, fill, np.random.default_rng(0)), x)
    assert np.array_equal(
        feature_dropout(x, 1.0, groups, fill, np.random.default_rng(0)), np.tile(fill, (500, 1))
    )
    with pytest.raises(ValueError, match="fraction"):
        feature_dropout(x, 1.5, groups, fill, np.random.default_rng(0))


# --- the section -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_section(make_eval_data):
    data = make_eval_data()
    config = RobustnessConfig(
        fgsm=EPSILONS, pgd=EPSILONS, noise=[0.0, 0.5], dropout=[0.0, 0.3], samples=1000
    )
    return robustness_section(data, config)


def test_zero_levels_equal_the_clean_metric(full_section):
    clean = full_section.data["clean"]
    curves = full_section.data["curves"]
    assert curves["fgsm"][0] == {"epsilon": 0.0, "value": clean}
    assert curves["pgd"][0] == {"epsilon": 0.0, "value": clean}
    assert curves["noise"][0] == {"sigma": 0.0, "value": clean}
    assert curves["dropout"][0] == {"fraction": 0.0, "value": clean}


def test_accuracy_falls_with_epsilon(full_section):
    clean = full_section.data["clean"]
    for kind in ("fgsm", "pgd"):
        values = _values(full_section, kind)
        assert all(b <= a for a, b in zip(values, values[1:], strict=False)), (kind, values)
        assert values[-1] < clean - 0.3  # ε = 1 standard deviation breaks the model


def test_pgd_is_at_least_as_strong_as_fgsm(full_section):
    fgsm_values, pgd_values = _values(full_section, "fgsm"), _values(full_section, "pgd")
    for e in (0.3, 1.0):
        i = EPSILONS.index(e)
        assert pgd_values[i] <= fgsm_values[i] + 0.01, (e, pgd_values[i], fgsm_values[i])


def test_section_data_summary_figure_and_notes(make_eval_data, full_section):
    data = make_eval_data()
    assert full_section.key == "robustness"
    assert full_section.title == "Robustness"
    d = full_section.data
    assert d["metric"] == "accuracy"
    assert d["rows"] == len(data.x)
    assert d["continuous_columns"] == data.x.shape[1] == 30
    assert d["clean"] == pytest.approx(
        data.task.metrics(data.test_outputs, data.y, data.schema)["accuracy"]
    )
    assert set(d["curves"]) == {"fgsm", "pgd", "noise", "dropout"}
    # the summary reads the middle ε of the FGSM list
    middle = _values(full_section, "fgsm")[2]
    assert full_section.summary.startswith(f"accuracy at ε=0.1 FGSM: {100 * middle:.1f}%")
    (figure,) = full_section.figures.values()
    assert "<svg" in figure
    text = " ".join(full_section.notes)
    assert "standard deviations" in text
    assert f"{len(data.x)} test rows" in text


def test_sample_and_single_curve(make_eval_data):
    data = make_eval_data()
    section = robustness_section(data, RobustnessConfig(fgsm=[0.01, 0.05, 0.1], samples=50))
    assert list(section.data["curves"]) == ["fgsm"]
    assert section.data["rows"] == 50
    assert len(section.data["curves"]["fgsm"]) == 3
    assert re.fullmatch(r"accuracy at ε=0\.05 FGSM: \d+\.\d% \(clean \d+\.\d%\)", section.summary)
    assert "a seeded sample of" in " ".join(section.notes)
    again = robustness_section(data, RobustnessConfig(fgsm=[0.01, 0.05, 0.1], samples=50))
    assert again.data == section.data


def test_summary_falls_back_to_noise_then_dropout(make_eval_data):
    data = make_eval_data()
    noise = robustness_section(data, RobustnessConfig(noise=[0.1, 0.5, 1.0], samples=60))
    assert noise.summary.startswith("accuracy at σ=0.5 noise: ")
    dropout = robustness_section(data, RobustnessConfig(dropout=[0.3], samples=60))
    assert dropout.summary.startswith("accuracy with 30% of features dropped: ")


def test_regression_reports_r2(make_eval_data):
    data = make_eval_data("builtin:diabetes", "regression")
    section = robustness_section(data, RobustnessConfig(fgsm=[0.0, 0.5], pgd=[0.5]))
    assert section.data["metric"] == "r2"
    values = _values(section, "fgsm")
    assert values[0] == section.data["clean"]
    assert values[1] < section.data["clean"]
    assert section.data["curves"]["pgd"][0]["value"] < section.data["clean"]
    assert re.fullmatch(r"R² at ε=0\.5 FGSM: -?\d+\.\d{3} \(clean -?\d+\.\d{3}\)", section.summary)


def test_image_model(make_eval_data):
    cnn = {"type": "cnn", "channels": [8], "hidden": 16}
    data = make_eval_data("builtin:digits", model=cnn)
    section = robustness_section(data, RobustnessConfig(fgsm=[0.0, 0.3], pgd=[0.3], samples=200))
    assert section.data["continuous_columns"] == 64
    fgsm_values = _values(section, "fgsm")
    assert fgsm_values[0] == section.data["clean"]
    assert fgsm_values[1] < section.data["clean"] - 0.1
    assert _values(section, "pgd")[0] <= fgsm_values[1] + 0.01
    assert "<svg" in next(iter(section.figures.values()))


def test_categorical_only_inputs_skip_attacks(make_eval_data, tmp_path):
    data = make_eval_data(_categorical_csv(tmp_path / "cats.csv"), target="label")
    assert not any(g.continuous for g in data.groups)
    section = robustness_section(data, RobustnessConfig(fgsm=[0.1], noise=[0.1], dropout=[0.5]))
    assert section.data["continuous_columns"] == 0
    assert list(section.data["curves"]) == ["dropout"]
    assert "no continuous input column" in " ".join(section.notes)
    nothing = robustness_section(data, RobustnessConfig(fgsm=[0.1], pgd=[0.1]))
    assert set(nothing.data) == {"skipped"}
    assert "no continuous input column" in " ".join(nothing.notes)
    assert nothing.figures == {}


def test_mixed_inputs_attack_the_numeric_column_only(make_eval_data, tmp_path):
    data = make_eval_data(_categorical_csv(tmp_path / "mixed.csv", numeric=True), target="label")
    width = data.x.shape[1]
    section = robustness_section(data, RobustnessConfig(fgsm=[0.0, 0.5], dropout=[0.0, 1.0]))
    assert section.data["continuous_columns"] == 1
    assert f"the 1 continuous of the {width} input columns" in " ".join(section.notes)
    assert _values(section, "fgsm")[0] == section.data["clean"]
    assert _values(section, "dropout")[0] == section.data["clean"]


def test_attacks_run_in_chunks(make_eval_data, monkeypatch):
    import danlu.evaluate._robustness as robustness

    data = make_eval_data()
    config = RobustnessConfig(fgsm=[0.0, 0.1, 0.3])
    whole = robustness_section(data, config)
    monkeypatch.setattr(robustness, "_CHUNK", 16)  # 114 test rows: 8 chunks
    chunked = robustness_section(data, config)
    assert chunked.data == whole.data  # FGSM treats each row on its own
