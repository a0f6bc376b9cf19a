"""The ``stadv`` command: ``train``, ``eval``, ``attack``.

Each sub-command is a small function over the library; errors the user can fix (missing data,
a bad option, a corrupt checkpoint) print one clear message and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from stadv.data import DATASETS, DataNotFoundError
from stadv.models import MODELS, PAPER_ACCURACY
from stadv.store import CheckpointError

Handler = Callable[[argparse.Namespace], int]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="mnist", choices=DATASETS)
    p.add_argument("--data-dir", default=None, help="data root (default $STADV_DATA_DIR or ./data)")
    p.add_argument(
        "--data-source",
        default=None,
        help="folder of the four gzipped IDX files to install from (default $STADV_DATA_SOURCE)",
    )
    p.add_argument("--no-download", action="store_true", help="never try torchvision's download")
    p.add_argument(
        "--store",
        default=None,
        help="model store folder (default $STADV_STORE or ~/.cache/stadv/models)",
    )
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when available)"
    )


def _prepare_data(args: argparse.Namespace) -> None:
    from stadv.data import ensure_data

    ensure_data(
        args.dataset,
        data_dir=args.data_dir,
        source_dir=args.data_source,
        download=not args.no_download,
    )


def _models(arg: str) -> list[str]:
    return list(MODELS) if arg.lower() == "all" else [arg.upper()]


def cmd_train(args: argparse.Namespace) -> int:
    from stadv.cli_defense import defense_training
    from stadv.store import train_and_store

    _prepare_data(args)
    results = []
    for name in _models(args.model):
        defense = defense_training(args, name)
        _, info = train_and_store(
            name,
            dataset=args.dataset,
            store=args.store,
            data_dir=args.data_dir,
            epochs=args.epochs,
            lr_decay_epochs=args.lr_decay_epochs,
            seed=args.seed,
            device=args.device,
            train_limit=args.train_limit,
            progress=not args.quiet,
            loss_fn=defense.loss_fn,
            variant=defense.variant,
            extra=defense.extra,
        )
        row = {
            "model": name,
            "dataset": info.dataset,
            "accuracy": info.test_accuracy,
            "epochs": info.epochs,
            "train_seconds": round(info.train_seconds, 1),
        }
        if info.variant:
            row["variant"] = info.variant
        if info.dataset == "mnist":
            row["paper_accuracy"] = PAPER_ACCURACY[name]
        results.append(row)
        print(json.dumps(row), flush=True)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from stadv.data import load_tensors
    from stadv.store import load_pretrained
    from stadv.train import evaluate

    _prepare_data(args)
    test = load_tensors(args.dataset, split="test", data_dir=args.data_dir)
    for name in _models(args.model):
        model = load_pretrained(
            name,
            dataset=args.dataset,
            store=args.store,
            data_dir=args.data_dir,
            device=args.device,
            train_if_missing=not args.no_train,
            progress=True,
        )
        acc = evaluate(model, test)
        if args.json:
            print(json.dumps({"model": name, "dataset": args.dataset, "accuracy": acc}))
        else:
            print(f"model {name} on {args.dataset}: accuracy {acc:.4%} on {len(test)} test images")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stadv",
        description="Spatially transformed adversarial examples (Xiao et al., ICLR 2018).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train Models A/B/C and write them to the model store")
    p.add_argument("--model", default="all", choices=[*MODELS, "all", "a", "b", "c"])
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="default: the model's recipe (A, B: 6; C: 10, the last 2 at lr/10)",
    )
    p.add_argument(
        "--lr-decay-epochs",
        type=int,
        default=None,
        help="run the last N epochs at lr/10 (default: the model's recipe when --epochs is not given, else 0)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--train-limit",
        type=int,
        default=None,
        help="train on the first N images only (quick runs)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(p)
    from stadv.cli_defense import add_defense_args, add_denoiser_parser

    add_defense_args(p)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("eval", help="test accuracy of a stored model (trained first if missing)")
    p.add_argument("--model", default="A", choices=[*MODELS, "all", "a", "b", "c"])
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--no-train", action="store_true", help="fail instead of training a missing model"
    )
    _add_common(p)
    p.set_defaults(handler=cmd_eval)

    from stadv.cli_attack import add_attack_parser

    add_attack_parser(sub, _add_common)
    add_denoiser_parser(sub, _add_common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except (DataNotFoundError, CheckpointError, ValueError) as err:
        print(f"stadv {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
