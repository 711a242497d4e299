"""The stage runner: a recipe's stages run in order on one typed context, each named, timed and
recorded on the run.

A stage is a plain function ``Context → Context``. The :class:`Runner` does everything around
the stages, so stage code never opens runs, registers or exports on its own:

- the stages that need no run (``prepare``) run first, then every stage's ``check``: bad data
  or a bad option fails before anything is written, so it leaves no run behind;
- it opens the run once (or reattaches to the run being resumed) and logs the resolved recipe;
- it times each stage and records it on the run: ``stages.json`` (each stage's status, seconds
  and the artifacts it wrote) and the metric ``stage_<name>_seconds``;
- a failure marks the stage and the run ``failed`` (``interrupted`` on Ctrl-C and on SIGTERM,
  ``pruned`` for a pruned tuning trial); SIGTERM raises :class:`~danlu.errors.Preempted`
  (exit 75) and training stops after its current batch with a checkpoint (``_preempt.py``);
  the run is marked ``finished`` once its in-run stages are done, before
  the ``after_run`` stages (registration needs a finished run);
- resuming a run skips the stages it already finished when the recipe is unchanged: each has a
  ``restore`` that reloads its outputs from the run's artifacts. The first stage that failed (or
  never ran) runs again, and every stage after it.

Where things live (imports point down, DESIGN.md): this module and the ``prepare`` and
``train`` stages (``danlu/train/_run.py``; :func:`~danlu.train.run_training` is that two-stage
plan, used by tuning trials, the tuning refit and cross-validation folds, which sit below the
pipeline) are the train layer. ``danlu/pipeline.py`` owns the full plan — prepare → train →
evaluate → compress → register+export — with the evaluate and register stages, and runs it with
this same :class:`Runner`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from danlu.config import recipe_to_yaml
from danlu.errors import ConfigError, Preempted
from danlu.logging import get_logger
from danlu.store._crypt import read_bytes
from danlu.types import StrPath

if TYPE_CHECKING:
    import torch

    from danlu.config import Recipe
    from danlu.data import PreparedData
    from danlu.store import ModelVersion, Run, Store, StoreTracker
    from danlu.tasks import Task
    from danlu.train._callbacks import Callback
    from danlu.train._energy import EnergyReading

__all__ = ["Context", "Runner", "Stage", "StageRecord", "check_device", "run_of"]

log = get_logger(__name__)

STAGES_FILE = "stages.json"
# what a resumed run may change: more epochs, the number of ranks (checkpoints hold the full
# state), the report (made after training, again on resume) and where progress is exposed
_RESUMABLE_KEYS = ("train.epochs", "train.distributed", "evaluate", "train.metrics")

Phase = Literal["before_run", "in_run", "after_run"]
# A tuning worker counts a DanluError as a failed trial and goes on with the next one, so a
# Preempted trial would not stop it: in ``danlu tune`` SIGTERM ends the process as it always
# did (the study requeues a dead worker's trial when it resumes).
_NOT_PREEMPTIBLE = frozenset({"tune-trial", "tune-refit"})


@dataclass
class StageRecord:
    """One stage of a run as ``stages.json`` records it."""

    name: str
    status: str = "running"  # finished | failed | interrupted | pruned
    seconds: float = 0.0
    started_at: float = 0.0
    artifacts: list[str] = field(default_factory=list)
    error: str | None = None
    restored: bool = False  # finished by an earlier session of the run; reloaded on resume


@dataclass
class Context:
    """What the stages of one run hand each other: given settings first, then stage outputs.

    Made by :func:`danlu.train.make_context` (which loads and validates the recipe, once).
    """

    recipe: Recipe
    resolved: dict[str, Any]  # the recipe as plain data, as the run records it
    options: Any  # the model's validated options (check_recipe)
    store: Store
    callbacks: Sequence[Callback] = ()
    on_section: Callable[[str], None] | None = None  # each report section as it starts
    # how the run is recorded
    run_stage: str = "train"  # the run's stage in the store: train, tune-trial, cv-fold ...
    parent_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    run_name: str | None = None
    resume: StrPath | None = None  # a run id (or its artifact folder) to continue
    previous: Run | None = None  # that run, as stored when this session started
    # filled by the runner and the stages
    tracker: StoreTracker | None = None
    data: PreparedData | None = None
    task: Task | None = None
    model: torch.nn.Module | None = None
    model_type: str | None = None  # the trained model's type when not the recipe's (auto's winner)
    metrics: dict[str, float] = field(default_factory=dict)  # test metrics
    details: dict[str, Any] = field(default_factory=dict)  # confusion matrix ...
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    energy: EnergyReading | None = None  # training time and energy (the report's cost)
    files: dict[str, int] = field(default_factory=dict)  # size of each model file written
    report: Any = None  # the trust report (danlu.evaluate.Report)
    temperature: float = 1.0
    registered: ModelVersion | None = None
    stages: list[StageRecord] = field(default_factory=list)
    pending: dict[str, bytes] = field(default_factory=dict)  # artifacts awaiting the run

    @property
    def run_id(self) -> str:
        if self.tracker is None:
            raise RuntimeError("The run is not open yet: a before_run stage has no run id.")
        return self.tracker.run_id

    def log_artifact(self, name: str, data: bytes | str) -> None:
        """Store an artifact of the run (kept until the run opens when it is not open yet)."""
        if self.tracker is not None:
            self.tracker.log_artifact(name, data)
        else:
            self.pending[name] = data.encode() if isinstance(data, str) else data


@dataclass(frozen=True)
class Stage:
    """One step of a plan.

    Attributes:
        name: its name in ``stages.json`` and in the metric ``stage_<name>_seconds``.
        run: the stage itself, ``Context → Context``.
        when: whether a recipe asks for it (default: always).
        phase: ``before_run`` (no run exists yet: a failure leaves nothing behind),
            ``in_run``, or ``after_run`` (the run is already marked finished).
        check: validation that needs the prepared data, run before the run opens.
        restore: on resume, reloads the outputs of this stage when the run already finished it
            (a stage without one runs again).
    """

    name: str
    run: Callable[[Context], Context]
    when: Callable[[Recipe], bool] | None = None
    phase: Phase = "in_run"
    check: Callable[[Context], None] | None = None
    restore: Callable[[Context], Context] | None = None


class Runner:
    """Runs a plan (a sequence of :class:`Stage`) on a context; see the module docstring.

    Example:
        >>> # ctx = Runner([PREPARE, TRAIN]).run(make_context("examples/wine_mlp.yaml"))
        >>> # [(s.name, s.status, s.seconds) for s in ctx.stages]
    """

    def __init__(self, plan: Sequence[Stage]) -> None:
        self.plan = tuple(plan)

    def run(self, ctx: Context) -> Context:
        from danlu.train._preempt import preemptible

        if ctx.run_stage in _NOT_PREEMPTIBLE:
            return self._run(ctx)
        with preemptible():  # SIGTERM: Preempted (training stops after a batch, checkpointed)
            return self._run(ctx)

    def _run(self, ctx: Context) -> Context:
        stages = self._stages(ctx)
        done = _finished_before(ctx)  # also checks a resumed run's recipe
        ctx = self.check(ctx)
        tracker = _open_run(ctx)
        finished = False
        try:
            reuse = True  # restore the finished stages up to the first that must run again
            for stage in stages:
                if stage.phase == "before_run":
                    continue
                if stage.phase == "after_run" and not finished:
                    tracker.set_status("finished")
                    finished = True
                reuse = reuse and stage.restore is not None and stage.name in done
                ctx = (
                    self._restore(stage, ctx, done[stage.name]) if reuse else self._step(stage, ctx)
                )
            if not finished:
                tracker.set_status("finished")
        except BaseException as exc:
            tracker.set_status(_status_of(exc), error=_error_of(exc))
            _name_run(exc, tracker.run_id)
            raise
        return ctx

    def check(self, ctx: Context) -> Context:
        """All that :meth:`run` does before the run opens, and no more: the device, the stages
        that need no run (``prepare``) and every stage's ``check``. Nothing is written, so it
        tells whether a plan would start (``danlu tune`` asks before its first trial).

        Example:
            >>> # Runner(plan()).check(make_context("r.yaml")).data.report
        """
        check_device(ctx.recipe)  # a recipe this machine cannot run leaves no run behind
        stages = self._stages(ctx)
        for stage in stages:
            if stage.phase == "before_run":
                ctx = self._step(stage, ctx)
        for stage in stages:
            if stage.check is not None:
                stage.check(ctx)
        return ctx

    def _stages(self, ctx: Context) -> list[Stage]:
        return [s for s in self.plan if s.when is None or s.when(ctx.recipe)]

    def _step(self, stage: Stage, ctx: Context) -> Context:
        """Run one stage, timed; record it (and a failure) on the run."""
        record = StageRecord(stage.name, started_at=time.time())
        ctx.stages.append(record)
        before, pending = _artifact_times(ctx), set(ctx.pending)
        start = time.perf_counter()
        try:
            ctx = stage.run(ctx)
            record.status = "finished"
        except BaseException as exc:
            record.status, record.error = _status_of(exc), _error_of(exc)
            raise
        finally:
            record.seconds = time.perf_counter() - start
            after = _artifact_times(ctx)
            written = {n for n, t in after.items() if before.get(n) != t} - {STAGES_FILE}
            record.artifacts = sorted(written | (set(ctx.pending) - pending))
            _save_records(ctx, [record])
        return ctx

    def _restore(self, stage: Stage, ctx: Context, earlier: StageRecord) -> Context:
        """Reload the outputs of a stage an earlier session of the run finished."""
        assert stage.restore is not None
        try:
            ctx = stage.restore(ctx)
        except BaseException as exc:  # e.g. its files were deleted: say so, resume cannot go on
            failed = StageRecord(stage.name, _status_of(exc), error=_error_of(exc))
            ctx.stages.append(failed)
            _save_records(ctx, [])
            raise
        ctx.stages.append(StageRecord(**{**asdict(earlier), "restored": True}))
        _save_records(ctx, [])
        log.info("Stage %s was finished by the run's earlier session: reloaded", stage.name)
        return ctx


def check_device(recipe: Recipe) -> None:
    """Refuse ``train.device: cuda`` on a machine without a visible GPU, naming the key.

    The runner checks it before the run opens, so the refusal leaves nothing in the store.
    """
    if recipe.train.device != "cuda":
        return  # cpu and auto run anywhere (and need no torch import here)
    import torch

    if torch.cuda.is_available():
        return
    from danlu.config import ConfigIssue, raise_issues

    issue = ConfigIssue(
        ("train", "device"),
        "no CUDA device is visible on this machine",
        "cuda",
        "Use device: auto (the GPU when there is one, else the CPU) or cpu, or run on a "
        "machine with a GPU (check CUDA_VISIBLE_DEVICES and the driver: nvidia-smi).",
    )
    raise_issues([issue], recipe._source)


def _name_run(exc: BaseException, run_id: str) -> None:
    """Note on a failure which run it left behind (the outermost runner's run wins: a fold or
    a trial runs inside it), so the CLI can say what to resume."""
    # an exception type that takes no attributes: nothing to say
    with contextlib.suppress(AttributeError):
        exc.danlu_run_id = run_id  # type: ignore[attr-defined]


def run_of(exc: BaseException) -> str | None:
    """The run a failure, Ctrl-C or SIGTERM left in the store (``failed`` or ``interrupted``,
    resumable with ``danlu run RECIPE --resume RUN_ID``); None when it came before the run
    opened.

    Example:
        >>> # try: danlu.run("r.yaml")
        >>> # except KeyboardInterrupt as exc: print(run_of(exc))
    """
    run_id = getattr(exc, "danlu_run_id", None)
    return run_id if isinstance(run_id, str) else None


def _status_of(exc: BaseException) -> str:
    from danlu.train._callbacks import Pruned

    if isinstance(exc, KeyboardInterrupt | Preempted):
        return "interrupted"
    return "pruned" if isinstance(exc, Pruned) else "failed"


def _error_of(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted by the user"
    if isinstance(exc, Preempted):
        return "preempted (SIGTERM)"
    return str(exc) or type(exc).__name__


def _diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    from danlu.store import flatten_params

    a, b = flatten_params(old), flatten_params(new)
    return sorted(
        k
        for k in set(a) | set(b)
        if a.get(k) != b.get(k)
        and not any(k == r or k.startswith(f"{r}.") for r in _RESUMABLE_KEYS)
    )


def _recipe_hash(resolved: Mapping[str, Any]) -> str:
    """sha256 of the resolved recipe, ignoring keys that do not change the model (name, evaluate,
    register, train.metrics)."""
    relevant = {k: v for k, v in resolved.items() if k not in {"name", "evaluate", "register"}}
    if isinstance(relevant.get("train"), Mapping):  # train.metrics: where progress is shown
        relevant["train"] = {k: v for k, v in relevant["train"].items() if k != "metrics"}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def _resume_id(resume: StrPath) -> str:
    """A run id, or a path to a run's artifact folder (whose name is the id)."""
    text = str(resume).rstrip("/")
    return Path(text).name if "/" in text else text


def _finished_before(ctx: Context) -> dict[str, StageRecord]:
    """On resume: the run's stages that an earlier session finished with this very recipe.

    Raises ConfigError when the recipe differs from the run's beyond ``train.epochs``.
    """
    if ctx.resume is None:
        return {}
    run_id = _resume_id(ctx.resume)
    ctx.previous = previous = ctx.store.get_run(run_id)
    changed = _diff(previous.recipe or {}, ctx.resolved)
    if changed:
        raise ConfigError(
            f"Cannot resume run {run_id}: the recipe differs from the one it was started with at "
            f"{', '.join(changed)}. Only train.epochs, train.distributed, train.metrics and the "
            "evaluate block may change on resume."
        )
    path = ctx.store.artifact_path(run_id, STAGES_FILE)
    if not path.is_file():
        return {}
    try:
        saved = json.loads(read_bytes(path))
        records = [StageRecord(**r) for r in saved["stages"]]
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("Run %s: unreadable %s (%s); every stage runs again", run_id, STAGES_FILE, exc)
        return {}
    if saved.get("recipe_hash") != _recipe_hash(ctx.resolved):  # e.g. more epochs: train again
        return {}
    return {r.name: r for r in records if r.status == "finished"}


def _open_run(ctx: Context) -> StoreTracker:
    """Create the run (or reattach to the one being resumed) and log what the recipe asked."""
    from danlu.store import StoreTracker, git_state, host_name, package_versions

    assert ctx.data is not None, "a plan opens its run after the data is prepared"
    recipe, previous = ctx.recipe, ctx.previous
    if previous is not None:
        if previous.data_fingerprint != ctx.data.raw_fingerprint:
            raise ConfigError(
                f"Cannot resume run {previous.id}: the data changed since it started (fingerprint "
                f"{ctx.data.raw_fingerprint[:12]} ≠ {str(previous.data_fingerprint)[:12]})."
            )
        tracker = StoreTracker(ctx.store, previous.id)
        tracker.set_status("running")
        ctx.run_name = previous.name
    else:
        commit, dirty = git_state()
        ctx.run_name = ctx.run_name or recipe.name
        run = ctx.store.create_run(
            experiment=recipe.name,
            name=ctx.run_name,
            stage=ctx.run_stage,
            parent_id=ctx.parent_id,
            recipe=ctx.resolved,
            recipe_hash=_recipe_hash(ctx.resolved),
            data_fingerprint=ctx.data.raw_fingerprint,
            git_commit=commit,
            git_dirty=dirty,
            packages=package_versions(),
            host=host_name(),
            tags={"task": recipe.task, "model.type": recipe.model.type, **ctx.tags},
        )
        tracker = StoreTracker(ctx.store, run.id)
    ctx.tracker = tracker
    try:
        tracker.log_params(ctx.resolved)  # on resume: the new train.epochs
        tracker.log_artifact("recipe.yaml", recipe_to_yaml(recipe))
        for name, data in ctx.pending.items():  # what the stages before the run produced
            tracker.log_artifact(name, data)
        ctx.pending.clear()
        # the seconds of the stages before the run; stages.json waits for the first stage in it
        # (a run killed before then resumes from the start anyway)
        tracker.log_metrics({f"stage_{r.name}_seconds": r.seconds for r in ctx.stages}, step=0)
    except BaseException as exc:
        tracker.set_status("failed", error=str(exc) or type(exc).__name__)
        raise
    return tracker


def _artifact_times(ctx: Context) -> dict[str, float]:
    """When each of the run's artifacts was last written (which tells a stage's own apart)."""
    if ctx.tracker is None:
        return {}
    try:
        return {a.name: a.created_at for a in ctx.store.list_artifacts(ctx.tracker.run_id)}
    except Exception as exc:  # bookkeeping never hides the stage's own error
        log.warning("Could not list the artifacts of run %s: %s", ctx.tracker.run_id, exc)
        return {}


def _save_records(ctx: Context, timed: Sequence[StageRecord]) -> None:
    """Write ``stages.json``, and each ``timed`` stage's seconds as a metric, once the run is open.

    A failure here never hides the stage's own error: it is logged.
    """
    tracker = ctx.tracker
    if tracker is None:
        return
    saved = {"recipe_hash": _recipe_hash(ctx.resolved), "stages": [asdict(s) for s in ctx.stages]}
    try:
        tracker.log_metrics({f"stage_{r.name}_seconds": r.seconds for r in timed}, step=0)
        tracker.log_artifact(STAGES_FILE, json.dumps(saved, indent=1))
        tracker.flush()
    except Exception as exc:
        log.warning("Could not record the stages of run %s: %s", tracker.run_id, exc)
