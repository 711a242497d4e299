"""``danlu models`` against a real SQLite store built with the store API."""

from __future__ import annotations

import json

import pytest

from danlu.cli._models import ModelRef, parse_model_ref
from danlu.errors import ConfigError
from danlu.store import MetricPoint, SqlStore
from tests.cli._runner import danlu

SIGNATURE = {
    "task": "classification",
    "inputs": [{"name": "colour", "kind": "categorical", "categories": ["red", "blue"]}],
    "outputs": {"prediction": {"type": "label", "classes": ["a", "b"]}},
}


@pytest.fixture
def store(monkeypatch) -> SqlStore:
    monkeypatch.setenv("DANLU_ACTOR", "alice")
    store = SqlStore()
    for accuracy in (0.91, 0.95):
        store.create_model_version(
            "digits",
            run_id=None,
            files={"model.safetensors": b"w" * 2048, "model.json": b"{}"},
            signature=SIGNATURE,
            metrics={"test_accuracy": accuracy, "test_loss": 1 - accuracy},
            tags={"model.type": "cnn"},
            actor="seed",
        )
    return store


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("digits", ModelRef("digits")),
        ("digits:3", ModelRef("digits", version=3)),
        ("digits@production", ModelRef("digits", alias="production")),
        ("my-model.v2:12", ModelRef("my-model.v2", version=12)),
    ],
)
def test_parse_model_ref(text, ref):
    assert parse_model_ref(text) == ref
    assert str(ref) == text


@pytest.mark.parametrize(
    "text", ["", "digits:", "digits:0", "digits:x", "digits@", "a:1@b", "../x", "digits:-1", "d s"]
)
def test_parse_model_ref_rejects_other_forms_with_an_example(text):
    with pytest.raises(ConfigError, match=r"NAME:VERSION.* or NAME@ALIAS.*e\.g\. digits"):
        parse_model_ref(text)


def test_ls_show_alias_rm_and_the_audit_log_in_order(store):
    listed = json.loads(danlu("models", "ls", "--json").stdout)
    assert [(m["name"], m["latest_version"]) for m in listed] == [("digits", 2)]

    assert danlu("models", "alias", "set", "digits", "staging", "1").code == 0
    assert danlu("models", "alias", "set", "digits", "production", "2").code == 0
    assert danlu("models", "alias", "set", "digits", "staging", "2").code == 0  # moved
    assert danlu("models", "alias", "rm", "digits", "production").code == 0

    table = danlu("models", "ls")
    assert "digits" in table.stdout and "staging→2" in table.stdout

    versions = danlu("models", "show", "digits")
    assert versions.code == 0, versions.stderr
    assert "test_accuracy" in versions.stdout and "0.9500" in versions.stdout
    assert "set_alias" in versions.stdout and "alice" in versions.stdout

    one = json.loads(danlu("models", "show", "digits@staging", "--json").stdout)
    assert one["version"]["version"] == 2 and one["version"]["aliases"] == ["staging"]
    detail = danlu("models", "show", "digits:1")
    assert detail.code == 0, detail.stderr
    for text in ("digits:1", "colour", "categorical", "red, blue", "model.safetensors", "2.0 KB"):
        assert text in detail.stdout, text

    out = danlu("models", "rm", "digits:1", "--yes")
    assert out.code == 0, out.stderr
    data = json.loads(danlu("models", "show", "digits", "--json").stdout)
    assert [v["version"] for v in data["versions"]] == [2]
    assert [(e["action"], e["version"], e["actor"]) for e in data["audit"]] == [
        ("create_model", None, "seed"),
        ("create_version", 1, "seed"),
        ("create_version", 2, "seed"),
        ("set_alias", 1, "alice"),
        ("set_alias", 2, "alice"),
        ("set_alias", 2, "alice"),
        ("delete_alias", 2, "alice"),
        ("delete_version", 1, "alice"),
    ]
    assert data["audit"][5]["detail"] == {"alias": "staging", "previous": 1}

    assert danlu("models", "rm", "digits", "--yes").code == 0
    assert json.loads(danlu("models", "ls", "--json").stdout) == []
    assert store.audit_log("digits")[-1].action == "delete_model"


def test_rm_refuses_without_yes_and_never_by_alias(store):
    refused = danlu("models", "rm", "digits")
    assert refused.code == 2 and "--yes" in refused.stderr
    by_alias = danlu("models", "rm", "digits@production", "--yes")
    assert by_alias.code == 2 and "NAME:VERSION" in by_alias.stderr
    assert len(store.list_model_versions("digits")) == 2


def test_unknown_models_versions_and_refs(store):
    missing = danlu("models", "show", "digitz")
    assert missing.code == 4 and "Did you mean 'digits'" in missing.stderr
    assert danlu("models", "show", "digits:9").code == 4
    assert danlu("models", "show", "digits@nope").code == 4
    bad = danlu("models", "show", "digits:latest")
    assert bad.code == 2 and "NAME@ALIAS" in bad.stderr and "Traceback" not in bad.stderr


def test_register_a_finished_run(monkeypatch):
    monkeypatch.setenv("DANLU_ACTOR", "bob")
    store = SqlStore()
    run = store.create_run(experiment="digits", name="digits-mlp")
    card = {
        "task": "classification",
        "type": "mlp",
        "schema": {  # FeatureSchema.to_dict(): the signature is built from it
            "features": [{"name": "x", "kind": "numeric", "categories": []}],
            "target": "y",
            "task": "classification",
            "classes": ["a", "b"],
            "target_mean": None,
            "target_std": None,
            "image_shape": None,
            "input_dim": 1,
            "encoded_names": ["x"],
        },
    }
    store.log_artifact(run.id, "model.safetensors", b"weights")
    store.log_artifact(run.id, "model.json", json.dumps(card).encode())
    store.log_artifact(run.id, "preprocessing.json", b"{}")
    store.log_metrics(run.id, [MetricPoint("test_accuracy", 0.9), MetricPoint("val_loss", 0.3)])

    unfinished = danlu("models", "register", run.id, "digits")
    assert unfinished.code == 5 and "only a finished run" in unfinished.stderr

    store.set_status(run.id, "finished")
    out = danlu("models", "register", run.id, "digits", "--alias", "staging")
    assert out.code == 0, out.stderr
    assert "digits:1" in out.stdout and "staging" in out.stdout
    mv = store.get_model_version("digits", alias="staging")
    assert mv.run_id == run.id and mv.metrics == {"test_accuracy": 0.9}
    assert {e.actor for e in store.audit_log("digits")} == {"bob"}


def test_stored_text_is_shown_not_obeyed(monkeypatch):
    """Issue 13: tags, signature names and audit actors may hold escape codes or markup."""
    esc = "\x1b[2J\x1b]0;pwned\x07"
    monkeypatch.setenv("DANLU_ACTOR", f"mallory{esc}")
    store = SqlStore()
    signature = {
        "task": "classification",
        "inputs": [{"name": f"col{esc}", "kind": "categorical", "categories": [f"[red]c{esc}"]}],
        "outputs": {"prediction": {"type": "label", "classes": [f"a{esc}"]}},
    }
    store.create_model_version(
        "hostile",
        run_id=None,
        files={"model.json": b"{}"},
        signature=signature,
        metrics={f"test_m{esc}": 1.0},
        tags={f"t{esc}": f"[bold]v{esc}"},
        actor=f"mallory{esc}",
    )
    assert danlu("models", "alias", "set", "hostile", "staging", "1").code == 0
    for args in (("models", "ls"), ("models", "show", "hostile"), ("models", "show", "hostile:1")):
        out = danlu(*args)
        assert out.code == 0, out.stderr
        text = out.stdout + out.stderr
        assert "\x1b" not in text and "\x07" not in text, (args, text)
    shown = danlu("models", "show", "hostile:1").stdout
    assert "col\\x1b[2J" in shown and "mallory\\x1b[2J" in shown
    assert "[red]c" in shown and "[bold]v" in shown
