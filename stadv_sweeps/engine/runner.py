"""The sweep driver: from the command line through Ray Tune to the summary, with ``--resume``.

A sweep script hands :func:`main` its *plan* (:class:`SweepPlan`: its grid, how to prepare
its models and how to summarise its runs). The driver (the process running the script)

1. builds the trials from the plan and the command line, validating every one: a bad key or
   value stops the run here, naming it, before Ray starts;
2. checks that the MLflow tracking store answers (in seconds), creates the experiment and
   one parent run there, so the store is initialised before any trial writes to it;
3. starts an embedded Ray sized to the machine, or joins ``--address``;
4. loads every model from the model store once (training a missing one once) and puts the
   model bundles and the test images in Ray's object store, so trials need no shared disk;
5. runs one Ray Tune trial per grid point (:func:`~stadv_sweeps.engine.trial.run_trial`;
   FIFO: every trial runs to the end), retrying a failed trial up to ``--max-failures`` times;
6. prints and logs the plan's summary on the parent run (its description, headline metrics
   and an HTML report with its figures), saves the sweep's runs view on the experiment and
   prints the link that opens it and the command that serves it (:mod:`views`).

Smoke tests go to their own experiment, ``<sweep>-smoke``, unless ``--experiment-name`` says
otherwise. Tune's own result loggers (and its TensorBoard hint) are off: MLflow is the record.

The tracking store is also the sweep's memory: the parent run holds the resolved grid
(``stadv_sweep.json``). ``--resume`` finds the latest unfinished parent run of the experiment
and runs, in a fresh Ray Tune run, only the trials that have no FINISHED child run, so it
works after Ctrl-C, after a killed driver and from another machine. Ray Tune's own files go to
``<storage-path>/<experiment>/<time>/``; the storage path may be a URI (``s3://...``).

Ray and Tune themselves are :mod:`~stadv_sweeps.engine.tuning`'s.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import ray
from mlflow import MlflowClient

from stadv.data import DataNotFoundError, resolve_data_dir
from stadv.store import CheckpointError
from stadv_sweeps.engine import views
from stadv_sweeps.engine.cli import add_run_arguments, check_run_arguments, new_parser
from stadv_sweeps.engine.errors import SweepError
from stadv_sweeps.engine.prepare import SMOKE_VARIANT, prepare_data
from stadv_sweeps.engine.report import parent_description, report_html
from stadv_sweeps.engine.runs import runs_frame
from stadv_sweeps.engine.spec import Point
from stadv_sweeps.engine.tracking import (
    NOTE_TAG,
    as_metrics,
    check_tracking,
    checkpoint_record,
    create_parent,
    dataset_input,
    find_resumable,
    finished_keys,
    get_or_create_experiment,
    git_commit,
    resolve_tracking_uri,
    save_runs_view,
    ui_command,
    versions,
)
from stadv_sweeps.engine.tuning import (
    check_address,
    init_ray,
    point_id,
    resources,
    run_tune,
    slots,
    tune_storage,
)


class Spec(Protocol):
    """What the driver reads from any sweep's spec."""

    sweep: str
    models: tuple[str, ...]
    dataset: str
    n_images: int
    targets: str
    smoke: bool

    def to_json(self) -> dict[str, Any]: ...


class SweepPlan(Protocol):
    """What a sweep plan gives the driver (see :class:`stadv_sweeps.plans.grid.GridSweep`)."""

    sweep: str
    #: the script that runs it: ``sweeps/<script>.py``
    script: str
    description: str
    #: the script writing this sweep's Markdown report (``sweeps/<name>.py``), if any
    report_script: str | None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The "what to sweep" options (``--smoke-test`` and ``--dry-run`` among them)."""

    def resolve(self, args: argparse.Namespace) -> Any:
        """The spec the command line asks for (``SweepError`` naming a bad value)."""

    def from_json(self, raw: Mapping[str, Any]) -> Any:
        """A spec saved by ``Spec.to_json`` (for ``--resume``)."""

    def points(self, spec: Any) -> list[Point]:
        """The validated trials (``SweepError`` naming a bad value)."""

    def parent_params(self, spec: Any) -> dict[str, Any]:
        """Parameters of the sweep's parent run."""

    def prepare_models(self, spec: Any, args: argparse.Namespace) -> dict[str, Any]:
        """Model bundles (:mod:`~stadv_sweeps.engine.bundles`) by the points' ``weights``
        (or ``model``) key."""

    def summary(self, parent: Any, df: Any) -> tuple[str, dict[str, float]]:
        """The text printed at the end and metrics for the parent run, from the runs' frame."""

    def log_summary(self, client: MlflowClient, parent: Any, df: Any) -> None:
        """Log the summary tables, figures and report on the parent run."""


def main(plan: SweepPlan, argv: Sequence[str] | None = None) -> int:
    """Run a sweep script; returns the exit status: 0 done, 1 trials failed, 2 bad input,
    130 interrupted (continue with ``--resume``)."""
    parser = new_parser(plan.script, plan.description)
    plan.add_arguments(parser)
    add_run_arguments(parser, plan.sweep)
    args = parser.parse_args(argv)
    try:
        check_run_arguments(args)
        if args.address and not args.dry_run:
            check_address(args.address)  # before the tracking store is touched
        return Driver(args, plan).run()
    except (SweepError, DataNotFoundError, CheckpointError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------
def _print_points(points: Sequence[Point]) -> None:
    for i, p in enumerate(points, 1):
        print(f"{i:>4}  {p.key}  {p.label}")


def _resume_hint(args: argparse.Namespace, sweep: str, uri: str, experiment: str) -> str:
    parts = [f"python sweeps/{sweep}.py --resume --tracking-uri {uri}"]
    parts.append(f"--experiment-name {experiment}")
    for flag in ("address", "store", "data_dir", "storage_path"):
        value = getattr(args, flag)
        if value and not (flag == "storage_path" and value == "ray_results"):
            parts.append(f"--{flag.replace('_', '-')} {value}")
    return " ".join(parts)


class Driver:
    """One invocation of a sweep script, from the command line to the summary."""

    def __init__(self, args: argparse.Namespace, plan: SweepPlan) -> None:
        self.args = args
        self.plan = plan
        self.sweep = plan.sweep
        self.started = time.perf_counter()
        smoke = bool(getattr(args, "smoke_test", False))
        self.experiment = args.experiment_name or (f"{plan.sweep}-smoke" if smoke else plan.sweep)
        self.uri = resolve_tracking_uri(args.tracking_uri)
        self.tune_seconds = 0.0

    def run(self) -> int:
        args = self.args
        parent = None
        if args.resume:
            check_tracking(self.uri)
            client = MlflowClient(self.uri)
            exp = client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise SweepError(
                    f"nothing to resume: no experiment {self.experiment!r} at {self.uri}"
                )
            found = find_resumable(client, str(exp.experiment_id), self.sweep)
            if found is None:
                latest = f"the latest {self.sweep} sweep in {self.experiment!r}"
                print(f"nothing to resume: {latest} has finished")
                return 0
            parent, raw = found
            spec = self.plan.from_json(raw)
            print(
                f"resuming sweep {parent.info.run_id} ({parent.info.run_name}), its saved settings"
            )
        else:
            spec = self.plan.resolve(args)
        points = self.plan.points(spec)
        if args.dry_run:
            _print_points(points)
            print(f"{len(points)} trials")
            return 0
        if parent is None:
            check_tracking(self.uri)
        images, labels = prepare_data(spec.dataset, spec.n_images, args.data_dir)
        started_ray = init_ray(args.address)
        try:
            per_trial = resources(args)
            train_start = time.perf_counter()
            models = self.plan.prepare_models(spec, args)
            self.started += time.perf_counter() - train_start  # training is not sweep time
            client = MlflowClient(self.uri)
            if parent is None:
                exp_id = get_or_create_experiment(client, self.experiment, self.uri)
                parent = create_parent(
                    client,
                    exp_id,
                    spec.sweep,
                    spec.to_json(),
                    points,
                    self.plan.parent_params(spec),
                    script=self.plan.script,
                )
                source = str((resolve_data_dir(args.data_dir) / spec.dataset).resolve())
                evaluated = dataset_input(spec.dataset, "test", 0, images, labels, source)
                client.log_inputs(parent.info.run_id, datasets=[evaluated])
            else:
                client.update_run(parent.info.run_id, status="RUNNING")
            data = {"models": models, "images": (images, labels)}
            self.view_params = _distinguishing_params(points)
            return self._sweep(client, parent, spec, points, data, per_trial)
        finally:
            if started_ray:
                ray.shutdown()

    def _sweep(
        self,
        client: MlflowClient,
        parent: Any,
        spec: Spec,
        points: Sequence[Point],
        data: dict[str, Any],
        per_trial: tuple[float, float],
    ) -> int:
        exp_id, parent_id = str(parent.info.experiment_id), parent.info.run_id
        done = finished_keys(client, exp_id, parent_id)
        todo = [p for p in points if p.key not in done]
        cpus, gpus = per_trial
        parallel = slots(cpus, gpus)
        print(
            f"sweep {spec.sweep}: {len(points)} trials, {len(points) - len(todo)} finished before; "
            f"{spec.n_images} images, targets={spec.targets}; models {' '.join(spec.models)}; "
            f"{cpus:g} CPU + {gpus:g} GPU per trial, {parallel} at a time",
            flush=True,
        )
        print(f"MLflow: experiment {self.experiment!r}, parent run {parent_id} at {self.uri}")
        ctx = {
            "sweep": spec.sweep,
            "script": self.plan.script,
            "tracking_uri": self.uri,
            "experiment_id": exp_id,
            "parent_run_id": parent_id,
            "dataset": spec.dataset,
            "targets": spec.targets,
            "variant": "smoke" if spec.smoke else "",
            "cpus_per_trial": cpus,
            "git_commit": git_commit(),
            "versions": versions(),
            "data_source": str((resolve_data_dir(self.args.data_dir) / spec.dataset).resolve()),
            "checkpoints": {
                m: checkpoint_record(
                    m,
                    spec.dataset,
                    store=self.args.store,
                    variant=SMOKE_VARIANT if spec.smoke else "",
                )
                for m in spec.models
            },
        }
        status = 0
        ran: list[dict[str, Any]] = []
        if todo:
            refs = {
                "points": ray.put({point_id(p): p for p in todo}),
                "models": {m: ray.put(w) for m, w in data["models"].items()},
                "images": ray.put(data["images"]),
            }
            storage = tune_storage(self.args.storage_path, self.experiment)
            # Tune's CSV/JSON/TensorBoard result files (and its "To visualize your results with
            # TensorBoard" hint): MLflow holds the results, the hint would compete with its link
            os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
            tune_start = time.perf_counter()
            try:
                grid = run_tune(todo, ctx, refs, self.args, storage, per_trial)
            except KeyboardInterrupt:  # a second Ctrl-C: Tune gave up saving; MLflow knows
                client.set_terminated(parent_id, "KILLED")
                print(f"\ninterrupted; continue with:\n  {self._hint()}")
                return 130
            labels = {point_id(p): p.label for p in todo}
            for r in grid:
                if r.error is not None:
                    label = labels.get(r.config["point"], r.config["point"])
                    print(f"trial {label} failed: {r.error!r}", file=sys.stderr)
                    status = 1
                elif r.metrics and not r.metrics.get("reused"):
                    ran.append(r.metrics)
            self.tune_seconds = time.perf_counter() - tune_start
        missing = [p for p in points if p.key not in finished_keys(client, exp_id, parent_id)]
        self._summarise(client, parent_id, len(points), len(missing), ran, min(len(todo), parallel))
        if missing:
            client.set_terminated(parent_id, "FAILED" if status else "KILLED")
            print(f"{len(missing)} trials did not finish; continue with:\n  {self._hint()}")
            return status or 130
        client.set_terminated(parent_id, "FINISHED")
        return status

    def _summarise(
        self,
        client: MlflowClient,
        parent_id: str,
        total: int,
        missing: int,
        ran: Sequence[Mapping[str, Any]],
        parallel: int,
    ) -> None:
        """Print the tables and overhead; log the summary, figures and report on the parent."""
        parent = client.get_run(parent_id)
        df = views.frame_from_mlflow(runs_frame(client, parent))
        summary: dict[str, float] = {}
        if len(df):
            text, summary = self.plan.summary(parent, df)
            print()
            print(text)
        wall = time.perf_counter() - self.started
        attack = sum(float(m.get("seconds", 0.0)) for m in ran)
        ideal = attack / max(1, parallel)
        overhead = wall / ideal - 1 if ideal > 0 else math.nan
        tune_overhead = self.tune_seconds / ideal - 1 if ideal > 0 else math.nan
        print(
            f"\n{total - missing}/{total} trials finished. This run: {len(ran)} trials; their "
            f"attacks took {attack:.0f} s, {ideal:.0f} s on {parallel} parallel slots. Wall time "
            f"{wall:.0f} s (model training excluded, this summary included): overhead "
            f"{overhead:+.1%}; Ray Tune loop {self.tune_seconds:.0f} s: overhead {tune_overhead:+.1%}"
        )
        exp_id = str(parent.info.experiment_id)
        key = save_runs_view(
            client, exp_id, parent, self.view_params, f"{self.sweep} {parent.info.run_name}"
        )
        url = views.runs_url(self.uri, exp_id, key)
        bookkeeping = {
            "stats/trials_finished": float(total - missing),
            "stats/parallel_slots": float(parallel),
            "time/sweep_s": wall,
            "time/tune_s": self.tune_seconds,
            "time/attack_s_sum": attack,
            # percentages, as printed above (the UI shows a metric's number, not its unit)
            "time/overhead_pct": 100 * overhead,
            "time/tune_overhead_pct": 100 * tune_overhead,
        }
        values: dict[str, float] = {}  # headline first: the run page lists them as logged
        if len(df):
            meta = {
                "sweep": self.sweep,
                "smoke": bool(getattr(self.args, "smoke_test", False)),
                "finished": total - missing,
                "trials": total,
                "url": url,
            }
            note, headline = parent_description(df, meta)
            values.update(headline)
            client.set_tag(parent_id, NOTE_TAG, note)
        values.update(summary)
        values.update(bookkeeping)
        client.log_batch(parent_id, metrics=as_metrics(values))
        if len(df):
            self.plan.log_summary(client, parent, df)
            _log_html_report(client, parent_id)
        print("\nBrowse the runs (MLflow UI, model-training view, this sweep's trials):")
        print(f"  {url}")
        if not self.uri.startswith(("http://", "https://")):
            print(f"served by:\n  {ui_command(self.uri)}")
        if self.plan.report_script:
            print("Report:")
            print(
                f"  python sweeps/{self.plan.report_script}.py --tracking-uri {self.uri} "
                f"--experiment {self.experiment}"
            )

    def _hint(self) -> str:
        return _resume_hint(self.args, self.plan.script, self.uri, self.experiment)


def _distinguishing_params(points: Sequence[Point]) -> list[str]:
    """The run parameters that tell the trials apart (the runs view's columns): ``model``,
    the plan's own (e.g. ``defense``), ``attack`` when several, then the attack options that
    differ between trials (among those every trial's attack has)."""

    def varies(values: Sequence[Any]) -> bool:
        return len({repr(v) for v in values}) > 1

    out = ["model"]
    extra = dict.fromkeys(k for p in points for k in p.params)
    out += [k for k in extra if k not in out]
    if varies([p.attack_name for p in points]):
        out.append("attack")
    common = set.intersection(*(set(p.options()) for p in points)) if points else set()
    first = points[0].options() if points else {}
    out += [k for k in first if k in common and varies([p.options()[k] for p in points])]
    return out


def _log_html_report(client: MlflowClient, run_id: str) -> None:
    """``report.html`` beside the parent's ``report.md`` (when the plan logged one and no
    HTML), with the figures it names embedded, so MLflow's artifact viewer shows them."""
    names = {a.path for a in client.list_artifacts(run_id)}
    if "report.md" not in names or "report.html" in names:
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client.download_artifacts(run_id, "", tmp))
        html = report_html((local / "report.md").read_text(), local)
        out = Path(tmp) / "html" / "report.html"
        out.parent.mkdir()
        out.write_text(html)
        client.log_artifact(run_id, str(out))
