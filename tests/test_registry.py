from __future__ import annotations

import pytest

from danlu.errors import ConfigError, DanluError, DataError, MissingExtraError, NotFoundError
from danlu.registry import Registry, did_you_mean, import_object


def test_register_once_and_look_up():
    reg: Registry = Registry("widget")

    @reg.register("round", spec=dict)
    def build_round():
        return "round"

    assert reg.get("round").builder() == "round" and reg.get("round").spec is dict
    assert "round" in reg and reg.names() == ["round"]
    with pytest.raises(ValueError, match="already registered"):
        reg.register("round")(build_round)
    with pytest.raises(NotFoundError, match=r"Unknown widget 'rond'\. Did you mean 'round'\?"):
        reg.get("rond")


def test_import_paths():
    assert import_object("json:dumps").__name__ == "dumps"
    with pytest.raises(NotFoundError, match="not a valid import path"):
        import_object("json.dumps")
    with pytest.raises(NotFoundError, match="has no attribute"):
        import_object("json:nope")


def test_did_you_mean():
    assert did_you_mean("lr", ["lr2", "momentum"]) == " Did you mean 'lr2'?"
    assert did_you_mean("zzz", ["lr"]) == ""


def test_errors_refine_builtins_and_say_what_to_install():
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)
    assert issubclass(NotFoundError, KeyError) and issubclass(MissingExtraError, ImportError)
    assert str(NotFoundError("plain message")) == "plain message"  # KeyError would quote it
    err = MissingExtraError.for_package("optuna", "tune")
    assert isinstance(err, DanluError) and "pip install 'danlu[tune]'" in str(err)


def test_missing_optional_package_gives_an_install_hint():
    from danlu.registry import import_optional

    with pytest.raises(MissingExtraError, match=r"pip install 'danlu\[tune\]'"):
        import_optional("surely_not_installed_pkg", extra="tune")
    assert import_optional("json", extra="core").__name__ == "json"


def test_untrusted_import_path_needs_the_operators_allow_list(monkeypatch):
    import sys

    from danlu.registry import ALLOWED_BUILDERS_ENV

    reg: Registry = Registry("widget")
    reg.register("round")(lambda: "round")
    monkeypatch.delenv(ALLOWED_BUILDERS_ENV, raising=False)
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    assert reg.get("round", trusted=False).name == "round"  # built-ins need no allow-list
    with pytest.raises(NotFoundError, match=f"{ALLOWED_BUILDERS_ENV}=colorsys"):
        reg.get("colorsys:rgb_to_hls", trusted=False)
    assert "colorsys" not in sys.modules  # refused before importing
    with pytest.raises(NotFoundError, match="neither a built-in widget"):
        reg.get("colorsys:rgb to hls", trusted=False)
    monkeypatch.setenv(ALLOWED_BUILDERS_ENV, "colorsy, json")  # a prefix of the name is not it
    with pytest.raises(NotFoundError, match="not allow-listed"):
        reg.get("colorsys:rgb_to_hls", trusted=False)
    monkeypatch.setenv(ALLOWED_BUILDERS_ENV, "json, colorsys")
    assert reg.get("colorsys:rgb_to_hls", trusted=False).builder(1, 1, 1) == (0, 1, 0)
    monkeypatch.setenv(ALLOWED_BUILDERS_ENV, "mypkg.models:build")
    with pytest.raises(NotFoundError, match="not a module name"):
        reg.get("colorsys:rgb_to_hls", trusted=False)
    assert reg.get("colorsys:rgb_to_hls").name == "colorsys:rgb_to_hls"  # trusted: a recipe


def test_allowed_import_is_the_module_or_below_it():
    from danlu.registry import is_allowed_import

    assert is_allowed_import("mypkg.models:build", ("mypkg.models",))
    assert is_allowed_import("mypkg.models.cnn:build", ("mypkg",))
    assert not is_allowed_import("mypkg.modelsx:build", ("mypkg.models",))
    assert not is_allowed_import("mypkg:build", ("mypkg.models",))
    assert not is_allowed_import("mypkg.models:build", ())
