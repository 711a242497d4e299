"""Tiny real data for the data-layer tests: sklearn's bundled sets and small files in tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest


def write_frame(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` in the format its suffix names."""
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif suffix in (".jsonl", ".json"):
        frame.to_json(path, orient="records", lines=True)
    else:  # pragma: no cover - test misuse
        raise ValueError(suffix)
    return path


@pytest.fixture
def write(tmp_path: Path) -> Callable[[pd.DataFrame, str], str]:
    """``write(frame, "name.csv")`` → the path as a string."""

    def _write(frame: pd.DataFrame, name: str) -> str:
        return str(write_frame(frame, tmp_path / name))

    return _write


@pytest.fixture
def mixed_frame() -> pd.DataFrame:
    """60 rows: numeric, categorical, yes/no and bool columns, a string target with 3 classes."""
    rng = np.random.default_rng(0)
    n = 60
    return pd.DataFrame(
        {
            "age": rng.integers(18, 80, n).astype(float),
            "colour": rng.choice(["red", "green", "blue"], n),
            "member": rng.choice(["yes", "no"], n),
            "flag": rng.random(n) > 0.5,
            "income": rng.normal(50_000, 8_000, n),
            "label": np.array(["cat", "dog", "fish"])[np.arange(n) % 3],
        }
    )


#: The labels of :func:`wine_tags`, sorted.
WINE_LABELS = ("cultivar_0", "dark", "strong")
#: A task object of a kind the data layer has no name for: only its target kind matters.
MULTILABEL = SimpleNamespace(name="multilabel", target_kind="label_sets")


@pytest.fixture
def wine_tags() -> pd.DataFrame:
    """sklearn's wine (178 rows, 13 measurements) with a label-set column ``tags`` instead of
    the cultivar: ``strong`` (alcohol > 13 %), ``dark`` (colour intensity > 5), ``cultivar_0``.
    Some rows hold no label, most hold one or two."""
    from sklearn.datasets import load_wine

    wine = load_wine(as_frame=True).frame
    flags = {
        "strong": wine["alcohol"] > 13.0,
        "dark": wine["color_intensity"] > 5.0,
        "cultivar_0": wine["target"] == 0,
    }
    tags = [[name for name, on in flags.items() if on.iloc[i]] for i in range(len(wine))]
    return wine.drop(columns=["target"]).assign(tags=tags)
