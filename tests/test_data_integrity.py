"""Integrity of installs: bad sources are refused, installs are atomic, bad roots never poison.

Everything runs offline from the real files in ``../shared/data``; the download path is tested
through torchvision's own code against a ``file://`` mirror of that folder.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from torchvision import datasets

import stadv.data
from stadv.data import (
    DATASETS,
    IDX_FILES,
    KNOWN_FILES,
    MARKER,
    DataIntegrityError,
    DataIntegrityWarning,
    DataNotFoundError,
    TruncatedGzipError,
    ensure_data,
    install_from_source,
    is_installed,
    load_tensors,
    raw_folder,
)
from stadv_cli.main import main as stadv_main


@pytest.fixture(autouse=True)
def _no_source_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The tests choose their sources explicitly; an inherited $STADV_DATA_SOURCE would repair
    # the roots they mean to see refused.
    monkeypatch.delenv("STADV_DATA_SOURCE", raising=False)


def _source_with(tmp_path: Path, data_source: Path, bad: str, content: bytes) -> Path:
    """A source folder: the real MNIST files (linked), except ``bad``.gz holding ``content``."""
    src = tmp_path / "src"
    src.mkdir()
    for f in IDX_FILES:
        if f != bad:
            (src / f"{f}.gz").symlink_to(data_source / "mnist" / f"{f}.gz")
    (src / f"{bad}.gz").write_bytes(content)
    return src


def _raw_bytes(data_source: Path, f: str, dataset: str = "mnist") -> bytes:
    return gzip.decompress((data_source / dataset / f"{f}.gz").read_bytes())


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def _poisoned_root(root: Path, data_source: Path, short: str) -> Path:
    """What the old installer left from a truncated-but-valid gzip: ``short`` cut to 1,000
    bytes beside three good files, a stale ``.partial``, and no marker."""
    raw = raw_folder("mnist", root)
    raw.mkdir(parents=True)
    for f in IDX_FILES:
        data = _raw_bytes(data_source, f)
        (raw / f).write_bytes(data[:1000] if f == short else data)
    (raw / f".{short}.partial").write_bytes(b"\0" * 10)
    return raw


def test_known_digests_are_those_of_the_shared_files(data_source: Path) -> None:
    sums = {}
    for line in (data_source / "SHA256SUMS").read_text().splitlines():
        digest, rel = line.split()
        sums[rel] = digest
    assert set(KNOWN_FILES) == set(DATASETS)
    for dataset, files in KNOWN_FILES.items():
        assert tuple(files) == IDX_FILES
        for f, known in files.items():
            gz = (data_source / dataset / f"{f}.gz").read_bytes()
            assert known.gz_sha256 == sums[f"{dataset}/{f}.gz"] == hashlib.sha256(gz).hexdigest()
            raw = gzip.decompress(gz)
            assert (len(raw), hashlib.sha256(raw).hexdigest()) == (known.size, known.sha256)


def test_good_source_installs_verified_and_loads_without_rehashing(
    tmp_path: Path, data_source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    ensure_data("mnist", data_dir=root, source_dir=data_source, download=False)
    raw = raw_folder("mnist", root)
    assert _tree(root) == sorted(
        ["MNIST", "MNIST/raw", f"MNIST/raw/{MARKER}"] + [f"MNIST/raw/{f}" for f in IDX_FILES]
    )

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"a verified root was hashed again: {path}")

    monkeypatch.setattr(stadv.data, "_sha256_file", no_hashing)
    train = load_tensors("mnist", split="train", data_dir=root, download=False)
    test = load_tensors("mnist", split="test", data_dir=root, download=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.labels[:3].tolist() == [5, 0, 4] and test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert is_installed("mnist", root) and (raw / MARKER).is_file()


def test_truncated_but_valid_gzip_source_is_refused(tmp_path: Path, data_source: Path) -> None:
    bad = "train-labels-idx1-ubyte"  # the second file: the first is already unpacked when it fails
    content = gzip.compress(_raw_bytes(data_source, bad)[:30000])
    src = _source_with(tmp_path, data_source, bad, content)
    root = tmp_path / "root"
    with pytest.raises(DataIntegrityError) as info:
        ensure_data("mnist", data_dir=root, source_dir=src, download=False)
    err = info.value
    expected, actual = KNOWN_FILES["mnist"][bad].gz_sha256, hashlib.sha256(content).hexdigest()
    assert (err.path, err.expected, err.actual) == (src / f"{bad}.gz", expected, actual)
    msg = str(err)
    assert str(src / f"{bad}.gz") in msg and expected in msg and actual in msg
    assert "unpacks to 30000 bytes, expected 60008" in msg
    assert isinstance(err, DataNotFoundError) and not isinstance(err, TruncatedGzipError)
    assert not root.exists()


@pytest.mark.parametrize("root_exists", [False, True])
def test_non_gzip_source_is_refused_and_leaves_nothing(
    tmp_path: Path, data_source: Path, root_exists: bool
) -> None:
    bad = "t10k-labels-idx1-ubyte"  # the last file: three are unpacked when it fails
    content = b"<!DOCTYPE html><title>404 Not Found</title>"
    src = _source_with(tmp_path, data_source, bad, content)
    root = tmp_path / "root"
    if root_exists:
        root.mkdir()
        (root / "notes.txt").write_text("the user's file")
    with pytest.raises(DataIntegrityError) as info:
        ensure_data("mnist", data_dir=root, source_dir=src, download=False)
    msg = str(info.value)
    assert str(src / f"{bad}.gz") in msg and "not a gzip file" in msg
    assert KNOWN_FILES["mnist"][bad].gz_sha256 in msg
    assert hashlib.sha256(content).hexdigest() in msg
    assert _tree(root) == (["notes.txt"] if root_exists else [])
    assert not list(tmp_path.rglob("*.partial")) and not list(tmp_path.rglob(".install-*"))


def test_truncated_gzip_stream_is_a_named_error(tmp_path: Path, data_source: Path) -> None:
    bad = "t10k-images-idx3-ubyte"
    gz = (data_source / "mnist" / f"{bad}.gz").read_bytes()
    src = _source_with(tmp_path, data_source, bad, gz[: len(gz) // 2])
    with pytest.raises(TruncatedGzipError) as info:
        install_from_source("mnist", src, tmp_path / "root")
    assert isinstance(info.value, DataNotFoundError) and isinstance(info.value, EOFError)
    assert str(src / f"{bad}.gz") in str(info.value) and "truncated" in str(info.value)
    assert not (tmp_path / "root").exists()


def test_poisoned_root_is_refused_then_reinstalled_from_a_good_source(
    tmp_path: Path, data_source: Path
) -> None:
    root = tmp_path / "root"
    raw = _poisoned_root(root, data_source, short="train-images-idx3-ubyte")
    before = _tree(root)
    assert not is_installed("mnist", root)
    with pytest.raises(DataIntegrityError) as info:
        load_tensors("mnist", split="train", data_dir=root, download=False)
    msg = str(info.value)
    assert str(raw) in msg and "train-images-idx3-ubyte: 1000 bytes, expected 47040016" in msg
    assert "STADV_DATA_SOURCE" in msg and info.value.path == raw
    assert _tree(root) == before  # refused, not deleted

    with pytest.warns(DataIntegrityWarning, match="train-images-idx3-ubyte: 1000 bytes"):
        train = load_tensors(
            "mnist", split="train", data_dir=root, source_dir=data_source, download=False
        )
    assert len(train) == 60000 and train.labels[:3].tolist() == [5, 0, 4]
    assert len(load_tensors("mnist", split="test", data_dir=root, download=False)) == 10000
    for f, known in KNOWN_FILES["mnist"].items():
        assert hashlib.sha256((raw / f).read_bytes()).hexdigest() == known.sha256
    assert sorted(p.name for p in raw.iterdir()) == sorted([MARKER, *IDX_FILES])
    assert sorted(p.name for p in raw.parent.iterdir()) == ["raw"]


def test_file_changed_after_a_verified_install_is_caught(tmp_path: Path, data_source: Path) -> None:
    root = tmp_path / "root"
    raw = raw_folder("mnist", ensure_data("mnist", data_dir=root, source_dir=data_source))
    target = raw / "t10k-images-idx3-ubyte"
    with open(target, "r+b") as f:  # same size, one pixel changed: only the digest tells
        f.seek(5000)
        f.write(b"\x7f")
    with pytest.raises(DataIntegrityError, match="t10k-images-idx3-ubyte: SHA-256 [0-9a-f]{64}"):
        ensure_data("mnist", data_dir=root, download=False)
    with pytest.warns(DataIntegrityWarning, match="t10k-images-idx3-ubyte"):
        ensure_data("mnist", data_dir=root, source_dir=data_source, download=False)
    assert (
        hashlib.sha256(target.read_bytes()).hexdigest()
        == KNOWN_FILES["mnist"]["t10k-images-idx3-ubyte"].sha256
    )


def test_root_without_marker_is_hashed_once_then_trusted(tmp_path: Path, data_source: Path) -> None:
    # A root installed by an earlier version (or by hand) has no marker.
    root = tmp_path / "root"
    raw = raw_folder("mnist", ensure_data("mnist", data_dir=root, source_dir=data_source))
    (raw / MARKER).unlink()
    assert is_installed("mnist", root) and (raw / MARKER).is_file()


def test_temporary_folders_of_killed_installs_are_removed_after_a_day(
    tmp_path: Path, data_source: Path
) -> None:
    parent = tmp_path / "root" / "MNIST"
    stale, recent = parent / ".install-killed", parent / ".install-running"
    for folder in (stale, recent):
        (folder / "raw").mkdir(parents=True)
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(stale, (two_days_ago, two_days_ago))
    ensure_data("mnist", data_dir=tmp_path / "root", source_dir=data_source, download=False)
    assert sorted(p.name for p in parent.iterdir()) == [".install-running", "raw"]


def test_a_concurrent_good_install_is_kept(
    tmp_path: Path, data_source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    unpack = stadv.data._unpack_source
    inodes: list[int] = []

    def other_process_first(name: stadv.data.DatasetName, folder: Path, dest: Path) -> Path:
        if not inodes:
            monkeypatch.setattr(stadv.data, "_unpack_source", unpack)
            raw = install_from_source(name, folder, root)  # done while we are still unpacking
            inodes.append((raw / IDX_FILES[0]).stat().st_ino)
        return unpack(name, folder, dest)

    monkeypatch.setattr(stadv.data, "_unpack_source", other_process_first)
    ensure_data("mnist", data_dir=root, source_dir=data_source, download=False)
    raw = raw_folder("mnist", root)
    assert len(inodes) == 1 and is_installed("mnist", root)
    assert (raw / IDX_FILES[0]).stat().st_ino == inodes[0]  # the first good install stays
    assert sorted(p.name for p in raw.parent.iterdir()) == ["raw"]


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def local_mirror(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], None]]:
    """Point torchvision's MNIST download at an HTTP server on 127.0.0.1 serving a folder.

    torchvision's own download code runs (URL, MD5 check, gunzip); nothing leaves the machine.
    """
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    servers: list[ThreadingHTTPServer] = []

    def serve(folder: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        resources = [
            (f"{f}.gz", hashlib.md5(gz.read_bytes()).hexdigest() if gz.is_file() else "0" * 32)
            for f in IDX_FILES
            for gz in [folder / f"{f}.gz"]
        ]
        monkeypatch.setattr(datasets.MNIST, "mirrors", [f"http://127.0.0.1:{server.server_port}/"])
        monkeypatch.setattr(datasets.MNIST, "resources", resources)

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_download_reinstalls_a_poisoned_root(
    tmp_path: Path, data_source: Path, local_mirror: Callable[[Path], None]
) -> None:
    root = tmp_path / "root"
    raw = _poisoned_root(root, data_source, short="t10k-labels-idx1-ubyte")
    local_mirror(data_source / "mnist")
    with pytest.warns(DataIntegrityWarning, match="torchvision's download"):
        test = load_tensors("mnist", split="test", data_dir=root, download=True)
    assert torch.bincount(test.labels).tolist()[:3] == [980, 1135, 1032]
    assert is_installed("mnist", root) and not list(raw.glob("*.partial"))
    assert sorted(p.name for p in raw.parent.iterdir()) == ["raw"]


@pytest.mark.parametrize("poisoned", [False, True])
def test_failed_download_leaves_nothing_and_names_the_bad_root(
    tmp_path: Path, data_source: Path, local_mirror: Callable[[Path], None], poisoned: bool
) -> None:
    root = tmp_path / "root"
    if poisoned:
        _poisoned_root(root, data_source, short="t10k-labels-idx1-ubyte")
    before = _tree(root)
    (tmp_path / "empty-mirror").mkdir()
    local_mirror(tmp_path / "empty-mirror")
    with pytest.raises(DataNotFoundError, match="the download failed") as info:
        ensure_data("mnist", data_dir=root, download=True)
    assert isinstance(info.value, DataIntegrityError) == poisoned
    if poisoned:
        assert "t10k-labels-idx1-ubyte: 1000 bytes, expected 10008" in str(info.value)
    assert _tree(root) == before


def test_cli_reports_a_bad_source_as_one_error(
    tmp_path: Path, data_source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = "train-images-idx3-ubyte"
    src = _source_with(tmp_path, data_source, bad, gzip.compress(b"\0\0\x08\x03" + b"\0" * 96))
    argv = ["train", "--model", "B", "--data-dir", str(tmp_path / "root")]
    assert stadv_main([*argv, "--data-source", str(src), "--no-download"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stadv train: error: ") and "Traceback" not in err
    assert str(src / f"{bad}.gz") in err and KNOWN_FILES["mnist"][bad].gz_sha256 in err
    assert not (tmp_path / "root").exists()


def test_integrity_errors_survive_pickling() -> None:
    # Ray hands a worker's exception to the driver by pickling it.
    err = TruncatedGzipError("x.gz is truncated", path=Path("x.gz"), expected="a", actual="b")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is TruncatedGzipError and str(back) == "x.gz is truncated"
    assert (back.path, back.expected, back.actual) == (Path("x.gz"), "a", "b")


def test_plain_idx_source_is_verified_too(tmp_path: Path, data_source: Path) -> None:
    src = tmp_path / "plain"
    src.mkdir()
    for f in IDX_FILES:
        (src / f).write_bytes(_raw_bytes(data_source, f))
    ensure_data("mnist", data_dir=tmp_path / "good", source_dir=src, download=False)
    assert is_installed("mnist", tmp_path / "good")
    os.truncate(src / IDX_FILES[3], 500)
    with pytest.raises(DataIntegrityError, match="has 500 bytes, expected 10008") as info:
        ensure_data("mnist", data_dir=tmp_path / "bad", source_dir=src, download=False)
    assert (
        info.value.path == src / IDX_FILES[3]
        and info.value.expected == KNOWN_FILES["mnist"][IDX_FILES[3]].sha256
    )
    assert not (tmp_path / "bad").exists()
