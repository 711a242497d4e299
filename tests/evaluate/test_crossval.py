"""Cross-validation: k child runs on disjoint held-out folds, nothing registered, mean ± std."""

from __future__ import annotations

import numpy as np
import pytest

from danlu.config import load_recipe
from danlu.data import cv_splits
from danlu.evaluate._crossval import cross_validate
from danlu.store import SqlStore

K = 3


@pytest.fixture(scope="module")
def iris_cv(tmp_path_factory):
    """A parent run and a 3-fold cross-validation of a registering iris recipe under it."""
    recipe = load_recipe(
        {
            "name": "iris-cv",
            "data": {"source": "builtin:iris"},
            "task": "classification",
            "model": {"type": "mlp", "hidden": [8]},
            "train": {"epochs": 2, "batch_size": 16, "checkpoint": {"every": 0}},
            "register": {"name": "iris", "alias": "staging"},
        }
    )
    store = SqlStore(home=tmp_path_factory.mktemp("cv-home"))
    parent = store.create_run(experiment="iris-cv", name="iris-cv")
    started = []
    section = cross_validate(
        recipe, K, store=store, parent_id=parent.id, on_fold=lambda i, k: started.append((i, k))
    )
    yield recipe, store, parent, section, started
    store.close()


def test_folds_are_child_runs_and_nothing_is_registered(iris_cv) -> None:
    recipe, store, parent, section, started = iris_cv
    assert started == [(1, K), (2, K), (3, K)]
    children = store.search_runs(f"parent_id = '{parent.id}'")
    assert len(children) == K
    assert {r.stage for r in children} == {"cv-fold"}
    assert {r.status for r in children} == {"finished"}
    assert sorted(r.name for r in children) == [f"iris-cv-fold-{i}" for i in (1, 2, 3)]
    by_fold = {r.tags["fold"]: r for r in children}
    assert sorted(by_fold) == ["1", "2", "3"] and {r.tags["folds"] for r in children} == {"3"}
    assert len(store.search_runs()) == K + 1  # the parent and its folds, nothing else
    assert store.list_models() == []  # register: is ignored for fold runs

    folds = section.data["folds"]
    assert section.data["k"] == K and [f["fold"] for f in folds] == [1, 2, 3]
    for fold in folds:
        run = by_fold[str(fold["fold"])]
        assert fold["run_id"] == run.id and run.parent_id == parent.id
        assert fold["accuracy"] == pytest.approx(run.metrics["test_accuracy"])


def test_fold_rows_are_the_held_out_folds(iris_cv) -> None:
    recipe, _, _, section, _ = iris_cv
    splits = cv_splits(recipe.data, recipe.task, K)
    assert [f["rows"] for f in section.data["folds"]] == [len(te) for _, _, te in splits]
    assert sum(f["rows"] for f in section.data["folds"]) == 150  # iris, its duplicate kept


def test_mean_and_std_are_numpy_over_the_folds(iris_cv) -> None:
    _, _, _, section, _ = iris_cv
    folds = section.data["folds"]
    summary = section.data["metrics"]
    assert {"accuracy", "f1_macro", "balanced_accuracy"} <= set(summary)
    for name, stats in summary.items():
        values = np.array([f[name] for f in folds])
        assert stats["folds"] == pytest.approx(values.tolist())
        assert stats["mean"] == pytest.approx(values.mean())
        assert stats["std"] == pytest.approx(values.std(ddof=1))
    accuracy = summary["accuracy"]
    assert section.summary == (
        f"3-fold {100 * accuracy['mean']:.1f}% ± {100 * accuracy['std']:.1f} accuracy"
    )
    assert list(section.figures) == ["accuracy per fold"]
    assert "<svg" in section.figures["accuracy per fold"]
