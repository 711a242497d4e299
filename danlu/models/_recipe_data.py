"""A recipe's data, prepared the one way every stage prepares it.

Training, tuning trials, the trust report, the export's parity rows, ``danlu validate --data``,
compression and torchrun's ranks all prepare a recipe's data again; they all call
:func:`prepare_recipe_data`, so a task whose rows are not the source's rows (windows of a
series, packed token blocks, interactions) is prepared the same way everywhere through its
:meth:`~danlu.tasks.Task.prepare_data` hook. It lives here, not in ``danlu.data``, because the
standard preparation asks the recipe's model which columns it reads as text (``text_inputs``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from danlu.config import ConfigIssue, Recipe, raise_issues
from danlu.models._text_inputs import text_inputs

if TYPE_CHECKING:
    from danlu.data import PreparedData
    from danlu.tasks import Task

__all__ = ["prepare_recipe_data"]


def prepare_recipe_data(
    recipe: Recipe, task: Task | None = None, frame: Any = None
) -> PreparedData:
    """The recipe's ``data`` block prepared for its task (rows from ``frame`` when given).

    The task's own preparation comes first (:meth:`~danlu.tasks.Task.prepare_data`); otherwise
    :func:`~danlu.data.prepare_data` with the model's text inputs. A data error that one recipe
    key fixes (a split column not in the data) is raised as a ConfigError naming the key's line.

    Example:
        >>> from danlu.config import load_recipe
        >>> prepared = prepare_recipe_data(load_recipe("examples/wine_mlp.yaml"))  # doctest: +SKIP
        >>> prepared.x_train.shape  # doctest: +SKIP
    """
    from danlu.data import RecipeDataError, prepare_data
    from danlu.tasks import get_task

    task = task if task is not None else get_task(recipe.task)
    try:
        own = task.prepare_data(recipe, frame=frame)
        if own is not None:
            return own
        return prepare_data(recipe.data, task, frame=frame, **text_inputs(recipe.model))
    except RecipeDataError as exc:
        issue = ConfigIssue(exc.loc, exc.problem, exc.found, exc.fix)
        raise_issues([issue], recipe._source)
        raise
