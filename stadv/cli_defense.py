"""Command-line pieces for the defenses: ``stadv train --defense ...`` and ``stadv train-denoiser``.

:func:`add_defense_args` adds the adversarial-training options to the ``train`` parser and
:func:`defense_training` turns them into the loss, store variant and sidecar details that
:func:`stadv.store.train_and_store` takes. :func:`add_denoiser_parser` adds the
``train-denoiser`` sub-command. Bad values raise ``ValueError`` (``stadv`` prints it, exit 2).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from defenses import TRAINING_DEFENSES, defended_model, defense_variant
from stadv.attack_common import check_int, check_real
from stadv.flow import check_choice
from stadv.models import MODELS, check_model_name
from stadv.train import TrainLoss

__all__ = [
    "DefenseTraining",
    "add_defense_args",
    "add_denoiser_parser",
    "defended_model",
    "defense_training",
]


@dataclass(frozen=True)
class DefenseTraining:
    """What ``train_and_store`` needs for one defense: ``loss_fn`` (None: plain training),
    the store ``variant`` and ``extra`` details for the checkpoint's sidecar."""

    loss_fn: TrainLoss | None = None
    variant: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def add_defense_args(train_parser: argparse.ArgumentParser) -> None:
    """Add ``--defense`` and the adversarial-training options to the ``train`` sub-command."""
    g = train_parser.add_argument_group("adversarial training (defenses)")
    g.add_argument(
        "--defense",
        default="none",
        metavar="{" + ",".join(TRAINING_DEFENSES) + "}",
        help="train with FGSM (Goodfellow et al.), PGD (Madry et al.) or ensemble (Tramer et al.) "
        "adversarial examples; the checkpoint is stored as <dataset>-<model>-adv-<defense> "
        "(default none)",
    )
    g.add_argument(
        "--adv-epsilon", type=float, default=0.3, help="L-inf budget of the training attack (0.3)"
    )
    g.add_argument(
        "--adv-weight",
        type=float,
        default=None,
        help="share of the adversarial loss, in [0, 1] "
        "(default 0.5 for fgsm/ensemble, 1.0 for pgd)",
    )
    g.add_argument("--pgd-alpha", type=float, default=0.01, help="PGD step size (0.01)")
    g.add_argument("--pgd-steps", type=int, default=40, help="PGD steps (40)")
    g.add_argument(
        "--static-models",
        default=None,
        help="comma-separated pre-trained models crafting ensemble examples "
        "(default: the other architectures)",
    )


def _static_names(arg: str | None, model_name: str) -> list[str]:
    if arg is None:
        return [m for m in MODELS if m != model_name]
    names = [s.strip() for s in arg.split(",") if s.strip()]
    if not names:
        raise ValueError(f"--static-models must name at least one model, got {arg!r}")
    return [check_model_name(n) for n in names]


def defense_training(args: argparse.Namespace, model_name: str) -> DefenseTraining:
    """The loss, variant and sidecar details of ``args.defense`` for training ``model_name``.

    Every option is validated whatever the defense (``ValueError`` naming the bad value). For
    ``ensemble`` the static models are loaded from the store (trained first if missing).
    """
    from defenses.adversarial_training import (
        EnsembleAdversarialLoss,
        FGSMAdversarialLoss,
        PGDAdversarialLoss,
    )

    defense = check_choice("defense", args.defense, TRAINING_DEFENSES)
    name = check_model_name(model_name)
    epsilon = check_real("--adv-epsilon", args.adv_epsilon)
    if args.adv_weight is not None:
        weight = check_real("--adv-weight", args.adv_weight)
        if weight > 1:
            raise ValueError(f"--adv-weight must lie in [0, 1], got {args.adv_weight!r}")
    alpha = check_real("--pgd-alpha", args.pgd_alpha, strict=True)
    steps = check_int("--pgd-steps", args.pgd_steps, low=1)
    static = _static_names(args.static_models, name)
    if defense == "none":
        return DefenseTraining()
    loss: TrainLoss
    if defense == "fgsm":
        loss = FGSMAdversarialLoss(
            epsilon=epsilon, adv_weight=0.5 if args.adv_weight is None else args.adv_weight
        )
        params: dict[str, Any] = asdict(loss)
    elif defense == "pgd":
        loss = PGDAdversarialLoss(
            epsilon=epsilon,
            alpha=alpha,
            steps=steps,
            adv_weight=1.0 if args.adv_weight is None else args.adv_weight,
        )
        params = asdict(loss)
    else:
        from stadv.store import load_pretrained

        models = tuple(
            load_pretrained(
                s,
                dataset=args.dataset,
                store=args.store,
                data_dir=args.data_dir,
                device=args.device,
            )
            for s in static
        )
        ens = EnsembleAdversarialLoss(
            static_models=models,
            epsilon=epsilon,
            adv_weight=0.5 if args.adv_weight is None else args.adv_weight,
        )
        params = {k: v for k, v in asdict(ens).items() if k != "static_models"}
        params["static_models"] = static
        loss = ens
    return DefenseTraining(
        loss_fn=loss,
        variant=defense_variant(defense),
        extra={"defense": defense, "defense_params": params},
    )


def cmd_train_denoiser(args: argparse.Namespace) -> int:
    """Train the denoising autoencoder, report its test error, and save it to the store."""
    from defenses.denoiser import denoiser_path, denoising_error, save_denoiser, train_denoiser
    from stadv.data import ensure_data, load_tensors
    from stadv.devices import resolve_device

    noise_std = check_real("--noise-std", args.noise_std)
    check_int("--epochs", args.epochs, low=1)
    check_int("--channels", args.channels, low=1)
    if args.train_limit is not None:
        check_int("--train-limit", args.train_limit, low=1)
    dev = resolve_device(args.device)
    ensure_data(
        args.dataset,
        data_dir=args.data_dir,
        source_dir=args.data_source,
        download=not args.no_download,
    )
    train = load_tensors(args.dataset, split="train", data_dir=args.data_dir)
    if args.train_limit is not None:
        train = train.slice(0, args.train_limit)
    test = load_tensors(args.dataset, split="test", data_dir=args.data_dir)
    model, report = train_denoiser(
        train,
        noise_std=noise_std,
        channels=args.channels,
        epochs=args.epochs,
        seed=args.seed,
        device=dev,
        progress=not args.quiet,
    )
    noisy, denoised = denoising_error(model, test, noise_std=noise_std, seed=args.seed)
    save_denoiser(
        model,
        dataset=args.dataset,
        store=args.store,
        variant=args.variant,
        meta={
            "noise_std": noise_std,
            "epochs": args.epochs,
            "seed": args.seed,
            "train_images": len(train),
            "train_seconds": report.seconds,
            "epoch_losses": list(report.losses),
            "test_noisy_mse": noisy,
            "test_denoised_mse": denoised,
        },
    )
    row = {
        "denoiser": str(denoiser_path(args.dataset, store=args.store, variant=args.variant)),
        "dataset": args.dataset,
        "noise_std": noise_std,
        "test_noisy_mse": round(noisy, 6),
        "test_denoised_mse": round(denoised, 6),
        "train_seconds": round(report.seconds, 1),
    }
    print(json.dumps(row), flush=True)
    return 0


def add_denoiser_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    add_common: Callable[[argparse.ArgumentParser], None],
) -> argparse.ArgumentParser:
    """Add the ``train-denoiser`` sub-command (``add_common`` adds --dataset, --store, ...)."""
    p = subparsers.add_parser(
        "train-denoiser", help="train the denoising-autoencoder defense and store it"
    )
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument(
        "--noise-std", type=float, default=0.1, help="sigma of the training noise (0.1, MagNet's)"
    )
    p.add_argument("--channels", type=int, default=32, help="feature maps per layer (32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--variant", default="", help="store the denoiser as <dataset>-denoiser-<variant>"
    )
    p.add_argument(
        "--train-limit",
        type=int,
        default=None,
        help="train on the first N images only (quick runs)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_common(p)
    p.set_defaults(handler=cmd_train_denoiser)
    return p
