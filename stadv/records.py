"""Measured numbers as records: one JSON file per measurement, from which the docs' tables are made.

A :class:`Record` says what was measured, the exact command, the commit and date, the machine,
``n`` and the number of successes, the rate with its Wilson 95 % interval, the paper's value
where the paper reports one, the seconds it took and any further statistics (mean L_flow,
iterations, evaluations per attack, attacks/s, ...). RobustBench keeps one JSON entry per
model and generates its leaderboard from them; ``results/`` holds ours and ``docs/render.py``
writes the tables of ``README.md`` and ``docs/*.md`` from it.

Where a number was reported without its ``n`` (or without its successes), the record leaves
them ``None`` and its ``notes`` say so; the interval is then ``None`` too, never guessed.

    >>> from stadv.records import make_record
    >>> r = make_record(what="Table 1, model B", command="stadv attack ...", n=900, successes=899)
    >>> round(r.rate, 4), round(r.ci_low, 4), round(r.ci_high, 4)
    (0.9989, 0.9937, 0.9998)
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stadv.metrics import wilson_interval

SCHEMA = 1

#: Summary keys that :func:`record_from_summary` turns into the record's own fields.
_SUMMARY_FIELDS = frozenset(
    {
        "attacks",
        "seconds",
        "targeted_success_rate",
        "targeted_success_ci_low",
        "targeted_success_ci_high",
    }
)


@dataclass(frozen=True)
class Machine:
    """Where a measurement ran. ``None`` means the value was not recorded at the time."""

    cpu: str
    cores: int | None = None
    threads: int | None = None
    gpu: str | None = None
    torch: str | None = None


@dataclass(frozen=True)
class Record:
    """One measurement: a rate over ``n`` trials with its interval, and how it was obtained.

    ``rate`` is ``successes / n`` whenever both are known; ``ci_low`` / ``ci_high`` are its
    Wilson 95 % interval (:func:`stadv.metrics.wilson_interval`). ``tags`` place the record in
    the generated tables (``table``, ``model``, ``row``, ...); ``stats`` hold further real
    numbers; ``source`` says where the number was first reported (a commit, a closing note).
    """

    what: str
    command: str
    commit: str
    date: str
    machine: Machine
    n: int | None
    successes: int | None
    rate: float | None
    ci_low: float | None
    ci_high: float | None
    paper: float | None = None
    seconds: float | None = None
    stats: Mapping[str, float] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    notes: str = ""
    source: str = ""

    def to_json(self) -> str:
        """The record as indented JSON (NaN written as ``null``), keys in field order."""
        payload: dict[str, Any] = {
            "schema": SCHEMA,
            "what": self.what,
            "command": self.command,
            "commit": self.commit,
            "date": self.date,
            "machine": {
                "cpu": self.machine.cpu,
                "cores": self.machine.cores,
                "threads": self.machine.threads,
                "gpu": self.machine.gpu,
                "torch": self.machine.torch,
            },
            "n": self.n,
            "successes": self.successes,
            "rate": _finite_or_none(self.rate),
            "ci_low": _finite_or_none(self.ci_low),
            "ci_high": _finite_or_none(self.ci_high),
            "paper": _finite_or_none(self.paper),
            "seconds": _finite_or_none(self.seconds),
            "stats": {k: _finite_or_none(v) for k, v in self.stats.items()},
            "tags": dict(self.tags),
            "notes": self.notes,
            "source": self.source,
        }
        return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Record:
        """Parse :meth:`to_json`'s output; an unknown or missing key raises ``ValueError``."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"a record is a JSON object, got {type(data).__name__}")
        if data.get("schema") != SCHEMA:
            raise ValueError(f"record schema {data.get('schema')!r}, expected {SCHEMA}")
        required = {"what", "command", "commit", "date", "machine", "n", "successes", "rate"}
        required |= {"ci_low", "ci_high"}
        optional = {"schema", "paper", "seconds", "stats", "tags", "notes", "source"}
        missing = required - set(data)
        unknown = set(data) - required - optional
        if missing or unknown:
            raise ValueError(f"record keys: missing {sorted(missing)}, unknown {sorted(unknown)}")
        m = data["machine"]
        machine = Machine(
            cpu=_str(m.get("cpu"), "machine.cpu"),
            cores=_opt_int(m.get("cores"), "machine.cores"),
            threads=_opt_int(m.get("threads"), "machine.threads"),
            gpu=_opt_str(m.get("gpu"), "machine.gpu"),
            torch=_opt_str(m.get("torch"), "machine.torch"),
        )
        stats = data.get("stats") or {}
        tags = data.get("tags") or {}
        return cls(
            what=_str(data["what"], "what"),
            command=_str(data["command"], "command"),
            commit=_str(data["commit"], "commit"),
            date=_str(data["date"], "date"),
            machine=machine,
            n=_opt_int(data["n"], "n"),
            successes=_opt_int(data["successes"], "successes"),
            rate=_opt_float(data["rate"], "rate"),
            ci_low=_opt_float(data["ci_low"], "ci_low"),
            ci_high=_opt_float(data["ci_high"], "ci_high"),
            paper=_opt_float(data.get("paper"), "paper"),
            seconds=_opt_float(data.get("seconds"), "seconds"),
            stats={str(k): _float_or_nan(v, f"stats.{k}") for k, v in stats.items()},
            tags={str(k): _str(v, f"tags.{k}") for k, v in tags.items()},
            notes=_str(data.get("notes", ""), "notes"),
            source=_str(data.get("source", ""), "source"),
        )


def make_record(
    *,
    what: str,
    command: str,
    n: int | None,
    successes: int | None,
    rate: float | None = None,
    paper: float | None = None,
    seconds: float | None = None,
    stats: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
    notes: str = "",
    source: str = "",
    commit: str | None = None,
    date: str | None = None,
    machine: Machine | None = None,
) -> Record:
    """A record with its rate and Wilson 95 % interval computed from ``successes`` of ``n``.

    With ``n`` or ``successes`` unknown (``None``), give the reported ``rate`` (or none, for a
    record of times and statistics only); the interval is then ``None``. ``commit``, ``date``
    and ``machine`` default to this checkout's commit, now (UTC) and :func:`machine_info`, for
    a measurement made right now.
    """
    ci_low: float | None = None
    ci_high: float | None = None
    if n is not None and successes is not None:
        if not 0 <= successes <= n:
            raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
        measured = successes / n if n else math.nan
        if rate is not None and not math.isclose(rate, measured, abs_tol=5e-5):
            raise ValueError(f"rate {rate} disagrees with successes/n = {successes}/{n}")
        lo, hi = wilson_interval(successes, n)
        rate, ci_low, ci_high = measured, lo, hi
    # else: a rate reported without its n (no interval), or times and statistics only
    return Record(
        what=what,
        command=command,
        commit=commit if commit is not None else git_commit(),
        date=date
        if date is not None
        else _dt.datetime.now(_dt.timezone.utc).isoformat("T", "seconds"),
        machine=machine if machine is not None else machine_info(),
        n=n,
        successes=successes,
        rate=rate,
        ci_low=ci_low,
        ci_high=ci_high,
        paper=paper,
        seconds=seconds,
        stats={k: float(v) for k, v in (stats or {}).items()},
        tags=dict(tags or {}),
        notes=notes,
        source=source,
    )


def record_from_summary(
    summary: Mapping[str, float],
    *,
    what: str,
    command: str,
    paper: float | None = None,
    tags: Mapping[str, str] | None = None,
    notes: str = "",
    commit: str | None = None,
    date: str | None = None,
    machine: Machine | None = None,
) -> Record:
    """A record from :func:`stadv.metrics.summarize`'s dict (what ``stadv attack --json`` prints).

    ``n`` is the number of attacks; the successes are the targeted ones, or, for an untargeted
    run, the untargeted ones. Every other finite number of the summary goes into ``stats``.
    """
    n = int(summary["attacks"])
    targeted = summary.get("targeted_success_rate", math.nan)
    key = "targeted_success_rate" if math.isfinite(targeted) else "untargeted_success_rate"
    successes = round(float(summary[key]) * n)
    skip = _SUMMARY_FIELDS | {key, key.replace("rate", "ci_low"), key.replace("rate", "ci_high")}
    stats = {
        k: float(v)
        for k, v in summary.items()
        if k not in skip
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
        and math.isfinite(v)
    }
    seconds = summary.get("seconds")
    return make_record(
        what=what,
        command=command,
        n=n,
        successes=successes,
        paper=paper,
        seconds=float(seconds) if seconds is not None else None,
        stats=stats,
        tags=tags,
        notes=notes,
        commit=commit,
        date=date,
        machine=machine,
    )


def machine_info(device: str | torch.device | None = None) -> Machine:
    """This machine: CPU model and core count, torch threads, the GPU in use, torch's version.

    ``device``: where the measurement ran; a CPU device records no GPU. By default the first
    CUDA device is recorded when there is one.
    """
    where = torch.device(device) if device is not None else None
    on_gpu = torch.cuda.is_available() and (where is None or where.type == "cuda")
    gpu = torch.cuda.get_device_name(where if where is not None else 0) if on_gpu else None
    return Machine(
        cpu=_cpu_model(),
        cores=os.cpu_count(),
        threads=torch.get_num_threads(),
        gpu=gpu,
        torch=str(torch.__version__),
    )


def git_commit(cwd: str | Path | None = None) -> str:
    """The short commit of the checkout at ``cwd`` (default: this package's), ``+dirty`` if changed."""
    where = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=where,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


def write_record(record: Record, path: str | Path) -> Path:
    """Write ``record`` to ``path`` atomically (a temporary file beside it, then a rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(record.to_json())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_records(folder: str | Path) -> dict[str, Record]:
    """Every ``*.json`` record under ``folder``, keyed by its path without ``.json``, sorted.

    A file that is not a valid record raises ``ValueError`` naming the file.
    """
    root = Path(folder)
    out: dict[str, Record] = {}
    for path in sorted(root.rglob("*.json")):
        key = path.relative_to(root).with_suffix("").as_posix()
        try:
            out[key] = Record.from_json(path.read_text(encoding="utf-8"))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: {exc}") from exc
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    return value


def _opt_str(value: object, name: str) -> str | None:
    return None if value is None else _str(value, name)


def _opt_int(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer or null, got {value!r}")
    return value


def _opt_float(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number or null, got {value!r}")
    return float(value)


def _float_or_nan(value: object, name: str) -> float:
    number = _opt_float(value, name)
    return math.nan if number is None else number
