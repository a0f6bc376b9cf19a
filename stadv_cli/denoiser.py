"""``stadv train-denoiser``: train the denoising-autoencoder defense and store it."""

from __future__ import annotations

import argparse
import json

from defenses.denoiser import (
    DEFAULT_DENOISER_EPOCHS,
    DEFAULT_NOISE_STD,
    train_and_store_denoiser,
)
from stadv_cli.common import add_common, check_flags, prepare_data


def add_denoiser_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add the ``train-denoiser`` sub-command."""
    p = subparsers.add_parser(
        "train-denoiser", help="train the denoising-autoencoder defense and store it"
    )
    p.add_argument("--epochs", type=int, default=DEFAULT_DENOISER_EPOCHS)
    p.add_argument(
        "--noise-std",
        type=float,
        default=DEFAULT_NOISE_STD,
        help="sigma of the training noise (0.1, MagNet's)",
    )
    p.add_argument("--channels", type=int, default=32, help="feature maps per layer (32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--variant", default="", help="store the denoiser as <dataset>-denoiser-<variant>"
    )
    p.add_argument(
        "--train-limit",
        type=int,
        default=None,
        help="train on the first N images only (quick runs)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_common(p)
    p.set_defaults(handler=cmd_train_denoiser)
    return p


def cmd_train_denoiser(args: argparse.Namespace) -> int:
    """Train the denoiser (:func:`defenses.denoiser.train_and_store_denoiser`), print its row."""
    check_flags(
        args,
        ints={"--epochs": 1, "--channels": 1, "--seed": 0, "--train-limit": 1},
        reals={"--noise-std": (0.0, False)},
    )
    prepare_data(args)
    _, meta = train_and_store_denoiser(
        args.dataset,
        store=args.store,
        variant=args.variant,
        data_dir=args.data_dir,
        noise_std=args.noise_std,
        epochs=args.epochs,
        channels=args.channels,
        train_limit=args.train_limit,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
    )
    row = {
        "denoiser": meta["path"],
        "dataset": args.dataset,
        "noise_std": meta["noise_std"],
        "test_noisy_mse": round(meta["test_noisy_mse"], 6),
        "test_denoised_mse": round(meta["test_denoised_mse"], 6),
        "train_seconds": round(meta["train_seconds"], 1),
    }
    print(json.dumps(row), flush=True)
    return 0
