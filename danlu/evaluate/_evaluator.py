"""The evaluator: runs the report's sections on a model and its data, and stores the report.

``build_report`` works on any :class:`EvalData`; ``evaluate_run`` and ``evaluate_model`` load a
stored run or registered version with its data (the recipe's test split, or a file passed with
``data=``), build the report, and store ``report.html`` and ``report.json`` beside the model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from danlu.config import EvaluateConfig, Recipe
from danlu.errors import DanluError, DataError, StoreError
from danlu.evaluate._context import EvalData, Section
from danlu.evaluate._report import SECTION_ORDER, Report
from danlu.logging import get_logger
from danlu.store._crypt import plaintext_size, read_bytes
from danlu.types import StrPath

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from danlu.data import FeatureSchema, PreparedData
    from danlu.models import ModelBundle
    from danlu.store import Run, Store
    from danlu.train._callbacks import Callback

__all__ = [
    "build_report",
    "check_columns",
    "check_fairness_group",
    "evaluate_model",
    "evaluate_run",
    "save_report",
]

log = get_logger(__name__)

_TITLES = {
    "metrics": "Metrics",
    "training": "Training",
    "baselines": "Baselines",
    "cross_validation": "Cross-validation",
    "calibration": "Calibration",
    "fairness": "Fairness",
    "robustness": "Robustness",
    "privacy": "Privacy",
    "membership": "Membership inference",
    "explain": "Explanations",
    "cost": "Cost",
}
OnSection = Callable[[str], None]


def check_fairness_group(config: EvaluateConfig | None, frame: pd.DataFrame) -> None:
    """Raise DataError when the fairness group column is not among the raw rows' columns.

    Checked before training, so a typo in ``evaluate.fairness.group`` costs nothing.
    """
    if config is None or config.fairness is None:
        return
    group = config.fairness.group
    if group not in frame.columns:
        from danlu.registry import did_you_mean

        columns = [str(c) for c in frame.columns]
        raise DataError(
            f"evaluate.fairness.group: column '{group}' is not in the data.{did_you_mean(group, columns)} "
            f"Choose one of {', '.join(columns[:20])}{' ...' if len(columns) > 20 else ''}."
        )


def _timed(key: str, compute: Callable[[], Section], on_section: OnSection | None) -> Section:
    if on_section is not None:
        on_section(key)
    start = time.perf_counter()
    try:
        section = compute()
    except DanluError:  # bad input: the user's to fix, reported as such
        raise
    except Exception as exc:  # a bug in one section must not cost the whole report
        log.exception("The %s section failed", key)
        section = Section(key, _TITLES[key], data={"error": f"{type(exc).__name__}: {exc}"})
        section.flags.append(f"this section failed ({type(exc).__name__}: {exc}); see the log")
    section.seconds = time.perf_counter() - start
    return section


def build_report(
    data: EvalData,
    config: EvaluateConfig,
    *,
    subject: dict[str, Any],
    recipe: Recipe | None = None,
    store: Store | None = None,
    run_id: str | None = None,
    fit_temperature: bool = True,
    on_section: OnSection | None = None,
    callbacks: Sequence[Callback] = (),
) -> Report:
    """Run every section ``config`` asks for on ``data`` and assemble the report.

    With ``calibration.temperature`` and ``fit_temperature``, a temperature fitted on the
    validation split and kept (it lowers held-out validation log-loss beyond noise) is applied to
    ``data`` before the other sections (``data.temperature``), so the report describes the model
    as served. Cross-validation needs ``recipe`` and ``store`` (its fold runs become children of
    ``run_id``). ``data.history`` adds the training curves.

    Example:
        >>> # report = build_report(EvalData.from_prepared(model, task, prepared), EvaluateConfig(),
        >>> #                       subject={"run_id": run_id})
    """
    start = time.perf_counter()
    config, sections = _applicable(config, data)
    data.model.eval()
    if config.calibration is not None and data.task.calibrates:
        from danlu.evaluate._calibration import calibration_section

        calibration = config.calibration
        sections["calibration"] = _timed(
            "calibration",
            lambda: calibration_section(data, calibration, apply=fit_temperature),
            on_section,
        )
        served = sections["calibration"].data.get("temperature")
        if fit_temperature and served is not None and served != data.temperature:
            data.temperature = float(served)  # a kept temperature: the model as served
            data.__dict__.pop("test_outputs", None)  # recomputed with the temperature
    from danlu.evaluate._metrics import metrics_section

    sections["metrics"] = _timed(
        "metrics",
        lambda: metrics_section(data, config.bootstrap, config.confidence),
        on_section,
    )
    if config.training and data.history:
        from danlu.evaluate._training import training_section

        sections["training"] = _timed("training", lambda: training_section(data), on_section)
    undefined = _headline_undefined(data) if config.baselines or config.robustness else None
    if config.baselines and undefined:
        sections["baselines"] = _skipped("baselines", data, undefined)
    elif config.baselines:
        from danlu.evaluate._baselines import baselines_section

        sections["baselines"] = _timed("baselines", lambda: baselines_section(data), on_section)
    if config.cross_validation:
        k = config.cross_validation
        if recipe is None or store is None:
            sections["cross_validation"] = Section(
                "cross_validation",
                "Cross-validation",
                data={"skipped": "the recipe of the model is not available"},
                notes=["Cross-validation needs the model's recipe and its data."],
            )
        else:
            from danlu.evaluate._crossval import cross_validate

            cv_recipe, cv_store = recipe, store
            sections["cross_validation"] = _timed(
                "cross_validation",
                lambda: cross_validate(
                    cv_recipe, k, store=cv_store, parent_id=run_id, callbacks=callbacks
                ),
                on_section,
            )
    if config.fairness is not None:
        from danlu.evaluate._fairness import fairness_section

        fairness = config.fairness
        sections["fairness"] = _timed(
            "fairness", lambda: fairness_section(data, fairness), on_section
        )
    if config.robustness is not None and undefined:
        sections["robustness"] = _skipped("robustness", data, undefined)
    elif config.robustness is not None:
        from danlu.evaluate._adversarial_gain import adversarial_gain
        from danlu.evaluate._robustness import robustness_section

        robustness = config.robustness
        sections["robustness"] = _timed(
            "robustness",
            lambda: adversarial_gain(  # train.adversarial: the gain over standard training
                robustness_section(data, robustness),
                data,
                robustness,
                recipe=recipe,
                store=store,
                run_id=run_id,
                callbacks=callbacks,
            ),
            on_section,
        )
    if config.membership is not None:
        from danlu.evaluate._membership import membership_section

        membership = config.membership
        sections["membership"] = _timed(
            "membership",
            lambda: membership_section(data, membership, config.bootstrap, config.confidence),
            on_section,
        )
    if data.privacy is not None:  # trained with DP-SGD: the ε it spent
        from danlu.evaluate._privacy_budget import privacy_section

        sections["privacy"] = _timed("privacy", lambda: privacy_section(data), on_section)
    if config.explain is not None:
        from danlu.evaluate._explain import explain_section

        explain = config.explain
        sections["explain"] = _timed("explain", lambda: explain_section(data, explain), on_section)
    if config.cost is not None:
        from danlu.evaluate._cost import cost_section

        cost = config.cost
        sections["cost"] = _timed("cost", lambda: cost_section(data, cost), on_section)
    ordered = [sections[key] for key in SECTION_ORDER if key in sections]
    ordered[1:1] = _task_sections(data) + _evaluated_sections(data, recipe)  # after the metrics
    report = Report(subject=subject, sections=ordered)
    report.seconds = time.perf_counter() - start
    return report


def _evaluated_sections(data: EvalData, recipe: Recipe | None) -> list[Section]:
    """Task sections that need this layer (the task layer sits below it): a language model's
    n-gram baselines (bootstrapped like the generic baselines) and its generated samples."""
    if data.task.name != "language_model" or len(data.y) == 0:
        return []
    from danlu.evaluate._lm_report import lm_sections

    try:
        return lm_sections(data, recipe.language_model if recipe is not None else None)
    except DanluError:
        raise
    except Exception as exc:  # a bug in these sections must not cost the whole report
        log.exception("The language model's report sections failed")
        section = Section("lm_baselines", "Language-model baselines", data={"error": str(exc)})
        section.flags.append(f"the language model's sections failed ({type(exc).__name__}: {exc})")
        return [section]


def _applicable(
    config: EvaluateConfig, data: EvalData
) -> tuple[EvaluateConfig, dict[str, Section]]:
    """``config`` without the generic sections the task says do not apply to it
    (``Task.report_skips``), and those of them ``config`` asked for as sections that say why."""
    skipped: dict[str, Section] = {}
    off: dict[str, Any] = {}
    for key, reason in data.task.report_skips.items():
        asked = getattr(config, key, None)
        if key not in _TITLES or not asked:
            continue
        off[key] = False if isinstance(asked, bool) else None
        skipped[key] = Section(
            key,
            _TITLES[key],
            data={"skipped": reason},
            notes=[f"Not applicable to the {data.task.name} task: {reason}."],
        )
    return (config.model_copy(update=off) if off else config), skipped


def _headline_undefined(data: EvalData) -> str | None:
    """Why the headline metric is undefined on the test rows (e.g. an anomaly detector trained
    on unlabelled rows: no anomalous row, no AUROC), or None when it is defined: the sections
    that compare it (baselines, robustness) are then skipped, not failed."""
    if len(data.y) == 0:
        return None
    try:
        data.task.metric(data.task.headline, data.test_outputs, data.y, data.schema)
    except ValueError as exc:
        return str(exc)
    except Exception:  # the section itself reports its own failure
        return None
    return None


def _skipped(key: str, data: EvalData, reason: str) -> Section:
    label = data.task.headline_label or data.task.headline
    return Section(
        key,
        _TITLES[key],
        data={"skipped": reason},
        notes=[
            f"Skipped: this section compares {label}, which the test rows cannot measure "
            f"({reason}). Evaluate on rows that have labels to see it."
        ],
    )


def _task_sections(data: EvalData) -> list[Section]:
    """The sections the task adds to every report (``Task.report_sections``)."""
    if len(data.y) == 0:
        return []
    start = time.perf_counter()
    try:
        extras = data.task.report_sections(data.test_outputs, data.y, data.schema, model=data.model)
    except DanluError:
        raise
    except Exception as exc:  # a bug in a task's section must not cost the whole report
        log.exception("The %s task's report sections failed", data.task.name)
        section = Section("task", f"{data.task.name} sections", data={"error": str(exc)})
        section.flags.append(f"the task's sections failed ({type(exc).__name__}: {exc})")
        return [section]
    sections = [Section(**vars(extra)) for extra in extras]
    for section in sections:
        section.seconds = (time.perf_counter() - start) / len(sections)
    return sections


# -- data --------------------------------------------------------------------------------------


def check_columns(
    frame: pd.DataFrame, schema: FeatureSchema, allowed: Sequence[str] = (), where: str = "data"
) -> None:
    """Raise one DataError naming every column of ``frame`` that does not fit the model:
    missing features (and target), extra columns, and values of the wrong type.

    ``allowed`` are extra columns that may be present (the fairness group, ignored columns).

    Example:
        >>> # check_columns(pd.read_csv("new.csv"), predictor.schema)
    """
    import pandas as pd

    from danlu.data._schema import bool_token

    problems = []
    names = [f.name for f in schema.features]
    missing = [n for n in [*names, schema.target] if n not in frame.columns]
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    extra = [c for c in frame.columns if c not in {*names, schema.target, *allowed}]
    if extra:
        problems.append(
            f"extra column(s) {', '.join(map(str, extra))} the model does not take (drop them)"
        )
    for feature in schema.features:
        if feature.name not in frame.columns:
            continue
        column = frame[feature.name]
        present = column.notna()
        if feature.kind == "numeric" and feature.errors == "nan":
            continue  # a value that is not a number reads as missing
        if feature.kind == "numeric":
            bad = present & pd.to_numeric(column, errors="coerce").isna()
        elif feature.kind == "boolean":
            bad = present & column.map(lambda v: bool_token(v) is None)
        else:
            continue  # any value is a category (unseen ones encode as all zeros)
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            problems.append(
                f"column '{feature.name}' must be {feature.kind} but holds "
                f"{column.iloc[row]!r} at row {row}"
            )
    if problems:
        raise DataError(
            f"The {where} does not match the model's signature: {'; '.join(problems)}. "
            f"The model takes {', '.join(names[:12])}{' ...' if len(names) > 12 else ''} "
            f"and the target '{schema.target}'."
        )


def _file_rows(
    path: StrPath, bundle: ModelBundle, allowed: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Prepared inputs, targets and raw rows of an evaluation file, checked against the model."""
    from danlu.data import load_source
    from danlu.store import csv_restore_frame

    schema = bundle.schema
    raw = load_source(path, schema.target if schema.target else None)
    frame = raw.frame.reset_index(drop=True)
    if str(path).lower().endswith(".csv"):  # danlu's CSVs (request logs) quote formulas: unquote
        frame = csv_restore_frame(frame)
    check_columns(frame, schema, allowed, where=f"evaluation data '{path}'")
    x = bundle.preprocessor.transform(frame)
    y = bundle.preprocessor.encode_target(frame[schema.target])
    return x, y, frame.drop(columns=[schema.target])


def _empty(width: int) -> np.ndarray:
    import numpy as np

    return np.zeros((0, width), dtype=np.float32)


def _eval_data(
    bundle: ModelBundle,
    recipe: Recipe | None,
    prepared: PreparedData | None,
    data_file: StrPath | None,
    config: EvaluateConfig,
    extra: dict[str, Any],
) -> tuple[EvalData, str]:
    """The EvalData of a stored model: the recipe's test split or a file; train / val splits
    from the recipe (for baselines and calibration) when it is available."""
    import numpy as np

    width = bundle.schema.input_dim
    train = (_empty(width), np.zeros(0))
    val = (_empty(width), np.zeros(0))
    if prepared is not None:
        train, val = (prepared.x_train, prepared.y_train), (prepared.x_val, prepared.y_val)
    if data_file is not None:
        allowed = [config.fairness.group] if config.fairness else []
        # columns training ignored, as the recipe said or as inferred (free text)
        kinds = bundle.preprocessor.overrides
        allowed += [c for c, kind in kinds.items() if getattr(kind, "kind", kind) == "ignore"]
        if recipe is not None and recipe.data.features:
            allowed += [
                c for c, k in recipe.data.features.items() if getattr(k, "kind", k) == "ignore"
            ]
        x, y, frame = _file_rows(data_file, bundle, allowed)
        described = str(data_file)
    elif prepared is not None:
        if prepared.stream is not None:
            raise DataError(
                "This model was trained on streamed data (data.stream); evaluate it on a file "
                "that fits in memory with --data FILE."
            )
        x, y, frame = prepared.x_test, prepared.y_test, prepared.test_frame
        described = f"test split of {recipe.data.source if recipe else '?'}"
    else:
        raise DataError(
            "The model's recipe is not available (its run was deleted), so there is no test "
            "split to evaluate on. Pass the evaluation rows with --data FILE."
        )
    check_fairness_group(config, frame)
    data = EvalData(
        model=bundle.model,
        task=bundle.task,
        schema=bundle.schema,
        x=x,
        y=y,
        frame=frame,
        x_train=train[0],
        y_train=train[1],
        x_val=val[0],
        y_val=val[1],
        temperature=bundle.temperature,
        preprocessor=bundle.preprocessor,
        texts=prepared.texts if prepared is not None else None,
        privacy=bundle.card.get("privacy"),
        held_out=data_file is None,
        **extra,
    )
    return data, described


def _run_context(
    store: Store, run: Run
) -> tuple[Recipe | None, PreparedData | None, dict[str, Any]]:
    """The run's recipe, its data prepared again (same split), and its recorded cost figures."""
    from danlu.config import load_recipe
    from danlu.models import check_stored_recipe, prepare_recipe_data
    from danlu.tasks import get_task

    if run.recipe:  # stored data: its model and task must be built in or allow-listed
        check_stored_recipe(run.recipe, f"Run {run.id}'s recipe")
    recipe = load_recipe(run.recipe) if run.recipe else None
    prepared = None
    if recipe is not None and recipe.data.stream is None:
        try:
            prepared = prepare_recipe_data(recipe, get_task(recipe.task))
        except DanluError as exc:
            log.warning("The run's data could not be prepared again (%s).", exc)
        if prepared is not None and run.data_fingerprint not in {None, prepared.raw_fingerprint}:
            log.warning(
                "The data of run %s changed since it was trained (fingerprint %s ≠ %s); the "
                "report describes the data as it is now.",
                run.id,
                prepared.raw_fingerprint[:12],
                str(run.data_fingerprint)[:12],
            )
    extra = {
        "run_metrics": dict(run.metrics),
        "run_tags": dict(run.tags),
        "history": _run_history(store, run),
    }
    return recipe, prepared, extra


def _run_history(store: Store, run: Run) -> list[dict[str, float]]:
    """The run's metrics per epoch from its ``summary.json`` (empty when it has none)."""
    path = store.artifact_path(run.id, "summary.json")
    try:
        history = json.loads(read_bytes(path)).get("history", []) if path.is_file() else []
    except (OSError, ValueError, AttributeError):
        log.warning("Run %s's summary.json could not be read; the report has no curves.", run.id)
        return []
    return [row for row in history if isinstance(row, dict)]


def _sizes(path_of: Callable[[str], Any]) -> dict[str, int]:
    sizes = {}
    for file in ("model.safetensors", "model.onnx"):
        path = path_of(file)
        if path.is_file():
            sizes[file] = plaintext_size(path)  # the model's size, encrypted on disk or not
    return sizes


def save_report(
    store: Store,
    report: Report,
    *,
    run_id: str | None = None,
    model: tuple[str, int] | None = None,
    temperature: float | None = None,
) -> None:
    """Store ``report.html`` and ``report.json`` (and ``calibration.json`` with a fitted
    temperature, runs only) as artifacts of the run and / or files of the model version."""
    files = {"report.html": report.to_html().encode(), "report.json": report.to_json().encode()}
    if run_id is not None:
        for name, raw in files.items():
            store.log_artifact(run_id, name, raw)
        if temperature is not None and temperature != 1.0:
            calibration = {"temperature": temperature, "method": "temperature scaling on val"}
            store.log_artifact(run_id, "calibration.json", json.dumps(calibration).encode())
    if model is not None:
        store.attach_model_files(model[0], model[1], files)


def _make_report(
    bundle: ModelBundle,
    recipe: Recipe | None,
    prepared: PreparedData | None,
    data: StrPath | None,
    config: EvaluateConfig,
    extra: dict[str, Any],
    subject: dict[str, Any],
    **kwargs: Any,
) -> tuple[EvalData, Report]:
    """The stored model's EvalData and its report (``kwargs`` go to :func:`build_report`)."""
    eval_data, described = _eval_data(bundle, recipe, prepared, data, config, extra)
    subject = {
        **subject,
        "recipe": recipe.name if recipe else None,
        "task": bundle.task.name,
        "model_type": bundle.card.get("type"),
        "data": described,
        "rows": len(eval_data.y),
    }
    report = build_report(eval_data, config, subject=subject, recipe=recipe, **kwargs)
    return eval_data, report


def _run_bundle(store: Store, run_id: str) -> ModelBundle:
    from danlu.models import load_bundle

    return load_bundle(store.run_reader(run_id), f"Run {run_id}")


def evaluate_run(
    run_id: str,
    *,
    store: Store | None = None,
    home: StrPath | None = None,
    config: EvaluateConfig | None = None,
    data: StrPath | None = None,
    on_section: OnSection | None = None,
    callbacks: Sequence[Callback] = (),
) -> Report:
    """Make the trust report of a finished training run and store it with the run.

    Args:
        run_id: the run.
        store: an open store (default: the one at ``home``).
        home: where the store lives (default ``$DANLU_HOME`` or ``./.danlu``).
        config: the sections (default: the run's recipe's ``evaluate`` block, else all defaults).
        data: evaluate on this file (csv, parquet, jsonl, npz) instead of the test split.
        on_section: called with each section's key as it starts (progress display).
        callbacks: engine callbacks for the cross-validation folds.

    Example:
        >>> from danlu.evaluate import evaluate_run
        >>> report = evaluate_run(result.run_id)  # doctest: +SKIP
        >>> report.summary  # doctest: +SKIP
    """
    from danlu.store import SqlStore

    store = store or SqlStore(home=home)
    run = store.get_run(run_id)
    if run.status != "finished":
        raise StoreError(f"Run '{run_id}' is {run.status}; only a finished run can be evaluated.")
    recipe, prepared, extra = _run_context(store, run)
    config = config or (recipe.evaluate if recipe else None) or EvaluateConfig()
    bundle = _run_bundle(store, run.id)
    extra["files"] = _sizes(lambda f: store.artifact_path(run.id, f))
    fit = not store.artifact_path(run.id, "calibration.json").is_file()
    eval_data, report = _make_report(
        bundle,
        recipe,
        prepared,
        data,
        config,
        extra,
        {"run_id": run.id, "run_name": run.name},
        store=store,
        run_id=run.id,
        fit_temperature=fit,
        on_section=on_section,
        callbacks=callbacks,
    )
    if data is None and prepared is not None and prepared.series is not None:
        from danlu.evaluate._forecast_report import forecast_sections

        stored = store.artifact_path(run.id, "backtest.json")  # the run's backtest, if any
        table = json.loads(read_bytes(stored)) if stored.is_file() else None
        shipped = bundle.card.get("type")
        report.sections[1:1] = forecast_sections(bundle.model, prepared, table, shipped=shipped)
    fitted = eval_data.temperature if fit and eval_data.temperature != 1.0 else None
    save_report(store, report, run_id=run.id, temperature=fitted)
    return report


def evaluate_model(
    ref: str,
    *,
    store: Store | None = None,
    home: StrPath | None = None,
    config: EvaluateConfig | None = None,
    data: StrPath | None = None,
    on_section: OnSection | None = None,
    callbacks: Sequence[Callback] = (),
) -> Report:
    """Make the trust report of a registered version (``NAME``, ``NAME:V``, ``NAME@ALIAS``) and
    attach it to the version (and to its run, while the run exists).

    A version's predictions never change: a temperature fitted here is reported, not saved.

    Example:
        >>> from danlu.evaluate import evaluate_model
        >>> evaluate_model("digits@staging").summary  # doctest: +SKIP
    """
    from danlu.errors import NotFoundError
    from danlu.models import load_bundle
    from danlu.store import SqlStore

    store = store or SqlStore(home=home)
    mv = store.resolve(ref)
    bundle = load_bundle(store.model_reader(mv), f"Model {mv.ref}")
    recipe, prepared, extra = None, None, dict[str, Any]()
    run = None
    if mv.run_id is not None:
        try:
            run = store.get_run(mv.run_id)
        except NotFoundError:
            run = None
    if run is not None:
        recipe, prepared, extra = _run_context(store, run)
    config = config or (recipe.evaluate if recipe else None) or EvaluateConfig()
    extra["files"] = _sizes(lambda f: store.model_version_path(mv.name, mv.version, f))
    _, report = _make_report(
        bundle,
        recipe,
        prepared,
        data,
        config,
        extra,
        {"model": mv.ref, "run_id": mv.run_id},
        store=store,
        run_id=mv.run_id if run is not None else None,
        fit_temperature=False,
        on_section=on_section,
        callbacks=callbacks,
    )
    save_report(
        store, report, run_id=run.id if run is not None else None, model=(mv.name, mv.version)
    )
    return report
