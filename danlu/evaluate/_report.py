"""The trust report: sections in a stable order under a one-paragraph summary, written as one
self-contained HTML file (inline CSS and SVG, no external asset: it opens offline) and as JSON
with the same content."""

from __future__ import annotations

import html
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from danlu.evaluate._context import Section

__all__ = ["REPORT_FORMAT", "SECTION_ORDER", "Report", "field_label"]

REPORT_FORMAT = 1
#: the order of the sections in every report (absent ones are skipped)
SECTION_ORDER = (
    "metrics",
    "training",
    "baselines",
    "cross_validation",
    "calibration",
    "fairness",
    "robustness",
    "privacy",
    "membership",
    "explain",
    "cost",
    "compression",
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


#: Human labels of the report's field names (and of the metric names they hold). A key not
#: here is written in words (``cpu_seconds`` → "CPU seconds") when it names a field; a key that
#: may be data (a class, a file) is shown as it is.
LABELS = {
    # metrics
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "precision_macro": "Precision (macro)",
    "recall_macro": "Recall (macro)",
    "f1_macro": "F1 (macro)",
    "precision_weighted": "Precision (weighted)",
    "recall_weighted": "Recall (weighted)",
    "f1_weighted": "F1 (weighted)",
    "log_loss": "Log-loss",
    "roc_auc": "ROC-AUC",
    "pr_auc": "PR-AUC",
    "mae": "MAE",
    "rmse": "RMSE",
    "mse": "MSE",
    "r2": "R²",
    "mape": "MAPE",
    "micro_f1": "F1 (micro)",
    "macro_f1": "F1 (macro)",
    "subset_accuracy": "Subset accuracy",
    "hamming_loss": "Hamming loss",
    "roc_auc_macro": "ROC-AUC (macro)",
    "f1": "F1",
    "ece": "ECE",
    # fields
    "values": "Test metrics",
    "intervals": "Confidence intervals",
    "bootstrap": "Bootstrap",
    "per_class": "Per class",
    "per_label": "Per label",
    "std": "Standard error",
    "method": "Method",
    "low": "From",
    "high": "To",
    "run_id": "Run ID",
    "model_type": "Model type",
    "ece_ci": "ECE 95% CI",
    "bin_count": "Confidence bins",
    "bins": "Reliability bins (as served)",
    "temperature": "Temperature T",
    "test": "Test rows: log-loss and ECE",
    "uncalibrated": "Uncalibrated (T = 1)",
    "scaled": "At the fitted temperature",
    "served": "As served",
    "worse_after_scaling": "Worse after temperature scaling",
    "temperature_fit": "Temperature fit",
    "fitted": "Fitted temperature",
    "validation_rows": "Validation rows",
    "bounds": "Search range",
    "validation_log_loss": "Validation log-loss",
    "out_of_fold_improvement": "Held-out log-loss gain per row",
    "lowest_val_loss": "Lowest validation loss",
    "final": "End of training",  # the last epoch, or boosting round for trees
    "history": "Over training",  # one row per epoch (boosting round for trees)
    "train_loss": "Training loss",
    "val_loss": "Validation loss",
    "lr": "Learning rate",
    "paired": "Paired 95% CI",
    "strongest": "Strongest baseline",
    "headline_gap": "Headline gap",
    "within_thresholds": "Within thresholds",
    "batch_1": "Batch of 1",
    "p90": "90th percentile",
    "fgsm": "FGSM",
    "pgd": "PGD",
    "noise": "Gaussian noise",
    "dropout": "Feature dropout",
    "epsilon": "ε",
    "sigma": "σ",
    "size_bytes": "Size (bytes)",
    "latency_ms": "Latency (ms)",
    "batch_ms": "Batch (ms)",
    "wh_per_1000": "Wh per 1,000 rows",
    "joules_per_1000": "Joules per 1,000 rows",
    "energy_wh": "Energy (Wh)",
    "energy_joules": "Energy (J)",
    "most_confident": "Most confident",
    "least_confident": "Least confident",
    "k": "Folds",
    "loss_threshold": "Loss-threshold attack",
    "calibrated": "Calibrated attack",
    "tpr_at_1pct_fpr": "TPR at 1% FPR",
    "tpr_at_01pct_fpr": "TPR at 0.1% FPR",
    "non_members": "Non-members",
    "auc": "AUC",
    "member_pool": "Distinct training rows",
    "non_member_pool": "Held-out rows",
    "non_member_source": "Non-members from",
    "true": "True",
}
_WORDS = {
    "id": "ID",
    "cpu": "CPU",
    "gpu": "GPU",
    "ms": "(ms)",
    "ci": "95% CI",
    "auc": "AUC",
    "roc": "ROC",
    "ece": "ECE",
    "val": "validation",
    "f1": "F1",
}
_SNAKE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")


def field_label(key: str, *, data: bool = False) -> str:
    """The human label of a report field: ``log_loss`` → "Log-loss", ``cpu_seconds`` → "CPU
    seconds". With ``data=True`` the key may be data (a class, a feature, a file): only known
    field names are relabelled.

    Example:
        >>> field_label("balanced_accuracy"), field_label("val_log_loss"), field_label("Adelie")
        ('Balanced accuracy', 'Validation log-loss', 'Adelie')
    """
    if key in LABELS:
        return LABELS[key]
    if key.startswith("val_") and key[4:] in LABELS:  # history columns: val_accuracy ...
        return f"Validation {LABELS[key[4:]][0].lower()}{LABELS[key[4:]][1:]}"
    if data or not _SNAKE.fullmatch(key):
        return key
    words = [_WORDS.get(word, word) for word in key.split("_")]
    text = " ".join(words)
    return text[0].upper() + text[1:]


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    if value == 0:  # -0.0 too: a log-loss of exactly 0 is written "0", not "-0"
        return "0"
    if abs(value) >= 1e6 or abs(value) < 1e-3:
        return f"{value:.3e}"
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.1f}"


def _range(low: Any, high: Any) -> str:
    """An interval as ``[low, high]`` (asymmetric intervals are not written ± half)."""
    return f"[{_number(low)}, {_number(high)}]"


def _is_range(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"low", "high"}


def _with_ranges(record: dict[str, Any]) -> dict[str, Any]:
    """A record holding an estimate (``value`` / ``difference``) and its ``low`` / ``high``
    with the two merged into one "95% CI" column."""
    if not ({"low", "high"} <= set(record) and {"value", "difference"} & set(record)):
        return record
    level = record.get("confidence")
    name = f"{round(100 * level)}% CI" if isinstance(level, float) else "95% CI"
    merged: dict[str, Any] = {}
    for key, value in record.items():
        if key == "low":
            merged[name] = _Range(record["low"], record["high"])
        elif key not in {"high", "confidence"}:
            merged[key] = value
    return merged


@dataclass(frozen=True)
class _Range:
    low: Any
    high: Any


def _cell(value: Any) -> str:
    if value is None:
        return "<td>—</td>"
    if isinstance(value, _Range):
        return f'<td class="n">{_range(value.low, value.high)}</td>'
    if isinstance(value, bool):
        return f"<td>{_number(value)}</td>"
    if isinstance(value, (int, float)):
        return f'<td class="n">{_number(value)}</td>'
    if _is_range(value):
        return f'<td class="n">{_range(value["low"], value["high"])}</td>'
    if isinstance(value, (dict, list)):
        return f"<td>{_render(value, depth=2)}</td>"
    return f"<td>{html.escape(str(value))}</td>"


def _head(key: str, *, data: bool = False) -> str:
    return html.escape(field_label(str(key), data=data))


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


_FOLD_ROWS = 20  # longer tables are folded (<details>): the figure above shows them


def _table(records: list[dict[str, Any]], row_keys: bool = False) -> str:
    """Records as a table; ``row_keys``: the first column holds dict keys (maybe data)."""
    records = [_with_ranges(r) for r in records]
    columns: list[str] = []
    for record in records:
        columns.extend(k for k in record if k not in columns)
    head = "".join(f"<th>{_head(c)}</th>" if c else "<th></th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f"<th>{_head(record[c], data=True)}</th>"
            if row_keys and c == ""
            else _cell(record.get(c))
            for c in columns
        )
        + "</tr>"
        for record in records
    )
    table = f"<table><tr>{head}</tr>{body}</table>"
    if len(records) > _FOLD_ROWS:
        return f"<details><summary>{len(records)} rows</summary>{table}</details>"
    return table


def _render(value: Any, depth: int = 0) -> str:
    """Plain JSON data as HTML: dicts as key/value tables, lists of records as tables, field
    names as human labels, intervals as [low, high]."""
    if _is_records(value):
        return _table(value)
    if _is_range(value):
        return _range(value["low"], value["high"])
    if isinstance(value, dict) and value and all(_is_flat(v) for v in value.values()):
        # {"accuracy": {"value": .., "low": ..}, ...}: one row per key
        return _table([{"": k, **v} for k, v in value.items()], row_keys=True)
    if isinstance(value, dict):
        if not value:
            return "—"
        record = _with_ranges(value)
        rows = "".join(f"<tr><th>{_head(k)}</th>{_cell(v)}</tr>" for k, v in record.items())
        return f"<table>{rows}</table>"
    if isinstance(value, list):
        if not value:
            return "none"
        if len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
            return _range(value[0], value[1])  # a [low, high] pair
        if len(value) > 40 or any(isinstance(v, list) for v in value):
            return f"<i>{len(value)} values (in report.json)</i>"
        return html.escape(
            ", ".join(
                _number(v) if isinstance(v, float) else field_label(str(v), data=True)
                for v in value
            )
        )
    if isinstance(value, (int, float)):
        return _number(value)
    return html.escape(str(value))


#: data keys shown as a figure of their section, not as a table (report.json keeps them)
_DRAWN = frozenset({"confusion_matrix", "token_attributions"})


def _section_tables(data: dict[str, Any]) -> list[str]:
    """A section's data: its single values in one table first, then one titled table each for
    the structured ones (the confusion matrix and the token attributions are drawn as
    figures)."""
    single, blocks = {}, []
    for key, value in data.items():
        if key in _DRAWN or value is None:
            continue  # drawn as a figure, or not measured
        if _is_single(value):
            single[key] = value
        else:
            blocks.append(f"<h3>{_head(key)}</h3>{_render(value)}")
    return ([_render(single)] if single else []) + blocks


def _is_single(value: Any) -> bool:
    """A value written in one cell: a number, a text, an interval, a short list of words."""
    if _is_range(value):
        return True
    if isinstance(value, list):
        return not value or (
            len(value) <= 12 and not any(isinstance(v, (dict, list)) for v in value)
        )
    return not isinstance(value, dict)


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

    def test_metrics(self) -> dict[str, float]:
        """The metrics section's test metrics (the model as served), e.g. ``{"accuracy": ..}``."""
        section = self.section("metrics")
        values = section.data.get("values", {}) if section is not None else {}
        return {k: float(v) for k, v in values.items()}

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
            parts.extend(_section_tables(s.data))
            if s.notes:
                items = "".join(f"<li>{html.escape(n)}</li>" for n in s.notes)
                parts.append(f'<ul class="notes">{items}</ul>')
        parts.append("</body></html>")
        return "\n".join(parts)
