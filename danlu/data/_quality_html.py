"""The data quality report as HTML: one ``<section>`` with scoped CSS and every text escaped."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["quality_html"]

_CSS = """
.danlu-quality{font-family:system-ui,-apple-system,sans-serif;font-size:14px;color:#1f2328}
.danlu-quality h2{font-size:1.3em;margin:.6em 0 .3em}
.danlu-quality h3{font-size:1.05em;margin:.9em 0 .3em}
.danlu-quality table{border-collapse:collapse;margin:.3em 0}
.danlu-quality th,.danlu-quality td{border-bottom:1px solid #d0d7de;padding:2px 8px;text-align:left;vertical-align:top}
.danlu-quality th{background:#f6f8fa}
.danlu-quality td.num{text-align:right;font-variant-numeric:tabular-nums}
.danlu-quality .dq-warnings li{color:#9a6700}
.danlu-quality .dq-ok{color:#1a7f37}
.danlu-quality .dq-flag{background:#fff8c5;border:1px solid #d4a72c;border-radius:4px;padding:0 4px;margin-right:3px;font-size:.85em}
.danlu-quality .dq-bar{display:inline-block;height:.8em;background:#54aeff;vertical-align:middle}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _summary(c: Mapping[str, Any]) -> str:
    """Range and mean of a numeric column, lengths of a text column, or its top categories."""
    text = c.get("text")
    if text is not None:
        length = text.get("tokens") or text["chars"]
        unit = "tokens" if text.get("tokens") else "characters"
        vocab = text.get("vocabulary") or {}
        coverage = vocab.get("test_coverage_percent")
        return (
            f"{unit}: median {_fmt(length['median'])}, p95 {_fmt(length['p95'])}, max "
            f"{_fmt(length['max'])}; empty {text['empty']}, repeated {text['duplicates']}"
            + (f", truncated {_fmt(text['truncated_percent'])}%" if "truncated" in text else "")
            + (f"; test tokens seen in train {_fmt(coverage)}%" if coverage is not None else "")
        )
    if "mean" in c:
        return (
            f"{_fmt(c['min'])} .. {_fmt(c['max'])} (mean {_fmt(c['mean'])}, std {_fmt(c['std'])})"
        )
    return ", ".join(f"{t['value']} ({t['count']})" for t in c.get("top", []))


def _html_columns(details: Sequence[Mapping[str, Any]]) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in ("column", "kind", "missing %", "distinct", "values", "outliers z / IQR",
                  "PSI", "KS (p)", "flags")
    )  # fmt: skip
    body = []
    for c in details:
        outliers = c.get("outliers")
        shift = c.get("shift") or {}
        ks = (
            f"{_fmt(shift.get('ks'))} ({_fmt(shift.get('ks_pvalue'))})"
            if shift.get("ks") is not None
            else "-"
        )
        flags = "".join(f'<span class="dq-flag">{_e(f)}</span>' for f in c["flags"])
        zscore_iqr = f"{outliers['zscore']} / {outliers['iqr']}" if outliers else "-"
        cells = [
            f"<td>{_e(c['name'])}</td>",
            f"<td>{_e(c['kind'])}{_e(' (' + c['encoding'] + ')' if c.get('encoding') else '')}</td>",
            f'<td class="num">{c["missing_percent"]:g}</td>',
            f'<td class="num">{c["distinct"]}</td>',
            f"<td>{_e(_summary(c))}</td>",
            f'<td class="num">{_e(zscore_iqr)}</td>',
            f'<td class="num">{_e(_fmt(shift.get("psi")))}</td>',
            f'<td class="num">{_e(ks)}</td>',
            f"<td>{flags}</td>",
        ]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="dq-columns"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _html_shares(entries: Sequence[Mapping[str, Any]], what: str) -> str:
    """A table of classes or labels: rows, share, and a bar of the share."""
    rows = "".join(
        f'<tr><td>{_e(k["label"])}</td><td class="num">{k["count"]}</td>'
        f'<td class="num">{k["percent"]:g}%</td>'
        f'<td><span class="dq-bar" style="width:{max(1, round(k["percent"] * 2))}px">'
        "</span></td></tr>"
        for k in entries
    )
    return (
        f'<table class="dq-target"><thead><tr><th>{what}</th><th>rows</th><th>share</th>'
        f"<th></th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _html_target(target: Mapping[str, Any]) -> str:
    if "labels" in target:
        return (
            f"<p>Rows with no label: {target['no_label_rows']} "
            f"({target['no_label_percent']:g}%); labels per row: "
            f"{_e(_fmt(target.get('labels_per_row')))}</p>"
            + _html_shares(target["labels"], "label")
        )
    if "classes" in target:
        ratio = target.get("imbalance_ratio")
        return (
            f"<p>Imbalance ratio (largest / smallest class): {_e(_fmt(ratio))}</p>"
            + _html_shares(target["classes"], "class")
        )
    keys = ("min", "q1", "median", "mean", "q3", "max", "std", "skew")
    head = "".join(f"<th>{k}</th>" for k in keys)
    cells = "".join(f'<td class="num">{_e(_fmt(target.get(k)))}</td>' for k in keys)
    return f'<table class="dq-target"><thead><tr>{head}</tr></thead><tbody><tr>{cells}</tr></tbody></table>'


def quality_html(report: Mapping[str, Any], *, page: bool = False) -> str:
    """The report as an HTML ``<section>`` (scoped CSS, no external assets, all text escaped).

    Args:
        report: :func:`quality_report`'s output.
        page: wrap the section in a complete HTML document (for a standalone file).

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"x": range(40), "y": [0, 1] * 20})
        >>> from danlu.data import quality_report
        >>> quality_html(quality_report(df, "y", "classification")).startswith("<section")
        True
    """
    dup = report["duplicates"]
    split = report.get("split")
    overview = (
        f"{report['rows']} rows x {report['columns']} columns ({report.get('features', '?')} "
        f"features), {dup['rows']} duplicate rows ({dup['percent']:g}%)"
    )
    if split:
        overview += (
            f"; train {split['train']} / test {split['test']} rows, {split['shared_rows']} test "
            "rows also in train"
        )
    source = report.get("source")
    title = f"Data quality: {source}" if source else "Data quality"
    warnings_html = (
        '<ul class="dq-warnings">'
        + "".join(f"<li>{_e(w)}</li>" for w in report["warnings"])
        + "</ul>"
        if report["warnings"]
        else '<p class="dq-ok">Nothing needs attention.</p>'
    )
    target = report["target"]
    section = (
        f'<section class="danlu-quality"><style>{_CSS}</style>'
        f'<h2>{_e(title)}</h2><p class="dq-overview">{_e(overview)}</p>'
        f"<h3>Warnings</h3>{warnings_html}"
        f"<h3>Target '{_e(target['name'])}' ({_e(target['task'])})</h3>{_html_target(target)}"
        f"<h3>Columns</h3>{_html_columns(report['details'])}"
        "</section>"
    )
    if not page:
        return section
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"</head><body>{section}</body></html>\n"
    )
