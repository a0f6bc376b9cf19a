"""``stadv train-vae``: train the VAE detector's autoencoder and store it (the detector's own
way into the store, as ``stadv train-denoiser`` is the denoiser's); with ``--model``, also fit
the detector's threshold for that stored classifier and report its false-positive rates."""

from __future__ import annotations

import argparse
import json
from typing import Any

from defenses.base import DefenseContext
from defenses.vae_defense import VAEDetectorDefense
from defenses.vae_detector import vae_path
from stadv.data import load_tensors
from stadv.models import MODELS
from stadv.options import add_option_flags, given_options, options
from stadv.store import load_pretrained
from stadv_cli.common import add_common, prepare_data


def add_vae_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add the ``train-vae`` sub-command: one flag per :class:`VAEDetectorDefense` option."""
    p = subparsers.add_parser(
        "train-vae",
        help="train the VAE detector's autoencoder (MagNet-style) and store it",
    )
    add_option_flags(p, options(VAEDetectorDefense), dest_prefix="vae_")
    p.add_argument("--variant", default="", help="store the VAE as <dataset>-vae-<variant>")
    p.add_argument(
        "--model",
        choices=MODELS,
        default=None,
        help="also fit the threshold for this stored (undefended) classifier and report it",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_common(p)
    p.set_defaults(handler=cmd_train_vae)
    return p


def cmd_train_vae(args: argparse.Namespace) -> int:
    """Train (or check the stored) VAE; print one JSON row."""
    made = VAEDetectorDefense(**given_options(VAEDetectorDefense, args, dest_prefix="vae_"))
    prepare_data(args)
    ctx = DefenseContext(
        dataset=args.dataset,
        store=args.store,
        data_dir=args.data_dir,
        device=args.device,
        variant=args.variant,
        progress=not args.quiet,
    )
    fit, validation = made.split(ctx)
    made.vae(fit, ctx)
    row: dict[str, Any] = {
        "vae": str(vae_path(args.dataset, store=args.store, variant=args.variant)),
        "dataset": args.dataset,
        "train_images": len(fit),
        "validation_images": len(validation),
    }
    if args.model is not None:
        classifier = load_pretrained(
            args.model,
            dataset=args.dataset,
            store=args.store,
            data_dir=args.data_dir,
            device="cpu",
            train_if_missing=False,
        )
        detector = made.detector(classifier, ctx)
        test = load_tensors(args.dataset, split="test", data_dir=args.data_dir)
        flagged = detector.detect(test.images[:1000])
        row.update(
            model=args.model,
            threshold=float(detector.threshold),
            fpr_validation=detector.fitted_on["fpr"],
            fpr_test_first_1000=float(flagged.double().mean()),
        )
    print(json.dumps(row), flush=True)
    return 0
