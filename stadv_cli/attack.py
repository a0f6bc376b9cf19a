"""``stadv attack``: run a registered attack on test images K .. K+n-1 and print one JSON object.

``--attack NAME`` picks the attack from :data:`stadv.registry.ATTACKS` (default ``stadv``).
Every option of every registered attack is a flag (``--tau``, ``--epsilon``, ``--solver``, ...),
generated from the attacks' option schema (:mod:`stadv.options`); the chosen attack's flags are
typed and checked by the schema, and a flag the chosen attack does not have is an error.

The images are attacked in blocks of ``--block-images`` (one progress line each on stderr);
with ``--out DIR`` each block's result is saved in ``DIR/blocks/`` as soon as it is done, and
``--resume`` continues an interrupted run from them (the same attack, model, images and options,
checked before anything is attacked).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stadv import plots
from stadv.data import load_tensors
from stadv.devices import resolve_device
from stadv.metrics import attack_table, summarize
from stadv.model_mode import prepared_model
from stadv.models import PAPER_TABLE1_SUCCESS, check_model_name
from stadv.options import Option, add_option_flags, build, options
from stadv.records import machine_info, record_from_summary, write_record
from stadv.registry import ATTACKS
from stadv.result import AttackResult
from stadv.result_io import concat_results, load_result, save_result
from stadv.store import load_pretrained
from stadv.targets import TARGET_CHOICES, as_target_spec, expand_targets
from stadv_cli.common import add_common, check_flags, prepare_data

_DEST = "attack_"


def _all_options() -> dict[str, tuple[Option, list[str]]]:
    """Every registered attack's options by name: the first attack's :class:`Option` and the
    names of the attacks that have it."""
    out: dict[str, tuple[Option, list[str]]] = {}
    for attack_name, cls in ATTACKS.items():
        for name, opt in options(cls).items():
            out.setdefault(name, (opt, []))[1].append(attack_name)
    return out


def add_attack_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``attack`` sub-command."""
    p = sub.add_parser("attack", help="run an attack on test images and print a JSON summary")
    p.add_argument(
        "--attack", default="stadv", choices=tuple(ATTACKS), help="the attack (default stadv)"
    )
    p.add_argument("--model", default="A", help="A, B or C")
    p.add_argument("--start", type=int, default=0, help="first test image (K, >= 0)")
    p.add_argument("--n-images", type=int, default=100, help="images to attack (>= 1)")
    p.add_argument(
        "--targets",
        default="all",
        choices=TARGET_CHOICES,
        help="target protocol (default all)",
    )
    p.add_argument("--out", default=None, help="folder for figures and the per-attack table")
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    p.add_argument(
        "--record",
        metavar="FILE",
        help="also write the measurement as a results record (stadv.records: command, commit, "
        "date, machine, n, successes, Wilson interval, the paper's value) to FILE",
    )
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
    g = p.add_argument_group("attack options (each attack's own; see --attack)")
    for name, (opt, owners) in _all_options().items():
        add_option_flags(g, {name: opt}, dest_prefix=_DEST, owner=", ".join(owners))
    add_common(p)
    p.set_defaults(handler=cmd_attack)


def attack_from_args(args: argparse.Namespace) -> Any:
    """The attack ``args.attack`` built from its given flags (:func:`stadv.options.build`).

    Raises ``ValueError`` naming a flag the attack does not have, or a bad value.
    """
    cls = ATTACKS[args.attack]
    own = options(cls)
    raw: dict[str, Any] = {}
    for name, (opt, owners) in _all_options().items():
        value = getattr(args, _DEST + name, None)
        if value is None:
            continue
        if name not in own:
            raise ValueError(
                f"{opt.flag} is not an option of --attack {args.attack} "
                f"(it is one of {', '.join(owners)})"
            )
        raw[name] = value
    return build(cls, raw)


def _params(attack: Any) -> dict[str, Any]:
    return dataclasses.asdict(attack)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None (JSON ``null``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_json(record: dict[str, Any], *, indent: int | None = None) -> str:
    """``record`` as valid JSON: NaN and infinities are written as ``null``."""
    return json.dumps(_finite(record), indent=indent, allow_nan=False)


def cmd_attack(args: argparse.Namespace) -> int:
    attack = attack_from_args(args)
    name = check_model_name(args.model)
    check_flags(args, ints={"--start": 0, "--n-images": 1, "--block-images": 1})
    targets_spec = as_target_spec(args.targets)
    if args.resume and not args.out:
        raise ValueError("--resume needs --out (the folder of the run to continue)")
    prepare_data(args)
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
    result, blocks = _attack_in_blocks(attack, model, images, labels, targets_spec, args, name)
    summary = summarize(result)
    has_flows = result.flows is not None
    record: dict[str, Any] = {
        "attack": args.attack,
        "model": name,
        "dataset": args.dataset,
        "start": args.start,
        "n_images": args.n_images,
        "targets": args.targets,
        "n_attacks": len(result),
        "targeted_success_rate": summary.get("targeted_success_rate", float("nan")),
        "untargeted_success_rate": summary["untargeted_success_rate"],
        "seconds": summary["seconds"],
        "attacks_per_second": summary["attacks_per_second"],
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "summary": summary,
        "params": _params(attack),
        "blocks": blocks,
    }
    if has_flows:
        record["mean_flow_loss"] = summary["mean_flow_loss"]
        record["stop_reasons"] = {
            r: result.stop_reason.count(r) for r in sorted(set(result.stop_reason))
        }
        record["restarted"] = result.extra.get("restarted", [])
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        attack_table(result).to_csv(out / "attacks.csv", index=False)
        images_cpu, labels_cpu = images.cpu(), labels.cpu()
        plots.save_png(plots.target_heatmap(result), out / "target_heatmap.png")
        if has_flows:
            plots.save_png(plots.flow_quiver(result, 0, images_cpu), out / "flow_quiver.png")
        if result.targets is not None:
            plots.save_png(plots.figure2_grid(result, images_cpu, labels_cpu), out / "figure2.png")
        (out / "summary.json").write_text(to_json(record, indent=2))
        record["out"] = str(out)
    if args.record:
        record["record"] = str(_write_record(args, name, summary, device))
    print(to_json(record) if args.json else to_json(record, indent=2))
    return 0


#: Papernot et al. (EuroS&P 2016), MNIST, their LeNet: 97.05 % targeted success.
JSMA_PAPER_SUCCESS = 0.9705
#: What each new attack's paper reports on MNIST, for the record beside our numbers.
PAPER_NOTES = {
    "deepfool": "Paper (Moosavi-Dezfooli et al., CVPR 2016, Table 1): MNIST LeNet rho_adv 0.20 "
    "(another model than ours): compare stats.mean_rho",
    "jsma": "Paper (Papernot et al., EuroS&P 2016): MNIST LeNet, 97.05 % targeted success at "
    "4.02 % of the pixels changed (another model than ours): compare "
    "stats.mean_changed_fraction_successful",
    "few-pixel": "Su et al. (IEEE TEVC 2019) report CIFAR-10 and ImageNet, not MNIST",
}


def _write_record(args: argparse.Namespace, model: str, summary: Any, device: Any) -> Path:
    """The run as a :class:`stadv.records.Record` (the paper's Table 1 value where the run is
    the paper's protocol: stAdv, MNIST, every target), written to ``args.record``."""
    mnist = args.dataset == "mnist"
    table1 = args.attack == "stadv" and mnist and args.targets == "all"
    jsma = args.attack == "jsma" and mnist and args.targets != "untargeted"
    paper = PAPER_TABLE1_SUCCESS.get(model) if table1 else JSMA_PAPER_SUCCESS if jsma else None
    what = f"{args.attack} {args.targets} on {args.dataset} model {model}, images "
    what += f"{args.start}-{args.start + args.n_images - 1}"
    made = record_from_summary(
        summary,
        what=what,
        command=shlex.join(["stadv", *args.argv]),
        paper=paper,
        tags={"attack": args.attack, "model": model, "dataset": args.dataset},
        notes=PAPER_NOTES.get(args.attack, "") if mnist else "",
        machine=machine_info(device),
    )
    return write_record(made, args.record)


def weights_digest(model: nn.Module) -> str:
    """The digest of ``model``'s weights that saved blocks record (``stadv views`` checks it)."""
    return _digest(model.state_dict())


def _digest(tensors: dict[str, Any]) -> str:
    """A short digest of named tensors' bytes: ``--resume`` refuses blocks of another model
    (its weights) or of other images."""
    h = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(tensors.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _block_key(
    args: argparse.Namespace, attack: Any, model_name: str, digest: str
) -> dict[str, Any]:
    return {
        "attack": args.attack,
        "model": model_name,
        "model_digest": digest,
        "dataset": args.dataset,
        "targets": args.targets,
        # batch_size, batching and device do not change the results: a run may resume on another
        # machine;
        # the default precision is left out so that blocks saved before the option resume
        "params": {
            k: v
            for k, v in _params(attack).items()
            if k not in ("batch_size", "batching", "device") and (k, v) != ("precision", "fp32")
        },
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


def block_range(path: Path) -> tuple[int, int]:
    """(first, last) image of a saved block, from its name."""
    try:
        first, last = path.stem.removeprefix("images_").split("-")
        return int(first), int(last)
    except ValueError:
        raise ValueError(
            f"{path} is not a block of `stadv attack` (images_FIRST-LAST.pt)"
        ) from None


def _attack_in_blocks(
    attack: Any,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    targets_spec: Any,
    args: argparse.Namespace,
    model_name: str,
) -> tuple[AttackResult, dict[str, int]]:
    """Attack ``images`` in blocks of ``args.block_images``, saving each block under
    ``args.out/blocks`` (``--resume``: loading the saved ones, all read and checked before any
    block is attacked); returns the whole result and the block counts. Random targets are drawn
    once for all images, so they do not depend on the block size."""
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
        first, last = block_range(old)
        if old.name not in names and first <= args.start + n - 1 and last >= args.start:
            raise ValueError(
                f"{old} (images {first}-{last}) does not fit this run's blocks of "
                f"--block-images {size} from image {args.start}: resume with the block size "
                "and start of the saved run, or choose another --out"
            )
    targets: Any = targets_spec
    if targets == "random":
        with prepared_model(model) as net:
            _, _, targets, _ = expand_targets(
                net, images, labels, "random", num_classes=attack.num_classes, seed=attack.seed
            )
    key = _block_key(args, attack, model_name, weights_digest(model)) if folder else {}
    plan = []
    for lo in range(0, n, size):
        hi = min(lo + size, n)
        first, last = args.start + lo, args.start + hi - 1
        block_key = {**key, "first_image": first, "last_image": last}
        if folder is not None:
            block_key["images_digest"] = _digest({"x": images[lo:hi], "y": labels[lo:hi]})
        path = folder / _block_name(first, last) if folder is not None else None
        loaded_part = None
        if path is not None and path.exists():
            loaded_part, saved_key = load_result(path)
            if saved_key != block_key:
                raise ValueError(
                    f"{path} was saved by another run ({_key_difference(saved_key, block_key)}); "
                    "use the same options to --resume it, or another --out"
                )
        plan.append((lo, hi, first, last, block_key, path, loaded_part))
    parts, offsets, loaded = [], [], 0
    for number, (lo, hi, first, last, block_key, path, loaded_part) in enumerate(plan, start=1):
        start = time.perf_counter()
        if loaded_part is not None:
            part = loaded_part
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
            f"stadv attack: block {number}/{len(plan)}, images {first}-{last}: "
            f"{len(part)} attacks, success {rate}, {how}",
            file=sys.stderr,
            flush=True,
        )
    return concat_results(parts, offsets), {"blocks": len(parts), "loaded": loaded}
