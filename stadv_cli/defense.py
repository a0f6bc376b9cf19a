"""``stadv train --defense ...``: the training-defense flags of the ``train`` sub-command.

:func:`add_defense_args` adds them; :func:`defense_training` checks them (``ValueError`` naming
the flag) and hands them to :func:`defenses.registry.build_defense_training`. The options of
the defenses registered after adversarial training (distillation, PCL) get generated flags
``--<defense>-<option>`` (``--distillation-temperature``, ``--pcl-warmup-epochs``,
``--pcl-pgd-steps``); ``--epochs``, ``--train-limit``, ``--seed`` and ``--adv-epsilon`` are
shared.
"""

from __future__ import annotations

import argparse
from typing import Any

from defenses.registry import (
    TRAINING_DEFENSES,
    DefenseTraining,
    build_defense_training,
    defense_class,
)
from stadv.models import check_model_name
from stadv.options import add_option_flags, check_choice, check_real, options, parse_value
from stadv_cli.common import check_flags

#: Adversarial training's flags predate the registry (``--pgd-steps``, ``--adv-weight``).
_OWN_FLAGS = ("none", "fgsm", "ensemble", "pgd")
#: Options every training defense reads from the ``train`` sub-command's own flags.
_SHARED = ("epsilon", "epochs", "train_limit", "seed")


def _generated() -> dict[str, dict[str, Any]]:
    """defense -> its options with a generated ``--<defense>-<option>`` flag."""
    out = {}
    for defense in TRAINING_DEFENSES:
        if defense in _OWN_FLAGS:
            continue
        opts = options(defense_class(defense))
        out[defense] = {n: o for n, o in opts.items() if n not in _SHARED}
    return out


def _dest(defense: str) -> str:
    return f"dopt_{defense.replace('-', '_')}__"


__all__ = ["DefenseTraining", "add_defense_args", "check_defense_flags", "defense_training"]


def add_defense_args(train_parser: argparse.ArgumentParser) -> None:
    """Add ``--defense`` and the adversarial-training options to the ``train`` sub-command."""
    g = train_parser.add_argument_group(
        "training defenses (adversarial training, distillation, PCL)"
    )
    g.add_argument(
        "--defense",
        default="none",
        metavar="{" + ",".join(TRAINING_DEFENSES) + "}",
        help="train with FGSM (Goodfellow et al.), PGD (Madry et al.) or ensemble (Tramer et al.) "
        "adversarial examples (stored as <dataset>-<model>-adv-<defense>), defensive "
        "distillation (Papernot et al., <dataset>-<model>-distilled, its teacher "
        "<dataset>-<model>-distill-teacher), or the prototype conformity loss (Mustafa et al.; "
        "pcl-pgd: with PGD examples; <dataset>-<model>-pcl[-pgd]) (default none)",
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
    for defense, opts in _generated().items():
        add_option_flags(
            g,
            opts,
            dest_prefix=_dest(defense),
            owner=defense,
            flag_names={n: f"--{defense}-{n.replace('_', '-')}" for n in opts},
        )


def _defense_options(args: argparse.Namespace) -> dict[str, Any]:
    """The generated flags given, typed, as ``<defense>_<option>`` (``ValueError`` naming a
    bad value); each defense checks its own ranges when it is built."""
    out: dict[str, Any] = {}
    for defense, opts in _generated().items():
        for name in opts:
            raw = getattr(args, f"{_dest(defense)}{name}", None)
            if raw is not None:
                out[f"{defense}_{name}"] = parse_value(defense_class(defense), name, raw)
    return out


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
    given = _defense_options(args)
    for defense in _generated():
        mine = {k[len(defense) + 1 :]: v for k, v in given.items() if k.startswith(f"{defense}_")}
        if mine and defense != args.defense:
            flags = ", ".join(f"--{defense}-{k.replace('_', '-')}" for k in mine)
            raise ValueError(f"{flags} only apply with --defense {defense}, not {args.defense!r}")
        if defense == args.defense:
            defense_class(defense)(**mine)  # the defense's own range checks


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
        epochs=args.epochs,
        train_limit=args.train_limit,
        seed=args.seed,
        options=_defense_options(args),
    )
