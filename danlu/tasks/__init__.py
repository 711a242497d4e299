"""Tasks: what each kind of problem needs (output head size, loss, metrics, decoding)."""

from __future__ import annotations

from danlu.registry import Registry
from danlu.tasks._anomaly import AnomalyTask
from danlu.tasks._base import Explained, ExtraSection, Task
from danlu.tasks._classification import ClassificationTask
from danlu.tasks._forecasting import ForecastingTask
from danlu.tasks._generation import GenerationTask
from danlu.tasks._language_model import LanguageModelTask
from danlu.tasks._multilabel import MultiLabelTask
from danlu.tasks._recommendation import RecommendationTask
from danlu.tasks._regression import RegressionTask

__all__ = [
    "TASKS",
    "AnomalyTask",
    "ClassificationTask",
    "Explained",
    "ForecastingTask",
    "LanguageModelTask",
    "ExtraSection",
    "GenerationTask",
    "MultiLabelTask",
    "RecommendationTask",
    "RegressionTask",
    "Task",
    "get_task",
]

TASKS: Registry[type[Task]] = Registry("task")
TASKS.register("classification")(ClassificationTask)
TASKS.register("regression")(RegressionTask)
TASKS.register("multilabel")(MultiLabelTask)
TASKS.register("forecasting")(ForecastingTask)
TASKS.register("anomaly")(AnomalyTask)
TASKS.register("generation")(GenerationTask)  # images: a VAE scored by its ELBO
TASKS.register("language_model")(LanguageModelTask)
TASKS.register("recommendation")(RecommendationTask)  # interactions: every item's score


def get_task(name: str) -> Task:
    """The task object for ``name``.

    Example:
        >>> get_task("regression").headline
        'r2'
    """
    return TASKS.get(name).builder()
