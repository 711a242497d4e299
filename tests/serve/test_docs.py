"""``/docs`` works offline (nothing fetched from outside the server), and a served classifier's
probabilities carry its class names — both against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx
import numpy as np

from danlu.serve import ServeSettings
from tests.serve.conftest import LiveRegistry, running_server

_URL = re.compile(r"(?:https?:)?//[^\s\"'<>)]+", re.IGNORECASE)
_LOOPBACK = re.compile(r"^(?:https?:)?//(?:127\.0\.0\.1|localhost|\[::1\])(?::\d+)?(?:/|$)")


class _References(HTMLParser):
    """Every URL the page would load or link to: href, src, action, srcset, @import."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src", "action", "srcset", "data") and value:
                self.found.append(value)


def _app(registry: LiveRegistry) -> tuple[object, ServeSettings]:
    from danlu.serve._server import build_app
    from danlu.store import SqlStore

    settings = ServeSettings(models=("wine@production", "digits"), poll_seconds=0)
    return build_app(settings, lambda: SqlStore(home=registry.keyless_home)), settings


def test_docs_reference_nothing_outside_the_server(live_registry: LiveRegistry) -> None:
    app, settings = _app(live_registry)
    with running_server(app, settings) as (_, url), httpx.Client(base_url=url, timeout=30) as http:
        page = http.get("/docs")
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        html = page.text
        external = [u for u in _URL.findall(html) if not _LOOPBACK.match(u)]
        assert external == [], external  # no CDN, no font, no image from anywhere
        assert "<script" not in html.lower()
        parser = _References()
        parser.feed(html)
        assert "/openapi.json" in parser.found
        for ref in parser.found:
            if ref.startswith("#"):  # an anchor on the page: its target is there
                assert f"id='{ref[1:]}'" in html, ref
            else:
                assert http.get(ref).status_code == 200, ref
        # every operation of the OpenAPI document is on the page, the predict paths included
        spec = http.get("/openapi.json").json()
        for path in spec["paths"]:
            assert f">{path}<" in html, path
        assert "/v1/models/wine/predict" in spec["paths"]


def test_probabilities_carry_class_names(live_registry: LiveRegistry) -> None:
    import danlu
    from danlu.store import SqlStore

    app, settings = _app(live_registry)
    rows = [live_registry.row, {**live_registry.row, "alcohol": 14.0}]
    with running_server(app, settings) as (_, url), httpx.Client(base_url=url, timeout=30) as http:
        body = http.post("/v1/models/wine/predict", json={"rows": rows}).json()
        spec = http.get("/openapi.json").json()
    store = SqlStore(home=live_registry.keyless_home)
    try:
        predictor = danlu.load_model("wine@production", store=store)
    finally:
        store.close()
    classes = predictor.signature["outputs"]["prediction"]["classes"]
    assert body["classes"] == classes and len(classes) == 3
    expected = predictor.predict(rows)
    np.testing.assert_allclose(body["probabilities"], expected["probabilities"], atol=1e-4)
    # the named column of the highest probability is the predicted class
    for p, label in zip(body["probabilities"], body["predictions"], strict=True):
        assert body["classes"][int(np.argmax(p))] == label
    response = spec["components"]["schemas"]["wine_PredictResponse"]
    assert "classes" in response["required"]
    assert response["properties"]["classes"]["items"] == {"enum": classes}
