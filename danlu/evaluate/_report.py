"""The trust report: sections in a stable order under a one-paragraph summary, written as one
self-contained HTML file (inline CSS and SVG, no external asset: it opens offline) and as JSON
with the same content."""

from __future__ import annotations

import html
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from danlu.evaluate._context import Section

__all__ = ["REPORT_FORMAT", "SECTION_ORDER", "Report"]

REPORT_FORMAT = 1
#: the order of the sections in every report (absent ones are skipped)
SECTION_ORDER = (
    "metrics",
    "baselines",
    "cross_validation",
    "calibration",
    "fairness",
    "robustness",
    "explain",
    "cost",
)

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2327;
max-width:1080px;margin:0 auto;padding:24px 28px;background:#fff}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:34px 0 8px;padding-top:10px;
border-top:1px solid #dde1e4}h3{font-size:14px;margin:16px 0 6px;color:#3c4650}
.sub{color:#5a6670;margin:0 0 16px}.summary{font-size:16px;background:#f3f7fb;border-left:4px solid
#1f77b4;padding:12px 16px;margin:16px 0}.flags{background:#fff4e5;border-left:4px solid #e8870e;
padding:8px 16px;margin:12px 0}.flags li{margin:4px 0}table{border-collapse:collapse;margin:6px 0 10px;
font-size:13px}th,td{border:1px solid #dde1e4;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f5f6f7;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.notes{color:#4a555e;font-size:13px}.fig{display:inline-block;margin:8px 16px 8px 0;
vertical-align:top}.fig svg{max-width:100%;height:auto}.fig p{margin:2px 0;color:#5a6670;font-size:12px}
nav a{margin-right:12px}.time{color:#8a949c;font-size:12px;font-weight:normal}
"""


def _number(value: float) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.1f}"


def _cell(value: Any) -> str:
    if value is None:
        return "<td>—</td>"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="n">{_number(value)}</td>'
    if isinstance(value, (dict, list)):
        return f"<td>{_render(value, depth=2)}</td>"
    return f"<td>{html.escape(str(value))}</td>"


def _is_records(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(v, dict) for v in value)
        and len(value) <= 500
    )


def _is_flat(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(not isinstance(v, (dict, list)) for v in value.values())
    )


def _render(value: Any, depth: int = 0) -> str:
    """Plain JSON data as HTML: dicts as key/value tables, lists of records as tables."""
    if _is_records(value):
        columns: list[str] = []
        for record in value:
            columns.extend(k for k in record if k not in columns)
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(_cell(record.get(c)) for c in columns) + "</tr>" for record in value
        )
        return f"<table><tr>{head}</tr>{body}</table>"
    if isinstance(value, dict) and value and all(_is_flat(v) for v in value.values()):
        # {"accuracy": {"value": .., "low": ..}, ...}: one row per key
        return _render([{"": k, **v} for k, v in value.items()], depth)
    if isinstance(value, dict):
        if not value:
            return "—"
        rows = "".join(
            f"<tr><th>{html.escape(str(k))}</th>{_cell(v)}</tr>" for k, v in value.items()
        )
        return f"<table>{rows}</table>"
    if isinstance(value, list):
        if len(value) > 40 or any(isinstance(v, list) for v in value):
            return f"<i>{len(value)} values (in report.json)</i>"
        return html.escape(", ".join(_number(v) if isinstance(v, float) else str(v) for v in value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _number(value)
    return html.escape(str(value))


@dataclass
class Report:
    """A model's trust report.

    Attributes:
        subject: what was evaluated: run id, model reference, recipe, task, data, rows.
        sections: the sections, in :data:`SECTION_ORDER`.
        created_at: when (UNIX seconds).
        seconds: how long the whole report took.
    """

    subject: dict[str, Any]
    sections: list[Section]
    created_at: float = field(default_factory=time.time)
    seconds: float = 0.0

    def section(self, key: str) -> Section | None:
        """The section with this key, or None."""
        return next((s for s in self.sections if s.key == key), None)

    @property
    def summary(self) -> str:
        """One paragraph: each section's phrase, in order."""
        phrases = [s.summary for s in self.sections if s.summary]
        if not phrases:
            return "No results."
        text = "; ".join(phrases)
        return text[0].upper() + text[1:] + "."

    @property
    def flags(self) -> list[str]:
        """Every section's flags, prefixed by the section's title."""
        return [f"{s.title}: {flag}" for s in self.sections for flag in s.flags]

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON types (figures are in the HTML only)."""
        return {
            "format": REPORT_FORMAT,
            "subject": self.subject,
            "summary": self.summary,
            "flags": self.flags,
            "created_at": self.created_at,
            "seconds": round(self.seconds, 3),
            "timings": {s.key: round(s.seconds, 3) for s in self.sections},
            "sections": {s.key: s.to_dict() for s in self.sections},
        }

    def to_json(self) -> str:
        """``to_dict`` as indented JSON (NaN and infinity written as null)."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, dict):
                return {str(k): clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            return value

        return json.dumps(clean(self.to_dict()), indent=1)

    def to_html(self) -> str:
        """One self-contained HTML page: no script, no external stylesheet, font or image."""
        subject = self.subject
        title = subject.get("model") or subject.get("run_name") or subject.get("run_id") or "model"
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.created_at))
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>Trust report · {html.escape(str(title))}</title>",
            f"<style>{_CSS}</style></head><body>",
            f"<h1>Trust report · {html.escape(str(title))}</h1>",
            f'<p class="sub">made by danlu on {when} in {self.seconds:.1f} s</p>',
            f'<p class="summary">{html.escape(self.summary)}</p>',
        ]
        if self.flags:
            items = "".join(f"<li>{html.escape(f)}</li>" for f in self.flags)
            parts.append(f'<div class="flags"><b>Needs attention</b><ul>{items}</ul></div>')
        parts.append(_render({k: v for k, v in subject.items() if v is not None}))
        links = "".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in self.sections)
        parts.append(f"<nav>{links}</nav>")
        for s in self.sections:
            parts.append(
                f'<h2 id="{s.key}">{html.escape(s.title)} '
                f'<span class="time">{s.seconds:.1f} s</span></h2>'
            )
            if s.summary:
                parts.append(f"<p><b>{html.escape(s.summary[0].upper() + s.summary[1:])}</b></p>")
            if s.flags:
                items = "".join(f"<li>{html.escape(f)}</li>" for f in s.flags)
                parts.append(f'<div class="flags"><ul>{items}</ul></div>')
            for caption, markup in s.figures.items():
                parts.append(f'<div class="fig">{markup}<p>{html.escape(caption)}</p></div>')
            for key, value in s.data.items():
                if key in {"confusion_matrix"} or value is None:
                    continue  # drawn as a figure, or not measured
                parts.append(f"<h3>{html.escape(key.replace('_', ' '))}</h3>{_render(value)}")
            if s.notes:
                items = "".join(f"<li>{html.escape(n)}</li>" for n in s.notes)
                parts.append(f'<ul class="notes">{items}</ul>')
        parts.append("</body></html>")
        return "\n".join(parts)
