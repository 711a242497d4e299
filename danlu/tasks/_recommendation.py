"""Recommendation: from implicit feedback (who interacted with what), every item's score per user.

The recipe's ``recommend:`` block (:class:`~danlu.config._recommend.RecommendConfig`) names the
interactions table's columns; :meth:`RecommendationTask.prepare_data` prepares it
(``danlu.data._interactions``): each row is one interaction, ``x`` the user's code (n, 1),
``y`` ``[user, item, stage]`` (n, 3). Models (``bpr_mf``, ``two_tower``) map a user's code to
the scores of every training item, (n, n_items); the loss is BPR (Rendle et al., 2009):
``-log σ(s_pos - s_neg)`` with ``negatives`` items drawn uniformly per positive in each batch —
the outputs hold every item's score, so drawing them in the loss is the same as drawing them in
the batch, and the engine trains the model unchanged.

Evaluation ranks each held-out item against every item the user did not interact with in the
earlier stages (``evaluation: full``, the default), or against ``eval_negatives`` sampled ones
(``sampled``); Recall@K, NDCG@K (the headline), HitRate@K, MRR and catalogue coverage
(``_rank_metrics.py``). Baselines: popularity and item-kNN (cosine between the items' columns
of the training interaction matrix), in the baselines section and in the task's own section,
which adds coverage, the popularity bias (share of recommendations among the 10% most popular
items) and a few users' top-K.

What serving needs — the training interactions (``exclude_seen``), item popularity (the
fallback for unknown users) and the settings — is saved with the model as ``decoding.json``;
the id maps are in ``preprocessing.json`` (the user feature's categories, ``schema.classes``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from danlu.tasks._base import Explained, ExtraSection, Task

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

    from danlu.config import ConfigIssue, LossConfig, Recipe
    from danlu.data import FeatureSchema, PreparedData

__all__ = ["ItemKNN", "Popularity", "RecommendationTask", "recommend"]

_MODELS = frozenset({"bpr_mf", "two_tower"})
_EXAMPLES = 5  # users shown in the report's examples section


def _csr(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> Any:
    """The binary user × item matrix of the given interactions (scipy CSR, float32)."""
    import numpy as np
    from scipy.sparse import csr_matrix

    m = csr_matrix(
        (np.ones(len(users), dtype=np.float32), (users, items)), shape=(n_users, n_items)
    )
    m.data[:] = 1.0  # a repeated pair counts once
    return m


class Popularity:
    """Scores every item by its number of training interactions, the same for every user."""

    def fit(self, x: np.ndarray, y: np.ndarray, n_items: int | None = None) -> Popularity:
        import numpy as np

        items = np.asarray(y).reshape(len(y), -1)[:, 1]
        self.counts_ = np.bincount(items, minlength=n_items or int(items.max()) + 1)
        return self

    def scores(self, x: np.ndarray) -> np.ndarray:
        import numpy as np

        return np.tile(self.counts_.astype(np.float32), (len(x), 1))  # (n, n_items)


def _popularity_dummy(n_items: int) -> Any:
    """:class:`Popularity` as a scikit-learn dummy (it reads no feature), so the report treats
    it as the reference that knows nothing of the rows."""
    from sklearn.dummy import DummyRegressor

    class PopularityDummy(DummyRegressor):  # type: ignore[misc]
        def fit(self, x: np.ndarray, y: np.ndarray, sample_weight: Any = None) -> Any:
            self.scorer_ = Popularity().fit(x, y, n_items or None)
            return self

        def scores(self, x: np.ndarray) -> np.ndarray:
            return self.scorer_.scores(x)

    return PopularityDummy()


class ItemKNN:
    """Item-based k nearest neighbours: an item's score for a user is the sum of its cosine
    similarities (between the items' columns of the training interaction matrix) to the items
    the user interacted with, each item keeping its ``neighbours`` most similar ones."""

    def __init__(self, neighbours: int = 100, n_users: int = 0, n_items: int = 0) -> None:
        self.neighbours, self.n_users, self.n_items = neighbours, n_users, n_items

    def fit(self, x: np.ndarray, y: np.ndarray) -> ItemKNN:
        import numpy as np
        from scipy.sparse import csr_matrix, vstack

        y = np.asarray(y)
        n_users = max(self.n_users, int(y[:, 0].max()) + 1)
        n_items = max(self.n_items, int(y[:, 1].max()) + 1)
        r = _csr(y[:, 0], y[:, 1], n_users, n_items)
        rt = r.T.tocsr()  # (items, users)
        norms = np.sqrt(np.asarray(r.sum(axis=0)).ravel())  # (items,) binary: √count
        norms[norms == 0] = 1.0
        blocks = []
        keep = min(self.neighbours, n_items)
        for start in range(0, n_items, 1024):  # (block, items) dense, pruned to top neighbours
            sim = (rt[start : start + 1024] @ r).toarray()
            sim /= norms[start : start + 1024, None] * norms[None, :]
            rows = np.arange(sim.shape[0])
            sim[rows, start + rows] = 0.0  # not its own neighbour
            if keep < n_items:
                cut = np.argpartition(-sim, keep - 1, axis=1)[:, keep:]
                np.put_along_axis(sim, cut, 0.0, axis=1)
            blocks.append(csr_matrix(sim.astype(np.float32)))
        self.similarity_ = vstack(blocks).tocsr()  # (items, items)
        self.interactions_ = r
        return self

    def scores(self, x: np.ndarray) -> np.ndarray:
        import numpy as np

        users = np.asarray(x).reshape(len(x), -1)[:, 0].astype(np.int64)
        known = users < self.interactions_.shape[0]
        out = np.zeros((len(users), self.similarity_.shape[0]), dtype=np.float32)
        if known.any():
            out[known] = (self.interactions_[users[known]] @ self.similarity_).toarray()
        return out


class RecommendationTask(Task):
    """Ranks every item for a user from implicit feedback (BPR-trained scores).

    Args:
        k: the cut-off of Recall@K, NDCG@K, HitRate@K (and the default number recommended).
        negatives: negative items drawn per positive by the BPR loss.
        evaluation: ``full`` (rank against every item) or ``sampled``.
        eval_negatives: ``sampled``: negative items drawn per held-out item.
        seed: seeds the sampled evaluation's draws.

    Attributes:
        interactions: after :meth:`configure` (or ``decoding.json``), every known interaction,
            (m, 3) int64 ``[user, item, stage]`` — what ``exclude_seen`` and the evaluation
            leave out, and what the baselines fit.
        n_users, n_items: the sizes of the id maps.
        user_table, item_table: ``two_tower``: the user / item feature matrices (rows in id-map
            order; the unknown user's row last, zeros); None without features.
    """

    name = "recommendation"
    input_kinds = frozenset({"interactions"})
    target_kind = "values"
    target_dtype = "int64"
    fits_decoding = True
    epoch_metrics = ("ndcg_at_k", "recall_at_k")
    headline = "ndcg_at_k"
    headline_mode = "max"
    headline_label = "NDCG@K"
    row_score_label = "the NDCG@K of the row's user"
    report_metrics = ("ndcg_at_k", "recall_at_k", "hit_rate_at_k", "mrr", "coverage")
    report_skips = {
        "explain": "a recommender's only input is a user id, looked up rather than "
        "differentiated, so there is no feature to attribute (the examples section shows users' "
        "top-K instead)",
        "robustness": "a user id is no input to perturb",
    }

    def __init__(
        self,
        k: int = 10,
        negatives: int = 4,
        evaluation: str = "full",
        eval_negatives: int = 100,
        seed: int = 0,
        loss: str = "bpr",
    ) -> None:
        self.k, self.negatives, self.evaluation, self.loss = k, negatives, evaluation, loss
        self.eval_negatives, self.seed = eval_negatives, seed
        self.interactions: np.ndarray | None = None
        self.n_users = self.n_items = 0
        self.user_table: np.ndarray | None = None
        self.item_table: np.ndarray | None = None
        self._frame: pd.DataFrame | None = None  # the rows prepare_data read (features)
        self._cache: dict[str, Any] = {}

    # ---- recipe and data -----------------------------------------------------------------------

    def check_recipe(self, recipe: Recipe) -> list[ConfigIssue]:
        from danlu.config import ConfigIssue

        issues = super().check_recipe(recipe)
        config = getattr(recipe, "recommend", None)
        if config is None:
            issues.append(
                ConfigIssue(
                    ("recommend",),
                    "task: recommendation needs a recommend block naming the user and item columns",
                    None,
                    "Add e.g. recommend: {user: userId, item: movieId, time: timestamp}.",
                )
            )
            return issues
        if config.split == "leave_last_out" and config.time is None:
            issues.append(
                ConfigIssue(
                    ("recommend", "time"),
                    "split: leave_last_out holds out each user's last interaction and needs the "
                    "time column to know which is last",
                    None,
                    "Set recommend.time to the timestamp column, or recommend.split: random.",
                )
            )
        if config.min_rating is not None and config.rating is None:
            issues.append(
                ConfigIssue(
                    ("recommend", "min_rating"),
                    "min_rating filters on the rating column, and recommend.rating is not set",
                    config.min_rating,
                    "Set recommend.rating to the rating column, or remove min_rating.",
                )
            )
        if recipe.model.type not in _MODELS and ":" not in recipe.model.type:
            issues.append(
                ConfigIssue(
                    ("model", "type"),
                    "this model does not score items for users",
                    recipe.model.type,
                    "Use model type bpr_mf or two_tower.",
                )
            )
        if (config.user_features or config.item_features) and recipe.model.type == "bpr_mf":
            issues.append(
                ConfigIssue(
                    ("recommend", "user_features" if config.user_features else "item_features"),
                    "bpr_mf learns one vector per id and reads no feature columns",
                    config.user_features or config.item_features,
                    "Use model type two_tower, or remove the feature columns.",
                )
            )
        if recipe.data.target is not None:
            issues.append(
                ConfigIssue(
                    ("data", "target"),
                    "task: recommendation has no target column: recommend.item names the items",
                    recipe.data.target,
                    "Remove data.target.",
                )
            )
        if recipe.evaluate is not None and recipe.evaluate.cross_validation is not None:
            issues.append(
                ConfigIssue(
                    ("evaluate", "cross_validation"),
                    "shuffled folds would mix each user's held-out interactions into training",
                    recipe.evaluate.cross_validation,
                    "Remove evaluate.cross_validation.",
                )
            )
        if recipe.data.augment:
            issues.append(
                ConfigIssue(
                    ("data", "augment"),
                    "augmentations would change user ids",
                    len(recipe.data.augment),
                    "Remove data.augment.",
                )
            )
        return issues

    def prepare_data(self, recipe: Recipe, frame: Any = None) -> PreparedData | None:
        """The recipe's interactions (``danlu.data._interactions.prepare_interactions``)."""
        from danlu.data._interactions import prepare_interactions

        config = getattr(recipe, "recommend", None)
        if config is None:  # check_recipe refused it already
            return None
        self._frame = frame
        return prepare_interactions(recipe.data, config, frame=frame)

    def configure(self, recipe: Recipe, data: PreparedData) -> RecommendationTask:
        """This task with the recipe's settings and the prepared interactions (and, for a
        ``two_tower`` model, the user / item feature tables)."""
        import numpy as np

        from danlu.data._interactions import entity_features

        config = recipe.recommend
        assert config is not None  # check_recipe refused it
        task = RecommendationTask(
            k=config.k,
            negatives=config.negatives,
            evaluation=config.evaluation,
            eval_negatives=config.eval_negatives,
            seed=recipe.data.split.seed,
            loss=config.loss,
        )
        task.n_users = len(data.schema.features[0].categories)
        task.n_items = len(data.schema.classes or ())
        task.interactions = np.concatenate(
            [np.asarray(y, dtype=np.int64).reshape(-1, 3) for y in (data.y_train, data.y_val,
                                                                     data.y_test)]
        )  # fmt: skip
        users = data.schema.features[0].categories
        items = data.schema.classes or ()
        if config.user_features:
            table, _ = entity_features(recipe.data, config, users, "user", frame=self._frame)
            task.user_table = np.vstack([table, np.zeros((1, table.shape[1]), np.float32)])
        if config.item_features:
            task.item_table, _ = entity_features(
                recipe.data, config, items, "item", frame=self._frame
            )
        return task

    # ---- engine --------------------------------------------------------------------------------

    def output_dim(self, schema: FeatureSchema) -> int:
        return len(schema.classes or ())

    def make_loss(
        self, class_weights: torch.Tensor | None = None, loss: LossConfig | None = None
    ) -> torch.nn.Module:
        import torch
        import torch.nn.functional as F

        negatives = self.negatives
        if self.loss == "softmax":

            class _Softmax(torch.nn.Module):
                """Cross-entropy of each row's positive item among every item's score."""

                def forward(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                    return F.cross_entropy(outputs, y[:, 1].long())

            return _Softmax()

        class _BPR(torch.nn.Module):
            """-log σ(s_pos - s_neg), ``negatives`` items drawn uniformly per positive."""

            def forward(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                y = y.long()
                pos = outputs.gather(1, y[:, 1:2])  # (B, 1)
                draw = torch.randint(
                    0, outputs.shape[1], (len(y), negatives), device=outputs.device
                )  # (B, N)
                neg = outputs.gather(1, draw)  # (B, N)
                return -F.logsigmoid(pos - neg).mean()

        return _BPR()

    def quick_metrics(
        self, outputs: torch.Tensor, y: torch.Tensor, schema: FeatureSchema
    ) -> dict[str, float]:
        full = self.metrics(outputs.numpy(), y.numpy(), schema)
        return {m: full[m] for m in self.epoch_metrics}

    # ---- metrics and predictions ---------------------------------------------------------------

    def _csr_stage(self, stage: int) -> Any:
        """The user × item matrix of the interactions of stages below ``stage`` (cached)."""
        key = f"stage<{stage}"
        if key not in self._cache:
            import numpy as np

            inter = self.interactions if self.interactions is not None else np.zeros((0, 3), int)
            rows = inter[inter[:, 2] < stage]
            self._cache[key] = _csr(rows[:, 0], rows[:, 1], self.n_users + 1, self.n_items)
        return self._cache[key]

    def exclusion(self, y: np.ndarray, n_items: int | None = None) -> np.ndarray:
        """Per evaluated row, the items left out of its ranking: what its user interacted with
        in the stages before the row's (training items for validation rows; training and
        validation items for test rows). (n, n_items) bool."""
        import numpy as np

        y = np.asarray(y).reshape(-1, 3)
        n_items = n_items or self.n_items or (int(y[:, 1].max()) + 1 if len(y) else 0)
        mask = np.zeros((len(y), n_items), dtype=bool)
        if self.interactions is None:
            return mask
        for stage in np.unique(y[:, 2]):
            rows = np.flatnonzero(y[:, 2] == stage)
            seen = self._csr_stage(int(stage))[y[rows, 0]]
            seen_rows = seen.toarray()[:, :n_items] > 0
            mask[rows, : seen_rows.shape[1]] = seen_rows
        return mask

    def _positions(self, outputs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's 0-based position and its query id (full: one query per (user, stage);
        sampled: one per row)."""
        import numpy as np

        from danlu.tasks._rank_metrics import item_positions

        exclude = self.exclusion(y, outputs.shape[1])
        items = y[:, 1]
        if self.evaluation == "sampled":
            rng = np.random.default_rng(self.seed)
            n, n_items = outputs.shape
            allowed = ~exclude
            allowed[np.arange(n), items] = False
            draws = rng.random((n, n_items))
            draws[~allowed] = -1.0  # the eval_negatives highest draws among allowed items
            count = min(self.eval_negatives, n_items - 1)
            chosen = np.argpartition(-draws, count - 1, axis=1)[:, :count] if count > 0 else None
            sampled = np.ones((n, n_items), dtype=bool)  # True: not among the row's draws
            if chosen is not None:
                np.put_along_axis(sampled, chosen, False, axis=1)
            sampled |= ~allowed  # an item the user has, or the row's own, never competes
            return item_positions(outputs, items, sampled), np.arange(n)
        positions = item_positions(outputs, items, exclude)
        _, queries = np.unique(y[:, [0, 2]], axis=0, return_inverse=True)
        return positions, queries.reshape(-1)

    def metrics(self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> dict[str, Any]:
        import numpy as np

        from danlu.tasks._rank_metrics import coverage, query_metrics, summarize, top_k

        outputs = np.asarray(outputs, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64).reshape(-1, 3)
        if not len(y):
            return {}
        positions, queries = self._positions(outputs, y)
        values = query_metrics(positions, queries, self.k)
        result: dict[str, Any] = summarize(values, self.k)
        first = np.unique(queries, return_index=True)[1]  # one ranking per query
        top = top_k(outputs[first], self.exclusion(y[first], outputs.shape[1]), self.k)
        result["coverage"] = coverage(top, outputs.shape[1])
        result["k"] = self.k
        result["evaluation"] = (
            "full ranking" if self.evaluation == "full"
            else f"sampled: {self.eval_negatives} negatives per held-out item"
        )  # fmt: skip
        result["queries"] = int(len(first))
        return result

    def row_scores(self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> np.ndarray:
        import numpy as np

        from danlu.tasks._rank_metrics import query_metrics

        y = np.asarray(y, dtype=np.int64).reshape(-1, 3)
        positions, queries = self._positions(np.asarray(outputs, dtype=np.float32), y)
        return query_metrics(positions, queries, self.k)["rows"]

    def metric(self, name: str, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> float:
        """One metric (the report bootstraps it): the ranking metrics without the top-K lists
        that only coverage needs."""
        import numpy as np

        from danlu.tasks._rank_metrics import query_metrics, summarize

        y = np.asarray(y, dtype=np.int64).reshape(-1, 3)
        if name != "coverage" and len(y):
            positions, queries = self._positions(np.asarray(outputs, dtype=np.float32), y)
            value = summarize(query_metrics(positions, queries, self.k), self.k).get(name)
            if isinstance(value, float):
                return value
        value = self.metrics(outputs, y, schema).get(name)
        if not isinstance(value, float):
            raise ValueError(f"{name} is undefined on these rows")
        return value

    def row_losses(self, outputs: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Each row's softmax cross-entropy of its item among every item's score (what the
        membership-inference section reads: training interactions should score lower)."""
        import numpy as np
        from scipy.special import logsumexp

        z = np.asarray(outputs, dtype=np.float64)
        items = np.asarray(y, dtype=np.int64).reshape(-1, 3)[:, 1]
        losses: np.ndarray = logsumexp(z, axis=1) - z[np.arange(len(z)), items]
        return losses

    def predict(
        self, outputs: np.ndarray, schema: FeatureSchema, temperature: float = 1.0
    ) -> dict[str, np.ndarray]:
        """Each row's ``k`` best item ids and their scores (seen items not excluded: a row
        carries no history; ``POST /recommend`` and :func:`recommend` exclude them)."""
        import numpy as np

        from danlu.tasks._rank_metrics import top_k

        outputs = np.asarray(outputs, dtype=np.float32)
        top = top_k(outputs, None, self.k)
        items = np.asarray(schema.classes or (), dtype=object)
        prediction = np.empty(len(top), dtype=object)
        for i, row in enumerate(top):
            prediction[i] = items[row].tolist()
        return {"prediction": prediction, "scores": np.take_along_axis(outputs, top, axis=1)}

    # ---- saved with the model ------------------------------------------------------------------

    def fit_decoding(
        self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema
    ) -> dict[str, Any] | None:
        """What serving needs besides the weights: the settings, the known interactions
        (``exclude_seen``) and item popularity (the fallback for unknown users)."""
        import numpy as np

        inter = self.interactions if self.interactions is not None else np.zeros((0, 3), int)
        return {
            "k": self.k,
            "negatives": self.negatives,
            "evaluation": self.evaluation,
            "eval_negatives": self.eval_negatives,
            "seed": self.seed,
            "loss": self.loss,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "interactions": {
                "user": inter[:, 0].tolist(),
                "item": inter[:, 1].tolist(),
                "stage": inter[:, 2].tolist(),
            },
        }

    def with_decoding(self, decoding: Mapping[str, Any]) -> RecommendationTask:
        import numpy as np

        task = RecommendationTask(
            k=int(decoding["k"]),
            negatives=int(decoding.get("negatives", self.negatives)),
            evaluation=str(decoding.get("evaluation", self.evaluation)),
            eval_negatives=int(decoding.get("eval_negatives", self.eval_negatives)),
            seed=int(decoding.get("seed", self.seed)),
            loss=str(decoding.get("loss", self.loss)),
        )
        task.n_users, task.n_items = int(decoding["n_users"]), int(decoding["n_items"])
        inter = decoding["interactions"]
        task.interactions = np.stack(
            [np.asarray(inter[c], dtype=np.int64) for c in ("user", "item", "stage")], axis=1
        ).reshape(-1, 3)
        task.user_table, task.item_table = self.user_table, self.item_table
        return task

    def popularity(self) -> np.ndarray:
        """Each item's number of training interactions, (n_items,)."""
        import numpy as np

        if "popularity" not in self._cache:
            inter = self.interactions if self.interactions is not None else np.zeros((0, 3), int)
            train = inter[inter[:, 2] == 0]
            self._cache["popularity"] = np.bincount(train[:, 1], minlength=self.n_items)
        popular: np.ndarray = self._cache["popularity"]
        return popular

    def knn_scores(self, items: np.ndarray) -> np.ndarray:
        """Item-kNN scores of every item for someone who interacted with ``items`` (codes):
        the cold-start answer for a user the model does not know, (n_items,)."""
        import numpy as np

        if "knn" not in self._cache:
            inter = self.interactions if self.interactions is not None else np.zeros((0, 3), int)
            train = inter[inter[:, 2] == 0]
            self._cache["knn"] = ItemKNN(n_users=self.n_users + 1, n_items=self.n_items).fit(
                train[:, :1], train
            )
        similarity = self._cache["knn"].similarity_
        return np.asarray(similarity[items].sum(axis=0), dtype=np.float32).ravel()

    def seen_items(self, user: int) -> np.ndarray:
        """The items a user (code) interacted with in any stage, (s,) int64."""
        import numpy as np

        if self.interactions is None or user >= self.n_users:
            return np.zeros(0, dtype=np.int64)
        return np.unique(self._csr_stage(3)[user].indices).astype(np.int64)

    # ---- trust report --------------------------------------------------------------------------

    def baselines(self, seed: int) -> dict[str, Any]:
        return {
            "popularity": _popularity_dummy(self.n_items),
            "item-kNN (cosine)": ItemKNN(n_users=self.n_users + 1, n_items=self.n_items),
        }

    def baseline_outputs(self, estimator: Any, x: np.ndarray, schema: FeatureSchema) -> np.ndarray:
        import numpy as np

        return np.asarray(estimator.scores(x), dtype=np.float32)

    def explain(
        self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema, temperature: float = 1.0
    ) -> Explained:
        import numpy as np

        y = np.asarray(y, dtype=np.int64).reshape(-1, 3)
        items = list(schema.classes or ())
        top = self.predict(outputs, schema)["prediction"]
        outputs = np.asarray(outputs, dtype=np.float32)
        return Explained(
            targets=y[:, 1],
            confidence=outputs[np.arange(len(y)), y[:, 1]] if len(y) else np.zeros(0),
            predictions=[list(t) for t in top],
            truths=[items[i] for i in y[:, 1]],
            what="the held-out item's score",
            notes=["Attributions of a user-id input say little; the examples section shows "
                   "each user's top-K instead."],
        )  # fmt: skip

    def report_sections(
        self,
        outputs: np.ndarray,
        y: np.ndarray,
        schema: FeatureSchema,
        model: torch.nn.Module | None = None,
    ) -> list[ExtraSection]:
        return [self.ranking_section(outputs, y, schema), self.examples_section(outputs, y, schema)]

    def compare(
        self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema
    ) -> list[dict[str, Any]]:
        """The model and the baselines (fitted on the training interactions) on the same rows:
        every metric, coverage and the share of recommendations among the 10% most popular
        items. One dict per scorer."""
        import numpy as np

        from danlu.tasks._rank_metrics import popular_share, top_k

        y = np.asarray(y, dtype=np.int64).reshape(-1, 3)
        inter = self.interactions if self.interactions is not None else y
        train = inter[inter[:, 2] == 0]
        x = y[:, :1].astype(np.float32)
        scorers = {"model": np.asarray(outputs, dtype=np.float32)}
        for name, estimator in self.baselines(self.seed).items():
            scorers[name] = estimator.fit(train[:, :1], train).scores(x)
        popularity = self.popularity()
        first = np.unique(y[:, [0, 2]], axis=0, return_index=True)[1]
        rows = []
        for name, scores in scorers.items():
            metrics = self.metrics(scores, y, schema)
            top = top_k(scores[first], self.exclusion(y[first], scores.shape[1]), self.k)
            rows.append(
                {
                    "model": name,
                    **{m: metrics.get(m) for m in self.report_metrics},
                    "popular_share": popular_share(top, popularity),
                }
            )
        return rows

    def ranking_section(
        self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema
    ) -> ExtraSection:
        rows = self.compare(outputs, y, schema)
        model, popular = rows[0], rows[1]
        mode = "full ranking" if self.evaluation == "full" else (
            f"sampled ranking ({self.eval_negatives} negatives per held-out item)"
        )  # fmt: skip
        section = ExtraSection(
            "recommendation_ranking",
            f"Ranking vs baselines (K = {self.k}, {mode})",
            data={"k": self.k, "evaluation": self.evaluation, "rows": rows},
        )
        gain = (model["ndcg_at_k"] - popular["ndcg_at_k"]) / max(popular["ndcg_at_k"], 1e-12)
        section.summary = (
            f"NDCG@{self.k} {model['ndcg_at_k']:.4f} vs popularity {popular['ndcg_at_k']:.4f} "
            f"({100 * gain:+.0f}%); coverage {100 * model['coverage']:.1f}% of the catalogue"
        )
        section.notes.append(
            f"Evaluation: {mode}; each held-out item is ranked among the items its user did not "
            "interact with in earlier stages (training items for validation rows, training and "
            "validation items for test rows)."
        )
        section.notes.append(
            "popular_share: the share of the top-K recommendations that are among the 10% most "
            "popular items (training interactions) — a popularity bias of 1.0 recommends only "
            "the head of the catalogue. Coverage: the share of items recommended to anyone."
        )
        if gain <= 0:
            section.flags.append(
                "the model does not beat the popularity baseline on NDCG@K: it has not learned "
                "more than what is popular"
            )
        return section

    def examples_section(
        self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema
    ) -> ExtraSection:
        import numpy as np

        from danlu.tasks._rank_metrics import top_k

        y = np.asarray(y, dtype=np.int64).reshape(-1, 3)
        users = list(schema.features[0].categories) if schema.features else []
        items = list(schema.classes or ())
        first = np.unique(y[:, [0, 2]], axis=0, return_index=True)[1][:_EXAMPLES]
        scores = np.asarray(outputs, dtype=np.float32)[first]
        top = top_k(scores, self.exclusion(y[first], scores.shape[1]), self.k)
        examples = []
        for row, picks in zip(first, top, strict=True):
            u = int(y[row, 0])
            held = y[(y[:, 0] == u) & (y[:, 2] == y[row, 2]), 1]
            seen = self.seen_items(u)
            examples.append(
                {
                    "user": users[u] if u < len(users) else str(u),
                    "history": [items[i] for i in seen[:10]],
                    "held_out": [items[i] for i in held],
                    "top_k": [items[i] for i in picks],
                    "hits": [items[i] for i in picks if i in set(held.tolist())],
                }
            )
        return ExtraSection(
            "recommendation_examples",
            "Example users' recommendations",
            data={"examples": examples},
            summary=f"top-{self.k} of {len(examples)} test users",
            notes=["history: up to 10 items the user interacted with; hits: recommended "
                   "items that are the user's held-out ones."],
        )  # fmt: skip

    # ---- signature -----------------------------------------------------------------------------

    def signature(self, schema: FeatureSchema) -> dict[str, Any]:
        """The base signature plus ``recommend``: the default ``k`` and the catalogue's size
        (what ``POST /v1/models/{name}/recommend`` and its OpenAPI entry bound ``k`` by)."""
        catalogue = len(schema.classes or ())
        return {**super().signature(schema), "recommend": {"k": self.k, "catalogue": catalogue}}

    def output_signature(self, schema: FeatureSchema) -> dict[str, Any]:
        k = self.k
        return {
            "prediction": {
                "type": "items",
                "description": f"the {k} best item ids for the row's user, best first",
                "json_schema": {"type": "array", "items": {"type": "string"}, "maxItems": k},
            },
            "scores": {
                "type": "float",
                "shape": [k],
                "description": "their scores (larger is better)",
                "json_schema": {"type": "array", "items": {"type": "number"}, "maxItems": k},
            },
        }


def recommend(
    bundle: Any,
    user: Any,
    k: int | None = None,
    *,
    exclude_seen: bool = True,
    items: list[Any] | None = None,
    scores: Any = None,
) -> dict[str, Any]:
    """A trained recommender's ``k`` best items for ``user`` (an id as in the data).

    A user the model was not trained on is answered without the model, flagged in
    ``fallback``: with ``items`` (the user's recent item ids) by item-kNN on those items
    (``"item_knn"``), else by popularity (``"popularity"``). Item ids of ``items`` not in the
    catalogue are ignored and listed in ``unknown_items``; for a known user, ``items`` are left
    out of the answer with the user's history (``exclude_seen``).

    Args:
        bundle: what ``danlu.load_model`` returns (model, preprocessor, schema and task).
        user: the user's id.
        k: how many items (default the recipe's ``recommend.k``).
        exclude_seen: leave out the items the user interacted with in the data.
        items: recent item ids of the user (cold start).
        scores: computes raw outputs for prepared rows instead of ``bundle.model`` (a serving
            runtime's ``outputs``).

    Returns:
        ``{"user", "k", "items", "scores", "fallback", "unknown_items"}``.

    Raises:
        ValueError: ``k`` below 1 or above the catalogue's size.
        ConfigError: the model is not a recommender.

    Example:
        >>> # recommend(danlu.load_model("movies:1"), "42", k=5)["items"]
    """
    import numpy as np

    from danlu.data._interactions import interaction_ids
    from danlu.tasks._rank_metrics import top_k

    task: RecommendationTask = bundle.task
    if not isinstance(task, RecommendationTask):
        from danlu.errors import ConfigError

        raise ConfigError(
            f"This is a {task.name} model, not a recommender: recommend() needs a model trained "
            "with task: recommendation. Use predict() instead."
        )
    schema = bundle.schema
    catalogue = list(schema.classes or ())
    k = task.k if k is None else k
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(catalogue):
        raise ValueError(
            f"k must be an integer from 1 to {len(catalogue)} (the catalogue); got {k!r}"
        )
    item_code = {v: j for j, v in enumerate(catalogue)}
    given = [] if items is None else [str(v) for v in interaction_ids(list(items)) if v]
    known_items = sorted({item_code[v] for v in given if v in item_code})
    unknown = [v for v in given if v not in item_code]
    uid = interaction_ids([user])[0]
    code = {u: i for i, u in enumerate(schema.features[0].categories)}.get(uid or "")
    answer: dict[str, Any] = {"user": uid, "k": k, "fallback": None, "unknown_items": unknown}
    exclude = np.zeros((1, len(catalogue)), dtype=bool)
    exclude[0, known_items] = True
    if code is None:
        if known_items:
            row = task.knn_scores(np.asarray(known_items))[None, :]  # (1, n_items)
            answer["fallback"] = "item_knn"
        else:
            row = task.popularity().astype(np.float32)[None, :]  # (1, n_items)
            answer["fallback"] = "popularity"
    else:
        x = np.asarray([[float(code)]], dtype=np.float32)
        if scores is not None:
            row = np.asarray(scores(x), dtype=np.float32)
        else:
            import torch

            with torch.inference_mode():
                row = bundle.model(torch.from_numpy(x)).float().numpy()
        if exclude_seen:
            exclude[0, task.seen_items(code)] = True
    top = top_k(row, exclude, k)[0]
    top = top[~exclude[0, top]]  # fewer than k when the user has seen nearly everything
    answer["items"] = [catalogue[i] for i in top]
    answer["scores"] = [float(row[0, i]) for i in top]
    return answer
