"""The ``tune:`` block's schema: distributions, samplers, pruners, budgets, and their errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from danlu.config import (
    Distribution,
    PrunerConfig,
    SamplerConfig,
    TuneConfig,
    load_recipe,
    recipe_to_dict,
    recipe_to_yaml,
)
from danlu.errors import ConfigError

BASE = """\
name: iris
data:
  source: builtin:iris
task: classification
model:
  type: mlp
  hidden: [8]
train:
  epochs: 3
tune:
  metric: val_loss
"""
TUNE_LINE = 10
SPACE_LINE = 13  # after "  trials: 4"; the space's first key is on the next line


def write(
    tmp_path: Path, space: str, tune: str = "  trials: 4\n", name: str = "recipe.yaml"
) -> Path:
    """The base recipe with ``tune`` lines (indented) added and ``space`` under tune.space."""
    text = BASE + tune + "  space:\n" + textwrap.indent(textwrap.dedent(space), "    ")
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    return str(info.value)


def line(path: Path, key: str) -> int:
    """The line of ``key`` in the file (so the tests do not hard-code line numbers)."""
    lines = path.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.strip().startswith(f"{key}:"))


# --- distributions that parse ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kind", "bounds"),
    [
        ({"uniform": [0.0, 0.5]}, "uniform", (0.0, 0.5)),
        ({"loguniform": [1e-4, 1e-2]}, "loguniform", (1e-4, 1e-2)),
        ({"int": [1, 8]}, "int", (1, 8)),
        ({"int": [2, 64], "log": True}, "int", (2, 64)),
        ({"choice": [32, 64]}, "choice", [32, 64]),
        ({"uniform": [3, 3]}, "uniform", (3.0, 3.0)),  # one value is allowed
    ],
)
def test_each_distribution_kind_parses(data, kind, bounds):
    dist = Distribution.model_validate(data)
    assert dist.kind == kind
    assert dist.value_of(kind) == bounds
    assert dist.branches is None


def test_int_is_read_under_its_yaml_name_and_stays_whole():
    dist = Distribution.model_validate({"int": [1, 9], "step": 2})
    assert dist.int_ == (1, 9) and isinstance(dist.int_[0], int)
    assert dist.model_dump() == {"int": (1, 9), "step": 2.0}


def test_a_conditional_choice_keeps_each_options_sub_space():
    dist = Distribution.model_validate(
        {
            "choice": {
                "mlp": {"model.hidden": {"choice": [[64], [128, 64]]}},
                "cnn": {"model.channels": {"choice": [[16, 32]]}, "model.kernel": {"int": [3, 5]}},
            }
        }
    )
    assert dist.kind == "choice"
    assert dist.branches is not None
    assert list(dist.branches) == ["mlp", "cnn"]
    assert dist.branches["cnn"]["model.kernel"].int_ == (3, 5)
    assert dist.grid_values() == ["mlp", "cnn"]


def test_discreteness():
    assert Distribution.model_validate({"int": [1, 3]}).is_discrete
    assert Distribution.model_validate({"choice": ["a"]}).is_discrete
    assert Distribution.model_validate({"uniform": [0, 1], "step": 0.5}).is_discrete
    assert not Distribution.model_validate({"uniform": [0, 1]}).is_discrete
    assert not Distribution.model_validate({"loguniform": [0.1, 1]}).is_discrete


# --- grid values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "values"),
    [
        ({"int": [1, 4]}, [1, 2, 3, 4]),
        ({"int": [1, 10], "step": 3}, [1, 4, 7, 10]),
        ({"int": [16, 64], "step": 16}, [16, 32, 48, 64]),
        ({"uniform": [0.1, 0.4], "step": 0.1}, [0.1, 0.2, 0.3, 0.4]),
        ({"uniform": [0.0, 0.5], "step": 0.05}, [round(0.05 * i, 2) for i in range(11)]),
        ({"choice": [[8], [16, 8], "auto"]}, [[8], [16, 8], "auto"]),
    ],
)
def test_grid_values(data, values):
    assert (
        Distribution.model_validate(data).grid_values() == values
    )  # rounded: 0.3, not 0.30000000000000004


@pytest.mark.parametrize(
    ("data", "top"),
    [({"uniform": [0.0, 1.0], "step": 0.3}, "0.9"), ({"int": [1, 8], "step": 2}, "7")],
)
def test_a_range_that_is_not_a_whole_number_of_steps_is_refused(data, top):
    # Optuna would silently lower the top of the range (with a warning): say so up front
    with pytest.raises(ValidationError, match=rf"not a whole number of steps .*end it at {top}"):
        Distribution.model_validate(data)


def test_grid_values_of_a_continuous_range_is_an_error():
    with pytest.raises(ValueError, match="a loguniform distribution without a step"):
        Distribution.model_validate({"loguniform": [1e-4, 1e-2]}).grid_values()
    with pytest.raises(ValueError, match="a uniform distribution without a step"):
        Distribution.model_validate({"uniform": [0, 1]}).grid_values()


# --- distributions that are refused, with the file line of the key --------------------------


def test_low_above_high_names_the_key_path_and_says_to_swap(tmp_path):
    path = write(tmp_path, "train.optimizer.lr: {uniform: [0.1, 0.01]}\n")
    msg = load_error(path)
    assert "1 problem:" in msg
    assert f"{path}:{SPACE_LINE + 1}: tune.space.train.optimizer.lr.uniform: " in msg
    assert "uniform needs low <= high; got [0.1, 0.01] (swap the two values)" in msg


@pytest.mark.parametrize("kind", ["int", "loguniform"])
def test_low_above_high_for_every_range_kind(kind):
    with pytest.raises(
        ValidationError, match=rf"{kind} needs low <= high; got \[8(\.0)?, 2(\.0)?\]"
    ):
        Distribution.model_validate({kind: [8, 2]})


@pytest.mark.parametrize(("low", "shown"), [("0", "0.0"), ("-1.0e-3", "-0.001")])
def test_loguniform_needs_a_positive_low(tmp_path, low, shown):
    path = write(tmp_path, f"train.optimizer.lr: {{loguniform: [{low}, 1.0e-2]}}\n")
    msg = load_error(path)
    assert f"{path}:{SPACE_LINE + 1}: tune.space.train.optimizer.lr.loguniform: " in msg
    assert (
        f"loguniform needs 0 < low (a log scale has no 0 or negative values); got low = {shown}"
        in msg
    )
    assert "Use a small positive low such as 1e-6, or uniform" in msg


def test_infinite_bounds_are_refused():
    with pytest.raises(
        ValidationError, match=r"uniform bounds must be finite numbers; got \[0.0, inf\]"
    ):
        Distribution.model_validate({"uniform": [0, float("inf")]})


def test_an_empty_space_is_an_error(tmp_path):
    path = write(tmp_path, "{}\n")
    msg = load_error(path)
    assert f"{path}:{SPACE_LINE}: tune.space: " in msg
    assert "the search space is empty; add at least one key, e.g. train.optimizer.lr:" in msg


def test_a_tune_block_without_a_space_is_as_empty(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(BASE)
    msg = load_error(path)
    assert f"{path}:{TUNE_LINE}: tune.space: " in msg  # the tune: line, where the space is missing
    assert "the search space is empty" in msg
    with pytest.raises(ValidationError, match="the search space is empty"):
        TuneConfig()


def test_an_empty_choice_is_an_error(tmp_path):
    path = write(tmp_path, "train.batch_size: {choice: []}\n")
    msg = load_error(path)
    assert f"{path}:{SPACE_LINE + 1}: tune.space.train.batch_size.choice: " in msg
    assert "choice needs at least one option (found [])" in msg


def test_two_kinds_in_one_distribution_is_an_error(tmp_path):
    path = write(tmp_path, "train.optimizer.lr: {uniform: [0.1, 0.2], choice: [0.1]}\n")
    msg = load_error(path)
    assert f"{path}:{SPACE_LINE + 1}: tune.space.train.optimizer.lr: " in msg
    assert (
        "a distribution names exactly one of uniform, loguniform, int, choice (found uniform, choice)"
        in msg
    )


def test_no_kind_at_all_is_an_error():
    with pytest.raises(ValidationError, match=r"exactly one of .* \(found none\)"):
        Distribution.model_validate({"step": 0.1})


def test_an_unknown_distribution_key_suggests_the_nearest(tmp_path):
    path = write(tmp_path, "train.optimizer.lr: {unifrom: [0.1, 0.2]}\n")
    msg = load_error(path)
    assert (
        f"{path}:{SPACE_LINE + 1}: tune.space.train.optimizer.lr.unifrom: unknown key. "
        "Did you mean 'uniform'? Valid keys here: uniform, loguniform, int, choice, step, log."
    ) in msg


@pytest.mark.parametrize(
    ("dist", "fragment"),
    [
        (
            "{loguniform: [1.0e-4, 1.0e-2], step: 1.0e-4}",
            "step applies to uniform and int ranges, not to loguniform",
        ),
        ("{choice: [1, 2], step: 1}", "step applies to uniform and int ranges, not to choice"),
        (
            "{uniform: [0.1, 0.2], log: true}",
            "log applies to int ranges only (use loguniform instead of uniform)",
        ),
        ("{int: [1, 5], step: 1.5}", "an int range needs a whole step; got 1.5"),
        (
            "{int: [1, 64], log: true, step: 2}",
            "an int range cannot have both log and a step other than 1",
        ),
    ],
)
def test_options_that_do_not_fit_the_kind_are_refused(tmp_path, dist, fragment):
    path = write(tmp_path, f"train.epochs: {dist}\n")
    msg = load_error(path)
    assert f"{path}:{SPACE_LINE + 1}: tune.space.train.epochs: " in msg
    assert fragment in msg


def test_step_must_be_positive():
    with pytest.raises(ValidationError, match="greater than 0"):
        Distribution.model_validate({"uniform": [0, 1], "step": 0})


def test_int_bounds_must_be_whole():
    with pytest.raises(ValidationError, match="fractional part"):
        Distribution.model_validate({"int": [2.5, 10]})


def test_every_error_in_the_space_at_once_each_on_its_line(tmp_path):
    path = write(
        tmp_path,
        """\
        train.optimizer.lr: {loguniform: [0, 1.0e-2]}
        train.epochs: {int: [5, 1]}
        model.dropout: {uniform: [0.0, 0.5], log: true}
        train.batch_size: {choice: []}
        """,
    )
    msg = load_error(path)
    assert "4 problems:" in msg
    lines = msg.splitlines()[1:]
    assert [line.split(": ")[0].strip() for line in lines] == [
        f"{path}:{line(path, key)}"
        for key in ("train.optimizer.lr", "train.epochs", "model.dropout", "train.batch_size")
    ]


def test_an_error_inside_a_conditional_sub_space_is_reported_once_on_its_line(tmp_path):
    path = write(
        tmp_path,
        """\
        model.type:
          choice:
            mlp:
              model.dropout: {uniform: [0.5, 0.1]}
        """,
    )
    msg = load_error(path)
    assert "1 problem:" in msg
    assert f"{path}:{line(path, 'model.dropout')}: " in msg
    assert "tune.space.model.type.choice.mlp.model.dropout.uniform: " in msg
    assert "uniform needs low <= high; got [0.5, 0.1] (swap the two values)" in msg


# --- samplers, pruners, budgets -------------------------------------------------------------


def test_sampler_and_pruner_from_a_name():
    tune = TuneConfig.model_validate(
        {"sampler": "random", "pruner": "asha", "space": {"train.epochs": {"int": [1, 3]}}}
    )
    assert tune.sampler == SamplerConfig(name="random")
    assert tune.sampler.seed == 0  # the default seed is kept with the shorthand
    assert tune.pruner == PrunerConfig(name="asha")
    assert tune.pruner.reduction_factor == 3


def test_sampler_and_pruner_from_a_mapping():
    tune = TuneConfig.model_validate(
        {
            "sampler": {"name": "tpe", "seed": 7, "startup_trials": 3},
            "pruner": {"name": "median", "startup_trials": 2, "warmup_epochs": 0},
            "space": {"train.epochs": {"int": [1, 3]}},
        }
    )
    assert (tune.sampler.name, tune.sampler.seed, tune.sampler.startup_trials) == ("tpe", 7, 3)
    assert (tune.pruner.name, tune.pruner.startup_trials, tune.pruner.warmup_epochs) == (
        "median",
        2,
        0,
    )


def test_defaults():
    tune = TuneConfig.model_validate({"space": {"train.epochs": {"int": [1, 3]}}})
    assert (tune.metric, tune.direction, tune.trials, tune.timeout) == (
        "val_loss",
        "auto",
        20,
        None,
    )
    assert tune.sampler.name == "tpe" and tune.pruner.name == "none"
    assert tune.study is None and tune.refit is False


def test_an_unknown_sampler_is_an_error_on_its_line(tmp_path):
    path = write(tmp_path, "train.epochs: {int: [1, 3]}\n", tune="  sampler: bayes\n")
    msg = load_error(path)
    assert (
        f"{path}:12: tune.sampler.name: Input should be 'grid', 'random', 'tpe', 'cmaes' or 'qmc'"
        in msg
    )


def test_an_unknown_pruner_suggests_the_nearest(tmp_path):
    path = write(tmp_path, "train.epochs: {int: [1, 3]}\n", tune="  pruner: hyperbad\n")
    msg = load_error(path)
    assert f"{path}:12: tune.pruner.name: " in msg
    assert "Did you mean 'hyperband'?" in msg


def test_reduction_factor_below_two_is_refused():
    with pytest.raises(ValidationError, match="greater than or equal to 2"):
        PrunerConfig(name="asha", reduction_factor=1)


def test_no_trials_and_no_timeout_is_refused_unless_grid(tmp_path):
    space = "train.epochs: {int: [1, 3]}\n"
    path = write(tmp_path, space, tune="  trials: null\n  timeout: null\n")
    msg = load_error(path)
    assert f"{path}:{TUNE_LINE}: tune: " in msg
    assert "give tune.trials or tune.timeout (or both) so the study ends" in msg
    # the grid ends when every point is tried; a timeout alone also ends the study
    grid = write(tmp_path, space, tune="  trials: null\n  sampler: grid\n", name="grid.yaml")
    assert load_recipe(grid).tune.trials is None
    timed = write(tmp_path, space, tune="  trials: null\n  timeout: 60\n", name="timed.yaml")
    assert load_recipe(timed).tune.timeout == 60


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("trials", 0, "greater than 0"),
        ("timeout", -1, "greater than 0"),
        ("direction", "max", "Input should be 'auto', 'maximize' or 'minimize'"),
        ("study", "bad name!", "should match pattern"),
    ],
)
def test_bad_settings(key, value, fragment):
    with pytest.raises(ValidationError, match=fragment):
        TuneConfig.model_validate({key: value, "space": {"train.epochs": {"int": [1, 3]}}})


# --- saving -------------------------------------------------------------------------------


def test_saved_recipe_shows_only_the_written_keys_and_round_trips(tmp_path):
    path = write(
        tmp_path,
        """\
        train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]}
        model.dropout: {uniform: [0.0, 0.5], step: 0.05}
        train.epochs: {int: [2, 32], log: true}
        model.hidden: {choice: [[8], [16, 8]]}
        model.type:
          choice:
            mlp: {model.batch_norm: {choice: [true, false]}}
            cnn: {model.kernel: {int: [3, 5], step: 2}}
        """,
        tune="  trials: 4\n  sampler: random\n  pruner: median\n",
    )
    recipe = load_recipe(path)
    saved = recipe_to_dict(recipe)
    assert saved["tune"]["space"] == {
        "train.optimizer.lr": {"loguniform": [1e-4, 1e-2]},
        "model.dropout": {"uniform": [0.0, 0.5], "step": 0.05},
        "train.epochs": {"int": [2, 32], "log": True},
        "model.hidden": {"choice": [[8], [16, 8]]},
        "model.type": {
            "choice": {
                "mlp": {"model.batch_norm": {"choice": [True, False]}},
                "cnn": {"model.kernel": {"int": [3, 5], "step": 2.0}},
            }
        },
    }
    assert saved["tune"]["sampler"] == {"name": "random", "seed": 0, "startup_trials": None}
    assert saved["tune"]["pruner"]["name"] == "median"
    # the YAML text loads back to the same recipe
    again = tmp_path / "resolved.yaml"
    again.write_text(recipe_to_yaml(recipe))
    assert load_recipe(again).model_dump() == recipe.model_dump()
    assert load_recipe(saved).tune == recipe.tune
    assert "int_" not in recipe_to_yaml(recipe)
    assert yaml.safe_load(recipe_to_yaml(recipe))["tune"]["space"] == saved["tune"]["space"]


def test_example_tune_recipe_loads():
    root = Path(__file__).resolve().parents[2]
    recipe = load_recipe(root / "examples" / "digits_tune.yaml")
    assert recipe.tune is not None
    assert recipe.tune.sampler.name == "tpe" and recipe.tune.pruner.name == "asha"
    assert recipe.tune.space["model.channels"].choice == [[8, 16], [16, 32], [32, 64]]
