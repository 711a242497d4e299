"""The search space: checked against the recipe, sampled through Optuna, applied to the recipe."""

from __future__ import annotations

import itertools
import json
import math
import re
import textwrap
from pathlib import Path

import optuna
import pytest

from danlu.config import ConfigIssue, TuneConfig, load_recipe, raise_issues, recipe_to_dict
from danlu.errors import ConfigError
from danlu.tune import apply_params, check_tune, iter_params, sample
from danlu.tune._space import grid_space, uses_data
from danlu.tune._study import quiet_optuna

ROOT = Path(__file__).resolve().parents[2]

MLP = """\
name: iris
data:
  source: builtin:iris
task: {task}
model:
  type: mlp
  hidden: [8]
train:
  epochs: 3
tune:
  metric: {metric}
  trials: 4
"""
CNN = """\
name: digits
data:
  source: builtin:digits
task: classification
model: {{type: cnn, channels: [4, 8], hidden: 16}}
train:
  epochs: 3
tune:
  metric: {metric}
  trials: 4
"""
METRIC_LINE = 11


def write(
    tmp_path: Path,
    space: str,
    *,
    base: str = MLP,
    metric: str = "val_loss",
    task: str = "classification",
    tune: str = "",
) -> Path:
    text = base.format(metric=metric, task=task) + tune + "  space:\n"
    path = tmp_path / "recipe.yaml"
    path.write_text(text + textwrap.indent(textwrap.dedent(space), "    "))
    return path


def line(path: Path, key: str) -> int:
    """The line where ``key`` is written under tune.space (so tests do not count lines)."""
    lines = path.read_text().splitlines()
    start = lines.index("  space:")
    written = re.compile(rf"(^|[\s{{]){re.escape(key)}:")
    return next(i for i, text in enumerate(lines[start:], start + 1) if written.search(text))


def problems(path: Path) -> str:
    """The one ConfigError that ``danlu tune`` raises for the recipe, as text ("" when fine)."""
    recipe = load_recipe(path)
    try:
        raise_issues(check_tune(recipe), recipe._source)
    except ConfigError as exc:
        return str(exc)
    return ""


def space(data: dict) -> dict:
    return TuneConfig.model_validate({"space": data}).space


# --- check_tune: the metric -----------------------------------------------------------------


def test_a_valid_space_has_no_issues(tmp_path):
    path = write(
        tmp_path,
        """\
        train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]}
        train.optimizer.name: {choice: [adam, sgd]}
        train.epochs: {int: [1, 5]}
        train.batch_size: {uniform: [16, 64], step: 16}
        train.early_stopping.patience: {int: [1, 3]}
        data.split.val: {uniform: [0.1, 0.3]}
        model.dropout: {uniform: [0.0, 0.5]}
        model.hidden: {choice: [[8], [16, 8]]}
        model.activation: {choice: [relu, gelu]}
        """,
    )
    assert check_tune(load_recipe(path)) == []


def test_the_example_tune_recipe_is_valid():
    assert check_tune(load_recipe(ROOT / "examples" / "digits_tune.yaml")) == []


def test_a_recipe_without_a_tune_block():
    recipe = load_recipe(
        {
            "name": "x",
            "data": {"source": "builtin:iris"},
            "task": "classification",
            "model": {"type": "mlp"},
        }
    )
    [issue] = check_tune(recipe)
    assert issue == ConfigIssue(("tune",), "the recipe has no tune block", None, issue.fix)
    assert issue.fix.startswith("Add tune: {metric: val_loss, trials: 20, space:")


def test_a_metric_the_task_does_not_record(tmp_path):
    path = write(tmp_path, "train.epochs: {int: [1, 3]}\n", metric="val_r2")
    assert problems(path) == (
        f"The recipe {path} has 1 problem:\n"
        f"  {path}:{METRIC_LINE}: tune.metric: the classification task does not record this "
        "metric each epoch (found 'val_r2'). Choose one of train_loss, val_loss, val_accuracy."
    )


def test_a_misspelt_metric_suggests_the_nearest(tmp_path):
    path = write(tmp_path, "train.epochs: {int: [1, 3]}\n", metric="val_acuracy")
    assert (
        f"{path}:{METRIC_LINE}: tune.metric: the classification task does not record this metric "
        "each epoch (found 'val_acuracy'). Did you mean 'val_accuracy'? Choose one of"
    ) in problems(path)


def test_metrics_follow_the_task(tmp_path):
    path = write(tmp_path, "train.epochs: {int: [1, 3]}\n", metric="val_r2", task="regression")
    assert problems(path) == ""
    bad = write(tmp_path, "train.epochs: {int: [1, 3]}\n", metric="val_accuracy", task="regression")
    assert (
        "tune.metric: the regression task does not record this metric each epoch "
        "(found 'val_accuracy'). Choose one of train_loss, val_loss, val_"
    ) in problems(bad)


def test_a_test_metric_is_refused_because_it_leaks(tmp_path):
    path = write(tmp_path, "train.epochs: {int: [1, 3]}\n", metric="test_accuracy")
    assert (
        f"{path}:{METRIC_LINE}: tune.metric: test metrics must not choose the model (that would "
        "leak the test set into it) (found 'test_accuracy'). Did you mean 'val_accuracy'?"
    ) in problems(path)


def test_a_validation_metric_needs_a_validation_split(tmp_path):
    path = write(tmp_path, "train.epochs: {int: [1, 3]}\n")
    path.write_text(
        path.read_text().replace("source: builtin:iris", "source: builtin:iris\n  split: {val: 0}")
    )
    assert (
        "tune.metric: data.split.val is 0, so there is no validation metric to tune on "
        "(found 'val_loss'). Set data.split.val (e.g. 0.1)."
    ) in problems(path)


# --- check_tune: key paths ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "fix"),
    [
        (
            "train.optimizer.learning_rate",
            "Did you mean 'train.optimizer.lr'? Keys of train.optimizer: name, lr, weight_decay, "
            "momentum, nesterov, betas.",
        ),
        ("train.epoch", "Did you mean 'train.epochs'? Keys of train: epochs, batch_size,"),
        ("train.optimizer.momentm", "Did you mean 'train.optimizer.momentum'?"),
        ("trian.epochs", "Did you mean 'train'? Keys of the recipe: name,"),
    ],
)
def test_a_key_that_does_not_exist_suggests_the_nearest(tmp_path, key, fix):
    path = write(tmp_path, f"{key}: {{uniform: [0.1, 0.2]}}\n")
    msg = problems(path)
    assert "1 problem:" in msg
    assert (
        f"{path}:{line(path, key)}: tune.space.{key}: no such key in the recipe (found '{key}'). {fix}"
    ) in msg


def test_an_unrelated_key_gets_no_suggestion(tmp_path):
    # "train.optimizer." shared by every candidate must not make any of them look close
    path = write(tmp_path, "train.optimizer.xyz: {uniform: [0.1, 0.2]}\n")
    msg = problems(path)
    assert (
        "no such key in the recipe (found 'train.optimizer.xyz'). Keys of train.optimizer:" in msg
    )
    assert "Did you mean" not in msg


def test_a_misspelt_model_option_suggests_the_nearest_for_the_models_type(tmp_path):
    path = write(tmp_path, "model.dropuot: {uniform: [0.0, 0.5]}\n", base=CNN)
    assert (
        f"{path}:{line(path, 'model.dropuot')}: tune.space.model.dropuot: model 'cnn' has no option "
        "'dropuot' (found 'model.dropuot'). Did you mean 'dropout'? Options of 'cnn': type, "
        "channels, kernel, convs_per_stage, pool, batch_norm, activation, hidden, dropout."
    ) in problems(path)


def test_an_option_of_another_model_is_an_error(tmp_path):
    path = write(tmp_path, "model.kernel: {int: [3, 5]}\n")
    assert "tune.space.model.kernel: model 'mlp' has no option 'kernel'" in problems(path)
    assert problems(write(tmp_path, "model.kernel: {int: [3, 5]}\n", base=CNN)) == ""


def test_a_key_under_a_value(tmp_path):
    path = write(tmp_path, "train.epochs.x: {int: [1, 3]}\n")
    assert (
        f"{path}:{line(path, 'train.epochs.x')}: tune.space.train.epochs.x: 'train.epochs' is a "
        "value, not a block, so it has no key 'x' (found 'train.epochs.x')."
    ) in problems(path)


def test_a_key_with_an_empty_part(tmp_path):
    path = write(tmp_path, "train..epochs: {int: [1, 3]}\n")
    assert (
        "tune.space.train..epochs: a key path has an empty part (found 'train..epochs'). "
        "Write it as a.b.c."
    ) in problems(path)


@pytest.mark.parametrize(
    ("key", "dist"),
    [
        ("name", "{choice: [a, b]}"),
        ("schema_version", "{choice: [1]}"),
        ("tune.trials", "{int: [1, 3]}"),
        ("register.alias", "{choice: [a, b]}"),
    ],
)
def test_keys_that_cannot_be_tuned(tmp_path, key, dist):
    path = write(tmp_path, f"{key}: {dist}\n")
    top = key.split(".")[0]
    assert (
        f"{path}:{line(path, key)}: tune.space.{key}: '{top}' cannot be tuned (found '{key}'). "
        "Search training settings instead."
    ) in problems(path)


# --- check_tune: values that make an invalid recipe -----------------------------------------


def test_a_range_past_what_the_key_allows(tmp_path):
    path = write(tmp_path, "model.dropout: {uniform: [0.0, 1.5]}\n")
    assert problems(path) == (
        f"The recipe {path} has 1 problem:\n"
        f"  {path}:{line(path, 'model.dropout')}: tune.space.model.dropout: the value 1.5 makes an "
        "invalid recipe (model.dropout: Input should be less than 1 (found 1.5)). Narrow the range "
        "or change the options."
    )


def test_the_low_end_is_checked_too(tmp_path):
    path = write(tmp_path, "train.epochs: {int: [0, 5]}\n")
    assert (
        "tune.space.train.epochs: the value 0 makes an invalid recipe (train.epochs: Input should be greater than 0"
        in problems(path)
    )


def test_a_float_range_on_a_whole_number_key(tmp_path):
    # both ends are whole (1.0 and 5.0 pass as 1 and 5), but a trial would draw 2.7 epochs
    path = write(tmp_path, "train.epochs: {uniform: [1, 5]}\n")
    msg = problems(path)
    assert "tune.space.train.epochs: the value 2.528 makes an invalid recipe" in msg
    assert "Input should be a valid integer, got a number with a fractional part" in msg
    assert msg.endswith("The key takes whole numbers: use int: [low, high].")
    # on a whole step it is fine; on a fractional step it is not
    assert problems(write(tmp_path, "train.batch_size: {uniform: [16, 64], step: 16}\n")) == ""
    half = problems(write(tmp_path, "train.batch_size: {uniform: [16, 64], step: 0.5}\n"))
    assert "tune.space.train.batch_size: the value 16.5 makes an invalid recipe" in half


def test_a_choice_option_that_is_not_valid(tmp_path):
    path = write(tmp_path, "train.optimizer.name: {choice: [adam, adamx]}\n")
    assert (
        "tune.space.train.optimizer.name: the value 'adamx' makes an invalid recipe "
        "(train.optimizer.name: Input should be 'sgd', 'adam', 'adamw', 'rmsprop' or 'adagrad' "
        "(found 'adamx'). Did you mean 'adam'?). Narrow the range or change the options."
    ) in problems(path)


def test_a_model_option_value_checked_by_the_models_spec(tmp_path):
    path = write(tmp_path, "model.activation: {choice: [relu, sigmoidd]}\n")
    assert (
        "tune.space.model.activation: the value 'sigmoidd' makes an invalid recipe "
        "(model.activation: Input should be 'relu', 'gelu', 'silu', 'tanh', 'leaky_relu' or 'elu' "
        "(found 'sigmoidd'))."
    ) in problems(path)


# --- check_tune: the grid sampler -----------------------------------------------------------


def test_grid_needs_discrete_distributions(tmp_path):
    path = write(
        tmp_path,
        """\
        train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]}
        model.dropout: {uniform: [0.0, 0.5]}
        train.epochs: {int: [1, 3]}
        train.batch_size: {choice: [16, 32]}
        train.l1: {uniform: [0.0, 0.01], step: 0.005}
        """,
        tune="  sampler: grid\n",
    )
    assert problems(path) == (
        f"The recipe {path} has 2 problems:\n"
        f"  {path}:{line(path, 'train.optimizer.lr')}: tune.space.train.optimizer.lr: the grid "
        "sampler lists every value, and a loguniform range has infinitely many. List the values "
        "with choice: [1.0e-4, 1.0e-3, 1.0e-2].\n"
        f"  {path}:{line(path, 'model.dropout')}: tune.space.model.dropout: the grid sampler lists "
        "every value, and a uniform range has infinitely many. Add a step (uniform ranges), or "
        "list values with choice: [...]."
    )


def test_grid_cannot_search_a_conditional_choice(tmp_path):
    path = write(
        tmp_path,
        """\
        model.type:
          choice:
            mlp: {model.hidden: {choice: [[8], [16, 8]]}}
            cnn: {model.channels: {choice: [[4], [8]]}}
        """,
        tune="  sampler: grid\n",
    )
    # reported once, at the choice, not again at each key under it
    assert problems(path) == (
        f"The recipe {path} has 1 problem:\n"
        f"  {path}:{line(path, 'model.type')}: tune.space.model.type: the grid sampler needs the "
        "same keys in every trial, so it cannot search a conditional choice. Use sampler: tpe (or "
        "random), or write separate recipes per option."
    )


# --- check_tune: conditional sub-spaces -----------------------------------------------------

CONDITIONAL = """\
model.type:
  choice:
    mlp:
      model.hidden: {choice: [[8], [16, 8]]}
      model.dropout: {uniform: [0.0, 0.3]}
    cnn:
      model.channels: {choice: [[4], [4, 8]]}
      model.kernel: {int: [3, 5], step: 2}
"""


def test_each_branch_is_checked_against_its_own_model(tmp_path):
    assert problems(write(tmp_path, CONDITIONAL)) == ""  # the base model is an mlp
    assert problems(write(tmp_path, CONDITIONAL, base=CNN)) == ""


def test_a_key_of_the_other_branchs_model_is_an_error_on_its_own_line(tmp_path):
    path = write(
        tmp_path,
        """\
        model.type:
          choice:
            mlp:
              model.channels: {choice: [[8]]}
            cnn:
              model.kernel: {int: [3, 5]}
        """,
    )
    assert problems(path) == (
        f"The recipe {path} has 1 problem:\n"
        f"  {path}:{line(path, 'model.channels')}: "
        "tune.space.model.type.choice.mlp.model.channels: model 'mlp' has no option 'channels' "
        "(found 'model.channels'). Options of 'mlp': type, hidden, activation, dropout, batch_norm, "
        "window_norm."
    )


def test_a_branch_value_is_checked_with_its_option_set(tmp_path):
    # a cnn kernel of 0 is invalid; the base model is an mlp, so the cnn option must be applied
    path = write(
        tmp_path,
        """\
        model.type:
          choice:
            cnn: {model.kernel: {int: [0, 3]}}
        """,
    )
    msg = problems(path)
    assert (
        f"{path}:{line(path, 'model.kernel')}: tune.space.model.type.choice.cnn.model.kernel: "
        in msg
    )
    assert (
        "the value 0 makes an invalid recipe (model.kernel: Input should be greater than 0" in msg
    )


def test_an_unknown_model_type_in_a_choice(tmp_path):
    from danlu.models import MODELS

    path = write(tmp_path, "model.type: {choice: [mlp, mpl]}\n")
    valid = ", ".join(sorted(MODELS.names()))  # every registered model, named in the fix
    assert (
        "tune.space.model.type: the value 'mpl' makes an invalid recipe (model.type: Unknown model "
        f"'mpl'. Did you mean 'mlp'? Valid models: {valid};"
    ) in problems(path)


# --- check_tune: everything at once ---------------------------------------------------------


def test_all_issues_are_reported_at_once_in_file_order(tmp_path):
    path = write(
        tmp_path,
        """\
        train.epoch: {int: [1, 3]}
        model.dropout: {uniform: [0.0, 1.5]}
        name: {choice: [a, b]}
        train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]}
        model.hidden: {choice: [[8], [16]]}
        model.type:
          choice:
            mlp: {model.kernel: {int: [3, 5]}}
        """,
        metric="test_accuracy",
        tune="  sampler: grid\n",
    )
    recipe = load_recipe(path)
    issues = check_tune(recipe)
    assert [i.path for i in issues] == [
        "tune.metric",
        "tune.space.train.epoch",
        "tune.space.model.dropout",
        "tune.space.name",
        "tune.space.train.optimizer.lr",  # grid: a continuous range
        "tune.space.model.type",  # grid: a conditional choice
        "tune.space.model.type.choice.mlp.model.kernel",
    ]
    with pytest.raises(ConfigError) as info:
        raise_issues(issues, recipe._source)
    msg = str(info.value)
    assert msg.startswith(f"The recipe {path} has 7 problems:\n")
    lines = msg.splitlines()[1:]
    expected = [
        METRIC_LINE,
        *(line(path, k) for k in ("train.epoch", "model.dropout", "name", "train.optimizer.lr")),
        line(path, "model.type"),
        line(path, "model.kernel"),
    ]
    assert [int(text.split(": ")[0].rsplit(":", 1)[1]) for text in lines] == expected


def test_the_tune_entry_point_raises_the_same_error(tmp_path):
    from danlu.tune import tune

    path = write(tmp_path, "train.epoch: {int: [1, 3]}\n", metric="val_acuracy")
    with pytest.raises(ConfigError) as info:
        tune(path)
    assert str(info.value) == problems(path)
    assert "2 problems" in str(info.value)


# --- sample ---------------------------------------------------------------------------------


def random_study(seed: int = 0) -> optuna.Study:
    with quiet_optuna():
        return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))


def draw(study: optuna.Study, dists: dict, trials: int) -> list[tuple[dict, dict]]:
    """(values, trial.params) for ``trials`` trials of ``study``."""
    drawn = []

    def objective(trial: optuna.Trial) -> float:
        values = sample(trial, dists)
        drawn.append((values, dict(trial.params)))
        return 0.0

    with quiet_optuna():
        study.optimize(objective, n_trials=trials)
    return drawn


def test_sampled_values_stay_in_range_and_on_the_step():
    dists = space(
        {
            "train.optimizer.lr": {"loguniform": [1e-4, 1e-2]},
            "model.dropout": {"uniform": [0.0, 0.5], "step": 0.1},
            "train.epochs": {"int": [2, 64], "log": True},
            "train.batch_size": {"int": [16, 64], "step": 16},
            "train.l1": {"uniform": [0.0, 0.01]},
        }
    )
    drawn = draw(random_study(), dists, 40)
    for values, _ in drawn:
        assert list(values) == list(dists)
        assert 1e-4 <= values["train.optimizer.lr"] <= 1e-2
        assert 0.0 <= values["model.dropout"] <= 0.5
        assert values["model.dropout"] * 10 == pytest.approx(round(values["model.dropout"] * 10))
        assert isinstance(values["train.epochs"], int) and 2 <= values["train.epochs"] <= 64
        assert values["train.batch_size"] in (16, 32, 48, 64)
        assert 0.0 <= values["train.l1"] <= 0.01
    # log scales spread over the decades: on a linear scale almost none would fall below 1e-3
    low_lrs = sum(v["train.optimizer.lr"] < 1e-3 for v, _ in drawn)
    low_epochs = sum(v["train.epochs"] < 8 for v, _ in drawn)
    assert low_lrs >= 10 and low_epochs >= 10
    assert len({v["model.dropout"] for v, _ in drawn}) > 3


def test_the_trial_records_each_distribution():
    dists = space(
        {
            "train.epochs": {"int": [2, 64], "log": True},
            "model.dropout": {"uniform": [0.0, 0.5], "step": 0.1},
            "train.optimizer.lr": {"loguniform": [1e-4, 1e-2]},
        }
    )
    study = random_study()
    draw(study, dists, 1)
    recorded = study.trials[0].distributions
    assert recorded["train.epochs"] == optuna.distributions.IntDistribution(2, 64, log=True)
    assert recorded["model.dropout"] == optuna.distributions.FloatDistribution(0.0, 0.5, step=0.1)
    assert recorded["train.optimizer.lr"] == optuna.distributions.FloatDistribution(
        1e-4, 1e-2, log=True
    )


def test_choices_of_lists_come_back_as_the_original_lists():
    dists = space({"model.hidden": {"choice": [[8], [16, 8], [32, 16, 8]]}})
    drawn = draw(random_study(), dists, 20)
    seen = [values["model.hidden"] for values, _ in drawn]
    assert all(isinstance(h, list) for h in seen)
    assert {tuple(h) for h in seen} == {(8,), (16, 8), (32, 16, 8)}
    # Optuna stores the JSON text (its categorical values must be scalars)
    assert {params["model.hidden"] for _, params in drawn} == {"[8]", "[16, 8]", "[32, 16, 8]"}


def test_a_fixed_trial_replays_values():
    dists = space(
        {
            "model.hidden": {"choice": [[8], [16, 8]]},
            "train.batch_size": {"choice": [32, 64]},
            "train.optimizer.lr": {"loguniform": [1e-4, 1e-2]},
        }
    )
    trial = optuna.trial.FixedTrial(
        {"model.hidden": json.dumps([16, 8]), "train.batch_size": 64, "train.optimizer.lr": 3e-3}
    )
    assert sample(trial, dists) == {
        "model.hidden": [16, 8],
        "train.batch_size": 64,
        "train.optimizer.lr": 3e-3,
    }


def test_a_conditional_choice_samples_only_the_chosen_branch():
    dists = space(
        {
            "model.type": {
                "choice": {
                    "mlp": {"model.hidden": {"choice": [[8], [16, 8]]}},
                    "cnn": {
                        "model.channels": {"choice": [[4], [4, 8]]},
                        "model.kernel": {"int": [3, 5], "step": 2},
                    },
                }
            },
            "train.optimizer.lr": {"loguniform": [1e-4, 1e-2]},
        }
    )
    drawn = draw(random_study(), dists, 30)
    types = set()
    for values, params in drawn:
        kind = values["model.type"]
        types.add(kind)
        if kind == "mlp":
            assert set(values) == {"model.type", "model.hidden", "train.optimizer.lr"}
            assert set(params) == {
                "model.type",
                "model.hidden[model.type=mlp]",
                "train.optimizer.lr",
            }
            assert values["model.hidden"] in ([8], [16, 8])
        else:
            assert set(values) == {
                "model.type",
                "model.channels",
                "model.kernel",
                "train.optimizer.lr",
            }
            assert set(params) == {
                "model.type",
                "model.channels[model.type=cnn]",
                "model.kernel[model.type=cnn]",
                "train.optimizer.lr",
            }
            assert values["model.kernel"] in (3, 5)
    assert types == {"mlp", "cnn"}


def test_two_branches_may_tune_the_same_key_with_different_ranges():
    dists = space(
        {
            "model.type": {
                "choice": {
                    "mlp": {"model.dropout": {"uniform": [0.0, 0.1]}},
                    "cnn": {"model.dropout": {"uniform": [0.5, 0.6]}},
                }
            }
        }
    )
    drawn = draw(random_study(1), dists, 20)
    for values, params in drawn:
        if values["model.type"] == "mlp":
            assert 0.0 <= values["model.dropout"] <= 0.1
            assert "model.dropout[model.type=mlp]" in params
        else:
            assert 0.5 <= values["model.dropout"] <= 0.6
            assert "model.dropout[model.type=cnn]" in params


def test_a_tpe_study_over_a_conditional_space_runs_clean():
    dists = space(
        {
            "model.type": {
                "choice": {
                    "mlp": {"model.hidden": {"choice": [[8], [16]]}},
                    "cnn": {"model.kernel": {"int": [3, 5]}},
                }
            },
            "train.optimizer.lr": {"loguniform": [1e-4, 1e-2]},
        }
    )
    with quiet_optuna():
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3))
    drawn = draw(study, dists, 8)
    assert len(drawn) == 8


def test_iter_params_names_each_parameter_after_its_condition():
    dists = space(
        {
            "model.type": {
                "choice": {
                    "mlp": {"model.hidden": {"choice": [[8]]}},
                    "cnn": {"model.channels": {"choice": [[4]]}},
                }
            },
            "train.epochs": {"int": [1, 3]},
        }
    )
    params = list(iter_params(dists))
    assert [p.name for p in params] == [
        "model.type",
        "model.hidden[model.type=mlp]",
        "model.channels[model.type=cnn]",
        "train.epochs",
    ]
    assert [p.condition for p in params] == [
        None,
        ("model.type", "mlp"),
        ("model.type", "cnn"),
        None,
    ]
    assert params[1].loc == ("tune", "space", "model.type", "choice", "mlp", "model.hidden")


# --- grid -----------------------------------------------------------------------------------


def test_grid_space_lists_every_value():
    dists = space(
        {
            "train.batch_size": {"choice": [16, 32, 64]},
            "model.hidden": {"choice": [[8], [16, 8]]},
            "train.epochs": {"int": [1, 4]},
            "model.dropout": {"uniform": [0.0, 0.2], "step": 0.1},
        }
    )
    grid = grid_space(dists)
    assert grid == {
        "train.batch_size": [16, 32, 64],
        "model.hidden": ["[8]", "[16, 8]"],
        "train.epochs": [1, 2, 3, 4],
        "model.dropout": [0.0, 0.1, 0.2],
    }
    assert math.prod(len(v) for v in grid.values()) == 3 * 2 * 4 * 3


def test_a_grid_study_tries_every_point_once():
    dists = space(
        {
            "train.batch_size": {"choice": [16, 32]},
            "model.hidden": {"choice": [[8], [16, 8]]},
            "model.dropout": {"uniform": [0.0, 0.2], "step": 0.1},
        }
    )
    grid = grid_space(dists)
    size = math.prod(len(v) for v in grid.values())
    with quiet_optuna():
        study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid, seed=0))
    drawn = draw(study, dists, size)
    points = {
        (v["train.batch_size"], tuple(v["model.hidden"]), round(v["model.dropout"], 6))
        for v, _ in drawn
    }
    assert points == set(itertools.product((16, 32), ((8,), (16, 8)), (0.0, 0.1, 0.2)))


# --- apply_params ---------------------------------------------------------------------------


@pytest.fixture
def base() -> dict:
    recipe = load_recipe(
        {
            "name": "x",
            "data": {"source": "builtin:iris"},
            "task": "classification",
            "model": {"type": "cnn", "channels": [4, 8], "kernel": 5},
        }
    )
    return recipe_to_dict(recipe)


def test_apply_sets_nested_keys_and_leaves_the_input_alone(base):
    before = json.dumps(base, sort_keys=True)
    data = apply_params(
        base, {"train.optimizer.lr": 0.05, "model.kernel": 3, "data.split.val": 0.2}
    )
    assert data["train"]["optimizer"]["lr"] == 0.05
    assert data["train"]["optimizer"]["name"] == base["train"]["optimizer"]["name"]
    assert data["model"] == {"type": "cnn", "channels": [4, 8], "kernel": 3}
    assert data["data"]["split"]["val"] == 0.2
    assert json.dumps(base, sort_keys=True) == before


def test_apply_creates_a_block_that_is_off(base):
    assert base["train"]["early_stopping"] is None
    data = apply_params(base, {"train.early_stopping.patience": 2})
    assert data["train"]["early_stopping"] == {"patience": 2}
    recipe = load_recipe(data)
    assert recipe.train.early_stopping is not None
    assert recipe.train.early_stopping.patience == 2
    assert recipe.train.early_stopping.monitor == "val_loss"


def test_changing_the_model_type_starts_the_block_afresh(base):
    assert apply_params(base, {"model.type": "mlp"})["model"] == {"type": "mlp"}
    # the same type keeps its options
    assert apply_params(base, {"model.type": "cnn"})["model"] == base["model"]


def test_a_key_written_before_the_type_it_belongs_to_is_kept(base):
    # a space may list model.dropout before model.type; the new type must not wipe it out
    data = apply_params(base, {"model.dropout": 0.3, "model.type": "mlp", "model.hidden": [8]})
    assert data["model"] == {"type": "mlp", "dropout": 0.3, "hidden": [8]}


def test_sampled_values_applied_make_a_valid_recipe(tmp_path):
    path = write(tmp_path, CONDITIONAL + "train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]}\n")
    recipe = load_recipe(path)
    assert recipe.tune is not None
    base = recipe_to_dict(recipe)
    for values, _ in draw(random_study(), recipe.tune.space, 10):
        trial_recipe = load_recipe(apply_params(base, values))
        assert trial_recipe.model.type == values["model.type"]
        assert trial_recipe.train.optimizer.lr == values["train.optimizer.lr"]
        if values["model.type"] == "cnn":
            assert trial_recipe.model.options()["kernel"] == values["model.kernel"]
            assert "hidden" not in trial_recipe.model.options()  # the mlp's [8] is gone


# --- uses_data ------------------------------------------------------------------------------


def test_uses_data():
    assert not uses_data(
        space({"train.epochs": {"int": [1, 3]}, "model.dropout": {"uniform": [0, 0.5]}})
    )
    assert uses_data(space({"data.split.val": {"uniform": [0.1, 0.3]}}))
    assert uses_data(
        space({"model.type": {"choice": {"mlp": {"data.prepare.scale": {"choice": ["minmax"]}}}}})
    )
    assert not uses_data(space({"dataset.x": {"int": [1, 2]}}))  # "data" is a whole key
