"""The quality-cost frontier of stAdv: mean L_flow and success against evaluations per attack.

Issue 21: the converged attack (L-BFGS to its stopping rule on the paper's exact hinge)
spends ~4x SciPy's evaluations for a ~1.8x lower L_flow. This script runs, on the same model, images and targets (the paper's
tau = 0.05, kappa = 0), a list of *schedules* of :class:`stadv.attack.StAdv` (each a set of
its options) and reports for each: targeted success (Wilson 95 % interval), mean L_flow over the
successful attacks, mean L_flow over the attacks every schedule solved (the like-for-like
quality), mean model evaluations per attack, wall and CPU seconds, attacks/s; then draws the
frontier (mean L_flow on the common successes against evaluations per attack, log scale) and
writes one JSON. Schedules (``--schedules``; default all):

* ``converged``: L-BFGS run to its stopping rule (``stop="converged"``) within 1,000
  iterations (the library's default budget, spelled out so that the row stays the same
  attack if the default's budget changes);
* ``first-success``: each attack stops at its first accepted success (``polish=0``);
* ``polish-K``: first success, then K more accepted L-BFGS iterations (``polish=K``);
  ``polish-150`` was the library's default before the smoothed hinge;
* ``budget-K``: converged, at most K iterations (``max_iterations=K``);
* ``history-K``: converged with K L-BFGS pairs (``history=K``; the default is 10);
* ``strong``: converged with SciPy's strong Wolfe line search;
* ``softplus-*``: the same on the softplus-smoothed hinge (``hinge="softplus"``, the library's
  default search since issue 21); ``softplus-polish-50`` is the library's default attack.

(Every schedule but the ``*first-success`` and ``*polish-*`` ones spells ``stop="converged"``;
every one spells its hinge, ``"exact"`` for those without the ``softplus-`` prefix.)

    python benchmarks/frontier.py --model B --n-images 20 --json frontier-B.json --figure frontier-B.png
    python benchmarks/frontier.py --model B --from-records results/frontier --figure docs/figures/frontier-B.png

``--from-records`` runs nothing: it draws the figure from the records of earlier runs (each
schedule's latest), on each schedule's own successes (one run's common successes do not exist
across runs); docs/figures/frontier-*.png are drawn so.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from stadv.attack import StAdv
from stadv.data import load_tensors
from stadv.devices import resolve_device
from stadv.metrics import wilson_interval
from stadv.plots import save_png
from stadv.records import load_records, make_record, write_record
from stadv.store import load_pretrained

#: the schedule that is the library's default attack (marked in the figure's key)
DEFAULT_SCHEDULE = "softplus-polish-50"
_EXACT = {"hinge": "exact"}
_SOFT = {"hinge": "softplus"}

#: name -> StAdv options (beyond the paper's tau 0.05, kappa 0). Every schedule spells its
#: hinge, so that a row stays the same attack when the library's default changes.
SCHEDULES: dict[str, dict[str, Any]] = {
    "converged": {"stop": "converged", "max_iterations": 1000, **_EXACT},
    "first-success": {"stop": "first-success", "polish": 0, **_EXACT},
    "polish-5": {"stop": "first-success", "polish": 5, **_EXACT},
    "polish-10": {"stop": "first-success", "polish": 10, **_EXACT},
    "polish-20": {"stop": "first-success", "polish": 20, **_EXACT},
    "polish-50": {"stop": "first-success", "polish": 50, **_EXACT},
    "polish-100": {"stop": "first-success", "polish": 100, **_EXACT},
    "polish-150": {"stop": "first-success", "polish": 150, **_EXACT},
    "polish-150-bf16": {"stop": "first-success", "polish": 150, "precision": "bf16", **_EXACT},
    "budget-50": {"stop": "converged", "max_iterations": 50, **_EXACT},
    "budget-100": {"stop": "converged", "max_iterations": 100, **_EXACT},
    "budget-150": {"stop": "converged", "max_iterations": 150, **_EXACT},
    "budget-200": {"stop": "converged", "max_iterations": 200, **_EXACT},
    "history-5": {"stop": "converged", "history": 5, **_EXACT},
    "history-20": {"stop": "converged", "history": 20, **_EXACT},
    "strong": {"stop": "converged", "wolfe": "strong", **_EXACT},
    "softplus-first-success": {"stop": "first-success", "polish": 0, **_SOFT},
    "softplus-polish-20": {"stop": "first-success", "polish": 20, **_SOFT},
    "softplus-polish-30": {"stop": "first-success", "polish": 30, **_SOFT},
    "softplus-polish-50": {"stop": "first-success", "polish": 50, **_SOFT},
    "softplus-polish-100": {"stop": "first-success", "polish": 100, **_SOFT},
    "softplus-polish-50-bf16": {
        "stop": "first-success",
        "polish": 50,
        "precision": "bf16",
        **_SOFT,
    },
    "softplus-converged": {"stop": "converged", "max_iterations": 1000, **_SOFT},
}


def run_schedule(
    name: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    max_iterations: int | None = None,
) -> dict[str, Any]:
    """One schedule on all attacks: its result's per-attack columns and its timings
    (``max_iterations``: a ceiling on every schedule's own, for quick runs)."""
    options = dict(SCHEDULES[name])
    if max_iterations is not None:
        options["max_iterations"] = min(options.get("max_iterations", 1000), max_iterations)
    attack = StAdv(tau=0.05, kappa=0.0, batch_size=batch_size, **options)
    cpu, wall = time.process_time(), time.perf_counter()
    result = attack(model, x, y, targets="all")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "name": name,
        "options": SCHEDULES[name],
        "success": result.success.cpu(),
        "flow_loss": result.flow_loss.detach().cpu() if result.flow_loss is not None else None,
        "evaluations": result.evaluations.cpu(),
        "wall_s": wall,
        "cpu_s": cpu,
    }


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per schedule: success with interval, L_flow (its successes; the common ones), cost."""
    common = torch.stack([r["success"] for r in runs]).all(dim=0)
    rows = []
    for r in runs:
        ok, n = r["success"], int(r["success"].numel())
        k = int(ok.sum())
        low, high = wilson_interval(k, n)
        lflow = r["flow_loss"].double()
        rows.append(
            {
                "schedule": r["name"],
                "options": r["options"],
                "attacks": n,
                "successes": k,
                "success": k / n if n else math.nan,
                "ci_low": low,
                "ci_high": high,
                "mean_flow_loss_successful": float(lflow[ok].mean()) if k else math.nan,
                "mean_flow_loss_common": float(lflow[common].mean())
                if int(common.sum())
                else math.nan,
                "common_attacks": int(common.sum()),
                "evaluations_per_attack": float(r["evaluations"].double().mean()),
                "wall_s": r["wall_s"],
                "cpu_s": r["cpu_s"],
                "attacks_per_s": n / r["wall_s"] if r["wall_s"] > 0 else math.nan,
            }
        )
    base = next((row for row in rows if row["schedule"] == "converged"), None)
    for row in rows:
        if base is not None:
            row["evaluations_vs_converged"] = (
                base["evaluations_per_attack"] / row["evaluations_per_attack"]
            )
            row["flow_loss_vs_converged"] = (
                row["mean_flow_loss_common"] / base["mean_flow_loss_common"]
            )
    return rows


#: the y axis of :func:`figure`: one run's rows share their common successes; records gathered
#: from several runs are compared on each schedule's own successes.
Y_AXES = {
    "mean_flow_loss_common": "mean L_flow over the attacks every schedule solved",
    "mean_flow_loss_successful": "mean L_flow over each schedule's successful attacks",
}


def _style(row: dict[str, Any]) -> tuple[str, str]:
    """A schedule's colour (red: the converged reference; purple: the smoothed hinge; blue:
    the exact hinge) and marker (a square where the search ran in bfloat16)."""
    options = row["options"]
    if row["schedule"] == "converged":
        colour = "#d62728"
    else:
        colour = "#9467bd" if options.get("hinge") == "softplus" else "#1f77b4"
    return colour, "s" if options.get("precision") == "bf16" else "o"


def figure(rows: list[dict[str, Any]], title: str, y_key: str = "mean_flow_loss_common") -> Figure:
    """Mean L_flow (``y_key``, a key of :data:`Y_AXES`) against evaluations per attack, each
    schedule a numbered point (:func:`_style`) explained in a key with its success; the goal
    region of issue 21 (at least 3x fewer evaluations than the converged attack, L_flow within
    10 % of it) is shaded."""
    fig = Figure(figsize=(13, 6))
    ax = fig.add_axes((0.07, 0.1, 0.6, 0.8))
    base = next((r for r in rows if r["schedule"] == "converged"), None)
    if base is not None:
        x_goal = base["evaluations_per_attack"] / 3
        y_goal = 1.1 * base[y_key]
        ax.axvline(x_goal, color="#2ca02c", linestyle="--", linewidth=1)
        ax.axhline(y_goal, color="#2ca02c", linestyle="--", linewidth=1)
        ax.fill_between(
            [1, x_goal],
            0,
            y_goal,
            color="#2ca02c",
            alpha=0.08,
            label="goal: >= 3x fewer evaluations, L_flow within 10 % of converged",
        )
    # each point numbered beside it, the numbers explained in a key to the right (labels
    # written at the points overlap where schedules cost alike)
    ordered = sorted(rows, key=lambda r: r["evaluations_per_attack"])
    key = []
    for i, row in enumerate(ordered, start=1):
        x, y = row["evaluations_per_attack"], row[y_key]
        colour, marker = _style(row)
        ax.scatter([x], [y], color=colour, marker=marker, zorder=3)
        ax.annotate(
            str(i), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8, color=colour
        )
        name = row["schedule"] + (" (default)" if row["schedule"] == DEFAULT_SCHEDULE else "")
        key.append(f"{i:>2}  {name}: {100 * row['success']:.1f} %, {x:.0f} evals, L_flow {y:.2f}")
    fig.text(0.70, 0.88, "\n".join(key), va="top", ha="left", fontsize=8, family="monospace")
    xs = [r["evaluations_per_attack"] for r in rows]
    ys = [r[y_key] for r in rows]
    for colour, marker, label in (
        ("#d62728", "o", "converged on the exact hinge (the reference)"),
        ("#1f77b4", "o", "exact hinge"),
        ("#9467bd", "o", "softplus-smoothed hinge (the default's search)"),
        ("#7f7f7f", "s", "square: searched in bfloat16 (cheaper evaluations)"),
    ):
        ax.scatter([], [], color=colour, marker=marker, label=label)
    ax.set_xscale("log")
    ax.set_xlim(min(xs) / 1.5, max(xs) * 1.5)
    ax.set_ylim(0, max(ys) * 1.1)
    ticks = [
        t
        for t in (10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
        if min(xs) / 1.5 <= t <= max(xs) * 1.5
    ]
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("model evaluations per attack (log scale)")
    ax.set_ylabel(Y_AXES[y_key])
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(loc="upper right", fontsize=8)
    return fig


def rows_from_records(folder: Path, model: str) -> list[dict[str, Any]]:
    """The figure's rows for ``model`` from the records :func:`write_records` wrote in
    ``folder`` (``<model>-<schedule>.json``, possibly from several runs), cheapest first."""
    rows = []
    for rec in load_records(folder).values():
        name = rec.tags.get("schedule")
        if rec.tags.get("model") != model or name is None or rec.rate is None:
            continue
        rows.append(
            {
                "schedule": name,
                "options": SCHEDULES.get(name, {}),
                "success": rec.rate,
                "evaluations_per_attack": rec.stats["evaluations_per_attack"],
                "mean_flow_loss_successful": rec.stats["mean_flow_loss_successful"],
                "commit": rec.commit,
            }
        )
    if not rows:
        raise ValueError(f"no frontier records of model {model!r} in {str(folder)!r}")
    return sorted(rows, key=lambda r: r["evaluations_per_attack"])


def draw_from_records(folder: Path, model: str, png: Path) -> dict[str, Any]:
    """``--from-records``: the frontier of ``model`` drawn from the records in ``folder``."""
    rows = rows_from_records(folder, model)
    commits = sorted({r["commit"] for r in rows})
    title = f"stAdv quality-cost frontier, model {model}: {len(rows)} records in {folder}"
    fig = figure(rows, title, y_key="mean_flow_loss_successful")
    fig.text(0.70, 0.1, "runs (commits):\n" + "\n".join(commits), va="bottom", fontsize=8)
    save_png(fig, png)
    return {"model": model, "records": str(folder), "rows": rows}


def print_table(rows: list[dict[str, Any]]) -> None:
    head = f"{'schedule':<14} {'success':>22} {'L_flow common':>14} {'evals/attack':>13} "
    head += f"{'x fewer evals':>13} {'L_flow ratio':>12} {'attacks/s':>10}"
    print(head)
    for r in rows:
        interval = f"{100 * r['success']:.2f} [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]"
        print(
            f"{r['schedule']:<14} {interval:>22} {r['mean_flow_loss_common']:>14.3f} "
            f"{r['evaluations_per_attack']:>13.1f} {r.get('evaluations_vs_converged', math.nan):>13.2f} "
            f"{r.get('flow_loss_vs_converged', math.nan):>12.3f} {r['attacks_per_s']:>10.2f}"
        )


def write_records(
    report: dict[str, Any], folder: Path, command: str, commit: str | None = None
) -> list[Path]:
    """One record per schedule (:mod:`stadv.records`): targeted success over the attacks, its
    L_flow and cost as statistics; ``folder/<model>-<schedule>.json``."""
    first, last = report["images"]
    paths = []
    for row in report["rows"]:
        stats = {
            k: float(v)
            for k, v in row.items()
            if k not in ("attacks", "successes", "success", "ci_low", "ci_high", "wall_s")
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
        }
        made = make_record(
            what=f"stAdv schedule {row['schedule']} ({row['options'] or 'the default'}): Model "
            f"{report['model']}, test images {first}-{last} x 9 targets, tau 0.05, kappa 0, "
            f"{report['threads']} thread(s), {report['device']}",
            command=command,
            n=int(row["attacks"]),
            successes=int(row["successes"]),
            seconds=float(row["wall_s"]),
            stats=stats,
            tags={"model": str(report["model"]), "schedule": str(row["schedule"])},
            commit=commit,
        )
        paths.append(write_record(made, folder / f"{report['model']}-{row['schedule']}.json"))
    return paths


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--model", default="B", choices=["A", "B", "C"], help="store model [B]")
    p.add_argument("--start", type=int, default=0, help="first test image [0]")
    p.add_argument("--n-images", type=int, default=20, help="images, each x 9 targets [20]")
    p.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--max-iterations",
        type=int,
        default=None,
        help="a ceiling on every schedule's iterations (quick runs; default: none)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads [1]")
    p.add_argument("--device", default=None, help="default: CUDA when available, else CPU")
    p.add_argument("--store", default=None, help="model store (must hold the model)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--figure", default=None, help="write the frontier PNG here")
    p.add_argument("--record", default=None, help="write one record per schedule into this folder")
    p.add_argument(
        "--from-records",
        default=None,
        metavar="DIR",
        help="run nothing: draw --figure from the records in DIR (e.g. results/frontier) for "
        "--model, each schedule on its own successes",
    )
    args = p.parse_args(argv)
    if args.from_records is not None and args.figure is None:
        p.error("--from-records draws a figure: give --figure PNG")
    if args.n_images < 1 or args.start < 0 or args.threads < 1 or args.batch_size < 1:
        p.error("--n-images, --threads, --batch-size must be >= 1 and --start >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.from_records is not None:
        try:
            return draw_from_records(Path(args.from_records), args.model, Path(args.figure))
        except ValueError as exc:
            raise SystemExit(f"frontier.py: {exc}") from exc
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = load_pretrained(
        args.model, store=args.store, data_dir=args.data_dir, device=device, train_if_missing=False
    )
    test = load_tensors("mnist", split="test", data_dir=args.data_dir)
    data = test.slice(args.start, args.start + args.n_images)
    x, y = data.images.to(device), data.labels.to(device)
    runs = [
        run_schedule(name, model, x, y, args.batch_size, args.max_iterations)
        for name in args.schedules
    ]
    rows = summarise(runs)
    print_table(rows)
    report = {
        "model": args.model,
        "images": [args.start, args.start + args.n_images - 1],
        "targets": "all",
        "tau": 0.05,
        "kappa": 0.0,
        "device": str(device),
        "threads": args.threads,
        "max_iterations_ceiling": args.max_iterations,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "rows": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, allow_nan=True))
    if args.record:
        command = shlex.join(["python", "benchmarks/frontier.py", *(argv or sys.argv[1:])])
        write_records(report, Path(args.record), command)
    if args.figure:
        title = f"stAdv quality-cost frontier, model {args.model}, {len(x)} images x 9 targets"
        save_png(figure(rows, title), args.figure)
    return report


if __name__ == "__main__":
    main()
