"""``stadv attack``: run stAdv on test images K .. K+n-1 and print one JSON object.

Every :class:`~stadv.attack.StAdv` option is a flag (``--tau``, ``--kappa``, ``--solver``, ...).
The images are attacked in blocks of ``--block-images`` (one progress line each on stderr);
with ``--out DIR`` each block's result is saved in ``DIR/blocks/`` as soon as it is done, and
``--resume`` continues an interrupted run from them (the same model, images and options, checked).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stadv.attack import CHOICES, StAdv

if TYPE_CHECKING:
    import torch

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
        "--block-images",
        type=int,
        default=100,
        help="images attacked (and, with --out, saved) per block (default 100; on a GPU raise it with --batch-size so that a block fills the batch)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out: blocks already saved there are loaded, not attacked",
    )
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
    result, blocks = _attack_in_blocks(attack, model, images, labels, args, name)
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
        "blocks": blocks,
    }
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        attack_table(result).to_csv(out / "attacks.csv", index=False)
        images_cpu, labels_cpu = images.cpu(), labels.cpu()
        plots.save_png(plots.target_heatmap(result), out / "target_heatmap.png")
        plots.save_png(plots.flow_quiver(result, 0, images_cpu), out / "flow_quiver.png")
        if result.targets is not None:
            plots.save_png(plots.figure2_grid(result, images_cpu, labels_cpu), out / "figure2.png")
        (out / "summary.json").write_text(json.dumps(record, indent=2))
        record["out"] = str(out)
    if args.json:
        print(json.dumps(record))
    else:
        print(json.dumps(record, indent=2))
    return 0


def _digest(tensors: dict[str, Any]) -> str:
    """A short digest of named tensors' bytes: ``--resume`` refuses blocks of another model
    (its weights) or of other images."""
    import torch

    h = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(tensors.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _block_key(
    args: argparse.Namespace, attack: StAdv, model_name: str, digest: str
) -> dict[str, Any]:
    return {
        "model": model_name,
        "model_digest": digest,
        "dataset": args.dataset,
        "targets": args.targets,
        # batch_size and device do not change the results: a run may resume on another machine
        "params": {k: v for k, v in attack.to_dict().items() if k not in ("batch_size", "device")},
    }


def _key_difference(saved: dict[str, Any], key: dict[str, Any]) -> str:
    """What differs between a saved block's key and this run's, for the error message."""
    diffs = []
    for k in sorted(set(saved) | set(key)):
        a, b = saved.get(k), key.get(k)
        if k == "params" and isinstance(a, dict) and isinstance(b, dict):
            diffs += [
                f"{p}: saved {a.get(p)!r}, now {b.get(p)!r}"
                for p in sorted(set(a) | set(b))
                if a.get(p) != b.get(p)
            ]
        elif a != b:
            diffs.append(f"{k}: saved {a!r}, now {b!r}")
    return "; ".join(diffs)


def _block_name(first: int, last: int) -> str:
    return f"images_{first:05d}-{last:05d}.pt"


def _block_range(path: Path) -> tuple[int, int]:
    """(first, last) image of a saved block, from its name."""
    try:
        first, last = path.stem.removeprefix("images_").split("-")
        return int(first), int(last)
    except ValueError:
        raise ValueError(
            f"{path} is not a block of `stadv attack` (images_FIRST-LAST.pt)"
        ) from None


def _attack_in_blocks(
    attack: StAdv,
    model: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    args: argparse.Namespace,
    model_name: str,
) -> tuple[Any, dict[str, int]]:
    """Attack ``images`` in blocks of ``args.block_images``, saving each block under
    ``args.out/blocks`` (``--resume``: loading the saved ones); returns the whole result and the
    block counts. Random targets are drawn once for all images, so they do not depend on the
    block size."""
    import torch

    from stadv.attack_common import prepared_model
    from stadv.result_io import concat_results, load_result, save_result
    from stadv.targets import expand_targets

    if args.block_images < 1:
        raise ValueError(f"--block-images must be >= 1, got {args.block_images}")
    if args.resume and not args.out:
        raise ValueError("--resume needs --out (the folder of the run to continue)")
    folder = Path(args.out) / "blocks" if args.out else None
    saved = sorted(folder.glob("images_*.pt")) if folder is not None and folder.is_dir() else []
    if saved and not args.resume:
        raise ValueError(
            f"{folder} holds {len(saved)} saved blocks of an earlier run: pass --resume to "
            "continue it, or choose another --out (nothing was overwritten)"
        )
    n, size = images.shape[0], args.block_images
    names = {
        _block_name(args.start + lo, args.start + min(lo + size, n) - 1) for lo in range(0, n, size)
    }
    for old in saved:
        first, last = _block_range(old)
        if old.name not in names and first <= args.start + n - 1 and last >= args.start:
            raise ValueError(
                f"{old} (images {first}-{last}) does not fit this run's blocks of "
                f"--block-images {size} from image {args.start}: resume with the block size "
                "and start of the saved run, or choose another --out"
            )
    targets: Any = None if args.targets == "none" else args.targets
    if targets == "random":
        with prepared_model(model) as net:
            _, _, targets, _ = expand_targets(
                net, images, labels, "random", num_classes=attack.num_classes, seed=attack.seed
            )
    key = _block_key(args, attack, model_name, _digest(model.state_dict())) if folder else {}
    parts, offsets, loaded = [], [], 0
    for number, lo in enumerate(range(0, n, size), start=1):
        hi = min(lo + size, n)
        first, last = args.start + lo, args.start + hi - 1
        block_key = {**key, "first_image": first, "last_image": last}
        if folder is not None:
            block_key["images_digest"] = _digest({"x": images[lo:hi], "y": labels[lo:hi]})
        path: Path | None = folder / _block_name(first, last) if folder else None
        start = time.perf_counter()
        if path is not None and path.exists():
            part, saved_key = load_result(path)
            if saved_key != block_key:
                raise ValueError(
                    f"{path} was saved by another run ({_key_difference(saved_key, block_key)}); "
                    "use the same options to --resume it, or another --out"
                )
            how = "loaded"
            loaded += 1
        else:
            t = targets[lo:hi] if isinstance(targets, torch.Tensor) else targets
            part = attack(model, images[lo:hi], labels[lo:hi], targets=t)
            if path is not None:
                save_result(part, path, key=block_key)
            how = f"attacked in {time.perf_counter() - start:.1f} s"
        parts.append(part)
        offsets.append(lo)
        rate = f"{part.success_rate:.2%}" if len(part) else "n/a"
        print(
            f"stadv attack: block {number}/{-(-n // size)}, images {first}-{last}: "
            f"{len(part)} attacks, success {rate}, {how}",
            file=sys.stderr,
            flush=True,
        )
    return concat_results(parts, offsets), {"blocks": len(parts), "loaded": loaded}
