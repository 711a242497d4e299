"""``GET /docs``: the API reference as one self-contained HTML page, made from the OpenAPI document.

FastAPI's own ``/docs`` loads Swagger UI's script and stylesheet from a CDN, so on a machine
without internet access (where a self-hosted server often runs) it is a blank page. This page is
rendered on the server instead: every operation with its parameters, request body, responses and
whether it needs a key, and every schema as a table of fields — plain HTML with an inline
stylesheet, no script, nothing fetched from anywhere (its Content-Security-Policy says so). The
machine-readable document stays at ``/openapi.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

__all__ = ["CONTENT_SECURITY_POLICY", "docs_html"]

#: the page loads nothing: no script at all, its one inline stylesheet, no image or font
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'"
_METHODS = ("get", "post", "put", "patch", "delete")
_ENUM_SHOWN = 12
_TAG_ORDER = ("predict", "models", "health", "admin")  # what a reader comes for, first

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:980px;padding:0 20px 60px;
color:#1d2330}
h1{margin:28px 0 4px}h2{margin-top:36px;border-bottom:1px solid #d8dce4;padding-bottom:4px}
.op{border:1px solid #d8dce4;border-radius:6px;margin:14px 0;padding:10px 14px}
.m{display:inline-block;min-width:60px;font-weight:700;font-family:monospace}
.get{color:#1765b8}.post{color:#13804b}.put{color:#a15c00}.delete{color:#b3261e}
.patch{color:#6d3fb3}code,.path{font-family:ui-monospace,monospace}.path{font-weight:600}
table{border-collapse:collapse;margin:6px 0;width:100%}td,th{border-top:1px solid #eceef2;
padding:4px 8px;text-align:left;vertical-align:top}th{font-weight:600;color:#4a5263}
.muted{color:#5f6878}.key{font-size:13px;color:#7a4b00}
"""


def docs_html(spec: Mapping[str, Any], openapi_url: str = "/openapi.json") -> str:
    """The page for an OpenAPI document.

    Example:
        >>> page = docs_html({"info": {"title": "t", "version": "1"}, "paths": {}})
        >>> "<h1>t</h1>" in page and "http" not in page.split("</style>")[1]
        True
    """
    info = spec.get("info") or {}
    schemas = (spec.get("components") or {}).get("schemas") or {}
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>{escape(str(info.get('title', 'API')))} — API reference</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{escape(str(info.get('title', 'API')))}</h1>",
        f"<p class='muted'>version {escape(str(info.get('version', '')))} · "
        f"<a href='{escape(openapi_url)}'>OpenAPI document (JSON)</a></p>",
    ]
    if info.get("description"):
        parts.append(f"<p>{escape(str(info['description']))}</p>")
    groups = _by_tag(spec.get("paths") or {})
    for tag in sorted(groups, key=lambda t: (_TAG_ORDER.index(t) if t in _TAG_ORDER else 99, t)):
        operations = groups[tag]
        parts.append(f"<h2 id='tag-{escape(tag)}'>{escape(tag)}</h2>")
        parts.extend(_operation(method, path, op) for method, path, op in operations)
    if schemas:
        parts.append("<h2 id='schemas'>Schemas</h2>")
        parts.extend(_schema_section(name, schema) for name, schema in schemas.items())
    parts.append("</body></html>")
    return "".join(parts)


def _by_tag(paths: Mapping[str, Any]) -> dict[str, list[tuple[str, str, Mapping[str, Any]]]]:
    groups: dict[str, list[tuple[str, str, Mapping[str, Any]]]] = {}
    for path, item in paths.items():
        for method in _METHODS:
            op = item.get(method) if isinstance(item, Mapping) else None
            if isinstance(op, Mapping):
                tag = str((op.get("tags") or ["other"])[0])
                groups.setdefault(tag, []).append((method, str(path), op))
    return groups


def _operation(method: str, path: str, op: Mapping[str, Any]) -> str:
    html = [
        f"<div class='op'><span class='m {method}'>{method.upper()}</span>",
        f"<span class='path'>{escape(path)}</span>",
    ]
    if op.get("security"):
        open_too = any(not s for s in op["security"])
        needs = "a key when the server has keys or listens beyond loopback" if open_too else "a key"
        html.append(f" <span class='key'>needs {needs}</span>")
    summary = op.get("summary")
    if summary:
        html.append(f"<div><b>{escape(str(summary))}</b></div>")
    if op.get("description"):
        html.append(f"<p>{escape(str(op['description']))}</p>")
    params = op.get("parameters") or []
    if params:
        rows = "".join(
            f"<tr><td><code>{escape(str(p.get('name')))}</code></td>"
            f"<td>{escape(str(p.get('in', '')))}</td><td>{_type(p.get('schema') or {})}</td></tr>"
            for p in params
            if isinstance(p, Mapping)
        )
        html.append(f"<table><tr><th>parameter</th><th>in</th><th>type</th></tr>{rows}</table>")
    body = ((op.get("requestBody") or {}).get("content") or {}).get("application/json")
    if isinstance(body, Mapping):
        html.append(f"<div>request body (JSON): {_type(body.get('schema') or {})}</div>")
    responses = op.get("responses") or {}
    codes = sorted(responses, key=lambda code: str(code))
    rows = "".join(_response(str(code), responses[code]) for code in codes)
    html.append(f"<table><tr><th>status</th><th>meaning</th><th>body</th></tr>{rows}</table>")
    html.append("</div>")
    return "".join(html)


def _response(code: str, response: Any) -> str:
    if not isinstance(response, Mapping):
        return ""
    content = response.get("content") or {}
    media = next(iter(content.items()), None)
    body = "-"
    if media is not None:
        kind, value = media
        schema = value.get("schema") if isinstance(value, Mapping) else None
        body = _type(schema) if schema else escape(str(kind))
    meaning = escape(str(response.get("description", "")))
    return f"<tr><td><code>{escape(code)}</code></td><td>{meaning}</td><td>{body}</td></tr>"


def _schema_section(name: str, schema: Any) -> str:
    anchor = escape(f"schema-{name}")
    html = [f"<div class='op' id='{anchor}'><b><code>{escape(name)}</code></b>"]
    if not isinstance(schema, Mapping):
        return html[0] + "</div>"
    if schema.get("description"):
        html.append(f"<p class='muted'>{escape(str(schema['description']))}</p>")
    properties = schema.get("properties")
    if isinstance(properties, Mapping) and properties:
        required = set(schema.get("required") or ())
        rows = "".join(
            f"<tr><td><code>{escape(str(key))}</code>{' *' if key in required else ''}</td>"
            f"<td>{_type(value)}</td>"
            f"<td>{escape(str(value.get('description', '')) if isinstance(value, Mapping) else '')}"
            "</td></tr>"
            for key, value in properties.items()
        )
        html.append(
            f"<table><tr><th>field (* required)</th><th>type</th><th>meaning</th></tr>{rows}"
            "</table>"
        )
    else:
        html.append(f"<div>{_type(schema)}</div>")
    html.append("</div>")
    return "".join(html)


def _type(schema: Any, depth: int = 0) -> str:
    """A schema's type in a few words of HTML; references link to their schema's table."""
    if not isinstance(schema, Mapping) or depth > 4:
        return "any"
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        return f"<a href='#{escape(f'schema-{name}')}'><code>{escape(name)}</code></a>"
    for key in ("oneOf", "anyOf"):
        options = schema.get(key)
        if isinstance(options, list) and options and key in schema:
            return " | ".join(_type(o, depth + 1) for o in options)
    if "enum" in schema and isinstance(schema["enum"], list):
        values = schema["enum"]
        shown = ", ".join(escape(repr(v)) for v in values[:_ENUM_SHOWN])
        more = f", … ({len(values)} in all)" if len(values) > _ENUM_SHOWN else ""
        return f"one of {shown}{more}"
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = " | ".join(map(str, kind))
    if kind == "array":
        return f"array of {_type(schema.get('items') or {}, depth + 1)}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), Mapping):
        return f"object of {_type(schema['additionalProperties'], depth + 1)}"
    return escape(str(kind)) if kind else "any"
