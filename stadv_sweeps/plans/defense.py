"""Attacks against defenses: {FGSM, C&W, stAdv} x {undefended, FGSM-adv, ensemble-adv, PGD-adv,
blur, denoiser} x {A, B, C}: the paper's second claim (Xiao et al. 2018), that stAdv still
succeeds where adversarial training stops pixel-space attacks.

One Ray Tune trial per (model, defense, attack), logged like the other sweeps (a parent run,
nested child runs with parameters, metrics, tags and artifacts). Each trial attacks the first
``--n-images`` test images, one random target per image (seeded: the same targets for every
attack, defense and model; the target protocol of the paper's defense table could not be
checked here: ``--targets all`` gives the Table 1 protocol),
with the attack's defaults: FGSM eps 0.3 (the paper's defense table), C&W L2 with a 5-step
binary search from c = 1e-2 and 200 Adam steps per step (CPU-feasible; the reference code's
9 x 10,000 from c = 1e-3 with --preset paper), stAdv at tau 0.05, kappa 0. Blur (3x3,
sigma 1) and the denoiser sit in front of the undefended model; the attacks differentiate
through them (white-box). At the end: a table of attack success with Wilson 95 % intervals and
each defended model's clean test accuracy.

Defended models missing from the model store are trained once, in the driver, before the
trials. The CPU default (--preset cpu): adversarial training from scratch on the first
10,000 training images for one epoch (Adam 1e-3, batch 64): FGSM-adv and ensemble-adv with
FGSM eps 0.3 (half clean, half adversarial loss; ensemble sources: the model itself and the
other two undefended architectures), PGD-adv with 20 steps of 0.02 in the 0.3 ball (the same
0.4 path length as Madry et al.'s 40 x 0.01), half its loss on clean images
(``--pgd-adv-weight``; Madry et al.'s adversarial-only loss collapses the models at this
size: ``docs/defenses.md``); the denoiser 2 epochs on 10,000 images. The cost on a CPU is in
``docs/performance.md``. Such models are weaker than the paper's: their clean accuracy is in
the table.

--preset paper trains on all 60,000 images with each model's epochs (6; C: 10, as the
undefended C) and PGD 40 x 0.01, as ``stadv train --defense`` does (the same checkpoints),
and attacks 10,000 images: for a GPU (the driver trains on its own device).
Every setting is recorded in the checkpoint's sidecar and the runs' parameters; a stored model
trained otherwise than asked is an error, never used silently.

    python sweeps/defense_sweep.py                          # CPU default: 54 trials, 30 images each
    python sweeps/defense_sweep.py --models B --defenses none pgd blur --attacks fgsm stadv
    python sweeps/defense_sweep.py --address auto --tracking-uri http://mlflow:5000 --preset paper
    python sweeps/defense_sweep.py --smoke-test             # model B, tiny, well under a minute
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from mlflow import MlflowClient

from defenses import DEFENSES
from stadv.data import DATASETS
from stadv.registry import ATTACKS
from stadv.targets import TARGET_CHOICES
from stadv_sweeps.engine import runner
from stadv_sweeps.engine.errors import SweepError
from stadv_sweeps.engine.spec import Point
from stadv_sweeps.plans import defense_table
from stadv_sweeps.plans.defense_models import DefendedModels
from stadv_sweeps.plans.defense_spec import (
    ATTACK_OPTIONS,
    PAPER_ATTACK_OPTIONS,
    PRESETS,
    SMOKE_ATTACK_OPTIONS,
    DefenseSpec,
    attack_options,
    build_defense_points,
)

SWEEP = "defenses"
#: Images attacked per trial: the CPU default, ``--preset paper`` and ``--smoke-test``.
N_IMAGES = {"cpu": 30, "paper": 10_000, "smoke": 2}


def _limit(text: str) -> int | None:
    """``--...-train-limit``: a number of images, or ``all``."""
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number or 'all', got {text!r}"
        ) from None


#: Command-line option -> (DefenseSettings field, type, help).
SETTING_OPTIONS: dict[str, tuple[str, Any, str]] = {
    "--adv-train-limit": ("train_limit", _limit, "training images (N or all)"),
    "--adv-epochs": ("epochs", int, "epochs of adversarial training"),
    "--adv-epsilon": ("epsilon", float, "L-inf budget of the training attacks"),
    "--pgd-steps": ("pgd_steps", int, "PGD training steps"),
    "--pgd-alpha": ("pgd_alpha", float, "PGD training step size"),
    "--pgd-adv-weight": ("pgd_adv_weight", float, "PGD training: share of the adversarial loss"),
    "--denoiser-epochs": ("denoiser_epochs", int, "denoiser training epochs"),
    "--denoiser-train-limit": ("denoiser_train_limit", _limit, "denoiser images (N or all)"),
    "--blur-kernel-size": ("blur_kernel_size", int, "odd kernel size of the blur"),
    "--blur-sigma": ("blur_sigma", float, "sigma of the blur, in pixels"),
}
#: Command-line option -> (attack, option, type).
ATTACK_FLAGS: dict[str, tuple[str, str, Any]] = {
    "--fgsm-epsilon": ("fgsm", "epsilon", float),
    "--cw-search-steps": ("cw", "binary_search_steps", int),
    "--cw-iterations": ("cw", "max_iterations", int),
    "--cw-initial-const": ("cw", "initial_const", float),
    "--tau": ("stadv", "tau", float),
    "--kappa": ("stadv", "kappa", float),
    "--stadv-iterations": ("stadv", "max_iterations", int),
}


class DefenseSweep:
    """:class:`runner.SweepPlan` of {attacks} x {defenses} x {models}."""

    sweep = SWEEP
    report_script: str | None = None

    def __init__(self, description: str) -> None:
        self.description = description

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("what to sweep")
        g.add_argument("--models", nargs="+", metavar="M", help="models (default: A B C)")
        g.add_argument(
            "--attacks",
            nargs="+",
            metavar="A",
            help=f"of {', '.join(ATTACKS)} (default: fgsm cw stadv)",
        )
        g.add_argument(
            "--defenses", nargs="+", metavar="D", help=f"of {', '.join(DEFENSES)} (default: all)"
        )
        g.add_argument("--dataset", choices=DATASETS, help="data set (default mnist)")
        g.add_argument("--n-images", type=int, metavar="N", help="test images attacked per trial")
        g.add_argument(
            "--targets", choices=TARGET_CHOICES, help="target protocol (default random, seeded)"
        )
        g.add_argument(
            "--preset",
            choices=["cpu", "paper"],
            default="cpu",
            help="cpu (default): CPU-feasible training and attacks; paper: the papers' training "
            "(all data, PGD 40 x 0.01), C&W's reference search, 10,000 images (a GPU cluster)",
        )
        g.add_argument(
            "--smoke-test",
            action="store_true",
            help="model B, tiny training (variant 'smoke'), 2 images, few iterations",
        )
        g.add_argument("--dry-run", action="store_true", help="print the trials and exit")
        t = p.add_argument_group(
            "training of missing defended models (default: the preset's; recorded in each "
            "checkpoint's sidecar and the runs' parameters)"
        )
        for flag, (_, kind, text) in SETTING_OPTIONS.items():
            t.add_argument(flag, type=kind, metavar="V", help=text, default=argparse.SUPPRESS)
        t.add_argument(
            "--static-models", nargs="+", metavar="M", help="ensemble training's static models"
        )
        a = p.add_argument_group("attack options (default: the preset's)")
        for flag, (attack, option, kind) in ATTACK_FLAGS.items():
            a.add_argument(
                flag, type=kind, metavar="V", help=f"{attack} {option}", default=argparse.SUPPRESS
            )

    def resolve(self, args: argparse.Namespace) -> DefenseSpec:
        if args.smoke_test and args.preset == "paper":
            raise SweepError("--smoke-test and --preset paper exclude each other")
        preset = "smoke" if args.smoke_test else args.preset
        options = {a: dict(o) for a, o in ATTACK_OPTIONS.items()}
        extra = {"paper": PAPER_ATTACK_OPTIONS, "smoke": SMOKE_ATTACK_OPTIONS}.get(preset, {})
        for attack, changes in extra.items():
            options[attack].update(changes)
        # (these options default to argparse.SUPPRESS: present only when given)
        for flag, (attack, option, _) in ATTACK_FLAGS.items():
            if hasattr(args, _dest(flag)):
                options[attack][option] = getattr(args, _dest(flag))
        changes = {
            field: getattr(args, _dest(flag))
            for flag, (field, _, _) in SETTING_OPTIONS.items()
            if hasattr(args, _dest(flag))
        }
        if args.static_models:
            changes["static_models"] = tuple(args.static_models)
        spec = DefenseSpec(
            sweep=SWEEP,
            models=("B",) if args.smoke_test else ("A", "B", "C"),
            n_images=N_IMAGES[preset],
            attack_options=options,
            preset=preset,
            settings=dataclasses.replace(PRESETS[preset], **changes),
            eval_images=2000 if args.smoke_test else None,
            smoke=args.smoke_test,
        )
        given = {
            "models": tuple(args.models) if args.models else None,
            "attacks": tuple(args.attacks) if args.attacks else None,
            "defenses": tuple(args.defenses) if args.defenses else None,
            "dataset": args.dataset,
            "n_images": args.n_images,
            "targets": args.targets,
        }
        return dataclasses.replace(spec, **{k: v for k, v in given.items() if v is not None})

    def from_json(self, raw: Mapping[str, Any]) -> DefenseSpec:
        return DefenseSpec.from_json(raw)

    def points(self, spec: DefenseSpec) -> list[Point]:
        return build_defense_points(spec)

    def parent_params(self, spec: DefenseSpec) -> dict[str, Any]:
        params: dict[str, Any] = {
            "sweep": spec.sweep,
            "models": " ".join(spec.models),
            "attacks": " ".join(spec.attacks),
            "defenses": " ".join(spec.defenses),
            "dataset": spec.dataset,
            "n_images": spec.n_images,
            "targets": spec.targets,
            "smoke_test": spec.smoke,
            "preset": spec.preset,
            "eval_images": spec.eval_images or "all",
        }
        params.update({f"training.{k}": v for k, v in dataclasses.asdict(spec.settings).items()})
        for attack in spec.attacks:
            full = attack_options(attack, spec.attack_options.get(attack, {}))
            params.update({f"{attack}.{k}": v for k, v in full.items()})
        return params

    def prepare_models(self, spec: DefenseSpec, args: argparse.Namespace) -> dict[str, Any]:
        return DefendedModels(spec, args.store, args.data_dir).all()

    def summary(self, parent: Any, df: Any) -> tuple[str, dict[str, float]]:
        text = defense_table.summary_text(df)
        return text, defense_table.metrics(defense_table.success_table(df))

    def log_summary(self, client: MlflowClient, parent: Any, df: Any) -> None:
        defense_table.log_summary(client, parent, df)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def main(argv: Sequence[str] | None = None) -> int:
    """``python sweeps/defense_sweep.py`` (exit status as
    :func:`stadv_sweeps.engine.runner.main`)."""
    return runner.main(DefenseSweep(__doc__ or ""), argv)
