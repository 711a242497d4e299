"""Knowledge distillation in the engine (``train.distill``): the model trains on a teacher's
outputs as well as on the labels.

For classes the loss is Hinton et al.'s ``α·KL(softmax(t/T) ‖ softmax(s/T))·T² + (1 − α)·task``
(the T² keeps the soft targets' gradients on the scale of the labels' as T grows); for values
(regression, one output) the soft term is the MSE to the teacher's output; for label sets
(multi-label) it is the per-label Bernoulli KL at T. The teacher runs on the same (augmented)
batch, in eval mode and without gradients. Validation and test metrics stay the task's own.

:func:`load_teacher` finds the teacher (a run or a registered model) in the store and
:func:`check_teacher` refuses one whose inputs or outputs differ from the student's, before any
training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from danlu.errors import ConfigError, NotFoundError, StoreError
from danlu.logging import get_logger

if TYPE_CHECKING:
    import torch

    from danlu.data import PreparedData
    from danlu.models import ModelBundle
    from danlu.store import Store
    from danlu.tasks import Task

__all__ = ["Distiller", "check_teacher", "distill_loss", "load_teacher"]

log = get_logger(__name__)

_KEY = "train.distill.teacher"


def distill_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    task_loss: torch.Tensor,
    *,
    alpha: float,
    temperature: float,
    target_kind: str = "classes",
) -> torch.Tensor:
    """``alpha · soft + (1 − alpha) · task_loss``, the soft term by the kind of target.

    Args:
        student: the student's outputs, (B, K) logits, or (B, 1) / (B,) values.
        teacher: the teacher's outputs on the same rows, the same shape.
        task_loss: the task's loss of ``student`` on the labels (a scalar).
        target_kind: ``classes`` (KL of the softened softmaxes, × T²), ``values`` (MSE to the
            teacher) or ``label_sets`` (per-label Bernoulli KL of the softened sigmoids, × T²).

    Example:
        >>> import torch
        >>> s, t = torch.zeros(2, 3), torch.zeros(2, 3)
        >>> float(distill_loss(s, t, torch.tensor(1.0), alpha=0.5, temperature=4.0))
        0.5
    """
    import torch
    from torch.nn import functional as F

    s, t = student.float(), teacher.float()
    if target_kind == "values":
        soft = F.mse_loss(s.reshape(len(s), -1), t.reshape(len(t), -1))
    elif target_kind == "label_sets":
        temp = temperature
        p = torch.sigmoid(t / temp)  # (B, L) the teacher's probability of each label
        log_q, log_not_q = F.logsigmoid(s / temp), F.logsigmoid(-s / temp)
        log_p, log_not_p = F.logsigmoid(t / temp), F.logsigmoid(-t / temp)
        kl = p * (log_p - log_q) + (1 - p) * (log_not_p - log_not_q)  # (B, L)
        soft = kl.mean() * temp**2
    else:
        temp = temperature
        log_q = F.log_softmax(s / temp, dim=-1)  # (B, K) student
        log_p = F.log_softmax(t / temp, dim=-1)  # (B, K) teacher
        soft = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * temp**2
    return alpha * soft + (1 - alpha) * task_loss


@dataclass
class Distiller:
    """The teacher and the weights of the soft targets; :meth:`loss` adds them to a batch's."""

    teacher: torch.nn.Module
    alpha: float
    temperature: float
    target_kind: str

    def to(self, device: torch.device) -> Distiller:
        """The teacher on ``device`` in eval mode, its weights frozen."""
        self.teacher = self.teacher.to(device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        return self

    def loss(
        self, xb: torch.Tensor, outputs: torch.Tensor, task_loss: torch.Tensor
    ) -> torch.Tensor:
        """The distillation loss of the student's ``outputs`` on ``xb`` (B, D)."""
        import torch

        with torch.inference_mode():
            teacher_out = self.teacher(xb)  # (B, K) or (B, 1)
        return distill_loss(
            outputs,
            teacher_out.clone(),  # out of inference mode: usable in autograd as a constant
            task_loss,
            alpha=self.alpha,
            temperature=self.temperature,
            target_kind=self.target_kind,
        )


def load_teacher(store: Store, ref: str) -> tuple[ModelBundle, str]:
    """The teacher named by ``ref`` (a run id, or ``NAME``, ``NAME:VERSION``, ``NAME@ALIAS``) and
    what it resolved to (``run RUN_ID`` or ``model NAME:VERSION``), for the run's tags.

    Raises:
        ConfigError: no run and no registered model has that name, or its files do not load
            (the message names ``train.distill.teacher``).
    """
    from danlu.models import load_bundle

    is_run = False
    if ":" not in ref and "@" not in ref:
        try:
            store.get_run(ref)
            is_run = True
        except (NotFoundError, StoreError):
            is_run = False
    try:
        if is_run:
            if not store.artifact_path(ref, "model.json").is_file():
                raise ConfigError(
                    f"{_KEY}: run {ref} has no trained model (did it finish training?). Name a "
                    "run that finished, or a registered model NAME:VERSION."
                )
            return load_bundle(store.run_reader(ref), f"Run {ref}"), f"run {ref}"
        mv = store.resolve(ref)
        return load_bundle(store.model_reader(mv), f"Model {mv.ref}"), f"model {mv.ref}"
    except (NotFoundError, StoreError) as exc:
        raise ConfigError(
            f"{_KEY}: {ref!r} is neither a run of this store nor a registered model that loads "
            f"({exc}). Name a run id or NAME:VERSION / NAME@ALIAS (see danlu runs, danlu models)."
        ) from None


def check_teacher(
    teacher: ModelBundle, student: torch.nn.Module, data: PreparedData, task: Task
) -> None:
    """Refuse a teacher that cannot teach this student: other inputs or other outputs.

    Raises:
        ConfigError: the teacher's input width or output shape differs from the student's
            (the message names ``train.distill.teacher`` and both shapes).
    """
    import numpy as np
    import torch

    want, have = data.schema.input_dim, teacher.schema.input_dim
    if want != have:
        raise ConfigError(
            f"{_KEY}: the teacher takes {have} input columns, the student's data has {want}. "
            "The teacher must be trained on the same columns and preprocessing (the same data "
            "block)."
        )
    if len(data.x_train):  # the real output shapes, from one training row
        row = torch.as_tensor(np.asarray(data.x_train[:1]))  # (1, D)
        shapes = []
        for model in (student, teacher.model):
            was_training = model.training
            model.eval()
            device = next(iter(model.parameters()), torch.empty(0)).device
            with torch.inference_mode():
                shapes.append(tuple(model(row.to(device)).shape[1:]))
            model.train(was_training)
        student_shape, teacher_shape = shapes
    else:  # streamed data: the shapes the tasks give the heads
        student_shape = (task.output_dim(data.schema),)
        teacher_shape = (teacher.task.output_dim(teacher.schema),)
    if tuple(student_shape) != tuple(teacher_shape):
        raise ConfigError(
            f"{_KEY}: the student's output shape {list(student_shape)} differs from the "
            f"teacher's {list(teacher_shape)}: a teacher can only teach a student with the same "
            "outputs (the same task and classes). Name a teacher trained for this task."
        )
    if teacher.task.target_kind != task.target_kind:
        raise ConfigError(
            f"{_KEY}: the teacher was trained for {teacher.task.name}, the student for "
            f"{task.name}. Name a teacher trained for {task.name}."
        )
    if teacher.preprocessor.to_dict() != data.preprocessor.to_dict():
        log.warning(
            "the teacher was trained with other preprocessing than the student's data (another "
            "split or scaling); its soft targets may be off"
        )
