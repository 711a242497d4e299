"""The store contract for the model registry: versions, aliases, references, files, deletion, audit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from danlu.errors import ConfigError, NotFoundError, StoreError
from danlu.store import (
    Store,
)
from danlu.testing.store._common import register_versions


class RegistryConformance:
    """Registered models: versions, aliases, ``resolve``, the readers, deletion and the audit log."""

    def test_versions_increment_and_files_land(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r")
        assert register_versions(store, n=3, run_id=run.id) == [1, 2, 3]
        v2 = store.get_model_version("digits", 2)
        assert (v2.name, v2.version, v2.run_id, v2.ref) == ("digits", 2, run.id, "digits:2")
        assert v2.files == ("card/README.md", "model.safetensors")
        assert v2.signature == {"inputs": [{"name": "x", "shape": [-1, 64]}]}
        assert (v2.metrics, v2.tags, v2.aliases) == ({"accuracy": 0.91}, {"i": "1"}, ())
        for version in (1, 2, 3):
            weights = store.model_version_path("digits", version, "model.safetensors")
            assert weights.read_bytes() == f"weights-{version - 1}".encode()
            assert store.model_version_path("digits", version, "card/README.md").is_file()
        assert store.get_model_version("digits").version == 3  # latest
        assert [v.version for v in store.list_model_versions("digits")] == [1, 2, 3]
        register_versions(store, name="other")
        models = store.list_models()
        assert [(m.name, m.latest_version) for m in models] == [("digits", 3), ("other", 1)]

    def test_aliases_set_move_delete(self, store: Store) -> None:
        register_versions(store, n=3)
        store.set_alias("digits", "staging", 1)
        store.set_alias("digits", "production", 1)
        assert store.get_model_version("digits", alias="staging").version == 1
        assert store.get_model_version("digits", 1).aliases == ("production", "staging")
        store.set_alias("digits", "staging", 2)  # move
        assert store.get_model_version("digits", alias="staging").version == 2
        assert store.get_model_version("digits", 1).aliases == ("production",)
        assert store.list_models()[0].aliases == {"production": 1, "staging": 2}
        store.delete_alias("digits", "staging")
        with pytest.raises(NotFoundError, match="staging"):
            store.get_model_version("digits", alias="staging")
        assert store.list_models()[0].aliases == {"production": 1}
        with pytest.raises(NotFoundError):
            store.delete_alias("digits", "staging")

    def test_alias_errors(self, store: Store) -> None:
        register_versions(store)
        with pytest.raises(StoreError, match="version number"):
            store.set_alias("digits", "2", 1)
        with pytest.raises(NotFoundError, match="version 9"):
            store.set_alias("digits", "staging", 9)
        with pytest.raises(StoreError):
            store.set_alias("digits", "../prod", 1)
        with pytest.raises(NotFoundError):
            store.set_alias("nomodel", "staging", 1)
        assert store.list_models()[0].aliases == {}

    def test_not_found_messages(self, store: Store) -> None:
        register_versions(store, n=2)
        store.set_alias("digits", "staging", 1)
        with pytest.raises(NotFoundError, match=r"No registered model 'digit'.*'digits'"):
            store.get_model_version("digit")
        with pytest.raises(NotFoundError, match=r"no alias 'stagin'.*'staging'"):
            store.get_model_version("digits", alias="stagin")
        with pytest.raises(NotFoundError, match="no version 7"):
            store.get_model_version("digits", 7)
        with pytest.raises(NotFoundError, match="digit"):
            store.list_model_versions("digit")
        with pytest.raises(NotFoundError):
            store.delete_model("digits", 7)
        with pytest.raises(NotFoundError):
            store.delete_model("digit")

    def test_resolve_reads_every_form_of_reference(self, store: Store) -> None:
        register_versions(store, n=3)
        store.set_alias("digits", "staging", 2)
        assert store.resolve("digits") == store.get_model_version("digits")  # the latest
        assert store.resolve("digits:1") == store.get_model_version("digits", 1)
        assert store.resolve("digits@staging") == store.get_model_version("digits", 2)

    def test_resolve_gives_the_same_errors_for_a_bad_reference(self, store: Store) -> None:
        register_versions(store, n=2)
        store.set_alias("digits", "staging", 1)
        for bad in ("", "digits:x", "digits@", "digits:1@staging", "../digits", "digits:-1"):
            with pytest.raises(ConfigError, match="not a model reference.*NAME@ALIAS"):
                store.resolve(bad)
        with pytest.raises(NotFoundError, match=r"No registered model 'digit'.*'digits'"):
            store.resolve("digit")
        with pytest.raises(NotFoundError, match=r"no alias 'stagin'.*'staging'"):
            store.resolve("digits@stagin")
        with pytest.raises(NotFoundError, match="no version 7"):
            store.resolve("digits:7")

    def test_model_reader_reads_a_versions_files(self, store: Store) -> None:
        register_versions(store, n=2)
        read = store.model_reader(store.resolve("digits:1"))
        assert read("model.safetensors") == b"weights-0"
        assert read("card/README.md") == b"card"
        assert read("missing.json") is None
        with pytest.raises(StoreError):
            read("../2/model.safetensors")  # names are validated, never followed out

    def test_run_reader_reads_a_runs_artifacts(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r")
        store.log_artifact(run.id, "ckpt/model.safetensors", b"weights")
        read = store.run_reader(run.id)
        assert read("ckpt/model.safetensors") == b"weights"
        assert read("missing.json") is None
        with pytest.raises(StoreError):
            read("/etc/passwd")

    def test_register_with_unknown_run_creates_nothing(self, store: Store) -> None:
        with pytest.raises(NotFoundError):
            store.create_model_version(
                "digits", run_id="nope", files={"w.bin": b"w"}, signature={}, metrics={}
            )
        assert store.list_models() == [] and store.audit_log() == []
        assert not store.model_version_path("digits", 1, "w.bin").parent.exists()

    def test_attach_files_adds_reports_but_never_replaces_weights(self, store: Store) -> None:
        register_versions(store, n=2)
        mv = store.attach_model_files("digits", 1, {"report.html": b"<html>", "report.json": b"{}"})
        assert mv.files == ("card/README.md", "model.safetensors", "report.html", "report.json")
        assert store.model_version_path("digits", 1, "report.html").read_bytes() == b"<html>"
        store.attach_model_files("digits", 1, {"report.html": b"<html>2"})  # a newer report
        assert store.model_version_path("digits", 1, "report.html").read_bytes() == b"<html>2"
        assert store.get_model_version("digits", 1).files == mv.files
        assert store.get_model_version("digits", 2).files == ("card/README.md", "model.safetensors")
        with pytest.raises(StoreError, match="model.safetensors"):
            store.attach_model_files("digits", 1, {"model.safetensors": b"evil"})
        with pytest.raises(StoreError):
            store.attach_model_files("digits", 1, {"../escape.html": b""})
        with pytest.raises(NotFoundError):
            store.attach_model_files("digits", 9, {"report.html": b""})
        weights = store.model_version_path("digits", 1, "model.safetensors")
        assert weights.read_bytes() == b"weights-0"
        assert store.audit_log("digits")[-1].action == "attach_files"

    def test_register_with_invalid_names_creates_nothing(self, store: Store) -> None:
        for name, files in (("../evil", {"w.bin": b""}), ("digits", {"../w.bin": b""})):
            with pytest.raises(StoreError):
                store.create_model_version(name, run_id=None, files=files, signature={}, metrics={})
        assert store.list_models() == []

    def test_delete_version(self, store: Store) -> None:
        register_versions(store, n=3)
        store.set_alias("digits", "staging", 3)
        path3 = store.model_version_path("digits", 3, "model.safetensors")
        store.delete_model("digits", 3)
        assert not path3.exists() and not path3.parent.exists()
        assert store.get_model_version("digits").version == 2
        assert store.get_model_version("digits", 1).aliases == ()
        assert store.list_models()[0].aliases == {}  # the alias went with its version
        assert [v.version for v in store.list_model_versions("digits")] == [1, 2]
        assert store.model_version_path("digits", 2, "model.safetensors").is_file()
        with pytest.raises(NotFoundError):
            store.get_model_version("digits", 3)

    def test_delete_whole_model(self, store: Store) -> None:
        register_versions(store, n=2)
        register_versions(store, name="other")
        root = store.model_version_path("digits", 1, "model.safetensors").parent.parent
        assert root.is_dir()
        store.delete_model("digits")
        assert not root.exists()
        assert [m.name for m in store.list_models()] == ["other"]
        with pytest.raises(NotFoundError):
            store.get_model_version("digits")
        assert store.model_version_path("other", 1, "model.safetensors").is_file()
        assert register_versions(store) == [1]  # the name can be registered afresh

    def test_deleted_version_numbers_are_never_reused(self, store: Store) -> None:
        assert register_versions(store, n=3) == [1, 2, 3]
        store.delete_model("digits", 3)
        store.delete_model("digits", 2)
        assert register_versions(store) == [4]  # "digits:3" never names other weights
        assert [v.version for v in store.list_model_versions("digits")] == [1, 4]

    def test_model_without_versions_lists_none(self, store: Store) -> None:
        register_versions(store)
        store.delete_model("digits", 1)
        assert [(m.name, m.latest_version) for m in store.list_models()] == [("digits", 0)]
        assert store.list_model_versions("digits") == []

    def test_audit_log_is_append_only_and_ordered(self, store: Store) -> None:
        register_versions(store, n=2, actor="ana")
        register_versions(store, name="other", actor="bo")
        store.set_alias("digits", "staging", 1, actor="ana")
        store.set_alias("digits", "staging", 2, actor="ana")
        snapshot = store.audit_log()
        store.delete_alias("digits", "staging", actor="cy")
        store.delete_model("digits", 1, actor="cy")
        store.delete_model("digits", actor="cy")
        log = store.audit_log()
        assert log[: len(snapshot)] == snapshot  # earlier entries never change
        assert [(e.action, e.model, e.version, e.actor) for e in log] == [
            ("create_model", "digits", None, "ana"),
            ("create_version", "digits", 1, "ana"),
            ("create_version", "digits", 2, "ana"),
            ("create_model", "other", None, "bo"),
            ("create_version", "other", 1, "bo"),
            ("set_alias", "digits", 1, "ana"),
            ("set_alias", "digits", 2, "ana"),
            ("delete_alias", "digits", 2, "cy"),
            ("delete_version", "digits", 1, "cy"),
            ("delete_model", "digits", None, "cy"),
        ]
        assert [e.id for e in log] == sorted({e.id for e in log})
        assert [e.time for e in log] == sorted(e.time for e in log)
        assert log[6].detail == {"alias": "staging", "previous": 1}
        assert log[5].detail == {"alias": "staging", "previous": None}
        assert [e.model for e in store.audit_log("other")] == ["other", "other"]
        assert store.audit_log("nobody") == []

    def test_delete_model_with_a_linked_folder_deletes_nothing(
        self, store: Store, tmp_path: Path
    ) -> None:
        store.create_model_version(
            "linked", run_id=None, files={"w.bin": b"w"}, signature={}, metrics={}
        )
        folder = store.model_version_path("linked", 1, "w.bin").parent
        outside = tmp_path / "outside"
        folder.rename(outside)
        folder.symlink_to(outside, target_is_directory=True)
        with pytest.raises(StoreError, match="symbolic link.*nothing was deleted"):
            store.delete_model("linked", 1)
        assert store.get_model_version("linked", 1).files == ("w.bin",)
        assert (outside / "w.bin").read_bytes() == b"w"
        store.delete_model("linked")  # its folder is real: the link in it goes, not its target
        assert not folder.is_symlink() and not folder.parent.exists()
        assert (outside / "w.bin").read_bytes() == b"w"  # and what it points at stays

    # -- pretrained bases, kept once per hash ---------------------------------------------------
    def test_a_base_is_kept_once_and_outlives_the_versions_that_use_it(
        self, store: Store, tmp_path: Path
    ) -> None:
        import json

        source = tmp_path / "base"
        source.mkdir()
        (source / "config.json").write_text("{}")
        (source / "model.safetensors").write_bytes(b"weights")
        (source / "tokenizer.json").write_text("{}")
        files = sorted(source.iterdir())
        sha = "ab" * 32
        assert store.stored_base(sha) is None
        with pytest.raises(RuntimeError, match="refused"):  # a failed check keeps nothing

            def refuse(staged: Path) -> None:
                raise RuntimeError("refused")

            store.store_base(sha, files, refuse)
        assert store.stored_base(sha) is None
        checked: list[list[str]] = []
        folder = store.store_base(sha, files, lambda p: checked.append(sorted(os.listdir(p))))
        assert checked == [["config.json", "model.safetensors", "tokenizer.json"]]
        assert store.stored_base(sha) == folder
        assert (folder / "model.safetensors").read_bytes() == b"weights"
        (source / "model.safetensors").write_bytes(b"changed")
        assert store.store_base(sha, files) == folder  # kept already: nothing copied again
        assert (folder / "model.safetensors").read_bytes() == b"weights"
        # names: a hash only; files: never a pickle
        with pytest.raises(StoreError, match="sha256"):
            store.stored_base("../" + sha[3:])
        pickled = tmp_path / "pytorch_model.bin"
        pickled.write_bytes(b"\x80\x04")
        with pytest.raises(StoreError, match="never a pickle"):
            store.store_base("cd" * 32, [pickled])
        assert store.stored_base("cd" * 32) is None
        # versions refer to it through their model card; deleting one keeps it for the other
        card = json.dumps({"base": {"pretrained": "m", "sha256": sha}}).encode()
        for name in ("a", "b"):
            store.create_model_version(
                name, run_id=None, files={"model.json": card}, signature={}, metrics={}
            )
        store.delete_model("a")
        assert store.stored_base(sha) == folder
        assert store.prune_bases(min_age_s=0) == []
        other = "ef" * 32
        store.store_base(other, files)
        assert store.prune_bases() == []  # too young: a registration may be about to use it
        assert store.prune_bases(min_age_s=0) == [other]
        store.delete_model("b")
        assert store.prune_bases(min_age_s=0) == [sha]
        assert store.stored_base(sha) is None
