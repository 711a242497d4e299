"""The built-in time series (``builtin:airline`` ...): CSV files inside installed wheels.

sktime's and statsmodels' wheels carry classic forecasting series as plain CSV; they are read
from the installed package's folder (found with ``importlib.util.find_spec``, which locates a
package without running it), so neither package is imported.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from danlu.errors import MissingExtraError

__all__ = ["SERIES_SETS", "load_series_set"]

#: name → (package, path of the CSV inside it, time column, target column).
SERIES_SETS: dict[str, tuple[str, str, str, str]] = {
    "airline": ("sktime", "datasets/data/Airline/Airline.csv", "month", "passengers"),
    "shampoo_sales": ("sktime", "datasets/data/ShampooSales/ShampooSales.csv", "month", "sales"),
    "co2": ("statsmodels", "datasets/co2/co2.csv", "date", "co2"),
    "sunspots": ("statsmodels", "datasets/sunspots/sunspots.csv", "year", "sunactivity"),
    "macrodata": ("statsmodels", "datasets/macrodata/macrodata.csv", "quarter", "realgdp"),
}


def _package_file(package: str, relative: str) -> Path | None:
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / relative
        if path.is_file():
            return path
    return None


def load_series_set(name: str) -> pd.DataFrame:
    """One built-in series as a table: its time column first, then its values.

    Example:
        >>> frame = load_series_set("airline")
        >>> list(frame.columns), len(frame), str(frame["month"].iloc[0].date())
        (['month', 'passengers'], 144, '1949-01-01')
    """
    package, relative, time, target = SERIES_SETS[name]
    path = _package_file(package, relative)
    if path is None:
        raise MissingExtraError(
            f"builtin:{name} ships inside the {package} package, which is not installed. "
            f"Install it with: pip install 'danlu[datasets]' (or pip install {package})"
        )
    raw = pd.read_csv(path)
    if name in ("airline", "shampoo_sales"):  # "1949-01": monthly, the month's first day
        column, values = raw.columns
        frame = pd.DataFrame(
            {time: pd.to_datetime(raw[column], format="%Y-%m"), target: raw[values].astype(float)}
        )
    elif name == "co2":  # weekly (Saturdays) 1958-2001, 59 weeks missing
        frame = pd.DataFrame(
            {time: pd.to_datetime(raw["date"].astype(str), format="%Y%m%d"), target: raw["co2"]}
        )
    elif name == "sunspots":  # yearly 1700-2008: integer years
        frame = pd.DataFrame(
            {time: raw["YEAR"].astype("int64"), target: raw["SUNACTIVITY"].astype(float)}
        )
    else:  # macrodata: quarterly US macro series 1959-2009; realgdp by default, the rest too
        start = pd.PeriodIndex.from_fields(
            year=raw["year"].astype(int), quarter=raw["quarter"].astype(int), freq="Q"
        ).to_timestamp(how="start")
        frame = pd.concat(
            [pd.DataFrame({time: start}), raw.drop(columns=["year", "quarter"])], axis=1
        )
    return frame.reset_index(drop=True)
