"""Interactions for task: recommendation: leave-last-out and random splits, the id maps that
travel with the model, duplicate (user, item) pairs refused or aggregated, and the recipe key
named when a column is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from danlu.config import DataConfig, load_recipe
from danlu.config._recommend import RecommendConfig
from danlu.data import Preprocessor
from danlu.data._interactions import entity_features, interaction_ids, prepare_interactions
from danlu.data._split import RecipeDataError
from danlu.errors import ConfigError
from danlu.models import prepare_recipe_data

ROOT = Path(__file__).resolve().parents[2]
DATA = DataConfig(source="unused.parquet")


def _frame(seed: int = 0) -> pd.DataFrame:
    """8 users × 5 interactions each, rows shuffled, times increasing per user."""
    rng = np.random.default_rng(seed)
    rows = [
        {"user": u, "item": f"i{(u + t) % 12}", "ts": 100 * u + t, "stars": 1 + (u + t) % 5}
        for u in range(8)
        for t in range(5)
    ]
    frame = pd.DataFrame(rows)
    return frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)


def test_leave_last_out_holds_out_each_users_last_and_second_last_interactions() -> None:
    frame = _frame()
    data = prepare_interactions(
        DATA, RecommendConfig(user="user", item="item", time="ts"), frame=frame
    )
    users = data.schema.features[0].categories
    items = data.schema.classes
    assert assert_stage(data.y_train, 0) and assert_stage(data.y_val, 1)
    assert assert_stage(data.y_test, 2)
    for split, t in ((data.y_test, 4), (data.y_val, 3)):
        for u, i, _ in split:
            user = int(users[u])
            assert items[i] == f"i{(user + t) % 12}"  # the user's last (or second last) item
    # every user kept 3 training interactions; no held-out row is lost here (no cold items)
    assert len(data.y_train) == 24 and len(data.y_test) + len(data.y_val) <= 16
    assert data.report["rows"]["train"] == 24 and data.report["users"] == 8
    np.testing.assert_array_equal(data.x_test[:, 0], data.y_test[:, 0])  # x: the user's code


def assert_stage(y: np.ndarray, stage: int) -> bool:
    return bool(len(y)) and bool((y[:, 2] == stage).all())


def test_random_split_is_seeded_and_holds_out_shares() -> None:
    frame = pd.DataFrame({"u": np.repeat(np.arange(40), 10), "i": np.tile(np.arange(10), 40)})
    config = RecommendConfig(user="u", item="i", split="random", test=0.2, val=0.1)
    one = prepare_interactions(DATA, config, frame=frame)
    two = prepare_interactions(DATA, config, frame=frame)
    np.testing.assert_array_equal(one.y_test, two.y_test)
    held = len(one.y_test) + one.report["cold_dropped"]
    assert 0.12 < held / 400 < 0.28 and 0.04 < len(one.y_val) / 400 < 0.16


def test_the_id_maps_travel_in_the_preprocessing_and_an_unknown_user_is_n_users() -> None:
    data = prepare_interactions(
        DATA, RecommendConfig(user="user", item="item", time="ts"), frame=_frame()
    )
    saved = Preprocessor.from_dict(data.preprocessor.to_dict())
    assert saved.schema_.classes == data.schema.classes  # items, in output order
    codes = saved.transform(pd.DataFrame({"user": [3, "3", 99]}))[:, 0]
    assert codes[0] == codes[1] == data.schema.features[0].categories.index("3")
    assert codes[2] == len(data.schema.features[0].categories)  # unseen: n_users


def test_duplicate_pairs_are_refused_or_aggregated() -> None:
    frame = _frame()
    twice = pd.concat([frame, frame.iloc[:3].assign(ts=frame.ts.iloc[:3] + 1000)])
    with pytest.raises(RecipeDataError) as info:
        prepare_interactions(
            DATA, RecommendConfig(user="user", item="item", time="ts"), frame=twice
        )
    assert info.value.loc == ("recommend", "duplicates") and "3 (user, item) pair" in str(
        info.value
    )
    config = RecommendConfig(
        user="user", item="item", time="ts", rating="stars", duplicates="aggregate"
    )
    data = prepare_interactions(DATA, config, frame=twice)
    assert data.report["duplicates_dropped"] == 3
    total = sum(data.report["rows"].values()) + data.report["cold_dropped"]
    assert total == len(frame)  # one interaction per pair
    # the repeated pairs took the later time: they are now their users' last interactions
    users = data.schema.features[0].categories
    moved = {(str(u), i) for u, i in zip(twice.user.iloc[-3:], twice.item.iloc[-3:], strict=True)}
    tested = {(users[u], data.schema.classes[i]) for u, i, _ in data.y_test}
    assert len(moved & tested) >= 1


def test_min_rating_drops_lower_ratings() -> None:
    config = RecommendConfig(
        user="user", item="item", time="ts", rating="stars", min_rating=3, split="random"
    )
    data = prepare_interactions(DATA, config, frame=_frame())
    assert data.report["below_min_rating"] == int((_frame().stars < 3).sum())


def test_a_missing_column_names_its_recipe_key(tmp_path: Path) -> None:
    path = tmp_path / "inter.parquet"
    _frame().to_parquet(path)
    for block, key in (
        ({"user": "who", "item": "item", "time": "ts"}, "recommend.user"),
        ({"user": "user", "item": "what", "time": "ts"}, "recommend.item"),
        ({"user": "user", "item": "item", "time": "when"}, "recommend.time"),
    ):
        recipe = load_recipe(
            {
                "name": "r",
                "task": "recommendation",
                "data": {"source": str(path)},
                "recommend": block,
                "model": {"type": "bpr_mf"},
            }
        )
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            prepare_recipe_data(recipe)


def test_entity_features_are_standardized_numbers_and_multi_hot_tokens() -> None:
    frame = pd.DataFrame(
        {"u": [1, 2, 3], "i": ["a", "b", "a"], "g": ["x|y", "y", "x|y"], "n": [1.0, 3.0, 1.0]}
    )
    config = RecommendConfig(user="u", item="i", split="random", item_features=["g", "n"])
    matrix, names = entity_features(DATA, config, ["a", "b"], "item", frame=frame)
    assert names == ["g=y", "g=x", "n"]
    np.testing.assert_allclose(matrix, [[1, 1, -1], [1, 0, 1]])
    assert interaction_ids([1.0, "1", None]).tolist() == ["1", "1", None]


def test_the_movielens_script_writes_parquet_the_task_reads(tmp_path: Path) -> None:
    out = tmp_path / "movielens.parquet"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "make_movielens.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    frame = pd.read_parquet(out)
    assert list(frame.columns)[:4] == ["userId", "movieId", "rating", "timestamp"]
    assert len(frame) == 100_004 and frame.userId.nunique() == 671
    config = RecommendConfig(user="userId", item="movieId", time="timestamp")
    data = prepare_interactions(DataConfig(source=str(out)), config)
    held = len(data.y_test) + len(data.y_val) + data.report["cold_dropped"]
    assert data.report["users"] == 671 and held == 2 * 671  # every user rated ≥ 20 movies
