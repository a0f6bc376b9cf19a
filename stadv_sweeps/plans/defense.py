"""Attacks against defenses: {FGSM, C&W, stAdv, DeepFool, JSMA, few-pixel} x {undefended,
FGSM-adv, ensemble-adv, PGD-adv, blur, denoiser, distilled, PCL, PCL+PGD-adv, VAE detector} x
{A, B, C}: the paper's second claim (Xiao et al. 2018), that stAdv still
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

DeepFool takes no targets: its trials run untargeted (the table says so in its column). JSMA
(theta 1, gamma 14.5 %) and the few-pixel attack (3 pixels; differential evolution 100 x 20
generations, Su et al.'s 400 x 100 with --preset paper) follow the target protocol.

Defensive distillation (T = 100; teacher and student each trained like the adversarial
trainings below), the prototype conformity loss (one epoch of cross-entropy, then one of PCL;
pcl-pgd with PGD 20 x 0.02 examples) and the VAE detector are rows too. The detector leaves the
classifier unchanged: its cells are the share of successful adversarial examples it flags at
5 % false positives on clean validation images (held out from the training split), the success
of the attack run against classifier and detector together (stAdv, C&W, FGSM, PGD), and the
ROC AUC.

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

    python sweeps/defense_sweep.py                          # CPU default: 180 trials, 30 images each
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

from defenses.registry import DEFENSES as REGISTRY
from defenses.registry import defense_class
from stadv.data import DATASETS
from stadv.options import add_option_flags, given_options, options, parse_value
from stadv.registry import ATTACKS
from stadv.targets import TARGET_CHOICES
from stadv_sweeps.engine import runner
from stadv_sweeps.engine.errors import SweepError
from stadv_sweeps.engine.spec import Point, config_int, config_models, load_config, parse_option
from stadv_sweeps.plans import defense_table
from stadv_sweeps.plans.defense_models import DefendedModels
from stadv_sweeps.plans.defense_spec import (
    ATTACK_OPTIONS,
    DEFAULT_ATTACKS,
    PAPER_ATTACK_OPTIONS,
    PRESETS,
    SMOKE_ATTACK_OPTIONS,
    DefenseSettings,
    DefenseSpec,
    attack_options,
    build_defense_points,
)

DEFENSES = tuple(REGISTRY)

SWEEP = "defenses"
#: Images attacked per trial: the CPU default, ``--preset paper`` and ``--smoke-test``.
N_IMAGES = {"cpu": 30, "paper": 10_000, "smoke": 2}


#: Older spellings of attack flags, kept: flag -> (attack, option).
ATTACK_ALIASES: dict[str, tuple[str, str]] = {
    "--cw-search-steps": ("cw", "binary_search_steps"),
    "--cw-iterations": ("cw", "max_iterations"),
    "--tau": ("stadv", "tau"),
    "--kappa": ("stadv", "kappa"),
    "--stadv-iterations": ("stadv", "max_iterations"),
}
#: Config-file keys, with what they mean.
CONFIG_KEYS = {
    "models": "list of model names (A, B, C)",
    "attacks": f"list of attacks, of {', '.join(ATTACKS)}",
    "defenses": f"list of defenses, of {', '.join(DEFENSES)}",
    "dataset": f"one of {', '.join(DATASETS)}",
    "n_images": "images attacked per trial (the first N of the test split)",
    "targets": f"one of {', '.join(TARGET_CHOICES)}",
    "attack_options": "a mapping attack -> {option: value}",
    "training": "a mapping of training settings (the flags below without '--', '_' for '-')",
}


def _attack_flags(taken: set[str]) -> dict[str, dict[str, str]]:
    """attack -> option -> its flag: ``--<attack>-<option>``, or ``--<attack>-attack-<option>``
    where a training setting's flag has that name (``--pgd-steps`` is PGD training's)."""
    out: dict[str, dict[str, str]] = {}
    for attack, cls in ATTACKS.items():
        out[attack] = {}
        for name in options(cls):
            flag = f"--{attack}-{name.replace('_', '-')}"
            if flag in taken:
                flag = f"--{attack}-attack-{name.replace('_', '-')}"
            out[attack][name] = flag
    return out


def _setting_flags() -> set[str]:
    return {o.flag for o in options(DefenseSettings).values()} | {"--static-models"}


def _extra_setting_options() -> dict[str, tuple[str, str]]:
    """``<defense>_<option>`` -> (defense, option) for the options of registered defenses that
    no :class:`DefenseSettings` field holds (a defense added to the registry brings them)."""
    fields = {f.name for f in dataclasses.fields(DefenseSettings)}
    out = {}
    for defense, cls in REGISTRY.items():
        for name in options(cls):
            if f"{defense}_{name}" not in fields and name not in fields:
                out[f"{defense}_{name}"] = (defense, name)
    return out


class DefenseSweep:
    """:class:`runner.SweepPlan` of {attacks} x {defenses} x {models}."""

    sweep = SWEEP
    script = "defense_sweep"
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
            help=f"of {', '.join(ATTACKS)} (default: {' '.join(DEFAULT_ATTACKS)})",
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
            help="model B, tiny training (variant 'smoke'), 2 images, few iterations; "
            "views of the stAdv trials only",
        )
        g.add_argument("--dry-run", action="store_true", help="print the trials and exit")
        g.add_argument("--config", metavar="FILE", help="YAML or TOML file (keys: see below)")
        t = p.add_argument_group(
            "training of missing defended models (default: the preset's; recorded in each "
            "checkpoint's sidecar and the runs' parameters)"
        )
        add_option_flags(t, options(DefenseSettings), dest_prefix="set_")
        t.add_argument(
            "--static-models", nargs="+", metavar="M", help="ensemble training's static models"
        )
        for key, (defense, name) in _extra_setting_options().items():
            opt = options(defense_class(defense))[name]
            t.add_argument(
                f"--{key.replace('_', '-')}", dest=f"xset_{key}", metavar="V", help=opt.help()
            )
        a = p.add_argument_group("attack options (default: the preset's)")
        aliases: dict[tuple[str, str], list[str]] = {}
        for flag, where in ATTACK_ALIASES.items():
            aliases.setdefault(where, []).append(flag)
        for attack, flags in _attack_flags(_setting_flags()).items():
            add_option_flags(
                a,
                options(ATTACKS[attack]),
                dest_prefix=f"atk_{attack}__",
                owner=attack,
                flag_names=flags,
                aliases={n: aliases.get((attack, n), []) for n in flags},
            )
        p.epilog = "config file keys:\n" + "\n".join(f"  {k}: {v}" for k, v in CONFIG_KEYS.items())

    def resolve(self, args: argparse.Namespace) -> DefenseSpec:
        """The preset, then the config file, then the command line."""
        if args.smoke_test and args.preset == "paper":
            raise SweepError("--smoke-test and --preset paper exclude each other")
        preset = "smoke" if args.smoke_test else args.preset
        options_by_attack = {a: dict(o) for a, o in ATTACK_OPTIONS.items()}
        extra = {"paper": PAPER_ATTACK_OPTIONS, "smoke": SMOKE_ATTACK_OPTIONS}.get(preset, {})
        for attack, preset_changes in extra.items():
            options_by_attack[attack].update(preset_changes)
        spec = DefenseSpec(
            sweep=SWEEP,
            models=("B",) if args.smoke_test else ("A", "B", "C"),
            n_images=N_IMAGES[preset],
            attack_options=options_by_attack,
            preset=preset,
            settings=PRESETS[preset],
            eval_images=2000 if args.smoke_test else None,
            smoke=args.smoke_test,
        )
        if args.config:
            spec = _apply_config(spec, args.config)
        for attack in ATTACKS:
            try:
                given = given_options(ATTACKS[attack], args, dest_prefix=f"atk_{attack}__")
            except ValueError as err:
                raise SweepError(str(err)) from None
            if given:
                merged = {**spec.attack_options.get(attack, {}), **given}
                spec = dataclasses.replace(
                    spec, attack_options={**spec.attack_options, attack: merged}
                )
        changes: dict[str, Any] = {}
        for name in options(DefenseSettings):
            raw = getattr(args, f"set_{name}", None)
            if raw is not None:
                changes[name] = _setting(name, raw)
        if args.static_models:
            changes["static_models"] = tuple(args.static_models)
        extra_settings = dict(spec.settings.extra)
        for key, (defense, name) in _extra_setting_options().items():
            raw = getattr(args, f"xset_{key}", None)
            if raw is not None:
                extra_settings[key] = _defense_option(defense, name, raw)
        spec = dataclasses.replace(
            spec, settings=dataclasses.replace(spec.settings, **changes, extra=extra_settings)
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


def _setting(name: str, raw: Any, where: str = "") -> Any:
    """A training setting typed by :class:`DefenseSettings`' schema (``SweepError`` naming it)."""
    try:
        return parse_value(DefenseSettings, name, raw)
    except ValueError as err:
        raise SweepError(f"{where}{err}") from None


def _defense_option(defense: str, name: str, raw: Any, where: str = "") -> Any:
    try:
        return parse_value(defense_class(defense), name, raw)
    except ValueError as err:
        raise SweepError(f"{where}{err}") from None


def _apply_config(spec: DefenseSpec, path: str) -> DefenseSpec:
    """The config file's values over ``spec``, each typed by its schema."""
    where = f"config file {path}"
    raw = load_config(path, CONFIG_KEYS)
    for key in ("attacks", "defenses"):
        if key in raw and (not isinstance(raw[key], list) or not raw[key]):
            raise SweepError(f"{where}: '{key}' must be a non-empty list")
    attack_options = {a: dict(o) for a, o in spec.attack_options.items()}
    given = raw.get("attack_options", {})
    if not isinstance(given, dict):
        raise SweepError(f"{where}: 'attack_options' must be a mapping attack -> options")
    for attack, values in given.items():
        if attack not in ATTACKS:
            raise SweepError(f"{where}: unknown attack {attack!r}; known: {', '.join(ATTACKS)}")
        if not isinstance(values, dict):
            raise SweepError(f"{where}: attack_options.{attack} must be a mapping option -> value")
        for k, v in values.items():
            attack_options.setdefault(attack, {})[k] = parse_option(attack, k, v, f"{where}: ")
    training = raw.get("training", {})
    if not isinstance(training, dict):
        raise SweepError(f"{where}: 'training' must be a mapping setting -> value")
    changes: dict[str, Any] = {}
    extra = dict(spec.settings.extra)
    extras = _extra_setting_options()
    for k, v in training.items():
        if k == "static_models":
            if not isinstance(v, list):
                raise SweepError(f"{where}: training.static_models must be a list of models")
            changes[k] = tuple(str(m) for m in v)
        elif k in options(DefenseSettings):
            changes[k] = _setting(k, v, f"{where}: ")
        elif k in extras:
            extra[k] = _defense_option(*extras[k], v, f"{where}: ")
        else:
            known = [*options(DefenseSettings), "static_models", *extras]
            raise SweepError(f"{where}: unknown training setting {k!r}; known: {', '.join(known)}")
    return dataclasses.replace(
        spec,
        models=config_models(raw, spec.models, where),
        attacks=tuple(map(str, raw.get("attacks", spec.attacks))),
        defenses=tuple(map(str, raw.get("defenses", spec.defenses))),
        dataset=str(raw.get("dataset", spec.dataset)),
        n_images=config_int(raw, "n_images", spec.n_images, where),
        targets=str(raw.get("targets", spec.targets)),
        attack_options=attack_options,
        settings=dataclasses.replace(spec.settings, **changes, extra=extra),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python sweeps/defense_sweep.py`` (exit status as
    :func:`stadv_sweeps.engine.runner.main`)."""
    return runner.main(DefenseSweep(__doc__ or ""), argv)
