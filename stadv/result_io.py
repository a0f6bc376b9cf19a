"""Attack results on disk and in pieces: save, load (``weights_only=True``) and concatenate.

Long runs (``stadv attack --out DIR`` over 1,000 images: hours on a CPU) attack the images in
blocks and save each block's :class:`~stadv.result.AttackResult` as soon as it is done, so an
interrupted run continues where it stopped (``--resume``) and loses at most one block.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from stadv.result import AttackResult

_TENSORS = tuple(
    f.name
    for f in dataclasses.fields(AttackResult)
    if f.name not in ("seconds", "stop_reason", "extra")
)
FORMAT = "stadv.attack_result/1"

#: What ``torch.load`` raises for a file that is not a readable checkpoint: random bytes
#: (``UnpicklingError``), a truncated zip (``RuntimeError``, ``EOFError``), a pickle of objects
#: that ``weights_only`` refuses (``UnpicklingError``), an unreadable file (``OSError``).
_UNREADABLE = (
    OSError,
    EOFError,
    RuntimeError,
    pickle.UnpicklingError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    UnicodeDecodeError,
)


def save_result(result: AttackResult, path: str | Path, *, key: dict[str, Any]) -> Path:
    """Write ``result`` (its tensors on the CPU) and ``key`` (what produced it: plain JSON-like
    values) to ``path`` atomically: a crash never leaves a half-written file."""
    path = Path(path)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "key": key,
        "seconds": float(result.seconds),
        "stop_reason": list(result.stop_reason),
        "extra": dict(result.extra),
    }
    for name in _TENSORS:
        value = getattr(result, name)
        payload[name] = None if value is None else value.detach().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_result(path: str | Path) -> tuple[AttackResult, dict[str, Any]]:
    """``(result, key)`` saved by :func:`save_result` (``torch.load(weights_only=True)``).

    Raises:
        ValueError: naming ``path``, when the file cannot be read or unpickled (random bytes,
            a truncated file, a pickle of other objects) or does not hold a saved attack result.
    """
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except _UNREADABLE as err:
        raise ValueError(
            f"{path} is not a readable saved attack result ({type(err).__name__}); "
            "delete or move it"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a saved attack result (format {FORMAT!r})")
    try:
        result = AttackResult(
            **{name: payload[name] for name in _TENSORS},
            seconds=float(payload["seconds"]),
            stop_reason=tuple(payload["stop_reason"]),
            extra=dict(payload["extra"]),
        )
        key = dict(payload["key"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} holds an incomplete saved attack result: {err!r}") from err
    return result, key


def concat_results(parts: Sequence[AttackResult], offsets: Sequence[int]) -> AttackResult:
    """One result from the results of consecutive blocks of images.

    Args:
        parts: the blocks' results, in order (all targeted or all untargeted, all with or all
            without flows).
        offsets: the index of each block's first image: its ``source_index`` is shifted by it.
    Returns:
        The rows of every part in order; ``seconds`` is their sum, ``extra["restarted"]`` (stAdv's
        re-solved attacks per restart) is summed, per-attack ``extra`` tensors (one row per
        attack in every part, such as DeepFool's ``rho``) are concatenated, the other ``extra``
        entries are the first part's.
    Raises:
        ValueError: no parts, ``offsets`` of another length, or parts that do not fit together.
    """
    if not parts or len(parts) != len(offsets):
        raise ValueError(
            f"need one offset per part, got {len(parts)} parts, {len(offsets)} offsets"
        )
    first = parts[0]
    fields: dict[str, Any] = {}
    for name in _TENSORS:
        values = [getattr(p, name) for p in parts]
        if all(v is None for v in values):
            fields[name] = None
            continue
        if any(v is None for v in values):
            raise ValueError(f"cannot concatenate results: {name} is missing from some parts")
        if name == "source_index":
            values = [v + int(o) for v, o in zip(values, offsets, strict=True)]
        fields[name] = torch.cat([v.cpu() for v in values])
    extra = dict(first.extra)
    restarted = [p.extra.get("restarted") for p in parts]
    if all(isinstance(r, list) for r in restarted):
        extra["restarted"] = [sum(col) for col in zip(*restarted, strict=True)]
    for key, value in first.extra.items():
        column = [p.extra.get(key) for p in parts]
        if isinstance(value, torch.Tensor) and all(
            isinstance(c, torch.Tensor) and c.ndim >= 1 and c.shape[0] == len(p)
            for c, p in zip(column, parts, strict=True)
        ):
            extra[key] = torch.cat([c.cpu() for c in column if isinstance(c, torch.Tensor)])
    return AttackResult(
        **fields,
        seconds=sum(float(p.seconds) for p in parts),
        stop_reason=tuple(r for p in parts for r in p.stop_reason),
        extra=extra,
    )
