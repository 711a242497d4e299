"""Interactions for ``task: recommendation``: checked, de-duplicated, split, and id-mapped.

An interactions table has one row per (user, item) event, with an optional rating and time.
:func:`prepare_interactions` turns it into a :class:`~danlu.data.PreparedData` whose rows are
the interactions:

- ``x_*``: the user's code, (n, 1) float32 — the position of the user's id among the training
  users (the schema's one categorical feature, ordinal-encoded, so the id map travels with the
  model in ``preprocessing.json`` and a served request names the user by id); an unseen user
  encodes as ``n_users``.
- ``y_*``: (n, 3) int64 rows ``[user code, item code, stage]``, the item's code its position
  among the training items (``schema.classes``: model output ``j`` scores item ``classes[j]``),
  the stage 0 / 1 / 2 for train / val / test (evaluation excludes what the user did in earlier
  stages from the ranking).

Splits: ``leave_last_out`` orders each user's interactions by time; the last one is a test row,
the one before a validation row (users with one interaction keep it for training, with two
test the last); ``random`` holds out shares of all interactions. Held-out interactions of users
or items the training rows never saw cannot be ranked: they are dropped and counted.

Example:
    >>> import pandas as pd
    >>> from danlu.config import DataConfig
    >>> from danlu.config._recommend import RecommendConfig
    >>> frame = pd.DataFrame({"u": [1, 1, 1, 2, 2, 2], "i": ["a", "b", "c", "b", "c", "a"],
    ...                       "t": [1, 2, 3, 1, 2, 3]})
    >>> data = prepare_interactions(DataConfig(source="x.parquet"),
    ...                             RecommendConfig(user="u", item="i", time="t"), frame=frame)
    >>> data.schema.classes, data.y_train.tolist(), data.y_test.tolist()
    (('a', 'b'), [[0, 0, 0], [1, 1, 0]], [[1, 0, 2]])
    >>> data.report["cold_dropped"]  # 'c' is no training item: user 1's test, user 2's val
    2
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from danlu.data._fingerprint import fingerprint_arrays, fingerprint_frame
from danlu.data._prepared import PreparedData
from danlu.data._preprocessor import Preprocessor
from danlu.data._schema import category_str
from danlu.data._split import RecipeDataError
from danlu.data._target import TaskRef
from danlu.data._values import preview
from danlu.errors import DataError
from danlu.logging import get_logger

if TYPE_CHECKING:
    from danlu.config import DataConfig
    from danlu.config._recommend import RecommendConfig

__all__ = ["STAGES", "entity_features", "interaction_ids", "prepare_interactions"]

log = get_logger(__name__)

#: the stage column of the prepared targets: 0 train, 1 validation, 2 test.
STAGES = {"train": 0, "val": 1, "test": 2}
_MULTI_TOKENS = 50  # a text feature's most frequent tokens (one-hot / multi-hot columns)


def _loc(key: str) -> tuple[str, ...]:
    return ("recommend", key)


def _load(config: DataConfig, recommend: RecommendConfig, frame: Any) -> pd.DataFrame:
    from danlu.data._sources import load_source

    try:
        raw = load_source(frame if frame is not None else config.source, recommend.item,
                          read=config.read)  # fmt: skip
    except DataError as exc:
        if str(exc).startswith("Target column"):  # the item column is absent
            raise RecipeDataError(
                _loc("item"), "the item column is not in the data", recommend.item,
                str(exc).split(". ", 1)[-1].replace("Set data.target", "Set recommend.item"),
            ) from None  # fmt: skip
        raise
    data = raw.frame
    columns = [str(c) for c in data.columns]
    named = [("user", recommend.user), ("time", recommend.time), ("rating", recommend.rating)]
    named += [("user_features", c) for c in recommend.user_features]
    named += [("item_features", c) for c in recommend.item_features]
    for key, column in named:
        if column is not None and column not in columns:
            from danlu.registry import did_you_mean

            raise RecipeDataError(
                _loc(key),
                f"column '{column}' is not in the data",
                column,
                f"{did_you_mean(column, columns)} Columns: {preview(columns)}.".strip(),
            )
    if recommend.user == recommend.item:
        raise RecipeDataError(
            _loc("item"), "the user and item columns are the same", recommend.item,
            "Name two different columns.",
        )  # fmt: skip
    return data


def interaction_ids(values: pd.Series | np.ndarray | list[Any]) -> np.ndarray:
    """Ids as the strings the id maps hold (``3.0`` and ``3`` are ``'3'``); missing: None.

    Example:
        >>> interaction_ids([3, 3.0, "a", None]).tolist()
        ['3', '3', 'a', None]
    """
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(list(values)):
        out[i] = None if v is None or (not isinstance(v, str) and pd.isna(v)) else category_str(v)
    return out


def _clean(data: pd.DataFrame, recommend: RecommendConfig, report: dict[str, Any]) -> pd.DataFrame:
    """Ids as strings, rows without a user or item dropped, min_rating applied, duplicates
    refused or aggregated."""
    frame = data.copy()
    frame["_user"] = interaction_ids(frame[recommend.user])
    frame["_item"] = interaction_ids(frame[recommend.item])
    frame["_order"] = np.arange(len(frame))
    missing = frame["_user"].isna() | frame["_item"].isna()
    report["missing_dropped"] = int(missing.sum())
    frame = frame[~missing]
    if recommend.time is not None:
        times = frame[recommend.time]
        if not pd.api.types.is_numeric_dtype(times):
            try:
                times = pd.to_datetime(times).astype("int64")
            except (ValueError, TypeError) as exc:
                raise RecipeDataError(
                    _loc("time"), f"the time column does not read as numbers or dates ({exc})",
                    recommend.time, "Point recommend.time at a numeric or date column.",
                ) from None  # fmt: skip
        frame["_time"] = pd.to_numeric(times, errors="coerce").astype("float64")
        no_time = frame["_time"].isna()
        if no_time.any():
            report["missing_dropped"] += int(no_time.sum())
            frame = frame[~no_time]
    else:
        frame["_time"] = frame["_order"].astype("float64")  # row order is the time order
    if recommend.min_rating is not None:
        rating = pd.to_numeric(frame[recommend.rating], errors="coerce")
        low = ~(rating >= recommend.min_rating)
        report["below_min_rating"] = int(low.sum())
        frame = frame[~low]
    dupes = frame.duplicated(["_user", "_item"], keep=False)
    if dupes.any():
        first = frame[dupes].iloc[0]
        pairs = int(frame[dupes].drop_duplicates(["_user", "_item"]).shape[0])
        if recommend.duplicates == "error":
            raise RecipeDataError(
                _loc("duplicates"),
                f"{int(dupes.sum())} rows repeat {pairs} (user, item) pair(s), e.g. user "
                f"{first['_user']!r} and item {first['_item']!r}; an interaction must be one row",
                "error",
                "Remove the repeated rows from the data, or set recommend.duplicates: aggregate "
                "(one interaction per pair: the latest time, the highest rating).",
            )
        agg: dict[str, Any] = {"_time": "max", "_order": "max"}
        if recommend.rating is not None:
            agg[recommend.rating] = "max"
        keep = frame.sort_values("_order").groupby(["_user", "_item"], sort=False).agg(agg)
        rest = frame.drop(columns=list(agg)).drop_duplicates(["_user", "_item"], keep="last")
        merged = rest.merge(keep.reset_index(), on=["_user", "_item"])
        report["duplicates_dropped"] = len(frame) - len(merged)
        frame = merged.sort_values("_order")
    if len(frame) == 0:
        raise DataError(
            "No interaction is left after dropping rows without a user, item or time"
            + (" and below recommend.min_rating" if recommend.min_rating is not None else "")
            + ". Check the columns and min_rating."
        )
    return frame.reset_index(drop=True)


def _stages(frame: pd.DataFrame, recommend: RecommendConfig, seed: int) -> np.ndarray:
    """The stage (0 / 1 / 2) of each interaction."""
    stage = np.zeros(len(frame), dtype=np.int64)
    if recommend.split == "random":
        rng = np.random.default_rng(seed)
        draw = rng.random(len(frame))
        stage[draw < recommend.test] = 2
        stage[(draw >= recommend.test) & (draw < recommend.test + recommend.val)] = 1
        return stage
    order = np.lexsort((frame["_order"].to_numpy(), frame["_time"].to_numpy(),
                        frame["_user"].to_numpy().astype(str)))  # fmt: skip
    users = frame["_user"].to_numpy()[order]
    # position from the end within each user's time-ordered run
    ends = np.r_[users[1:] != users[:-1], True]
    last = np.flatnonzero(ends)
    starts = np.r_[0, last[:-1] + 1]
    counts = last - starts + 1
    from_end = np.repeat(last, counts) - np.arange(len(users))
    sizes = np.repeat(counts, counts)
    ordered = np.zeros(len(users), dtype=np.int64)
    ordered[(from_end == 0) & (sizes >= 2)] = 2
    ordered[(from_end == 1) & (sizes >= 3)] = 1
    stage[order] = ordered
    return stage


def _fit_preprocessor(
    config: DataConfig, recommend: RecommendConfig, users: list[str], items: list[str]
) -> Preprocessor:
    """The one-feature preprocessor: the user id, ordinal among the training users (the id map
    of users); ``schema.classes`` is the id map of items."""
    from danlu.config import PrepareConfig

    prepare = PrepareConfig(
        missing="drop", scale="none", encode="ordinal", max_categories=max(len(users), 1)
    )
    fit = pd.DataFrame({recommend.user: users, recommend.item: 0.0})
    pre = Preprocessor(
        prepare,
        target=recommend.item,
        task=TaskRef("recommendation", "values"),
        overrides={recommend.user: "categorical"},
    ).fit(fit)
    pre._schema = replace(pre.schema_, classes=tuple(items), target_mean=None, target_std=None)
    return pre


def prepare_interactions(
    config: DataConfig,
    recommend: RecommendConfig,
    *,
    frame: pd.DataFrame | None = None,
) -> PreparedData:
    """The interactions of ``config.source`` (or ``frame``) as prepared rows (module docstring).

    Raises:
        RecipeDataError: a column the ``recommend`` block names is absent, or duplicate (user,
            item) pairs with ``duplicates: error`` — naming the recipe key.
        DataError: no interaction left, or no training interaction.
    """
    data = _load(config, recommend, frame)
    report: dict[str, Any] = {"rows_loaded": len(data), "split": recommend.split}
    clean = _clean(data, recommend, report)
    stage = _stages(clean, recommend, config.split.seed)
    train = clean[stage == 0]
    if len(train) == 0:
        raise DataError(
            "No interaction is left for training: every user has too few interactions. Give "
            "users with at least three interactions, or use recommend.split: random."
        )
    users = sorted(set(train["_user"]))
    items = sorted(set(train["_item"]))
    pre = _fit_preprocessor(config, recommend, users, items)
    user_code = {u: i for i, u in enumerate(pre.schema_.features[0].categories)}
    item_code = {v: j for j, v in enumerate(items)}
    u = np.asarray([user_code.get(v, -1) for v in clean["_user"]], dtype=np.int64)
    it = np.asarray([item_code.get(v, -1) for v in clean["_item"]], dtype=np.int64)
    cold = (u < 0) | (it < 0)
    report["cold_dropped"] = int(cold.sum())  # held-out rows of unseen users / items
    arrays: list[np.ndarray] = []
    rows: dict[str, int] = {}
    frames: dict[str, pd.DataFrame] = {}
    for name, s in STAGES.items():
        keep = (stage == s) & ~cold
        x = u[keep].astype(np.float32).reshape(-1, 1)  # (n, 1) the user's code
        y = np.stack([u[keep], it[keep], np.full(int(keep.sum()), s)], axis=1)  # (n, 3)
        arrays += [x, y.astype(np.int64)]
        rows[name] = int(keep.sum())
        frames[name] = clean.loc[keep, [recommend.user]].reset_index(drop=True)
    report.update(
        rows=rows,
        users=len(users),
        items=len(items),
        interactions=int(len(clean)),
        density=float(rows["train"] / max(len(users) * len(items), 1)),
    )
    x_train, y_train, x_val, y_val, x_test, y_test = arrays
    log.info(
        "Interactions: %d users, %d items; %d train, %d val, %d test rows (%s split).",
        len(users), len(items), rows["train"], rows["val"], rows["test"], recommend.split,
    )  # fmt: skip
    return PreparedData(
        x_train,
        y_train,
        x_val,
        y_val,
        x_test,
        y_test,
        schema=pre.schema_,
        preprocessor=pre,
        raw_fingerprint=fingerprint_frame(data),
        fingerprint=fingerprint_arrays(*arrays),
        report=report,
        test_frame=frames["test"],
    )


def entity_features(
    config: DataConfig,
    recommend: RecommendConfig,
    ids: tuple[Any, ...] | list[Any],
    side: str,
    *,
    frame: pd.DataFrame | None = None,
) -> tuple[np.ndarray, list[str]]:
    """The ``recommend.<side>_features`` of each id in ``ids`` (the id map, in order), as a
    float32 matrix (len(ids), d) and its column names; an id's first row gives its values.

    Numbers are standardized (missing: 0); text is one-hot over its most frequent values, and
    ``'a|b'`` strings multi-hot over their most frequent tokens. No columns: a (len(ids), 0)
    matrix.

    Example:
        >>> # matrix, names = entity_features(config, recommend, items, "item")
    """
    columns = recommend.user_features if side == "user" else recommend.item_features
    if not columns:
        return np.zeros((len(ids), 0), dtype=np.float32), []
    data = _load(config, recommend, frame)
    key = recommend.user if side == "user" else recommend.item
    data = data.assign(_id=interaction_ids(data[key])).drop_duplicates("_id")
    table = data.set_index("_id").reindex([str(i) for i in ids])
    parts: list[np.ndarray] = []
    names: list[str] = []
    for column in columns:
        values = table[column]
        if pd.api.types.is_numeric_dtype(values):
            v = values.to_numpy(dtype=np.float64)
            mean, std = np.nanmean(v) if np.isfinite(v).any() else 0.0, np.nanstd(v) or 1.0
            parts.append(np.nan_to_num((v - mean) / std).reshape(-1, 1))
            names.append(column)
            continue
        tokens = [
            [] if not isinstance(c, str) else [t.strip() for t in c.split("|") if t.strip()]
            for c in values.tolist()
        ]
        counts = pd.Series([t for row in tokens for t in row], dtype=object).value_counts()
        vocab = list(counts.index[:_MULTI_TOKENS])
        index = {t: j for j, t in enumerate(vocab)}
        hot = np.zeros((len(tokens), len(vocab)))
        for i, row in enumerate(tokens):
            for t in row:
                if t in index:
                    hot[i, index[t]] = 1.0
        parts.append(hot)
        names += [f"{column}={t}" for t in vocab]
    return np.concatenate(parts, axis=1).astype(np.float32), names
