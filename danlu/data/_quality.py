"""The data quality report: what a dataset holds and what in it needs attention before training.

:func:`quality_report` describes the rows (size, duplicates), every column (kind, missing values,
distinct values, ranges, outliers, top categories, constant columns), the target (class balance,
per-label frequency for label sets, or distribution), leakage suspects (a feature that copies or perfectly predicts the target, test rows
that also appear in training) and the shift of each feature between the train and test splits
(PSI and the Kolmogorov-Smirnov test). A text column gets a ``text`` section (lengths, empty and
duplicate texts, truncation, vocabulary coverage of the test split by the training split's
tokens) and its shift is that of its token lengths. It ends with ``warnings``: one sentence per
problem.

Everything is plain JSON types, so the report is logged with every run (``data_quality.json``) and
embedded in reports (:func:`~danlu.data.quality_html`). It is vectorised: digits (1,797 x 65) takes a few
hundredths of a second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from danlu.config import PrepareConfig
from danlu.data._datetime import column_format, fit_parts, parse_dates
from danlu.data._psi import PSI_MAJOR
from danlu.data._quality_stats import (
    as_codes,
    as_labels,
    as_numbers,
    categorical_shift,
    leak_reason,
    num,
    numeric_shift,
    pct,
    sample_rows,
)
from danlu.data._schema import FeatureSchema, category_str, infer_kinds
from danlu.data._target import TaskLike, TaskRef, resolve_task, target_codec
from danlu.data._text import TextEncoder, text_stats, text_warnings
from danlu.data._values import preview

__all__ = ["quality_report"]

NEAR_CONSTANT = 0.99  # one value in at least this share of rows
MISSING_WARN = 0.2  # warn when a column misses more than this share of values
OUTLIER_WARN = 0.02  # warn when more than this share of a column's values are z-score outliers
IMBALANCE_WARN = 3.0  # warn when the largest class has this many times the rows of the smallest
RARE_LABEL_ROWS = 5  # label sets: warn about a label held by fewer rows than this
TOP_CATEGORIES = 5
#: flags of columns read otherwise than their dtype suggests (see danlu.data._detect)
ATTENTION_FLAGS = ("dirty-numeric", "dirty-datetime", "free-text", "frequency-encoded")
DEFAULT_MAX_CATEGORIES = int(PrepareConfig.model_fields["max_categories"].default)
IDENTIFYING = 0.5  # a column with distinct values in at least this share of rows identifies rows


def _safe_duplicates(frame: pd.DataFrame) -> np.ndarray | None:
    try:
        return frame.duplicated().to_numpy()
    except TypeError:  # unhashable cells (lists read from JSON Lines)
        return None


def _row_hashes(frame: pd.DataFrame) -> np.ndarray | None:
    try:
        return pd.util.hash_pandas_object(frame, index=False).to_numpy()
    except TypeError:
        return None


# -- per column ---------------------------------------------------------------------------------
def _numeric_stats(values: np.ndarray) -> dict[str, Any]:
    present = values[~np.isnan(values)]
    if present.size == 0:
        return {"min": None, "max": None, "mean": None, "std": None, "outliers": None}
    mean, std = float(present.mean()), float(present.std())
    q1, q3 = np.percentile(present, [25, 75])
    spread = float(q3 - q1)
    zscore = int((np.abs(present - mean) > 3.0 * std).sum()) if std > 0 else 0
    iqr = (
        int(((present < q1 - 1.5 * spread) | (present > q3 + 1.5 * spread)).sum()) if spread else 0
    )
    return {
        "min": num(present.min()),
        "max": num(present.max()),
        "mean": num(mean),
        "std": num(std),
        "outliers": {"zscore": zscore, "iqr": iqr},
    }


def _is_id_like(column: pd.Series, values: np.ndarray | None, distinct: int, rows: int) -> bool:
    """Every row holds its own integer or text value: an id, not a measurement."""
    if rows < 20 or distinct < rows:
        return False
    if values is None:  # categorical / text
        return True
    present = values[~np.isnan(values)]
    return bool(present.size == rows and np.all(present == np.floor(present)))


def _shift(
    column: pd.Series, kind: str, values: np.ndarray | None, train: np.ndarray, test: np.ndarray
) -> dict[str, Any] | None:
    """The train/test shift of a feature: numbers (dates as days) binned, categories counted."""
    if values is None and kind == "datetime":
        values = parse_dates(column, column_format(column))[0]
    if values is not None:
        return numeric_shift(values[train], values[test])
    labels = as_labels(column)
    return categorical_shift(labels[train], labels[test])


def describe_kind(
    info: dict[str, Any],
    column: pd.Series,
    kind: str,
    schema: FeatureSchema | None,
    max_categories: int,
) -> None:
    """Add to a column's entry how it is encoded (``encoding``), why its kind was chosen
    (``note``, from a :class:`~danlu.data._detect.ColumnKind`) and the flag that goes with it."""
    feature = (
        None
        if schema is None
        else next((f for f in schema.features if f.name == info["name"]), None)
    )
    note, flag = getattr(kind, "note", ""), getattr(kind, "flag", "")
    if kind == "datetime":
        if feature is not None and feature.parts:
            parts = feature.parts
        else:  # not fitted yet: the parts the dates of the whole column call for
            parts = fit_parts(parse_dates(column, column_format(column))[0])[0]
        info["encoding"] = "calendar features: " + ", ".join(parts)
    elif kind == "categorical" and info["feature"]:
        many = info["distinct"] > max_categories
        if feature is not None:
            many = feature.frequency_encoded
        if many:
            info["encoding"] = "frequency"
            flag = flag or "frequency-encoded"
            note = note or (
                f"Column '{info['name']}' has {info['distinct']} distinct values, more than "
                f"data.prepare.max_categories ({max_categories}): it is frequency-encoded (one "
                "column: the share of training rows holding its value) instead of one-hot "
                f"encoded into {info['distinct']} columns. Raise max_categories to one-hot "
                f"encode it, or set data.features: {{{info['name']}: ignore}} if it is an id."
            )
    if note:
        info["note"] = note
    if flag:
        info["flags"].append(flag)


def _column(
    name: str,
    column: pd.Series,
    kind: str,
    is_feature: bool,
    values: np.ndarray | None,
) -> dict[str, Any]:
    rows = len(column)
    missing = int(column.isna().sum())
    counts = column.value_counts(dropna=False)
    distinct = int(column.nunique(dropna=True))
    top_share = float(counts.iloc[0]) / rows if rows and len(counts) else 0.0
    info: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "feature": is_feature,
        "dtype": str(column.dtype),
        "missing": missing,
        "missing_percent": pct(missing, rows),
        "distinct": distinct,
        "top_share": round(top_share, 4),
        "constant": len(counts) <= 1,
        "near_constant": len(counts) > 1 and top_share >= NEAR_CONSTANT,
        "id_like": _is_id_like(column, values, distinct, rows),
    }
    if values is not None:
        info.update(_numeric_stats(values))
    else:
        top = counts[counts.index.notna()].head(TOP_CATEGORIES)
        info["top"] = [
            {"value": category_str(v), "count": int(c), "percent": pct(int(c), rows)}
            for v, c in top.items()
        ]
    info["shift"] = None
    info["flags"] = []
    return info


# -- target -------------------------------------------------------------------------------------
def _label_sets_target(column: pd.Series, info: dict[str, Any]) -> dict[str, Any]:
    """Per-label frequency of a label-set target (cells are tuples), and rows with no label."""
    rows = len(column)
    sizes = np.fromiter((len(labels) for labels in column), np.int64, rows)
    counts = pd.Series([str(label) for labels in column for label in labels]).value_counts()
    counts = counts.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
    info["labels"] = [
        {"label": str(k), "count": int(c), "percent": pct(int(c), rows)} for k, c in counts.items()
    ]
    no_label = int((sizes == 0).sum())
    info["no_label_rows"] = no_label
    info["no_label_percent"] = pct(no_label, rows)
    info["labels_per_row"] = num(sizes.mean(), 4) if rows else None
    return info


def _target(column: pd.Series, task: TaskRef) -> dict[str, Any]:
    rows = len(column)
    info: dict[str, Any] = {
        "name": str(column.name),
        "task": task.name,
        "target_kind": task.target_kind,
        "missing": int(column.isna().sum()),
    }
    if task.target_kind == "label_sets":
        return _label_sets_target(column, info)
    if task.target_kind == "classes":
        counts = pd.Series(as_labels(column)).value_counts(dropna=True)
        info["classes"] = [
            {"label": str(k), "count": int(c), "percent": pct(int(c), rows)}
            for k, c in counts.items()
        ]
        info["imbalance_ratio"] = (
            num(counts.iloc[0] / counts.iloc[-1], 4) if len(counts) and counts.iloc[-1] else None
        )
        return info
    values = as_numbers(column)
    present = values[~np.isnan(values)]
    if present.size == 0:
        return info
    series = pd.Series(present)
    q1, median, q3 = np.percentile(present, [25, 50, 75])
    info.update(
        {
            "min": num(present.min()),
            "max": num(present.max()),
            "mean": num(present.mean()),
            "std": num(present.std()),
            "q1": num(q1),
            "median": num(median),
            "q3": num(q3),
            "skew": num(series.skew(), 4) if present.size > 2 else None,
        }
    )
    return info


# -- warnings -----------------------------------------------------------------------------------
def _names(columns: Sequence[Mapping[str, Any]]) -> list[str]:
    return [str(c["name"]) for c in columns]


def _warnings(report: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(notes, alerts): alerts threaten the model's validity (leakage, test rows seen in
    training, train/test shift); notes describe the data (constant columns, outliers ...)."""
    found: list[str] = []
    alerts: list[str] = []
    rows = report["rows"]
    dup = report["duplicates"]
    if dup["rows"]:
        found.append(_duplicates_note(dup))
    columns = report["details"]
    constant = [c for c in columns if c["constant"]]
    if constant:
        found.append(
            f"{len(constant)} column(s) hold a single value and carry no information: "
            f"{preview(_names(constant), 10)}. Set data.features: {{NAME: ignore}} to drop them."
        )
    near = [c for c in columns if c["near_constant"]]
    if near:
        found.append(
            f"{len(near)} column(s) hold one value in at least {NEAR_CONSTANT:.0%} of rows: "
            f"{preview(_names(near), 10)}. They carry little information."
        )
    for c in columns:
        if c["missing"] and c["missing"] > MISSING_WARN * rows:
            found.append(
                f"Column '{c['name']}' misses {c['missing_percent']}% of its values; check the "
                "source, or choose data.prepare.missing deliberately."
            )
        if c["id_like"] and c["feature"]:
            found.append(
                f"Column '{c['name']}' holds a different value in every row and looks like an id; "
                f"set data.features: {{{c['name']}: ignore}} unless it carries signal."
            )
    outlying = [
        c for c in columns if c.get("outliers") and c["outliers"]["zscore"] > OUTLIER_WARN * rows
    ]
    if outlying:
        found.append(
            f"{len(outlying)} column(s) have more than {OUTLIER_WARN:.0%} of values beyond 3 "
            f"standard deviations: {preview(_names(outlying), 10)}. Consider "
            "data.prepare.outliers or scale: robust."
        )
    found.extend(c["note"] for c in columns if c.get("note") and _needs_attention(c))
    target = report["target"]
    ratio = target.get("imbalance_ratio")
    if ratio is not None and ratio >= IMBALANCE_WARN:
        classes = target["classes"]
        found.append(
            f"The classes are imbalanced: '{classes[0]['label']}' has {ratio:g}x the rows of "
            f"'{classes[-1]['label']}' ({classes[-1]['count']} rows). Consider data.imbalance "
            "(class_weight, oversample, smote) and per-class metrics."
        )
    rare = [k for k in target.get("labels", []) if k["count"] < RARE_LABEL_ROWS]
    if rare:
        found.append(
            f"{len(rare)} label(s) are held by fewer than {RARE_LABEL_ROWS} rows: "
            f"{preview([k['label'] for k in rare], 10)}. Too few rows to learn or test them; add "
            "rows or merge rare labels."
        )
    skew = target.get("skew")
    if skew is not None and abs(skew) > 2:
        found.append(
            f"The target is strongly skewed (skewness {skew:g}); consider a log transform or a "
            "robust metric."
        )
    for leak in report["leakage"]:
        alerts.append(
            f"Possible target leakage: feature '{leak['column']}' - {leak['reason']}. A feature "
            f"the model will not have at prediction time must be dropped: data.features: "
            f"{{{leak['column']}: ignore}}."
        )
    split = report["split"]
    if split and split["shared_rows"]:
        alerts.append(
            f"{split['shared_rows']} test row(s) ({split['shared_percent']}% of the test split) "
            "have the same features as a training row, so the test score is optimistic if they "
            "are copies of one record. danlu's random split keeps such rows in one split; with "
            "data.split.group or by: time, check that copies belong to one group or time."
        )
    shifted = [c for c in columns if c["shift"] and c["shift"]["shifted"]]
    if shifted:
        shown = ", ".join(f"'{c['name']}' (PSI {c['shift']['psi']:g})" for c in shifted[:10]) + (
            f" and {len(shifted) - 10} more" if len(shifted) > 10 else ""
        )
        alerts.append(
            f"{len(shifted)} feature(s) are distributed differently in train and test "
            f"(PSI >= {PSI_MAJOR}, a major shift): {shown}. Check how rows were collected, or change "
            "data.split.seed."
        )
    return found, alerts


def _duplicates_note(dup: Mapping[str, Any]) -> str:
    """The sentence on exact duplicate rows: probably legitimate, or probably copies."""
    head = f"{dup['rows']} rows ({dup['percent']}%) repeat an earlier row exactly"
    kept = (
        "they are kept, each set of copies in one split, so none crosses train and test "
        "(data.prepare.dedupe: true drops them; off by default)"
    )
    if dup["identifying"]:
        return (
            f"{head}, although {preview(dup['identifying'], 5)} nearly identify a row (distinct "
            f"in at least {IDENTIFYING:.0%} of rows): probably accidental copies, e.g. records "
            f"loaded twice. {kept[0].upper()}{kept[1:]}; set data.prepare.dedupe: true if they "
            "are copies."
        )
    return (
        f"{head}. No column identifies a row (none is distinct in {IDENTIFYING:.0%} of rows), so "
        f"these are probably different records sharing every value, which is legitimate: {kept}."
    )


def _text_warnings(columns: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """(notes, alerts) of the text columns: empty, repeated and truncated texts; vocabulary."""
    notes: list[str] = []
    alerts: list[str] = []
    for column in columns:
        if column.get("text") is not None:
            found, alarming = text_warnings(column["text"])
            notes.extend(found)
            alerts.extend(alarming)
    return notes, alerts


def _needs_attention(column: Mapping[str, Any]) -> bool:
    """A column whose kind or encoding was chosen for the user, who should know (not plain
    dates, which are listed with their encoding only)."""
    return any(f in column["flags"] for f in ATTENTION_FLAGS)


# -- the report ---------------------------------------------------------------------------------
def quality_report(
    frame: pd.DataFrame,
    target: str,
    task: str | TaskLike,
    *,
    train_idx: Sequence[int] | np.ndarray | None = None,
    test_idx: Sequence[int] | np.ndarray | None = None,
    features: Sequence[str] | None = None,
    kinds: Mapping[str, str] | None = None,
    schema: FeatureSchema | None = None,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
    text_encoders: Mapping[str, TextEncoder] | None = None,
) -> dict[str, Any]:
    """Describe ``frame`` and list what needs attention before training on it.

    Args:
        frame: the rows, target included.
        target: the target column.
        task: ``classification``, ``regression``, or a task object with ``name`` and
            ``target_kind``; the kind decides how the target is described (class balance,
            per-label frequency and rows with no label, or distribution) and checked for leakage.
        train_idx: row positions of the training split (with ``test_idx``: leakage across the
            splits and shift between them).
        test_idx: row positions of the test split.
        features: the columns the model uses (default: every column whose kind is not ignore).
        kinds: column -> kind (default: inferred with ``infer_kinds``). A kind inferred with
            a caveat (numbers with junk values, dates, free text) carries its note, which the
            report repeats with the rows it names (rows of the data ``infer_kinds`` read).
        schema: the fitted schema, which says how each column was encoded (frequency-encoded
            categories, the calendar features of dates); without it the encoding is predicted
            from ``max_categories`` and the distinct values of ``frame``.
        max_categories: ``data.prepare.max_categories``, when ``schema`` is not given.
        text_encoders: text column → its fitted tokenizer (``Preprocessor.text_``): token
            lengths, truncation and vocabulary coverage (without one: character lengths only).

    Returns:
        Plain JSON types: ``rows``, ``columns``, ``duplicates``, ``details`` (one entry per
        column), ``target``, ``leakage``, ``split`` (None without indices) and ``warnings``.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"x": range(40), "c": [1] * 40, "y": [0, 1] * 20})
        >>> r = quality_report(df, "y", "classification")
        >>> r["rows"], [c["name"] for c in r["details"] if c["constant"]]
        (40, ['c'])
    """
    rows = len(frame)
    ref = resolve_task(task)
    kinds = dict(kinds) if kinds is not None else infer_kinds(frame, target, ref)
    columns = [str(c) for c in frame.columns if str(c) != target]
    if features is None:
        features = [c for c in columns if kinds.get(c, "ignore") != "ignore"]
    feature_set = set(features)

    duplicated = _safe_duplicates(frame)
    n_dup = int(duplicated.sum()) if duplicated is not None else 0
    target_column = target_codec(ref.target_kind).normalize(frame[target], target)
    target_codes = as_codes(as_labels(target_column))

    split: dict[str, Any] | None = None
    train = test = None
    if train_idx is not None and test_idx is not None:
        train, test = np.asarray(train_idx, dtype=np.int64), np.asarray(test_idx, dtype=np.int64)
        split = {"train": len(train), "test": len(test), "shared_rows": 0, "shared_percent": 0.0}
        hashes = _row_hashes(frame[list(features)]) if features else None
        if hashes is not None and len(test):
            shared = int(np.isin(hashes[test], hashes[train]).sum())
            split.update(shared_rows=shared, shared_percent=pct(shared, len(test)))

    # Estimates run on a seeded sample of large data (exact below STAT_SAMPLE rows).
    leak_rows = sample_rows(np.arange(len(frame)))
    sampled = len(leak_rows) < len(frame)
    target_sample = target_column.iloc[leak_rows] if sampled else target_column
    codes_sample = target_codes[leak_rows] if sampled else target_codes
    if train is not None and test is not None:
        shift_train, shift_test = sample_rows(train, seed=1), sample_rows(test, seed=2)
    details: list[dict[str, Any]] = []
    leakage: list[dict[str, str]] = []
    for name in columns:
        column = frame[name]
        kind = kinds.get(name, "ignore")
        values = as_numbers(column) if kind == "numeric" else None
        info = _column(name, column, kind, name in feature_set, values)
        describe_kind(info, column, kind, schema, max_categories)
        if kind == "text" and name in feature_set:  # distinct texts are expected, not an id
            info["id_like"] = False
            info.pop("top", None)  # whole texts (up to megabytes) are no summary
            info["text"] = text_stats(
                column, (text_encoders or {}).get(name), train_idx=train, test_idx=test
            )
        if name in feature_set:
            reason = leak_reason(
                info,
                column.iloc[leak_rows] if sampled else column,
                values[leak_rows] if sampled and values is not None else values,
                target_sample,
                codes_sample,
                ref.target_kind,
            )
            if reason is not None:
                leakage.append({"column": name, "reason": reason})
                info["flags"].append("leakage")
            if kind == "text":  # the shift of the texts' lengths (tokens, else characters)
                info["shift"] = info["text"].get("length_shift")
            elif train is not None and test is not None and len(train) and len(test):
                info["shift"] = _shift(column, kind, values, shift_train, shift_test)
                if info["shift"] and info["shift"]["shifted"]:
                    info["flags"].append("shift")
        for flag in ("constant", "near_constant", "id_like"):
            if info[flag]:
                info["flags"].append(flag.replace("_", "-"))
        if info["missing"] > MISSING_WARN * rows:
            info["flags"].append("missing")
        details.append(info)

    report: dict[str, Any] = {
        "rows": rows,
        # rows behind the leakage and shift estimates (all rows up to STAT_SAMPLE)
        "estimate_rows": len(leak_rows),
        "columns": frame.shape[1],
        "features": len(features),
        "target": _target(target_column, ref),
        "duplicates": {
            "rows": n_dup,
            "percent": pct(n_dup, rows),
            # columns that nearly identify a row: copies despite them look accidental
            "identifying": [
                c["name"] for c in details if rows and c["distinct"] >= IDENTIFYING * rows
            ],
        },
        "details": details,
        "leakage": leakage,
        "split": split,
    }
    notes, alerts = _warnings(report)
    text_notes, text_alerts = _text_warnings(details)
    notes, alerts = [*notes, *text_notes], [*alerts, *text_alerts]
    report["warnings"] = [*notes, *alerts]
    report["alerts"] = alerts
    return report
