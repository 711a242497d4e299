"""One training run: the ``prepare`` and ``train`` stages, and :func:`run_training`, the plan
made of the two.

``prepare`` (before the run exists) prepares the data and builds the task and the untrained
model, so bad data or a model that does not fit it leaves no run behind; ``train`` trains (from
the checkpoint when resuming), computes the test metrics and writes the model's files. The
:class:`~danlu.train.Runner` (``_runner.py``) opens the run between them and records everything:
the resolved recipe and its hash, the data fingerprint, code version, packages and host, params,
metrics per epoch, test metrics, artifacts (weights, preprocessing, summary, checkpoint) and each
stage's status and time (``stages.json``). ``danlu/pipeline.py`` runs the same two stages,
followed by evaluate and register, for ``danlu run``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from danlu.config import ConfigIssue, Recipe, load_recipe, raise_issues, recipe_to_dict
from danlu.logging import get_logger
from danlu.store._crypt import read_bytes
from danlu.train._runner import Context, Runner, Stage, StageRecord
from danlu.types import StrPath

if TYPE_CHECKING:
    import numpy as np
    import torch

    from danlu.data import FeatureSchema, PreparedData, Preprocessor
    from danlu.models import Predictor, Rows
    from danlu.store import ModelVersion, Store
    from danlu.tasks import Task
    from danlu.train._callbacks import Callback

__all__ = [
    "PREPARE",
    "TRAIN",
    "TRAINING_PLAN",
    "Result",
    "check_recipe",
    "make_context",
    "prepare_stage",
    "reload_trained",
    "run_training",
    "train_stage",
]

log = get_logger(__name__)


@dataclass
class Result:
    """What ``danlu.run`` returns: the run's id and folder, its metrics and the trained model."""

    run_id: str
    run_dir: Path
    recipe: Recipe
    metrics: dict[str, float]
    details: dict[str, Any]
    history: list[dict[str, float]]
    best_epoch: int
    model: torch.nn.Module
    task: Task
    schema: FeatureSchema
    preprocessor: Preprocessor
    data_fingerprint: str
    data_report: dict[str, Any] = field(default_factory=dict)
    registered: ModelVersion | None = None
    report: Any = None  # the trust report (danlu.evaluate.Report) when the recipe has evaluate:
    temperature: float = 1.0  # temperature scaling fitted by the evaluation, else 1
    stages: list[StageRecord] = field(default_factory=list)  # each stage's status and seconds

    @classmethod
    def from_context(cls, ctx: Context) -> Result:
        """The result of a plan run by the :class:`~danlu.train.Runner`."""
        data, task, model = ctx.data, ctx.task, ctx.model
        assert data is not None and task is not None and model is not None
        return cls(
            run_id=ctx.run_id,
            run_dir=ctx.store.artifact_path(ctx.run_id, "summary.json").parent,
            recipe=ctx.recipe,
            metrics=ctx.metrics,
            details=ctx.details,
            history=ctx.history,
            best_epoch=ctx.best_epoch,
            model=model,
            task=task,
            schema=data.schema,
            preprocessor=data.preprocessor,
            data_fingerprint=data.raw_fingerprint,
            data_report=data.report,
            registered=ctx.registered,
            report=ctx.report,
            temperature=ctx.temperature,
            stages=list(ctx.stages),
        )

    @property
    def predictor(self) -> Predictor:
        """The trained model as the one :class:`~danlu.models.Predictor` (raw rows in)."""
        from danlu.models import Predictor

        card = {"type": self.recipe.model.type, "task": self.task.name}
        return Predictor(
            self.model, self.task, self.schema, self.preprocessor, card, self.temperature
        )

    def predict(self, rows: Rows) -> dict[str, np.ndarray]:
        """Predict raw rows (a DataFrame, dict rows, a dict of columns or an array) with the
        saved preprocessing, through :attr:`predictor`.

        Example:
            >>> # result.predict(frame.head())["prediction"]
        """
        return self.predictor.predict(rows)


#: The recipe blocks that belong to one kind of task: block → task.
_TASK_BLOCKS = {
    "anomaly": "anomaly",
    "forecast": "forecasting",
    "recommend": "recommendation",
    "language_model": "language_model",
}


def check_recipe(recipe: Recipe) -> Any:
    """Checks that need more than the schema: the model's own options, monitors, task fit.

    Returns the validated model options. Raises one ConfigError listing every problem.
    """
    from danlu.errors import NotFoundError
    from danlu.models import check_model_config
    from danlu.tasks import TASKS, get_task

    options, issues = check_model_config(recipe.model)
    try:
        task = get_task(recipe.task)
    except NotFoundError:
        from danlu.registry import did_you_mean

        issues.append(
            ConfigIssue(
                ("task",),
                "unknown task",
                recipe.task,
                (
                    did_you_mean(recipe.task, TASKS.names())
                    + f" Tasks: {', '.join(TASKS.names())}."
                ).strip(),
            )
        )
        raise_issues(issues, recipe._source)
        raise
    train = recipe.train
    if train.early_stopping and train.early_stopping.monitor not in task.monitorable():
        from danlu.registry import did_you_mean

        valid = task.monitorable()
        issues.append(
            ConfigIssue(
                ("train", "early_stopping", "monitor"),
                f"the {recipe.task} task does not record this metric",
                train.early_stopping.monitor,
                (
                    did_you_mean(train.early_stopping.monitor, valid)
                    + f" Choose one of {', '.join(valid)}."
                ).strip(),
            )
        )
    issues.extend(task.check_recipe(recipe))  # what this kind of task refuses
    for block, owner in _TASK_BLOCKS.items():  # a task's own block on another task
        if getattr(recipe, block) is not None and task.name != owner:
            issues.append(
                ConfigIssue(
                    (block,),
                    f"the {block} block applies to task: {owner} only; this recipe's task is "
                    f"{recipe.task}",
                    block,
                    f"Remove the {block} block, or set task: {owner}.",
                )
            )
    if hasattr(options, "recipe_issues"):  # what the model refuses (gbdt: its tasks ...)
        issues.extend(options.recipe_issues(recipe))
    imbalance = recipe.data.imbalance.method
    if imbalance == "class_weight" and train.class_weight is not None:
        issues.append(
            ConfigIssue(
                ("data", "imbalance", "method"),
                "class weights are given twice, here and in train.class_weight",
                imbalance,
                "Keep one: remove train.class_weight, or set data.imbalance to none.",
            )
        )
    from danlu.train._distributed import distributed_issues

    issues.extend(distributed_issues(recipe))  # what train.distributed cannot do
    from danlu.train._adversarial import adversarial_issues

    issues.extend(adversarial_issues(recipe))  # what train.adversarial cannot do
    from danlu.train._privacy import privacy_issues

    issues.extend(privacy_issues(recipe))  # what train.privacy (DP-SGD) cannot do
    if train.distill is not None and (train.distributed or recipe.model.type in ("gbdt", "auto")):
        issues.append(
            ConfigIssue(
                ("train", "distill"),
                "distillation trains one network in one process on the teacher's outputs",
                "train.distributed" if train.distributed else f"model type {recipe.model.type}",
                "Remove train.distill, or train without train.distributed with a network "
                "(mlp, cnn, ...).",
            )
        )
    raise_issues(issues, recipe._source)
    return options


def make_context(
    recipe: StrPath | Mapping[str, Any] | Recipe,
    *,
    overrides: Iterable[str] = (),
    store: Store | None = None,
    home: StrPath | None = None,
    **settings: Any,
) -> Context:
    """Load and validate the recipe (the one time a run does) into a fresh :class:`Context`.

    ``settings`` are the context's own (``callbacks``, ``resume``, ``run_stage``, ``parent_id``,
    ``tags``, ``run_name``, ``data``, ``on_section``); the store is opened from ``home`` unless
    given.

    Example:
        >>> # ctx = make_context("examples/wine_mlp.yaml", overrides=["train.epochs=2"])
        >>> # Runner(TRAINING_PLAN).run(ctx).metrics
    """
    from danlu.store import SqlStore

    recipe = load_recipe(recipe, overrides)
    options = check_recipe(recipe)
    store = store or SqlStore(home=home)
    return Context(recipe, recipe_to_dict(recipe), options, store, **settings)


def prepare_recipe_data(recipe: Recipe, task: Any, frame: Any = None) -> PreparedData:
    """:func:`danlu.models.prepare_recipe_data` (kept here: the stages below import it)."""
    from danlu.models import prepare_recipe_data as prepare

    return prepare(recipe, task, frame=frame)


def prepare_stage(ctx: Context) -> Context:
    """Prepare the data (unless given), build the task and the untrained model.

    Runs before the run exists, so bad data or a model that does not fit the data leaves no
    run behind; its artifacts (preprocessing, data report and quality) wait for the run.
    """
    from danlu.data import quality_html
    from danlu.models import MODELS
    from danlu.tasks import get_task
    from danlu.train._lm_base import use_store
    from danlu.train._loop import seed_everything

    recipe = ctx.recipe
    if recipe.train.metrics is not None:  # a taken port is refused before the run exists
        from danlu.train._distributed import active_strategy
        from danlu.train._monitor import metrics_endpoint

        if active_strategy().is_main:
            metrics_endpoint(recipe.train.metrics)
    task = get_task(recipe.task)
    with use_store(ctx.store):  # a model.base (a language model's) is read from the run's store
        data = ctx.data if ctx.data is not None else prepare_recipe_data(recipe, task)
        ctx.data, ctx.task = data, task.configure(recipe, data)
        seed_everything(recipe.train.seed)  # model initialisation depends on it
        ctx.model = MODELS.get(recipe.model.type).builder(ctx.options, data.schema, ctx.task)
    ctx.log_artifact("preprocessing.json", json.dumps(data.preprocessor.to_dict(), indent=1))
    ctx.log_artifact("data_report.json", json.dumps(data.report, indent=1))
    if data.quality:
        ctx.log_artifact("data_quality.json", json.dumps(data.quality, indent=1))
        ctx.log_artifact("data_quality.html", quality_html(data.quality, page=True))
    return ctx


def train_stage(ctx: Context) -> Context:
    """Train the model (from the run's checkpoint when resuming), then its test metrics and the
    model files: weights, model card, drift reference, summary.

    A model a library fits (``gbdt``) trains through :class:`~danlu.train.BoostingTrainer`;
    ``model: {type: auto}`` trains each candidate and keeps the best (``_auto.py``)."""
    from danlu.data import row_accounting
    from danlu.train._boost import BoostingTrainer, is_boosted
    from danlu.train._checkpoint import load_checkpoint
    from danlu.train._energy import EnergyMeter, EnergyReading
    from danlu.train._loop import Trainer, resolve_device

    recipe, data, task, tracker = ctx.recipe, ctx.data, ctx.task, ctx.tracker
    assert data is not None and task is not None and ctx.model is not None and tracker is not None
    checkpoint = tracker.artifact_path("checkpoint.safetensors")
    from danlu.train._classical import ClassicalTrainer, is_classical

    engine: Any = (
        ClassicalTrainer
        if is_classical(ctx.model)
        else BoostingTrainer
        if is_boosted(ctx.model)
        else Trainer
    )
    distill: dict[str, Any] = (  # train.distill: the teacher, loaded and checked
        {"teacher": _distill_teacher(ctx)} if recipe.train.distill is not None else {}
    )
    from danlu.train._monitor import end_training_metrics, training_metrics

    meter = EnergyMeter(device=str(resolve_device(recipe.train.device))).start()
    progress = training_metrics(ctx, meter)  # train.metrics: its callback joins ctx.callbacks
    trainer: Any = engine(
        recipe.train,
        callbacks=ctx.callbacks,
        tracker=tracker,
        checkpoint_path=checkpoint if recipe.train.checkpoint.every else None,
        **distill,
    )
    resuming = ctx.previous is not None and checkpoint.exists()
    if ctx.previous is not None:  # points logged after the checkpoint will be logged again
        epoch = load_checkpoint(checkpoint)["epoch"] if resuming else 0
        ctx.store.delete_metrics_after(tracker.run_id, epoch)
    trained = False
    try:
        if recipe.model.type == "auto":
            from danlu.train._auto import select_model

            trainer = select_model(ctx)  # the winner, trained
            task = ctx.task
            assert task is not None
        else:
            trainer.fit(ctx.model, task, data, resume=resuming)
        trained = True
    finally:  # an interrupted session's time and energy count too (a resume adds to them)
        end_training_metrics(ctx, progress)  # later stages train without it
        reading = meter.stop()
        if trained:  # a rank of a torchrun job: every rank's time and energy
            from danlu.train._distributed import active_strategy

            reading = active_strategy().after_fit(reading, tracker.run_id)
        if ctx.previous is not None:
            earlier = EnergyReading.from_run(ctx.previous.metrics, ctx.previous.tags)
            reading = earlier.add(reading) if earlier else reading
        tracker.log_metrics(reading.to_metrics(), step=trainer.epoch)
        ctx.store.set_tags(tracker.run_id, reading.to_tags())
        ctx.energy = reading
    if task.fits_decoding and data.stream is None and len(data.y_val):
        decoding = task.fit_decoding(
            trainer.predict_outputs(data.x_val).numpy(), data.y_val, data.schema
        )
        if decoding is not None:  # e.g. per-label thresholds: saved with the model, used below
            ctx.log_artifact("decoding.json", json.dumps(decoding, indent=1))
            task = ctx.task = task.with_decoding(decoding)
    if data.stream is None:
        test_outputs, y_test = trainer.predict_outputs(data.x_test).numpy(), data.y_test
    else:  # streamed test rows: only the model's outputs and the targets are kept
        outputs, targets = trainer.stream_outputs(data.stream, "test")
        test_outputs, y_test = outputs.numpy(), targets.numpy()
    all_metrics = task.metrics(test_outputs, y_test, data.schema) if len(y_test) else {}
    ctx.metrics = {k: v for k, v in all_metrics.items() if isinstance(v, float)}
    ctx.details = {k: v for k, v in all_metrics.items() if not isinstance(v, float)}
    ctx.model, ctx.history, ctx.best_epoch = trainer.model, trainer.history_, trainer.best_epoch
    tracker.log_metrics({f"test_{k}": v for k, v in ctx.metrics.items()}, step=trainer.epoch)
    if (tested_on := tested_rows_fingerprint(data)) is not None:  # runs compare: same test rows?
        ctx.store.set_tags(tracker.run_id, {"test_fingerprint": tested_on})
    tracker.log_metrics(
        {"best_epoch": trainer.best_epoch, "epochs_run": trainer.epoch}, step=trainer.epoch
    )
    rows = row_accounting(data.report)
    tracker.log_metrics(_row_metrics(rows), step=trainer.epoch)
    if getattr(trainer, "native", None):  # trees read out of a library, checked against it
        native_file = "classical.json" if is_classical(trainer.model) else "trees.json"
        ctx.log_artifact(native_file, json.dumps(trainer.native, indent=1))
    total = sum(p.numel() for p in ctx.model.parameters())
    if total:  # LoRA / a frozen base: the share that trained
        trainable = sum(p.numel() for p in ctx.model.parameters() if p.requires_grad)
        ctx.details["parameters"] = {"total": total, "trainable": trainable}
    if getattr(trainer, "selection", None):  # auto: every candidate's figures
        ctx.details["model_selection"] = trainer.selection
    from danlu.train._privacy import privacy_record

    if (privacy := privacy_record(trainer)) is not None:  # DP-SGD: the ε spent, δ, noise ...
        ctx.details["privacy"] = privacy
    _save_outputs(ctx)
    summary = {
        "run_id": tracker.run_id,
        "recipe": recipe.name,
        "task": recipe.task,
        "test": ctx.metrics,
        **ctx.details,
        "best_epoch": trainer.best_epoch,
        "epochs_run": trainer.epoch,
        "final": trainer.history_[-1] if trainer.history_ else {},
        "history": trainer.history_,
        "data_fingerprint": data.raw_fingerprint,
        "prepared_fingerprint": data.fingerprint,
        "rows": rows,
    }
    ctx.log_artifact("summary.json", json.dumps(summary, indent=1))
    if checkpoint.exists():
        tracker.record_artifact("checkpoint.safetensors")
    return ctx


def _distill_teacher(ctx: Context) -> torch.nn.Module:
    """``train.distill``'s teacher, loaded from the store and checked against the student
    before training (``_distill.py``); the run is tagged with what it resolved to."""
    from danlu.errors import ConfigError
    from danlu.train._boost import is_boosted
    from danlu.train._distill import check_teacher, load_teacher

    distill, data, task = ctx.recipe.train.distill, ctx.data, ctx.task
    assert distill is not None and data is not None and task is not None
    assert ctx.model is not None and ctx.tracker is not None
    if ctx.recipe.model.type == "auto" or is_boosted(ctx.model):
        raise ConfigError(
            f"train.distill trains a network on a teacher's outputs; model type "
            f"{ctx.recipe.model.type!r} is not trained by the engine. Remove train.distill or "
            "choose a network (mlp, cnn, ...)."
        )
    bundle, source = load_teacher(ctx.store, distill.teacher)
    check_teacher(bundle, ctx.model, data, task)
    ctx.store.set_tags(ctx.tracker.run_id, {"distill_teacher": source})
    return bundle.model


_SUMMARY_KEYS = {"run_id", "recipe", "task", "test", "best_epoch", "epochs_run", "final"}
_SUMMARY_KEYS |= {"history", "data_fingerprint", "prepared_fingerprint", "rows"}


def _row_metrics(rows: dict[str, Any]) -> dict[str, float]:
    """The row accounting as run metrics: ``rows_loaded``, ``rows_dropped_<step>``,
    ``rows_<split>`` (so ``danlu runs`` can show and compare them)."""
    metrics = {"rows_loaded": float(rows["loaded"])}
    metrics.update({f"rows_dropped_{k}": float(v) for k, v in rows["dropped"].items()})
    metrics.update({f"rows_{k}": float(v) for k, v in rows["used"].items()})
    return metrics


def reload_trained(ctx: Context) -> Context:
    """The train stage's outputs from a run that finished training in an earlier session: the
    weights into the model the prepare stage built, the metrics from ``summary.json``."""
    from danlu.models import load_weights
    from danlu.models._base_weights import BASE_CARD_KEY, load_stored_state, resolve_base
    from danlu.train._energy import EnergyReading

    assert ctx.model is not None and ctx.previous is not None
    weights = read_bytes(ctx.store.artifact_path(ctx.run_id, "model.safetensors"))
    card = json.loads(read_bytes(ctx.store.artifact_path(ctx.run_id, "model.json")))
    if ctx.recipe.model.type == "auto":  # the model the run chose, as its card describes it
        from danlu.config import ModelConfig
        from danlu.models import build_model

        config = ModelConfig.model_validate({**card["options"], "type": card["type"]})
        assert ctx.data is not None and ctx.task is not None
        ctx.model, ctx.model_type = build_model(config, ctx.data.schema, ctx.task), card["type"]
    where = f"Run {ctx.run_id}"
    separate = BASE_CARD_KEY in card  # adapter and head only: the base must be the same one
    tensors = load_weights(weights, f"{where}/model.safetensors")
    if separate:
        resolve_base(card, None, where)  # the base the prepare stage loaded, hash checked
        load_stored_state(
            ctx.model, tensors, base_separate=True, where=f"{where}/model.safetensors"
        )
    else:
        ctx.model.load_state_dict(tensors)
    ctx.model.eval()
    from danlu.models._trees import TreeEnsemble

    if isinstance(ctx.model, TreeEnsemble):  # trees: the library's own model, when it has one
        from danlu.models._gbdt import NATIVE_FILES

        for library, file in NATIVE_FILES.items():
            if (path := ctx.store.artifact_path(ctx.run_id, file)).is_file():
                ctx.model.native_model = (library, read_bytes(path))
    decoding = ctx.store.artifact_path(ctx.run_id, "decoding.json")
    if decoding.is_file() and ctx.task is not None:
        ctx.task = ctx.task.with_decoding(json.loads(read_bytes(decoding)))
    summary = json.loads(read_bytes(ctx.store.artifact_path(ctx.run_id, "summary.json")))
    ctx.metrics = dict(summary["test"])
    ctx.details = {k: v for k, v in summary.items() if k not in _SUMMARY_KEYS}
    ctx.history, ctx.best_epoch = list(summary.get("history", [])), int(summary["best_epoch"])
    ctx.energy = EnergyReading.from_run(ctx.previous.metrics, ctx.previous.tags)
    ctx.files["model.safetensors"] = len(weights)
    return ctx


PREPARE = Stage("prepare", prepare_stage, phase="before_run")
TRAIN = Stage("train", train_stage, restore=reload_trained)
TRAINING_PLAN = (PREPARE, TRAIN)  # run_training; pipeline.PLAN adds evaluate and register


def _save_outputs(ctx: Context) -> None:
    """The model's files: safetensors weights, the model card and the drift reference."""
    from safetensors.torch import save as st_save

    from danlu.models._base_weights import BASE_CARD_KEY, base_identity, stored_state

    assert ctx.model is not None and ctx.data is not None
    recipe, data, options = ctx.recipe, ctx.data, ctx.options
    model_type = ctx.model_type or recipe.model.type  # auto: the candidate that won
    # LoRA / frozen base: the adapters and head only; the card names the base and its hash
    weights = st_save(stored_state(ctx.model, model_type, options))
    ctx.log_artifact("model.safetensors", weights)
    ctx.files["model.safetensors"] = len(weights)
    native = getattr(ctx.model, "native_model", None)
    if native is not None:  # the library's own text / JSON model of the trees: exact TreeSHAP
        from danlu.models._gbdt import NATIVE_FILES

        library, raw = native
        ctx.log_artifact(NATIVE_FILES[library], raw)
    spec = (
        options.model_dump(mode="json") if hasattr(options, "model_dump") else dict(options or {})
    )
    model_card = {
        "type": model_type,
        "options": spec,
        "task": recipe.task,
        "schema": data.schema.to_dict(),
    }
    if (base := base_identity(model_type, options)) is not None:
        model_card[BASE_CARD_KEY] = base
    if "privacy" in ctx.details:  # trained with DP-SGD: the ε spent travels with the model
        model_card["privacy"] = ctx.details["privacy"]
    ctx.log_artifact("model.json", json.dumps(model_card, indent=1))
    if len(data.x_train):  # the training distribution a server compares its inputs with (PSI)
        from danlu.data import drift_reference

        reference = drift_reference(data.x_train, data.schema)
        ctx.log_artifact("drift_reference.json", json.dumps(reference))


def tested_rows_fingerprint(data: PreparedData) -> str | None:
    """sha256 of the rows a run is tested on: the data's fingerprint and the raw test rows
    (every column, in order), so runs whose test metrics are comparable share it whatever their
    preprocessing. None when the test rows are not in memory (``data.stream``) or there are none.
    """
    import hashlib

    import numpy as np
    import pandas as pd

    if data.stream is not None or not len(data.y_test):
        return None
    digest = hashlib.sha256(f"{data.raw_fingerprint}:{len(data.y_test)}".encode())
    frame = data.test_frame
    try:
        if len(frame) != len(data.y_test):
            raise TypeError("the raw test rows are not kept")
        digest.update("\0".join(map(str, frame.columns)).encode())
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    except TypeError:  # cells that do not hash (lists, arrays): the prepared test inputs
        digest.update(np.ascontiguousarray(data.x_test).tobytes())
    return digest.hexdigest()


def run_training(
    recipe: StrPath | Mapping[str, Any] | Recipe,
    *,
    overrides: Iterable[str] = (),
    callbacks: Sequence[Callback] = (),
    home: StrPath | None = None,
    resume: StrPath | None = None,
    store: Store | None = None,
    stage: str = "train",
    parent_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    prepared: PreparedData | None = None,
    run_name: str | None = None,
) -> Result:
    """Train a recipe, record the run in the store, and return the model with its metrics.

    The plan prepare → train through the :class:`~danlu.train.Runner` (tuning trials, the tuning
    refit and cross-validation folds run it); :func:`danlu.run` adds the trust report and
    registration. Nothing is registered here.

    Args:
        recipe: a YAML path, a mapping or a :class:`~danlu.config.Recipe`.
        overrides: ``key.path=value`` strings applied on top of the recipe.
        callbacks: extra engine callbacks (progress bars, user hooks).
        home: where the store lives (default ``$DANLU_HOME`` or ``./.danlu``).
        resume: a run id (or its artifact folder) to continue: from the stage that failed, and
            within training from the last checkpoint.
        store: an open store to use instead of opening one from ``home``.
        stage: the run's stage in the store (``tune-trial`` for a tuning trial).
        parent_id: the run this one belongs to (a tuning trial's study run).
        tags: extra tags for the run.
        prepared: data already prepared from this recipe's ``data`` block and task (tuning
            reuses it across trials whose space does not touch ``data``).
        run_name: the run's name (default the recipe's name, which is also its experiment).

    Example:
        >>> from danlu.train import run_training
        >>> result = run_training("examples/wine_mlp.yaml", overrides=["train.epochs=2"])  # doctest: +SKIP
        >>> result.metrics["accuracy"]  # doctest: +SKIP
    """
    ctx = make_context(
        recipe,
        overrides=overrides,
        store=store,
        home=home,
        callbacks=callbacks,
        resume=resume,
        run_stage=stage,
        parent_id=parent_id,
        tags=dict(tags or {}),
        data=prepared,
        run_name=run_name,
    )
    return Result.from_context(Runner(TRAINING_PLAN).run(ctx))
