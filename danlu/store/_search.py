"""Run search in SQL: the clauses and sort keys of :mod:`danlu.store._filter` as conditions,
joins and ``ORDER BY`` terms of the runs query (``SqlStore.search_runs``).

Values always travel as bound parameters. A metric, param or tag clause is an ``EXISTS`` on its
table, so a run matches once however many rows it has there.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, and_, exists

from danlu.errors import StoreError
from danlu.store import _tables as t
from danlu.store._filter import Clause, parse_filter, parse_order

__all__ = ["filter_runs", "order_runs"]

_COMPARE = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _attribute(key: str) -> Any:
    """The column of a run attribute (``experiment`` lives in the experiments table)."""
    if key == "experiment":
        return t.experiments.c.name
    return t.runs.c.id if key == "run_id" else t.runs.c[key]


def _condition(clause: Clause) -> Any:
    """The SQL condition of one filter clause (values stay bound parameters)."""
    op = clause.op

    def compare(column: Any, value: Any) -> Any:
        if op == "like":  # case-insensitive on every backend (LIKE is not, on PostgreSQL)
            return column.ilike(value)
        return _COMPARE[op](column, value)

    if clause.kind == "metric":
        m = t.latest_metrics
        return exists().where(
            m.c.run_id == t.runs.c.id, m.c.key == clause.key, compare(m.c.value, clause.value)
        )
    if clause.kind in {"param", "tag"}:
        table = t.params if clause.kind == "param" else t.tags
        if op in {"<", "<=", ">", ">="}:
            raise StoreError(f"{clause.kind}s.{clause.key} holds text: compare with =, != or like.")
        if isinstance(clause.value, float):  # 30 may be stored as "30" or "30.0"
            texts = sorted(
                {
                    json.dumps(clause.value),
                    *([str(int(clause.value))] if clause.value.is_integer() else []),
                }
            )
            condition = table.c.value.in_(texts) if op == "=" else table.c.value.not_in(texts)
        else:
            condition = compare(table.c.value, clause.value)
        return exists().where(table.c.run_id == t.runs.c.id, table.c.key == clause.key, condition)
    return compare(_attribute(clause.key), clause.value)


def filter_runs(query: Select[Any], text: str | None) -> Select[Any]:
    """``query`` (runs joined with experiments) narrowed to the runs ``text`` matches."""
    clauses = parse_filter(text)
    return query.where(and_(*(_condition(c) for c in clauses))) if clauses else query


def order_runs(query: Select[Any], order_by: Sequence[str]) -> Select[Any]:
    """``query`` sorted by each key of ``order_by`` in turn, missing values last."""
    for i, item in enumerate(order_by):
        kind, key, descending = parse_order(item)
        if kind == "attribute":
            column = _attribute(key)
        else:
            table = {"metric": t.latest_metrics, "param": t.params, "tag": t.tags}[kind]
            sort = table.alias(f"sort{i}")
            query = query.outerjoin(sort, and_(sort.c.run_id == t.runs.c.id, sort.c.key == key))
            column = sort.c.value
        query = query.order_by(
            column.desc().nulls_last() if descending else column.asc().nulls_last()
        )
    return query
