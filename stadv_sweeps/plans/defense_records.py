"""The defense sweep's cells as records (:mod:`stadv.records`), for the generated pages.

    python sweeps/results.py --tracking-uri sqlite:///mlflow.db --experiment defense \\
        --record results/defense-sweep --command "python sweeps/defense_sweep.py"

writes one record per finished trial, ``<model>-<defense>-<attack>.json`` (the success its
target protocol measures, with n and its Wilson interval; ``stats``: the defended model's
clean test accuracy, untargeted success, i.e. one minus the accuracy under attack, the trial's
seconds and attacks/s, the attack's mean statistics and, on a detector's row, its detection
rate, adaptive success and ROC AUC), and one per defended model, ``clean/<model>-<defense>.json``
(clean test accuracy; ``stats.train_seconds``, the training time the trial logged, else the
one in the checkpoint's sidecar when ``store`` holds it). Commit and date are the sweep's (its parent run's), never the exporter's.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from stadv.records import Machine, Record, machine_info, make_record, write_record
from stadv.store import checkpoint_path
from stadv_sweeps.plans.defense_spec import ATTACK_LABELS, DEFENSE_LABELS, DETECTORS
from stadv_sweeps.plans.defense_table import DETECTION_COLUMNS, success_table

#: Trial metrics (library names, :func:`frame_from_mlflow`) copied into a cell's ``stats``,
#: besides every ``mean_*`` / ``median_*`` statistic of the attack.
CELL_METRICS = (
    "clean_accuracy",
    "untargeted_success_rate",
    "untargeted_success_ci_low",
    "untargeted_success_ci_high",
    "seconds",
    "attacks_per_second",
    "restarted_attacks",
    "trial_seconds",
    "detector_fpr_test",
    "detection_attacks",
)


def _finite(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _machine(parent: Any, cpus_per_trial: float | None) -> Machine:
    """This machine when the sweep's parent run was logged here, else only its host's name."""
    host = parent.data.tags.get("hostname", "")
    torch_version = parent.data.tags.get("version.torch")
    threads = int(cpus_per_trial) if cpus_per_trial else None
    if host == socket.gethostname():
        here = machine_info("cpu")
        return Machine(cpu=here.cpu, cores=here.cores, threads=threads, torch=torch_version)
    return Machine(cpu=f"host {host or '?'} (model not recorded)", threads=threads)


def _date(parent: Any) -> str:
    start = _dt.datetime.fromtimestamp(parent.info.start_time / 1000, tz=_dt.timezone.utc)
    return start.isoformat("T", "seconds")


def _sidecar(store: Path | None, dataset: str, model: str, variant: str) -> dict[str, Any]:
    """The stored checkpoint's sidecar of a trained defense ({} when not there)."""
    if store is None or not variant or variant == "default":
        return {}
    path = checkpoint_path(model, dataset, store=store, variant=variant).with_suffix(".json")
    return json.loads(path.read_text()) if path.is_file() else {}


def defense_records(
    df: pd.DataFrame,
    parent: Any,
    *,
    command: str,
    store: Path | None = None,
) -> dict[str, Record]:
    """Records of a defense sweep's finished trials ``df`` (:func:`runs_frame` through
    :func:`frame_from_mlflow`: library names), keyed by their path under the records folder
    (without ``.json``)."""
    if not len(df) or "defense" not in df.columns:
        raise ValueError("not a defense sweep: its trials have no 'defense' parameter")
    table = success_table(df)
    full = parent.data.tags.get("git_commit", "unknown")
    commit = full[:7] + ("-dirty" if full.endswith("-dirty") else "")
    date = _date(parent)
    preset = parent.data.params.get("preset", "?")
    cpus = _finite(df["cpus_per_trial"].iloc[0]) if "cpus_per_trial" in df.columns else None
    machine = _machine(parent, cpus)
    common = {"command": command, "commit": commit, "date": date, "machine": machine}
    dataset = parent.data.params.get("dataset", "mnist")
    where = f"defense sweep {parent.info.run_id} (preset {preset})"
    out: dict[str, Record] = {}
    # success_table keeps df's rows, sorted: match them back by (model, defense, attack)
    raw = df.assign(_key=list(zip(df["model"], df["defense"], df["attack"], strict=True)))
    raw = raw.drop_duplicates("_key", keep="last").set_index("_key")
    for _, r in table.iterrows():
        m, d, a = str(r["model"]), str(r["defense"]), str(r["attack"])
        row = raw.loc[[(m, d, a)]].iloc[0]
        n = int(r["attacks"])
        stats: dict[str, float] = {"test_accuracy": float(r["test_accuracy"])}
        for name, value in row.items():
            key = str(name)
            if key.startswith(("mean_", "median_")) or key in CELL_METRICS:
                v = _finite(value)
                if v is not None:
                    stats[key] = v
        if d in DETECTORS:
            for name in DETECTION_COLUMNS:
                v = _finite(r[name])
                if v is not None:
                    stats[name] = v
        kind = str(r["success_kind"])
        out[f"{m}-{d}-{a}"] = make_record(
            what=(
                f"{kind.capitalize()} success of {ATTACK_LABELS.get(a, a)} on MNIST Model {m} "
                f"with defense {DEFENSE_LABELS.get(d, d)}"
            ),
            n=n,
            successes=round(float(r["success"]) * n),
            paper=_finite(r["paper_success"]),
            seconds=_finite(row.get("trial_seconds")),
            stats=stats,
            tags={"model": m, "defense": d, "attack": a, "targets": kind, "preset": preset},
            notes=f"{where}; {int(_finite(row.get('n_images')) or 0)} test images",
            source=f"MLflow run {row['run_id']}",
            **common,
        )
        if f"clean/{m}-{d}" not in out:
            accuracy = float(r["test_accuracy"])
            out[f"clean/{m}-{d}"] = _clean(row, (dataset, m, d), accuracy, store, where, common)
    return out


def _clean(
    row: pd.Series,
    cell: tuple[str, str, str],
    accuracy: float,
    store: Path | None,
    where: str,
    common: Mapping[str, Any],
) -> Record:
    """The clean test accuracy of ``cell`` = (dataset, model, defense), as logged by a trial."""
    dataset, model, defense = cell
    n = int(_finite(row.get("eval_images")) or 10_000)  # "all": the whole test split
    sidecar = _sidecar(store, dataset, model, str(row.get("defense_variant", "")))
    logged = _finite(row.get("defense_train_seconds"))  # sweeps since this field was logged
    stats = {}
    if logged is not None or "train_seconds" in sidecar:
        stats["train_seconds"] = logged if logged is not None else float(sidecar["train_seconds"])
    return make_record(
        what=f"Clean test accuracy of MNIST Model {model} with defense "
        f"{DEFENSE_LABELS.get(defense, defense)}",
        n=n,
        successes=round(accuracy * n),
        seconds=stats.get("train_seconds"),
        stats=stats,
        tags={"model": model, "defense": defense, "variant": str(row.get("defense_variant", ""))},
        notes=where + ("; seconds: the defended model's training" if stats else ""),
        **common,
    )


def write_defense_records(records: Mapping[str, Record], folder: Path) -> list[Path]:
    """Write each record to ``folder/<key>.json``; returns the paths."""
    return [write_record(rec, folder / f"{key}.json") for key, rec in sorted(records.items())]
