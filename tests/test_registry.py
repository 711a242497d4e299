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
