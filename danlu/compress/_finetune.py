"""Fine-tuning a changed model (pruned, factorised) with danlu's engine, in a child run.

Every method that trains an already-initialised network again calls :func:`finetune`: the
recipe's ``train:`` block with fewer epochs (and its learning rate unless told), the same early stopping,
seed and device, tracked as a child run of the run that trained the parent (tag
``compression: <variant name>``). The child run ends holding a complete model — weights, card,
preprocessing and test metrics — so it can be inspected, compared and loaded like any run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from danlu.logging import get_logger

if TYPE_CHECKING:
    import torch.nn as nn

    from danlu.compress._types import CompressJob
    from danlu.config import Recipe

__all__ = ["finetune", "finetune_recipe"]

log = get_logger(__name__)


def finetune_recipe(recipe: Recipe, *, epochs: int, learning_rate: float | None) -> Recipe:
    """``recipe`` with its ``train:`` block set for fine-tuning: ``epochs`` epochs at
    ``learning_rate`` (default: the recipe's learning rate; a one-cycle ``max_lr`` scales
    with it). Everything else — early stopping, batch size, seed, device — is the recipe's."""
    train = recipe.train
    lr = learning_rate if learning_rate is not None else train.optimizer.lr
    scheduler = train.scheduler
    if scheduler.max_lr is not None:  # the one-cycle peak follows the learning rate down
        scheduler = scheduler.model_copy(
            update={"max_lr": scheduler.max_lr * lr / train.optimizer.lr}
        )
    tuned = train.model_copy(
        update={
            "epochs": epochs,
            "optimizer": train.optimizer.model_copy(update={"lr": lr}),
            "scheduler": scheduler,
            "distributed": None,  # fine-tuning runs in this process
            "distill": None,  # a distilled parent's teacher taught it; fine-tuning is plain
        }
    )
    return recipe.model_copy(update={"train": tuned})


def finetune(
    job: CompressJob,
    model: nn.Module,
    *,
    name: str,
    epochs: int,
    learning_rate: float | None = None,
    card: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    finalize: Callable[[nn.Module], nn.Module] | None = None,
) -> tuple[nn.Module, str | None]:
    """Train ``model`` (already initialised: it is not re-initialised) for ``epochs`` epochs
    with the recipe's engine settings, in a child run of ``job.run_id``.

    The child run (stage ``compress``, tag ``compression: name``) records the metrics of each
    epoch and ends with ``model.safetensors`` (the whole state dict), ``model.json`` (the
    parent's card updated with ``card``), ``preprocessing.json`` and the test metrics
    ``test_*``; it is marked ``finished``, or ``failed`` when training raises (the error is
    raised again).

    Args:
        job: the compression job (recipe, data, task, store, parent run, callbacks).
        model: the network to train; it is trained in place and returned on the CPU, in eval
            mode.
        name: the variant's name (the run's ``compression`` tag and part of its name).
        epochs: epochs to train; 0 trains nothing and opens no run.
        learning_rate: the fine-tuning learning rate (default: the recipe's).
        card: keys merged into the parent's model card (e.g. ``{"resized": True}``).
        tags: more tags of the child run (e.g. a pruning step).
        finalize: applied to the trained model before it is saved and returned (e.g. pruning
            masks made permanent, so the weights file is a plain state dict).

    Returns:
        The trained model and the child run's id (None when ``epochs`` is 0).

    Example:
        >>> # model, run_id = finetune(job, pruned, name="pruned-50", epochs=2)
    """
    if epochs <= 0:
        return model, None
    from safetensors.torch import save as st_save

    from danlu.config import recipe_to_dict
    from danlu.store import StoreTracker, git_state, host_name, package_versions
    from danlu.train import Trainer

    recipe = finetune_recipe(job.recipe, epochs=epochs, learning_rate=learning_rate)
    data, task, store = job.data, job.task, job.store
    resolved = recipe_to_dict(recipe)
    commit, dirty = git_state()
    run = store.create_run(
        experiment=recipe.name,
        name=f"{recipe.name}-{name}",
        stage="compress",
        parent_id=job.run_id,
        recipe=resolved,
        data_fingerprint=data.raw_fingerprint,
        git_commit=commit,
        git_dirty=dirty,
        packages=package_versions(),
        host=host_name(),
        tags={
            "task": recipe.task,
            "model.type": str(job.card.get("type", recipe.model.type)),
            "compression": name,
            **(tags or {}),
        },
    )
    tracker = StoreTracker(store, run.id)
    try:
        tracker.log_params(resolved)
        trainer = Trainer(recipe.train, callbacks=job.callbacks, tracker=tracker)
        trainer.fit(model, task, data)
        from danlu.train._privacy import composed_record, privacy_record

        if (spent := privacy_record(trainer)) is not None:  # DP again: both trainings' ε
            before = job.card.get("privacy")
            total = composed_record(before, spent) if before else spent
            card = {**(card or {}), "privacy": total}
        if data.stream is None:
            outputs, y_test = trainer.predict_outputs(data.x_test).numpy(), data.y_test
        else:  # streamed test rows
            streamed, targets = trainer.stream_outputs(data.stream, "test")
            outputs, y_test = streamed.numpy(), targets.numpy()
        scores = task.metrics(outputs, y_test, data.schema) if len(y_test) else {}
        test = {f"test_{k}": v for k, v in scores.items() if isinstance(v, float)}
        tracker.log_metrics(
            {**test, "best_epoch": trainer.best_epoch, "epochs_run": trainer.epoch},
            step=trainer.epoch,
        )
        model = trainer.model.cpu().eval()
        if finalize is not None:
            model = finalize(model)
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        tracker.log_artifact("model.safetensors", st_save(state))
        tracker.log_artifact("model.json", json.dumps({**job.card, **(card or {})}, indent=1))
        tracker.log_artifact(
            "preprocessing.json", json.dumps(data.preprocessor.to_dict(), indent=1)
        )
        tracker.set_status("finished")
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        tracker.set_status(status, error=str(exc) or type(exc).__name__)
        raise
    log.info("Fine-tuned %s for %d epochs in run %s: %s", name, trainer.epoch, run.id, test)
    return model, run.id
