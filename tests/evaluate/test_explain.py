from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from danlu.config import ExplainConfig, load_recipe
from danlu.errors import ConfigError
from danlu.evaluate import InputGroup
from danlu.evaluate._explain import attributions, explain_section, global_importance

INFORMATIVE = {"f3", "f7", "f12"}


@pytest.fixture(scope="module")
def sparse_csv(tmp_path_factory):
    """y depends on f3, f7 and f12 only, out of 20 standard normal features."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 20))
    logit = 2.0 * x[:, 3] - 1.5 * x[:, 7] + x[:, 12] + 0.1 * rng.normal(size=1500)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(20)])
    frame["y"] = (logit > 0).astype(int)
    path = tmp_path_factory.mktemp("explain") / "sparse.csv"
    frame.to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def categorical_csv(tmp_path_factory):
    """y depends mostly on a three-valued categorical column (one-hot encoded for the model),
    a little on ``a`` and not at all on ``b``."""
    rng = np.random.default_rng(1)
    n = 1000
    colour = rng.choice(["red", "green", "blue"], size=n)
    a, b = rng.normal(size=n), rng.normal(size=n)
    score = np.where(colour == "red", 2.0, np.where(colour == "green", -2.0, 1.0)) + 0.5 * a
    frame = pd.DataFrame({"a": a, "colour": colour, "b": b, "y": (score > 0).astype(int)})
    path = tmp_path_factory.mktemp("explain") / "categorical.csv"
    frame.to_csv(path, index=False)
    return str(path)


def _sparse(make_eval_data, sparse_csv):
    return make_eval_data(source=sparse_csv, target="y", epochs=20)


def _output(data, x: np.ndarray, target: np.ndarray) -> np.ndarray:
    return data.outputs(x.astype(np.float32))[np.arange(len(x)), target]


def test_global_importance_merges_columns_and_sorts() -> None:
    groups = [InputGroup("x", "numeric", (0,)), InputGroup("c", "categorical", (1, 2))]
    attr = np.array([[0.1, 1.0, -0.5], [-0.3, 0.2, 0.0]])
    importance = global_importance(attr, groups)
    assert list(importance) == ["c", "x"]  # |1.0 - 0.5| = 0.5 and |0.2| → 0.35 > 0.2
    assert importance["c"] == pytest.approx(0.35)
    assert importance["x"] == pytest.approx(0.2)


@pytest.mark.parametrize("method", ["integrated_gradients", "gradient_shap", "kernel_shap"])
def test_attributions_shape_and_reproducible(make_eval_data, method: str) -> None:
    data = make_eval_data()
    config = ExplainConfig(method=method, background=10)
    x = data.x[:7]
    attr = attributions(data, x, config, None)
    assert attr.shape == (7, data.x.shape[1])
    assert np.isfinite(attr).all() and np.abs(attr).sum() > 0
    numpy_state, torch_state = np.random.get_state()[1].copy(), torch.random.get_rng_state()
    np.testing.assert_allclose(attributions(data, x, config, None), attr)
    # seeded without disturbing the caller's generators
    assert (np.random.get_state()[1] == numpy_state).all()
    assert torch.equal(torch.random.get_rng_state(), torch_state)


def test_kernel_shap_needs_no_gradients(make_eval_data) -> None:
    data = make_eval_data()

    class Frozen(torch.nn.Module):  # a black box: its outputs carry no gradient
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return self.inner(x)

    black_box = replace(data, model=Frozen(data.model))
    with pytest.raises(ConfigError, match="kernel_shap"):
        attributions(black_box, data.x[:3], ExplainConfig(), None)
    attr = attributions(black_box, data.x[:3], ExplainConfig(method="kernel_shap"), None)
    np.testing.assert_allclose(
        attr, attributions(data, data.x[:3], ExplainConfig(method="kernel_shap"), None)
    )


def test_integrated_gradients_completeness(make_eval_data, sparse_csv) -> None:
    data = _sparse(make_eval_data, sparse_csv)
    x = data.x[:40]
    target = data.outputs(x).argmax(axis=1)
    attr = attributions(data, x, ExplainConfig(steps=300), target)
    baseline = np.repeat(data.x_train.mean(axis=0, keepdims=True), len(x), axis=0)
    gap = _output(data, x, target) - _output(data, baseline, target)
    np.testing.assert_allclose(attr.sum(axis=1), gap, atol=0.02 * np.abs(gap).max() + 1e-3)
    # another class's explanation is a different function of the same rows
    other = attributions(data, x, ExplainConfig(steps=300), 1 - target)
    assert not np.allclose(other, attr)


@pytest.mark.parametrize(
    ("method", "samples"),
    [("integrated_gradients", 200), ("gradient_shap", 200), ("kernel_shap", 60)],
)
def test_informative_features_rank_first(
    make_eval_data, sparse_csv, method: str, samples: int
) -> None:
    data = _sparse(make_eval_data, sparse_csv)
    section = explain_section(data, ExplainConfig(method=method, samples=samples))
    ranked = [item["feature"] for item in section.data["importance"]]
    assert set(ranked[:3]) == INFORMATIVE, ranked[:6]
    assert len(ranked) == 20
    scores = [item["importance"] for item in section.data["importance"]]
    assert scores == sorted(scores, reverse=True)
    assert section.summary == "top features: " + ", ".join(ranked[:3])
    assert section.data["method"] == method and section.data["rows"] == samples


def test_one_hot_columns_are_one_feature(make_eval_data, categorical_csv) -> None:
    data = make_eval_data(source=categorical_csv, target="y", epochs=15)
    colour = next(g for g in data.groups if g.name == "colour")
    assert len(colour.columns) == 3  # the model sees three one-hot columns
    for method in ("integrated_gradients", "kernel_shap"):
        section = explain_section(data, ExplainConfig(method=method, samples=60))
        names = [item["feature"] for item in section.data["importance"]]
        assert sorted(names) == ["a", "b", "colour"]
        assert names[0] == "colour"
    # kernel SHAP perturbs the one-hot columns together and its values add up to the gap
    x = data.x[:10]
    target = data.outputs(x).argmax(axis=1)
    attr = attributions(data, x, ExplainConfig(method="kernel_shap"), target)
    baseline = np.repeat(data.x_train.mean(axis=0, keepdims=True), len(x), axis=0)
    gap = _output(data, x, target) - _output(data, baseline, target)
    np.testing.assert_allclose(attr.sum(axis=1), gap, atol=1e-3 + 1e-3 * np.abs(gap).max())


def test_most_and_least_confident_rows(make_eval_data, categorical_csv) -> None:
    data = make_eval_data(source=categorical_csv, target="y", epochs=15)
    section = explain_section(data, ExplainConfig(samples=50, top_k=2))
    most, least = (
        section.data["samples"]["most_confident"],
        section.data["samples"]["least_confident"],
    )
    assert len(most) == len(least) == 2
    assert min(r["confidence"] for r in most) >= max(r["confidence"] for r in least)
    for entry in most + least:
        assert 0.5 <= entry["confidence"] <= 1.0  # binary: the max probability
        raw = data.frame.iloc[entry["row"]]
        sizes = [abs(t["attribution"]) for t in entry["top"]]
        assert sizes == sorted(sizes, reverse=True)
        assert len(entry["top"]) == 3  # only three raw features
        for item in entry["top"]:
            assert item["value"] == raw[item["feature"]]
        assert entry["true"] == data.schema.classes[int(data.y[entry["row"]])]
    assert section.figures and any("importance" in c for c in section.figures)
    assert any("baseline" in note.lower() for note in section.notes)

    empty = explain_section(data, ExplainConfig(samples=50, top_k=0))
    assert empty.data["samples"] == {"most_confident": [], "least_confident": []}
    assert empty.data["importance"] == section.data["importance"]


def test_digits_cnn_has_saliency_maps(make_eval_data) -> None:
    data = make_eval_data(
        source="builtin:digits", model={"type": "cnn", "channels": [8], "hidden": 16}
    )
    section = explain_section(data, ExplainConfig(samples=40, top_k=1))
    saliency = [c for c in section.figures if "aliency" in c]
    assert len(saliency) == 1
    assert section.figures[saliency[0]].lstrip().startswith("<svg")
    assert not any("importance" in c for c in section.figures)  # no bar chart for pixels
    assert len(section.data["importance"]) == 64
    assert section.data["samples"]["most_confident"][0]["top"][0]["feature"].startswith("pixel")


def test_regression_ranks_rows_by_residual(make_eval_data) -> None:
    data = make_eval_data(source="builtin:diabetes", task="regression")
    section = explain_section(data, ExplainConfig(samples=60, top_k=3))
    assert section.data["rows"] == 60
    most, least = (
        section.data["samples"]["most_confident"],
        section.data["samples"]["least_confident"],
    )
    for entry in most + least:
        assert entry["confidence"] == pytest.approx(-abs(entry["prediction"] - entry["true"]))
    assert most[0]["confidence"] >= most[-1]["confidence"] >= least[0]["confidence"]
    assert 25 <= least[0]["true"] <= 346  # the target's original units, not standardized
    assert any("residual" in note for note in section.notes)
    assert {item["feature"] for item in section.data["importance"]} == set(
        data.schema.feature_names
    )


def test_zero_samples_refused_by_the_recipe() -> None:
    recipe = {"name": "x", "data": {"source": "builtin:iris"}, "task": "classification",
              "model": {"type": "mlp"}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"evaluate\.explain\.samples"):
        load_recipe(recipe, ["evaluate.explain.samples=0"])
