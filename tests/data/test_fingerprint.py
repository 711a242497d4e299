"""Content fingerprints of frames and arrays, and of prepared data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from danlu.config import DataConfig, SplitConfig
from danlu.data import fingerprint_arrays, fingerprint_frame, load_source, prepare_data
from danlu.errors import DataError


@pytest.fixture
def frame() -> pd.DataFrame:
    return load_source("builtin:iris").frame


def test_frame_fingerprint_depends_on_content_not_index(frame: pd.DataFrame) -> None:
    base = fingerprint_frame(frame)
    assert len(base) == 64 and base == fingerprint_frame(frame.copy())
    assert base == fingerprint_frame(frame.set_axis(range(1000, 1150)))
    changed = frame.copy()
    changed.iloc[3, 0] += 0.1
    assert fingerprint_frame(changed) != base


def test_frame_fingerprint_depends_on_names_order_and_dtypes(frame: pd.DataFrame) -> None:
    base = fingerprint_frame(frame)
    assert fingerprint_frame(frame.rename(columns={"target": "label"})) != base
    assert fingerprint_frame(frame[frame.columns[::-1]]) != base
    assert fingerprint_frame(frame.astype({"target": "float64"})) != base
    assert fingerprint_frame(frame.iloc[::-1]) != base


def test_unhashable_cells_are_a_data_error() -> None:
    with pytest.raises(DataError, match="cannot be hashed"):
        fingerprint_frame(pd.DataFrame({"a": [[1, 2], [3]]}))


def test_array_fingerprint_depends_on_bytes_dtype_shape_and_order() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = np.array([0, 1])
    base = fingerprint_arrays(x, y)
    assert base == fingerprint_arrays(x.copy(), y.copy())
    assert base != fingerprint_arrays(y, x)
    assert base != fingerprint_arrays(x.astype(np.float64), y)
    assert base != fingerprint_arrays(x.reshape(3, 2), y)
    assert base != fingerprint_arrays(x + 1, y)
    assert fingerprint_arrays(np.array(["a", 1], dtype=object)) != fingerprint_arrays(
        np.array(["a", 2], dtype=object)
    )


def test_same_seed_same_prepared_fingerprint_different_seed_different() -> None:
    def run(seed: int):
        return prepare_data(
            DataConfig(source="builtin:wine", split=SplitConfig(seed=seed)), "classification"
        )

    a, b, c = run(0), run(0), run(1)
    assert a.fingerprint == b.fingerprint and a.raw_fingerprint == b.raw_fingerprint
    assert np.array_equal(a.x_test, b.x_test)
    assert c.raw_fingerprint == a.raw_fingerprint  # same rows loaded
    assert c.fingerprint != a.fingerprint  # different split
    assert a.raw_fingerprint == fingerprint_frame(load_source("builtin:wine").frame)
