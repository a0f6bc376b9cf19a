"""What the commands share: the data and store flags, data preparation, argument checks."""

from __future__ import annotations

import argparse

from stadv.data import DATASETS, ensure_data
from stadv.models import MODELS
from stadv.options import check_real


def add_common(p: argparse.ArgumentParser) -> None:
    """``--dataset``, ``--data-dir``, ``--data-source``, ``--no-download``, ``--store``,
    ``--device``."""
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


def prepare_data(args: argparse.Namespace) -> None:
    """Install ``args.dataset`` under ``args.data_dir`` if it is missing."""
    ensure_data(
        args.dataset,
        data_dir=args.data_dir,
        source_dir=args.data_source,
        download=not args.no_download,
    )


def model_names(arg: str) -> list[str]:
    """``--model`` as model names: ``all`` is every model."""
    return list(MODELS) if arg.lower() == "all" else [arg.upper()]


def check_flags(
    args: argparse.Namespace,
    *,
    ints: dict[str, int] | None = None,
    reals: dict[str, tuple[float, bool]] | None = None,
) -> None:
    """Check numeric flags before any work: ``ints`` maps a flag to its lowest value, ``reals``
    to ``(lowest value, strictly above it)``. A flag left at None (not given, no default) is
    skipped. ``ValueError`` names the flag and the value."""
    for flag, low in (ints or {}).items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < low
        ):
            raise ValueError(f"{flag} must be >= {low}, got {value!r}")
    for flag, (lowest, strict) in (reals or {}).items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            check_real(flag, value, low=lowest, strict=strict)
