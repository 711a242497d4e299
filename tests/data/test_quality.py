from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from danlu.config import DataConfig
from danlu.data import (
    PSI_MAJOR,
    infer_task,
    inspect_data,
    load_source,
    prepare_data,
    quality_html,
    quality_report,
    split_indices,
)
from danlu.errors import DataError

from .conftest import MULTILABEL, WINE_LABELS


def _column(report: dict, name: str) -> dict:
    return next(c for c in report["details"] if c["name"] == name)


@pytest.fixture
def frame() -> pd.DataFrame:
    """200 rows, a binary target with a 3:1 balance, and one column of each problem."""
    rng = np.random.default_rng(0)
    n = 200
    y = np.array(["no", "no", "no", "yes"] * (n // 4))
    return pd.DataFrame(
        {
            "signal": rng.normal(0, 1, n),
            "constant": np.full(n, 7.0),
            "nearly": np.r_[np.zeros(n - 1), 1.0],
            "colour": rng.choice(["red", "green", "blue"], n),
            "gaps": np.where(np.arange(n) % 2 == 0, np.nan, rng.normal(0, 1, n)),
            "copy": y,
            "label": y,
        }
    )


def test_rows_columns_kinds_missing_and_distinct(frame: pd.DataFrame) -> None:
    report = quality_report(frame, "label", "classification")
    assert report["rows"] == 200 and report["columns"] == 7 and report["features"] == 6
    assert [c["name"] for c in report["details"]] == list(frame.columns[:-1])
    assert _column(report, "signal")["kind"] == "numeric"
    assert _column(report, "colour")["kind"] == "categorical"
    gaps = _column(report, "gaps")
    assert gaps["missing"] == 100 and gaps["missing_percent"] == 50.0 and "missing" in gaps["flags"]
    assert _column(report, "colour")["distinct"] == 3
    assert sum(t["count"] for t in _column(report, "colour")["top"]) == 200
    assert any("'gaps' misses 50.0%" in w for w in report["warnings"])
    json.dumps(report, allow_nan=False)  # plain JSON types, no NaN


def test_numeric_statistics_and_outliers() -> None:
    x = np.r_[np.tile([1.0, 2.0, 3.0, 4.0], 10), 100.0]
    df = pd.DataFrame({"x": x, "y": np.arange(41) % 2})
    info = _column(quality_report(df, "y", "classification"), "x")
    assert info["min"] == 1.0 and info["max"] == 100.0
    assert info["mean"] == pytest.approx(x.mean(), rel=1e-5)
    assert info["std"] == pytest.approx(x.std(), rel=1e-5)
    assert info["outliers"] == {"zscore": 1, "iqr": 1}


def test_constant_and_near_constant_columns_are_flagged(frame: pd.DataFrame) -> None:
    report = quality_report(frame, "label", "classification")
    assert (
        _column(report, "constant")["constant"]
        and "constant" in _column(report, "constant")["flags"]
    )
    nearly = _column(report, "nearly")
    assert nearly["near_constant"] and not nearly["constant"]
    assert not _column(report, "signal")["constant"]
    assert any("'constant'" in w and "single value" in w for w in report["warnings"])
    assert any("'nearly'" in w and "99%" in w for w in report["warnings"])


def test_class_balance_and_imbalance_ratio(frame: pd.DataFrame) -> None:
    target = quality_report(frame, "label", "classification")["target"]
    assert target["classes"] == [
        {"label": "no", "count": 150, "percent": 75.0},
        {"label": "yes", "count": 50, "percent": 25.0},
    ]
    assert target["imbalance_ratio"] == 3.0
    skewed = frame.assign(label=["a"] * 190 + ["b"] * 10).drop(columns="copy")
    warnings = quality_report(skewed, "label", "classification")["warnings"]
    assert any("imbalanced" in w and "19x" in w for w in warnings)


def test_regression_target_summary() -> None:
    raw = load_source("builtin:diabetes")
    target = quality_report(raw.frame, "target", "regression")["target"]
    y = raw.frame["target"]
    assert target["min"] == y.min() and target["max"] == y.max()
    assert target["median"] == y.median() and target["mean"] == pytest.approx(y.mean(), rel=1e-5)
    assert "classes" not in target


def test_a_copy_of_the_target_is_leakage(frame: pd.DataFrame) -> None:
    report = quality_report(frame, "label", "classification")
    assert report["leakage"] == [{"column": "copy", "reason": "it is identical to the target"}]
    assert "leakage" in _column(report, "copy")["flags"]
    assert any("leakage" in w and "'copy'" in w for w in report["warnings"])
    assert any("leakage" in w and "'copy'" in w for w in report["alerts"])


def test_alerts_are_logged_as_warnings_when_a_run_prepares_leaky_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from sklearn.datasets import load_breast_cancer

    df = load_breast_cancer(as_frame=True).frame
    df["diagnosis_code"] = df["target"].map({0: "M", 1: "B"})  # the label, spelled differently
    path = tmp_path / "leaky.csv"
    df.to_csv(path, index=False)
    with caplog.at_level(logging.WARNING, logger="danlu"):
        prepared = prepare_data(DataConfig(source=str(path)), "classification")
    assert any("'diagnosis_code'" in a for a in prepared.quality["alerts"])
    assert any(
        r.levelno == logging.WARNING and "Possible target leakage" in r.message
        for r in caplog.records
    )


def test_a_feature_that_perfectly_predicts_the_target_is_leakage() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    df = pd.DataFrame(
        {
            "code": np.where(y == 1, "A", "B"),  # a relabelled target: deterministic mapping
            "score": y * 10 + rng.normal(0, 1, 300),  # one threshold separates the classes
            "noise": rng.normal(0, 1, 300),
            "y": y,
        }
    )
    leaks = {leak["column"] for leak in quality_report(df, "y", "classification")["leakage"]}
    assert leaks == {"code", "score"}


def test_no_leakage_claimed_on_tiny_data_or_ids() -> None:
    tiny = pd.DataFrame({"x": [0.1, 0.2, 0.3, 0.9, 1.0, 1.1], "y": [0, 0, 0, 1, 1, 1]})
    assert quality_report(tiny, "y", "classification")["leakage"] == []
    # rows sorted by class: an id would "separate" the classes, but it is an id, not a leak
    ids = pd.DataFrame({"id": np.arange(100), "x": np.random.default_rng(0).normal(size=100)})
    ids["y"] = np.repeat([0, 1], 50)
    report = quality_report(ids, "y", "classification")
    assert report["leakage"] == [] and _column(report, "id")["id_like"]
    assert any("looks like an id" in w for w in report["warnings"])


def test_real_data_sets_raise_no_false_leakage() -> None:
    for name, task in [("breast_cancer", "classification"), ("wine", "classification"),
                       ("diabetes", "regression"), ("digits", "classification")]:  # fmt: skip
        raw = load_source(f"builtin:{name}")
        assert quality_report(raw.frame, "target", task)["leakage"] == [], name


def test_duplicates_and_rows_shared_by_train_and_test() -> None:
    base = pd.DataFrame({"x": np.arange(20.0), "y": np.arange(20) % 2})
    df = pd.concat([base, base.iloc[:4]], ignore_index=True)  # rows 20-23 repeat rows 0-3
    train = np.arange(20)
    test = np.arange(20, 24)
    report = quality_report(df, "y", "classification", train_idx=train, test_idx=test)
    assert report["duplicates"] == {"rows": 4, "percent": round(400 / 24, 2), "identifying": ["x"]}
    assert report["split"]["shared_rows"] == 4 and report["split"]["shared_percent"] == 100.0
    assert any("4 test row(s)" in w for w in report["warnings"])
    clean = quality_report(
        df, "y", "classification", train_idx=np.arange(4, 24), test_idx=np.arange(4)
    )
    assert clean["split"]["shared_rows"] == 4  # the copies sit in train now: still shared
    apart = quality_report(
        base, "y", "classification", train_idx=np.arange(16), test_idx=np.arange(16, 20)
    )
    assert apart["split"]["shared_rows"] == 0


def test_a_shifted_feature_has_high_psi_and_ks() -> None:
    rng = np.random.default_rng(0)
    n = 1000
    df = pd.DataFrame(
        {
            "steady": rng.normal(0, 1, n),
            "shifted": np.r_[rng.normal(0, 1, 800), rng.normal(2, 1, 200)],
            "city": np.r_[rng.choice(["a", "b"], 800), rng.choice(["b", "c"], 200)],
            "y": rng.integers(0, 2, n),
        }
    )
    train, test = np.arange(800), np.arange(800, n)
    report = quality_report(df, "y", "classification", train_idx=train, test_idx=test)
    steady, shifted = _column(report, "steady")["shift"], _column(report, "shifted")["shift"]
    assert shifted["psi"] > 1.0 and shifted["ks"] > 0.5 and shifted["ks_pvalue"] < 1e-10
    assert shifted["shifted"] and "shift" in _column(report, "shifted")["flags"]
    assert steady["psi"] < 0.1 and steady["ks"] < 0.15 and not steady["shifted"]
    city = _column(report, "city")["shift"]
    assert city["psi"] >= PSI_MAJOR and city["ks"] is None and city["shifted"]
    assert any("'shifted'" in w and "PSI" in w for w in report["warnings"])


def test_small_splits_are_not_called_shifted() -> None:
    raw = load_source("builtin:wine")
    y = raw.frame["target"].to_numpy()
    train, _, test = split_indices(y, test=0.2, val=0.1, stratify=True, seed=0)
    report = quality_report(raw.frame, "target", "classification", train_idx=train, test_idx=test)
    assert not any(c["shift"]["shifted"] for c in report["details"])


def test_html_is_an_escaped_section() -> None:
    df = pd.DataFrame({"<b>x</b>": np.arange(40.0), "y": ["<i>a</i>", "b"] * 20})
    page = quality_html(quality_report(df, "y", "classification"))
    assert page.startswith('<section class="danlu-quality">') and page.endswith("</section>")
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page and "&lt;i&gt;a" in page
    assert "http" not in page  # no external assets
    full = quality_html(quality_report(df, "y", "classification"), page=True)
    assert full.startswith("<!DOCTYPE html>") and "<section" in full


def test_inspect_data_sees_the_splits_prepare_data_uses() -> None:
    config = DataConfig(source="builtin:iris", split={"test": 0.3, "val": 0.1, "seed": 3})
    report = inspect_data(config, "classification")
    prepared = prepare_data(config, "classification")
    assert report["cleaning"]["duplicates_dropped"] == prepared.report["duplicates_dropped"] == 0
    rows = prepared.report["rows"]
    assert (report["split"]["train"], report["split"]["val"], report["split"]["test"]) == (
        rows["train"],
        rows["val"],
        rows["test"],
    )
    assert prepared.quality["split"] == {
        k: v for k, v in report["split"].items() if k not in ("val", "stratified", "by")
    }
    assert prepared.quality["details"] == report["details"]
    assert report["source"] == "builtin:iris" and report["task"] == "classification"


def test_inspect_data_infers_the_task() -> None:
    assert inspect_data(DataConfig(source="builtin:diabetes"))["task"] == "regression"
    assert inspect_data(DataConfig(source="builtin:wine"))["task"] == "classification"
    assert infer_task(pd.Series(["a", "b"])) == "classification"
    assert infer_task(pd.Series(np.arange(100))) == "regression"


def test_inspect_data_reports_failed_checks_without_raising() -> None:
    config = DataConfig(source="builtin:iris", checks={"min_rows": 1000})
    report = inspect_data(config)
    assert report["checks"]["passed"] is False
    assert report["checks"]["violations"][0]["check"] == "min_rows"
    assert report["warnings"][0].startswith("Data check failed: data, min_rows")


def test_prepare_data_logs_the_warnings_and_keeps_the_report(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="danlu"):
        prepared = prepare_data(DataConfig(source="builtin:digits"), "classification")
    notes = [
        r for r in caplog.records if "Data quality: 3 column(s) hold a single value" in r.message
    ]
    assert [r.levelno for r in notes] == [logging.INFO]  # a note about the data, not an alarm
    assert prepared.quality["alerts"] == []
    assert prepared.quality["source"] == "builtin:digits"
    assert prepared.quality["split"]["test"] == prepared.report["rows"]["test"]
    assert prepared.quality["warnings"] and json.dumps(prepared.quality, allow_nan=False)


def test_a_label_set_target_is_described_per_label(wine_tags: pd.DataFrame) -> None:
    frame = wine_tags.assign(tags=wine_tags["tags"].map("|".join))
    frame.loc[:2, "tags"] = "rare"  # a label of 3 rows: too few to learn or test
    report = quality_report(frame, "tags", MULTILABEL)
    target = report["target"]
    assert (target["task"], target["target_kind"]) == ("multilabel", "label_sets")
    sets = [("rare",)] * 3 + [tuple(t) for t in wine_tags["tags"][3:]]
    counts = {k["label"]: k["count"] for k in target["labels"]}
    assert counts == {label: sum(label in s for s in sets) for label in (*WINE_LABELS, "rare")}
    assert [k["count"] for k in target["labels"]] == sorted(counts.values(), reverse=True)
    assert target["no_label_rows"] == sum(not s for s in sets) > 0
    assert target["labels_per_row"] == pytest.approx(np.mean([len(s) for s in sets]), abs=1e-3)
    assert "classes" not in target and "imbalance_ratio" not in target
    assert any("fewer than 5 rows: 'rare'" in w for w in report["warnings"])
    page = quality_html(report)
    assert "Rows with no label:" in page and "<th>label</th>" in page
    json.dumps(report)


def test_inspect_data_reports_a_list_target_as_label_sets(
    wine_tags: pd.DataFrame, tmp_path
) -> None:
    frame = wine_tags.drop(columns=["tags"]).assign(
        **{label: [int(label in t) for t in wine_tags["tags"]] for label in WINE_LABELS}
    )
    frame.to_csv(tmp_path / "wine.csv", index=False)
    config = DataConfig(source=str(tmp_path / "wine.csv"), target=list(WINE_LABELS))
    report = inspect_data(config, MULTILABEL)
    assert (report["task"], report["target_kind"]) == ("multilabel", "label_sets")
    assert report["features"] == 13 and report["split"]["stratified"] is False
    assert [k["label"] for k in report["target"]["labels"]] == ["strong", "dark", "cultivar_0"]
    with pytest.raises(DataError, match="name the task"):
        inspect_data(config)


def test_duplicate_wording_tells_legitimate_repeats_from_accidental_copies() -> None:
    titanic = load_source("builtin:titanic")
    report = quality_report(titanic.frame, titanic.target, "classification")
    note = next(w for w in report["warnings"] if "repeat an earlier row" in w)
    assert report["duplicates"]["identifying"] == [] and "probably different records" in note
    assert "legitimate" in note and "Remove the copies" not in note
    rng = np.random.default_rng(0)
    people = pd.DataFrame({"name": [f"p{i}" for i in range(40)], "y": rng.integers(0, 2, 40)})
    doubled = pd.concat([people, people.iloc[:5]], ignore_index=True)  # five records loaded twice
    copies = quality_report(doubled, "y", "classification")
    note = next(w for w in copies["warnings"] if "repeat an earlier row" in w)
    assert copies["duplicates"]["identifying"] == ["name"] and "accidental copies" in note
    assert "data.prepare.dedupe: true" in note
