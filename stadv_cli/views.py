"""``stadv views DIR``: the views of what an attack did inside the model, for a finished run.

``DIR`` is the ``--out`` folder of a finished ``stadv attack`` (its ``summary.json`` and saved
``blocks/``). The attacked model is loaded from the store (never trained here) and must be the
one the blocks were attacked on (their recorded weight digest); the test images are the run's.
Writes :data:`stadv.views.VIEW_FILES` into ``DIR/views/`` (:func:`stadv.views.save_views`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from stadv.data import load_tensors
from stadv.devices import resolve_device
from stadv.result import AttackResult
from stadv.result_io import concat_results, load_result
from stadv.store import load_pretrained
from stadv.views import save_views
from stadv_cli.attack import block_range, weights_digest
from stadv_cli.common import add_common, check_flags, prepare_data


def add_views_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add the ``views`` sub-command."""
    p = subparsers.add_parser(
        "views",
        help="render the representation-space, activation-difference and Grad-CAM views of a "
        "finished `stadv attack --out DIR`",
    )
    p.add_argument("folder", help="the --out folder of a finished `stadv attack`")
    p.add_argument(
        "--max-points",
        type=int,
        default=300,
        help="attacks shown in the representation space (PCA and t-SNE; default 300)",
    )
    p.add_argument("--examples", type=int, default=4, help="attacks shown by Grad-CAM (default 4)")
    add_common(p)
    p.set_defaults(handler=run_views)
    return p


def _summary(folder: Path) -> dict[str, Any]:
    path = folder / "summary.json"
    if not path.is_file():
        raise ValueError(
            f"{folder} holds no summary.json: not the --out folder of a finished `stadv attack`"
        )
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    missing = [k for k in ("model", "dataset", "start", "n_images") if k not in summary]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: not written by `stadv attack --out`")
    return dict(summary)


def run_views(args: argparse.Namespace) -> int:
    check_flags(args, ints={"--max-points": 1, "--examples": 1})
    folder = Path(args.folder)
    summary = _summary(folder)
    args.dataset = str(summary["dataset"])  # the run's data set, whatever --dataset says
    blocks = sorted((folder / "blocks").glob("images_*.pt"))
    if not blocks:
        raise ValueError(f"{folder / 'blocks'} holds no saved blocks of the run")
    start, n_images = int(summary["start"]), int(summary["n_images"])
    prepare_data(args)
    device = resolve_device(args.device)
    model = load_pretrained(
        str(summary["model"]),
        dataset=args.dataset,
        store=args.store,
        data_dir=args.data_dir,
        device=device,
        train_if_missing=False,
    )
    digest = weights_digest(model)
    parts, offsets = [], []
    for path in blocks:
        part, key = load_result(path)
        if key.get("model_digest") != digest:
            raise ValueError(
                f"{path} was attacked on other weights of model {summary['model']} than the "
                "store holds now: its views would show another model"
            )
        first, _ = block_range(path)
        parts.append(part)
        offsets.append(first - start)
    result = concat_results(parts, offsets)
    test = load_tensors(args.dataset, split="test", data_dir=args.data_dir)
    images = test.slice(start, start + n_images).images.to(device)
    result = _on(result, device)
    paths = save_views(
        model,
        images,
        result,
        folder / "views",
        max_points=args.max_points,
        examples=args.examples,
    )
    print(json.dumps({name: str(p) for name, p in paths.items()}, indent=2))
    return 0


def _on(result: AttackResult, device: torch.device) -> AttackResult:
    """``result`` with its tensor fields on ``device`` (the model's)."""
    moved: dict[str, Any] = {}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if isinstance(value, torch.Tensor):
            moved[f.name] = value.to(device)
    return dataclasses.replace(result, **moved)
