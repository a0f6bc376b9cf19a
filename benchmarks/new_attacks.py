"""New attacks side by side with a maintained library: DeepFool, JSMA, few-pixel DE.

On one model and the same images (the first ``--n-images`` test images the model classifies
correctly, so that every success is the attack's), it runs:

* ``deepfool-l2``: :class:`stadv.deepfool.DeepFool` (50 iterations, overshoot 0.02) and
  torchattacks' ``DeepFool(steps=50, overshoot=0.02)``; statistic: the paper's
  rho = mean ||r||_2 / ||x||_2 over the successful attacks;
* ``deepfool-linf``: ours with ``norm="linf"`` (torchattacks has no L-inf DeepFool);
  statistic: mean ||r||_inf over the successful attacks;
* ``jsma``: :class:`stadv.jsma.JSMA` (theta = 1, gamma = 0.145) and torchattacks'
  ``JSMA(theta=1, gamma=0.145)``, targeted, both towards the same ``"random"`` targets (seed 0);
  statistic: the mean fraction of pixels changed over the successful attacks. torchattacks
  allows ``ceil(gamma * D / 2)`` pairs (57 on MNIST: up to 14.54 % of the pixels), ours
  ``floor`` (56: at most 14.29 %);
* ``few-pixel-k`` for each ``--pixels`` k: :class:`stadv.few_pixel.FewPixel` (batched torch
  DE), SciPy's ``differential_evolution(vectorized=True)`` on the same encoding and fitness
  (one image at a time, an image's whole population per model call; ``rand1bin`` with
  ``recombination=1``, F = 0.5, random init, no polishing, stopped at the first successful
  candidate), and torchattacks' ``OnePixel(pixels=k, steps=G, popsize=S)`` (its vendored
  SciPy DE, per image, ``best1bin``, F dithered in [0.5, 1), stopped when the *best* member
  succeeds); untargeted; statistic: success per k. ``--implementations stadv-bf16`` adds
  FewPixel with ``fitness_precision="bf16"`` (fitness in bfloat16, every success confirmed in
  fp32), ``stadv-bf16-resample`` that with SciPy's handling of a child outside the bounds
  (``out_of_bounds="resample"``: a fresh uniform draw, not the border), and
  ``stadv-bf16-best1`` the same with torchattacks' whole DE variant (``strategy="best1"``,
  ``mutation_high=1.0``, ``out_of_bounds="resample"``); ``stadv-local`` and
  ``stadv-bf16-local`` are FewPixel (fp32, bf16) with ``fitness_forward="local"`` (each
  convolution recomputed only where the changed pixels reach it), ``stadv-bf16-best1-local``
  ``stadv-bf16-best1`` with it.

For the DE rows, the model evaluations and the CPU milliseconds per evaluation are recorded
too (on a shared machine CPU time is steadier than wall time; ``--de-max-batch`` sets
:class:`~stadv.few_pixel.FewPixel`'s ``max_batch``).

Every success is the model's prediction on the *returned* image (untargeted: not the label;
targeted: the target), with a Wilson 95 % interval; throughput is attacks per wall second.
Population and generations default to the paper's (400, 100); on a CPU that is ~40k model
evaluations per image, so ``--de-population`` / ``--de-generations`` lower them for a quick
measurement (the JSON records what was run).

``--quick-model`` trains Model B on 2,000 training images for one epoch inside the script
(seconds on a CPU; ~80 % clean accuracy): numbers on it show the implementations side by side,
not the issue's measurements on the fully trained Models A/B/C. Without it, the model comes from
the model store (``--model``, ``--store``) and must already be trained there.

    python benchmarks/new_attacks.py --quick-model --n-images 20 --json new_attacks.json
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import scipy
import scipy.optimize
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from stadv.data import load_tensors
from stadv.deepfool import DeepFool, DeepFoolNorm
from stadv.devices import resolve_device
from stadv.few_pixel import FewPixel
from stadv.jsma import JSMA
from stadv.metrics import wilson_interval
from stadv.model_mode import prepared_model
from stadv.models import build_model
from stadv.records import make_record, write_record
from stadv.store import load_pretrained
from stadv.targets import expand_targets
from stadv.train import train_model

NUM_CLASSES = 10
QUICK_TRAIN_IMAGES = 2000
GAMMA = 0.145


# ------------------------------------------------------------------------- environment


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------- model and images


def quick_model(device: torch.device, data_dir: str | None) -> tuple[nn.Module, str]:
    train = load_tensors("mnist", split="train", data_dir=data_dir).slice(0, QUICK_TRAIN_IMAGES)
    torch.manual_seed(0)
    model = build_model("B")
    train_model(model, train, epochs=1, seed=0, device=device, progress=False)
    return model.to(device).eval(), f"B, quick: 1 epoch on {QUICK_TRAIN_IMAGES} MNIST images"


def correct_images(
    model: nn.Module, n: int, device: torch.device, data_dir: str | None
) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """The first ``n`` test images the model gets right, and its accuracy on those it saw."""
    test = load_tensors("mnist", split="test", data_dir=data_dir)
    xs, ys, seen, right = [], [], 0, 0
    with prepared_model(model) as net, torch.no_grad():
        for start in range(0, test.images.shape[0], 500):
            x = test.images[start : start + 500].to(device)
            y = test.labels[start : start + 500].to(device)
            ok = net(x).argmax(dim=1) == y
            seen += x.shape[0]
            right += int(ok.sum())
            xs.append(x[ok])
            ys.append(y[ok])
            if sum(len(v) for v in ys) >= n:
                break
    x_all, y_all = torch.cat(xs)[:n], torch.cat(ys)[:n]
    return x_all, y_all, right / seen, seen


# ------------------------------------------------------------------------- library wrappers


def adversarial(
    attack: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None
) -> torch.Tensor:
    """Our attack's adversarial images."""
    images: torch.Tensor = attack(model, x, y, targets=t).adv_images
    return images


def torchattacks_deepfool(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    import torchattacks

    atk = torchattacks.DeepFool(model, steps=50, overshoot=0.02)
    adv: torch.Tensor = atk(x, y).detach()
    return adv


def torchattacks_jsma(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    import torchattacks

    atk = torchattacks.JSMA(model, theta=1.0, gamma=GAMMA)
    atk.set_mode_targeted_by_label(quiet=True)
    adv: torch.Tensor = atk(x, t).detach()
    return adv


def torchattacks_onepixel(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, pixels: int, population: int, gens: int
) -> torch.Tensor:
    import torchattacks

    atk = torchattacks.OnePixel(
        model, pixels=pixels, steps=gens, popsize=population, inf_batch=population
    )
    adv: torch.Tensor = atk(x, y).detach()
    return adv


def stopper(found: dict[str, Any]) -> Callable[[Any], bool]:
    """SciPy's callback (the one-argument form): stop once ``found`` holds a success."""

    def stop(intermediate_result: Any) -> bool:
        return "z" in found

    return stop


def scipy_few_pixel(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: FewPixel,
) -> tuple[torch.Tensor, int]:
    """SciPy's DE on :class:`FewPixel`'s encoding and fitness, one image at a time; returns the
    images and the number of model evaluations."""
    c, h, w = x.shape[1:]
    low, high = attack.bounds
    dims = attack.pixels * (2 + c)
    bounds = [(0.0, h - 1e-6), (0.0, w - 1e-6)] + [(low, high)] * c
    bounds = bounds * attack.pixels
    popmul = max(1, round(attack.population / dims))
    out = x.clone()
    evaluations = 0
    with prepared_model(model) as net:
        for i in range(x.shape[0]):
            image, label = x[i : i + 1], int(y[i])
            found: dict[str, Any] = {}

            def fitness(
                zt: np.ndarray,
                image: torch.Tensor = image,
                label: int = label,
                found: dict[str, Any] = found,
            ) -> Any:
                nonlocal evaluations
                z = torch.from_numpy(np.ascontiguousarray(zt.T)).reshape(-1, attack.pixels, 2 + c)
                imgs = FewPixel.render(image.expand(z.shape[0], c, h, w), z.to(image.device))
                with torch.no_grad():
                    logits = net(imgs)
                evaluations += z.shape[0]
                prob = logits.double().softmax(dim=1)[:, label]
                hit = logits.argmax(dim=1) != label
                if bool(hit.any()) and "z" not in found:
                    best = torch.where(hit, prob, torch.full_like(prob, math.inf)).argmin()
                    found["z"] = z[int(best)]
                return prob.cpu().numpy()

            res = scipy.optimize.differential_evolution(
                fitness,
                bounds,
                strategy="rand1bin",
                maxiter=attack.generations,
                popsize=popmul,
                mutation=attack.mutation,
                recombination=1.0,
                init="random",
                polish=False,
                tol=0,
                atol=0,
                seed=attack.seed,
                vectorized=True,
                updating="deferred",
                callback=stopper(found),
            )
            z = found.get("z", torch.from_numpy(res.x).reshape(attack.pixels, 2 + c))
            out[i : i + 1] = FewPixel.render(image, z.unsqueeze(0).to(image.device))
    return out, evaluations


# ------------------------------------------------------------------------- measurement


def judge(
    model: nn.Module, adv: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None
) -> torch.Tensor:
    with prepared_model(model) as net, torch.no_grad():
        pred = net(adv).argmax(dim=1)
    ok: torch.Tensor = pred == t if t is not None else pred != y
    return ok


def row(
    attack: str,
    implementation: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    t: torch.Tensor | None,
    run: Callable[[], torch.Tensor],
    statistic: str,
    device: torch.device,
    notes: str = "",
) -> dict[str, Any]:
    synchronize(device)
    start = time.perf_counter()
    cpu = time.process_time()
    adv = run()
    synchronize(device)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu
    adv = adv.detach().to(x.device)
    if float(adv.min()) < 0 or float(adv.max()) > 1:
        raise AssertionError(f"{implementation} {attack} returned images outside [0, 1]")
    ok = judge(model, adv, y, t)
    n, k = x.shape[0], int(ok.sum())
    lo, hi = wilson_interval(k, n)
    diff = (adv - x).flatten(1)
    if statistic == "rho":
        per = diff.norm(dim=1) / x.flatten(1).norm(dim=1)
    elif statistic == "linf":
        per = diff.abs().amax(dim=1)
    elif statistic == "changed_fraction":
        per = (diff != 0).float().mean(dim=1)
    else:  # pixels changed: positions where any channel differs
        per = (adv != x).any(dim=1).flatten(1).sum(dim=1).float()
    stat = float(per[ok].double().mean()) if k else float("nan")
    return {
        "attack": attack,
        "implementation": implementation,
        "n": n,
        "successes": k,
        "success": k / n,
        "success_ci_low": lo,
        "success_ci_high": hi,
        "statistic": statistic,
        "statistic_successful_mean": stat,
        "statistic_max": float(per.max()),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "attacks_per_second": n / seconds,
        "notes": notes,
    }


def per_eval(r: dict[str, Any], evaluations: int) -> None:
    """Adds the model evaluations and the CPU milliseconds per evaluation to a DE row."""
    r["model_evaluations"] = evaluations
    r["cpu_ms_per_evaluation"] = 1e3 * r["cpu_seconds"] / max(1, evaluations)
    r["notes"] = f"{evaluations} model evaluations, {r['cpu_ms_per_evaluation']:.3f} CPU ms each"


def fmt(v: float, spec: str) -> str:
    return "nan" if v != v else format(v, spec)


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'attack':<15} {'implementation':<14} {'n':>3} {'success':>8} {'95 % CI':>15} "
        f"{'statistic':<17} {'mean(ok)':>9} {'attacks/s':>10} {'seconds':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        ci = f"[{r['success_ci_low']:.2f}, {r['success_ci_high']:.2f}]"
        print(
            f"{r['attack']:<15} {r['implementation']:<14} {r['n']:>3} {r['success']:>8.2f} "
            f"{ci:>15} {r['statistic']:<17} {fmt(r['statistic_successful_mean'], '.4f'):>9} "
            f"{r['attacks_per_second']:>10.3f} {r['seconds']:>8.1f}"
        )


# ------------------------------------------------------------------------- main

ATTACK_NAMES = ("deepfool", "jsma", "few-pixel")
#: the ``stadv-bf16*`` and ``stadv-*local`` implementations run only for few-pixel DE: :class:`FewPixel` with
#: ``fitness_precision="bf16"`` (and SciPy's bounds handling; and DE/best/1 with F in [0.5, 1))
IMPLEMENTATIONS = (
    "stadv",
    "stadv-bf16",
    "stadv-bf16-resample",
    "stadv-bf16-best1",
    "stadv-local",
    "stadv-bf16-local",
    "stadv-bf16-best1-local",
    "torchattacks",
    "scipy",
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--model", default="B", choices=["A", "B", "C"], help="store model [B]")
    p.add_argument(
        "--quick-model",
        action="store_true",
        help=f"train Model B for 1 epoch on {QUICK_TRAIN_IMAGES} images here instead",
    )
    p.add_argument("--n-images", type=int, default=20, help="correctly classified test images")
    p.add_argument("--attacks", nargs="+", default=list(ATTACK_NAMES), choices=ATTACK_NAMES)
    p.add_argument(
        "--implementations", nargs="+", default=list(IMPLEMENTATIONS), choices=IMPLEMENTATIONS
    )
    p.add_argument("--pixels", nargs="+", type=int, default=[1, 3, 5], help="DE's k values")
    p.add_argument("--de-population", type=int, default=400)
    p.add_argument("--de-generations", type=int, default=100)
    p.add_argument(
        "--de-max-batch",
        type=int,
        default=None,
        help="FewPixel's max_batch (default: 256 on a CPU, one model call per generation on a GPU)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch (and BLAS) threads")
    p.add_argument("--device", default=None, help="default: CUDA when available, else CPU")
    p.add_argument("--store", default=None, help="model store (without --quick-model)")
    p.add_argument("--data-dir", default=None, help="data root (default: the library's)")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.add_argument("--record", default=None, help="write one record per row into this folder")
    args = p.parse_args(argv)
    for name in ("n_images", "threads", "de_generations"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.de_population < 4:
        p.error(f"--de-population must be >= 4, got {args.de_population}")
    if args.de_max_batch is not None and args.de_max_batch < 1:
        p.error(f"--de-max-batch must be >= 1, got {args.de_max_batch}")
    if any(k < 1 for k in args.pixels):
        p.error(f"--pixels must be >= 1, got {args.pixels}")
    if "torchattacks" in args.implementations and importlib.util.find_spec("torchattacks") is None:
        p.error(
            "torchattacks is not installed: `pip install --no-deps torchattacks` (it pins "
            "requests<2.26, which MLflow cannot use, so it is not in the bench extra), or leave "
            "it out with --implementations stadv scipy"
        )
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    load_start = os.getloadavg()
    with threadpool_limits(limits=args.threads, user_api="blas"):
        report = benchmark(args, device)
    report["environment"]["load_average_start"] = list(load_start)
    report["environment"]["load_average_end"] = list(os.getloadavg())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if args.record:
        command = shlex.join(["python", "benchmarks/new_attacks.py", *(argv or sys.argv[1:])])
        write_records(report, Path(args.record), command, str(args.model))
    return report


def write_records(
    report: dict[str, Any], folder: Path, command: str, model: str, commit: str | None = None
) -> list[Path]:
    """One record per (attack, implementation) row: success over the attacked images, the
    row's statistic and throughput as ``stats``; ``folder/compare-<model>-<attack>-<impl>.json``."""
    paths = []
    for row in report["rows"]:
        stats = {
            k: float(v)
            for k, v in row.items()
            if k not in ("n", "successes", "success", "success_ci_low", "success_ci_high")
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
        }
        attack, impl = str(row["attack"]), str(row["implementation"])
        made = make_record(
            what=f"{attack} by {impl} on the first {row['n']} correctly classified test images "
            f"of model {model} ({row['statistic']} over the successful attacks)",
            command=command,
            n=int(row["n"]),
            successes=int(row["successes"]),
            seconds=float(row["seconds"]),
            stats=stats,
            tags={"model": model, "attack": attack, "implementation": impl},
            notes=str(row.get("notes", "")),
            commit=commit,
        )
        paths.append(write_record(made, folder / f"compare-{model}-{attack}-{impl}.json"))
    return paths


def benchmark(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    if args.quick_model:
        model, described = quick_model(device, args.data_dir)
    else:
        model = load_pretrained(
            args.model, dataset="mnist", store=args.store, device=device, train_if_missing=False
        )
        described = f"{args.model} from the model store"
    model.eval()
    x, y, accuracy, seen = correct_images(model, args.n_images, device, args.data_dir)
    print(
        f"model {described}; clean accuracy {accuracy:.3f} on the first {seen} test images; "
        f"{x.shape[0]} correctly classified images attacked; {torch.get_num_threads()} "
        f"thread(s), {device}",
        flush=True,
    )
    impl = set(args.implementations)
    have_ta = version("torchattacks") is not None
    rows: list[dict[str, Any]] = []

    def add(r: dict[str, Any]) -> None:
        rows.append(r)
        print(
            f"  {r['attack']} / {r['implementation']}: success {r['successes']}/{r['n']}, "
            f"{r['statistic']} {fmt(r['statistic_successful_mean'], '.4f')}, "
            f"{r['seconds']:.1f} s",
            flush=True,
        )

    if "deepfool" in args.attacks:
        if "stadv" in impl:
            norms: tuple[tuple[DeepFoolNorm, str], ...] = (("l2", "rho"), ("linf", "linf"))
            for norm, stat in norms:
                df = DeepFool(norm=norm, check=False)
                add(
                    row(
                        f"deepfool-{norm}",
                        "stadv",
                        model,
                        x,
                        y,
                        None,
                        partial(adversarial, df, model, x, y, None),
                        stat,
                        device,
                    )
                )
        if "torchattacks" in impl and have_ta:
            add(
                row(
                    "deepfool-l2",
                    "torchattacks",
                    model,
                    x,
                    y,
                    None,
                    lambda: torchattacks_deepfool(model, x, y),
                    "rho",
                    device,
                    "steps from the current iterate, overshoot per step; per-image jacobian",
                )
            )
    if "jsma" in args.attacks:
        with prepared_model(model) as net:
            _, _, t_opt, _ = expand_targets(net, x, y, "random", num_classes=NUM_CLASSES, seed=0)
        assert t_opt is not None
        t = t_opt
        if "stadv" in impl:
            jsma = JSMA(theta=1.0, gamma=GAMMA, check=False)
            add(
                row(
                    "jsma",
                    "stadv",
                    model,
                    x,
                    y,
                    t,
                    partial(adversarial, jsma, model, x, y, t),
                    "changed_fraction",
                    device,
                )
            )
        if "torchattacks" in impl and have_ta:
            add(
                row(
                    "jsma",
                    "torchattacks",
                    model,
                    x,
                    y,
                    t,
                    lambda: torchattacks_jsma(model, x, y, t),
                    "changed_fraction",
                    device,
                    "ceil(gamma D / 2) pairs: up to 57 on MNIST",
                )
            )
    if "few-pixel" in args.attacks:
        for k in args.pixels:
            de = FewPixel(
                pixels=k,
                population=args.de_population,
                generations=args.de_generations,
                check=False,
                max_batch=args.de_max_batch,
            )
            name = f"few-pixel-{k}"
            bf16 = dataclasses.replace(de, fitness_precision="bf16")
            for ours_impl, ours_de in (
                ("stadv", de),
                ("stadv-bf16", bf16),
                ("stadv-bf16-resample", dataclasses.replace(bf16, out_of_bounds="resample")),
                ("stadv-local", dataclasses.replace(de, fitness_forward="local")),
                ("stadv-bf16-local", dataclasses.replace(bf16, fitness_forward="local")),
                (
                    "stadv-bf16-best1-local",
                    dataclasses.replace(
                        bf16,
                        strategy="best1",
                        mutation_high=1.0,
                        out_of_bounds="resample",
                        fitness_forward="local",
                    ),
                ),
                (
                    "stadv-bf16-best1",
                    dataclasses.replace(
                        bf16, strategy="best1", mutation_high=1.0, out_of_bounds="resample"
                    ),
                ),
            ):
                if ours_impl not in impl:
                    continue
                ours: dict[str, int] = {}

                def run_ours(de: FewPixel = ours_de, ours: dict[str, int] = ours) -> torch.Tensor:
                    result = de(model, x, y)
                    ours["evaluations"] = int(result.evaluations.sum())
                    return result.adv_images

                r = row(name, ours_impl, model, x, y, None, run_ours, "pixels_changed", device)
                per_eval(r, ours["evaluations"])
                add(r)
            if "scipy" in impl:
                counted: dict[str, int] = {}

                def run_scipy(de: FewPixel = de, counted: dict[str, int] = counted) -> torch.Tensor:
                    adv, counted["evaluations"] = scipy_few_pixel(model, x, y, de)
                    return adv

                r = row(name, "scipy", model, x, y, None, run_scipy, "pixels_changed", device)
                per_eval(r, counted["evaluations"])
                add(r)
            if "torchattacks" in impl and have_ta:
                add(
                    row(
                        name,
                        "torchattacks",
                        model,
                        x,
                        y,
                        None,
                        partial(
                            torchattacks_onepixel,
                            model,
                            x,
                            y,
                            k,
                            args.de_population,
                            args.de_generations,
                        ),
                        "pixels_changed",
                        device,
                        "F dithered in [0.5, 1); stops when the best member succeeds",
                    )
                )
    print()
    print_table(rows)
    speedups: dict[str, dict[str, float]] = {}
    for mine in rows:  # each of our implementations over each library's, same attack
        if not mine["implementation"].startswith("stadv"):
            continue
        for r in rows:
            if r["attack"] == mine["attack"] and not r["implementation"].startswith("stadv"):
                key = f"{mine['implementation']} over {r['implementation']}"
                speedups.setdefault(r["attack"], {})[key] = (
                    mine["attacks_per_second"] / r["attacks_per_second"]
                )
    if speedups:
        print("\nspeedup of stadv (attacks/s ratio):")
        for attack, by in speedups.items():
            print(f"  {attack}: " + ", ".join(f"{k} {v:.2f}x" for k, v in by.items()))
    environment = {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torchattacks": version("torchattacks"),
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "commit": git_commit(),
        "model": described,
        "clean_accuracy": accuracy,
        "clean_accuracy_images": seen,
        "n_images": int(x.shape[0]),
        "images": "first n correctly classified MNIST test images",
        "de_population": args.de_population,
        "de_generations": args.de_generations,
        "de_max_batch": args.de_max_batch,
        "de_pixels": list(args.pixels),
        "full_measurement": not args.quick_model,
    }
    return {"environment": environment, "rows": rows, "speedup_of_stadv": speedups}


if __name__ == "__main__":
    main()
