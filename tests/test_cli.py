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
