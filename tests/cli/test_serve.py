"""``danlu serve``'s options: models under names of their own, the Host allow-list, and a body
cap worked out from --max-rows (the server itself is tested in tests/serve)."""

from __future__ import annotations

import pytest

from danlu.cli._serve import parse_canary, parse_size
from danlu.errors import ConfigError
from danlu.serve import Canary
from tests.cli._runner import danlu


def test_help_shows_names_hosts_and_the_worked_out_body_cap() -> None:
    outcome = danlu("serve", "--help")
    assert outcome.code == 0, outcome
    text = " ".join(outcome.stdout.split())
    assert "SERVED=MODEL" in text and "--allowed-hosts" in text
    assert "--max-body" in text and "auto" in text


def test_a_canary_of_a_model_served_under_its_own_name_is_a_version_of_that_model() -> None:
    models = ["digits@staging", "digits-tuned=digits@tuned"]
    assert parse_canary("digits-tuned:7=5%", models) == Canary("digits-tuned", "digits:7", 0.05)
    assert parse_canary("digits:5=10%", models) == Canary("digits", "digits:5", 0.1)
    with pytest.raises(ConfigError, match="would both be served as 'digits'"):
        parse_canary("digits:5=10%", ["digits@staging", "digits@tuned"])


def test_max_body_auto_is_left_to_the_server() -> None:
    assert parse_size("auto") is None and parse_size("AUTO") is None
    assert parse_size("64KB") == 64_000
    with pytest.raises(ConfigError, match="or auto"):
        parse_size("lots")


def test_two_versions_under_one_name_are_refused_before_anything_starts(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("DANLU_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DANLU_DB_URL", raising=False)
    outcome = danlu("serve", "digits@staging", "digits@tuned", "--port", "0")
    assert outcome.code != 0
    text = " ".join((outcome.stdout + outcome.stderr).split())
    assert "would both be served as 'digits'" in text and "digits-2=digits@tuned" in text
    assert "Traceback" not in text


def test_generation_limits_reach_the_server_settings(monkeypatch) -> None:
    import danlu.serve as serving

    seen = []
    monkeypatch.setattr(serving, "serve", lambda settings, store: seen.append(settings))
    outcome = danlu(
        "serve", "lm@production", "--generate-slots", "3", "--generate-max-tokens", "64",
        "--generate-max-prompt", "32",
    )  # fmt: skip
    assert outcome.code == 0, outcome
    extra = seen[0].extra
    assert extra["generate_slots"] == 3 and extra["generate_max_tokens"] == 64
    assert extra["generate_max_prompt_tokens"] == 32
    assert "--generate-slots" in " ".join(danlu("serve", "--help").stdout.split())


def test_where_to_listen_comes_from_the_environment_and_a_flag_wins(monkeypatch) -> None:
    """DANLU_HOST / DANLU_PORT / DANLU_THREADS (what a packaged image sets); a bad value is
    refused naming the variable."""
    import danlu.serve as serving

    seen = []
    monkeypatch.setattr(serving, "serve", lambda settings, store: seen.append(settings))
    monkeypatch.setenv("DANLU_HOST", "127.0.0.2")
    monkeypatch.setenv("DANLU_PORT", "9123")
    monkeypatch.setenv("DANLU_THREADS", "3")
    assert danlu("serve", "wine@production").code == 0
    assert (seen[0].host, seen[0].port, seen[0].threads) == ("127.0.0.2", 9123, 3)
    assert danlu("serve", "wine@production", "--port", "9200").code == 0
    assert seen[1].port == 9200
    monkeypatch.setenv("DANLU_PORT", "70000")
    outcome = danlu("serve", "wine@production")
    text = " ".join((outcome.stdout + outcome.stderr).split())
    assert outcome.code != 0 and "DANLU_PORT" in text and "Traceback" not in text
