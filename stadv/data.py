"""MNIST and Fashion-MNIST as torchvision datasets, images in [0, 1], shape (N, 1, 28, 28).

Where the files come from, in order:

1. the data root (``data_dir`` argument, else ``$STADV_DATA_DIR``, else ``./data``), in
   torchvision's layout (``<root>/MNIST/raw/train-images-idx3-ubyte`` ...);
2. a *source* folder of the four standard gzipped IDX files (``source_dir`` argument, else
   ``$STADV_DATA_SOURCE``): they are unpacked into the root's torchvision layout once;
3. torchvision's own download, when ``download=True``.

What is verified, and when (the digests are :data:`KNOWN_FILES`, the one copy in the project):

- **Before an install**, every source file: the SHA-256 of the ``.gz`` and, while it is
  unpacked into a temporary folder beside the root, the size and SHA-256 of the uncompressed
  IDX file. A different gzip of the same bytes is accepted (the uncompressed digest is what
  identifies the data); anything else (a truncated file, an HTML error page, another data
  set) raises :class:`DataIntegrityError` naming the file, the expected and the actual digest.
- **At the end of an install** (from a source or a download), the four uncompressed files on
  disk; only then is the folder renamed into ``<root>/<Class>/raw`` with a marker
  (:data:`MARKER`) that records each file's size, modification time and SHA-256. A failed
  install leaves nothing behind: no partial file, no new folder (a *killed* one leaves its
  ``.install-*`` folder, which the next install removes once it is a day old).
- **On every load** (:func:`ensure_data`, hence :func:`load_dataset` and :func:`load_tensors`),
  the installed root cheaply: the marker's digests must be the known ones and each file's size
  and modification time must be the marker's (four ``stat`` calls). A root without a marker,
  or whose files changed, is hashed in full; if it verifies the marker is (re)written, else it
  is never used: it is reinstalled from a source (or a download) with a
  :class:`DataIntegrityWarning`, or, when neither is available, :class:`DataIntegrityError`
  names the bad files.

If no way works, :class:`DataNotFoundError` says where the files are expected and how to
provide them. Both errors are :class:`DataNotFoundError`, which the CLI reports as one message.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Mapping
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

#: Written into the raw folder by a verified install; lets a load trust the root cheaply.
MARKER = ".stadv-verified.json"
_MARKER_FORMAT = 1
_CHUNK = 1 << 20
_STALE_INSTALL_S = 24 * 3600.0


@dataclass(frozen=True)
class KnownFile:
    """One standard IDX file.

    ``size`` and ``sha256`` describe the uncompressed file (what torchvision reads);
    ``gz_sha256`` is the gzipped file of the reference source (``../shared/data/SHA256SUMS``).
    """

    size: int
    sha256: str
    gz_sha256: str


#: The known files, by data set and IDX name. MNIST's uncompressed files are byte-identical to
#: the originals (MD5s in ``../shared/data/README.md``); Fashion-MNIST's are those of the Debian
#: package ``dataset-fashion-mnist``.
KNOWN_FILES: Mapping[str, Mapping[str, KnownFile]] = {
    "mnist": {
        "train-images-idx3-ubyte": KnownFile(
            47040016,
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971",
        ),
        "train-labels-idx1-ubyte": KnownFile(
            60008,
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203",
        ),
        "t10k-images-idx3-ubyte": KnownFile(
            7840016,
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be",
        ),
        "t10k-labels-idx1-ubyte": KnownFile(
            10008,
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b",
        ),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": KnownFile(
            47040016,
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        ),
        "train-labels-idx1-ubyte": KnownFile(
            60008,
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        ),
        "t10k-images-idx3-ubyte": KnownFile(
            7840016,
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        ),
        "t10k-labels-idx1-ubyte": KnownFile(
            10008,
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
        ),
    },
}

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


class DataIntegrityError(DataNotFoundError):
    """A file is not the known one: a source file (refused before anything is installed) or an
    installed file (the root is not used).

    ``path`` is the file, ``expected`` and ``actual`` its digests (SHA-256, hex) where known.
    """

    def __init__(
        self,
        message: str,
        *,
        path: Path | None = None,
        expected: str | None = None,
        actual: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.expected = expected
        self.actual = actual


class TruncatedGzipError(DataIntegrityError, EOFError):
    """A source ``.gz`` whose gzip stream ends early (an interrupted download or copy).

    Also an :class:`EOFError`, the type :mod:`gzip` itself raises for such a stream.
    """


class DataIntegrityWarning(UserWarning):
    """An installed root failed verification and was reinstalled."""


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


# --- verification of installed files ---------------------------------------------------------


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _file_problem(path: Path, known: KnownFile) -> str | None:
    """Why ``path`` is not the known uncompressed file (None when it is): full SHA-256."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{path.name}: missing"
    if size != known.size:
        return f"{path.name}: {size} bytes, expected {known.size} (truncated or another file)"
    digest = _sha256_file(path)
    if digest != known.sha256:
        return f"{path.name}: SHA-256 {digest}, expected {known.sha256}"
    return None


def _marker_trusts(name: DatasetName, raw: Path) -> bool:
    """The cheap check: the marker holds the known digests and every file's size and mtime."""
    try:
        marker = json.loads((raw / MARKER).read_text())
        if marker.get("format") != _MARKER_FORMAT or marker.get("dataset") != name:
            return False
        for f, known in KNOWN_FILES[name].items():
            entry = marker["files"][f]
            st = (raw / f).stat()
            if not (
                entry["sha256"] == known.sha256
                and entry["size"] == known.size == st.st_size
                and entry["mtime_ns"] == st.st_mtime_ns
            ):
                return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


def _write_marker(name: DatasetName, raw: Path) -> None:
    """Record the verified files (call only after a full check). Written atomically."""
    files = {}
    for f, known in KNOWN_FILES[name].items():
        st = (raw / f).stat()
        files[f] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": known.sha256}
    fd, tmp = tempfile.mkstemp(prefix=f".{MARKER}.", dir=raw)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump({"format": _MARKER_FORMAT, "dataset": name, "files": files}, out)
        os.replace(tmp, raw / MARKER)
    finally:
        Path(tmp).unlink(missing_ok=True)


def verify_installed(name: DatasetName, root: Path) -> list[str]:
    """The problems of the installed files under ``root`` (empty: the root can be used).

    Cheap when the marker of a verified install matches the files (sizes and modification
    times, no hashing). Otherwise every file is hashed; a root that verifies then gets a new
    marker (skipped silently when the root is read-only, which only costs re-hashing).
    """
    raw = raw_folder(name, root)
    if _marker_trusts(name, raw):
        return []
    problems = [p for f, known in KNOWN_FILES[name].items() if (p := _file_problem(raw / f, known))]
    if not problems:
        try:
            _write_marker(name, raw)
        except OSError:
            pass
    return problems


def is_installed(name: DatasetName, root: Path) -> bool:
    """Whether the four files are under ``root`` and verify (see :func:`verify_installed`)."""
    return not verify_installed(name, root)


# --- installing ------------------------------------------------------------------------------


def _find_source_files(name: DatasetName, source: Path) -> Path | None:
    """The folder inside ``source`` that holds the four gzipped (or plain) IDX files."""
    candidates = [source, *(source / sub for sub in _SOURCE_SUBDIRS[name])]
    for folder in candidates:
        if all((folder / f"{f}.gz").is_file() or (folder / f).is_file() for f in IDX_FILES):
            return folder
    return None


def _copy_verified(src: Path, dest: Path, known: KnownFile, name: DatasetName) -> None:
    """Copy ``src`` (gzipped when its name ends in ``.gz``) to ``dest`` uncompressed, hashing
    as it goes; raise :class:`DataIntegrityError` naming ``src`` unless the uncompressed bytes
    are the known ones. At most ``known.size + 1`` bytes are written."""
    gz = src.suffix == ".gz"
    file_digest = _sha256_file(src)
    h = hashlib.sha256()
    size = 0
    reason = ""
    error: type[DataIntegrityError] = DataIntegrityError
    try:
        with gzip.open(src, "rb") if gz else open(src, "rb") as fin, open(dest, "wb") as fout:
            while size <= known.size and (chunk := fin.read(_CHUNK)):
                chunk = chunk[: known.size + 1 - size]
                size += len(chunk)
                h.update(chunk)
                fout.write(chunk)
    except gzip.BadGzipFile as err:
        reason = f"it is not a gzip file ({err})"
    except EOFError:
        reason = "its gzip stream ends early: the file is truncated"
        error = TruncatedGzipError
    except zlib.error as err:
        reason = f"its gzip data are corrupt ({err})"
    if not reason:
        has = "it unpacks to" if gz else "it has"
        if size > known.size:
            reason = f"{has} more than {known.size} bytes"
        elif size != known.size:
            reason = f"{has} {size} bytes, expected {known.size} (truncated?)"
        elif h.hexdigest() != known.sha256:
            reason = f"{has} {size} bytes with SHA-256 {h.hexdigest()}, expected {known.sha256}"
        else:
            return  # the known bytes: also a re-compressed .gz, whose own digest differs
    what = f"{name} file {dest.name}" + (".gz" if gz else "")
    expected = known.gz_sha256 if gz else known.sha256
    raise error(
        f"{src} is not the known {what}: SHA-256 {file_digest}, expected {expected}; {reason}. "
        "Nothing was installed; replace the file with a good copy.",
        path=src,
        expected=expected,
        actual=file_digest,
    )


def _unpack_source(name: DatasetName, folder: Path, dest: Path) -> Path:
    """Unpack the four verified files of ``folder`` into the new folder ``dest``."""
    dest.mkdir()
    for f in IDX_FILES:
        gz = folder / f"{f}.gz"
        _copy_verified(gz if gz.is_file() else folder / f, dest / f, KNOWN_FILES[name][f], name)
    return dest


def _download(name: DatasetName, root: Path, source: Path | None, tmp: Path) -> Path:
    """torchvision's download (MD5-checked by torchvision) into ``tmp``; returns its raw folder."""
    try:
        _TORCHVISION_CLASS[name](str(tmp), train=False, download=True)
    except Exception as err:  # any network or mirror failure becomes the one clear message
        raise DataNotFoundError(
            _missing_message(
                name, root, source, f"the download failed ({type(err).__name__}: {err})"
            )
        ) from err
    return raw_folder(name, tmp)


def _install(name: DatasetName, root: Path, populate: Callable[[Path], Path]) -> Path:
    """Build the raw folder in a temporary folder beside it, verify it, rename it into place.

    ``populate(tmp)`` writes the files somewhere under ``tmp`` and returns that folder. On any
    failure the temporary folder and any folder created here are removed. A raw folder already
    in place is kept if it verifies (a concurrent install), else moved aside into the temporary
    folder and removed with it. Returns the raw folder.
    """
    raw = raw_folder(name, root)
    created = [p for p in (raw.parent, *raw.parent.parents) if not p.exists()]
    raw.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_installs(raw.parent)
    tmp = Path(tempfile.mkdtemp(prefix=".install-", dir=raw.parent))
    try:
        built = populate(tmp)
        problems = [
            p for f, known in KNOWN_FILES[name].items() if (p := _file_problem(built / f, known))
        ]
        if problems:
            raise DataIntegrityError(
                f"the {name} files just installed failed verification, nothing was installed: "
                + "; ".join(problems),
                path=built,
            )
        _write_marker(name, built)
        _rename_into_place(name, root, built, aside=tmp / "replaced")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:  # innermost first; stops at the first one someone else filled
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return raw


def _remove_stale_installs(parent: Path) -> None:
    """Remove temporary folders of installs killed over a day ago (a kill skips the cleanup);
    younger ones may belong to an install still running in another process."""
    for folder in parent.glob(".install-*"):
        try:
            if time.time() - folder.stat().st_mtime > _STALE_INSTALL_S:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass


def _rename_into_place(name: DatasetName, root: Path, built: Path, *, aside: Path) -> None:
    raw = raw_folder(name, root)
    if raw.exists() and not verify_installed(name, root):
        return  # another process installed a good copy meanwhile: keep it, drop ours
    if raw.exists() or raw.is_symlink():
        try:
            raw.rename(aside)
        except FileNotFoundError:  # another process moved it meanwhile
            pass
    try:
        built.rename(raw)
    except OSError:
        # Another process installed concurrently: its folder counts if it verifies.
        if not verify_installed(name, root):
            return
        if aside.exists() and not raw.exists():
            aside.rename(raw)  # leave the earlier install as it was, for the error to name
        raise


def install_from_source(name: DatasetName, source: Path, root: Path) -> Path:
    """Install the four IDX files of ``source`` into torchvision's layout under ``root``.

    Every file is verified (see the module docstring) in a temporary folder before the raw
    folder is renamed into place, replacing an earlier install that does not verify (one that
    does, e.g. from a concurrent process, is kept). Returns the raw folder.

    Raises:
        DataNotFoundError: ``source`` does not hold the four files.
        DataIntegrityError: a file is not the known one (nothing is installed).
    """
    folder = _find_source_files(name, source)
    if folder is None:
        raise DataNotFoundError(
            f"{source} does not hold the four {name} IDX files "
            f"({', '.join(f + '.gz' for f in IDX_FILES)}), directly or in a sub-folder named "
            f"{' or '.join(_SOURCE_SUBDIRS[name])}"
        )
    return _install(name, root, lambda tmp: _unpack_source(name, folder, tmp / "raw"))


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
    """Make sure the data set is under the data root and verifies; returns the root.

    The root is checked on every call (cheaply, see :func:`verify_installed`). A root that is
    missing or fails verification is (re)installed from the source folder when it holds the
    files, else by torchvision's download when ``download`` is true; reinstalling a root that
    failed verification also warns (:class:`DataIntegrityWarning`).

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        data_dir: data root (default ``$STADV_DATA_DIR`` or ``./data``).
        source_dir: folder of gzipped IDX files to install from (default ``$STADV_DATA_SOURCE``).
        download: fall back on torchvision's download when the files are nowhere on disk.
    Raises:
        DataIntegrityError: a source file is not the known one, or the installed root failed
            verification and there is nothing to reinstall it from; the message names the files.
        DataNotFoundError: with the expected location and the ways to provide the files.
    """
    key = check_dataset_name(name)
    root = resolve_data_dir(data_dir)
    problems = verify_installed(key, root)
    if not problems:
        return root
    raw = raw_folder(key, root)
    bad_install = any((raw / f).exists() for f in IDX_FILES)
    source = resolve_source_dir(source_dir)
    folder = _find_source_files(key, source) if source is not None else None
    if folder is not None:
        _install(key, root, lambda tmp: _unpack_source(key, folder, tmp / "raw"))
    elif download:
        reason = f"{raw} failed verification ({'; '.join(problems)})" if bad_install else None
        try:
            _install(key, root, lambda tmp: _download(key, root, source, tmp))
        except DataNotFoundError as err:
            if reason is None or isinstance(err, DataIntegrityError):
                raise
            raise DataIntegrityError(f"{err}\nThe installed files are not used: {reason}.") from err
    elif bad_install:
        raise DataIntegrityError(
            f"The {key} data set under {raw} failed verification and is not used: "
            + "; ".join(problems)
            + ".\nReinstall it: point STADV_DATA_SOURCE (or --data-source) at a folder holding "
            f"the four gzipped files ({IDX_FILES[0]}.gz, ...), or allow the download, "
            f"or delete {raw}.",
            path=raw,
        )
    else:
        raise DataNotFoundError(
            _missing_message(key, root, source, "no local copy and download is off")
        )
    if bad_install:
        warnings.warn(
            DataIntegrityWarning(
                f"{raw} failed verification ({'; '.join(problems)}); reinstalled from "
                + (str(folder) if folder is not None else "torchvision's download")
            ),
            stacklevel=2,
        )
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

    The files are verified (or installed) first by :func:`ensure_data`, with the same arguments.

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
