"""Records (``stadv.records``, ``results/``) and the pages generated from them (``docs/render.py``).

The committed README.md and docs/*.md must be what ``python docs/render.py`` makes of the
committed records: a record changed without regenerating the pages fails here. The record's
JSON round trip, its Wilson interval, the atomic writer and the benchmarks' ``--record``
output are checked too.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stadv.metrics import wilson_interval
from stadv.models import PAPER_ACCURACY, PAPER_TABLE1_SUCCESS
from stadv.records import (
    Machine,
    Record,
    git_commit,
    load_records,
    machine_info,
    make_record,
    record_from_summary,
    write_record,
)

REPO = Path(__file__).resolve().parents[1]
RENDER = REPO / "docs" / "render.py"
RESULTS = REPO / "results"
MACHINE = Machine(cpu="test CPU", cores=2, threads=1, gpu=None, torch="2.0")


def load_render(monkeypatch: pytest.MonkeyPatch) -> Any:
    spec = importlib.util.spec_from_file_location("render", RENDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "render", module)
    spec.loader.exec_module(module)
    return module


def record(**kw: Any) -> Record:
    base: dict[str, Any] = dict(
        what="test", command="stadv attack", n=900, successes=899, commit="abc1234",
        date="2026-12-02", machine=MACHINE,
    )  # fmt: skip
    return make_record(**{**base, **kw})


# ------------------------------------------------------------------------- the pages


def test_committed_pages_are_generated_from_the_records() -> None:
    proc = subprocess.run(
        [sys.executable, str(RENDER), "--check"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, (
        "README.md / docs/*.md differ from what results/ gives; run `python docs/render.py`:\n"
        + proc.stdout[-4000:]
        + proc.stderr[-2000:]
    )


def test_check_fails_with_a_diff_when_a_record_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    render = load_render(monkeypatch)
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results)
    path = results / "table1" / "B-1000.json"
    data = json.loads(path.read_text())
    changed = make_record(
        **{k: data[k] for k in ("what", "command", "commit", "date", "paper")},
        n=9000,
        successes=8990,
        machine=MACHINE,
    )
    write_record(changed, path)
    assert render.render(REPO, results, check=True) == 1
    out = capsys.readouterr().out
    assert "README.md (committed)" in out and "99.89 %" in out
    assert render.render(REPO, RESULTS, check=True) == 0  # the committed records still agree


def test_every_marker_names_a_table_and_every_table_has_its_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    render = load_render(monkeypatch)
    recs = load_records(RESULTS)
    for name, make in render.TABLES.items():
        assert make(recs).startswith("| "), name
    with pytest.raises(ValueError, match="unknown table 'nope'"):
        render.render_page("<!-- results:nope -->\n<!-- /results:nope -->", recs)


def test_runs_that_differ_in_seed_are_listed_and_pooled(monkeypatch: pytest.MonkeyPatch) -> None:
    render = load_render(monkeypatch)
    cmd = "stadv attack --attack few-pixel --pixels 5 --strategy best1 --model C --seed "
    recs = {
        f"new_attacks/seeds/s{seed}": record(
            command=cmd + str(seed), n=20, successes=hits, tags={"model": "C"}
        )
        for seed, hits in ((0, 5), (1, 7))
    }
    rows = render.few_pixel_seeds(recs).splitlines()[2:]
    assert [r.split(" | ")[3] for r in rows] == ["0", "1", "pooled"]
    low, high = wilson_interval(12, 40)
    assert f"| 40 | 30.00 % [{100 * low:.2f}, {100 * high:.2f}] |" in rows[2]
    assert "| best1 |" in rows[0] and "| 5 |" in rows[0]


# ------------------------------------------------------------------------- the records


def test_committed_records_are_consistent() -> None:
    recs = load_records(RESULTS)
    assert len(recs) > 100
    for key, rec in recs.items():
        assert rec.command and rec.commit and rec.date and rec.what, key
        if rec.n is not None and rec.successes is not None:
            assert rec.rate == rec.successes / rec.n, key
            assert (rec.ci_low, rec.ci_high) == wilson_interval(rec.successes, rec.n), key
        else:
            assert rec.ci_low is None and rec.ci_high is None, key
            assert "not recorded" in rec.notes or rec.rate is None, key
    for m in ("A", "B", "C"):  # the paper's numbers come from the library, once
        assert recs[f"table1/{m}-100"].paper == PAPER_TABLE1_SUCCESS[m]
        assert recs[f"table1/{m}-1000"].paper == PAPER_TABLE1_SUCCESS[m]
        assert recs[f"training/mnist-{m}"].paper == PAPER_ACCURACY[m]


def test_make_record_computes_the_wilson_interval() -> None:
    rec = record()
    assert rec.rate == 899 / 900
    assert (rec.ci_low, rec.ci_high) == wilson_interval(899, 900)
    assert rec.ci_low is not None and rec.ci_high is not None
    assert (round(100 * rec.ci_low, 2), round(100 * rec.ci_high, 2)) == (99.37, 99.98)
    unknown = record(n=None, successes=None, rate=0.9543)
    assert (unknown.rate, unknown.ci_low, unknown.ci_high) == (0.9543, None, None)
    with pytest.raises(ValueError, match="disagrees"):
        record(rate=0.5)
    with pytest.raises(ValueError, match="0 <= successes <= n"):
        record(successes=901)


def test_wilson_interval_ends_exactly_at_an_observed_zero_or_n() -> None:
    # 0 of 100 once stored ci_low as 3.5e-18, a rounding residue of centre - half.
    low, high = wilson_interval(0, 100)
    assert low == 0.0 and round(100 * high, 2) == 3.70
    low, high = wilson_interval(100, 100)
    assert high == 1.0 and round(100 * low, 2) == 96.30
    low, high = wilson_interval(1, 100)
    assert 0.0 < low < 0.01 < high < 1.0


def test_record_json_round_trip(tmp_path: Path) -> None:
    rec = record(
        paper=0.9998,
        seconds=511.0,
        stats={"mean_flow_loss": 10.6, "mean_iterations": 211.0},
        tags={"model": "B"},
        notes="n",
        source="s",
    )
    assert Record.from_json(rec.to_json()) == rec
    path = write_record(rec, tmp_path / "sub" / "B.json")
    assert [p.name for p in path.parent.iterdir()] == ["B.json"]  # no temporary file left
    assert load_records(tmp_path) == {"sub/B": rec}
    nan = record(stats={"x": math.nan})
    assert json.loads(nan.to_json())["stats"]["x"] is None
    assert math.isnan(Record.from_json(nan.to_json()).stats["x"])
    with pytest.raises(ValueError, match="unknown"):
        Record.from_json(json.dumps({**json.loads(rec.to_json()), "extra": 1}))
    (tmp_path / "sub" / "bad.json").write_text('{"schema": 1}')
    with pytest.raises(ValueError, match="bad.json"):
        load_records(tmp_path)


def test_record_from_summary() -> None:
    summary = {
        "attacks": 18.0,
        "seconds": 2.5,
        "attacks_per_second": 7.2,
        "targeted_success_rate": 17 / 18,
        "targeted_success_ci_low": 0.7,
        "targeted_success_ci_high": 0.99,
        "untargeted_success_rate": 1.0,
        "mean_flow_loss": 3.0,
        "median_l2": math.nan,
    }
    rec = record_from_summary(summary, what="w", command="c", commit="x", date="d", machine=MACHINE)
    assert (rec.n, rec.successes, rec.seconds) == (18, 17, 2.5)
    assert (rec.ci_low, rec.ci_high) == wilson_interval(17, 18)
    assert rec.stats == {
        "attacks_per_second": 7.2,
        "untargeted_success_rate": 1.0,
        "mean_flow_loss": 3.0,
    }
    untargeted = {k: v for k, v in summary.items() if not k.startswith("targeted")}
    rec_u = record_from_summary(
        untargeted, what="w", command="c", commit="x", date="d", machine=MACHINE
    )
    assert (rec_u.n, rec_u.successes) == (18, 18)


def test_a_live_record_names_this_machine_and_commit() -> None:
    import torch

    machine = machine_info("cpu")
    assert machine.gpu is None and machine.torch == torch.__version__
    assert machine.threads == torch.get_num_threads() and machine.cpu
    rec = make_record(what="w", command="c", n=2, successes=1)
    assert rec.commit == git_commit() != "unknown"
    assert rec.date.endswith("+00:00") and rec.machine.cpu == machine.cpu


# ------------------------------------------------------------------------- benchmarks write records


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    from stadv.store import train_and_store

    store = tmp_path_factory.mktemp("records-store")
    train_and_store("B", store=store, data_dir=data_root, epochs=1, train_limit=500, progress=False)
    return store


@pytest.mark.parametrize(
    ("script", "extra", "key"),
    [
        ("table1.py", ["--models", "B", "--readings", "eq5", "--n-images", "1"], "B-eq5-0-0"),
        ("attack_throughput.py", ["--model", "B", "--methods", "lbfgs", "--n-images", "2",
                                  "--matmul-size", "64", "--matmul-repeats", "1"], "B-lbfgs"),
    ],
)  # fmt: skip
def test_benchmarks_write_records(
    script: str,
    extra: list[str],
    key: str,
    tiny_store: Path,
    data_root: Path,
    data_source: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "records"
    cmd = [
        sys.executable, str(REPO / "benchmarks" / script), *extra,
        "--store", str(tiny_store), "--data-dir", str(data_root), "--max-iterations", "5",
        "--threads", "1", "--device", "cpu", "--record", str(out),
    ]  # fmt: skip
    env = {**os.environ, "STADV_DATA_SOURCE": str(data_source)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = load_records(out)
    assert list(recs) == [key]
    rec = recs[key]
    assert rec.n in (9, 2) and rec.successes is not None
    assert (rec.ci_low, rec.ci_high) == wilson_interval(rec.successes, rec.n)
    assert rec.command.startswith(f"python benchmarks/{script} ") and "--record" in rec.command
    assert rec.machine.threads == 1 and rec.machine.gpu is None and rec.machine.torch
    assert rec.seconds is not None and rec.seconds > 0
    if script == "table1.py":
        assert rec.paper == PAPER_TABLE1_SUCCESS["B"] and "successes_judged_alone" in rec.stats
    else:
        assert rec.stats["attacks_per_second"] > 0
