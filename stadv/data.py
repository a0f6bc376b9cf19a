"""MNIST and Fashion-MNIST as torchvision datasets, images in [0, 1], shape (N, 1, 28, 28).

Where the files come from, in order:

1. the data root (``data_dir`` argument, else ``$STADV_DATA_DIR``, else ``./data``), in
   torchvision's layout (``<root>/MNIST/raw/train-images-idx3-ubyte`` ...);
2. a *source* folder of the four standard gzipped IDX files (``source_dir`` argument, else
   ``$STADV_DATA_SOURCE``): they are unpacked into the root's torchvision layout once;
3. torchvision's own download, when ``download=True``.

If none of these works, :class:`DataNotFoundError` says where the files are expected and how
to provide them.
"""

from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args

import torch
from torchvision import datasets

DatasetName = Literal["mnist", "fashion-mnist"]
Split = Literal["train", "test"]
DATASETS: tuple[str, ...] = get_args(DatasetName)

#: The four IDX files torchvision expects (uncompressed) under ``<root>/<Class>/raw/``.
IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

_TORCHVISION_CLASS: dict[str, type[datasets.MNIST]] = {
    "mnist": datasets.MNIST,
    "fashion-mnist": datasets.FashionMNIST,
}

#: Sub-folder names accepted inside a source folder that holds several data sets.
_SOURCE_SUBDIRS: dict[str, tuple[str, ...]] = {
    "mnist": ("mnist", "MNIST"),
    "fashion-mnist": ("fashion-mnist", "fashion_mnist", "FashionMNIST"),
}

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(str(i) for i in range(10)),
    "fashion-mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
}


class DataNotFoundError(FileNotFoundError):
    """The data set is not on disk and could not be installed or downloaded."""


@dataclass(frozen=True)
class TensorData:
    """A whole split as tensors: ``images`` float32 (N, 1, 28, 28) in [0, 1], ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def slice(self, start: int, stop: int) -> TensorData:
        return TensorData(self.images[start:stop], self.labels[start:stop])


def check_dataset_name(name: str) -> DatasetName:
    """Normalise a data-set name; a bad one raises ``ValueError`` naming the known ones."""
    key = name.lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return cast(DatasetName, key)


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data root: the argument, else ``$STADV_DATA_DIR``, else ``./data``."""
    if data_dir is not None:
        return Path(data_dir)
    return Path(os.environ.get("STADV_DATA_DIR") or "data")


def resolve_source_dir(source_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder of gzipped IDX files: the argument, else ``$STADV_DATA_SOURCE``, else None."""
    if source_dir is not None:
        return Path(source_dir)
    env = os.environ.get("STADV_DATA_SOURCE")
    return Path(env) if env else None


def raw_folder(name: DatasetName, root: Path) -> Path:
    """Where torchvision looks for the uncompressed IDX files."""
    return root / _TORCHVISION_CLASS[name].__name__ / "raw"


def is_installed(name: DatasetName, root: Path) -> bool:
    raw = raw_folder(name, root)
    return all((raw / f).is_file() for f in IDX_FILES)


def _find_source_files(name: DatasetName, source: Path) -> Path | None:
    """The folder inside ``source`` that holds the four gzipped (or plain) IDX files."""
    candidates = [source, *(source / sub for sub in _SOURCE_SUBDIRS[name])]
    for folder in candidates:
        if all((folder / f"{f}.gz").is_file() or (folder / f).is_file() for f in IDX_FILES):
            return folder
    return None


def install_from_source(name: DatasetName, source: Path, root: Path) -> Path:
    """Unpack the four IDX files from ``source`` into torchvision's layout under ``root``.

    Each file is written to a temporary name and renamed, so an interrupted install never
    leaves a truncated file that looks complete. Returns the raw folder.
    """
    folder = _find_source_files(name, source)
    if folder is None:
        raise DataNotFoundError(
            f"{source} does not hold the four {name} IDX files "
            f"({', '.join(f + '.gz' for f in IDX_FILES)}), directly or in a sub-folder named "
            f"{' or '.join(_SOURCE_SUBDIRS[name])}"
        )
    raw = raw_folder(name, root)
    raw.mkdir(parents=True, exist_ok=True)
    for f in IDX_FILES:
        target = raw / f
        if target.is_file():
            continue
        tmp = raw / f".{f}.partial"
        gz = folder / f"{f}.gz"
        if gz.is_file():
            with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            shutil.copyfile(folder / f, tmp)
        tmp.replace(target)
    return raw


def _missing_message(name: DatasetName, root: Path, source: Path | None, reason: str) -> str:
    raw = raw_folder(name, root)
    lines = [
        f"The {name} data set is not available: {reason}.",
        f"Expected the uncompressed IDX files in {raw}/ ({', '.join(IDX_FILES)}).",
        "Provide them in one of these ways:",
        f"  - point STADV_DATA_SOURCE (or --data-source) at a folder holding the four gzipped "
        f"files ({IDX_FILES[0]}.gz, ...); they are unpacked into {raw}/",
        f"  - copy the files there yourself, or choose another root with STADV_DATA_DIR / --data-dir "
        f"(now {root})",
        "  - allow the download (needs internet access)",
    ]
    if source is not None:
        lines.insert(1, f"The source folder {source} did not have them either.")
    return "\n".join(lines)


def ensure_data(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    source_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Path:
    """Make sure the data set is under the data root; returns the root.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        data_dir: data root (default ``$STADV_DATA_DIR`` or ``./data``).
        source_dir: folder of gzipped IDX files to install from (default ``$STADV_DATA_SOURCE``).
        download: fall back on torchvision's download when the files are nowhere on disk.
    Raises:
        DataNotFoundError: with the expected location and the ways to provide the files.
    """
    key = check_dataset_name(name)
    root = resolve_data_dir(data_dir)
    if is_installed(key, root):
        return root
    source = resolve_source_dir(source_dir)
    if source is not None and _find_source_files(key, source) is not None:
        install_from_source(key, source, root)
        return root
    if not download:
        raise DataNotFoundError(
            _missing_message(key, root, source, "no local copy and download is off")
        )
    try:
        _TORCHVISION_CLASS[key](str(root), train=False, download=True)
        _TORCHVISION_CLASS[key](str(root), train=True, download=True)
    except Exception as err:  # any network or mirror failure becomes the one clear message
        raise DataNotFoundError(
            _missing_message(
                key, root, source, f"the download failed ({type(err).__name__}: {err})"
            )
        ) from err
    return root


def load_dataset(
    name: str,
    *,
    split: Split = "test",
    data_dir: str | os.PathLike[str] | None = None,
    source_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> datasets.MNIST:
    """The torchvision dataset (``MNIST`` or ``FashionMNIST``) for one split.

    Its items are ``(image, label)`` with ``image`` a float tensor (1, 28, 28) in [0, 1].
    """
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; known splits: train, test")
    key = check_dataset_name(name)
    root = ensure_data(key, data_dir=data_dir, source_dir=source_dir, download=download)
    from torchvision.transforms import ToTensor

    return _TORCHVISION_CLASS[key](
        str(root), train=split == "train", download=False, transform=ToTensor()
    )


def load_tensors(
    name: str,
    *,
    split: Split = "test",
    data_dir: str | os.PathLike[str] | None = None,
    source_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> TensorData:
    """The whole split as tensors (no per-item transform: fast for training and attacks)."""
    ds = load_dataset(
        name, split=split, data_dir=data_dir, source_dir=source_dir, download=download
    )
    images = ds.data.unsqueeze(1).to(torch.float32).div_(255.0)
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    return TensorData(images, labels)
