"""``stadv attack``: its JSON and files, blocks saved as they finish, ``--resume`` after an
interruption, and the results-on-disk helpers behind them (:mod:`stadv.result_io`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from stadv.attack import StAdv
from stadv.result_io import concat_results, load_result, save_result
from stadv_cli.main import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def common(tmp_path_factory: pytest.TempPathFactory, data_source: Path) -> list[str]:
    """CLI flags for real MNIST and a store holding a quick-trained Model B."""
    root = tmp_path_factory.mktemp("cli-attack")
    flags = [
        "--no-download",
        "--data-dir",
        str(root / "data"),
        "--data-source",
        str(data_source),
        "--store",
        str(root / "store"),
    ]
    args = ["train", "--model", "B", "--epochs", "1", "--train-limit", "2000", "--quiet"]
    assert main([*args, *flags]) == 0
    return flags


def attack_args(out: Path, *extra: str) -> list[str]:
    return [
        "attack",
        "--model",
        "B",
        "--no-train",
        "--start",
        "1",
        "--n-images",
        "3",
        "--targets",
        "all",
        "--max-iterations",
        "20",
        "--block-images",
        "2",
        "--out",
        str(out),
        "--json",
        *extra,
    ]


def last_json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_attack_prints_json_writes_files_and_resumes(
    tmp_path: Path, common: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main([*attack_args(out), *common]) == 0
    captured = capsys.readouterr()
    row = json.loads(captured.out.strip().splitlines()[-1])
    assert row["n_attacks"] == 27 and row["blocks"] == {"blocks": 2, "loaded": 0}
    for key in ("targeted_success_rate", "mean_flow_loss", "seconds", "attacks_per_second"):
        assert isinstance(row[key], float), key
    assert "block 1/2, images 1-2: 18 attacks" in captured.err
    assert "block 2/2, images 3-3: 9 attacks" in captured.err
    table = pd.read_csv(out / "attacks.csv")
    assert len(table) == 27 and sorted(set(table["source_index"])) == [0, 1, 2]
    assert row["targeted_success_rate"] == pytest.approx(table["success"].mean())
    assert (table["target"] != table["label"]).all()
    for name in ("figure2.png", "target_heatmap.png", "flow_quiver.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE, name
    assert json.loads((out / "summary.json").read_text())["n_attacks"] == 27
    blocks = sorted(p.name for p in (out / "blocks").iterdir())
    assert blocks == ["images_00001-00002.pt", "images_00003-00003.pt"]

    # Interrupted after the first block: --resume loads it and attacks only the second.
    first_block = (out / "blocks" / blocks[0]).read_bytes()
    (out / "blocks" / blocks[1]).unlink()
    assert main([*attack_args(out, "--resume"), *common]) == 0
    captured = capsys.readouterr()
    resumed = json.loads(captured.out.strip().splitlines()[-1])
    assert resumed["blocks"] == {"blocks": 2, "loaded": 1}
    assert "images 1-2: 18 attacks, success" in captured.err and "loaded" in captured.err
    assert (out / "blocks" / blocks[0]).read_bytes() == first_block
    again = pd.read_csv(out / "attacks.csv")
    pd.testing.assert_frame_equal(again, table)
    assert resumed["targeted_success_rate"] == row["targeted_success_rate"]


def test_saved_blocks_are_never_overwritten(
    tmp_path: Path, common: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main([*attack_args(out, "--max-iterations", "0"), *common]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in (out / "blocks").iterdir()}

    assert main([*attack_args(out, "--max-iterations", "0"), *common]) == 2
    assert "pass --resume to continue it" in capsys.readouterr().err
    assert (
        main([*attack_args(out, "--max-iterations", "0", "--resume", "--tau", "0.1"), *common]) == 2
    )
    err = capsys.readouterr().err
    assert "was saved by another run (tau: saved 0.05, now 0.1)" in err
    assert (
        main(
            [*attack_args(out, "--max-iterations", "0", "--resume", "--block-images", "1"), *common]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        "images_00001-00002.pt (images 1-2) does not fit this run's blocks of --block-images 1"
        in err
    )
    assert {p.name: p.read_bytes() for p in (out / "blocks").iterdir()} == before


def test_bad_block_arguments_are_named(
    tmp_path: Path, common: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*attack_args(tmp_path / "a", "--block-images", "0"), *common]) == 2
    assert "--block-images must be >= 1, got 0" in capsys.readouterr().err
    args = [
        a
        for a in attack_args(tmp_path / "b", "--resume")
        if a not in ("--out", str(tmp_path / "b"))
    ]
    assert main([*args, *common]) == 2
    assert "--resume needs --out" in capsys.readouterr().err


def test_random_targets_do_not_depend_on_the_block_size(
    tmp_path: Path, common: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    targets = []
    for size in ("1", "4"):
        out = tmp_path / f"b{size}"
        args = attack_args(out, "--targets", "random", "--max-iterations", "0")
        args[args.index("--block-images") + 1] = size
        args[args.index("--n-images") + 1] = "4"
        assert main([*args, *common]) == 0
        capsys.readouterr()
        targets.append(pd.read_csv(out / "attacks.csv")["target"].tolist())
    assert targets[0] == targets[1] and len(targets[0]) == 4


def test_results_round_trip_and_concatenate(
    tiny_model_b: torch.nn.Module, mnist_test, tmp_path: Path
) -> None:
    data = mnist_test.slice(0, 3)
    attack = StAdv(max_iterations=5)
    whole = attack(tiny_model_b, data.images, data.labels, targets="all")
    parts = [
        attack(tiny_model_b, data.images[:2], data.labels[:2], targets="all"),
        attack(tiny_model_b, data.images[2:], data.labels[2:], targets="all"),
    ]
    path = save_result(parts[1], tmp_path / "p.pt", key={"block": 1})
    loaded, key = load_result(path)
    assert key == {"block": 1} and loaded.stop_reason == parts[1].stop_reason
    assert torch.equal(loaded.flows, parts[1].flows) and torch.equal(
        loaded.success, parts[1].success
    )
    joined = concat_results([parts[0], loaded], [0, 2])
    assert len(joined) == len(whole) == 27
    assert torch.equal(joined.source_index, whole.source_index)
    assert torch.equal(joined.targets, whole.targets) and torch.equal(joined.labels, whole.labels)
    assert joined.seconds == pytest.approx(parts[0].seconds + parts[1].seconds)
    assert joined.extra["restarted"] == [
        a + b for a, b in zip(parts[0].extra["restarted"], parts[1].extra["restarted"], strict=True)
    ]
    with pytest.raises(ValueError, match="one offset per part"):
        concat_results(parts, [0])
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a saved attack result"):
        load_result(tmp_path / "other.pt")


def test_block_digest_tells_other_images_and_weights_apart() -> None:
    from stadv_cli.attack import _digest

    x = torch.rand(2, 1, 4, 4)
    y = torch.tensor([1, 2])
    same = _digest({"x": x.clone(), "y": y.clone()})
    assert _digest({"x": x, "y": y}) == same
    moved = x.clone()
    moved[0, 0, 0, 0] += 1e-6  # one pixel, one float step away
    assert _digest({"x": moved, "y": y}) != same
    assert _digest({"x": x, "y": torch.tensor([1, 3])}) != same


# -- the attack registry and option schema on the command line; bad input --------------------


def strict_json(text: str) -> dict:
    """``json.loads`` that refuses NaN and infinities (invalid JSON that Python writes)."""

    def refuse(token: str) -> None:
        raise ValueError(f"invalid JSON constant {token}")

    return json.loads(text, parse_constant=refuse)


def test_bad_attack_option_exits_2_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--no-download", "--data-dir", str(tmp_path / "data"), "--store", str(tmp_path / "s")]
    assert main(["attack", "--check", "banana", *flags]) == 2
    err = capsys.readouterr().err
    assert "check='banana' is not a valid bool: expected true or false" in err
    assert main(["attack", "--solver", "newton", *flags]) == 2
    assert "unknown solver 'newton'" in capsys.readouterr().err
    # a flag of another attack: named, with the attacks that have it
    assert main(["attack", "--attack", "fgsm", "--tau", "0.1", *flags]) == 2
    assert "--tau is not an option of --attack fgsm (it is one of stadv)" in capsys.readouterr().err
    # a value the chosen attack refuses at construction
    assert main(["attack", "--attack", "pgd", "--steps", "0", *flags]) == 2
    assert "steps must be an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["attack", "--lr", "0.5", *flags]) == 2  # ignored by the default solver
    assert "lr=0.5 is ignored by solver='lbfgs'" in capsys.readouterr().err
    assert not (tmp_path / "data").exists() and not (tmp_path / "s").exists()
    with pytest.raises(SystemExit) as info:  # argparse: an unregistered attack
        main(["attack", "--attack", "nonesuch", *flags])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:  # the old spelling of untargeted is gone
        main(["attack", "--targets", "none", *flags])
    assert info.value.code == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--start", "-1"], "--start must be >= 0, got -1"),
        (["--n-images", "0"], "--n-images must be >= 1, got 0"),
        (["--block-images", "-2"], "--block-images must be >= 1, got -2"),
    ],
)
def test_bad_attack_arguments_exit_2_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    data, store = tmp_path / "data", tmp_path / "s"
    argv = ["attack", "--no-download", "--data-dir", str(data), "--store", str(store), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not data.exists() and not store.exists()


def test_untargeted_json_is_valid_json(
    tmp_path: Path, common: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = attack_args(out, "--targets", "untargeted", "--max-iterations", "0")
    assert main([*args, *common]) == 0
    row = strict_json(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["targets"] == "untargeted" and row["n_attacks"] == 3
    assert row["targeted_success_rate"] is None  # NaN: no targets in an untargeted run
    assert isinstance(row["untargeted_success_rate"], float)
    assert strict_json((out / "summary.json").read_text())["targeted_success_rate"] is None
    assert (pd.read_csv(out / "attacks.csv")["target"] == -1).all()


def test_pixel_attack_from_the_registry_has_no_flow_outputs(
    tmp_path: Path, common: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fgsm"
    args = [
        "attack",
        "--attack",
        "fgsm",
        "--epsilon",
        "0.2",
        "--model",
        "B",
        "--no-train",
        "--start",
        "1",
        "--n-images",
        "3",
        "--block-images",
        "2",
        "--targets",
        "random",
        "--out",
        str(out),
        "--json",
    ]
    assert main([*args, *common]) == 0
    row = strict_json(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["attack"] == "fgsm" and row["params"]["epsilon"] == 0.2 and row["n_attacks"] == 3
    assert "mean_flow_loss" not in row and "stop_reasons" not in row
    assert not (out / "flow_quiver.png").exists() and (out / "figure2.png").is_file()
    table = pd.read_csv(out / "attacks.csv")
    assert len(table) == 3 and "flow_loss" not in table.columns
    # the blocks' key names the attack: stAdv cannot resume FGSM's blocks
    assert main([*attack_args(out, "--resume", "--targets", "random"), *common]) == 2
    err = capsys.readouterr().err
    assert "attack: saved 'fgsm', now 'stadv'" in err


def test_garbage_block_on_resume_exits_2_naming_it(
    tmp_path: Path, common: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main([*attack_args(out, "--max-iterations", "0"), *common]) == 0
    capsys.readouterr()
    blocks = out / "blocks"
    garbage = blocks / "images_00003-00003.pt"
    garbage.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main([*attack_args(out, "--max-iterations", "0", "--resume"), *common]) == 2
    err = capsys.readouterr().err
    assert f"{garbage} is not a readable saved attack result" in err
    assert "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_load_result_names_an_unreadable_file(tmp_path: Path) -> None:
    for name, payload in (("random.pt", bytes(range(256)) * 8), ("empty.pt", b"")):
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(ValueError, match=f"{path} is not a readable saved attack result"):
            load_result(path)
    path = tmp_path / "partial.pt"
    torch.save({"format": "stadv.attack_result/1", "key": {}}, path)
    with pytest.raises(ValueError, match=f"{path} holds an incomplete saved attack result"):
        load_result(path)


def test_attack_writes_a_results_record(
    tmp_path: Path, common: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from stadv.models import PAPER_TABLE1_SUCCESS
    from stadv.records import Record

    record_path = tmp_path / "records" / "B.json"
    args = attack_args(tmp_path / "run", "--record", str(record_path))
    assert main([*args, *common]) == 0
    row = last_json(capsys)
    assert row["record"] == str(record_path)
    record = Record.from_json(record_path.read_text())
    assert record.n == row["n_attacks"] == 27
    assert record.successes == round(row["targeted_success_rate"] * 27)
    assert record.ci_low <= record.rate <= record.ci_high
    assert record.paper == PAPER_TABLE1_SUCCESS["B"]  # stAdv, MNIST, every target: Table 1
    assert record.command.startswith("stadv ") and "--record" in record.command
    assert record.machine.torch


def test_views_of_a_finished_run(common: list[str], tmp_path: Path) -> None:
    """``stadv views DIR`` renders the three views of a finished ``stadv attack --out DIR``
    (blocks joined) as real PNGs, and refuses a folder that is not such a run."""
    out = tmp_path / "run"
    assert main([*attack_args(out), *common]) == 0
    assert main(["views", str(out), "--max-points", "20", "--examples", "2", *common]) == 0
    for name in ("representation_space", "activation_differences", "grad_cam"):
        png = out / "views" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 10_000
    assert main(["views", str(tmp_path / "nothing"), *common]) == 2
    assert main(["views", str(out), "--max-points", "0", *common]) == 2


def test_views_refuse_blocks_of_other_weights(common: list[str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main([*attack_args(out), *common]) == 0
    block = sorted((out / "blocks").glob("images_*.pt"))[0]
    result, key = load_result(block)
    save_result(result, block, key={**key, "model_digest": "0" * 16})
    assert main(["views", str(out), *common]) == 2


def test_deepfool_rho_over_blocks(common: list[str], tmp_path: Path) -> None:
    """DeepFool's per-attack rho (||r||_2 / ||x||_2) survives joining the blocks and reaches the
    summary: the run in blocks of 2 equals the run in one block."""
    base = ["attack", "--attack", "deepfool", "--model", "B", "--no-train", "--n-images", "5"]
    base += ["--targets", "untargeted", "--json"]
    runs = []
    for size in ("2", "5"):
        out = tmp_path / f"b{size}"
        assert main([*base, "--block-images", size, "--out", str(out), *common]) == 0
        runs.append(json.loads((out / "summary.json").read_text())["summary"])
    assert runs[0]["mean_rho"] == pytest.approx(runs[1]["mean_rho"], rel=1e-5)
    assert 0 < runs[0]["mean_rho"] < 1 and runs[0]["max_rho"] >= runs[0]["mean_rho"]
