from __future__ import annotations

import json
import textwrap

import pytest

from danlu.config import Recipe, load_recipe, parse_override, recipe_to_yaml
from danlu.errors import ConfigError

GOOD = """\
name: iris
data:
  source: builtin:iris
task: classification
model:
  type: mlp
  hidden: [8]
train:
  epochs: 3
"""


def write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_good_recipe_loads_with_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path, GOOD))
    assert isinstance(recipe, Recipe)
    assert recipe.train.epochs == 3
    assert recipe.train.optimizer.name == "adamw"
    assert recipe.model.options() == {"hidden": [8]}
    assert recipe.schema_version == 1


def test_all_errors_at_once_with_lines_paths_and_hints(tmp_path):
    path = write(
        tmp_path,
        """\
        name: digits
        data:
          sourse: builtin:digits
        task: clasification
        model: {type: cnn}
        train:
          batch_size: 0
          optimizer: {name: adam, lr: -0.1}
          precison: bf16
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert "5 problems" in msg
    assert f"{path}:3: data.sourse: unknown key. Did you mean 'source'?" in msg
    assert f"{path}:2: data.source: required key is missing" in msg
    assert f"{path}:7: train.batch_size:" in msg and "found 0" in msg
    assert f"{path}:8: train.optimizer.lr: Input should be greater than 0 (found -0.1)" in msg
    assert f"{path}:9: train.precison: unknown key. Did you mean 'precision'?" in msg


def test_unknown_top_level_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"tunning: unknown key. Valid keys here: .*tune"):
        load_recipe(write(tmp_path, GOOD + "tunning: {trials: 3}\n"))


def test_overrides_coerce_types_and_are_named_in_errors(tmp_path):
    path = write(tmp_path, GOOD)
    recipe = load_recipe(
        path,
        [
            "train.optimizer.lr=3e-4",
            "train.epochs=7",
            "data.split.stratify=false",
            "model.hidden=[4, 4]",
        ],
    )
    assert recipe.train.optimizer.lr == pytest.approx(3e-4)
    assert recipe.train.epochs == 7
    assert recipe.data.split.stratify is False
    assert recipe.model.options()["hidden"] == [4, 4]
    with pytest.raises(ConfigError, match=r"--set train\.seed=abc: train\.seed"):
        load_recipe(path, ["train.seed=abc"])
    with pytest.raises(
        ConfigError,
        match=r"--set train\.optimzer\.lr=1: train\.optimzer: unknown key\. Did you mean 'optimizer'",
    ):
        load_recipe(path, ["train.optimzer.lr=1"])


@pytest.mark.parametrize("bad", ["train.epochs", "=3", "train..epochs=3"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override(bad)


def test_override_through_a_scalar_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="'train.epochs' is a int"):
        load_recipe(write(tmp_path, GOOD), ["train.epochs.x=1"])


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "is empty"),
        ("- a\n- b\n", "must be a mapping"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_unreadable_recipes(tmp_path, text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_recipe(write(tmp_path, text))


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_split_must_leave_training_rows(tmp_path):
    with pytest.raises(ConfigError, match="at least 10% of rows"):
        load_recipe(write(tmp_path, GOOD), ["data.split.test=0.5", "data.split.val=0.45"])


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(write(tmp_path, GOOD))
    again = write(tmp_path, recipe_to_yaml(recipe), "resolved.yaml")
    assert load_recipe(again).model_dump() == recipe.model_dump()
    json.dumps(recipe.model_dump(mode="json"))


def test_recipe_from_mapping_and_recipe_object():
    data = {
        "name": "x",
        "data": {"source": "builtin:iris"},
        "task": "classification",
        "model": {"type": "mlp"},
    }
    recipe = load_recipe(data, ["train.seed=5"])
    assert recipe.train.seed == 5
    assert load_recipe(recipe) is recipe
    assert load_recipe(recipe, ["train.seed=6"]).train.seed == 6


def test_an_unknown_task_is_named_with_its_line_and_the_nearest_task(tmp_path):
    """Tasks are a registry (danlu.tasks), checked with the model's options when a recipe is
    validated for a run: the error points at the line and suggests the nearest task."""
    from danlu.train import check_recipe

    path = write(tmp_path, GOOD.replace("task: classification", "task: clasification"))
    with pytest.raises(ConfigError) as info:
        check_recipe(load_recipe(path))
    msg = str(info.value)
    assert f"{path}:" in msg and "task: unknown task (found 'clasification')" in msg
    assert "Did you mean 'classification'?" in msg and "classification," in msg.split("Tasks:")[1]


TUNED = (
    GOOD
    + """\
tune:
  trials: 2
  space:
    train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]}
"""
)


def test_set_reaches_tune_space_entries_whose_names_have_dots(tmp_path):
    """A space entry is named by a recipe key path: --set tune.space.model.dropout=... adds the
    entry 'model.dropout' (its value a YAML flow mapping), and a field of an entry the file has
    can be changed alone; errors name the entry and the flag."""
    path = write(tmp_path, TUNED)
    recipe = load_recipe(path, ["tune.space.model.dropout={uniform: [0.1, 0.5], step: 0.1}"])
    space = recipe.tune.space
    assert set(space) == {"train.optimizer.lr", "model.dropout"}
    assert space["model.dropout"].uniform == (0.1, 0.5) and space["model.dropout"].step == 0.1
    changed = load_recipe(path, ["tune.space.train.optimizer.lr.loguniform=[0.001, 0.1]"])
    assert changed.tune.space["train.optimizer.lr"].loguniform == (0.001, 0.1)
    assert set(changed.tune.space) == {"train.optimizer.lr"}

    flag = "tune.space.model.dropout={uniform: [0.5, 0.1]}"
    with pytest.raises(ConfigError) as info:
        load_recipe(path, [flag])
    assert f"--set {flag}: tune.space.model.dropout.uniform:" in str(info.value)
    assert "swap the two values" in str(info.value)
    with pytest.raises(ConfigError, match=r"tune\.space\.model\.dropout\.unifrm: unknown key"):
        load_recipe(path, ["tune.space.model.dropout={unifrm: [0.1, 0.5]}"])


def test_evaluate_tune_and_register_take_true_and_false(tmp_path):
    """Blocks switch like the report's sections: false is off (as when left out), evaluate: true
    is the whole report with its defaults, a --set inside a block switched off turns it on."""
    from danlu.pipeline import recipe_json_schema

    off = load_recipe(write(tmp_path, GOOD + "evaluate: false\ntune: false\nregister: false\n"))
    assert off.evaluate is None and off.tune is None and off.register is None
    assert load_recipe(write(tmp_path, GOOD + "evaluate: true\n")).evaluate.bootstrap == 1000
    path = write(tmp_path, GOOD + "evaluate: false\n")
    assert load_recipe(path, ["evaluate.bootstrap=10"]).evaluate.bootstrap == 10
    assert load_recipe(path, ["evaluate=true"]).evaluate is not None
    with pytest.raises(ConfigError, match=r"recipe.yaml:\d+: register.name: required key"):
        load_recipe(write(tmp_path, GOOD + "register: true\n"))
    properties = recipe_json_schema()["properties"]
    assert {"type": "boolean"} in properties["evaluate"]["anyOf"]
    assert {"const": False} in properties["register"]["anyOf"]
    assert {"const": False} in properties["tune"]["anyOf"]
