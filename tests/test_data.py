from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest
import torch

from stadv.data import (
    IDX_FILES,
    DataNotFoundError,
    check_dataset_name,
    ensure_data,
    is_installed,
    load_dataset,
    load_tensors,
    raw_folder,
)

# MD5 of the uncompressed originals (../shared/data/README.md).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def test_offline_install_puts_original_bytes_in_torchvision_layout(
    tmp_path: Path, data_source: Path
) -> None:
    root = tmp_path / "root"
    assert not is_installed("mnist", root)
    ensure_data("mnist", data_dir=root, source_dir=data_source, download=False)
    raw = raw_folder("mnist", root)
    assert raw == root / "MNIST" / "raw"
    for name, md5 in MNIST_MD5.items():
        assert hashlib.md5((raw / name).read_bytes()).hexdigest() == md5
    assert not list(raw.glob(".*partial"))


def test_install_accepts_a_folder_of_the_four_files(tmp_path: Path, data_source: Path) -> None:
    ensure_data("mnist", data_dir=tmp_path / "r", source_dir=data_source / "mnist", download=False)
    assert is_installed("mnist", tmp_path / "r")


def test_test_split_shapes_ranges_and_labels(mnist_test) -> None:  # type: ignore[no-untyped-def]
    assert mnist_test.images.shape == (10000, 1, 28, 28)
    assert mnist_test.images.dtype == torch.float32
    assert float(mnist_test.images.min()) == 0.0 and float(mnist_test.images.max()) == 1.0
    assert mnist_test.labels.dtype == torch.int64
    counts = torch.bincount(mnist_test.labels, minlength=10)
    # The official test-set class counts.
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert mnist_test.labels[:5].tolist() == [7, 2, 1, 0, 4]


def test_train_split_is_the_60k_set(data_root: Path) -> None:
    train = load_tensors("mnist", split="train", data_dir=data_root, download=False)
    assert len(train) == 60000 and train.labels[:3].tolist() == [5, 0, 4]


def test_torchvision_dataset_items(data_root: Path) -> None:
    ds = load_dataset("mnist", split="test", data_dir=data_root, download=False)
    img, label = ds[0]
    assert (
        img.shape == (1, 28, 28) and 0 <= float(img.min()) <= float(img.max()) <= 1 and label == 7
    )


def test_fashion_mnist_installs_and_loads(tmp_path: Path, data_source: Path) -> None:
    test = load_tensors(
        "fashion-mnist", split="test", data_dir=tmp_path, source_dir=data_source, download=False
    )
    assert test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [1000] * 10


def test_missing_data_gives_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        ensure_data(
            "mnist", data_dir=tmp_path / "empty", source_dir=tmp_path / "nothing", download=False
        )
    msg = str(info.value)
    assert str(tmp_path / "empty" / "MNIST" / "raw") in msg
    assert "STADV_DATA_SOURCE" in msg and IDX_FILES[0] in msg


def test_env_variables_choose_root_and_source(
    tmp_path: Path, data_source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STADV_DATA_DIR", str(tmp_path / "envroot"))
    monkeypatch.setenv("STADV_DATA_SOURCE", str(data_source))
    ensure_data("mnist", download=False)
    assert is_installed("mnist", tmp_path / "envroot")


def test_truncated_source_file_is_not_installed_as_complete(
    tmp_path: Path, data_source: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for f in IDX_FILES:
        (src / f"{f}.gz").write_bytes((data_source / "mnist" / f"{f}.gz").read_bytes())
    (src / f"{IDX_FILES[0]}.gz").write_bytes(gzip.compress(b"x")[:10])  # corrupt gzip
    with pytest.raises(EOFError):
        ensure_data("mnist", data_dir=tmp_path / "root", source_dir=src, download=False)
    assert not (raw_folder("mnist", tmp_path / "root") / IDX_FILES[0]).exists()


def test_unknown_dataset_name() -> None:
    with pytest.raises(ValueError, match="cifar.*known datasets: mnist, fashion-mnist"):
        check_dataset_name("cifar")
    assert check_dataset_name("Fashion_MNIST") == "fashion-mnist"
