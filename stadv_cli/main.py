"""The ``stadv`` command: ``train``, ``eval``, ``attack``, ``train-denoiser``, ``train-vae``,
``views``.

Each sub-command is a small handler over the library (its module in :mod:`stadv_cli`); errors
the user can fix (missing data, a bad option, a corrupt checkpoint or saved block) print one
clear message and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from stadv.data import DataNotFoundError
from stadv.store import CheckpointError
from stadv_cli.attack import add_attack_parser
from stadv_cli.denoiser import add_denoiser_parser
from stadv_cli.train import add_eval_parser, add_train_parser
from stadv_cli.vae import add_vae_parser
from stadv_cli.views import add_views_parser

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The ``stadv`` parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="stadv",
        description="Spatially transformed adversarial examples (Xiao et al., ICLR 2018).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_eval_parser(sub)
    add_attack_parser(sub)
    add_denoiser_parser(sub)
    add_vae_parser(sub)
    add_views_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``stadv`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # the command as typed, for the records a command writes (``stadv attack --record``)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except (DataNotFoundError, CheckpointError, ValueError) as err:
        print(f"stadv {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
