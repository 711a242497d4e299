"""The ``anomaly:`` block of ``task: anomaly`` recipes: what counts as normal, what the model
learns from, and how the flag's threshold is chosen::

    task: anomaly
    data: {source: builtin:digits, target: target}
    anomaly:
      anomalous: [0]          # label values of anomalous rows (or give normal: [...] instead)
      train_on: normal        # normal: train on normal rows only | all: every training row
      threshold: {method: contamination, rate: 0.05}   # or {method: f1}
      k: 50                   # precision@k (default: the number of anomalous test rows)

``data.target`` is the label column. Give ``normal`` (every other value is anomalous) or
``anomalous`` (every other value is normal), or both when the column holds only those values.
The threshold on the anomaly score is chosen on the validation split once training ends:
``contamination`` flags the top ``rate`` of the validation rows the model trains on (the normal
ones under ``train_on: normal``: ``rate`` is then the share of false alarms, as scikit-learn's
``contamination`` for a detector fitted on normal rows), ``f1`` maximises F1 on the validation
rows (it needs anomalous rows among them).

Unlabelled data: set ``data.target: null`` (or leave it out with no label values in the
``anomaly:`` block) and every row is unlabelled, counted as normal. The recipe then names the
internal constant label column :data:`UNLABELLED_TARGET` (its one value
:data:`UNLABELLED_VALUE`), which the data layer adds to the rows, so ``danlu predict``, ``danlu
evaluate RUN --data FILE`` and the server take files with no label column. A built-in's own
label column is dropped then (never a feature). The ``anomaly:`` block may be left out
(``train_on`` defaults to ``all``); it must not list label values, and ``threshold.method: f1``
is refused (there are no labels to choose it on)::

    task: anomaly
    data: {source: features.csv}          # no label column
    anomaly: {threshold: {rate: 0.05}}    # optional
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["UNLABELLED_TARGET", "UNLABELLED_VALUE", "AnomalyConfig", "ThresholdConfig"]

Label = str | int | float | bool
DEFAULT_RATE = 0.05
#: The constant label column of unlabelled anomaly data (``data.target`` left out or null).
UNLABELLED_TARGET = "_unlabelled"
#: Its one value: every unlabelled row counts as normal.
UNLABELLED_VALUE = "normal"


class ThresholdConfig(BaseModel):
    """How the score threshold that flags a row is chosen, on the validation split."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    method: Literal["contamination", "f1"] = Field(
        "contamination",
        description="contamination: flag the top `rate` of the scores of the validation rows "
        "the model trains on (the normal ones under train_on: normal), as scikit-learn's "
        "contamination; f1: the threshold of the best F1 on the validation rows (needs "
        "anomalous rows there).",
    )
    rate: Annotated[float, Field(gt=0.0, lt=0.5)] | None = Field(
        None,
        description="contamination: the share of those rows flagged (the expected share of "
        "anomalies in them; of false alarms under train_on: normal), above 0 and below 0.5; "
        "default 0.05.",
    )

    @model_validator(mode="after")
    def _rate_only_for_contamination(self) -> ThresholdConfig:
        if self.method == "f1" and self.rate is not None:
            raise ValueError(
                "rate applies to method contamination only (f1 chooses the threshold from the "
                "validation labels); remove rate or set method: contamination"
            )
        return self

    @property
    def share(self) -> float:
        """The contamination rate: ``rate``, else 0.05."""
        return DEFAULT_RATE if self.rate is None else self.rate


class AnomalyConfig(BaseModel):
    """Anomaly detection: the normal / anomalous label values, the training rows, the threshold."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    normal: list[Label] | None = Field(
        None,
        description="Label values (data.target) of normal rows; every other value is anomalous.",
    )
    anomalous: list[Label] | None = Field(
        None,
        description="Label values (data.target) of anomalous rows; every other value is normal.",
    )
    train_on: Literal["normal", "all"] = Field(
        "normal",
        description="normal: the loss ignores training rows labelled anomalous (novelty "
        "detection); all: every training row counts (unsupervised, contaminated data).",
    )
    threshold: ThresholdConfig = Field(default_factory=ThresholdConfig)
    k: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description="precision@k: the share of anomalies among the k highest-scored rows "
        "(default: k = the number of anomalous rows evaluated).",
    )

    @model_validator(mode="before")
    @classmethod
    def _scalars_as_lists(cls, data: object) -> object:
        if isinstance(data, dict):
            return {
                key: [value] if key in ("normal", "anomalous") and _scalar(value) else value
                for key, value in data.items()
            }
        return data

    @model_validator(mode="after")
    def _one_side_given(self) -> AnomalyConfig:
        if not self.normal and not self.anomalous:
            raise ValueError(
                "give the label values of anomalous rows (anomalous: [...]) or of normal rows "
                "(normal: [...]) in data.target's column"
            )
        both = {str(v) for v in self.normal or ()} & {str(v) for v in self.anomalous or ()}
        if both:
            raise ValueError(
                f"{', '.join(sorted(both))} is listed as both normal and anomalous; keep it in "
                "one list"
            )
        return self


def unlabelled_anomaly(data: object) -> object:
    """A raw ``task: anomaly`` recipe without labels, rewritten for unlabelled rows:
    ``data.target`` names :data:`UNLABELLED_TARGET`, ``anomaly.normal`` its one value and
    ``train_on`` defaults to ``all``. Without labels means ``data.target: null``, or
    ``data.target`` left out while the ``anomaly:`` block names no label values (left out *with*
    label values, the source's own label column is meant: a built-in's, else ``target``). Other
    recipes are returned as they are.

    Label values listed next to ``data.target: null``, and ``threshold.method: f1``, are kept:
    the task's ``check_recipe`` refuses them, naming the key.

    Example:
        >>> out = unlabelled_anomaly({"task": "anomaly", "data": {"source": "x.csv"}})
        >>> out["data"]["target"], out["anomaly"]
        ('_unlabelled', {'normal': ['normal'], 'train_on': 'all'})
    """
    if not isinstance(data, dict) or data.get("task") != "anomaly":
        return data
    given = data.get("data")
    if isinstance(given, BaseModel):
        target, explicit = getattr(given, "target", None), "target" in given.model_fields_set
    elif isinstance(given, dict):
        target, explicit = given.get("target"), "target" in given
    else:
        return data
    if target is not None:
        return data
    given_block = data.get("anomaly")
    if isinstance(given_block, BaseModel):
        given_block = given_block.model_dump(exclude_unset=True)
    block = dict(given_block) if isinstance(given_block, dict) else {}
    listed = any(block.get(key) not in (None, []) for key in ("normal", "anomalous"))
    if listed and not explicit:  # the source's own label column
        return data
    source: object
    if isinstance(given, BaseModel):
        source = given.model_copy(update={"target": UNLABELLED_TARGET})
    else:
        source = {**given, "target": UNLABELLED_TARGET}
    if not listed:
        block["normal"] = [UNLABELLED_VALUE]
        block.setdefault("train_on", "all")
    return {**data, "data": source, "anomaly": block}


def _scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool)
