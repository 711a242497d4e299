"""Sources: sklearn's bundled data sets and .csv / .parquet / .jsonl / .json / .npz files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from danlu.config import ReadConfig
from danlu.data import BuiltinDataset, RawData, list_builtin, load_source
from danlu.errors import DataError, NotFoundError

from .conftest import write_frame


def test_list_builtin_names_the_bundled_sets() -> None:
    names = [d.name for d in list_builtin()]
    assert names == [
        "airline", "basic_motions", "bbc_news", "breast_cancer", "co2", "diabetes", "diamonds",
        "digits", "gunpoint", "iris", "italy_power_demand", "macrodata", "penguins",
        "shampoo_sales", "sunspots", "titanic", "wine", "yahoo", "yeast",
    ]  # fmt: skip
    assert all(isinstance(d, BuiltinDataset) for d in list_builtin())


@pytest.mark.parametrize("dataset", list_builtin(), ids=lambda d: d.name)
def test_builtin_loads_with_the_advertised_shape(dataset: BuiltinDataset) -> None:
    raw = load_source(f"builtin:{dataset.name}")
    assert isinstance(raw, RawData)
    if dataset.label_columns:  # a multi-label set: checked below
        assert raw.frame.shape == (dataset.rows, dataset.features + 1)
        assert raw.frame[raw.target].explode().nunique() == dataset.classes
        return
    assert raw.target == dataset.target
    # the time-series classification sets add the archive's split; a series adds its time column
    split = int(dataset.package == "sktime" and dataset.task == "classification")
    assert raw.frame.shape == (dataset.rows, dataset.features + 1 + split)
    assert raw.image_shape == dataset.image_shape
    y = raw.frame[dataset.target]
    if dataset.task in ("classification", "anomaly"):  # anomaly: a 0/1 label
        if dataset.package == "scikit-learn":
            assert pd.api.types.is_integer_dtype(y.dtype)
        assert y.nunique() == dataset.classes
    else:
        assert dataset.classes is None
        assert pd.api.types.is_numeric_dtype(y.dtype) and y.nunique() > min(100, dataset.rows // 2)


def test_digits_is_an_8x8_image_and_diabetes_is_unscaled() -> None:
    digits = {d.name: d for d in list_builtin()}["digits"]
    assert digits.image_shape == (1, 8, 8) and digits.features == 64
    age = load_source("builtin:diabetes").frame["age"]
    assert age.min() >= 18 and age.max() <= 80  # years, not sklearn's scaled values


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl", ".json"])
def test_tabular_files_load(suffix: str, mixed_frame: pd.DataFrame, write) -> None:
    path = write(mixed_frame, f"rows{suffix}")
    raw = load_source(path, target="label")
    assert raw.target == "label" and raw.source == path
    assert list(raw.frame.columns) == list(mixed_frame.columns)
    assert len(raw.frame) == 60
    np.testing.assert_allclose(raw.frame["income"], mixed_frame["income"])
    assert raw.frame["colour"].tolist() == mixed_frame["colour"].tolist()


@pytest.mark.parametrize("keys", [("X", "y"), ("x", "y")])
def test_npz_arrays_become_x_columns_and_target(tmp_path: Path, keys: tuple[str, str]) -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    path = tmp_path / "arrays.npz"
    np.savez(path, **{keys[0]: x, keys[1]: np.array([0, 1, 0, 1])})
    raw = load_source(str(path))
    assert list(raw.frame.columns) == ["x0", "x1", "x2", "target"]
    np.testing.assert_array_equal(raw.frame[["x0", "x1", "x2"]].to_numpy(), x)
    assert raw.frame["target"].tolist() == [0, 1, 0, 1]
    assert raw.image_shape is None


def test_npz_image_arrays_are_flattened_with_their_shape(tmp_path: Path) -> None:
    path = tmp_path / "images.npz"
    np.savez(path, X=np.zeros((5, 1, 4, 4)), y=np.arange(5))
    raw = load_source(path)
    assert raw.frame.shape == (5, 17) and raw.image_shape == (1, 4, 4)


def test_unknown_builtin_lists_valid_names_and_nearest() -> None:
    with pytest.raises(NotFoundError) as info:
        load_source("builtin:digit")
    message = str(info.value)
    assert "Did you mean 'digits'?" in message
    assert all(d.name in message for d in list_builtin())


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_source(str(tmp_path / "nope.csv"))


def test_directory_is_a_data_error(tmp_path: Path) -> None:
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    with pytest.raises(DataError, match="not a file"):
        load_source(str(folder))


def test_unsupported_extension_lists_supported_ones(tmp_path: Path) -> None:
    path = tmp_path / "rows.xls"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DataError) as info:
        load_source(str(path))
    assert "'.xls'" in str(info.value)
    for suffix in (".csv", ".tsv", ".parquet", ".jsonl", ".xlsx", ".npz"):
        assert suffix in str(info.value)


def test_nul_byte_in_path_is_a_data_error() -> None:
    with pytest.raises(DataError, match="NUL"):
        load_source("rows\x00.csv")


def test_unreadable_parquet_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match="Cannot read data file .*broken.parquet"):
        load_source(str(path))


def test_json_that_is_not_json_lines_says_so(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    path.write_text('{"a": [1, 2], "target": [0,')
    with pytest.raises(DataError, match="JSON Lines"):
        load_source(str(path))


def test_target_absent_names_columns_and_nearest(mixed_frame: pd.DataFrame, write) -> None:
    path = write(mixed_frame, "rows.csv")
    with pytest.raises(DataError) as info:
        load_source(path, target="lable")
    message = str(info.value)
    assert "'lable'" in message and "Did you mean 'label'?" in message and "'income'" in message


def test_file_without_target_column_asks_for_data_target(write) -> None:
    path = write(pd.DataFrame({"a": [1, 2], "b": [3, 4]}), "rows.csv")
    with pytest.raises(DataError, match="data.target"):
        load_source(path)


def test_header_only_file_has_zero_rows(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("a,b,target\n")
    with pytest.raises(DataError, match="zero rows"):
        load_source(str(path))


def test_empty_file_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "nothing.csv"
    path.write_text("")
    with pytest.raises(DataError, match="empty"):
        load_source(str(path))


def test_npz_without_x_and_y_lists_its_arrays(tmp_path: Path) -> None:
    path = tmp_path / "arrays.npz"
    np.savez(path, features=np.zeros((3, 2)), labels=np.zeros(3))
    with pytest.raises(DataError) as info:
        load_source(str(path))
    assert "'features'" in str(info.value) and "'labels'" in str(info.value)


def test_npz_with_mismatched_lengths_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "arrays.npz"
    np.savez(path, X=np.zeros((3, 2)), y=np.zeros(4))
    with pytest.raises(DataError, match=r"\(4,\)"):
        load_source(str(path))


def test_parquet_written_by_helper_round_trips_dtypes(tmp_path: Path) -> None:
    frame = pd.DataFrame({"n": [1, 2, 3], "flag": [True, False, True], "target": [0.5, 1.5, 2.5]})
    raw = load_source(write_frame(frame, tmp_path / "rows.parquet"))
    assert raw.frame["flag"].dtype == bool and raw.frame["n"].dtype == np.int64


def _label_columns(wine_tags: pd.DataFrame) -> pd.DataFrame:
    """wine_tags with its label sets spread over one 0/1 column per label (``dark`` as bool)."""
    frame = wine_tags.drop(columns=["tags"])
    for label in ("strong", "dark", "cultivar_0"):
        frame[label] = [int(label in tags) for tags in wine_tags["tags"]]
    return frame.assign(dark=frame["dark"].astype(bool))


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_a_list_target_packs_0_1_columns_into_one_label_set_column(
    wine_tags: pd.DataFrame, tmp_path: Path, suffix: str
) -> None:
    path = write_frame(_label_columns(wine_tags), tmp_path / f"wine{suffix}")
    raw = load_source(path, ["strong", "dark", "cultivar_0"])
    assert raw.target == "labels" and raw.label_columns == ("strong", "dark", "cultivar_0")
    assert list(raw.frame.columns) == [*wine_tags.columns[:-1], "labels"]  # labels not features
    expected = [tuple(sorted(tags)) for tags in wine_tags["tags"]]
    assert raw.frame["labels"].tolist() == expected


def test_the_packed_column_takes_the_first_free_name(tmp_path: Path) -> None:
    frame = pd.DataFrame({"labels": [1.0, 2.0], "labels_1": ["a", "b"], "x": [1, 0]})
    raw = load_source(write_frame(frame, tmp_path / "t.csv"), ["x"])
    assert raw.target == "labels_2" and raw.frame["labels_2"].tolist() == [("x",), ()]


def test_a_listed_column_must_hold_0_or_1(wine_tags: pd.DataFrame, tmp_path: Path) -> None:
    frame = _label_columns(wine_tags)
    frame.loc[5, "strong"] = 2
    path = write_frame(frame, tmp_path / "wine.csv")
    with pytest.raises(DataError, match="column 'strong'.*holds 2 at row 6"):
        load_source(path, ["strong", "dark"])
    with pytest.raises(DataError, match="'alcohol'.*holds 14.23 at row 1"):
        load_source(path, ["alcohol"])
    with pytest.raises(DataError, match="'drak'.*Did you mean 'dark'"):
        load_source(path, ["drak"])
    with pytest.raises(DataError, match="more than once"):
        load_source(path, ["dark", "dark"])


def test_builtin_yeast_is_the_real_mulan_multilabel_set():
    """river's bundled MULAN yeast: 2417 genes, 103 features, 14 classes packed into one
    label-set column (4.237 labels per gene on average, as published)."""
    raw = load_source("builtin:yeast")
    assert raw.target == "labels"
    assert raw.label_columns == tuple(f"Class{i}" for i in range(1, 15))
    assert raw.frame.shape == (2417, 104)
    sizes = raw.frame["labels"].map(len)
    assert round(float(sizes.mean()), 3) == 4.237
    assert sizes.min() == 1 and sizes.max() == 11
    assert "yeast" in [d.name for d in list_builtin()]


# -- data.read: separators, encodings, JSON layouts, Excel, DataFrames ---------------------------
def test_a_semicolon_csv_is_sniffed_and_a_tsv_is_read_with_tabs(
    mixed_frame: pd.DataFrame, tmp_path: Path
) -> None:
    mixed_frame.to_csv(tmp_path / "rows.csv", sep=";", index=False)
    mixed_frame.to_csv(tmp_path / "rows.tsv", sep="\t", index=False)
    for name in ("rows.csv", "rows.tsv"):
        raw = load_source(tmp_path / name, target="label")
        assert list(raw.frame.columns) == list(mixed_frame.columns), name
        np.testing.assert_allclose(raw.frame["income"], mixed_frame["income"])
        assert raw.frame["colour"].tolist() == mixed_frame["colour"].tolist()


def test_a_wrong_separator_says_which_one_the_header_holds(
    mixed_frame: pd.DataFrame, tmp_path: Path
) -> None:
    path = tmp_path / "rows.csv"
    mixed_frame.to_csv(path, sep=";", index=False)
    with pytest.raises(DataError, match="single column.*delimited by ';'.*data.read.sep: ';'"):
        load_source(path, target="label", read=ReadConfig(sep=","))
    assert load_source(path, target="label", read=ReadConfig(sep=";")).frame.shape == (60, 6)


def test_an_encoding_error_names_data_read_encoding(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("city,target\nZürich,1\nGenève,0\n".encode("latin-1"))
    with pytest.raises(DataError, match="data.read.encoding"):
        load_source(path)
    raw = load_source(path, read=ReadConfig(encoding="latin-1"))
    assert raw.frame["city"].tolist() == ["Zürich", "Genève"]


def test_json_arrays_are_records_and_other_json_is_lines(
    mixed_frame: pd.DataFrame, tmp_path: Path
) -> None:
    mixed_frame.to_json(tmp_path / "array.json", orient="records")
    (tmp_path / "spaced.json").write_text("  \n" + mixed_frame.to_json(orient="records"))
    mixed_frame.to_json(tmp_path / "lines.json", orient="records", lines=True)
    for name in ("array.json", "spaced.json", "lines.json"):
        raw = load_source(tmp_path / name, target="label")
        assert raw.frame.shape == (60, 6), name
        np.testing.assert_allclose(raw.frame["income"], mixed_frame["income"])
    with pytest.raises(DataError, match="data.read.json: lines"):
        load_source(tmp_path / "lines.json", target="label", read=ReadConfig(json="records"))


def test_xlsx_round_trip_with_sheets(mixed_frame: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "book.xlsx"
    with pd.ExcelWriter(path, engine="openpyxl") as book:
        mixed_frame.head(5).to_excel(book, sheet_name="notes", index=False)
        mixed_frame.to_excel(book, sheet_name="rows", index=False)
    first = load_source(path, target="label")
    assert len(first.frame) == 5  # the first sheet by default
    raw = load_source(path, target="label", read=ReadConfig(sheet="rows"))
    assert raw.frame.shape == (60, 6) and raw.frame["flag"].tolist() == mixed_frame["flag"].tolist()
    np.testing.assert_allclose(raw.frame["income"], mixed_frame["income"])
    assert len(load_source(path, target="label", read=ReadConfig(sheet=1)).frame) == 60
    with pytest.raises(DataError, match="no sheet 'row'.*Did you mean 'rows'"):
        load_source(path, target="label", read=ReadConfig(sheet="row"))


def test_a_dataframe_is_a_source_and_a_recorded_dataframe_source_is_not_a_file() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [0, 1, 0]})
    raw = load_source(frame, target="y")
    assert raw.source == "DataFrame" and raw.frame.equals(frame)
    raw.frame.loc[0, "x"] = 99.0
    assert frame.loc[0, "x"] == 1.0  # copied, never changed in place
    with pytest.raises(DataError, match="DataFrame that was passed to danlu.run"):
        load_source("dataframe:0123456789ab", target="y")


def test_titanic_keeps_every_passenger_and_drops_r_row_names() -> None:
    raw = load_source("builtin:titanic")
    assert raw.target == "survived" and "rownames" not in raw.frame.columns
    assert len(raw.frame) == 1309 and set(raw.frame["survived"]) == {"died", "survived"}
    assert raw.frame.duplicated().sum() > 500  # different passengers who share every value
