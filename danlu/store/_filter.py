"""Run filters: ``metrics.test_accuracy > 0.98 and params.model.type = 'cnn'``.

The text is tokenised and parsed into clauses; values always travel as bound parameters, never
pasted into SQL. The grammar is deliberately small: clauses joined by ``and``.

    filter  := clause ("and" clause)*
    clause  := field op value
    field   := metrics.KEY | params.KEY | tags.KEY | status | name | stage | experiment
               | run_id | parent_id | created_at
    op      := = | != | < | <= | > | >= | like
    value   := number | 'text' | "text"
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from danlu.errors import ConfigError

__all__ = ["ATTRIBUTES", "Clause", "parse_filter", "parse_order"]

ATTRIBUTES = ("status", "name", "stage", "experiment", "run_id", "parent_id", "created_at")
_NUMERIC_ATTRIBUTES = {"created_at"}
_OPS = ("<=", ">=", "!=", "=", "<", ">", "like")
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<field>(?:metrics|params|tags)\.[A-Za-z0-9_][\w.\-/]*|[A-Za-z_]\w*)
      | (?P<op><=|>=|!=|=|<|>)
      | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
      | '(?P<sq>[^']*)'
      | "(?P<dq>[^"]*)"
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Clause:
    kind: str  # "metric" | "param" | "tag" | "attribute"
    key: str
    op: str
    value: float | str


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise ConfigError(
                f"Cannot read the filter at character {pos + 1}: {text[pos : pos + 20]!r}. Write clauses like \"metrics.test_accuracy > 0.9 and params.model.type = 'cnn'\"."
            )
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind in {"sq", "dq"}:
            kind = "string"
        tokens.append((kind, value))
        pos = match.end()
    return tokens


def _field(name: str) -> tuple[str, str]:
    for prefix, kind in (("metrics.", "metric"), ("params.", "param"), ("tags.", "tag")):
        if name.startswith(prefix):
            return kind, name[len(prefix) :]
    if name in ATTRIBUTES:
        return "attribute", name
    raise ConfigError(
        f"Unknown filter field '{name}'. Use metrics.KEY, params.KEY, tags.KEY or one of: {', '.join(ATTRIBUTES)}."
    )


def parse_filter(text: str | None) -> list[Clause]:
    """Parse a filter into clauses (all must hold).

    Example:
        >>> parse_filter("metrics.acc >= 0.9 and status = 'finished'")[0]
        Clause(kind='metric', key='acc', op='>=', value=0.9)
    """
    if text is None or not text.strip():
        return []
    tokens = _tokens(text)
    clauses: list[Clause] = []
    i = 0
    while True:
        if i + 3 > len(tokens):
            raise ConfigError(
                f"Incomplete filter {text!r}: every clause is FIELD OP VALUE, e.g. metrics.loss < 0.5."
            )
        (k1, field), (k2, op), (k3, value) = tokens[i : i + 3]
        if k2 == "field" and op.lower() == "like":
            k2, op = "op", "like"
        if k1 != "field" or k2 != "op" or k3 not in {"number", "string"}:
            raise ConfigError(
                f"Cannot read filter clause {' '.join(t for _, t in tokens[i : i + 3])!r}: expected FIELD OP VALUE, e.g. params.model.type = 'cnn'."
            )
        kind, key = _field(field)
        parsed: float | str = float(value) if k3 == "number" else value
        if kind == "metric" and not isinstance(parsed, float):
            raise ConfigError(f"metrics.{key} is compared with a number, not {value!r}.")
        if op == "like" and not isinstance(parsed, str):
            raise ConfigError("'like' compares with a quoted pattern, e.g. name like 'digits%'.")
        if (
            kind == "attribute"
            and key in _NUMERIC_ATTRIBUTES
            and (not isinstance(parsed, float) or op == "like")
        ):
            raise ConfigError(
                f"{key} is a time in seconds since 1970: compare it with a number using =, !=, <, <=, > or >= (found {op} {value!r})."
            )
        if kind == "attribute" and key not in _NUMERIC_ATTRIBUTES and not isinstance(parsed, str):
            raise ConfigError(
                f"{key} holds text: compare it with a quoted value, e.g. {key} = 'x' (found {value!r})."
            )
        clauses.append(Clause(kind, key, op, parsed))
        i += 3
        if i == len(tokens):
            return clauses
        if tokens[i][0] != "field" or tokens[i][1].lower() != "and":
            raise ConfigError(
                f"Clauses are joined with 'and'; found {tokens[i][1]!r}. ('or' is not supported: run two searches.)"
            )
        i += 1


def parse_order(item: str) -> tuple[str, str, bool]:
    """``"metrics.acc desc"`` or ``"-metrics.acc"`` → (kind, key, descending)."""
    text = item.strip()
    descending = text.startswith("-")
    text = text.lstrip("-+").strip()
    parts = text.split()
    if len(parts) == 2 and parts[1].lower() in {"asc", "desc"}:
        descending = parts[1].lower() == "desc"
        text = parts[0]
    elif len(parts) != 1:
        raise ConfigError(f"Cannot sort by {item!r}: use FIELD, -FIELD or 'FIELD desc'.")
    kind, key = _field(text)
    return kind, key, descending
