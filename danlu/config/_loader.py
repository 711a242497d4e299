"""Loading recipes: YAML with line numbers, ``--set`` overrides, and errors a user can act on.

Every problem in a recipe is reported at once, each naming the file and line, the key path, what
was expected, what was found, and a fix ("did you mean ...?").
"""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from danlu.config._schema import Recipe
from danlu.errors import ConfigError
from danlu.registry import did_you_mean
from danlu.types import StrPath

__all__ = [
    "ConfigIssue",
    "RecipeSource",
    "apply_overrides",
    "load_recipe",
    "parse_override",
    "raise_issues",
    "recipe_to_dict",
    "recipe_to_yaml",
    "schema_keys",
]

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a recipe: where (key path), what was wrong, what was found, how to fix it."""

    loc: Loc
    message: str
    found: Any = None
    fix: str = ""

    @property
    def path(self) -> str:
        return ".".join(str(p) for p in self.loc) or "<recipe>"


@dataclass
class RecipeSource:
    """Where a recipe came from, so errors can point at a file line or a ``--set`` flag."""

    name: str = "<recipe>"
    lines: dict[Loc, int] = field(default_factory=dict)
    overrides: dict[Loc, str] = field(default_factory=dict)

    def line_of(self, loc: Loc) -> int:
        """Line of the deepest known prefix of ``loc`` (overrides sort last)."""
        if self._created_by(loc) is not None:
            return 1 << 30
        for end in range(len(loc), -1, -1):
            if tuple(loc[:end]) in self.overrides:
                return 1 << 30
            if tuple(loc[:end]) in self.lines:
                return self.lines[tuple(loc[:end])]
        return 0

    def _created_by(self, loc: Loc) -> str | None:
        """The ``--set`` that created the key at ``loc`` when the file does not have it."""
        if loc in self.lines:
            return None
        for origin, item in self.overrides.items():
            if origin[: len(loc)] == loc:
                return item
        return None

    def where(self, loc: Loc) -> str:
        """``file:line`` of the deepest known prefix of ``loc`` (or the ``--set`` that set it)."""
        created = self._created_by(loc)
        if created is not None:
            return f"--set {created}"
        for end in range(len(loc), -1, -1):
            prefix = tuple(loc[:end])
            if prefix in self.overrides:
                return f"--set {self.overrides[prefix]}"
            if prefix in self.lines:
                return f"{self.name}:{self.lines[prefix]}"
        return self.name


def _compose_lines(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> None:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*loc, str(key_node.value))
            _compose_lines(value_node, child, lines)
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _compose_lines(item, (*loc, i), lines)


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[Loc, int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Recipe file '{path}' does not exist. Check the path.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read recipe file '{path}': {exc}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: the recipe is not valid YAML ({problem}).") from None
    if data is None:
        raise ConfigError(f"Recipe file '{path}' is empty. See examples/ for a starting point.")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a recipe must be a mapping of keys (name, data, task, model, train); "
            f"found a {type(data).__name__}."
        )
    lines: dict[Loc, int] = {}
    if node is not None:
        _compose_lines(node, (), lines)
    return data, lines


def parse_override(item: str) -> tuple[Loc, Any]:
    """Parse ``key.path=value``; the value is read as YAML, so numbers, booleans and lists work.

    Example:
        >>> parse_override("train.optimizer.lr=3e-4")
        (('train', 'optimizer', 'lr'), 0.0003)
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"Override '{item}' is not of the form key.path=value, e.g. train.optimizer.lr=3e-4."
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string; numbers should be numbers.
        for convert in (int, float):
            try:
                value = convert(value)
                break
            except ValueError:
                pass
    return tuple(key.split(".")), value


# Maps whose keys are recipe key paths themselves (dots included): tune.space's entries
_KEY_PATH_MAPS: tuple[Loc, ...] = (("tune", "space"),)


def _key_path_entry(data: Mapping[str, Any], loc: Loc) -> Loc:
    """``tune.space.model.dropout`` names the space entry ``model.dropout``, not a nested key.

    Within such a map the entry is the longest prefix of the rest that the recipe already has
    (so ``tune.space.model.dropout.uniform=[0.1, 0.4]`` changes one field of an entry); when
    none matches, the whole rest is one new entry, whose value is its distribution.
    """
    for prefix in _KEY_PATH_MAPS:
        n = len(prefix)
        if loc[:n] != prefix or len(loc) <= n + 1:
            continue
        node: Any = data
        for part in prefix:
            node = node.get(part) if isinstance(node, Mapping) else None
        rest = [str(p) for p in loc[n:]]
        existing = node if isinstance(node, Mapping) else {}
        for end in range(len(rest), 0, -1):
            if ".".join(rest[:end]) in existing:
                return (*prefix, ".".join(rest[:end]), *rest[end:])
        return (*prefix, ".".join(rest))
    return loc


def apply_overrides(
    data: dict[str, Any], overrides: Iterable[str]
) -> tuple[dict[str, Any], dict[Loc, str]]:
    """Return a copy of ``data`` with each ``key.path=value`` applied, and where each came from.

    Example:
        >>> data, _ = apply_overrides({}, ["tune.space.model.dropout={uniform: [0.1, 0.5]}"])
        >>> data["tune"]["space"]
        {'model.dropout': {'uniform': [0.1, 0.5]}}
    """
    data = copy.deepcopy(data)
    origin: dict[Loc, str] = {}
    for item in overrides:
        loc, value = parse_override(item)
        loc = _key_path_entry(data, loc)
        node: Any = data
        for i, part in enumerate(loc[:-1]):
            child = node.get(part)
            if child is None or isinstance(child, bool):  # a key inside a block switched off
                child = node[part] = {}  # (evaluate: false) turns it on
            if not isinstance(child, dict):
                raise ConfigError(
                    f"--set {item}: '{'.'.join(map(str, loc[: i + 1]))}' is a "
                    f"{type(child).__name__}, not a mapping, so it has no key '{loc[i + 1]}'."
                )
            node = child
        node[loc[-1]] = value
        origin[loc] = item
    return data, origin


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types inside Optional / Union / Annotated."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


def _block_type(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The block class inside ``annotation`` and whether it sits behind a ``dict[str, ...]``."""
    for t in _unwrap(annotation):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t, False
        if typing.get_origin(t) is dict:
            inner, _ = _block_type(typing.get_args(t)[1])
            if inner is not None:
                return inner, True
    return None, False


def _fields_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """Valid keys of the block at ``loc`` in the schema (empty when not a block)."""
    current: type[BaseModel] | None = model
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            return []
        current, keyed = _block_type(current.model_fields[part].annotation)
        if keyed:  # a map of blocks: the next part is the user's key, not a field
            if not parts:
                return []
            parts.pop(0)
    if current is None:
        return []
    return [f.alias or name for name, f in current.model_fields.items()]


def schema_keys(loc: Loc) -> list[str] | None:
    """Valid keys of the recipe block at ``loc`` (None when ``loc`` is not a block).

    Example:
        >>> "optimizer" in schema_keys(("train",))
        True
    """
    if loc and loc[0] == "model":
        return None  # the model block's keys depend on its type (danlu.models knows them)
    keys = _fields_at(Recipe, loc)
    return keys or None


def _issue_from_pydantic(err: Mapping[str, Any]) -> ConfigIssue:
    loc: Loc = tuple(  # drop validator and union-tag parts: "function-after[...]", "<options>"
        p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "<")))
    )
    kind = err["type"]
    found = err.get("input")
    if kind == "extra_forbidden":
        valid = _fields_at(Recipe, loc[:-1])
        hint = did_you_mean(str(loc[-1]), valid)
        fix = (hint.strip() + " " if hint else "") + (
            f"Valid keys here: {', '.join(valid)}." if valid else ""
        )
        return ConfigIssue(loc, "unknown key", None, fix.strip() or "Remove this key.")
    if kind == "missing":
        return ConfigIssue(loc, "required key is missing", None, f"Add '{loc[-1]}' to the recipe.")
    message = err["msg"]
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        hint = did_you_mean(
            str(found), [s.strip("'") for s in expected.replace(" or ", ", ").split(", ")]
        )
        return ConfigIssue(loc, message, found, hint.strip() or f"Use one of {expected}.")
    return ConfigIssue(loc, message, found, "")


def _format(issues: Sequence[ConfigIssue], source: RecipeSource) -> str:
    count = f"{len(issues)} problem{'s' if len(issues) != 1 else ''}"
    lines = [f"The recipe {source.name} has {count}:"]
    for issue in sorted(issues, key=lambda i: source.line_of(i.loc)):
        text = f"  {source.where(issue.loc)}: {issue.path}: {issue.message}"
        if issue.found is not None:
            found = repr(issue.found)
            text += f" (found {found if len(found) <= 80 else found[:77] + '...'})"
        text = text.rstrip(".") + "."
        if issue.fix:
            text += f" {issue.fix}"
        lines.append(text if text.endswith((".", "?")) else text + ".")
    return "\n".join(lines)


def raise_issues(issues: Sequence[ConfigIssue], source: RecipeSource | None = None) -> None:
    """Raise one :class:`ConfigError` listing every issue, or return when there are none."""
    if issues:
        raise ConfigError(_format(issues, source or RecipeSource()))


def load_recipe(
    recipe: StrPath | Mapping[str, Any] | Recipe, overrides: Iterable[str] = ()
) -> Recipe:
    """Load and validate a recipe from a YAML file, a mapping or a Recipe, applying overrides.

    Example:
        >>> r = load_recipe({"name": "x", "data": {"source": "builtin:iris"},
        ...                  "task": "classification", "model": {"type": "mlp"}},
        ...                 overrides=["train.epochs=3"])
        >>> r.train.epochs
        3
    """
    overrides = list(overrides)
    if isinstance(recipe, Recipe):
        if not overrides:
            return recipe
        recipe = recipe_to_dict(recipe)
    if isinstance(recipe, Mapping):
        data, source = dict(recipe), RecipeSource()
    else:
        path = Path(recipe)
        data, lines = _read_yaml(path)
        source = RecipeSource(str(path), lines)
    data, source.overrides = apply_overrides(data, overrides)
    try:
        result = Recipe.model_validate(data)
    except ValidationError as exc:
        raise_issues([_issue_from_pydantic(e) for e in exc.errors()], source)
        raise AssertionError("unreachable") from None
    result._source = source
    return result


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain data (every default filled in), for saving and hashing."""
    return recipe.model_dump(mode="json")


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML text, with keys in schema order."""
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)
