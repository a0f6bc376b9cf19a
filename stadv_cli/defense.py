"""``stadv train --defense ...``: the adversarial-training flags of the ``train`` sub-command.

:func:`add_defense_args` adds them; :func:`defense_training` checks them (``ValueError`` naming
the flag) and hands them to :func:`defenses.registry.build_defense_training`.
"""

from __future__ import annotations

import argparse

from defenses.registry import (
    TRAINING_DEFENSES,
    DefenseTraining,
    build_defense_training,
)
from stadv.models import check_model_name
from stadv.options import check_choice, check_real
from stadv_cli.common import check_flags

__all__ = ["DefenseTraining", "add_defense_args", "check_defense_flags", "defense_training"]


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


def _static_names(arg: str | None) -> list[str] | None:
    if arg is None:
        return None
    names = [s.strip() for s in arg.split(",") if s.strip()]
    if not names:
        raise ValueError(f"--static-models must name at least one model, got {arg!r}")
    return [check_model_name(n) for n in names]


def check_defense_flags(args: argparse.Namespace) -> None:
    """Check every defense flag, whatever the defense (``ValueError`` naming the flag)."""
    check_choice("defense", args.defense, TRAINING_DEFENSES)
    check_flags(
        args,
        ints={"--pgd-steps": 1},
        reals={
            "--adv-epsilon": (0.0, False),
            "--adv-weight": (0.0, False),
            "--pgd-alpha": (0.0, True),
        },
    )
    if args.adv_weight is not None and check_real("--adv-weight", args.adv_weight) > 1:
        raise ValueError(f"--adv-weight must lie in [0, 1], got {args.adv_weight!r}")
    _static_names(args.static_models)


def defense_training(args: argparse.Namespace, model_name: str) -> DefenseTraining:
    """The loss, variant and sidecar details of ``args.defense`` for training ``model_name``
    (:func:`~defenses.registry.build_defense_training`; for ``ensemble`` the static
    models are loaded from the store, trained first if missing)."""
    check_defense_flags(args)
    return build_defense_training(
        args.defense,
        model_name=model_name,
        epsilon=args.adv_epsilon,
        adv_weight=args.adv_weight,
        pgd_alpha=args.pgd_alpha,
        pgd_steps=args.pgd_steps,
        static_models=_static_names(args.static_models),
        dataset=args.dataset,
        store=args.store,
        data_dir=args.data_dir,
        device=args.device,
    )
