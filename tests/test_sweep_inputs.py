"""Bad input to the sweep scripts stops them before any work, naming it, within seconds.
(That an embedded Ray listens on the loopback interface only is checked while the ablation's
smoke sweep runs: tests/test_sweeps.py.)

Each case runs the script's ``main`` (what ``sweeps/<name>.py`` calls) in this process and
checks the exit status 2, the message and that nothing was written (no tracking store, no Tune
folder); one case runs the real script as a subprocess, so that the file's exit status is the
``main``'s. (In process, the cases share one import of Ray, MLflow and torch: a subprocess per
case spent ~15 s of CI each on imports alone.)
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
#: the ``sweep_main`` fixture (tests/conftest.py): a sweep script's main, run in this process
SweepMain = Callable[[str, list[str]], "subprocess.CompletedProcess[str]"]


def script(name: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "sweeps" / f"{name}.py"), *args]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(
    cmd: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def where(tmp_path: Path) -> list[str]:
    return [
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--storage-path",
        str(tmp_path / "ray"),
    ]


def assert_refused(proc: subprocess.CompletedProcess[str], message: str, tmp_path: Path) -> None:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "ray").exists()


@pytest.mark.parametrize(
    ("sweep", "extra", "config", "message"),
    [
        ("kappa_tau", ["--max-failures", "-5"], None, "--max-failures must be >= 0, got -5"),
        ("kappa_tau", ["--cpus-per-trial", "0"], None, "a trial needs some resource"),
        ("kappa_tau", ["--cpus-per-trial", "-1"], None, "--cpus-per-trial must be a number >= 0"),
        ("kappa_tau", ["--gpus-per-trial", "1.5"], None, "--gpus-per-trial 1.5: above 1 it must"),
        ("kappa_tau", ["--check", "banana"], None, "check='banana' is not a valid bool"),
        ("kappa_tau", [], ("c.yaml", ""), "is empty"),
        ("kappa_tau", [], ("c.yaml", "grid: {}\n"), "'grid' is empty"),
        ("kappa_tau", [], ("c.yaml", "grid: []\n"), "'grid' is empty"),
        ("ablation", [], ("c.toml", "n_images = 'many'\n"), "n_images must be an integer"),
        ("defense_sweep", [], ("c.yaml", ""), "is empty"),
        ("defense_sweep", [], ("c.yaml", "training: {pgd_steps: 0}\n"), "pgd_steps must be >= 1"),
        (
            "defense_sweep",
            [],
            ("c.yaml", "attack_options: {stadv: {tau: -1}}\n"),
            "tau must be a finite number >= 0",
        ),
        (
            "defense_sweep",
            [],
            ("c.yaml", "training: {adv_train_limit: 5}\n"),
            "unknown training setting 'adv_train_limit'",
        ),
        ("defense_sweep", ["--stadv-check", "banana"], None, "check='banana' is not a valid bool"),
    ],
)
def test_bad_input_is_refused_before_any_work(
    sweep: str,
    extra: list[str],
    config: tuple[str, str] | None,
    message: str,
    tmp_path: Path,
    sweep_main: SweepMain,
) -> None:
    if config is not None:
        (tmp_path / config[0]).write_text(config[1])
        extra = [*extra, "--config", str(tmp_path / config[0])]
    argv = ["--smoke-test", *extra, *where(tmp_path)]
    assert_refused(sweep_main(sweep, argv), message, tmp_path)


def test_the_script_itself_exits_2_on_bad_input(tmp_path: Path, sweep_env: dict[str, str]) -> None:
    """The file as a user runs it: the same refusal, as the process's exit status."""
    argv = ["--smoke-test", "--max-failures", "-5", *where(tmp_path)]
    assert_refused(
        run(script("kappa_tau", *argv), sweep_env), "--max-failures must be >= 0, got -5", tmp_path
    )


def test_defense_sweep_takes_a_config_file(tmp_path: Path, sweep_main: SweepMain) -> None:
    config = tmp_path / "defense.yaml"
    config.write_text(
        "models: [B]\nattacks: [fgsm, stadv]\ndefenses: [none, pgd]\nn_images: 3\n"
        "attack_options: {stadv: {tau: 0.1}, fgsm: {epsilon: 0.2}}\n"
        "training: {pgd_steps: 7, train_limit: all}\n"
    )
    proc = sweep_main("defense_sweep", ["--config", str(config), "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("4 trials")
    from stadv_sweeps.engine import cli
    from stadv_sweeps.plans.defense import DefenseSweep

    plan = DefenseSweep("")
    parser = cli.new_parser("defense_sweep", "")
    plan.add_arguments(parser)
    cli.add_run_arguments(parser, "defense_sweep")
    spec = plan.resolve(parser.parse_args(["--config", str(config), "--pgd-alpha", "0.05"]))
    assert spec.attack_options["stadv"]["tau"] == 0.1
    assert spec.attack_options["fgsm"] == {"epsilon": 0.2}
    assert spec.settings.pgd_steps == 7 and spec.settings.pgd_alpha == 0.05
    assert spec.settings.train_limit is None and spec.n_images == 3


def test_unanswered_ray_address_fails_within_the_timeout(
    tmp_path: Path, sweep_main: SweepMain
) -> None:
    start = time.monotonic()
    address = f"127.0.0.1:{closed_port()}"
    argv = ["--smoke-test", "--address", address, *where(tmp_path)]
    proc = sweep_main("kappa_tau", argv)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"Ray address {address} does not answer" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()  # refused before the tracking store
    assert time.monotonic() - start < 90


def test_report_on_an_unanswered_tracking_server_fails_fast(
    tmp_path: Path, sweep_main: SweepMain
) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    start = time.monotonic()
    argv = ["--tracking-uri", uri, "--experiment", "x", "--out", str(tmp_path / "r.md")]
    proc = sweep_main("results", argv)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"tracking URI {uri} is unreachable" in proc.stderr
    assert not (tmp_path / "r.md").exists()
    assert time.monotonic() - start < 60


# --- --gpus-per-trial: parsed, checked before any work, handed to Tune ----------------------


def run_args(*argv: str) -> argparse.Namespace:
    from stadv_sweeps.engine import cli

    parser = cli.new_parser("kappa_tau", "")
    cli.add_run_arguments(parser, "kappa_tau")
    return parser.parse_args(list(argv))


def test_gpus_per_trial_parses_as_a_float() -> None:
    assert run_args("--gpus-per-trial", "0.25").gpus_per_trial == 0.25
    assert run_args().gpus_per_trial is None  # Ray's cluster decides (0.5 with GPUs, else 0)


@pytest.mark.parametrize(
    ("argv", "cuda", "message"),
    [
        (["--gpus-per-trial", "-0.5"], True, "--gpus-per-trial must be a number >= 0, got -0.5"),
        (["--gpus-per-trial", "nan"], True, "--gpus-per-trial must be a number >= 0, got nan"),
        (["--gpus-per-trial", "1.5"], True, "--gpus-per-trial 1.5: above 1 it must be a whole"),
        (["--gpus-per-trial", "0.25"], False, "--gpus-per-trial 0.25 asks for a GPU, but this"),
    ],
)
def test_bad_gpus_per_trial_is_named(
    argv: list[str], cuda: bool, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stadv_sweeps.engine import cli
    from stadv_sweeps.engine.errors import SweepError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    with pytest.raises(SweepError, match=re.escape(message)):
        cli.check_run_arguments(run_args(*argv))


@pytest.mark.parametrize(
    ("argv", "cuda"),
    [
        (["--gpus-per-trial", "0.25"], True),
        (["--gpus-per-trial", "1"], True),
        (["--gpus-per-trial", "2"], True),
        (["--gpus-per-trial", "0"], False),
        # a cluster's GPUs are the cluster's: checked once joined (tuning.resources)
        (["--gpus-per-trial", "0.25", "--address", "10.0.0.1:6379"], False),
    ],
)
def test_good_gpus_per_trial_passes(
    argv: list[str], cuda: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stadv_sweeps.engine import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    cli.check_run_arguments(run_args(*argv))


def test_the_trial_resources_hold_the_gpu_share(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray import tune

    from stadv_sweeps.engine import tuning
    from stadv_sweeps.engine.errors import SweepError

    assert tuning.trial_resources(1, 0.25) == {"cpu": 1.0, "gpu": 0.25}
    assert tuning.trial_resources(2, 0) == {"cpu": 2.0, "gpu": 0.0}
    with pytest.raises(SweepError, match="--gpus-per-trial 1.5"):
        tuning.trial_resources(1, 1.5)

    class Reserved(Exception):
        pass

    seen: dict[str, float] = {}

    def with_resources(trainable: object, resources: dict[str, float]) -> None:
        seen.update(resources)
        raise Reserved

    # run_tune hands Tune exactly these resources (no Ray started: stopped at the hand-over)
    monkeypatch.setattr(tune, "with_parameters", lambda fn, **data: fn)
    monkeypatch.setattr(tune, "with_resources", with_resources)
    with pytest.raises(Reserved):
        tuning.run_tune([], {}, {}, argparse.Namespace(max_failures=0), "unused", (1.0, 0.25))
    assert seen == {"cpu": 1.0, "gpu": 0.25}


def test_a_trial_attacks_on_the_gpu_ray_assigned_it() -> None:
    from stadv_sweeps.engine.trial import trial_device

    assert trial_device([], cuda_available=True) == torch.device("cpu")
    assert trial_device([], cuda_available=False) == torch.device("cpu")
    assert trial_device(["3"], cuda_available=True) == torch.device("cuda")
    with pytest.raises(RuntimeError, match="Ray assigned this trial GPU 3, but torch sees no"):
        trial_device(["3"], cuda_available=False)


def test_the_default_precision_keeps_the_trial_keys_of_older_sweeps() -> None:
    from stadv.attack import StAdv
    from stadv_sweeps.engine.spec import attack_options, key_options

    options = attack_options(StAdv())
    # before the precision and batching options were
    older = {k: v for k, v in options.items() if k not in ("precision", "batching")}
    assert options["precision"] == "fp32" and options["batching"] is None
    assert key_options(options) == dict(sorted(older.items()))
    assert list(key_options(options)) == sorted(older)
    assert key_options(attack_options(StAdv(precision="tf32")))["precision"] == "tf32"
    assert key_options(attack_options(StAdv(batching="chunks")))["batching"] == "chunks"
