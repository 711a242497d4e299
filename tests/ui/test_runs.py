"""The runs pages over HTTP against a real server: filter, sort, pages, 404s, artifact names,
security headers and escaping."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.ui.conftest import SYNTHETIC_RUNS, XSS_NAME

pytest.importorskip("fastapi")


def run_ids(html: str) -> list[str]:
    """The run ids of the runs table's rows, in order."""
    return re.findall(r'<tr data-run="([^"]+)"', html)


def cells(html: str, key: str) -> list[str]:
    return re.findall(rf'data-key="{re.escape(key)}">([^<]*)<', html)


def test_runs_page_lists_runs_with_key_columns(server, runs):
    response = httpx.get(server + "/")
    assert response.status_code == 200
    ids = run_ids(response.text)
    assert runs["wine"] in ids and runs["cancer"] in ids
    # the key metric columns carry each run's value
    assert '<a href="?filter=&amp;order=metrics.test_accuracy' in response.text
    assert 'data-key="test_accuracy"' in response.text


def test_filter_narrows_and_a_bad_filter_says_why(server, runs):
    everything = run_ids(httpx.get(server + "/", params={"limit": 100}).text)
    narrowed = httpx.get(server + "/", params={"filter": "params.model.type = 'linear'"})
    assert narrowed.status_code == 200
    assert len(run_ids(narrowed.text)) == SYNTHETIC_RUNS < len(everything)
    assert runs["wine"] not in run_ids(narrowed.text)
    bad = httpx.get(server + "/", params={"filter": "metrics.score >>> 3"})
    assert bad.status_code == 200  # the page, saying what is wrong, with the form to fix it
    assert 'class="error"' in bad.text and "filter" in bad.text.lower()
    assert run_ids(bad.text) == []


def test_sort_by_metric_both_ways(server):
    query = {"filter": "params.model.type = 'linear'", "limit": 100}
    up = httpx.get(server + "/", params={**query, "order": "metrics.score"}).text
    down = httpx.get(server + "/", params={**query, "order": "-metrics.score"}).text
    scores_up = [float(v) for v in cells(up, "score")]
    assert scores_up == sorted(scores_up) and len(scores_up) == SYNTHETIC_RUNS
    assert [float(v) for v in cells(down, "score")] == scores_up[::-1]
    # the header of the sorted column links to the other direction
    assert "order=-metrics.score" in up


def test_pages_do_not_overlap(server):
    query = {"filter": "params.model.type = 'linear'", "order": "metrics.score", "limit": 5}
    pages = [
        httpx.get(server + "/", params={**query, "offset": offset}).text for offset in (0, 5, 10)
    ]
    ids = [run_ids(p) for p in pages]
    assert [len(i) for i in ids] == [5, 5, SYNTHETIC_RUNS - 10]
    assert len({x for i in ids for x in i}) == SYNTHETIC_RUNS
    assert 'rel="next"' in pages[0] and 'rel="next"' not in pages[2]
    assert 'rel="prev"' in pages[1]


def test_run_detail_shows_lineage_reports_and_artifacts(server, runs):
    html = httpx.get(server + f"/runs/{runs['wine']}").text
    assert "wine-tiny" in html and "builtin:wine" in html  # the recipe
    assert f'href="/runs/{runs["child"]}"' in html  # child run
    assert "wine:1" in html  # the model version made from it
    assert f'src="/runs/{runs["wine"]}/report/report.html"' in html
    assert f'src="/runs/{runs["wine"]}/report/data_quality.html"' in html
    assert re.search(r"<iframe[^>]* sandbox[ >]", html)
    assert "stages.json" in html and 'id="stages"' in html
    child = httpx.get(server + f"/runs/{runs['child']}").text
    assert f'href="/runs/{runs["wine"]}"' in child  # parent link


def test_metrics_json_and_after(server, runs):
    url = server + f"/api/runs/{runs['wine']}/metrics"
    payload = httpx.get(url).json()
    assert payload["status"] == "finished" and payload["steps"] == 2
    assert [p[0] for p in payload["series"]["train_loss"]] == [1, 2]
    assert "test_accuracy" not in payload["series"]  # one value, not a curve
    later = httpx.get(url, params={"after": 1}).json()
    assert [p[0] for p in later["series"]["train_loss"]] == [2]
    assert httpx.get(url, params={"after": 2}).json()["series"] == {}


def test_reports_are_sandboxed_and_artifacts_download(server, runs):
    report = httpx.get(server + f"/runs/{runs['wine']}/report/report.html")
    assert report.status_code == 200
    assert "sandbox" in report.headers["content-security-policy"]
    assert report.headers["x-frame-options"] == "SAMEORIGIN"
    assert httpx.get(server + f"/runs/{runs['wine']}/report/stages.json").status_code == 404
    artifact = httpx.get(server + f"/runs/{runs['wine']}/artifacts/stages.json")
    assert artifact.status_code == 200
    assert artifact.headers["content-type"] == "application/octet-stream"
    assert artifact.headers["content-disposition"].startswith("attachment")
    assert artifact.headers["x-content-type-options"] == "nosniff"
    assert b'"stages"' in artifact.content


@pytest.mark.parametrize(
    "name",
    ["..%2F..%2Fdanlu.db", "..%2Fsecret", "%2e%2e%2fx", "a%2F..%2F..%2Fdanlu.db", "nothere.json"],
)
def test_artifact_names_cannot_escape(server, runs, name):
    response = httpx.get(server + f"/runs/{runs['wine']}/artifacts/{name}")
    assert response.status_code == 404
    assert b"SQLite" not in response.content


@pytest.mark.parametrize("path", ["/runs/no-such-run", "/runs/..%2F..", "/runs/a%20b"])
def test_unknown_runs_are_404_pages(server, path):
    response = httpx.get(server + path)
    assert response.status_code == 404
    assert response.headers["content-security-policy"].startswith("default-src 'none'")


def test_security_headers_on_every_page(server, runs):
    paths = [
        "/",
        "/?filter=bad%20filter",
        f"/runs/{runs['wine']}",
        f"/api/runs/{runs['wine']}/metrics",
        f"/compare?runs={runs['wine']},{runs['cancer']}",
        "/compare?runs=x",
        "/runs/nope",
        "/no/such/page",
    ]
    for path in paths:
        headers = httpx.get(server + path).headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
        assert headers["x-frame-options"] == "DENY", path
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["referrer-policy"], path


def test_a_scripted_run_name_is_escaped(server, runs):
    for path in ["/", f"/runs/{runs['xss']}", f"/compare?runs={runs['xss']},{runs['wine']}"]:
        html = httpx.get(server + path).text
        assert XSS_NAME not in html, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path
    detail = httpx.get(server + f"/runs/{runs['xss']}").text
    assert "last line" in detail  # the log's tail


def test_compare_diff_and_limits(server, runs):
    html = httpx.get(server + "/compare", params={"runs": f"{runs['wine']},{runs['cancer']}"}).text
    assert 'id="params-diff"' in html
    diff = html.split('id="params-diff"')[1].split("</table>")[0]
    assert "data.source" in diff and "builtin:breast_cancer" in diff
    assert "schema_version" not in diff  # the same in both: in the collapsed list
    assert 'id="params-same"' in html
    assert 'data-parallel="' in html and "metrics.test_accuracy" in html
    # checkboxes submit runs=a&runs=b: the same page
    repeated = httpx.get(
        server + "/compare", params=[("runs", runs["wine"]), ("runs", runs["cancer"])]
    )
    assert repeated.status_code == 200 and 'id="params-diff"' in repeated.text
    assert httpx.get(server + "/compare", params={"runs": runs["wine"]}).status_code == 400
    eleven = ",".join(f"r{i}" for i in range(11))
    assert httpx.get(server + "/compare", params={"runs": eleven}).status_code == 400
    missing = httpx.get(server + "/compare", params={"runs": f"{runs['wine']},nope"})
    assert missing.status_code == 404
