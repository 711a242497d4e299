"""The report: its summary, flags, JSON (NaN as null) and self-contained, escaped HTML."""

from __future__ import annotations

import json
import math
import re

from danlu.evaluate import SECTION_ORDER, Report, Section, field_label


def sections() -> list[Section]:
    return [
        Section("metrics", "Metrics", data={"values": {"accuracy": 0.9}}, summary="93.0% accuracy"),
        Section("baselines", "Baselines", summary=None),
        Section(
            "fairness",
            "Fairness",
            summary="largest gap 0.02",
            flags=["gap over 0.1 in group 'x'"],
        ),
    ]


def test_summary_joins_the_phrases_in_order_and_ends_with_a_period() -> None:
    report = Report(subject={"run_id": "r1"}, sections=sections())
    assert report.summary == "93.0% accuracy; largest gap 0.02."
    lower = Report(subject={}, sections=[Section("cost", "Cost", summary="tiny model")])
    assert lower.summary == "Tiny model."  # capitalised
    assert Report(subject={}, sections=[Section("cost", "Cost")]).summary == "No results."


def test_flags_carry_their_section_title_and_section_finds_by_key() -> None:
    report = Report(subject={}, sections=sections())
    assert report.flags == ["Fairness: gap over 0.1 in group 'x'"]
    assert report.section("baselines") is report.sections[1]
    assert report.section("robustness") is None


def test_to_json_writes_nan_and_infinity_as_null() -> None:
    section = Section(
        "metrics",
        "Metrics",
        data={"values": {"r2": float("nan"), "mape": float("inf"), "mae": 1.5}, "list": [math.nan]},
    )
    report = Report(subject={"run_id": "r1"}, sections=[section], seconds=1.23456)
    text = report.to_json()
    assert "NaN" not in text and "Infinity" not in text
    parsed = json.loads(text)
    values = parsed["sections"]["metrics"]["values"]
    assert values == {"r2": None, "mape": None, "mae": 1.5}
    assert parsed["sections"]["metrics"]["list"] == [None]
    assert parsed["format"] == 1 and parsed["seconds"] == 1.235
    assert parsed["timings"] == {"metrics": 0.0}
    assert parsed["subject"] == {"run_id": "r1"}


def test_to_dict_keeps_the_sections_in_the_given_order() -> None:
    keys = list(reversed(SECTION_ORDER))
    report = Report(subject={}, sections=[Section(k, k.title()) for k in keys])
    assert list(report.to_dict()["sections"]) == keys  # the evaluator orders; the report keeps


def test_html_escapes_values_in_notes_tables_and_records() -> None:
    section = Section(
        "fairness",
        "Fairness <groups>",
        data={
            "groups": [{"group": "<b>men</b>", "rows": 3}, {"group": "a&b", "rows": 4}],
            "nested": {"sex": {"label": "<i>x</i>", "n": 2}},
            "deep": {"a": {"b": ["<u>", "v"], "c": 1}},
        },
        notes=["A note with <b>bold</b> markup."],
        flags=["<script>alert(1)</script>"],
        summary="<em>phrase</em>",
    )
    report = Report(subject={"run_name": "<run>"}, sections=[section])
    page = report.to_html()
    for raw in ("<b>men</b>", "<i>x</i>", "<u>", "<b>bold</b>", "<script", "<em>", "<run>"):
        assert raw not in page, raw
    for escaped in (
        "&lt;b&gt;men&lt;/b&gt;",
        "a&amp;b",
        "&lt;i&gt;x&lt;/i&gt;",
        "&lt;u&gt;",
        "A note with &lt;b&gt;bold&lt;/b&gt; markup.",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "Fairness &lt;groups&gt;",
        "&lt;run&gt;",
    ):
        assert escaped in page, escaped
    # the records list is a table with one header per key and one row per record
    assert "<th>Group</th><th>Rows</th>" in page  # field names as labels
    assert page.count("<tr>") >= 3


def test_html_is_one_self_contained_page_with_figures_inline() -> None:
    figure = '<svg xmlns="http://www.w3.org/2000/svg" width="10"><rect/></svg>'
    section = Section("metrics", "Metrics", figures={"A figure": figure}, summary="fine")
    page = Report(subject={"model": "m:1"}, sections=[section]).to_html()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert figure in page and "<p>A figure</p>" in page
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page)
    assert '<a href="#metrics">Metrics</a>' in page and 'id="metrics"' in page
    assert "Trust report · m:1" in page


def test_field_labels_are_words_and_data_keys_stay_as_they_are() -> None:
    assert field_label("log_loss") == "Log-loss"
    assert field_label("ece_ci") == "ECE 95% CI"
    assert field_label("val_log_loss") == "Validation log-loss"
    assert field_label("val_accuracy") == "Validation accuracy"
    assert field_label("cpu_seconds") == "CPU seconds"  # not listed: written in words
    assert field_label("run_id") == "Run ID"
    assert field_label("bill_length_mm", data=True) == "bill_length_mm"  # maybe a feature
    assert field_label("model.safetensors") == "model.safetensors"


def test_html_tables_read_as_a_report() -> None:
    """No snake_case field names, -0 written 0, intervals as [low, high] under "95% CI"."""
    section = Section(
        "calibration",
        "Calibration",
        data={
            "ece": 0.018,
            "ece_ci": [0.01, 0.03],
            "val_log_loss_calibrated": -0.0,
            "worse_after_scaling": ["log_loss"],
            "intervals": {"accuracy": {"value": 1.0, "low": 0.98944, "high": 1.0, "std": 0.0}},
            "per_class": {"long_class_name": {"precision_macro": 1.0}},
            "strongest": {
                "model": "logistic regression",
                "difference": 0.01,
                "paired": {"low": -0.02, "high": 0.03},
            },
            "kept": False,
        },
    )
    page = Report(subject={"run_id": "r"}, sections=[section]).to_html()
    headers = re.findall(r"<th>([^<]*)</th>", page)
    assert headers and not [
        h for h in headers if re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)+", h) and h != "long_class_name"
    ]  # a data key stays as it is
    assert "<th>long_class_name</th>" in page
    assert "<th>ECE 95% CI</th><td" in page and "[0.01, 0.03]" in page
    assert "-0<" not in page and ">0</td>" in page
    assert "<th>95% CI</th>" in page and "[0.9894, 1]" in page
    assert "<th>Paired 95% CI</th><td" in page and "[-0.02, 0.03]" in page
    assert "<th>Worse after temperature scaling</th><td>Log-loss</td>" in page
    assert "<td>no</td>" in page
    assert "±" not in page
