from __future__ import annotations

import pytest

from danlu.errors import ConfigError
from danlu.store import SqlStore
from danlu.store._filter import Clause, parse_filter, parse_order


def test_parse_clauses():
    assert parse_filter(
        "metrics.test_accuracy > 0.98 and params.model.type = 'cnn' and name like \"dig%\""
    ) == [
        Clause("metric", "test_accuracy", ">", 0.98),
        Clause("param", "model.type", "=", "cnn"),
        Clause("attribute", "name", "like", "dig%"),
    ]
    assert parse_filter("  ") == []
    assert parse_order("-metrics.acc") == ("metric", "acc", True)
    assert parse_order("params.lr asc") == ("param", "lr", False)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("1=1 or", "FIELD OP VALUE"),
        ("name = 'x' or 1=1", "joined with 'and'"),
        ("name = 'x' 'and' status = 'y'", "joined with 'and'"),
        ("metrics.acc > 'high'", "compared with a number"),
        ("bogus = 1", "Unknown filter field"),
        ("name = 'x'; drop table runs", "Cannot read the filter"),
        ("metrics.acc >", "Incomplete filter"),
    ],
)
def test_bad_filters_are_rejected(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_filter(text)


def test_numeric_param_filters_match_how_params_are_stored(tmp_path):
    store = SqlStore(home=tmp_path)
    a = store.create_run(experiment="e", name="a").id
    b = store.create_run(experiment="e", name="b").id
    store.log_params(a, {"train.epochs": 30, "train.lr": 0.001})
    store.log_params(b, {"train.epochs": 5, "train.lr": 0.01})
    assert [r.id for r in store.search_runs("params.train.epochs = 30")] == [a]
    assert [r.id for r in store.search_runs("params.train.epochs != 30")] == [b]
    assert [r.id for r in store.search_runs("params.train.lr = 0.01")] == [b]
    assert [r.id for r in store.search_runs("params.train.epochs = '5'")] == [b]
