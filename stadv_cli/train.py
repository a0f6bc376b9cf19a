"""``stadv train`` and ``stadv eval``: train Models A/B/C into the store, test a stored model."""

from __future__ import annotations

import argparse
import json
from typing import Any

from stadv.data import load_tensors
from stadv.models import MODELS, PAPER_ACCURACY
from stadv.store import load_pretrained, train_and_store
from stadv.train import evaluate
from stadv_cli.common import add_common, check_flags, model_names, prepare_data
from stadv_cli.defense import add_defense_args, check_defense_flags, defense_training

MODEL_CHOICES = [*MODELS, "all", "a", "b", "c"]


def add_train_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``train`` sub-command."""
    p = sub.add_parser("train", help="train Models A/B/C and write them to the model store")
    p.add_argument("--model", default="all", choices=MODEL_CHOICES)
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="default: the model's recipe (A, B: 6; C: 10, the last 2 at lr/10); >= 1",
    )
    p.add_argument(
        "--lr-decay-epochs",
        type=int,
        default=None,
        help="run the last N epochs at lr/10 (default: the model's recipe when --epochs is not given, else 0)",
    )
    p.add_argument("--seed", type=int, default=0, help=">= 0 (default 0)")
    p.add_argument(
        "--train-limit",
        type=int,
        default=None,
        help="train on the first N >= 1 images only (quick runs)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_common(p)
    add_defense_args(p)
    p.set_defaults(handler=cmd_train)


def add_eval_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``eval`` sub-command."""
    p = sub.add_parser("eval", help="test accuracy of a stored model (trained first if missing)")
    p.add_argument("--model", default="A", choices=MODEL_CHOICES)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--no-train", action="store_true", help="fail instead of training a missing model"
    )
    add_common(p)
    p.set_defaults(handler=cmd_eval)


def cmd_train(args: argparse.Namespace) -> int:
    check_flags(
        args,
        ints={"--epochs": 1, "--lr-decay-epochs": 0, "--seed": 0, "--train-limit": 1},
    )
    if args.epochs is not None and args.lr_decay_epochs is not None:
        if args.lr_decay_epochs >= args.epochs:
            raise ValueError(
                f"--lr-decay-epochs must be < --epochs={args.epochs}, got {args.lr_decay_epochs}"
            )
    check_defense_flags(args)
    prepare_data(args)
    for name in model_names(args.model):
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
            trainer=defense.trainer,
        )
        row: dict[str, Any] = {
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
        print(json.dumps(row), flush=True)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    prepare_data(args)
    test = load_tensors(args.dataset, split="test", data_dir=args.data_dir)
    for name in model_names(args.model):
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
