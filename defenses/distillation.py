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
steps do not depend on the loss's 1/T gradient scale). At T = 100 the logits must grow about T
times larger than usual, which Adam's default rate (1e-3) does not reach in a short run: the
registered defense trains both networks at ``lr`` 1e-2 (:data:`DEFAULT_DISTILLATION_LR`,
``benchmarks/new_defenses.py``'s ``--distill-lr``).

As a registered defense (:class:`DistillationDefense`, ``stadv train --defense distillation``,
the defense sweep's ``distillation`` row) the teacher and the student go through the model
store: the teacher as ``<dataset>-<model>-distill-teacher[-<variant>].pt`` (trained once at T,
reused, checked against T, its epochs and images on every reload), the student, the defended
classifier, as ``<dataset>-<model>-distilled[-<variant>].pt``.

Example::

    >>> student, report = train_distilled("B", train, temperature=100.0, epochs=6, seed=0)
    >>> student(images)            # the raw logits Z_S(x): evaluate and attack at T = 1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from defenses.base import DefenseContext, Training, check_recorded, option_values, store_variant
from stadv.data import TensorData, load_tensors
from stadv.devices import resolve_device
from stadv.model_mode import prepared_model
from stadv.models import build_model, check_model_name
from stadv.options import check_int, check_real
from stadv.store import CheckpointError, checkpoint_path, load_checkpoint, train_and_store
from stadv.train import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    TrainLoss,
    TrainReport,
    default_recipe,
    train_model,
)

#: Papernot et al.'s MNIST temperature.
DEFAULT_TEMPERATURE = 100.0
#: The store variant's stem of the distillation teachers.
TEACHER_VARIANT = "distill-teacher"
#: Adam's rate of the registered defense's teacher and student at T.
DEFAULT_DISTILLATION_LR = 1e-2

__all__ = [
    "DEFAULT_DISTILLATION_LR",
    "DEFAULT_TEMPERATURE",
    "TEACHER_VARIANT",
    "AdamAt",
    "DistillationDefense",
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


# ---------------------------------------------------------------------------------------------
# The defense, as the registry (defenses.registry) builds it
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class AdamAt:
    """:func:`stadv.train.train_model` at Adam's rate ``lr`` (a :class:`stadv.train.Trainer`
    for :func:`stadv.store.train_and_store`, which otherwise trains at 1e-3)."""

    lr: float

    def __post_init__(self) -> None:
        check_real("lr", self.lr, strict=True)

    def __call__(
        self,
        model: nn.Module,
        data: TensorData,
        *,
        epochs: int,
        lr_decay_epochs: int,
        seed: int,
        device: torch.device | None,
        loss_fn: TrainLoss | None,
        progress: bool,
    ) -> TrainReport:
        return train_model(
            model,
            data,
            epochs=epochs,
            lr=self.lr,
            lr_decay_epochs=lr_decay_epochs,
            seed=seed,
            device=device,
            loss_fn=loss_fn,
            progress=progress,
        )


@dataclass(frozen=True, kw_only=True)
class DistillationDefense:
    """Defensive distillation (Papernot et al. 2016) as a training defense.

    The recipe's loss is :class:`DistillationLoss` on a teacher of the same architecture trained
    at ``temperature`` (:class:`TemperatureCrossEntropy`); the stored, defended classifier is the
    student, returning its raw logits (evaluated and attacked at T = 1).

    Options (keyword-only; defaults in brackets):
        temperature: T of the teacher and the student [100.0, the paper's MNIST value]. > 0.
        train_limit: both train on the first N training images [None: all]. >= 1.
        epochs: both train this long [None: the model's recipe, 6; C 10]. >= 1.
        lr: Adam's rate of both [1e-2: the logits must grow ~T times; see the module]. > 0.
        seed: the student's initialisation and shuffling; the teacher's use ``seed + 1`` (two
            separately initialised networks, as in the paper) [0]. >= 0.

    Stored as ``<dataset>-<model>-distilled[-<variant>].pt``, its teacher as
    ``<dataset>-<model>-distill-teacher[-<variant>].pt`` (trained once, reused by later
    students; a stored teacher trained otherwise than asked is
    :class:`~defenses.base.StoredDefenseMismatch`).
    """

    name: ClassVar[str] = "distillation"
    label: ClassVar[str] = "distilled"
    store_variant: ClassVar[str] = "distilled"
    trains: ClassVar[bool] = True

    temperature: float = DEFAULT_TEMPERATURE
    train_limit: int | None = None
    epochs: int | None = None
    lr: float = DEFAULT_DISTILLATION_LR
    seed: int = 0

    def __post_init__(self) -> None:
        _check_temperature(self.temperature)
        check_real("lr", self.lr, strict=True)
        if self.train_limit is not None:
            check_int("train_limit", self.train_limit, low=1)
        if self.epochs is not None:
            check_int("epochs", self.epochs, low=1)
        check_int("seed", self.seed, low=0)

    def front(self, ctx: DefenseContext) -> nn.Module | None:
        return None

    def identity(self) -> dict[str, Any]:
        return option_values(self)

    def teacher_variant(self, ctx: DefenseContext) -> str:
        """The teacher's store variant: ``distill-teacher[-<ctx.variant>]``."""
        return "-".join(part for part in (TEACHER_VARIANT, ctx.variant) if part)

    def _teacher_params(self) -> dict[str, Any]:
        return {"temperature": float(self.temperature), "lr": float(self.lr), "role": "teacher"}

    def training(self, model: str, ctx: DefenseContext) -> Training | None:
        name = check_model_name(model)
        params = {
            "temperature": float(self.temperature),
            "lr": float(self.lr),
            "teacher_variant": self.teacher_variant(ctx),
            "teacher_seed": self.seed + 1,
        }
        return Training(
            make_loss=lambda: DistillationLoss(
                teacher=self.teacher(name, ctx), temperature=self.temperature
            ),
            variant=store_variant(self, ctx.variant),
            params=params,
            epochs=self.epochs,
            train_limit=self.train_limit,
            seed=self.seed,
            trainer=AdamAt(lr=self.lr),
        )

    def teacher(self, model: str, ctx: DefenseContext) -> nn.Module:
        """The teacher of ``model`` at this temperature (eval mode): from the store, checked
        against the options, or (``ctx.train``) trained and stored now.

        Raises:
            StoredDefenseMismatch: the stored teacher was trained otherwise.
            CheckpointError: none is stored and ``ctx.train`` is False, or it is corrupt.
        """
        name = check_model_name(model)
        variant = self.teacher_variant(ctx)
        dev = resolve_device(ctx.device)
        path = checkpoint_path(name, ctx.dataset, store=ctx.store, variant=variant)
        if path.exists() or path.with_suffix(".json").exists():
            teacher, info = load_checkpoint(path, model_name=name, map_location=dev)
            n_train = len(load_tensors(ctx.dataset, split="train", data_dir=ctx.data_dir))
            limit = self.train_limit
            expected = {
                "epochs": self.epochs or default_recipe(name).epochs,
                "train_images": n_train if limit is None else min(limit, n_train),
                "seed": self.seed + 1,
                **self._teacher_params(),
            }
            recorded = {
                "epochs": info.epochs,
                "train_images": info.extra.get("train_images"),
                "seed": info.seed,
                **info.extra.get("defense_params", {}),
            }
            check_recorded(str(path), recorded, expected)
            return teacher.to(dev).eval()
        if not ctx.train:
            raise CheckpointError(
                f"no distillation teacher at {path}; run "
                f"`stadv train --model {name} --dataset {ctx.dataset} --defense distillation`"
            )
        teacher, _ = train_and_store(
            name,
            dataset=ctx.dataset,
            store=ctx.store,
            data_dir=ctx.data_dir,
            epochs=self.epochs,
            seed=self.seed + 1,
            device=dev,
            variant=variant,
            loss_fn=TemperatureCrossEntropy(temperature=self.temperature),
            train_limit=self.train_limit,
            extra={"defense": "distillation-teacher", "defense_params": self._teacher_params()},
            progress=ctx.progress,
            trainer=AdamAt(lr=self.lr),
        )
        return teacher.to(dev).eval()
