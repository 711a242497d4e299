"""Content fingerprints of data frames and arrays.

A fingerprint is a sha256 hex digest of the content, so two runs on the same data (and only those)
share it. Runs record the fingerprint of the raw data and of the prepared splits.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd

from danlu.errors import DataError

__all__ = ["fingerprint_arrays", "fingerprint_frame"]


def fingerprint_frame(frame: pd.DataFrame) -> str:
    """The sha256 hex digest of a frame's values, column names and dtypes (not its index).

    Args:
        frame: any data frame whose cells are hashable (numbers, strings, booleans, missing).

    Returns:
        A 64-character hex string.

    Raises:
        DataError: a cell cannot be hashed (e.g. a list inside a JSON Lines file).

    Example:
        >>> import pandas as pd
        >>> a = fingerprint_frame(pd.DataFrame({"x": [1, 2]}))
        >>> a == fingerprint_frame(pd.DataFrame({"x": [1, 2]}, index=[5, 6]))
        True
        >>> a == fingerprint_frame(pd.DataFrame({"x": [2, 1]}))
        False
    """
    digest = hashlib.sha256()
    header = [[str(name), str(dtype)] for name, dtype in frame.dtypes.items()]
    digest.update(json.dumps({"shape": list(frame.shape), "columns": header}).encode())
    try:
        rows = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    except TypeError as exc:
        raise DataError(
            f"Cannot fingerprint the data: a cell holds a value that cannot be hashed ({exc}). "
            "Columns must hold plain numbers, strings or booleans; flatten nested values first."
        ) from exc
    digest.update(np.ascontiguousarray(rows, dtype=np.uint64).tobytes())
    return digest.hexdigest()


def fingerprint_arrays(*arrays: np.ndarray) -> str:
    """The sha256 hex digest of several arrays: their order, dtypes, shapes and bytes.

    Example:
        >>> import numpy as np
        >>> x = np.arange(6, dtype="float32").reshape(2, 3)
        >>> fingerprint_arrays(x) == fingerprint_arrays(x.copy())
        True
        >>> fingerprint_arrays(x) == fingerprint_arrays(x.reshape(3, 2))
        False
    """
    digest = hashlib.sha256()
    for array in arrays:
        array = np.asarray(array)
        digest.update(json.dumps({"dtype": array.dtype.str, "shape": list(array.shape)}).encode())
        if array.dtype == object:
            # Object arrays hold pointers; hash each value's repr instead of the raw bytes.
            digest.update("\x1f".join(repr(v) for v in array.ravel()).encode())
        else:
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()
