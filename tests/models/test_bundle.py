"""Loading a stored model: its ``model.json`` is data from the store, never a licence to import.

The attack (issue 13): a registered version's card says ``"type": "builtins:print"`` or
``"this:s"``; loading it used to import that module and call the object with the model's options.
Each case loads a real registered version whose card was edited afterwards, in a fresh process,
and checks that nothing was imported or called.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import danlu
from danlu.errors import NotFoundError, StoreError
from danlu.pipeline import register_run
from danlu.store import SqlStore
from danlu.testing import wine_recipe
from danlu.train import run_training

ENV = "DANLU_ALLOWED_BUILDERS"

# Loads wine:1 in a fresh interpreter and reports the error and what got imported.
_PROBE = textwrap.dedent(
    """
    import json, sys
    import danlu
    from danlu.store import SqlStore
    before = set(sys.modules)
    try:
        danlu.load_model("wine:1", store=SqlStore(home=sys.argv[1]))
        error = None
    except Exception as exc:
        error = [type(exc).__name__, str(exc)]
    print("RESULT " + json.dumps({"error": error, "this": "this" in sys.modules}))
    """
)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with one real registered version, wine:1 (an MLP on scikit-learn's wine)."""
    home = tmp_path_factory.mktemp("bundle") / "home"
    store = SqlStore(home=home)
    result = run_training(wine_recipe(epochs=1), store=store)
    register_run(store, result.run_id, "wine")
    store.close()
    return home


def _card_path(home: Path) -> Path:
    return SqlStore(home=home).model_version_path("wine", 1, "model.json")


@pytest.fixture
def tampered(stored: Path):
    """Edit wine:1's model.json for one test, then put the original back."""
    path = _card_path(stored)
    original = path.read_bytes()

    def tamper(**changes: object) -> Path:
        card = json.loads(original)
        card.update(changes)
        path.write_text(json.dumps(card))
        return stored

    yield tamper
    path.write_bytes(original)


def _probe(home: Path, **env: str) -> tuple[list[str] | None, bool, str]:
    """(error type and message, whether `this` was imported, the whole stdout)."""
    environ = {k: v for k, v in os.environ.items() if k != ENV} | env
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(home)],
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
        check=True,
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    return result["error"], result["this"], done.stdout


def test_untampered_version_loads(stored: Path) -> None:
    predictor = danlu.load_model("wine:1", store=SqlStore(home=stored))
    assert predictor.task.headline == "accuracy"


@pytest.mark.parametrize(
    "changes",
    [
        {"type": "builtins:print", "options": {"marker": "CALLED-WITH-OPTIONS"}},
        {"type": "this:s"},
        {"task": "this:s"},
        {"task": "builtins:print"},
    ],
    ids=["type-builtins-print", "type-this", "task-this", "task-builtins-print"],
)
def test_import_path_in_a_stored_card_is_never_imported(tampered, changes) -> None:
    home = tampered(**changes)
    error, imported_this, stdout = _probe(home)
    assert error is not None and error[0] == "NotFoundError", error
    assert not imported_this, "loading a tampered card imported the module `this`"
    assert "CALLED-WITH-OPTIONS" not in stdout and "Zen of Python" not in stdout
    field = "type" if "type" in changes else "task"
    assert repr(changes[field]) in error[1] and "Model wine:1" in error[1]
    if field == "type":  # the fix an operator can make, and only for the module named
        assert f"{ENV}={changes['type'].split(':')[0]}" in error[1]


def test_allow_list_is_by_module_prefix_not_by_any_substring(tampered) -> None:
    home = tampered(type="this:s")
    error, imported_this, _ = _probe(home, **{ENV: "thisx, other.pkg"})
    assert error is not None and not imported_this
    error, imported_this, _ = _probe(home, **{ENV: "this"})  # allow-listed: imported, as asked
    assert imported_this and error is not None and "not callable" in error[1]


@pytest.mark.parametrize(
    "text",
    ["[1, 2]", "not json", json.dumps({"type": "mlp", "task": "classification"})],
)
def test_malformed_card_is_a_store_error(stored: Path, text: str) -> None:
    path = _card_path(stored)
    original = path.read_bytes()
    try:
        path.write_text(text)
        with pytest.raises(StoreError, match="model.json"):
            danlu.load_model("wine:1", store=SqlStore(home=stored))
    finally:
        path.write_bytes(original)


def test_user_builder_loads_only_when_its_module_is_allow_listed(tmp_path, monkeypatch) -> None:
    (tmp_path / "my_models.py").write_text(
        "import torch\n"
        "def build(options, schema, task):\n"
        "    return torch.nn.Linear(schema.input_dim, task.output_dim(schema))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(ENV, raising=False)
    store = SqlStore(home=tmp_path / "home")
    recipe = wine_recipe(epochs=1)
    recipe["model"] = {"type": "my_models:build"}
    result = run_training(recipe, store=store)  # a recipe is the user's own: imported as asked
    register_run(store, result.run_id, "mine")
    with pytest.raises(NotFoundError, match=f"{ENV}=my_models"):
        danlu.load_model("mine:1", store=store)
    monkeypatch.setenv(ENV, "my_models_not")
    with pytest.raises(NotFoundError, match="not allow-listed"):
        danlu.load_model("mine:1", store=store)
    monkeypatch.setenv(ENV, "other, my_models")
    assert danlu.load_model("mine:1", store=store).task.headline == "accuracy"


def test_weights_whose_header_length_starts_like_a_pickle_still_load() -> None:
    import torch
    from safetensors.torch import save

    from danlu.models import load_weights

    tensors = {"weight": torch.ones(3, 13), "bias": torch.zeros(3)}
    raw = next(  # a header length whose low byte is 0x80, the first byte of a pickle
        r for n in range(512) if (r := save(tensors, metadata={"pad": "x" * n}))[:1] == b"\x80"
    )
    assert torch.equal(load_weights(raw, "w")["weight"], tensors["weight"])
    with pytest.raises(StoreError, match="refuses to load pickled"):
        load_weights(b"\x80\x04" + raw[2:40], "w")


# Evaluates the run of wine:1 in a fresh interpreter after its stored recipe was edited.
_EVALUATE_PROBE = textwrap.dedent(
    """
    import json, sys
    from danlu.evaluate import evaluate_run
    from danlu.store import SqlStore
    store = SqlStore(home=sys.argv[1])
    run_id = store.get_model_version("wine", 1).run_id
    try:
        evaluate_run(run_id, store=store)
        error = None
    except Exception as exc:
        error = [type(exc).__name__, str(exc)]
    print("RESULT " + json.dumps({"error": error, "this": "this" in sys.modules}))
    """
)


_CV = {"evaluate": {"cross_validation": 2}}  # cross-validation retrains from the stored recipe


@pytest.mark.parametrize("edit", [{"model": {"type": "this:s"}, **_CV}, {"task": "this:s", **_CV}])
def test_a_stored_recipe_cannot_import_code_when_evaluated_again(stored: Path, edit) -> None:
    """The run's recipe lives in the database: evaluating the run again (cross-validation
    retrains from it) refuses an import path in it, before importing anything."""
    import sqlalchemy as sa

    store = SqlStore(home=stored)
    run_id = store.get_model_version("wine", 1).run_id
    original = store.get_run(run_id).recipe
    store.close()
    engine = sa.create_engine(f"sqlite:///{stored / 'danlu.db'}")
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE runs SET recipe = :r WHERE id = :id"),
                {"r": json.dumps({**original, **edit}), "id": run_id},
            )
        environ = {k: v for k, v in os.environ.items() if k != ENV}
        done = subprocess.run(
            [sys.executable, "-c", _EVALUATE_PROBE, str(stored)],
            capture_output=True, text=True, env=environ, timeout=300, check=True,
        )  # fmt: skip
    finally:
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE runs SET recipe = :r WHERE id = :id"),
                {"r": json.dumps(original), "id": run_id},
            )
        engine.dispose()
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    assert result["this"] is False
    assert result["error"][0] == "NotFoundError" and ENV in result["error"][1]
    assert "recipe" in result["error"][1]


def test_check_stored_recipe_allows_builtins_and_allow_listed_builders_only(monkeypatch) -> None:
    """What `danlu tune --worker` runs on a study's recipe read from the database."""
    from danlu.models import check_stored_recipe

    monkeypatch.delenv(ENV, raising=False)
    check_stored_recipe({"model": {"type": "mlp"}, "task": "classification"}, "Study s")
    with pytest.raises(NotFoundError, match=f"Study s: .*{ENV}"):
        check_stored_recipe(
            {"model": {"type": "mypkg.models:build"}, "task": "regression"}, "Study s"
        )
    with pytest.raises(NotFoundError, match="Study s"):
        check_stored_recipe({"model": {"type": "mlp"}, "task": "this:s"}, "Study s")
    monkeypatch.setenv(ENV, "mypkg")
    with pytest.raises(NotFoundError, match="mypkg"):  # allowed, so imported: not installed here
        check_stored_recipe({"model": {"type": "mypkg.models:build"}, "task": "regression"}, "S")


def test_the_predictor_takes_frames_dict_rows_columns_and_arrays(stored: Path) -> None:
    """One Predictor behind load_model: every raw-row form gives the same predictions, and
    an array of the wrong width is a DataError naming the expected shape."""
    import numpy as np
    from sklearn.datasets import load_wine

    from danlu.errors import DataError

    predictor = danlu.load_model("wine:1", store=SqlStore(home=stored))
    frame = load_wine(as_frame=True).frame.drop(columns="target").head(5)
    expected = predictor.predict(frame)["prediction"].tolist()
    assert predictor.predict(frame.to_dict("records"))["prediction"].tolist() == expected
    assert predictor.predict(frame.to_dict("list"))["prediction"].tolist() == expected
    assert predictor.predict(frame.to_numpy())["prediction"].tolist() == expected
    assert np.allclose(predictor.predict(frame)["probabilities"].sum(axis=1), 1.0)
    with pytest.raises(DataError, match=r"shape \(rows, 13\)"):
        predictor.predict(frame.to_numpy()[:, :5])
    assert predictor.signature["task"] == "classification" and "wine:1" in repr(predictor)
