from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stadv.data import TensorData
from stadv.models import build_model
from stadv.precision import precision_policy
from stadv.store import (
    CheckpointError,
    checkpoint_path,
    load_checkpoint,
    load_pretrained,
    train_and_store,
)
from stadv.train import evaluate, train_model


def test_tiny_training_lowers_the_loss(mnist_train_small: TensorData) -> None:
    torch.manual_seed(0)
    model = build_model("B")
    small = mnist_train_small.slice(0, 1024)
    x, y = small.images[:512], small.labels[:512]
    model.eval()
    with torch.no_grad():
        before = float(torch.nn.functional.cross_entropy(model(x), y))
    report = train_model(model, small, epochs=2, seed=0, progress=False)
    with torch.no_grad():
        after = float(torch.nn.functional.cross_entropy(model.eval()(x), y))
    assert after < 0.7 * before
    assert report.losses[1] < report.losses[0]


def test_trained_tiny_model_beats_chance_by_far(
    tiny_model_b: torch.nn.Module, mnist_test: TensorData
) -> None:
    assert evaluate(tiny_model_b, mnist_test.slice(0, 2000)) > 0.85


def test_checkpoint_round_trip_and_sidecar(
    store_dir: Path, data_root: Path, mnist_test: TensorData, device: torch.device
) -> None:
    model, info = train_and_store(
        "B",
        dataset="mnist",
        store=store_dir,
        data_dir=data_root,
        epochs=1,
        train_limit=1000,
        device=device,
        progress=False,
    )
    path = checkpoint_path("B", "mnist", store=store_dir)
    assert path.is_file()
    side = json.loads(path.with_suffix(".json").read_text())
    for key in (
        "model",
        "dataset",
        "epochs",
        "seed",
        "test_accuracy",
        "train_seconds",
        "versions",
        "sha256",
    ):
        assert key in side
    assert (
        side["model"] == "B"
        and side["epochs"] == 1
        and side["versions"]["torch"] == torch.__version__
    )
    loaded, info2 = load_checkpoint(path, model_name="B")
    assert info2 == info
    x = mnist_test.images[:16]
    assert torch.equal(loaded(x), model.eval().cpu()(x))  # the checkpoint loads on the CPU
    # load_pretrained uses the stored file (no retraining: same weights).
    again = load_pretrained(
        "B", dataset="mnist", store=store_dir, data_dir=data_root, device=device
    )
    assert {p.device.type for p in again.parameters()} == {device.type}
    with precision_policy("fp32"):
        out = again(x.to(device)).cpu()
    tol = 0.0 if device.type == "cpu" else 1e-4  # the same kernels on a CPU: bit for bit
    torch.testing.assert_close(out, loaded(x), rtol=tol, atol=tol)


def test_corrupt_checkpoint_is_a_clear_error_never_retrained(
    store_dir: Path, data_root: Path
) -> None:
    train_and_store(
        "B", store=store_dir, data_dir=data_root, epochs=1, train_limit=256, progress=False
    )
    path = checkpoint_path("B", "mnist", store=store_dir)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    mtime = path.stat().st_mtime_ns
    with pytest.raises(CheckpointError, match="corrupt"):
        load_pretrained("B", store=store_dir, data_dir=data_root, device="cpu")
    assert path.stat().st_mtime_ns == mtime  # not overwritten


def test_mismatched_checkpoint_is_rejected(store_dir: Path, data_root: Path) -> None:
    train_and_store(
        "B", store=store_dir, data_dir=data_root, epochs=1, train_limit=256, progress=False
    )
    path = checkpoint_path("B", "mnist", store=store_dir)
    with pytest.raises(CheckpointError, match="holds model 'B', not 'A'"):
        load_checkpoint(path, model_name="A")
    # Weights of another architecture under B's name: rejected by the strict state-dict load.
    side = json.loads(path.with_suffix(".json").read_text())
    side["model"] = "C"
    path.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(CheckpointError, match="does not fit model C"):
        load_checkpoint(path)


def test_missing_checkpoint_without_training(store_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="stadv train --model A"):
        load_pretrained("A", store=store_dir, train_if_missing=False, device="cpu")


def test_bad_training_arguments(mnist_train_small: TensorData) -> None:
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        train_model(build_model("B"), mnist_train_small, epochs=0)
    with pytest.raises(ValueError, match="variant"):
        checkpoint_path("A", "mnist", variant="../evil")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train_limit": 0}, "train_limit must be an integer >= 1, got 0"),
        ({"train_limit": -5}, "train_limit must be an integer >= 1, got -5"),
        ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
        ({"epochs": 2, "lr_decay_epochs": 2}, r"lr_decay_epochs must be in \[0, epochs=2\), got 2"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ],
)
def test_train_and_store_refuses_bad_arguments_before_any_work(
    tmp_path: Path, data_root: Path, kwargs: dict[str, int], match: str
) -> None:
    store = tmp_path / "store"
    with pytest.raises(ValueError, match=match):
        train_and_store("B", store=store, data_dir=data_root, device="cpu", **kwargs)  # type: ignore[arg-type]
    assert not store.exists()


def test_train_model_refuses_an_empty_data_set(mnist_train_small: TensorData) -> None:
    model = build_model("B")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="cannot train on an empty data set"):
        train_model(model, mnist_train_small.slice(0, 0), epochs=1, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))
