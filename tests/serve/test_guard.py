"""The checks in front of every route: Host (DNS rebinding), Origin (cross-site requests) and
Content-Type, as :class:`RequestGuard` decides them."""

from __future__ import annotations

import pytest

from danlu.serve._guard import RequestGuard, parse_allowed_hosts

PREDICT = "/v1/models/wine/predict"


def _check(
    guard: RequestGuard, method: str = "POST", path: str = PREDICT, **headers: str
) -> tuple[int, str] | None:
    raw = [(k.replace("_", "-").encode(), v.encode("latin-1")) for k, v in headers.items()]
    error = guard.check(method, path, raw)
    return None if error is None else (error.status, error.field)


def test_the_allowed_hosts_are_loopback_the_bound_address_and_the_named_ones() -> None:
    guard = RequestGuard(("models.example.com",), "10.0.0.5")
    for host in (
        "localhost",
        "localhost:8000",
        "127.0.0.1:1",
        "[::1]:8000",
        "::1",
        "10.0.0.5:8000",
        "models.example.com",
        "MODELS.Example.com:443",
        "models.example.com.",
    ):
        assert _check(guard, host=host) is None, host
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "10.0.0.6", ""):
        assert _check(guard, host=host) == (400, "Host"), host
    assert _check(guard) == (400, "Host")  # no Host at all
    error = guard.check("GET", "/v1/models", [(b"host", b"evil.example:8000")])
    assert error is not None and error.code == "bad_host"
    assert "--allowed-hosts evil.example" in error.message


def test_a_wildcard_address_is_not_a_name_and_star_allows_every_host() -> None:
    assert _check(RequestGuard((), "0.0.0.0"), host="0.0.0.0:8000") == (400, "Host")
    assert _check(RequestGuard((), "0.0.0.0"), host="127.0.0.1:8000") is None
    anything = RequestGuard(("*",), "127.0.0.1")
    assert _check(anything, host="evil.example") is None
    assert _check(anything) is None


def test_health_routes_answer_any_host() -> None:
    guard = RequestGuard()
    for path in ("/healthz", "/readyz"):
        assert _check(guard, "GET", path, host="10.1.2.3:8000") is None
    assert _check(guard, "GET", "/metrics", host="10.1.2.3:8000") == (400, "Host")


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),  # same origin
        ("http://localhost:3000", "127.0.0.1:8000", True),  # an allowed host, another port
        ("https://models.example.com", "127.0.0.1:8000", True),
        ("http://evil.example", "127.0.0.1:8000", False),
        ("http://evil.example:8000", "127.0.0.1:8000", False),
        ("null", "127.0.0.1:8000", False),  # a sandboxed frame, a file
        ("file://", "127.0.0.1:8000", False),
        ("http://127.0.0.1.evil.example", "127.0.0.1:8000", False),
    ],
)
def test_origin(origin: str, host: str, allowed: bool) -> None:
    guard = RequestGuard(("models.example.com",))
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        verdict = _check(guard, method, host=host, origin=origin)
        assert verdict == (None if allowed else (403, "Origin")), (method, origin)
    assert _check(guard, "GET", host=host, origin=origin) is None  # reading: CORS's business


def test_star_hosts_still_need_a_same_origin_origin() -> None:
    guard = RequestGuard(("*",))
    assert _check(guard, host="api.example", origin="https://api.example") is None
    assert _check(guard, host="api.example", origin="https://evil.example") == (403, "Origin")


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json", None),
        ("Application/JSON; charset=UTF-8", None),
        ('application/json; charset="utf-8"', None),
        ("application/problem+json", None),
        ("application/json; charset=latin-1", 415),
        ("application/python-pickle", 415),
        ("application/x-www-form-urlencoded", 415),
        ("multipart/form-data; boundary=x", 415),
        ("text/plain", 415),
        ("text/json", 415),
        ("", 415),
    ],
)
def test_content_type(content_type: str, status: int | None) -> None:
    guard = RequestGuard()
    for method in ("POST", "PUT", "PATCH"):
        verdict = _check(guard, method, host="127.0.0.1", content_type=content_type)
        assert verdict == (None if status is None else (status, "Content-Type")), method
    assert _check(guard, "GET", host="127.0.0.1", content_type=content_type) is None
    assert _check(guard, "DELETE", host="127.0.0.1", content_type=content_type) is None


def test_no_content_type_is_read_as_json() -> None:
    assert _check(RequestGuard(), host="127.0.0.1") is None


def test_the_caches_stay_bounded() -> None:
    guard = RequestGuard()
    for i in range(2000):
        _check(guard, host=f"h{i}.example", origin=f"http://o{i}.example")
        _check(guard, host="127.0.0.1", origin=f"http://o{i}.example", content_type=f"x/{i}")
    assert len(guard._hosts) <= 256 and len(guard._origins) <= 256 and len(guard._types) <= 256


def test_allowed_hosts_are_parsed_from_the_command_line() -> None:
    assert parse_allowed_hosts("a.example, B.example:8000,[::1],,*") == (
        "a.example",
        "b.example",
        "::1",
        "*",
    )
    assert parse_allowed_hosts(None) == ()
    assert parse_allowed_hosts(["x.example", "x.example"]) == ("x.example",)
