"""The store contract for ``search_runs``: every filter operator, sort order and page, on five runs."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from danlu.errors import ConfigError, StoreError
from danlu.store import (
    MetricPoint,
    Store,
)
from danlu.testing.store._common import ids

# Five runs a..e (see ``SearchConformance.population``) and what each filter must find.

# Five runs a..e (see ``StoreConformance.population``) and what each filter must find.
FILTER_CASES: list[tuple[str, str]] = [
    ("metrics.test_accuracy > 0.9", "ac"),
    ("metrics.test_accuracy >= 0.95", "ac"),
    ("metrics.test_accuracy < 0.9", "b"),
    ("metrics.test_accuracy <= 0.85", "b"),
    ("metrics.test_accuracy = 0.97", "c"),
    ("metrics.test_accuracy != 0.97", "ab"),
    ("metrics.missing > 0", ""),
    ("params.model.type = 'cnn'", "abe"),
    ("params.model.type != 'cnn'", "cd"),
    ("params.train.lr = 0.001", "ac"),
    ("params.train.lr = '0.1'", "e"),
    ("params.model.type like 'c%'", "abe"),
    ("tags.group = 'x'", "ac"),
    ("tags.group != 'x'", "be"),
    ("tags.group like '_'", "abce"),
    ("status = 'finished'", "ab"),
    ("status != 'running'", "abc"),
    ("stage = 'tune'", "c"),
    ("experiment = 'other'", "e"),
    ("name = 'digits-d'", "d"),
    ("name like 'digits-%'", "abcde"),
    ("name like '%-b'", "b"),
    ("metrics.test_accuracy > 0.9 and params.model.type = 'cnn'", "a"),
    ("params.model.type = 'cnn' and tags.group = 'x' and status = 'finished'", "a"),
    ("name = 'nobody'", ""),
]

# Sort orders and the resulting order of runs a..e.
ORDER_CASES: list[tuple[list[str], str]] = [
    (["metrics.test_accuracy"], "baced"),  # missing and NaN last; ties newest first
    (["-metrics.test_accuracy"], "cabed"),
    (["metrics.test_accuracy desc"], "cabed"),
    (["params.train.lr"], "cabed"),  # text order: '0.001' < '0.01' < '0.1'
    (["-params.train.lr"], "ebcad"),
    (["tags.group desc"], "ebcad"),
    (["name"], "abcde"),
    (["-name"], "edcba"),
    (["status", "-metrics.test_accuracy"], "cabed"),
    (["created_at asc"], "abcde"),
]


class SearchConformance:
    """``search_runs`` over the five runs of the ``population`` fixture."""

    # -- search --------------------------------------------------------------------------------
    @pytest.fixture
    def population(self, store: Store) -> dict[str, str]:
        """Five runs, created in order a..e (so newest first is e..a)."""
        rows: dict[str, dict[str, Any]] = {
            "a": {"acc": 0.95, "type": "cnn", "lr": 0.001, "tag": "x", "status": "finished"},
            "b": {"acc": 0.85, "type": "cnn", "lr": 0.01, "tag": "y", "status": "finished"},
            "c": {"acc": 0.97, "type": "mlp", "lr": 0.001, "tag": "x", "status": "failed"},
            "d": {"acc": None, "type": "mlp", "lr": None, "tag": None, "status": "running"},
            "e": {"acc": math.nan, "type": "cnn", "lr": 0.1, "tag": "z", "status": "running"},
        }
        ids: dict[str, str] = {}
        for name, row in rows.items():
            run = store.create_run(
                experiment="sweep" if name != "e" else "other",
                name=f"digits-{name}",
                stage="tune" if name == "c" else "train",
            )
            ids[name] = run.id
            params: dict[str, Any] = {"model.type": row["type"]}
            if row["lr"] is not None:
                params["train.lr"] = row["lr"]
            store.log_params(run.id, params)
            if row["acc"] is not None:
                store.log_metrics(run.id, [MetricPoint("test_accuracy", row["acc"], 1)])
            if row["tag"] is not None:
                store.set_tags(run.id, {"group": row["tag"]})
            if row["status"] != "running":
                store.set_status(run.id, row["status"])
            time.sleep(0.002)  # distinct created_at
        return ids

    def test_search_filters(self, store: Store, population: dict[str, str]) -> None:
        wrong = {}
        for text, expected in FILTER_CASES:
            found = sorted(ids(store.search_runs(text)))
            if found != sorted(population[c] for c in expected):
                names = {v: k for k, v in population.items()}
                wrong[text] = f"expected {expected!r}, got {''.join(names[i] for i in found)!r}"
        assert wrong == {}

    def test_search_by_id_parent_and_time(self, store: Store, population: dict[str, str]) -> None:
        child = store.create_run(experiment="sweep", name="child", parent_id=population["a"])
        assert ids(store.search_runs(f"run_id = '{population['b']}'")) == [population["b"]]
        assert ids(store.search_runs(f"parent_id = '{population['a']}'")) == [child.id]
        cutoff = store.get_run(population["c"]).created_at
        newer = store.search_runs(f"created_at > {cutoff!r}")
        assert sorted(ids(newer)) == sorted([population["d"], population["e"], child.id])

    def test_search_returns_full_runs(self, store: Store, population: dict[str, str]) -> None:
        (run,) = store.search_runs("name = 'digits-a'")
        assert run == store.get_run(population["a"])
        assert run.params == {"model.type": "cnn", "train.lr": "0.001"}
        assert run.metrics == {"test_accuracy": 0.95} and run.tags == {"group": "x"}

    def test_search_default_order_is_newest_first(
        self, store: Store, population: dict[str, str]
    ) -> None:
        assert ids(store.search_runs()) == [population[c] for c in "edcba"]

    def test_search_order(self, store: Store, population: dict[str, str]) -> None:
        names = {v: k for k, v in population.items()}
        got = {
            " ".join(order_by): "".join(names[i] for i in ids(store.search_runs(order_by=order_by)))
            for order_by, _ in ORDER_CASES
        }
        assert got == {" ".join(order_by): expected for order_by, expected in ORDER_CASES}

    def test_search_limit_and_offset(self, store: Store, population: dict[str, str]) -> None:
        everything = ids(store.search_runs(order_by=["name"]))
        pages = [ids(store.search_runs(order_by=["name"], limit=2, offset=o)) for o in (0, 2, 4, 6)]
        assert [len(p) for p in pages] == [2, 2, 1, 0]
        assert sum(pages, []) == everything
        assert ids(store.search_runs("params.model.type = 'cnn'", limit=1)) == [population["e"]]

    def test_bad_filters_raise(self, store: Store, population: dict[str, str]) -> None:
        for text in (
            "metrics.test_accuracy >",
            "bogus = 1",
            "name = 'a' or name = 'b'",
            "metrics.test_accuracy > 'high'",
            "tags.group > 'x'",
        ):
            with pytest.raises((ConfigError, StoreError)):
                store.search_runs(text)

    def test_filter_value_of_the_wrong_type_is_a_config_error(
        self, store: Store, population: dict[str, str]
    ) -> None:
        for text in ("status = 5", "created_at > 'yesterday'", "created_at like '1%'"):
            with pytest.raises(ConfigError):
                store.search_runs(text)

    def test_like_ignores_case(self, store: Store, population: dict[str, str]) -> None:
        assert len(store.search_runs("name like 'DIGITS-%'")) == 5
        assert len(store.search_runs("params.model.type like 'CNN'")) == 3

    def test_bad_order_raises(self, store: Store) -> None:
        with pytest.raises(ConfigError):
            store.search_runs(order_by=["metrics.acc sideways"])
        with pytest.raises(ConfigError):
            store.search_runs(order_by=["runs.id"])
