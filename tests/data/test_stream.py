"""Streaming a Parquet folder: one-pass statistics, hashed splits, bounded memory, end to end."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import danlu
from danlu.config import DataConfig
from danlu.data import load_source, prepare_data
from danlu.data._parquet import parquet_layout
from danlu.data._stream import read_ahead
from danlu.data._stream_stats import SPLITS, Moments, collect_stats, split_codes
from danlu.errors import DataError

STREAM = {"chunk_rows": 1500, "shuffle_buffer": 3000, "sample_rows": 2000}
KINDS = {"x0": "numeric", "x1": "numeric", "x2": "numeric", "x3": "numeric"}


def write_folder(folder: Path, sizes: tuple[int, ...] = (7000, 8000, 6000)) -> Path:
    """~21k rows in three files of row groups of 2000 rows; a binary target and some gaps."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, n in enumerate(sizes):
        x = rng.normal(size=(n, 4)) * [1.0, 2.0, 0.5, 3.0] + [0.0, 1.0, -2.0, 5.0]
        frame = pd.DataFrame({f"x{j}": x[:, j] for j in range(4)})
        frame.loc[rng.random(n) < 0.05, "x2"] = np.nan
        frame["colour"] = rng.choice(["red", "green", "blue"], n)
        frame["flag"] = rng.random(n) > 0.3
        score = (
            x[:, 0] + 0.5 * (x[:, 1] - 1) + (frame["colour"] == "red") + 0.3 * rng.normal(size=n)
        )
        frame["y"] = (score > 0.5).astype("int64")
        table = pa.Table.from_pandas(frame, preserve_index=False)
        pq.write_table(table, folder / f"part-{i:02d}.parquet", row_group_size=2000)
    (folder / "_SUCCESS").write_text("")  # ignored, as Spark writes it
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("stream") / "data")


def config(folder: Path, **stream: int) -> DataConfig:
    return DataConfig(source=str(folder), target="y", stream={**STREAM, **stream})


def all_rows(folder: Path) -> pd.DataFrame:
    return pd.concat(
        [pd.read_parquet(f) for f in sorted(folder.glob("*.parquet"))], ignore_index=True
    )


def recipe(folder: Path, stream: bool, epochs: int = 3) -> dict:
    data: dict = {"source": str(folder), "target": "y"}
    if stream:
        data["stream"] = STREAM
    return {
        "name": "stream",
        "data": data,
        "task": "classification",
        "model": {"type": "mlp", "hidden": [16]},
        "train": {"epochs": epochs, "batch_size": 128, "optimizer": {"lr": 3e-3}},
    }


# -- layout and errors ------------------------------------------------------------------------


def test_layout_numbers_rows_over_sorted_files(folder):
    layout = parquet_layout(str(folder))
    assert [f.name for f in layout.files] == [
        "part-00.parquet",
        "part-01.parquet",
        "part-02.parquet",
    ]
    assert layout.rows == 21_000 and len(layout.row_groups) == 4 + 4 + 3
    starts = [g.start for g in layout.row_groups]
    assert starts == sorted(starts) and starts[0] == 0 and layout.row_groups[4].start == 7000


def test_column_changing_type_between_files_names_both(tmp_path):
    pq.write_table(pa.table({"x": [1, 2], "y": [0, 1]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"x": ["1", "2"], "y": [0, 1]}), tmp_path / "b.parquet")
    with pytest.raises(DataError) as err:
        parquet_layout(str(tmp_path))
    message = str(err.value)
    for part in ("'x'", "int64", "string", "a.parquet", "b.parquet"):
        assert part in message
    with pytest.raises(DataError, match="changes type"):  # the in-memory path checks it too
        load_source(str(tmp_path), "y")


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        parquet_layout(str(tmp_path / "nope"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="holds no .parquet files"):
        parquet_layout(str(tmp_path))
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="broken.parquet"):
        parquet_layout(str(tmp_path))


def test_missing_columns_in_a_file_is_an_error(tmp_path):
    pq.write_table(pa.table({"x": [1.0], "z": [1.0], "y": [0]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"x": [1.0], "y": [0]}), tmp_path / "b.parquet")
    with pytest.raises(DataError, match="lacks 'z'"):
        parquet_layout(str(tmp_path))


def test_options_needing_all_rows_are_refused(folder):
    cfg = DataConfig(
        source=str(folder), target="y", stream=STREAM, prepare={"outliers": {"method": "zscore"}}
    )
    with pytest.raises(DataError, match="outliers"):
        prepare_data(cfg, "classification")
    cfg = DataConfig(
        source=str(folder), target="y", stream=STREAM, split={"by": "time", "column": "x0"}
    )
    with pytest.raises(DataError, match="split by time need every row"):
        prepare_data(cfg, "classification")
    cfg = DataConfig(
        source=str(folder), target="y", stream=STREAM, prepare={"missing_target": "drop"}
    )
    with pytest.raises(DataError, match="missing_target: drop"):
        prepare_data(cfg, "classification")


def test_label_set_targets_are_not_streamed(folder):
    multilabel = SimpleNamespace(name="multilabel", target_kind="label_sets")
    with pytest.raises(DataError, match="label-set target.*Remove data.stream"):
        prepare_data(config(folder), multilabel)
    listed = DataConfig(source=str(folder), target=["flag"], stream=STREAM)
    with pytest.raises(DataError, match="label-set target.*Remove data.stream"):
        prepare_data(listed, multilabel)
    with pytest.raises(DataError, match="label-set target.*Remove data.stream"):
        prepare_data(listed, "classification")


def test_folder_is_also_an_in_memory_source(folder):
    raw = load_source(str(folder), "y")
    assert len(raw.frame) == 21_000 and "colour" in raw.frame.columns


# -- splits -------------------------------------------------------------------------------------


def test_splits_are_disjoint_deterministic_and_near_the_fractions():
    codes = split_codes(0, 200_000, test=0.2, val=0.1, seed=3)
    assert set(np.unique(codes)) == {0, 1, 2}  # each row in exactly one split
    fractions = np.bincount(codes) / len(codes)
    assert fractions == pytest.approx([0.7, 0.1, 0.2], abs=0.005)
    # The same rows read in other chunks get the same splits; another seed moves them.
    pieces = np.concatenate(
        [split_codes(s, 50_000, test=0.2, val=0.1, seed=3) for s in range(0, 200_000, 50_000)]
    )
    assert np.array_equal(pieces, codes)
    assert not np.array_equal(split_codes(0, 200_000, test=0.2, val=0.1, seed=4), codes)


def test_streamed_splits_hold_the_hashed_rows(folder):
    data = prepare_data(config(folder), "classification")
    codes = split_codes(0, 21_000, test=0.2, val=0.1, seed=0)
    assert data.stream is not None
    assert data.stream.rows == {
        "train": int((codes == 0).sum()),
        "val": int((codes == 1).sum()),
        "test": int((codes == 2).sum()),
    }
    y = all_rows(folder)["y"].to_numpy()
    for split, code in (("val", 1), ("test", 2)):
        streamed = np.concatenate([yb for _, yb in data.stream.batches(split)])
        assert np.array_equal(streamed, y[codes == code])  # file order, right rows
    assert data.x_train.shape == (0, data.n_features) and data.report["streamed"]


# -- one-pass statistics ----------------------------------------------------------------------


def test_moments_merge_exactly():
    rng = np.random.default_rng(1)
    values = rng.normal(1e3, 5.0, 10_001)
    m = Moments()
    for part in np.array_split(values, 7):
        m.update(part)
    assert m.mean == pytest.approx(values.mean(), rel=1e-12)
    assert m.var() == pytest.approx(values.var(), rel=1e-9)
    assert (m.min, m.max) == (values.min(), values.max())


def test_one_pass_statistics_equal_pandas_on_the_training_rows(folder):
    layout = parquet_layout(str(folder))
    kinds = {**KINDS, "colour": "categorical", "flag": "numeric"}
    stats = collect_stats(
        layout, target="y", task="classification", kinds=kinds, test=0.2, val=0.1, seed=0,
        chunk_rows=1500, sample_rows=2000, drop_missing=False,
    )  # fmt: skip
    frame = all_rows(folder)
    train = frame[split_codes(0, len(frame), test=0.2, val=0.1, seed=0) == 0]
    assert stats.rows["train"] == len(train)
    for name in ("x0", "x1", "x2", "x3", "flag"):
        column, m = train[name].astype(float), stats.moments[name]
        assert m.count == column.notna().sum() and m.missing == column.isna().sum()
        assert m.mean == pytest.approx(column.mean(), rel=1e-9)
        assert math.sqrt(m.var(ddof=1)) == pytest.approx(column.std(), rel=1e-9)
        assert (m.min, m.max) == (column.min(), column.max())
    assert dict(stats.categories["colour"]) == train["colour"].value_counts().to_dict()
    assert dict(stats.train_labels) == train["y"].value_counts().to_dict()
    assert len(stats.sample) == 2000 and set(stats.sample.columns) >= {"x0", "colour", "y"}


def test_reservoir_sample_does_not_depend_on_chunking(folder):
    layout = parquet_layout(str(folder))
    args = dict(target="y", task="classification", kinds=KINDS, test=0.2, val=0.1, seed=0,
                sample_rows=500, drop_missing=False)  # fmt: skip
    a = collect_stats(layout, chunk_rows=700, **args).sample
    b = collect_stats(layout, chunk_rows=2000, **args).sample
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def test_exact_statistics_replace_the_sampled_ones(folder):
    data = prepare_data(config(folder), "classification")
    train = all_rows(folder)
    train = train[split_codes(0, len(train), test=0.2, val=0.1, seed=0) == 0]
    pre = data.preprocessor
    # standard scaling: mean and population std of the column once missing values are filled
    filled = train["x2"].fillna(pre.fill_["x2"])
    assert pre.center_["x2"] == pytest.approx(filled.mean(), rel=1e-9)
    assert pre.scale_["x2"] == pytest.approx(filled.std(ddof=0), rel=1e-9)
    assert pre.center_["x0"] == pytest.approx(train["x0"].mean(), rel=1e-9)
    assert pre.fill_["colour"] == train["colour"].mode().iloc[0]
    assert data.schema.classes == (0, 1)
    assert "median fill" in data.report["stream"]["sampled"]


def test_regression_target_moments_are_exact(folder):
    cfg = DataConfig(source=str(folder), target="x3", stream=STREAM, features={"y": "ignore"})
    data = prepare_data(cfg, "regression")
    frame = all_rows(folder)
    train = frame[split_codes(0, len(frame), test=0.2, val=0.1, seed=0) == 0]
    assert data.schema.target_mean == pytest.approx(train["x3"].mean(), rel=1e-9)
    assert data.schema.target_std == pytest.approx(train["x3"].std(ddof=0), rel=1e-9)


# -- the reader ---------------------------------------------------------------------------------


def test_reader_memory_is_bounded_and_epochs_reshuffle(folder):
    data = prepare_data(config(folder), "classification")
    stream = data.stream
    assert stream is not None
    seen = []
    for epoch in (1, 2):
        batches = list(stream.batches("train", 100, epoch=epoch))
        assert len(batches) == stream.num_batches("train", 100)
        assert all(len(x) == 100 for x, _ in batches[:-1])
        seen.append(np.concatenate([x for x, _ in batches]))
    assert stream.peak_rows <= STREAM["chunk_rows"] + STREAM["shuffle_buffer"]
    assert len(seen[0]) == stream.rows["train"] and seen[0].dtype == np.float32
    assert not np.array_equal(seen[0], seen[1])  # another order ...
    by_row = lambda a: a[np.lexsort(a.T)]  # noqa: E731
    assert np.array_equal(by_row(seen[0]), by_row(seen[1]))  # ... of the same rows
    again = np.concatenate([x for x, _ in stream.batches("train", 100, epoch=1)])
    assert np.array_equal(again, seen[0])  # the same epoch gives the same batches


def test_streamed_rows_equal_the_preprocessors_own_replay(folder):
    data = prepare_data(config(folder), "classification")
    assert data.stream is not None
    frame = all_rows(folder)
    val = frame[split_codes(0, len(frame), test=0.2, val=0.1, seed=0) == 1]
    streamed = np.concatenate([x for x, _ in data.stream.batches("val")])
    np.testing.assert_array_equal(streamed, data.preprocessor.transform(val))


def test_streamed_gaps_and_unseen_categories_encode_as_the_preprocessor_does(folder):
    data = prepare_data(config(folder), "classification")
    assert data.stream is not None
    frame = all_rows(folder).iloc[:6].drop(columns="y").reset_index(drop=True)
    frame = frame.astype({"colour": object, "flag": object})
    frame.loc[1, "colour"] = "purple"  # unseen
    frame.loc[2, ["x0", "x2", "colour", "flag"]] = [np.nan, np.nan, None, None]
    batch = pa.RecordBatch.from_pandas(frame.assign(y=0), preserve_index=False)
    expected = data.preprocessor.transform(frame)
    np.testing.assert_array_equal(data.stream._encode(batch), expected)
    strings = frame.assign(flag=frame["flag"].map({True: "yes", False: "no", None: None}), y=0)
    batch = pa.RecordBatch.from_pandas(strings, preserve_index=False)  # booleans as words
    np.testing.assert_array_equal(data.stream._encode(batch), expected)


def test_read_ahead_raises_the_readers_error_and_stops_early():
    def broken():
        yield 1
        raise DataError("bad chunk")

    with pytest.raises(DataError, match="bad chunk"):
        list(read_ahead(broken()))
    items = read_ahead(iter(range(10_000)), depth=2)
    assert next(items) == 0
    items.close()  # the reader thread stops instead of filling the queue forever


# -- end to end ---------------------------------------------------------------------------------


def test_streamed_run_trains_end_to_end_like_in_memory(folder, tmp_path):
    streamed = danlu.run(recipe(folder, stream=True), home=tmp_path)
    in_memory = danlu.run(recipe(folder, stream=False), home=tmp_path)
    assert streamed.data_report["streamed"] and streamed.data_report["rows"]["train"] > 14_000
    assert streamed.metrics["accuracy"] > 0.85
    assert abs(streamed.metrics["accuracy"] - in_memory.metrics["accuracy"]) < 0.03
    assert len(streamed.history) == 3 and "val_accuracy" in streamed.history[-1]
    # the saved preprocessing replays on raw rows like any model's
    rows = all_rows(folder).head(5)
    assert len(streamed.predict(rows)["prediction"]) == 5


def test_streamed_run_resumes_at_the_epoch_boundary(folder, tmp_path):
    first = danlu.run(recipe(folder, stream=True, epochs=1), home=tmp_path)
    resumed = danlu.run(recipe(folder, stream=True, epochs=2), home=tmp_path, resume=first.run_id)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    fresh = danlu.run(recipe(folder, stream=True, epochs=2), home=tmp_path)
    assert resumed.history[-1]["train_loss"] == pytest.approx(fresh.history[-1]["train_loss"])


def test_split_group_keeps_each_group_in_one_split_when_streaming(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 6000
    frame = pd.DataFrame(
        {"shop": rng.integers(0, 300, n), "x0": rng.normal(size=n), "y": rng.integers(0, 2, n)}
    )
    frame.loc[rng.random(n) < 0.01, "shop"] = None  # a row without a shop is its own group
    frame["shop"] = frame["shop"].astype("Int64")
    folder = tmp_path / "shops"
    folder.mkdir()
    for i in range(3):
        part = frame.iloc[i * 2000 : (i + 1) * 2000]
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), folder / f"{i}.parquet")
    cfg = DataConfig(
        source=str(folder), target="y", stream=STREAM, split={"group": "shop"},
        features={"shop": "ignore"},
    )  # fmt: skip
    data = prepare_data(cfg, "classification")
    codes = split_codes(0, n, test=0.2, val=0.1, seed=0, groups=pa.array(frame["shop"]))
    known = frame["shop"].notna().to_numpy()
    per_shop = pd.Series(codes[known]).groupby(frame["shop"][known].to_numpy()).nunique()
    assert (per_shop == 1).all() and len(per_shop) > 250  # every shop in one split
    assert data.stream.rows == {s: int((codes == i).sum()) for i, s in enumerate(SPLITS)}
    assert sum(len(y) for _, y in data.stream.batches("test")) == data.stream.rows["test"]
    assert [f.name for f in data.schema.features] == ["x0"]  # read to split by, not a feature
    assert data.report["split_by"] == "group"
