"""``danlu run``: the full plan of a recipe, run by the stage runner.

A recipe resolves to an ordered list of stages — prepare → train → evaluate → compress →
register+export, the later ones when the recipe asks for them — each a plain function of a typed
:class:`~danlu.train.Context` that returns it. :func:`plan` is that list; adding a stage (say
compression, on the roadmap) is one function and one line in it.

The split with the layers below (imports point down, DESIGN.md): the runner's mechanics (the
context, :class:`~danlu.train.Stage`, the :class:`~danlu.train.Runner` that validates the recipe
once, opens the run once, times and records each stage, marks failures and resumes from the
stage that failed) and the prepare and train stages live in ``danlu.train``, because tuning
trials, the tuning refit and cross-validation folds (``danlu.tune``, ``danlu.evaluate``) run the
same prepare → train plan (:func:`danlu.train.run_training`) and must not import this module.
This module owns the plan and the stages that only ``danlu run`` has: the trust report
(``evaluate:``) and registration with its ONNX export (``register:``, through
:func:`danlu.export.register_model`, the one step every way of registering uses).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from danlu.config import Recipe
from danlu.types import StrPath

if TYPE_CHECKING:
    import pandas as pd

    from danlu.config import EvaluateConfig
    from danlu.store import ModelVersion, SqlStore, Store
    from danlu.train import Context, Stage
    from danlu.train._callbacks import Callback
    from danlu.train._run import Result, check_recipe
    from danlu.tune import TuneResult

__all__ = [
    "Result",
    "check_recipe",
    "add_report",
    "plan",
    "recipe_json_schema",
    "register_run",
    "run",
    "tune",
]

_PARITY_ROWS = 256  # test rows the ONNX export's parity check runs on


def __getattr__(name: str) -> Any:
    """``Result`` and ``check_recipe`` live in ``danlu.train`` (loaded lazily: importing this
    module must not import torch)."""
    if name in {"Result", "check_recipe"}:
        from danlu.train import _run

        return getattr(_run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run(
    recipe: StrPath | Mapping[str, Any] | Recipe,
    *,
    data: pd.DataFrame | None = None,
    overrides: Iterable[str] = (),
    callbacks: Sequence[Callback] = (),
    home: StrPath | None = None,
    resume: StrPath | None = None,
    store: Store | None = None,
    on_section: Callable[[str], None] | None = None,
    tags: Mapping[str, str] | None = None,
) -> Result:
    """Run a recipe end to end: prepare, train, make the trust report (``evaluate:``), register
    and export (``register:``).

    The report (``report.html``, ``report.json``) is stored with the run and, when the recipe
    registers the model, with the new version; a temperature fitted by
    ``evaluate.calibration.temperature`` is saved with the model (``calibration.json``). Each
    stage's status and seconds are recorded on the run (``stages.json``, metrics
    ``stage_<name>_seconds``) and returned in ``Result.stages``. Arguments are those of
    :func:`danlu.train.run_training`; ``resume`` continues a run from the stage that failed
    (training from its last checkpoint; a run whose training finished is not trained again).
    ``on_section`` is called with each report section's key as it starts. ``tags`` are set on a
    new run (a queued job's runs carry ``job=<id>``).

    ``data`` is a DataFrame to train on in place of ``data.source`` (which the recipe may then
    leave out): the run records ``data.source: dataframe:<first 12 hex digits of the frame's
    fingerprint>`` and the frame's fingerprint as its data fingerprint. Cross-validation
    (``evaluate.cross_validation``) reads ``data.source`` again, so it needs a file.

    Example:
        >>> import danlu
        >>> result = danlu.run("examples/breast_cancer_mlp.yaml")  # doctest: +SKIP
        >>> result.report.summary, [(s.name, s.seconds) for s in result.stages]  # doctest: +SKIP
    """
    from danlu.train import Result, Runner, make_context

    if data is not None:  # the frame stands in for data.source; the recipe records which one
        from danlu.data import DATAFRAME_PREFIX, fingerprint_frame

        overrides = [*overrides, f"data.source={DATAFRAME_PREFIX}{fingerprint_frame(data)[:12]}"]
    ctx = make_context(
        recipe,
        overrides=overrides,
        store=store,
        home=home,
        callbacks=callbacks,
        resume=resume,
        on_section=on_section,
        tags=dict(tags or {}),
    )
    if ctx.recipe.train.distributed is not None:  # torchrun's ranks train; this process reports
        ctx, node0 = _trained_by_ranks(ctx, frame=data is not None)
        if not node0:  # another machine of a multi-node job: the run as node 0 trained it
            return Result.from_context(ctx)
    elif data is not None:
        from danlu.tasks import get_task
        from danlu.train._run import prepare_recipe_data

        ctx.data = prepare_recipe_data(ctx.recipe, get_task(ctx.recipe.task), frame=data)
    return Result.from_context(Runner(plan()).run(ctx))


def _trained_by_ranks(ctx: Context, *, frame: bool) -> tuple[Context, bool]:
    """Train on ``train.distributed``'s ranks through torchrun (``danlu.train._torchrun``), then
    the context that resumes their finished run here: training is reloaded, not redone, and the
    later stages (evaluate, register) run in this process as for any run. On a machine other
    than node 0, the run read back (and False: nothing more runs there)."""
    from danlu.errors import ConfigError
    from danlu.train import check_device, make_context
    from danlu.train._runner import _resume_id
    from danlu.train._torchrun import launch

    if frame:
        raise ConfigError(
            "train.distributed: each rank reads data.source itself, so a DataFrame passed as "
            "data= cannot reach them. Save it (frame.to_parquet('rows.parquet')) and set "
            "data.source to the file."
        )
    check_device(ctx.recipe)  # a recipe this machine cannot run never launches
    resume = _resume_id(ctx.resume) if ctx.resume is not None else None
    run_id = launch(ctx.recipe, store=ctx.store, resume=resume, tags=ctx.tags)
    config = ctx.recipe.train.distributed
    if config is not None and config.node_rank > 0:  # node 0 evaluates and registers the run
        return _reloaded(ctx, run_id), False
    resumed = make_context(
        ctx.recipe,
        store=ctx.store,
        callbacks=ctx.callbacks,
        resume=run_id,
        on_section=ctx.on_section,
    )
    return resumed, True


def _reloaded(ctx: Context, run_id: str) -> Context:
    """The run as node 0 trained it, read back without writing anything (another machine of a
    multi-node job: its ``danlu run`` returns the run, node 0 alone evaluates and registers)."""
    from types import SimpleNamespace
    from typing import cast

    from danlu.logging import get_logger
    from danlu.train import PREPARE, TRAIN, Runner
    from danlu.train._run import reload_trained

    get_logger(__name__).info("this node's ranks are done; node 0 records run %s", run_id)
    ctx = Runner([PREPARE, TRAIN]).check(ctx)  # data and the untrained model; nothing written
    ctx.previous = ctx.store.get_run(run_id)
    ctx.tracker = cast(Any, SimpleNamespace(run_id=run_id))  # read-only: only its id is used
    return reload_trained(ctx)


def add_report(
    run_id: str,
    *,
    store: Store,
    evaluate: EvaluateConfig | None = None,
    on_section: Callable[[str], None] | None = None,
) -> Result:
    """The trust report of a finished run, made by ``danlu run``'s own evaluate stage.

    The stage runner resumes the run with the recipe it was trained with (``evaluate`` replaces
    its ``evaluate:`` block when given): the trained weights are reloaded, not trained again, the
    evaluate stage runs, and the report is stored with the run as ``danlu run`` stores it. Nothing
    is registered. ``danlu tune`` reports its winner this way before registering it.

    Example:
        >>> # add_report(trial_run_id, store=SqlStore()).report.summary
    """
    from danlu.train import Result, Runner, make_context

    recipe = dict(store.get_run(run_id).recipe or {})
    if evaluate is not None:
        recipe["evaluate"] = evaluate.model_dump(mode="json")
    ctx = make_context(recipe, store=store, resume=run_id, on_section=on_section)
    in_run = [stage for stage in plan() if stage.phase != "after_run"]
    return Result.from_context(Runner(in_run).run(ctx))


def tune(
    recipe: StrPath | Mapping[str, Any] | Recipe,
    *,
    on_section: Callable[[str], None] | None = None,
    **options: Any,
) -> TuneResult:
    """``danlu tune``: search the recipe's ``tune:`` space (:func:`danlu.tune.tune`, whose
    keyword arguments ``options`` are); when the recipe has ``evaluate:``, the winner gets its
    trust report from the evaluate stage of ``danlu run`` (:func:`add_report`) before it is
    registered, so the registered version carries ``report.html`` / ``report.json`` like any
    ``danlu run`` model. ``on_section`` is called with each report section's key as it starts.

    Example:
        >>> from danlu.pipeline import tune
        >>> result = tune("examples/digits_tune.yaml", overrides=["tune.trials=2"])  # doctest: +SKIP
        >>> result.report.summary  # doctest: +SKIP
    """
    from danlu.config import load_recipe
    from danlu.store import SqlStore
    from danlu.train import Runner, make_context
    from danlu.tune import tune as tune_study

    def report(store: SqlStore, run_id: str, evaluate: EvaluateConfig) -> Any:
        return add_report(run_id, store=store, evaluate=evaluate, on_section=on_section).report

    given = options.pop("store", None)
    store = given or SqlStore(home=options.pop("home", None))
    try:
        loaded = load_recipe(recipe, options.get("overrides", ()))
        if loaded.evaluate is not None and loaded.tune is not None:
            # the winner's report must be possible before any trial runs (its checks need the
            # prepared data: a fairness column, test rows in memory)
            Runner(plan()).check(make_context(loaded, store=store))
        return tune_study(recipe, store=store, report_winner=report, **options)
    finally:
        if given is None:
            store.close()


def plan() -> list[Stage]:
    """Every stage ``danlu run`` knows, in order; each says when a recipe asks for it."""
    from danlu.train import PREPARE, TRAIN, Stage

    return [
        PREPARE,
        TRAIN,
        Stage("evaluate", evaluate_stage, when=_has("evaluate"), check=check_evaluate),
        Stage("register", register_stage, when=_has("register"), phase="after_run"),
        # after registration: the variants are versions of the model, tagged with their parent
        Stage("compress", _compress_stage, when=_has("compress"), phase="after_run"),
    ]


def _compress_stage(ctx: Context) -> Context:
    from danlu.compress import compress_stage

    return compress_stage(ctx)


def _has(block: str) -> Callable[[Recipe], bool]:
    return lambda recipe: getattr(recipe, block, None) is not None


def check_evaluate(ctx: Context) -> None:
    """Before any training: the report needs the test rows in memory and the fairness column."""
    from danlu.errors import ConfigError
    from danlu.evaluate import check_fairness_group

    assert ctx.data is not None
    if ctx.recipe.data.stream is not None:
        raise ConfigError(
            "evaluate: needs the test rows in memory, and data.stream reads them in chunks. "
            "Remove the evaluate block and run `danlu evaluate RUN --data FILE` on a sample."
        )
    check_fairness_group(ctx.recipe.evaluate, ctx.data.test_frame)


def _forecast_sections(ctx: Context) -> list[Any]:
    """The forecasting sections of the trust report: the backtest ``model: {type: auto}``
    chose by (else the run's model against the seasonal naive and ETS baselines over the same
    rolling origins), the test block's forecast with its interval, residual diagnostics."""
    import json

    from danlu.errors import DanluError
    from danlu.evaluate._context import Section
    from danlu.evaluate._forecast_report import forecast_sections
    from danlu.train._backtest import report_backtest

    assert ctx.data is not None and ctx.model is not None and ctx.data.series is not None
    model_type = ctx.model_type or ctx.recipe.model.type
    table = (ctx.details.get("model_selection") or {}).get("backtest")
    failed = None
    if table is None:
        try:
            table = report_backtest(ctx.recipe, ctx.options, ctx.data.series, model_type)
        except DanluError as exc:
            failed = str(exc)
        else:
            ctx.log_artifact("backtest.json", json.dumps(table, indent=1))
    sections = forecast_sections(ctx.model, ctx.data, table, shipped=model_type)
    if failed is not None:
        skipped = Section("backtest", "Backtest", data={"skipped": failed})
        skipped.flags.append(f"the backtest could not run: {failed}")
        sections.insert(0, skipped)
    return sections


def evaluate_stage(ctx: Context) -> Context:
    """The trust report of the trained model, stored with the run (``report.html``/``.json``,
    ``calibration.json`` with a fitted temperature) and summarised in run metrics."""
    from danlu.evaluate import EvalData, build_report, save_report

    recipe, data, model, task = ctx.recipe, ctx.data, ctx.model, ctx.task
    assert recipe.evaluate is not None and data is not None and model is not None and task
    energy = ctx.energy
    eval_data = EvalData.from_prepared(
        model,
        task,
        data,
        files=dict(ctx.files),
        run_metrics=energy.to_metrics() if energy else {},
        run_tags=energy.to_tags() if energy else {},
        history=list(ctx.history),
        privacy=ctx.details.get("privacy"),  # trained with DP-SGD: the ε it spent
    )
    subject = {
        "run_id": ctx.run_id,
        "run_name": ctx.run_name,
        "recipe": recipe.name,
        "task": recipe.task,
        "model_type": ctx.model_type or recipe.model.type,
        "data": f"test split of {recipe.data.source}",
        "rows": len(data.y_test),
    }
    report = build_report(
        eval_data,
        recipe.evaluate,
        subject=subject,
        recipe=recipe,
        store=ctx.store,
        run_id=ctx.run_id,
        on_section=ctx.on_section,
        callbacks=ctx.callbacks,
    )
    if getattr(data, "series", None) is not None:  # forecasting: backtest, forecast, residuals
        report.sections[1:1] = _forecast_sections(ctx)
    elif "model_selection" in ctx.details:  # model.type auto: the candidates, after the metrics
        from danlu.evaluate._selection import model_selection_section

        report.sections.insert(1, model_selection_section(ctx.details["model_selection"], task))
    temperature = eval_data.temperature
    save_report(
        ctx.store, report, run_id=ctx.run_id, temperature=temperature if temperature != 1 else None
    )
    _log_report_metrics(ctx.store, ctx.run_id, report)
    # the test metrics of the model as served (after a kept temperature): the report's, so
    # `danlu run`'s table, Result.metrics, the run's test_* metrics and the report agree
    served = report.test_metrics()
    ctx.metrics = {k: served.get(k, v) for k, v in ctx.metrics.items()}
    if temperature != 1 and ctx.tracker is not None:
        ctx.tracker.log_metrics(
            {f"test_{k}": v for k, v in ctx.metrics.items()}, step=len(ctx.history)
        )
    ctx.report, ctx.temperature = report, temperature
    return ctx


def register_stage(ctx: Context) -> Context:
    """Register the finished run's model (report and calibration included) and export it."""
    from danlu.export import register_model

    register, data = ctx.recipe.register, ctx.data
    assert register is not None and data is not None
    ctx.registered = register_model(
        ctx.store,
        ctx.run_id,
        register.name,
        register.alias,
        schema=data.schema,
        task=ctx.task,
        sample=data.x_test[:_PARITY_ROWS],
    )
    return ctx


def register_run(
    store: Store, run_id: str, name: str, alias: str | None = None, *, actor: str | None = None
) -> ModelVersion:
    """Register a finished run's model without exporting it (for tools that export later);
    ``danlu run``, ``danlu tune`` and ``danlu models register`` use
    :func:`danlu.export.register_model`, which exports too.

    Example:
        >>> # mv = register_run(SqlStore(), result.run_id, "digits")
    """
    from danlu.export import register_model

    return register_model(store, run_id, name, alias, actor=actor, export=False)


def _log_report_metrics(store: Store, run_id: str, report: Any) -> None:
    """A few report figures as run metrics, so `danlu runs ls` can compare them."""
    from danlu.store import MetricPoint

    values: dict[str, float] = {}
    calibration = report.section("calibration")
    if calibration is not None and calibration.data.get("ece") is not None:
        values["ece"] = float(calibration.data["ece"])
    cv = report.section("cross_validation")
    if cv is not None:
        for name, stats in cv.data.get("metrics", {}).items():
            values[f"cv_{name}_mean"], values[f"cv_{name}_std"] = stats["mean"], stats["std"]
    if values:
        store.log_metrics(run_id, [MetricPoint(k, v) for k, v in values.items()])


def recipe_json_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe, with each registered model's options under ``model`` and
    the registered tasks under ``task``."""
    from danlu.models import MODELS
    from danlu.tasks import TASKS

    schema = Recipe.model_json_schema()
    schema["properties"]["task"] = {
        "description": schema["properties"]["task"].get("description", ""),
        "enum": TASKS.names(),
    }
    variants = []
    for entry in MODELS:
        if entry.spec is None:
            continue
        spec = entry.spec.model_json_schema()
        spec["properties"] = {"type": {"const": entry.name}, **spec.get("properties", {})}
        spec["required"] = ["type", *spec.get("required", [])]
        spec.pop("title", None)
        variants.append(spec)
    variants.append(
        {
            "type": "object",
            "properties": {"type": {"type": "string", "pattern": r"^[\w.]+:\w+$"}},
            "required": ["type"],
            "description": "A user model: package.module:function.",
        }
    )
    schema["$defs"]["ModelConfig"] = {
        "description": schema["$defs"]["ModelConfig"].get("description", ""),
        "anyOf": variants,
    }
    return schema
