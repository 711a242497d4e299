"""Where compression runs: the ``compress`` stage of ``danlu run`` (after registration, so the
variants name their parent version) and ``danlu compress RUN|MODEL`` on a finished run or a
registered version. Both build a :class:`CompressJob` and call :func:`compress_model`, then put
the trade-off into the run (``compression.json``) and its trust report."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from danlu.compress._stage import (
    COMPRESSION_FILE,
    CompressResult,
    compress_model,
    compression_section,
)
from danlu.compress._types import CompressJob
from danlu.errors import ConfigError, NotFoundError, StoreError
from danlu.logging import get_logger
from danlu.store._crypt import read_bytes, read_text

if TYPE_CHECKING:
    from danlu.store import ModelVersion, Store
    from danlu.train import Context

__all__ = ["compress", "compress_stage"]

log = get_logger(__name__)


def compress_stage(ctx: Context) -> Context:
    """``danlu run``'s compression: the variants of the model just trained (and registered)."""
    recipe = ctx.recipe
    config = recipe.compress
    assert config is not None and ctx.model is not None and ctx.data is not None and ctx.task
    card = json.loads(read_bytes(ctx.store.artifact_path(ctx.run_id, "model.json")))
    job = CompressJob(
        config=config,
        recipe=recipe,
        model=ctx.model.eval(),
        card=card,
        task=ctx.task,
        data=ctx.data,
        store=ctx.store,
        run_id=ctx.run_id,
        callbacks=ctx.callbacks,
    )
    name = config.name or (recipe.register.name if recipe.register is not None else None)
    result = compress_model(job, parent=ctx.registered, model_name=name)
    _record(ctx.store, ctx.run_id, result, job, ctx.report, ctx.registered)
    ctx.details["compression"] = result
    return ctx


def compress(
    store: Store,
    target: str,
    *,
    overrides: Iterable[str] = (),
    actor: str | None = None,
) -> CompressResult:
    """``danlu compress``: the variants of a finished run's model or of a registered version.

    The run's recipe is used with its ``compress:`` block (``compress: {}`` — every int8
    quantization — when it has none) and ``overrides`` (``compress.prune.sparsity=0.5``...)
    applied; its data is prepared again from the recipe. A registered version is the parent of
    its variants (they become versions of the same model unless ``compress.name`` says
    otherwise); a run's variants are registered under ``compress.name`` or the recipe's
    ``register.name``, else only measured and reported.

    Raises:
        NotFoundError: no such run or model.
        StoreError: the run is not finished, or kept no recipe.
        ConfigError: an override is invalid (named with its flag).

    Example:
        >>> # compress(SqlStore(), "digits@production", overrides=["compress.objective=size"])
    """
    from danlu.config import load_recipe
    from danlu.models import load_bundle
    from danlu.tasks import get_task
    from danlu.train._run import prepare_recipe_data

    parent, run_id = _target(store, target)
    run = store.get_run(run_id)
    if run.status != "finished":
        raise StoreError(f"Run '{run_id}' is {run.status}; only a finished run can be compressed.")
    if not run.recipe:
        raise StoreError(f"Run '{run_id}' kept no recipe, so its data cannot be prepared again.")
    recipe_dict = dict(run.recipe)
    if not recipe_dict.get("compress"):
        recipe_dict["compress"] = {}
    recipe = load_recipe(recipe_dict, overrides)
    config = recipe.compress
    if config is None:
        raise ConfigError("compress: is switched off by the overrides; nothing to do.")
    if parent is not None:
        read = store.model_reader(parent)
        where = f"Model {parent.ref}"
    else:
        read = store.run_reader(run_id)
        where = f"Run '{run_id}'"
    bundle = load_bundle(read, where)
    card = bundle.card
    task = get_task(recipe.task)
    data = prepare_recipe_data(recipe, task)
    task = task.configure(recipe, data)  # as the prepare stage (anomaly: its label columns)
    job = CompressJob(
        config=config,
        recipe=recipe,
        model=bundle.model.eval(),
        card=card,
        task=task,
        data=data,
        store=store,
        run_id=run_id,
    )
    name = config.name or (
        parent.name
        if parent is not None
        else recipe.register.name
        if recipe.register is not None
        else None
    )
    result = compress_model(job, parent=parent, model_name=name, actor=actor)
    _record(store, run_id, result, job, None, parent)
    return result


def _target(store: Store, target: str) -> tuple[ModelVersion | None, str]:
    """(the registered version, its run) for a model reference, (None, the run) for a run id."""
    if ":" not in target and "@" not in target:  # ':' and '@' always mean a model
        try:
            store.get_run(target)
            return None, target
        except (NotFoundError, StoreError):
            pass
    try:
        mv = store.resolve(target)
    except NotFoundError:
        raise NotFoundError(
            f"'{target}' is neither a run id nor a registered model (NAME, NAME:VERSION or "
            "NAME@ALIAS). List them with: danlu runs ls / danlu models ls"
        ) from None
    if mv.run_id is None:
        raise StoreError(
            f"Model {mv.ref} has no run (it was deleted), so its test rows cannot be prepared "
            "to measure the variants on."
        )
    return mv, mv.run_id


def _record(
    store: Store,
    run_id: str,
    result: CompressResult,
    job: CompressJob,
    report: Any,
    parent: ModelVersion | None,
) -> None:
    """``compression.json`` in the run; the compression section in the run's trust report (made
    now, or the stored one) and in the parent version's."""
    from danlu.evaluate import Report

    store.log_artifact(
        run_id, COMPRESSION_FILE, json.dumps(result.to_dict(), indent=1, allow_nan=False).encode()
    )
    section = compression_section(result, job.task)
    files: dict[str, bytes]
    if isinstance(report, Report):
        report.sections = [s for s in report.sections if s.key != "compression"] + [section]
        files = {
            "report.html": report.to_html().encode(),
            "report.json": report.to_json().encode(),
        }
    else:
        files = _patched_report(store, run_id, section, job)
    for file, raw in files.items():
        store.log_artifact(run_id, file, raw)
    if parent is not None and parent.run_id == run_id:
        store.attach_model_files(parent.name, parent.version, files)


def _patched_report(store: Store, run_id: str, section: Any, job: CompressJob) -> dict[str, bytes]:
    """The run's stored report with the compression section added (or replaced); a run with no
    report gets one that holds the compression section alone."""
    import re

    from danlu.evaluate import Report

    json_path = store.artifact_path(run_id, "report.json")
    html_path = store.artifact_path(run_id, "report.html")
    if not (json_path.is_file() and html_path.is_file()):
        subject = {"run_id": run_id, "recipe": job.recipe.name, "task": job.task.name}
        report = Report(subject=subject, sections=[section])
        return {"report.html": report.to_html().encode(), "report.json": report.to_json().encode()}
    stored = json.loads(read_bytes(json_path))
    stored.setdefault("sections", {})["compression"] = section.to_dict()
    single = Report(subject={}, sections=[section]).to_html()
    body = single[single.index(f'<h2 id="{section.key}">') : single.rindex("</body>")]
    page = read_text(html_path)
    page = re.sub(r'<h2 id="compression">.*?(?=<h2 id=|</body>)', "", page, flags=re.S)
    page = page.replace("</body>", body + "</body>", 1)
    return {"report.html": page.encode(), "report.json": json.dumps(stored, indent=1).encode()}
