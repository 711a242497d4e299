"""The search space: checked against the recipe, sampled through an Optuna trial, applied to it.

Parameters are named by their key path (``train.optimizer.lr``). A parameter inside a conditional
choice carries its condition in the name (``model.hidden[model.type=mlp]``), so two branches may
tune the same key with different ranges without confusing the sampler.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from danlu.config import ConfigIssue, Distribution, Recipe, schema_keys
from danlu.errors import ConfigError
from danlu.registry import closest, did_you_mean

if TYPE_CHECKING:
    import optuna

__all__ = ["Param", "apply_params", "check_tune", "iter_params", "sample", "uses_data"]

_UNTUNABLE = {"name", "schema_version", "tune", "register"}
_SCALARS = (str, int, float, bool, type(None))
_SYNONYMS = {"learning_rate": "lr", "wd": "weight_decay"}  # names other libraries use


@dataclass(frozen=True)
class Param:
    """One searched key: its path in the recipe, its distribution, and the choice it depends on."""

    path: str
    dist: Distribution
    condition: tuple[str, str] | None = None  # (path of the choice, option) it belongs to
    within: tuple[str, ...] = ()  # keys under tune.space leading to it (choice, option, ...)

    @property
    def loc(self) -> tuple[str, ...]:
        """Where the key is written in the recipe, so errors point at its line."""
        return ("tune", "space", *self.within, self.path)

    @property
    def name(self) -> str:
        if self.condition is None:
            return self.path
        return f"{self.path}[{self.condition[0]}={self.condition[1]}]"


def iter_params(
    space: Mapping[str, Distribution],
    condition: tuple[str, str] | None = None,
    within: tuple[str, ...] = (),
) -> Iterator[Param]:
    """Every parameter of the space, each conditional sub-space after the choice it hangs on."""
    for path, dist in space.items():
        yield Param(path, dist, condition, within)
        for option, sub in (dist.branches or {}).items():
            yield from iter_params(sub, (path, option), (*within, path, "choice", option))


def _encode(options: list[Any]) -> tuple[list[Any], dict[Any, Any]]:
    """Optuna's categorical values must be scalars; lists and maps travel as JSON text."""
    if all(isinstance(o, _SCALARS) for o in options):
        return options, {}
    encoded = [json.dumps(o, sort_keys=True) for o in options]
    return encoded, dict(zip(encoded, options, strict=True))


def sample(trial: optuna.Trial, space: Mapping[str, Distribution]) -> dict[str, Any]:
    """Ask ``trial`` for a value of every active parameter; returns ``{key path: value}``.

    A conditional choice is asked first; only the chosen option's sub-space is asked after it.
    """
    values: dict[str, Any] = {}

    def walk(sub: Mapping[str, Distribution], condition: tuple[str, str] | None) -> None:
        for path, dist in sub.items():
            name = Param(path, dist, condition).name
            kind = dist.kind
            if kind == "choice":
                options = list(dist.branches) if dist.branches else list(dist.choice or [])
                encoded, decode = _encode(options)
                picked = trial.suggest_categorical(name, encoded)
                value = decode.get(picked, picked)
            elif kind == "int":
                low, high = dist.int_ or (0, 0)
                value = trial.suggest_int(name, low, high, step=int(dist.step or 1), log=dist.log)
            else:
                low, high = dist.value_of(kind)
                value = trial.suggest_float(
                    name, low, high, step=dist.step, log=kind == "loguniform"
                )
            values[path] = value
            if dist.branches:
                walk(dist.branches[str(value)], (path, str(value)))

    walk(space, None)
    return values


def apply_params(recipe: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the recipe data with each ``key.path: value`` set.

    Setting a block's ``type`` to a different value starts that block afresh (``{type: mlp}``):
    the options of the old type do not apply to the new one.

    Example:
        >>> apply_params({"model": {"type": "cnn", "channels": [8]}}, {"model.type": "mlp"})
        {'model': {'type': 'mlp'}}
    """
    data = copy.deepcopy(dict(recipe))
    # types first, so a key written before its block's type is not cleared along with the old type
    ordered = sorted(values.items(), key=lambda item: item[0].rsplit(".", 1)[-1] != "type")
    for path, value in ordered:
        parts = path.split(".")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        last = parts[-1]
        if last == "type" and node.get("type") not in (None, value):
            node.clear()
        node[last] = value
    return data


def uses_data(space: Mapping[str, Distribution]) -> bool:
    """Whether any searched key changes the data block (then data is prepared per trial)."""
    return any(p.path.split(".")[0] == "data" for p in iter_params(space))


def _model_keys(model_type: str) -> list[str] | None:
    from danlu.models import MODELS

    try:
        entry = MODELS.get(model_type)
    except Exception:  # an unknown type is reported where it is set
        return None
    if entry.spec is None:
        return None  # a user builder without a spec takes any key
    return ["type", *entry.spec.model_fields]


def _path_issue(param: Param, model_type: str) -> ConfigIssue | None:
    """Whether ``param.path`` names a key of the recipe, with the nearest valid key if not."""
    loc = param.loc
    parts = param.path.split(".")
    if any(not p for p in parts):
        return ConfigIssue(loc, "a key path has an empty part", param.path, "Write it as a.b.c.")
    if parts[0] in _UNTUNABLE:
        return ConfigIssue(
            loc, f"'{parts[0]}' cannot be tuned", param.path, "Search training settings instead."
        )
    if parts[0] == "model":
        if param.condition is not None and param.condition[0] == "model.type":
            model_type = param.condition[1]
        valid = _model_keys(model_type)
        if valid is None or len(parts) == 1:
            return None
        if len(parts) > 2 or parts[1] not in valid:
            hint = did_you_mean(parts[1], valid)
            return ConfigIssue(
                loc,
                f"model '{model_type}' has no option '{'.'.join(parts[1:])}'",
                param.path,
                f"{hint} Options of '{model_type}': {', '.join(valid)}.".strip(),
            )
        return None
    for depth, part in enumerate(parts):
        valid = schema_keys(tuple(parts[:depth]))
        prefix = ".".join(parts[:depth]) or "the recipe"
        if valid is None:
            return ConfigIssue(
                loc, f"'{prefix}' is a value, not a block, so it has no key '{part}'", param.path
            )
        if part not in valid:
            # Compare the last key alone: a shared "train.optimizer." prefix makes any key look close.
            near = _SYNONYMS.get(part) if _SYNONYMS.get(part) in valid else closest(part, valid)
            hint = f" Did you mean '{'.'.join([*parts[:depth], near])}'?" if near else ""
            return ConfigIssue(
                loc,
                "no such key in the recipe",
                param.path,
                f"{hint} Keys of {prefix}: {', '.join(valid)}.".strip(),
            )
    return None


def _probe_values(dist: Distribution) -> list[Any]:
    """Values that show whether the recipe accepts the distribution: its ends, or every option."""
    if dist.kind == "choice":
        options = list(dist.branches) if dist.branches else list(dist.choice or [])
        return options[:20]
    low, high = dist.value_of(dist.kind)
    if low == high:
        return [low]
    if dist.kind == "int":
        return [low, high]
    # an inner value too: a float range on a whole-number key fails only between its ends
    inner = low + dist.step if dist.step else low + (high - low) * 0.382
    return [low, inner, high] if inner < high else [low, high]


def _value_issue(base: dict[str, Any], param: Param, value: Any) -> ConfigIssue | None:
    """Build the recipe with ``value`` at the path and report the first thing wrong with it."""
    from danlu.config import load_recipe
    from danlu.train import check_recipe

    values = {param.condition[0]: param.condition[1]} if param.condition else {}
    values[param.path] = value
    try:
        check_recipe(load_recipe(apply_params(base, values)))
    except ConfigError as exc:
        reasons = [line.strip() for line in str(exc).splitlines()[1:]]
        reasons = [r.split(": ", 1)[1] if r.startswith("<recipe>:") else r for r in reasons]
        reasons = [r.rstrip(".") for r in reasons]
        whole = param.dist.kind in ("uniform", "loguniform") and "valid integer" in str(exc)
        return ConfigIssue(
            param.loc,
            f"the value {value!r} makes an invalid recipe ({'; '.join(reasons)})",
            None,
            "The key takes whole numbers: use int: [low, high]."
            if whole
            else "Narrow the range or change the options.",
        )
    return None


def check_tune(recipe: Recipe) -> list[ConfigIssue]:
    """Everything wrong with the recipe's ``tune`` block, all at once (empty when it is fine)."""
    from danlu.config import recipe_to_dict
    from danlu.tasks import get_task

    tune = recipe.tune
    if tune is None:
        return [
            ConfigIssue(
                ("tune",),
                "the recipe has no tune block",
                None,
                "Add tune: {metric: val_loss, trials: 20, space: {train.optimizer.lr: "
                "{loguniform: [1.0e-4, 1.0e-2]}}}.",
            )
        ]
    issues: list[ConfigIssue] = []
    valid = get_task(recipe.task).monitorable()
    if tune.metric not in valid:
        hint = did_you_mean(tune.metric, valid)
        why = (
            "test metrics must not choose the model (that would leak the test set into it)"
            if tune.metric.startswith("test_")
            else f"the {recipe.task} task does not record this metric each epoch"
        )
        issues.append(
            ConfigIssue(
                ("tune", "metric"),
                why,
                tune.metric,
                f"{hint} Choose one of {', '.join(valid)}.".strip(),
            )
        )
    elif tune.metric.startswith("val_") and recipe.data.split.val == 0:
        issues.append(
            ConfigIssue(
                ("tune", "metric"),
                "data.split.val is 0, so there is no validation metric to tune on",
                tune.metric,
                "Set data.split.val (e.g. 0.1).",
            )
        )
    params = list(iter_params(tune.space))
    base = recipe_to_dict(recipe)
    base.pop("tune", None)
    base.pop("register", None)
    for param in params:
        issue = _path_issue(param, recipe.model.type)
        if issue is None:
            for value in _probe_values(param.dist):
                issue = _value_issue(base, param, value)
                if issue is not None:
                    break
        if issue is not None:
            issues.append(issue)
        elif tune.sampler.name == "grid" and param.condition is None:
            # a conditional choice is reported once, at the choice, not at each key under it
            if param.dist.branches:
                issues.append(
                    ConfigIssue(
                        param.loc,
                        "the grid sampler needs the same keys in every trial, so it cannot search a conditional choice",
                        None,
                        "Use sampler: tpe (or random), or write separate recipes per option.",
                    )
                )
            elif not param.dist.is_discrete:
                issues.append(
                    ConfigIssue(
                        param.loc,
                        f"the grid sampler lists every value, and a {param.dist.kind} range has infinitely many",
                        None,
                        "Add a step (uniform ranges), or list values with choice: [...]"
                        if param.dist.kind == "uniform"
                        else "List the values with choice: [1.0e-4, 1.0e-3, 1.0e-2].",
                    )
                )
    return issues


def grid_space(space: Mapping[str, Distribution]) -> dict[str, list[Any]]:
    """The grid sampler's search space: every value of every parameter (encoded like sample)."""
    return {Param(path, dist).name: _encode(dist.grid_values())[0] for path, dist in space.items()}
