"""data.imbalance: resampling of the training split only, class weights, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import danlu
from danlu.config import DataConfig, ImbalanceConfig, load_recipe
from danlu.data import imbalance_class_weight, prepare_data, resample_training
from danlu.errors import ConfigError, DataError
from danlu.pipeline import check_recipe
from danlu.testing import wine_recipe

CLASSES = ("a", "b", "c")


def skewed(n: tuple[int, ...] = (60, 20, 10), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian blobs of ``n`` rows each (float32 features, int64 class indices)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(n)), n).astype(np.int64)
    x = rng.normal(size=(len(y), 4)) + 1.5 * y[:, None]
    return x.astype(np.float32), y


def counts(y: np.ndarray) -> list[int]:
    return np.bincount(y, minlength=3).tolist()


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("oversample", [60, 60, 60]),
        ("undersample", [10, 10, 10]),
        ("smote", [60, 60, 60]),
    ],
)
def test_exact_methods_balance_the_classes(method: str, expected: list[int]) -> None:
    x, y = skewed()
    x2, y2, report = resample_training(x, y, ImbalanceConfig(method=method), CLASSES, 0)
    assert counts(y2) == expected
    assert x2.dtype == np.float32 and y2.dtype == np.int64 and len(x2) == len(y2)
    assert report["counts_before"] == {"a": 60, "b": 20, "c": 10}
    assert report["counts_after"] == dict(zip(CLASSES, expected, strict=True))
    assert report["rows_after"] == sum(expected)


@pytest.mark.parametrize(
    "method", ["borderline_smote", "svm_smote", "adasyn", "smote_tomek", "smote_enn"]
)
def test_approximate_methods_grow_the_minority_classes(method: str) -> None:
    x, y = skewed()
    _, y2, report = resample_training(x, y, ImbalanceConfig(method=method), CLASSES, 0)
    after = counts(y2)
    assert report["method"] == method and report["k_neighbors"] == 5
    # These synthesise rows near the class borders only (borderline, SVM, ADASYN) or clean
    # overlapping rows afterwards (Tomek links, ENN): the minority share grows, not to 1:1.
    assert after[1] + after[2] > 30
    assert (after[1] + after[2]) / after[0] > 30 / 60


def test_ratio_sets_the_minority_to_majority_ratio() -> None:
    x, y = skewed()
    cfg = ImbalanceConfig(method="oversample", ratio=0.5)
    assert counts(resample_training(x, y, cfg, CLASSES, 0)[1]) == [60, 30, 30]
    cfg = ImbalanceConfig(method="smote", ratio=0.25)  # class b already holds 20 >= 15 rows
    assert counts(resample_training(x, y, cfg, CLASSES, 0)[1]) == [60, 20, 15]
    cfg = ImbalanceConfig(method="undersample", ratio=0.5)  # at most 10 / 0.5 = 20 rows a class
    assert counts(resample_training(x, y, cfg, CLASSES, 0)[1]) == [20, 20, 10]
    x, y = skewed((40, 8))
    cfg = ImbalanceConfig(method="oversample", ratio=0.5)
    assert np.bincount(resample_training(x, y, cfg, ("a", "b"), 0)[1]).tolist() == [40, 20]


def test_none_and_class_weight_leave_the_arrays_alone() -> None:
    x, y = skewed()
    for method in ("none", "class_weight"):
        x2, y2, _ = resample_training(x, y, ImbalanceConfig(method=method), CLASSES, 0)
        assert x2 is x and y2 is y


def test_resampling_is_seeded() -> None:
    x, y = skewed()
    cfg = ImbalanceConfig(method="smote")
    a, b, c = (resample_training(x, y, cfg, CLASSES, seed)[0] for seed in (0, 0, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    pinned = ImbalanceConfig(method="smote", seed=7)  # data.imbalance.seed wins over the split's
    d, e = (resample_training(x, y, pinned, CLASSES, seed)[0] for seed in (0, 1))
    assert np.array_equal(d, e)


def test_smote_with_too_few_minority_rows_names_the_class_and_the_fix() -> None:
    x, y = skewed((60, 20, 3))
    with pytest.raises(DataError) as err:
        resample_training(x, y, ImbalanceConfig(method="smote"), CLASSES, 0)
    message = str(err.value)
    assert "class 'c'" in message and "only 3 training row(s)" in message
    assert "k_neighbors to below 3" in message and "method: oversample" in message
    # The suggested fix works, and so does the other one.
    resample_training(x, y, ImbalanceConfig(method="smote", k_neighbors=2), CLASSES, 0)
    resample_training(x, y, ImbalanceConfig(method="oversample"), CLASSES, 0)


def test_single_row_class_suggests_oversample_only() -> None:
    x, y = skewed((60, 20, 1))
    with pytest.raises(DataError, match="class 'c' has only 1 training row") as err:
        resample_training(x, y, ImbalanceConfig(method="adasyn", k_neighbors=1), CLASSES, 0)
    assert "below" not in str(err.value)


def test_resampling_a_regression_target_is_an_error() -> None:
    x, _ = skewed()
    y = np.linspace(0, 1, len(x)).astype(np.float32)
    single_label = "single-label class target.*holds numbers"
    with pytest.raises(DataError, match=single_label):
        resample_training(x, y, ImbalanceConfig(method="smote"), None, 0)
    with pytest.raises(DataError, match=single_label):
        imbalance_class_weight(ImbalanceConfig(method="class_weight"), None)
    with pytest.raises(DataError, match=single_label):
        prepare_data(DataConfig(source="builtin:diabetes", imbalance="oversample"), "regression")


def test_class_weights_naming_unknown_classes_list_the_classes() -> None:
    cfg = ImbalanceConfig(method="class_weight", weights={"0": 1.0, "7": 2.0})
    with pytest.raises(DataError, match=r"\['7'\].*the classes are \['0', '1', '2'\]"):
        imbalance_class_weight(cfg, (0, 1, 2))
    assert imbalance_class_weight(
        ImbalanceConfig(method="class_weight", weights={"2": 3.0}), (0, 1, 2)
    ) == {"2": 3.0}


@pytest.mark.parametrize("method", ["oversample", "undersample", "smote", "smote_enn"])
def test_validation_and_test_arrays_are_untouched(method: str) -> None:
    """Resampling changes the training split only: byte-identical val/test, same preprocessing."""
    base = prepare_data(DataConfig(source="builtin:breast_cancer"), "classification")
    data = prepare_data(
        DataConfig(source="builtin:breast_cancer", imbalance=method), "classification"
    )
    for name in ("x_val", "y_val", "x_test", "y_test"):
        a, b = getattr(base, name), getattr(data, name)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), name
    assert data.preprocessor.to_dict() == base.preprocessor.to_dict()
    assert data.test_frame.equals(base.test_frame)
    assert not np.array_equal(np.bincount(data.y_train), np.bincount(base.y_train))
    assert data.fingerprint != base.fingerprint
    report = data.report["imbalance"]
    assert report["counts_before"] == {
        str(k): int(v) for k, v in enumerate(np.bincount(base.y_train))
    }
    assert report["counts_after"] == {
        str(k): int(v) for k, v in enumerate(np.bincount(data.y_train))
    }
    assert "imbalance" not in base.report


def test_class_weight_travels_on_prepared_data_to_the_trainer(monkeypatch) -> None:
    data = prepare_data(
        DataConfig(source="builtin:wine", imbalance={"method": "class_weight"}), "classification"
    )
    assert data.class_weight == "balanced" and data.report["imbalance"]["method"] == "class_weight"
    import danlu.train._loop as loop

    seen = []
    real = loop.class_weights
    monkeypatch.setattr(
        loop, "class_weights", lambda s, *a, **k: seen.append(s) or real(s, *a, **k)
    )
    danlu.run(
        wine_recipe(epochs=1) | {"data": {"source": "builtin:wine", "imbalance": "class_weight"}}
    )
    assert seen == ["balanced"]


def test_check_recipe_rejects_conflicting_or_regression_imbalance() -> None:
    both = wine_recipe() | {"data": {"source": "builtin:wine", "imbalance": "class_weight"}}
    both["train"]["class_weight"] = "balanced"
    with pytest.raises(ConfigError, match="given twice"):
        check_recipe(load_recipe(both))
    regression = wine_recipe() | {
        "task": "regression",
        "data": {"source": "builtin:diabetes", "imbalance": "smote"},
    }
    with pytest.raises(ConfigError, match="data.imbalance.method"):
        check_recipe(load_recipe(regression))


def test_run_with_smote_on_a_small_breast_cancer_slice(tmp_path: Path) -> None:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    # 90 benign and 30 malignant rows: a 3:1 imbalance.
    rows = pd.concat([frame[frame.target == 1].head(90), frame[frame.target == 0].head(30)])
    rows.to_csv(tmp_path / "cancer.csv", index=False)
    recipe = {
        "name": "cancer-smote",
        "data": {
            "source": str(tmp_path / "cancer.csv"),
            "target": "target",
            "imbalance": {"method": "smote", "k_neighbors": 3},
        },
        "task": "classification",
        "model": {"type": "mlp", "hidden": [8]},
        "train": {"epochs": 3, "batch_size": 32},
    }
    result = danlu.run(recipe, home=tmp_path / "home")
    report = result.data_report["imbalance"]
    assert report["counts_after"]["0"] == report["counts_after"]["1"]
    assert report["counts_before"]["0"] < report["counts_before"]["1"]
    assert result.data_report["rows"]["test"] == 24 and 0.0 <= result.metrics["accuracy"] <= 1.0
    saved = json.loads((result.run_dir / "data_report.json").read_text())
    assert saved["imbalance"] == report
