"""Write the results tables of README.md and docs/*.md from the records in results/.

Each table sits between two markers in a page::

    <!-- results:table1 -->
    | model | ... |
    <!-- /results:table1 -->

and this script replaces what is between them with the table the records give (the paper's
values come from :mod:`stadv.models`, the intervals from each record). Run it after adding or
changing a record; ``--check`` changes nothing and exits 1 with a diff when a page differs from
what the records give (``tests/test_results_pages.py`` runs it so).

    python docs/render.py            # rewrite the tables in place
    python docs/render.py --check    # CI: are the committed pages up to date?
"""

from __future__ import annotations

import argparse
import difflib
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from stadv.metrics import wilson_interval
from stadv.models import PAPER_ACCURACY, PAPER_TABLE1_SUCCESS
from stadv.records import Record, load_records

REPO = Path(__file__).resolve().parents[1]
PAGES = (
    "README.md",
    "docs/reproduction.md",
    "docs/attacks.md",
    "docs/defenses.md",
    "docs/performance.md",
)
MARKER = re.compile(
    r"(?P<open><!-- results:(?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(?P<close><!-- /results:(?P=name) -->)",
    re.DOTALL,
)
MODELS = ("A", "B", "C")

Records = Mapping[str, Record]


# ------------------------------------------------------------------------- cell formats


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def rate(rec: Record) -> str:
    """``99.89 % [99.37, 99.98]``: the rate with its Wilson 95 % interval where n is known."""
    if rec.ci_low is None or rec.ci_high is None:
        return pct(rec.rate)
    return f"{pct(rec.rate)} [{100 * rec.ci_low:.2f}, {100 * rec.ci_high:.2f}]"


def num(value: float) -> str:
    return f"{value:,.0f}" if value >= 10_000 else f"{value:.4g}"


def stat(rec: Record, key: str, fmt: str) -> str | None:
    """``fmt`` with the statistic filled in, or None when the record lacks it."""
    return fmt.format(num(rec.stats[key])) if key in rec.stats else None


def alone(rec: Record) -> str:
    """The success rate with every returned image re-judged alone (a batch of one)."""
    if "successes_judged_alone" not in rec.stats or rec.n is None:
        return "n/a"
    return pct(rec.stats["successes_judged_alone"] / rec.n)


def attack_cell(rec: Record) -> str:
    """Success, then the attack's cost: mean L_flow, iterations, restarts, the iteration limit."""
    parts = [
        stat(rec, "mean_flow_loss", "L_flow {}"),
        stat(rec, "mean_iterations", "{} it"),
        stat(rec, "restarted_attacks", "{} restarted"),
        stat(rec, "attacks_at_iteration_limit", "{} at the limit"),
        f"{num(rec.seconds)} s" if rec.seconds is not None else None,
    ]
    return ", ".join([rate(rec), *[p for p in parts if p is not None]])


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def by_model(recs: Records, rows: Sequence[tuple[str, str]], cell: Callable[[Record], str]) -> str:
    """Rows of (label, key pattern with ``{m}``), one column per model; "not run" where absent."""
    out = []
    for label, pattern in rows:
        keys = [pattern.format(m=m) for m in MODELS]
        out.append([label, *[cell(recs[k]) if k in recs else "not run" for k in keys]])
    return table(["setting", *MODELS], out)


# ------------------------------------------------------------------------- the tables


def table1(recs: Records) -> str:
    rows = [
        [
            f"Model {m}",
            pct(PAPER_TABLE1_SUCCESS[m]),
            rate(recs[f"table1/{m}-100"]),
            rate(recs[f"table1/{m}-1000"]),
        ]
        for m in MODELS
    ]
    head = ["model", "paper (Table 1)", "ours, 100 images x 9 targets", "ours, 1,000 images x 9"]
    return table(head, rows)


def readings(recs: Records) -> str:
    rows = [
        (
            "**default**: Eq. 5, pixels, zero init, keep best, weak Wolfe, 1 restart",
            "table1/{m}-100",
        ),
        ("default, `restarts=0`", "readings/restarts0-{m}"),
        ("default, grid units (L_flow in grid units)", "readings/eq5-grid-{m}"),
        ("default, paper Eq. 4 in pixels (20 images, 180 attacks)", "readings/eq4-{m}"),
        ("Eq. 4 in pixels, `restarts=0` (20 images)", "readings/eq4-restarts0-{m}"),
        ("default, Eq. 4 in grid units (20 images)", "readings/eq4-grid-{m}"),
        ('default, `keep="last"`, `restarts=0`', "readings/keep-last-{m}"),
    ]
    # restarts=0 on A and C is the Table 1 run itself: no attack failed, nothing restarted.
    merged = dict(recs)
    for m in ("A", "C"):
        merged.setdefault(f"readings/restarts0-{m}", recs[f"table1/{m}-100"])
    return by_model(merged, rows, attack_cell)


def line_search(recs: Records) -> str:
    rows = [
        ["strong Wolfe, `success_margin` 1e-3", *[rate(recs[f"readings/strong-{m}"]) for m in MODELS]],
        ["the same, each image judged alone", *[alone(recs[f"readings/strong-{m}"]) for m in MODELS]],
        ["strong Wolfe, `success_margin=0` (bare argmax)", *[rate(recs[f"readings/strong-bare-{m}"]) for m in MODELS]],
        ["the same, each image judged alone", *[alone(recs[f"readings/strong-bare-{m}"]) for m in MODELS]],
        ["**weak Wolfe (default)**, `success_margin` 1e-3", *[rate(recs[f"table1/{m}-100"]) for m in MODELS]],
    ]  # fmt: skip
    return table(["line search, success test", *MODELS], rows)


def strong_readings(recs: Records) -> str:
    rows = [
        ("Eq. 5, pixel units, zero init", "readings-strong-bare/eq5-{m}"),
        ("Eq. 5, Gaussian init (std 0.01)", "readings-strong-bare/eq5-gauss-{m}"),
        ("Eq. 5 x 1/n", "readings-strong-bare/eq5-n-{m}"),
        ("Eq. 5 x 1/sqrt(n)", "readings-strong-bare/eq5-sqrt_n-{m}"),
        ("Eq. 5 x 1/sqrt(n), Gaussian init", "readings-strong-bare/eq5-sqrt_n-gauss-{m}"),
        ("Eq. 5, grid units", "readings-strong-bare/eq5-grid-{m}"),
        ("Eq. 4, pixel units (20 images, 180 attacks)", "readings-strong-bare/eq4-{m}"),
        ('Eq. 5, `keep="last"`', "readings-strong-bare/keep-last-{m}"),
    ]
    return by_model(recs, rows, attack_cell)


def model_b_1000(recs: Records) -> str:
    rows = []
    for label, key in (
        ("**default**", "table1/B-1000"),
        ("default, `restarts=0`", "readings/B1000-restarts0"),
        ("strong Wolfe, bare argmax test, no restarts", "readings/B1000-strong-bare"),
    ):
        rec = recs[key]
        rows.append(
            [
                label,
                rate(rec),
                pct(rec.stats.get("untargeted_success_rate")),
                stat(rec, "mean_flow_loss", "{}") or "n/a",
                stat(rec, "mean_iterations", "{}") or "n/a",
                num(rec.seconds) if rec.seconds is not None else "n/a",
            ]
        )
    head = ["attack", "targeted", "untargeted", "mean L_flow", "iterations", "seconds"]
    return table(head, rows)


def training(recs: Records) -> str:
    rows = []
    for label, key, paper in [
        *[(f"{m}, MNIST", f"training/mnist-{m}", PAPER_ACCURACY[m]) for m in MODELS],
        *[(f"{m}, MNIST, another CPU", f"training/mnist-{m}-other-cpu", PAPER_ACCURACY[m]) for m in MODELS],
        ("C, MNIST, 6 epochs", "training/mnist-C-6-epochs", PAPER_ACCURACY["C"]),
        ("B, Fashion-MNIST", "training/fashion-mnist-B", None),
        ("A, Fashion-MNIST, 1 epoch", "training/fashion-mnist-A-1-epoch", None),
        ("C, Fashion-MNIST, 1 epoch", "training/fashion-mnist-C-1-epoch", None),
    ]:  # fmt: skip
        rec = recs[key]
        minutes = f"{rec.seconds / 60:.1f} min" if rec.seconds is not None else "n/a"
        rows.append([label, rate(rec), pct(paper) if paper is not None else "–", minutes])
    return table(["model, data", "test accuracy (10,000 images)", "paper", "training time"], rows)


def throughput(recs: Records) -> str:
    labels = {
        "lbfgs": "`lbfgs` (**default**: batched torch L-BFGS, weak Wolfe, softplus hinge, "
        "first success + 50)",
        "lbfgs-converged": '`lbfgs`, `hinge="exact"`, `stop="converged"` (the paper\'s hinge to '
        "convergence)",
        "lbfgs-strong": '`lbfgs`, `wolfe="strong"`, exact hinge, converged (SciPy\'s algorithm)',
        "lbfgs-first-success": "`lbfgs`, exact hinge, `polish=0` (stop at the first success: "
        "fast mode)",
        "lbfgs-bf16": '`lbfgs`, `precision="bf16"` (the default in bfloat16 autocast)',
        "scipy-batched": "`scipy` (SciPy L-BFGS-B per attack, evaluations batched)",
        "scipy-loop": "`scipy-loop` (SciPy, one image at a time)",
        "scipy-loop-first-success": "`scipy-loop`, stopped at the first success",
        "advertorch": "advertorch 0.2.3 `SpatialTransformAttack` (one coupled problem)",
    }
    keys = ("attacks_per_second", "mean_iterations", "mean_evaluations")
    rows = [
        attack_rate_row(label, recs[f"throughput/B-{m}"], keys)
        for m, label in labels.items()
        if f"throughput/B-{m}" in recs
    ]
    head = ["method", "attacks/s", "iterations / attack", "evaluations / attack"]
    return table([*head, "targeted success", "mean L_flow"], rows)


def attack_rate_row(label: str, rec: Record, keys: Sequence[str]) -> list[str]:
    """A throughput row: the label, the statistics ``keys``, success and mean L_flow."""
    return [label, *(num(rec.stats[k]) for k in keys), rate(rec), num(rec.stats["mean_flow_loss"])]


def speedups(recs: Records) -> str:
    goals = {"speedup_vs_advertorch": 5.0, "speedup_vs_scipy_loop": 3.0}
    rows = []
    for method in ("lbfgs", "lbfgs-converged", "lbfgs-strong", "lbfgs-first-success", "lbfgs-bf16"):
        if f"throughput/B-{method}" not in recs:
            continue
        rec = recs[f"throughput/B-{method}"]
        cells = [f"`{method}`"]
        for key, goal in goals.items():
            x = rec.stats.get(key)
            cells.append("n/a" if x is None else f"{x:.2f}x ({'met' if x >= goal else 'not met'})")
        like = rec.stats.get("speedup_vs_scipy_loop_first_success")
        cells.append("–" if like is None else f"{like:.2f}x")
        rows.append(cells)
    head = ["ours", "vs advertorch (goal 5x)", "vs SciPy loop (goal 3x)", "vs the loop, same stop"]
    return table(head, rows)


def sweeps(recs: Records) -> str:
    rows = []
    for key in (
        "sweeps/kappa_tau-B-paper",
        "sweeps/kappa_tau-B-tau0",
        "sweeps/kappa_tau-all-strong",
        "sweeps/kappa_tau-all-default",
    ):
        rec = recs[key]
        wall = f"{rec.seconds / 60:.1f} min" if rec.seconds is not None else "–"
        rows.append(
            [rec.what, rate(rec) if rec.rate is not None else "–", wall, f"`{rec.command}`"]
        )
    return table(["what", "targeted success", "sweep wall time", "command"], rows)


def input_grad(recs: Records) -> str:
    rows = []
    for key, rec in recs.items():
        if key.startswith("performance/input-grad-"):
            onednn, native = rec.stats["onednn_ms"], rec.stats["native_ms"]
            rows.append(
                [
                    rec.tags["layer"],
                    num(rec.stats["images"]),
                    f"{onednn:.1f} ms",
                    f"{native:.1f} ms",
                    f"{onednn / native:.2f}x",
                ]
            )
    return table(["convolution", "images", "oneDNN", "native", "native speed-up"], rows)


DEFENSE_NAMES = {
    "none": "none",
    "pgd": "PGD-adv",
    "fgsm": "FGSM-adv",
    "ensemble": "ensemble-adv",
    "blur": "blur (3x3, sigma 1)",
    "denoiser": "denoiser",
    "distillation": "distilled (T = 100)",
    "pcl": "PCL",
    "pcl-pgd": "PCL + PGD-adv",
    "vae": "VAE detector",
}
#: The defense sweep's records (``sweeps/results.py --record``) and its attacks, in order.
SWEEP = "defense-sweep"
SWEEP_ATTACKS = {
    "fgsm": "FGSM",
    "pgd": "PGD",
    "cw": "C&W",
    "stadv": "stAdv",
    "deepfool": "DeepFool (untargeted)",
    "jsma": "JSMA",
    "few-pixel": "few-pixel DE",
}


def short_rate(rate_: float, low: float | None, high: float | None) -> str:
    """``93.3 [78.7, 98.2]`` (percent, one decimal): a compact cell for wide tables."""
    if low is None or high is None:
        return f"{100 * rate_:.1f}"
    return f"{100 * rate_:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def accuracy_under_attack(rec: Record) -> str:
    """1 - untargeted success over the attacked images (clean errors count as errors), with
    its Wilson interval."""
    if rec.n is None or "untargeted_success_rate" not in rec.stats:
        return "n/a"
    correct = rec.n - round(rec.stats["untargeted_success_rate"] * rec.n)
    return short_rate(correct / rec.n, *wilson_interval(correct, rec.n))


def _sweep_cell(recs: Records, m: str, d: str, a: str, cell: Callable[[Record], str]) -> str:
    key = f"{SWEEP}/{m}-{d}-{a}"
    return cell(recs[key]) if key in recs else "not run"


def _sweep_attacks(recs: Records, defenses: Sequence[str]) -> list[str]:
    """The sweep's attacks with a record for any of ``defenses``, in table order."""
    return [
        a
        for a in SWEEP_ATTACKS
        if any(f"{SWEEP}/{m}-{d}-{a}" in recs for m in MODELS for d in defenses)
    ]


def defense_sweep(recs: Records) -> str:
    """Attack success (percent [Wilson 95 %]) per model and defense, every attack of the
    defense sweep; the detector's row: the share of successful examples it flags."""
    defenses = [d for d in DEFENSE_NAMES if any(f"{SWEEP}/clean/{m}-{d}" in recs for m in MODELS)]
    attacks = _sweep_attacks(recs, defenses)
    rows = []
    for m in MODELS:
        for d in defenses:
            if f"{SWEEP}/clean/{m}-{d}" not in recs:
                continue
            clean = recs[f"{SWEEP}/clean/{m}-{d}"]
            row = [m, DEFENSE_NAMES[d], pct(clean.rate)]
            for a in attacks:
                if d == "vae":
                    row.append(_sweep_cell(recs, m, d, a, detection_cell))
                else:
                    row.append(_sweep_cell(recs, m, d, a, lambda r: short_rate(*_bounds(r))))
            rows.append(row)
    head = ["model", "defense", "clean accuracy", *[SWEEP_ATTACKS[a] for a in attacks]]
    return table(head, rows) if rows else "No records.\n"


def _bounds(rec: Record) -> tuple[float, float | None, float | None]:
    return (rec.rate if rec.rate is not None else float("nan"), rec.ci_low, rec.ci_high)


def detection_cell(rec: Record) -> str:
    """``detected 96.7 [83.3, 99.4]``: the share of the attack's successful examples flagged."""
    if "detection_rate" not in rec.stats:
        return "n/a"
    st = rec.stats
    return "detected " + short_rate(
        st["detection_rate"], st.get("detection_ci_low"), st.get("detection_ci_high")
    )


def defense_training(recs: Records) -> str:
    """Each defended model's clean test accuracy and training time (CPU preset); the
    detector leaves the classifier undefended, so it has no row."""
    defenses = [d for d in DEFENSE_NAMES if d not in ("none", "vae")]
    rows = []
    for d in defenses:
        cells = []
        for m in MODELS:
            key = f"{SWEEP}/clean/{m}-{d}"
            if key not in recs:
                cells.append("not run")
                continue
            rec = recs[key]
            took = rec.stats.get("train_seconds")
            cells.append(pct(rec.rate) + (f", {took:.0f} s" if took is not None else ""))
        rows.append([DEFENSE_NAMES[d], *cells])
    return table(["defense (CPU preset)", *[f"Model {m}" for m in MODELS]], rows)


def distillation(recs: Records) -> str:
    """Success of each attack on the undefended and the distilled model, beside the
    published results (Papernot et al. 2016: JSMA; Carlini & Wagner 2017: C&W)."""
    paper = {
        "jsma": "about 95 % -> under 0.5 % (Papernot et al. 2016, MNIST)",
        "cw": "about 100 % on the distilled model (Carlini & Wagner 2017)",
    }
    rows = []
    for a in ("jsma", "cw", "stadv", "fgsm"):
        for m in MODELS:
            cells = [
                _sweep_cell(recs, m, d, a, lambda r: short_rate(*_bounds(r)))
                for d in ("none", "distillation")
            ]
            published = paper.get(a, "") if m == MODELS[0] else ""
            rows.append([SWEEP_ATTACKS[a], m, *cells, published])
    return table(["attack", "model", "undefended", "distilled", "published"], rows)


def vae_detector(recs: Records) -> str:
    """The VAE detector per attack: detection at 5 % FPR, ROC AUC, and the attack that knows
    the detector (success against classifier and detector together)."""
    rows = []
    for m in MODELS:
        for a in SWEEP_ATTACKS:
            key = f"{SWEEP}/{m}-vae-{a}"
            if key not in recs:
                continue
            rec = recs[key]
            st = rec.stats
            auc = f"{st['roc_auc']:.3f}" if "roc_auc" in st else "n/a"
            adaptive = "not run"
            if "adaptive_success_rate" in st:
                adaptive = short_rate(
                    st["adaptive_success_rate"],
                    st.get("adaptive_success_ci_low"),
                    st.get("adaptive_success_ci_high"),
                )
            fpr = "n/a"
            if "detector_fpr_test" in st and rec.n:
                flagged = round(st["detector_fpr_test"] * rec.n)
                fpr = short_rate(flagged / rec.n, *wilson_interval(flagged, rec.n))
            row = [m, SWEEP_ATTACKS[a], short_rate(*_bounds(rec)), detection_cell(rec), auc]
            rows.append([*row, adaptive, fpr])
    head = ["model", "attack", "success (no detector)", "detection at 5 % FPR", "ROC AUC"]
    head += ["adaptive success", "flagged clean (the attacked images)"]
    return table(head, rows) if rows else "No records.\n"


def detector_threshold(recs: Records) -> str:
    """The VAE detector at a fixed divergence of 0.3 (the write-up's) beside its 5 %-FPR
    threshold: the share of each attack's successful examples flagged, and of clean images."""
    rules = (
        ("jsd_t1", "JSD (T = 1) > 0.3"),
        ("kl_t1", "KL (T = 1) > 0.3"),
        ("detector", "detector at 5 % FPR"),
    )
    order = list(SWEEP_ATTACKS)

    def place(key: str) -> tuple[str, int]:
        attack = recs[key].tags.get("attack", "")
        return (recs[key].tags.get("model", ""), order.index(attack) if attack in order else 99)

    keys = sorted((k for k in recs if k.startswith("detector-threshold/")), key=place)
    rows = []
    for key in keys:
        rec = recs[key]
        st = rec.stats

        def cell(part: str, rule: str, st: Mapping[str, float] = st) -> str:
            stem = f"{part}_{rule}"
            if f"{stem}_rate" not in st:
                return "n/a"
            return short_rate(
                st[f"{stem}_rate"], st.get(f"{stem}_ci_low"), st.get(f"{stem}_ci_high")
            )

        succeeded = f"{st.get('attack_successes', 0):.0f} of {st.get('attacks', 0):.0f}"
        rows.append(
            [
                rec.tags.get("model", "?"),
                SWEEP_ATTACKS.get(rec.tags.get("attack", ""), "?"),
                succeeded,
            ]
            + [cell("detection", r) for r, _ in rules]
        )
    if not rows:
        return "No records.\n"
    first = recs[keys[0]].stats
    rows.append(
        ["", "clean test images (false positives)", ""]
        + [
            short_rate(
                first[f"clean_fpr_{r}_rate"],
                first.get(f"clean_fpr_{r}_ci_low"),
                first.get(f"clean_fpr_{r}_ci_high"),
            )
            for r, _ in rules
        ]
    )
    return table(["model", "attack", "successful examples", *[label for _, label in rules]], rows)


def pcl(recs: Records) -> str:
    """Accuracy under attack (1 - untargeted success, percent [Wilson 95 %]) of the undefended
    model, PCL and PCL with PGD adversarial training."""
    attacks = [a for a in ("fgsm", "pgd", "cw", "stadv", "deepfool") if a in SWEEP_ATTACKS]
    rows = []
    for m in MODELS:
        for d in ("none", "pcl", "pcl-pgd"):
            key = f"{SWEEP}/clean/{m}-{d}"
            clean = pct(recs[key].rate) if key in recs else "not run"
            cells = [_sweep_cell(recs, m, d, a, accuracy_under_attack) for a in attacks]
            rows.append([m, DEFENSE_NAMES[d], clean, *cells])
    head = ["model", "defense", "clean accuracy", *[SWEEP_ATTACKS[a] for a in attacks]]
    return table(head, rows)


def pgd_training(recs: Records) -> str:
    rows = [
        [label, *[pct(recs[f"defenses/clean/{m}-{d}"].rate) for m in MODELS]]
        for label, d in (
            ("adversarial-only loss (Madry et al.)", "pgd-adversarial-only"),
            ("half clean loss, first training", "pgd-first"),
            ("half clean loss, the models in the tables", "pgd"),
        )
    ]
    return table(["PGD-adv training (CPU preset)", *MODELS], rows)


def new_attacks(recs: Records) -> str:
    """DeepFool (untargeted, rho_adv) and JSMA (targeted, pixels changed) per model, beside
    the papers' MNIST LeNet figures (another model: the comparison is of magnitude only)."""

    def deepfool(rec: Record) -> str:
        return ", ".join(
            p for p in (rate(rec), stat(rec, "mean_rho", "rho_adv {}")) if p is not None
        )

    def jsma(rec: Record) -> str:
        changed = rec.stats.get("mean_changed_fraction_successful")
        pixels = f"{100 * changed:.2f} % of pixels" if changed is not None else None
        return ", ".join(p for p in (rate(rec), pixels) if p is not None)

    rows = []
    for label, pattern, cell, paper in (
        ("DeepFool L2, untargeted, 1,000 images", "deepfool-l2-{m}-1000", deepfool, "rho_adv 0.20"),
        ("JSMA, 100 images x 9 targets", "jsma-{m}-100x9", jsma, "97.05 %, 4.02 % of pixels"),
    ):
        keys = [f"new_attacks/{pattern.format(m=m)}" for m in MODELS]
        rows.append([label, paper, *[cell(recs[k]) if k in recs else "not run" for k in keys]])
    return table(["attack", "paper (LeNet)", *MODELS], rows)


def attack_libraries(recs: Records) -> str:
    """Each new attack beside a maintained library's, same model and images (new_attacks.py),
    with its attacks/s over torchattacks' in the same run (same command), where it ran."""
    keys = sorted(k for k in recs if k.startswith("new_attacks/compare-"))
    library = {
        (r.tags.get("model"), r.tags.get("attack"), r.command): r
        for r in (recs[k] for k in keys)
        if r.tags.get("implementation") == "torchattacks"
    }
    rows = []
    for key in keys:
        rec = recs[key]
        mean = rec.stats.get("statistic_successful_mean")
        theirs = library.get((rec.tags.get("model"), rec.tags.get("attack"), rec.command))
        ratio = "n/a"
        if theirs is not None and theirs is not rec:
            ratio = f"{rec.stats['attacks_per_second'] / theirs.stats['attacks_per_second']:.2f}x"
        rows.append(
            [
                rec.tags.get("model", "?"),
                rec.tags.get("attack", "?"),
                rec.tags.get("implementation", "?"),
                rate(rec),
                "n/a" if mean is None else f"{mean:.4f}",
                num(rec.stats["attacks_per_second"]),
                ratio,
            ]
        )
    head = [
        "model",
        "attack",
        "implementation",
        "success",
        "statistic (mean)",
        "attacks/s",
        "vs torchattacks (same run)",
    ]
    return table(head, rows) if rows else "No comparison records yet.\n"


def local_forward(recs: Records) -> str:
    """CPU time per few-pixel evaluation, the whole model against LocalForward, same run
    (benchmarks/local_forward.py records in results/local_forward)."""
    rows = []
    for key in sorted(k for k in recs if k.startswith("local_forward/")):
        rec = recs[key]
        st = rec.stats
        rows.append(
            [
                rec.tags.get("model", "?"),
                rec.tags.get("k", "?"),
                rec.tags.get("precision", "?"),
                "yes" if st.get("local_path") else "no (the whole model)",
                f"{st['model_ms_per_1000']:.0f}",
                f"{st['local_ms_per_1000']:.0f}",
                f"{st['speedup']:.2f}x",
                (
                    f"{st['sparse_ms_per_1000']:.0f} ({st['sparse_speedup']:.2f}x)"
                    if "sparse_speedup" in st
                    else ""
                ),
            ]
        )
    head = ["model", "k", "precision", "on boxes", "model ms / 1,000", "local ms / 1,000"]
    sparse = "sparse second conv, ms / 1,000 (speedup)"
    return table([*head, "speedup", sparse], rows) if rows else "No records.\n"


def _option(rec: Record, flag: str) -> str:
    """The value given to ``flag`` in the record's command, or "default"."""
    words = shlex.split(rec.command)
    return words[words.index(flag) + 1] if flag in words[:-1] else "default"


def few_pixel_seeds(recs: Records) -> str:
    """Few-pixel DE runs that differ only in ``--seed`` (records in results/new_attacks/seeds),
    one row each, then all of a model's runs pooled, with the Wilson 95 % interval."""
    rows = []
    pooled: dict[tuple[str, str], list[int]] = {}
    for key in sorted(k for k in recs if k.startswith("new_attacks/seeds/")):
        rec = recs[key]
        m, k = rec.tags.get("model", "?"), _option(rec, "--pixels")
        row = [m, k, _option(rec, "--strategy"), _option(rec, "--seed"), str(rec.n), rate(rec)]
        rows.append([*row, f"{rec.seconds:.0f}" if rec.seconds is not None else "n/a"])
        tally = pooled.setdefault((m, k), [0, 0])
        tally[0] += rec.successes or 0
        tally[1] += rec.n or 0
    for (m, k), (hits, n) in pooled.items():
        low, high = wilson_interval(hits, n)
        pooled_rate = f"{pct(hits / n)} [{100 * low:.2f}, {100 * high:.2f}]"
        rows.append([m, k, "all runs above", "pooled", str(n), pooled_rate, ""])
    head = ["model", "k", "strategy", "seed", "images", "success", "seconds"]
    return table(head, rows) if rows else "No records.\n"


def few_pixel(recs: Records) -> str:
    """Few-pixel DE success per k, untargeted and towards one random target, per model: on the
    first 100 test images where that run exists, else on the first 20 (said in the cell)."""

    def cell(k: int, goal: str, m: str) -> str:
        for n in (100, 20):
            key = f"new_attacks/few-pixel-k{k}-{goal}-{m}-{n}"
            if key in recs:
                return rate(recs[key]) + ("" if n == 100 else " (20 images)")
        return "not run"

    rows = []
    for goal in ("untargeted", "random"):
        for k in (1, 3, 5):
            label = f"k = {k}, {'untargeted' if goal == 'untargeted' else 'random target'}"
            rows.append([label, *[cell(k, goal, m) for m in MODELS]])
    return table(["pixels, goal (100 images)", *MODELS], rows)


def frontier(recs: Records) -> str:
    """stAdv's schedules (benchmarks/frontier.py records), cheapest first, per model."""
    return schedules(recs, "frontier/", paper=False)


def default_schedule(recs: Records) -> str:
    """Table 1 (100 images x 9 targets) with the default schedule beside the converged
    attack, same run (benchmarks/frontier.py records in results/table1-default)."""
    return schedules(recs, "table1-default/", paper=True)


def schedules(recs: Records, folder: str, *, paper: bool) -> str:
    """One row per ``benchmarks/frontier.py`` record under ``folder``, by model, cheapest
    first; ``paper`` adds the paper's Table 1 success. The common successes and the ratios to
    the converged attack are those of each record's own run (its commit, the last column)."""
    rows = []
    found = [r for k, r in recs.items() if k.startswith(folder)]
    for rec in sorted(
        found, key=lambda r: (r.tags.get("model", ""), r.stats["evaluations_per_attack"])
    ):
        model = rec.tags.get("model", "?")
        cells = [model, f"`{rec.tags.get('schedule', '?')}`", rate(rec)]
        if paper:
            cells.append(pct(PAPER_TABLE1_SUCCESS[model]) if model in PAPER_TABLE1_SUCCESS else "–")
        rows.append(
            [
                *cells,
                num(rec.stats["mean_flow_loss_common"]),
                num(rec.stats["evaluations_per_attack"]),
                _ratio(rec, "evaluations_vs_converged", "{:.2f}x"),
                _ratio(rec, "flow_loss_vs_converged", "{:.3f}"),
                num(rec.stats["attacks_per_s"]),
                f"`{rec.commit}`",
            ]
        )
    head = [
        "model",
        "schedule",
        "targeted success",
        *(["paper"] if paper else []),
        "mean L_flow (common successes)",
        "evaluations / attack",
        "fewer evaluations than converged",
        "L_flow / converged's",
        "attacks/s",
        "run",
    ]
    return table(head, rows) if rows else "No records yet.\n"


def _ratio(rec: Record, key: str, spec: str) -> str:
    """A frontier record's ratio to the converged attack of its run; "–" for a run without it."""
    value = rec.stats.get(key)
    return "–" if value is None else spec.format(value)


def batching(recs: Records) -> str:
    """Continuous batching against chunks (benchmarks/attack_throughput.py, results/batching)."""
    labels = {
        "lbfgs": "continuous (**default**: a new attack joins as one finishes)",
        "lbfgs-chunks": '`batching="chunks"` (each chunk run to its last attack)',
    }
    keys = ("attacks_per_second", "attacks_per_cpu_second", "mean_iterations")
    found = {label: recs.get(f"batching/B-{method}") for method, label in labels.items()}
    rows = [attack_rate_row(label, rec, keys) for label, rec in found.items() if rec is not None]
    head = ["batching", "attacks/s", "attacks per CPU second", "iterations / attack"]
    return table([*head, "targeted success", "mean L_flow"], rows) if rows else "No records.\n"


def failures(recs: Records) -> str:
    """Failure screens (results/failures): images 1000-1499 unless a record's tags say."""
    rows = []
    for key, rec in sorted(recs.items()):
        if not key.startswith("failures/"):
            continue
        budget = "150" if "budget150" in key else "1,000"
        # records without restart tags were run with the default of their day: 1 at std 0.01
        restarts = f"{rec.tags.get('restarts', '1')} x {rec.tags.get('restart_scale', '0.01')}"
        if "restart_growth" in rec.tags:  # std restart_scale * growth ** (k - 1) at restart k
            restarts += f", x{rec.tags['restart_growth']} per restart"
        failed = "?" if rec.n is None or rec.successes is None else str(rec.n - rec.successes)
        images = rec.tags.get("images", "1000-1499")
        # records without a hinge tag searched the paper's exact hinge (the default until then)
        hinge = rec.tags.get("hinge", "exact")
        row = [rec.tags.get("model", "?"), images, hinge, budget, restarts, str(rec.n), failed]
        rows.append([*row, rate(rec)])
    head = ["model", "test images", "searched hinge", "iteration budget", "restarts x std"]
    head += ["attacks", "failed"]
    head.append("targeted success")
    return table(head, rows) if rows else "No records.\n"


TABLES: dict[str, Callable[[Records], str]] = {
    "failures": failures,
    "batching": batching,
    "frontier": frontier,
    "default-schedule": default_schedule,
    "new-attacks": new_attacks,
    "few-pixel": few_pixel,
    "few-pixel-seeds": few_pixel_seeds,
    "local-forward": local_forward,
    "attack-libraries": attack_libraries,
    "table1": table1,
    "readings": readings,
    "line-search": line_search,
    "strong-readings": strong_readings,
    "b1000": model_b_1000,
    "training": training,
    "throughput": throughput,
    "speedups": speedups,
    "sweeps": sweeps,
    "input-grad": input_grad,
    "pgd-training": pgd_training,
    "defense-sweep": defense_sweep,
    "defense-training": defense_training,
    "distillation": distillation,
    "vae-detector": vae_detector,
    "pcl": pcl,
    "detector-threshold": detector_threshold,
}


# ------------------------------------------------------------------------- pages


def render_page(text: str, recs: Records, page: str = "page") -> str:
    """``text`` with every marked table replaced by the one the records give."""

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in TABLES:
            raise ValueError(f"{page}: unknown table {name!r}; known: {', '.join(TABLES)}")
        try:
            body = TABLES[name](recs)
        except KeyError as exc:
            raise ValueError(f"{page}: table {name!r} needs record {exc.args[0]!r}") from exc
        return match["open"] + body + match["close"]

    return MARKER.sub(replace, text)


def render(root: Path, results: Path, *, check: bool) -> int:
    """Rewrite (or, with ``check``, compare) every page; 1 when a checked page is stale."""
    recs = load_records(results)
    stale = 0
    for page in PAGES:
        path = root / page
        if not path.exists():
            continue
        old = path.read_text(encoding="utf-8")
        new = render_page(old, recs, page)
        if new == old:
            continue
        if check:
            stale = 1
            diff = difflib.unified_diff(
                old.splitlines(keepends=True),
                new.splitlines(keepends=True),
                f"{page} (committed)",
                f"{page} (from the records)",
            )
            sys.stdout.writelines(diff)
        else:
            path.write_text(new, encoding="utf-8")
            print(f"rewrote {page}")
    if stale:
        print("pages differ from the records: run `python docs/render.py`", file=sys.stderr)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 with a diff")
    p.add_argument("--root", type=Path, default=REPO, help="the repository (its pages)")
    p.add_argument("--results", type=Path, default=None, help="records (default ROOT/results)")
    args = p.parse_args(argv)
    return render(args.root, args.results or args.root / "results", check=args.check)


if __name__ == "__main__":
    sys.exit(main())
