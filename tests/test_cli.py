from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stadv_cli.main import main


def test_train_then_eval_json(
    tmp_path: Path, data_source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = [
        "--no-download",
        "--data-dir",
        str(tmp_path / "data"),
        "--data-source",
        str(data_source),
        "--store",
        str(tmp_path / "s"),
    ]
    assert (
        main(
            ["train", "--model", "B", "--epochs", "1", "--train-limit", "2000", "--quiet", *common]
        )
        == 0
    )
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["model"] == "B" and row["paper_accuracy"] == 0.9894 and 0.5 < row["accuracy"] <= 1
    assert main(["eval", "--model", "B", "--json", "--no-train", *common]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out == {"model": "B", "dataset": "mnist", "accuracy": row["accuracy"]}


def test_missing_data_is_one_message_without_traceback(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "STADV_DATA_DIR": str(tmp_path / "none"),
        "STADV_STORE": str(tmp_path / "s"),
    }
    env.pop("STADV_DATA_SOURCE", None)
    env["STADV_DATA_SOURCE"] = str(tmp_path / "no-source")
    code = "from stadv_cli.main import main; import sys; sys.exit(main(['eval', '--model', 'A', '--no-download']))"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "MNIST/raw" in proc.stderr and "STADV_DATA_SOURCE" in proc.stderr
    assert "download is off" in proc.stderr


def test_unknown_model_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--model", "Z"])
    assert info.value.code == 2
    assert "invalid choice: 'Z'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--train-limit", "0"], "--train-limit must be >= 1, got 0"),
        (["--train-limit", "-5"], "--train-limit must be >= 1, got -5"),
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--lr-decay-epochs", "-1"], "--lr-decay-epochs must be >= 0, got -1"),
        (["--seed", "-1"], "--seed must be >= 0, got -1"),
        (
            ["--epochs", "2", "--lr-decay-epochs", "2"],
            "--lr-decay-epochs must be < --epochs=2, got 2",
        ),
        (["--adv-epsilon", "nan"], "--adv-epsilon must be a finite number >= 0, got nan"),
    ],
)
def test_bad_train_arguments_exit_2_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    store, data = tmp_path / "store", tmp_path / "data"
    argv = ["train", "--model", "B", "--quiet", "--no-download", "--data-dir", str(data)]
    assert main([*argv, "--store", str(store), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not store.exists() and not data.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--train-limit", "0"], "--train-limit must be >= 1, got 0"),
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--seed", "-3"], "--seed must be >= 0, got -3"),
    ],
)
def test_bad_denoiser_arguments_exit_2_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    store, data = tmp_path / "store", tmp_path / "data"
    argv = ["train-denoiser", "--quiet", "--no-download", "--data-dir", str(data)]
    assert main([*argv, "--store", str(store), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not store.exists() and not data.exists()


def test_the_cli_is_an_application_package_above_the_library() -> None:
    import stadv

    package = Path(stadv.__file__).parent
    for old in ("cli.py", "cli_attack.py", "cli_defense.py"):
        assert not (package / old).exists(), old
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'stadv = "stadv_cli.main:main"' in pyproject
    proc = subprocess.run(
        [sys.executable, "-m", "stadv_cli", "attack", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for flag in ("--attack", "--tau", "--epsilon", "--binary-search-steps", "untargeted"):
        assert flag in proc.stdout, flag


def test_library_imports_have_no_cycles_and_stadv_never_imports_the_layers_above() -> None:
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("stadv", "defenses", "stadv_cli")
    modules = set(graph.modules)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) & modules for m in modules}
    above = {"stadv": ("defenses", "stadv_cli"), "defenses": ("stadv_cli",)}
    for m, targets in edges.items():
        for layer, forbidden in above.items():
            if m == layer or m.startswith(layer + "."):
                bad = [t for t in targets if t.split(".")[0] in forbidden]
                assert not bad, (m, bad)
    # a cycle is a module that reaches itself
    for start in modules:
        seen: set[str] = set()
        todo = list(edges[start])
        while todo:
            m = todo.pop()
            assert m != start, f"import cycle through {start}"
            if m not in seen:
                seen.add(m)
                todo.extend(edges[m])
