"""The text baseline: TF-IDF of the raw text and a linear model (scikit-learn).

A pretrained transformer has to beat the bag of words before it earns its cost, so a report on a
model with text columns scores TF-IDF + logistic regression (ridge for numeric targets, one-vs-rest
logistic regression for label sets) on the same test rows as the model. The features:

- word unigrams and bigrams, lowercased, sublinear tf, terms in at least 2 training texts (1 when
  so few texts leave no such term), fitted on the training rows only;
- several text columns of a row are joined into one document (one line each); the table's other
  columns (numbers, categories) are left out: the baseline is the text's alone;
- the strength C from 1, 10 and 100 by the validation rows' score (accuracy for classes, R² for
  values, subset accuracy for label sets; ties: the smaller C), refitted on the training rows;
  without validation rows C = 10.

``bench/text_baseline.py`` runs the same fit on BBC News.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from danlu.evaluate._context import EvalData

__all__ = [
    "C_GRID",
    "TFIDF_OPTIONS",
    "TfidfBaseline",
    "fit_tfidf_baseline",
    "join_columns",
    "text_baseline_outputs",
]

#: The TF-IDF settings (scikit-learn's ``TfidfVectorizer``).
TFIDF_OPTIONS: dict[str, Any] = {
    "ngram_range": (1, 2),
    "sublinear_tf": True,
    "min_df": 2,
    "lowercase": True,
}
#: The strengths tried (C of logistic regression; ridge's alpha is 1 / C).
C_GRID = (1.0, 10.0, 100.0)
#: C without validation rows to pick it.
DEFAULT_C = 10.0

#: The linear model on the TF-IDF features of each target kind, and its name in the report.
_NAMES = {
    "classes": "TF-IDF + logistic regression",
    "values": "TF-IDF + ridge regression",
    "label_sets": "TF-IDF + one-vs-rest logistic regression",
}


def linear_model(target_kind: str) -> Callable[[float], Any]:
    """``C -> unfitted estimator`` for a target kind (``classes``, ``values``, ``label_sets``).

    Raises:
        ValueError: another target kind.
    """
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.multiclass import OneVsRestClassifier

    if target_kind == "classes":
        return lambda c: LogisticRegression(C=c, max_iter=2000)
    if target_kind == "values":
        return lambda c: Ridge(alpha=1.0 / c)
    if target_kind == "label_sets":
        return lambda c: OneVsRestClassifier(LogisticRegression(C=c, max_iter=2000))
    raise ValueError(f"no text baseline for target kind '{target_kind}'")


@dataclass
class TfidfBaseline:
    """A fitted TF-IDF vectorizer and linear model; predicts from raw strings.

    Attributes:
        vectorizer: the fitted ``TfidfVectorizer``.
        model: the fitted linear model (on the training rows, with the chosen ``c``).
        c: the chosen strength C.
        validation: C → the validation score of the model fitted with it (empty without
            validation rows).
        seconds: time to fit (the vectorizer, the grid and the final model).
    """

    vectorizer: Any
    model: Any
    c: float
    validation: dict[float, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def vocabulary(self) -> int:
        """The number of TF-IDF terms (unigrams and bigrams)."""
        return len(self.vectorizer.vocabulary_)

    @property
    def classes_(self) -> Any:
        return self.model.classes_

    def predict(self, texts: Sequence[str]) -> Any:
        return self.model.predict(self.vectorizer.transform(texts))

    def predict_proba(self, texts: Sequence[str]) -> Any:
        return self.model.predict_proba(self.vectorizer.transform(texts))


def _vectorize(train: Sequence[str]) -> tuple[Any, Any]:
    """The TF-IDF vectorizer fitted on ``train`` and the training matrix (sparse, (n, V))."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(**TFIDF_OPTIONS)
    try:
        return vectorizer, vectorizer.fit_transform(train)
    except ValueError:  # no term in 2 texts (a handful of texts): every term counts
        vectorizer = TfidfVectorizer(**{**TFIDF_OPTIONS, "min_df": 1})
        return vectorizer, vectorizer.fit_transform(train)  # no term at all: ValueError


def fit_tfidf_baseline(
    train: Sequence[str],
    y_train: Any,
    val: Sequence[str] = (),
    y_val: Any = None,
    *,
    make: Callable[[float], Any] | None = None,
    grid: Sequence[float] = C_GRID,
) -> TfidfBaseline:
    """Fit TF-IDF on ``train`` and a linear model, C picked by the score on ``val``.

    Args:
        train: the training texts (one document each).
        y_train: their targets, as the estimator's ``fit`` takes them.
        val: the validation texts (empty: C = 10).
        y_val: their targets.
        make: ``C -> estimator`` (default: logistic regression, ``max_iter=2000``).
        grid: the C values tried; ties go to the smaller C.

    Returns:
        The fitted baseline.

    Raises:
        ValueError: the training texts hold no term at all.

    Example:
        >>> texts = ["good film", "good plot", "bad film", "bad plot"] * 3
        >>> fit = fit_tfidf_baseline(texts, [1, 1, 0, 0] * 3)
        >>> fit.predict(["a good one", "so bad"]).tolist(), fit.c
        ([1, 0], 10.0)
    """
    make = make or linear_model("classes")
    start = time.perf_counter()
    with warnings.catch_warnings():  # a linear model that stops at max_iter still informs
        warnings.simplefilter("ignore")
        vectorizer, x_train = _vectorize(train)  # (n, V) sparse
        validation: dict[float, float] = {}
        best = DEFAULT_C
        if len(val):
            x_val = vectorizer.transform(val)
            for c in grid:
                validation[c] = float(make(c).fit(x_train, y_train).score(x_val, y_val))
            best = max(grid, key=lambda c: (validation[c], -c))
        model = make(best).fit(x_train, y_train)
    return TfidfBaseline(vectorizer, model, best, validation, time.perf_counter() - start)


def join_columns(texts: Mapping[str, np.ndarray]) -> list[str]:
    """One document per row: the row's texts of every column, one line each.

    Example:
        >>> import numpy as np
        >>> join_columns({"title": np.array(["A"]), "body": np.array(["b c"])})
        ['A\\nb c']
    """
    columns = list(texts.values())
    if not columns:
        return []
    return ["\n".join(parts) for parts in zip(*columns, strict=True)]


def text_baseline_outputs(data: EvalData) -> tuple[str, dict[str, Any]] | str:
    """The TF-IDF baseline of ``data``'s text columns, fitted on its training texts and scored
    on its evaluation rows: ``(name, {"outputs", "seconds", "fit"})``, or why it was skipped.

    ``outputs`` are in the model's output form (``Task.baseline_outputs``), so the report's
    metrics and paired comparison apply to it unchanged.
    """
    task = data.task
    if task.target_kind not in _NAMES:
        return f"no text baseline for the {task.name} task"
    if data.texts is None or len(data.texts.y_train) == 0:
        return "the training rows' raw texts are not at hand (the recipe's data was not read)"
    train = join_columns(data.texts.train)
    val = join_columns(data.texts.val)
    if len(val) != len(data.y_val):  # another split than the recipe's: no validation rows
        val = []
    make = linear_model(task.target_kind)
    try:
        fit = fit_tfidf_baseline(
            train,
            task.baseline_target(data.texts.y_train),
            val,
            task.baseline_target(data.y_val) if val else None,
            make=make,
        )
    except ValueError as exc:  # no term in any training text, one class only ...
        return f"TF-IDF + a linear model could not be fitted ({exc})"
    import numpy as np

    start = time.perf_counter()
    test = np.asarray(join_columns({c: data.test_texts[c] for c in data.texts.columns}), object)
    outputs = task.baseline_outputs(fit, test, data.schema)  # (n_test, output_dim)
    seconds = fit.seconds + time.perf_counter() - start
    return _NAMES[task.target_kind], {"outputs": outputs, "seconds": seconds, "fit": fit}
