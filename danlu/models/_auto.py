"""``model: {type: auto, candidates: [...]}``: the model types a run trains and chooses among.

Each candidate is a model block of its own (``{type: mlp, hidden: [64]}``, ``{type: gbdt}``),
checked against its builder's spec like any model. The train stage trains every candidate on
the same prepared data (each a child run), keeps the best on the validation headline metric and
ships it (``danlu/train/_auto.py``). For ``task: forecasting`` the candidates (default: the
classical and neural forecasters) are compared by a rolling-origin backtest instead, and the
best mean MASE ships (``danlu/train/_backtest.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from danlu.config import ConfigIssue
from danlu.models._common import ModelSpec

if TYPE_CHECKING:
    import torch.nn as nn

    from danlu.config import Recipe
    from danlu.data import FeatureSchema
    from danlu.tasks import Task

__all__ = ["AutoSpec", "DEFAULT_CANDIDATES", "FORECAST_CANDIDATES", "build_auto"]

#: the candidates of ``model: {type: auto}`` when the recipe lists none.
DEFAULT_CANDIDATES: tuple[dict[str, Any], ...] = (
    {"type": "mlp"},
    {"type": "gbdt", "library": "lightgbm"},
)
#: the candidates for ``task: forecasting`` when the recipe lists none (backtested; the
#: neural ones only where registered).
FORECAST_CANDIDATES: tuple[dict[str, Any], ...] = (
    {"type": "seasonal_naive"},
    {"type": "ets"},
    {"type": "arima"},
    {"type": "mlp"},
    {"type": "lstm"},
    {"type": "tcn"},
)


class AutoSpec(ModelSpec):
    """Options of ``model: {type: auto}``."""

    candidates: list[dict[str, Any]] = Field(
        default_factory=lambda: [dict(c) for c in DEFAULT_CANDIDATES],
        min_length=1,
        description="Model blocks to train and choose among (default: mlp and gbdt; for "
        "task: forecasting seasonal_naive, ets, arima, mlp, lstm and tcn, backtested).",
    )

    def blocks(self, task: str | None = None) -> list[dict[str, Any]]:
        """The candidates' model blocks: the recipe's, else ``task``'s defaults."""
        if task != "forecasting" or "candidates" in self.model_fields_set:
            return self.candidates
        from danlu.models import MODELS

        return [dict(c) for c in FORECAST_CANDIDATES if c["type"] in MODELS.names()]

    def checked(self, task: str | None = None) -> tuple[list[tuple[str, Any]], list[ConfigIssue]]:
        """Each candidate's (type, validated options), and the issues of those that fail."""
        from danlu.config import ModelConfig
        from danlu.models import check_model_config

        checked, issues = [], []
        for i, block in enumerate(self.blocks(task)):
            where = ("model", "candidates", i)
            kind = block.get("type")
            if not isinstance(kind, str) or kind == "auto":
                issues.append(
                    ConfigIssue(
                        (*where, "type"),
                        "each candidate needs a model type other than auto",
                        kind,
                        "Write e.g. {type: mlp} or {type: gbdt, library: lightgbm}.",
                    )
                )
                continue
            options, found = check_model_config(ModelConfig.model_validate(block))
            issues.extend(
                ConfigIssue((*where, *issue.loc[1:]), issue.message, issue.found, issue.fix)
                for issue in found
            )
            checked.append((kind, options))
        return checked, issues

    def recipe_issues(self, recipe: Recipe) -> list[ConfigIssue]:
        checked, issues = self.checked(recipe.task)
        for _, options in checked:
            if hasattr(options, "recipe_issues"):
                issues.extend(options.recipe_issues(recipe))
        # forecasting chooses by a rolling-origin backtest, not on the validation split
        if recipe.task != "forecasting" and recipe.data.split.val == 0:
            issues.append(
                ConfigIssue(
                    ("data", "split", "val"),
                    "model.type auto chooses on the validation split, and this one is empty",
                    0,
                    "Set data.split.val above 0 (e.g. 0.15).",
                )
            )
        if recipe.tune is not None:
            issues.append(
                ConfigIssue(
                    ("tune",),
                    "tuning searches one model type; model.type auto chooses among several",
                    "set",
                    "Tune one candidate (model.type: gbdt or mlp), or remove the tune block.",
                )
            )
        return issues


def build_auto(spec: AutoSpec, schema: FeatureSchema, task: Task) -> nn.Module:
    """The untrained model of ``type: auto``: it holds the checked candidates, and the train
    stage trains each and puts the winner in its place (it cannot predict before that)."""
    import torch.nn as nn

    class Candidates(nn.Module):
        """The candidates of ``model: {type: auto}`` before the train stage chose one."""

        def __init__(self) -> None:
            super().__init__()
            self.candidates = spec.checked(task.name)[0]

        def forward(self, x: Any) -> Any:
            raise RuntimeError("model.type auto has not chosen a model yet (train it first).")

    return Candidates()
