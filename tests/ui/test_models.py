"""The registry pages over a real server, on a real run (wine, 2 epochs, a quick trust report,
registered, compressed with ONNX Runtime's dynamic int8): versions, aliases, the framed trust
report, the compression charts, and moving an alias (admin key, same origin, audited)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.ui.conftest import XSS_NAME, screenshot, serve

pytest.importorskip("fastapi")

RECIPE = {
    "name": "wine-compress",
    "data": {
        "source": "builtin:wine",
        "split": {"test": 0.2, "val": 0.2, "seed": 0, "stratify": True},
        "prepare": {"scale": "standard"},
    },
    "task": "classification",
    "model": {"type": "mlp", "hidden": [16]},
    "train": {"epochs": 2, "batch_size": 32, "seed": 0},
    "evaluate": {"bootstrap": 0, "robustness": False, "explain": False, "cost": None},
    "register": {"name": "wine", "alias": "staging"},
    # a generous gate: the tiny model's int8 variant passes and is registered as wine:2
    "compress": {
        "quantize": {"methods": ["ort-dynamic"]},
        "repeats": 2,
        "bootstrap": 0,
        "max_metric_drop": 1.0,
    },
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """(server URL, store): model ``wine`` (v1 fp32 @staging, v2 its int8 variant) and model
    ``tagged`` whose version carries a tag that tries to inject a script."""
    import danlu
    from danlu.store import SqlStore

    store = SqlStore(home=tmp_path_factory.mktemp("models-home"))
    danlu.run(RECIPE, store=store)
    store.create_model_version(
        "tagged",
        run_id=None,
        files={"w.bin": b"w"},
        signature={},
        metrics={"test_accuracy": 0.5},
        tags={"note": XSS_NAME},
    )
    try:
        with serve(store) as url:
            yield url, store
    finally:
        store.close()


def _key(store: Any, scope: str) -> str:
    return str(store.create_api_key(scope, name=f"ui-{scope}", actor="tests")[1])


def test_models_page_lists_models_with_aliases(registry):
    url, _ = registry
    page = httpx.get(url + "/models")
    assert page.status_code == 200
    assert '<a href="/models/wine">wine</a>' in page.text
    assert "staging → 1" in page.text


def test_model_page_shows_versions_tags_metrics_and_framed_reports(registry):
    url, store = registry
    page = httpx.get(url + "/models/wine")
    assert page.status_code == 200
    versions = re.findall(r'<tr id="v(\d+)">', page.text)
    assert versions == ["2", "1"]
    v2 = store.get_model_version("wine", 2)
    assert v2.tags["compression"] == "int8-ort-dynamic" and v2.tags["parent"] == "wine:1"
    assert "<code>compression</code>=int8-ort-dynamic" in page.text
    assert "test_accuracy <b>" in page.text
    for version in (1, 2):
        assert (
            f'<iframe class="report" sandbox loading="lazy" title="trust report of wine:{version}" '
            f'src="/models/wine/{version}/report"></iframe>'
        ) in page.text


def test_report_route_sends_the_report_policy(registry):
    from danlu.ui._app import REPORT_CSP

    url, store = registry
    response = httpx.get(url + "/models/wine/1/report")
    assert response.status_code == 200
    assert response.headers["content-security-policy"] == REPORT_CSP
    assert response.headers["x-frame-options"] == "SAMEORIGIN"
    assert response.text == store.model_version_path("wine", 1, "report.html").read_text()
    assert httpx.get(url + "/models/wine/99/report").status_code == 404
    assert httpx.get(url + "/models/tagged/1/report").status_code == 404  # no report there
    assert httpx.get(url + "/models/..%2F..%2Fetc/1/report").status_code == 404


def test_compression_points_come_from_the_variants_file(registry):
    from danlu.ui._models import compression_points

    _, store = registry
    groups = compression_points(store, "wine", store.list_model_versions("wine"))
    assert len(groups) == 1 and groups[0]["parent"] == "wine:1"
    points = {p["variant"]: p for p in groups[0]["points"]}
    assert set(points) == {"fp32", "int8-ort-dynamic"}
    assert points["int8-ort-dynamic"]["version"] == "wine:2"
    for p in points.values():
        assert p["latency_ms"] > 0 and p["size_bytes"] > 0 and 0 <= p["value"] <= 1
    assert points["int8-ort-dynamic"]["size_bytes"] < points["fp32"]["size_bytes"]


def test_html_in_names_and_tags_is_escaped(registry):
    url, _ = registry
    page = httpx.get(url + "/models/tagged")
    assert page.status_code == 200
    assert XSS_NAME not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    # the store refuses such a model name: the page says there is none, as text
    name = "<img src=x onerror=alert(1)>"
    missing = httpx.get(url + "/models/" + name)
    assert missing.status_code == 404 and "text/html" in missing.headers["content-type"]
    assert name not in missing.text and "&lt;img src=x onerror=alert(1)&gt;" in missing.text


def _move(url: str, data: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        url + "/models/wine/aliases",
        data=data,
        headers={"Origin": url, **headers},
        follow_redirects=False,
    )


def test_moving_an_alias_needs_an_admin_key_and_is_audited(registry):
    url, store = registry
    before = len(store.audit_log("wine"))
    predict = _key(store, "predict")
    admin = _key(store, "admin")
    refused = [
        _move(url, {"alias": "production", "version": "2"}),  # no key
        _move(url, {"alias": "production", "version": "2", "key": predict}),  # too weak
        _move(url, {"alias": "production", "version": "2", "key": "dl_nope_nope"}),  # unknown
        # an admin key, but from another site's page
        _move(
            url, {"alias": "production", "version": "2", "key": admin}, Origin="http://evil.test"
        ),
    ]
    assert [r.status_code for r in refused] == [403, 403, 403, 403]
    assert "production" not in store.get_model_version("wine", 2).aliases
    changes = [e for e in store.audit_log("wine") if e.action != "denied"]
    assert len(changes) == before  # each refusal is audited as denied, nothing changed
    assert len(store.audit_log("wine")) - before == 4

    moved = _move(url, {"alias": "staging", "version": "2", "key": admin})
    assert moved.status_code == 303 and moved.headers["location"] == "/models/wine"
    assert store.resolve("wine@staging").version == 2
    entry = store.audit_log("wine")[-1]
    assert entry.action == "set_alias" and entry.version == 2
    assert entry.actor == f"key {store.verify_api_key(admin).id}"  # a key without a user
    assert entry.detail["alias"] == "staging" and entry.detail["previous"] == 1
    page = httpx.get(url + "/models/wine").text
    assert f"<td>key {store.verify_api_key(admin).id}</td><td>set_alias</td>" in page

    # a bad alias or version is refused with the store's reason, nothing moves
    bad = _move(url, {"alias": "7", "version": "1", "key": admin})
    assert bad.status_code == 400 and 'class="error"' in bad.text
    missing = _move(url, {"alias": "staging", "version": "9", "key": admin})
    assert missing.status_code == 404
    assert store.resolve("wine@staging").version == 2
    # the key the browser signed in with (the /login cookie, or the header) serves too
    signed_in = _move(url, {"alias": "staging", "version": "1"}, **{"X-Danlu-Key": admin})
    assert signed_in.status_code == 303 and store.resolve("wine@staging").version == 1
    assert store.audit_log("wine")[-1].actor == f"key {store.verify_api_key(admin).id}"


def test_report_and_compression_chart_in_chromium(registry, page, tmp_path):
    url, _ = registry
    page.goto(url + "/models/wine")
    # the newest version's report is open and framed: its document has the report's text
    frame = page.frame_locator('iframe[src="/models/wine/2/report"]')
    frame.locator("body").wait_for()
    assert len(frame.locator("body").inner_text()) > 100
    page.wait_for_function(
        "window.echarts && echarts.getInstanceByDom(document.querySelector('.compression-size'))"
    )
    counts = page.evaluate(
        """() => [...document.querySelectorAll('.compression-latency, .compression-size')].map(
            (el) => echarts.getInstanceByDom(el).getOption().series
                .reduce((n, s) => n + s.data.length, 0))"""
    )
    assert counts == [2, 2]  # fp32 and its int8 variant on both charts
    page.locator('iframe[src="/models/wine/2/report"]').scroll_into_view_if_needed()
    frame.locator("h1").wait_for()
    screenshot(page, tmp_path, "model.png")


def test_removing_an_alias_needs_an_admin_key_and_is_audited(registry):
    url, store = registry
    admin = _key(store, "admin")
    store.set_alias("wine", "old", 1)

    def remove(data: dict[str, Any], origin: str = url) -> httpx.Response:
        return httpx.post(
            url + "/models/wine/aliases/delete",
            data=data,
            headers={"Origin": origin},
            follow_redirects=False,
        )

    refused = [
        remove({"alias": "old"}),  # no key
        remove({"alias": "old", "key": _key(store, "predict")}),  # too weak
        remove({"alias": "old", "key": admin}, origin="http://evil.test"),  # another site
    ]
    assert [r.status_code for r in refused] == [403, 403, 403]
    assert store.resolve("wine@old").version == 1
    assert 'id="alias-delete-form"' in httpx.get(url + "/models/wine").text

    done = remove({"alias": "old", "key": admin})
    assert done.status_code == 303 and done.headers["location"] == "/models/wine"
    assert "old" not in store.get_model_version("wine", 1).aliases
    entry = store.audit_log("wine")[-1]
    assert (entry.action, entry.actor, entry.detail["alias"]) == (
        "delete_alias",
        f"key {store.verify_api_key(admin).id}",
        "old",
    )
    assert remove({"alias": "old", "key": admin}).status_code == 404  # gone already
