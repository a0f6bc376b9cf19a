"""``stadv attack``: run stAdv on test images K .. K+n-1 and print one JSON object.

Every :class:`~stadv.attack.StAdv` option is a flag (``--tau``, ``--kappa``, ``--solver``, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stadv.attack import CHOICES, StAdv

TARGET_CHOICES = ("all", "random", "least-likely", "none")

_SKIP = {"device"}  # set by the common --device flag


def _field_type(f: dataclasses.Field[Any]) -> Callable[[str], Any]:
    default = f.default
    if isinstance(default, bool):
        return lambda s: s.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int
    return float if isinstance(default, float) or f.name == "init_scale" else str


def add_attack_parser(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("attack", help="run stAdv on test images and print a JSON summary")
    p.add_argument("--model", default="A", help="A, B or C")
    p.add_argument("--start", type=int, default=0, help="first test image (K)")
    p.add_argument("--n-images", type=int, default=100)
    p.add_argument(
        "--targets",
        default="all",
        choices=TARGET_CHOICES,
        help="target protocol; 'none' = untargeted",
    )
    p.add_argument("--out", default=None, help="folder for figures and the per-attack table")
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    p.add_argument(
        "--no-train", action="store_true", help="fail instead of training a missing model"
    )
    for f in dataclasses.fields(StAdv):
        if f.name in _SKIP:
            continue
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {
            "default": None,
            "dest": f"attack_{f.name}",
            "type": _field_type(f),
        }
        if f.name in CHOICES:
            kwargs["choices"] = CHOICES[f.name]
        p.add_argument(flag, help=f"StAdv.{f.name} (default {f.default!r})", **kwargs)
    add_common(p)
    p.set_defaults(handler=cmd_attack)


def attack_from_args(args: argparse.Namespace) -> StAdv:
    overrides = {
        f.name: getattr(args, f"attack_{f.name}")
        for f in dataclasses.fields(StAdv)
        if f.name not in _SKIP and getattr(args, f"attack_{f.name}", None) is not None
    }
    return StAdv(**overrides)


def cmd_attack(args: argparse.Namespace) -> int:
    import torch

    from stadv import plots
    from stadv.data import ensure_data, load_tensors
    from stadv.devices import resolve_device
    from stadv.metrics import attack_table, summarize
    from stadv.models import check_model_name
    from stadv.store import load_pretrained

    attack = attack_from_args(args)
    name = check_model_name(args.model)
    if args.n_images < 1 or args.start < 0:
        raise ValueError(
            f"need --start >= 0 and --n-images >= 1, got start={args.start}, n_images={args.n_images}"
        )
    ensure_data(
        args.dataset,
        data_dir=args.data_dir,
        source_dir=args.data_source,
        download=not args.no_download,
    )
    test = load_tensors(args.dataset, split="test", data_dir=args.data_dir)
    if args.start + args.n_images > len(test):
        raise ValueError(
            f"images {args.start}..{args.start + args.n_images - 1} exceed the {len(test)} test images"
        )
    device = resolve_device(args.device)
    model = load_pretrained(
        name,
        dataset=args.dataset,
        store=args.store,
        data_dir=args.data_dir,
        device=device,
        train_if_missing=not args.no_train,
        progress=not args.json,
    )
    data = test.slice(args.start, args.start + args.n_images)
    images, labels = data.images.to(device), data.labels.to(device)
    targets = None if args.targets == "none" else args.targets
    result = attack(model, images, labels, targets=targets)
    summary = summarize(result)
    record: dict[str, Any] = {
        "model": name,
        "dataset": args.dataset,
        "start": args.start,
        "n_images": args.n_images,
        "targets": args.targets,
        "n_attacks": len(result),
        "targeted_success_rate": summary.get("targeted_success_rate", float("nan")),
        "untargeted_success_rate": summary["untargeted_success_rate"],
        "mean_flow_loss": summary["mean_flow_loss"],
        "seconds": summary["seconds"],
        "attacks_per_second": summary["attacks_per_second"],
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "summary": summary,
        "params": attack.to_dict(),
        "stop_reasons": {r: result.stop_reason.count(r) for r in sorted(set(result.stop_reason))},
        "restarted": result.extra.get("restarted", []),
    }
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        attack_table(result).to_csv(out / "attacks.csv", index=False)
        plots.save_png(plots.target_heatmap(result), out / "target_heatmap.png")
        plots.save_png(plots.flow_quiver(result, 0, images), out / "flow_quiver.png")
        if result.targets is not None:
            plots.save_png(plots.figure2_grid(result, images, labels), out / "figure2.png")
        (out / "summary.json").write_text(json.dumps(record, indent=2))
        record["out"] = str(out)
    if args.json:
        print(json.dumps(record))
    else:
        print(json.dumps(record, indent=2))
    return 0
