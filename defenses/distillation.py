"""Defensive distillation (Papernot, McDaniel, Wu, Jha & Swami, IEEE S&P 2016, arXiv 1511.04508).

Three steps, all at one temperature T (100 in the paper's MNIST experiments):

1. a *teacher* F is trained with the cross-entropy of ``softmax(Z_F(x) / T)``
   (:class:`TemperatureCrossEntropy`);
2. its soft labels ``softmax(Z_F(x) / T)`` become the training targets of
3. a *student* (the same architecture) trained at the same T with the soft-label cross-entropy
   (:class:`DistillationLoss`, :func:`distillation_loss`)::

       L(x) = - sum_i softmax(Z_F(x) / T)_i * log softmax(Z_S(x) / T)_i

At test time the student runs at T = 1: the defended model is the student itself, returning its
raw logits ``Z_S(x)``. Training at T = 100 makes those logits about T times larger than a
normally trained model's, so ``softmax(Z_S(x))`` saturates to a one-hot vector in float32 and
the gradient of the cross-entropy vanishes: FGSM/PGD on the cross-entropy and the original JSMA
fail (gradient masking, not robustness).

**It does not defend against attacks on logits.** Carlini & Wagner (IEEE S&P 2017, "Towards
Evaluating the Robustness of Neural Networks", Sec. VIII) break distilled networks with their
margin loss on Z (:class:`stadv.cw.CarliniWagnerL2`, and stAdv's ``loss_input="logits"``),
which does not go through the saturated softmax: success stays at ~100 % with distortions
about equal to the undistilled model's. Report this defense against logit attacks, never only
against FGSM.

Details here: the soft labels are computed on the fly from the teacher in eval mode (dropout
off, parameters frozen), which gives the same targets as precomputing them over the training set,
as Papernot et al. do; no T^2 factor (Hinton et al.'s) is applied, as in Papernot et al.; the
optimiser is :func:`stadv.train.train_model`'s Adam (the paper uses SGD with momentum; Adam's
steps do not depend on the loss's 1/T gradient scale).

Example::

    >>> student, report = train_distilled("B", train, temperature=100.0, epochs=6, seed=0)
    >>> student(images)            # the raw logits Z_S(x): evaluate and attack at T = 1
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stadv.data import TensorData
from stadv.model_mode import prepared_model
from stadv.models import build_model
from stadv.options import check_int, check_real
from stadv.train import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LR, TrainReport, train_model

#: Papernot et al.'s MNIST temperature.
DEFAULT_TEMPERATURE = 100.0

__all__ = [
    "DEFAULT_TEMPERATURE",
    "DistillationLoss",
    "DistillationReport",
    "TemperatureCrossEntropy",
    "distillation_loss",
    "soft_labels",
    "train_distilled",
]


def _check_temperature(temperature: float) -> float:
    return check_real("temperature", temperature, strict=True)


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean soft-label cross-entropy at temperature T (scalar).

    ``-mean_n sum_i softmax(Z_F / T)_{n,i} log softmax(Z_S / T)_{n,i}``; ``student_logits`` and
    ``teacher_logits`` (N, K). Gradients flow into the student's logits only.
    """
    t = _check_temperature(temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    target = F.softmax(teacher_logits.detach() / t, dim=1)
    return -(target * F.log_softmax(student_logits / t, dim=1)).sum(dim=1).mean()


def soft_labels(
    teacher: nn.Module, images: torch.Tensor, *, temperature: float, batch_size: int = 1000
) -> torch.Tensor:
    """The teacher's soft labels ``softmax(Z_F(x) / T)`` (N, K), in eval mode, without gradients."""
    t = _check_temperature(temperature)
    check_int("batch_size", batch_size, low=1)
    with prepared_model(teacher) as net, torch.no_grad():
        chunks = [
            F.softmax(net(images[s : s + batch_size]) / t, dim=1)
            for s in range(0, images.shape[0], batch_size)
        ]
    return torch.cat(chunks) if chunks else images.new_zeros((0, 0))


@dataclass(frozen=True, kw_only=True)
class TemperatureCrossEntropy:
    """The teacher's loss (a :class:`stadv.train.TrainLoss`): ``CE(softmax(Z(x) / T), y)``.

    ``temperature``: T [100.0]. Finite, > 0; T = 1 is the plain cross-entropy.
    """

    temperature: float = DEFAULT_TEMPERATURE

    def __post_init__(self) -> None:
        _check_temperature(self.temperature)

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        return F.cross_entropy(model(images) / self.temperature, labels)


@dataclass(frozen=True, kw_only=True)
class DistillationLoss:
    """The student's loss (a :class:`stadv.train.TrainLoss`; the true labels are ignored):
    :func:`distillation_loss` between the student's and ``teacher``'s logits at ``temperature``.

    The teacher runs in eval mode with frozen parameters (restored after each batch), on the
    batch's device, so training the student never changes it.

    Args (keyword-only): ``teacher`` the trained teacher (logits model); ``temperature`` T
    [100.0], the teacher's.
    """

    teacher: nn.Module
    temperature: float = DEFAULT_TEMPERATURE

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, nn.Module):
            raise ValueError(f"teacher must be an nn.Module, got {self.teacher!r}")
        _check_temperature(self.temperature)

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        with prepared_model(self.teacher) as teacher, torch.no_grad():
            target_logits = teacher(images)
        return distillation_loss(model(images), target_logits, self.temperature)


@dataclass(frozen=True)
class DistillationReport:
    """What :func:`train_distilled` did: the temperature and both training runs."""

    temperature: float
    teacher: TrainReport | None  # None when a trained teacher was given
    student: TrainReport


def train_distilled(
    model_name: str,
    train: TensorData,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    epochs: int = DEFAULT_EPOCHS,
    teacher_epochs: int | None = None,
    teacher: nn.Module | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    device: torch.device | None = None,
    max_batches: int | None = None,
    progress: bool = False,
) -> tuple[nn.Module, DistillationReport]:
    """Defensive distillation of architecture ``model_name`` ("A", "B", "C") on ``train``.

    Trains a teacher at T (:class:`TemperatureCrossEntropy`) unless ``teacher`` is given (it
    must have been trained at the same T), then a freshly initialised student of the same
    architecture on the teacher's soft labels at T (:class:`DistillationLoss`). Both with
    :func:`stadv.train.train_model` (Adam).

    Args (keyword-only after ``train``; defaults in brackets):
        temperature: T [100.0, Papernot et al.'s MNIST value]. > 0.
        epochs: the student's epochs [6]; ``teacher_epochs``: the teacher's [``epochs``].
        teacher: a teacher already trained at ``temperature`` [None: train one].
        batch_size [64], lr [1e-3], max_batches per epoch [all], progress [False]: as
            :func:`stadv.train.train_model`.
        seed: teacher initialisation and training use ``seed``, the student's ``seed + 1``
            (different initial weights, as two separately trained networks) [0].
        device: where to train [CPU].

    Returns:
        ``(student, report)``: the student in eval mode, returning its raw logits (the defended
        model, evaluated and attacked at T = 1), and a :class:`DistillationReport`.
    """
    t = _check_temperature(temperature)
    check_int("epochs", epochs, low=1)
    if teacher_epochs is not None:
        check_int("teacher_epochs", teacher_epochs, low=1)
    if len(train) == 0:
        raise ValueError("cannot train on an empty data set")
    dev = device or torch.device("cpu")
    teacher_report: TrainReport | None = None
    if teacher is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            teacher = build_model(model_name)
        teacher_report = train_model(
            teacher.to(dev),
            train,
            epochs=epochs if teacher_epochs is None else teacher_epochs,
            seed=seed,
            loss_fn=TemperatureCrossEntropy(temperature=t),
            batch_size=batch_size,
            lr=lr,
            device=dev,
            max_batches=max_batches,
            progress=progress,
        )
    teacher = teacher.to(dev).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        student = build_model(model_name)
    student_report = train_model(
        student.to(dev),
        train,
        epochs=epochs,
        seed=seed + 1,
        loss_fn=DistillationLoss(teacher=teacher, temperature=t),
        batch_size=batch_size,
        lr=lr,
        device=dev,
        max_batches=max_batches,
        progress=progress,
    )
    return student.eval(), DistillationReport(
        temperature=t, teacher=teacher_report, student=student_report
    )
