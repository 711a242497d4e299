"""task: recommendation: ranking metrics by hand, seen items left out of the ranking, sampled
vs full evaluation, BPR-MF and two-tower learning a planted structure popularity cannot see,
the recipe's problems named by key, and a registered model answering from Python (unknown
users: the popularity fallback, flagged)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import danlu
from danlu.config import load_recipe
from danlu.errors import ConfigError
from danlu.tasks import RecommendationTask, get_task
from danlu.tasks._rank_metrics import item_positions, popular_share, query_metrics, top_k
from danlu.tasks._recommendation import recommend
from danlu.train import check_recipe, run_training

GROUPS, USERS_PER_GROUP, ITEMS_PER_GROUP, PER_USER = 3, 30, 20, 10
POPULAR = 4  # items everyone may take, whatever the group


def planted_frame(seed: int = 0) -> pd.DataFrame:
    """Users in 3 groups; each takes items of its group's cluster (and one of a few globally
    popular items), in random time order. The held-out items are cluster items: a model that
    learns the groups ranks them; popularity cannot (its top items are the popular ones)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(GROUPS * USERS_PER_GROUP):
        g = u % GROUPS
        cluster = POPULAR + g * ITEMS_PER_GROUP + np.arange(ITEMS_PER_GROUP)
        items = [*rng.choice(cluster, PER_USER - 1, replace=False), rng.integers(POPULAR)]
        times = rng.permutation(PER_USER - 1).tolist() + [-1]  # the popular one: first
        for t, i in zip(times, items, strict=True):
            kind = "popular" if i < POPULAR else f"g{(i - POPULAR) // ITEMS_PER_GROUP}"
            rows.append({"user": f"u{u}", "item": f"m{i}", "ts": t, "genre": f"{kind}|film"})
    return pd.DataFrame(rows)


def planted_recipe(path: Path, model: dict[str, Any], **recommend: Any) -> dict[str, Any]:
    return {
        "name": "planted",
        "task": "recommendation",
        "data": {"source": str(path)},
        "recommend": {"user": "user", "item": "item", "time": "ts", "k": 5, **recommend},
        "model": model,
        "train": {
            "epochs": 12,
            "batch_size": 64,
            "optimizer": {"name": "adam", "lr": 0.05},
            "checkpoint": {"every": 0},
            "seed": 0,
        },
    }


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("planted") / "interactions.parquet"
    planted_frame().to_parquet(path)
    return path


# ---- metrics by hand ---------------------------------------------------------------------------


def test_positions_break_ties_by_item_and_skip_excluded_items() -> None:
    scores = np.array([[1.0, 1.0, 1.0, 0.0], [0.0, 5.0, 4.0, 3.0]])
    exclude = np.array([[False] * 4, [False, True, False, False]])
    # row 0: a constant scorer gains nothing from ties (item 2 is behind items 0 and 1)
    # row 1: item 1 is excluded, so item 3 is behind item 2 only
    assert item_positions(scores, np.array([2, 3]), exclude).tolist() == [2, 1]
    assert top_k(scores, exclude, 2).tolist() == [[0, 1], [2, 3]]


def test_query_metrics_of_a_user_with_two_held_out_items() -> None:
    # one query whose relevant items sit at positions 0 and 2, K = 2
    out = query_metrics(np.array([0, 2]), np.array([0, 0]), k=2)
    assert out["recall"].tolist() == [0.5] and out["hit_rate"].tolist() == [1.0]
    assert out["ndcg"][0] == pytest.approx(1.0 / (1.0 + 1.0 / np.log2(3)))
    assert out["mrr"].tolist() == [1.0]
    assert popular_share(np.array([[0, 3]]), np.array([9.0, 1.0, 1.0, 1.0]), 0.25) == 0.5


def _configured(interactions: list[list[int]], n_users: int, n_items: int) -> RecommendationTask:
    task = RecommendationTask(k=1)
    task.interactions = np.asarray(interactions, dtype=np.int64)
    task.n_users, task.n_items = n_users, n_items
    return task


def test_seen_items_are_left_out_of_the_ranking() -> None:
    # user 0 trained on items 0 and 1, which the scorer ranks first; the test item is 2
    task = _configured([[0, 0, 0], [0, 1, 0], [0, 2, 2]], n_users=1, n_items=4)
    scores = np.array([[9.0, 8.0, 7.0, 1.0]])
    y = np.array([[0, 2, 2]])
    assert task.metrics(scores, y, None)["hit_rate_at_k"] == 1.0  # type: ignore[arg-type]
    bare = RecommendationTask(k=1)  # no history: the seen items compete
    assert bare.metrics(scores, y, None)["hit_rate_at_k"] == 0.0  # type: ignore[arg-type]


def test_sampled_evaluation_says_so_and_is_no_harder_than_full() -> None:
    rng = np.random.default_rng(0)
    n_items = 300
    rows = [[u, int(i), 0] for u in range(20) for i in rng.choice(n_items, 5, replace=False)]
    held = [[u, int(rng.integers(n_items)), 2] for u in range(20)]
    held = [h for h in held if [h[0], h[1], 0] not in rows]
    scores = rng.normal(size=(len(held), n_items))
    full = _configured(rows + held, 20, n_items)
    full.k = 10
    sampled = _configured(rows + held, 20, n_items)
    sampled.k, sampled.evaluation, sampled.eval_negatives = 10, "sampled", 50
    y = np.asarray(held)
    a = full.metrics(scores, y, None)  # type: ignore[arg-type]
    b = sampled.metrics(scores, y, None)  # type: ignore[arg-type]
    assert a["evaluation"] == "full ranking" and b["evaluation"].startswith("sampled: 50")
    assert b["mrr"] >= a["mrr"] and b["hit_rate_at_k"] >= a["hit_rate_at_k"]
    assert b["hit_rate_at_k"] > a["hit_rate_at_k"]  # 10 of 51 vs 10 of ~295 at random


# ---- training on a planted structure ----------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "extra"),
    [
        ({"type": "bpr_mf", "factors": 8}, {}),
        ({"type": "two_tower", "factors": 8, "hidden": 16}, {"item_features": ["genre"]}),
    ],
    ids=["bpr_mf", "two_tower"],
)
def test_models_learn_the_planted_groups_and_beat_popularity(
    planted: Path, tmp_path: Path, model: dict[str, Any], extra: dict[str, Any]
) -> None:
    result = run_training(planted_recipe(planted, model, **extra), home=tmp_path)
    from danlu.models import prepare_recipe_data

    data = prepare_recipe_data(result.recipe, result.task)
    outputs = result.predictor.outputs(data.x_test)  # (n_test, n_items)
    rows = {r["model"]: r for r in result.task.compare(outputs, data.y_test, data.schema)}
    assert rows["model"]["ndcg_at_k"] > 1.5 * rows["popularity"]["ndcg_at_k"]
    assert rows["model"]["ndcg_at_k"] == pytest.approx(result.metrics["ndcg_at_k"], rel=1e-5)
    assert rows["popularity"]["popular_share"] > rows["model"]["popular_share"]
    assert result.metrics["coverage"] > rows["popularity"]["coverage"]


# ---- recipe problems ---------------------------------------------------------------------------


def _issues(planted: Path, **changes: Any) -> str:
    recipe = planted_recipe(planted, {"type": "bpr_mf"})
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            recipe[section] = {**recipe[section], name: value}
        elif value is None:
            recipe.pop(section)
        else:
            recipe[section] = value
    with pytest.raises(ConfigError) as info:
        check_recipe(load_recipe(recipe))
    return str(info.value)


def test_recipe_problems_name_their_keys(planted: Path) -> None:
    assert "recommend" in _issues(planted, recommend=None)
    assert "recommend.time" in _issues(
        planted, recommend={"user": "user", "item": "item", "split": "leave_last_out"}
    )
    assert "recommend.min_rating" in _issues(planted, recommend__min_rating=4)
    assert "recommend.item_features" in _issues(planted, recommend__item_features=["genre"])
    assert "model.type" in _issues(planted, model={"type": "mlp"})
    with pytest.raises(ConfigError, match=r"recommend\.k"):
        load_recipe(planted_recipe(planted, {"type": "bpr_mf"}, k=0))


# ---- report, registry and Python answers -------------------------------------------------------


@pytest.fixture(scope="module")
def registered(planted: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    home = tmp_path_factory.mktemp("rec-home")
    recipe = planted_recipe(planted, {"type": "bpr_mf", "factors": 8})
    recipe["evaluate"] = {"bootstrap": 100, "cost": False}  # explain, robustness: not applicable
    recipe["register"] = {"name": "planted"}
    return home, danlu.run(recipe, home=home)


def test_the_report_compares_with_baselines_and_shows_examples(registered: Any) -> None:
    _, result = registered
    sections = {s.key: s for s in result.report.sections}
    for key in ("explain", "robustness"):  # asked for by default, shown as not applicable
        assert "not applicable to the recommendation task" in sections[key].notes[0].lower()
    ranking = sections["recommendation_ranking"]
    names = [r["model"] for r in ranking.data["rows"]]
    assert names == ["model", "popularity", "item-kNN (cosine)"]
    assert all(0 <= r["popular_share"] <= 1 for r in ranking.data["rows"])
    assert "full ranking" in ranking.title and not ranking.flags
    examples = sections["recommendation_examples"].data["examples"]
    assert examples and all(len(e["top_k"]) == 5 for e in examples)
    assert all(not set(e["top_k"]) & set(e["history"]) for e in examples)  # seen: excluded
    membership = sections["membership"]  # each row's softmax loss of its item
    assert "error" not in membership.data and membership.summary
    baselines = sections["baselines"].data["rows"]
    assert [r["model"] for r in baselines][1:] == ["popularity", "item-kNN (cosine)"]


def test_a_loaded_model_recommends_and_falls_back_for_unknown_users(registered: Any) -> None:
    from danlu.store import SqlStore

    home, result = registered
    with SqlStore(home=home) as store:
        bundle = danlu.load_model("planted", store=store)
    assert isinstance(get_task("recommendation"), RecommendationTask)
    frame = planted_frame()
    seen = set(frame[frame.user == "u4"].item)
    known = recommend(bundle, "u4", k=5)
    assert bundle.recommend("u4", k=5) == known  # danlu.load_model(...).recommend
    assert known["fallback"] is None and len(known["items"]) == 5
    assert not set(known["items"]) & seen
    assert known["scores"] == sorted(known["scores"], reverse=True)
    with_seen = recommend(bundle, "u4", k=5, exclude_seen=False)
    assert with_seen["scores"][0] >= known["scores"][0]
    cold = recommend(bundle, "nobody", k=3)
    assert cold["fallback"] == "popularity" and len(cold["items"]) == 3
    counts = frame.item.value_counts()
    assert counts[cold["items"][0]] == counts.max()  # the most popular item first
    recent = recommend(bundle, "nobody", k=3, items=["m30", "no-such-item"])
    assert bundle.recommend("nobody", k=3, items=("m30", "no-such-item")) == recent
    assert recent["fallback"] == "item_knn" and recent["unknown_items"] == ["no-such-item"]
    assert "m30" not in recent["items"]
    for k in (0, 10_000):
        with pytest.raises(ValueError, match="k must be"):
            recommend(bundle, "u4", k=k)
