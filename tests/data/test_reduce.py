"""data.reduce: selection and PCA fitted on training rows, replayed from plain JSON."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA

import danlu
from danlu.config import DataConfig, ReduceConfig
from danlu.data import FeatureReducer, Preprocessor, TaskLike, prepare_data, split_indices
from danlu.errors import ConfigError, DataError, NotFittedError
from danlu.store import SqlStore
from danlu.testing import wine_recipe

INFORMATIVE = {"f3", "f9", "f14"}


def generated(task: str, n: int = 400, seed: int = 0) -> pd.DataFrame:
    """20 standard-normal features; the target depends on f3, f9 and f14 only."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 20))
    signal = 1.5 * x[:, 3] - 1.5 * x[:, 9] + 1.5 * x[:, 14]
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(20)])
    frame["y"] = signal + 0.1 * rng.normal(size=n) if task == "regression" else signal > 0
    frame["y"] = frame["y"].astype(float if task == "regression" else int)
    return frame


def fit(frame: pd.DataFrame, task: str | TaskLike, **reduce: object) -> Preprocessor:
    return Preprocessor(target="y", task=task, reduce=ReduceConfig.model_validate(reduce)).fit(
        frame
    )


@pytest.mark.parametrize(
    ("reduce", "width"),
    [
        ({"method": "variance"}, 20),  # the constant column goes, every varying one stays
        ({"method": "mutual_info", "k": 5}, 5),
        ({"method": "model", "k": 3}, 3),
        ({"method": "pca", "n_components": 4}, 4),
    ],
)
def test_each_method_reduces_to_the_expected_width(reduce: dict, width: int) -> None:
    frame = generated("classification").assign(constant=1.0)
    pre = fit(frame, "classification", **reduce)
    out = pre.transform(frame)
    assert out.shape == (len(frame), width) and out.dtype == np.float32
    assert pre.schema_.input_dim == width and len(pre.schema_.encoded_names) == width
    if reduce["method"] == "variance":
        assert "constant" not in pre.schema_.encoded_names
    if reduce["method"] == "pca":
        assert pre.schema_.encoded_names == ("pc1", "pc2", "pc3", "pc4")


def test_pca_ratio_matches_scikit_learn_on_the_encoded_training_rows() -> None:
    data = prepare_data(
        DataConfig(source="builtin:wine", reduce={"method": "pca", "n_components": 0.95}),
        "classification",
    )
    plain = prepare_data(DataConfig(source="builtin:wine"), "classification")
    pca = PCA(n_components=0.95, svd_solver="full").fit(plain.x_train.astype(np.float64))
    assert data.n_features == pca.n_components_ < 13
    np.testing.assert_allclose(data.x_test, pca.transform(plain.x_test), rtol=1e-5, atol=1e-5)
    report = data.report["reduce"]
    assert report["input_dim_before"] == 13 and report["input_dim_after"] == data.n_features
    assert report["explained_variance"] >= 0.95 and data.report["input_dim"] == data.n_features


@pytest.mark.parametrize(
    "reduce",
    [
        {"method": "variance", "threshold": 0.0},
        {"method": "mutual_info", "k": 4},
        {"method": "model", "k": 4},
        {"method": "pca", "n_components": 3},
    ],
)
def test_fitted_on_training_rows_only(
    reduce: dict, write: Callable[[pd.DataFrame, str], str]
) -> None:
    """Changing every validation and test row leaves the fitted reduction (and training) alone."""
    frame = generated("classification")
    _, val, test = split_indices(frame["y"].to_numpy(), test=0.2, val=0.1, stratify=True, seed=0)
    changed = frame.copy()
    held_out = np.concatenate([val, test])
    changed.iloc[held_out, :20] = np.random.default_rng(1).normal(size=(len(held_out), 20)) * 5
    a, b = (
        prepare_data(DataConfig(source=write(f, name), target="y", reduce=reduce), "classification")
        for f, name in ((frame, "a.csv"), (changed, "b.csv"))
    )
    assert a.preprocessor.to_dict() == b.preprocessor.to_dict()
    assert np.array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_test, b.x_test)


@pytest.mark.parametrize(
    "reduce",
    [
        {"method": "variance", "threshold": 0.0},
        {"method": "mutual_info", "k": 4},
        {"method": "model", "k": 4},
        {"method": "pca", "n_components": 5},
        {"method": "pca", "n_components": 0.8},
    ],
)
def test_round_trip_through_json_gives_identical_transforms(reduce: dict) -> None:
    frame = generated("regression")
    pre = fit(frame, "regression", **reduce)
    saved = json.loads(json.dumps(pre.to_dict()))
    assert saved["version"] == 4 and saved["reducer"]["config"]["method"] == reduce["method"]
    again = Preprocessor.from_dict(saved)
    assert again.transform(frame).tobytes() == pre.transform(frame).tobytes()
    assert again.schema_ == pre.schema_ and again.to_dict() == pre.to_dict()


def test_version_1_files_are_still_read() -> None:
    frame = generated("regression")
    pre = Preprocessor(target="y", task="regression").fit(frame)
    old = pre.to_dict()
    old["version"] = 1
    del old["reducer"]
    again = Preprocessor.from_dict(old)
    assert again.reducer_ is None and np.array_equal(again.transform(frame), pre.transform(frame))
    with pytest.raises(DataError, match="versions 1, 2, 3, 4"):
        Preprocessor.from_dict({**old, "version": 5})


@pytest.mark.parametrize("method", ["mutual_info", "model"])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_selection_keeps_the_informative_columns(method: str, task: str) -> None:
    pre = fit(generated(task), task, method=method, k=3)
    assert set(pre.schema_.encoded_names) == INFORMATIVE
    assert pre.reducer_ is not None and pre.reducer_.summary()["kept"] == ["f3", "f9", "f14"]


def test_pca_with_more_components_than_features_names_both_numbers() -> None:
    with pytest.raises(DataError, match=r"n_components is 20.*only 13 feature column") as err:
        prepare_data(
            DataConfig(source="builtin:wine", reduce={"method": "pca", "n_components": 20}),
            "classification",
        )
    assert "n_components <= 13" in str(err.value)


def test_pca_with_more_components_than_training_rows() -> None:
    frame = generated("regression", n=8)
    with pytest.raises(DataError, match=r"only 8 training rows"):
        fit(frame, "regression", method="pca", n_components=10)


def test_k_larger_than_the_features_is_an_error() -> None:
    with pytest.raises(DataError, match=r"data.reduce.k is 30.*only 20 feature column"):
        fit(generated("classification"), "classification", method="mutual_info", k=30)


@pytest.mark.parametrize("method", ["mutual_info", "model"])
def test_ranking_by_label_sets_finds_the_columns_of_every_label(method: str) -> None:
    frame = generated("regression")
    frame["y"] = [
        ("a",) * (a > 0) + ("b",) * (b > 0) for a, b in zip(frame["f3"], frame["f14"], strict=True)
    ]
    multilabel = SimpleNamespace(name="multilabel", target_kind="label_sets")
    pre = fit(frame, multilabel, method=method, k=2)
    assert set(pre.schema_.encoded_names) == {"f3", "f14"}
    assert pre.reducer_ is not None and pre.reducer_.scores_ is not None


def test_variance_threshold_removing_every_column() -> None:
    with pytest.raises(DataError, match=r"removes every one of the 20 encoded columns") as err:
        fit(generated("regression"), "regression", method="variance", threshold=2.0)
    assert "Lower data.reduce.threshold below 1" in str(err.value)


def test_ranking_needs_two_classes_and_a_target() -> None:
    x = np.random.default_rng(0).normal(size=(30, 4))
    reducer = FeatureReducer(ReduceConfig(method="mutual_info", k=2))
    with pytest.raises(DataError, match="single class"):
        reducer.fit(x, np.zeros(30, dtype=np.int64), task="classification", names="abcd")
    with pytest.raises(DataError, match="no target values"):
        reducer.fit(x, None, task="classification", names="abcd")
    with pytest.raises(NotFittedError, match="not fitted"):
        reducer.transform(x)


def test_a_fitted_reducer_refuses_another_width_and_bad_files() -> None:
    x = np.random.default_rng(0).normal(size=(30, 4))
    reducer = FeatureReducer(ReduceConfig(method="pca", n_components=2))
    reducer.fit(x, None, task="regression", names="abcd")
    with pytest.raises(DataError, match="fitted on 4 encoded columns"):
        reducer.transform(x[:, :3])
    state = reducer.to_dict()
    with pytest.raises(DataError, match="malformed"):
        FeatureReducer.from_dict({**state, "components": [[1.0, 2.0]]})
    with pytest.raises(DataError, match="not a saved danlu feature reducer"):
        FeatureReducer.from_dict({"format": "pickle"})


def test_reduction_drops_the_image_layout(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="danlu"):
        data = prepare_data(
            DataConfig(source="builtin:digits", reduce={"method": "pca", "n_components": 16}),
            "classification",
        )
    assert "image layout is dropped" in caplog.text
    assert data.schema.image_shape is None and data.n_features == 16
    recipe = {
        "name": "digits-pca-cnn",
        "data": {"source": "builtin:digits", "reduce": {"method": "pca", "n_components": 16}},
        "task": "classification",
        "model": {"type": "cnn"},
        "train": {"epochs": 1},
    }
    with (
        caplog.at_level(logging.WARNING, logger="danlu"),
        pytest.raises(ConfigError, match="needs image-shaped inputs"),
    ):
        danlu.run(recipe)


def test_run_with_pca_trains_and_the_registered_model_replays_it(tmp_path) -> None:
    from sklearn.datasets import load_wine

    recipe = wine_recipe(epochs=30) | {
        "data": {"source": "builtin:wine", "reduce": {"method": "pca", "n_components": 0.95}},
        "register": {"name": "wine-pca"},
    }
    result = danlu.run(recipe, home=tmp_path)
    assert result.schema.encoded_names[0] == "pc1" and result.schema.input_dim < 13
    assert result.metrics["accuracy"] > 0.8
    raw = load_wine(as_frame=True).frame
    rows = raw.drop(columns="target")
    model = danlu.load_model("wine-pca", store=SqlStore(home=tmp_path))
    got, expected = model.predict(rows), result.predict(rows)
    assert list(got["prediction"]) == list(expected["prediction"])
    assert got["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)
    assert (got["prediction"] == raw["target"].to_numpy()).mean() > 0.8
