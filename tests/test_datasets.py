"""Data manifests, verified downloads, safe extraction and the CIFAR-10 readers.

Nothing here uses the network: downloads go through pooch's downloader hook with
local files, and the CIFAR-10 readers run on tiny archives written in the real layouts.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xaikit.data import cifar10
from xaikit.data.cifar10 import CIFAR10_CLASSES, ImageSplit, load_cifar10, read_cifar10_binary, read_cifar10_jpeg
from xaikit.data.manifests import (
    Manifest,
    available_manifests,
    cache_dir,
    cached_path,
    fetch,
    load_manifest,
    safe_extract,
    sha256_of,
)
from xaikit.errors import DataIntegrityError, DataUnavailableError, InvalidParameterError, UnsafeArchiveError
from xaikit.fileio import atomic_write, current_umask, make_temp_dir, umask_mode

SHARED_JPEG_FOLDER = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"
RECORD_BYTES = 3073


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path, monkeypatch):
    """Each test gets its own cache and sees no user configuration."""
    monkeypatch.setenv("XAIKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("XAIKIT_MANIFEST_DIR", raising=False)
    monkeypatch.delenv("XAIKIT_CIFAR10_JPEG", raising=False)


# ----------------------------------------------------------------------------- builders


def write_tar(path: Path, entries: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz") -> Path:
    """Write a tar archive from (name, data) pairs and ready-made TarInfo entries (links)."""
    with tarfile.open(path, mode) as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                name, data = entry
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def link_entry(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def manifest_for(file: Path, name: str = "tiny") -> Manifest:
    return Manifest(
        name=name,
        url=f"https://example.invalid/{file.name}",
        filename=file.name,
        size=file.stat().st_size,
        sha256=sha256_of(file),
        licence="test data",
        description="written by the test",
    )


def copying_downloader(source: Path, calls: list[str]):
    def download(url, output_file, pooch_instance):
        calls.append(url)
        shutil.copyfile(source, output_file)

    return download


def refusing_downloader(url, output_file, pooch_instance):
    raise AssertionError(f"network access attempted for {url}")


def cifar_records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """Official CIFAR-10 binary records, built byte by byte: label, then R, G, B planes row-major."""
    out = bytearray()
    for image, label in zip(images, labels):
        out.append(int(label))
        for channel in range(3):
            for row in range(32):
                for col in range(32):
                    out.append(int(image[row, col, channel]))
    return bytes(out)


def tiny_binary_split(seed: int, records: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(records, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=records).astype(np.int64)
    return images, labels


def write_tiny_cifar_binary(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """cifar-10-binary.tar.gz in the official layout with 2-4 records per file."""
    train_parts = [tiny_binary_split(seed, records=2) for seed in range(5)]
    test_part = tiny_binary_split(99, records=4)
    entries = [("cifar-10-batches-bin/batches.meta.txt", ("\n".join(CIFAR10_CLASSES) + "\n\n").encode())]
    for number, (images, labels) in enumerate(train_parts, start=1):
        entries.append((f"cifar-10-batches-bin/data_batch_{number}.bin", cifar_records(images, labels)))
    entries.append(("cifar-10-batches-bin/test_batch.bin", cifar_records(*test_part)))
    write_tar(path, entries)
    train = (np.concatenate([p[0] for p in train_parts]), np.concatenate([p[1] for p in train_parts]))
    return {"train": train, "test": test_part}


SOLID_COLOURS = {"airplane": (200, 30, 40), "cat": (20, 180, 60), "truck": (40, 60, 220)}


def write_tiny_cifar_jpeg(path: Path, split: str = "test", extra_folder: str | None = None) -> Path:
    """<split>.tar.gz with <split>/<class>/NNNN.jpg solid-colour 32x32 JPEGs (2 per class)."""
    entries = []
    for class_name in [*SOLID_COLOURS, *([extra_folder] if extra_folder else [])]:
        colour = SOLID_COLOURS.get(class_name, (0, 0, 0))
        for index in range(2):
            buffer = io.BytesIO()
            shade = tuple(max(0, c - 20 * index) for c in colour)
            Image.new("RGB", (32, 32), shade).save(buffer, format="JPEG", quality=95)
            entries.append((f"{split}/{class_name}/{index:04d}.jpg", buffer.getvalue()))
    return write_tar(path, entries)


# ----------------------------------------------------------------------------- manifests


def test_cifar10_manifest_has_official_binary_archive():
    manifest = load_manifest("cifar10")
    assert manifest.url == "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    assert manifest.filename == "cifar-10-binary.tar.gz"
    assert manifest.size == 170052171
    assert manifest.sha256 == "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
    assert manifest.known_hash == "sha256:" + manifest.sha256
    assert manifest.md5 == "c32a1d4ab5d03f1284b67883e8d87530"
    assert "Krizhevsky" in manifest.licence and manifest.description
    assert "cifar-10-batches-bin/test_batch.bin" in manifest.members


def test_every_manifest_in_the_repository_is_valid():
    names = available_manifests()
    assert "cifar10" in names
    for name in names:
        assert load_manifest(name).name == name


def test_unknown_manifest_error_lists_available_names():
    with pytest.raises(InvalidParameterError, match=r"no_such_data.*Available manifests: .*cifar10"):
        load_manifest("no_such_data")


def test_manifest_folder_override_and_validation(tmp_path, monkeypatch):
    folder = tmp_path / "manifests"
    folder.mkdir()
    entry = {
        "name": "broken", "url": "https://example.invalid/x.tar", "filename": "x.tar",
        "size": 10, "licence": "none", "description": "no sha256",
    }
    (folder / "broken.json").write_text(json.dumps(entry))
    monkeypatch.setenv("XAIKIT_MANIFEST_DIR", str(folder))
    assert available_manifests() == ("broken",)
    with pytest.raises(DataIntegrityError, match="missing field.*sha256"):
        load_manifest("broken")


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("XAIKIT_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("XAIKIT_CACHE_DIR")
    assert cache_dir() == Path.home() / ".cache" / "xaikit"


# ----------------------------------------------------------------------------- fetch


def test_fetch_downloads_once_then_uses_cache_offline(tmp_path):
    archive = write_tar(tmp_path / "tiny.tar.gz", [("data/a.txt", b"hello")])
    manifest = manifest_for(archive)
    calls: list[str] = []

    local = fetch(manifest, downloader=copying_downloader(archive, calls), progress=False)

    assert local == cached_path(manifest) == tmp_path / "cache" / "tiny" / "tiny.tar.gz"
    assert local.read_bytes() == archive.read_bytes()
    assert calls == [manifest.url]
    # A cached file with the right hash must be used without any download attempt.
    assert fetch(manifest, downloader=refusing_downloader, progress=False) == local


def test_fetch_uses_a_manually_placed_copy(tmp_path):
    archive = write_tar(tmp_path / "tiny.tar.gz", [("a.txt", b"manual")])
    manifest = manifest_for(archive)
    cached_path(manifest).parent.mkdir(parents=True)
    shutil.copyfile(archive, cached_path(manifest))
    assert fetch(manifest, downloader=refusing_downloader, progress=False) == cached_path(manifest)


def test_fetch_rejects_corrupted_download_and_leaves_nothing(tmp_path):
    archive = write_tar(tmp_path / "tiny.tar.gz", [("a.txt", b"good")])
    corrupted = tmp_path / "corrupted.tar.gz"
    corrupted.write_bytes(archive.read_bytes()[:-10])  # a truncated transfer
    manifest = manifest_for(archive)

    with pytest.raises(DataIntegrityError) as caught:
        fetch(manifest, downloader=copying_downloader(corrupted, []), progress=False)

    message = str(caught.value)
    assert manifest.sha256 in message and sha256_of(corrupted) in message
    assert "removed" in message and str(cached_path(manifest)) in message
    assert list(cached_path(manifest).parent.iterdir()) == []


def test_fetch_network_failure_says_what_to_download_and_where(tmp_path):
    manifest = manifest_for(write_tar(tmp_path / "tiny.tar.gz", [("a.txt", b"x")]))

    def offline(url, output_file, pooch_instance):
        raise ConnectionError("Name or service not known")

    with pytest.raises(DataUnavailableError) as caught:
        fetch(manifest, downloader=offline, progress=False)
    message = str(caught.value)
    assert manifest.url in message and manifest.filename in message
    assert str(cached_path(manifest)) in message and "offline" in message


def test_fetch_real_downloader_reports_unreachable_host(tmp_path):
    # The ".invalid" domain never resolves (RFC 2606), so pooch's own HTTP downloader fails anywhere.
    manifest = manifest_for(write_tar(tmp_path / "tiny.tar.gz", [("a.txt", b"x")]))
    with pytest.raises(DataUnavailableError, match=r"Could not download https://example\.invalid/tiny\.tar\.gz"):
        fetch(manifest, progress=False)
    assert not cached_path(manifest).exists()


# ----------------------------------------------------------------------------- safe_extract


def test_safe_extract_tar_and_zip(tmp_path):
    tar_path = write_tar(tmp_path / "ok.tar.gz", [("top/a.txt", b"A"), ("top/b.txt", b"B")])
    assert safe_extract(tar_path, tmp_path / "from_tar") == tmp_path / "from_tar"
    assert (tmp_path / "from_tar/top/a.txt").read_bytes() == b"A"
    assert (tmp_path / "from_tar/top/b.txt").read_bytes() == b"B"

    zip_path = tmp_path / "ok.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("top/b.txt", b"B")
    safe_extract(zip_path, tmp_path / "from_zip")
    assert (tmp_path / "from_zip/top/b.txt").read_bytes() == b"B"


@pytest.mark.parametrize(
    "entry, member",
    [
        (("../evil.txt", b"x"), "../evil.txt"),
        (("inner/../../evil.txt", b"x"), "inner/../../evil.txt"),
        (("/tmp/xaikit_absolute_evil.txt", b"x"), "/tmp/xaikit_absolute_evil.txt"),
        (link_entry("escape", "../outside"), "escape"),
        (link_entry("escape", "/etc"), "escape"),
        (link_entry("hard", "../outside.txt", tarfile.LNKTYPE), "hard"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-out", "symlink-absolute", "hardlink-out"],
)
def test_safe_extract_refuses_members_outside_target(tmp_path, entry, member):
    sandbox = tmp_path / "sandbox"
    target = sandbox / "target"
    archive = write_tar(tmp_path / "evil.tar.gz", [("fine.txt", b"ok"), entry])

    with pytest.raises(UnsafeArchiveError, match=member.replace(".", r"\.")):
        safe_extract(archive, target)

    assert [p.name for p in sandbox.iterdir()] == ["target"]
    assert list(target.iterdir()) == []  # checked before anything was written
    assert not Path("/tmp/xaikit_absolute_evil.txt").exists()


def test_safe_extract_refuses_zip_escape(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../evil.txt", b"x")
    with pytest.raises(UnsafeArchiveError, match=r"\.\./evil\.txt"):
        safe_extract(archive, tmp_path / "target")
    assert not (tmp_path / "evil.txt").exists()


def test_safe_extract_reports_truncated_and_corrupt_archives(tmp_path):
    payload = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    whole = write_tar(tmp_path / "whole.tar.gz", [("big.bin", payload)]).read_bytes()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataIntegrityError, match="truncated or corrupt"):
        safe_extract(truncated, tmp_path / "t1")

    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    with pytest.raises(DataIntegrityError, match="truncated or corrupt"):
        safe_extract(garbage, tmp_path / "t2")

    zip_path = tmp_path / "whole.zip"
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.bin", payload)
    cut_zip = tmp_path / "cut.zip"
    cut_zip.write_bytes(zip_path.read_bytes()[:-100])
    with pytest.raises(DataIntegrityError):
        safe_extract(cut_zip, tmp_path / "t3")


# ----------------------------------------------------------------------------- CIFAR-10 binary


def test_read_cifar10_binary_returns_exact_pixels_and_labels(tmp_path):
    archive = tmp_path / "cifar-10-binary.tar.gz"
    expected = write_tiny_cifar_binary(archive)

    for split in ("train", "test"):
        data = read_cifar10_binary(archive, split)
        images, labels = expected[split]
        assert data.images.dtype == np.uint8 and data.images.shape == images.shape
        np.testing.assert_array_equal(data.images, images)
        np.testing.assert_array_equal(data.labels, labels)
        assert data.labels.dtype == np.int64 and data.class_names == CIFAR10_CLASSES
        assert len(data) == len(labels)

    # Spot-check the layout against raw bytes: green value of pixel (row 5, col 7) of test record 0.
    raw = (cifar10._extract_once(archive) / "cifar-10-batches-bin" / "test_batch.bin").read_bytes()
    assert read_cifar10_binary(archive, "test").images[0, 5, 7, 1] == raw[1 + 1024 + 5 * 32 + 7]


def test_read_cifar10_binary_accepts_extracted_folder(tmp_path):
    archive = tmp_path / "cifar-10-binary.tar.gz"
    expected = write_tiny_cifar_binary(archive)
    safe_extract(archive, tmp_path / "extracted")
    for folder in (tmp_path / "extracted", tmp_path / "extracted" / "cifar-10-batches-bin"):
        np.testing.assert_array_equal(read_cifar10_binary(folder, "test").labels, expected["test"][1])


def test_read_cifar10_binary_rejects_partial_records_and_bad_labels(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    images, labels = tiny_binary_split(0, records=2)
    (folder / "test_batch.bin").write_bytes(cifar_records(images, labels)[:-1])
    with pytest.raises(DataIntegrityError, match=r"6145 bytes, not a whole number of 3073-byte"):
        read_cifar10_binary(folder, "test")

    bad_labels = labels.copy()
    bad_labels[1] = 10
    (folder / "test_batch.bin").write_bytes(cifar_records(images, bad_labels))
    with pytest.raises(DataIntegrityError, match=r"record 1 has label 10"):
        read_cifar10_binary(folder, "test")


def test_read_cifar10_binary_missing_files(tmp_path):
    with pytest.raises(DataUnavailableError, match="test_batch.bin"):
        read_cifar10_binary(tmp_path, "test")
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "data_batch_1.bin").write_bytes(bytes(RECORD_BYTES))
    with pytest.raises(DataIntegrityError, match="data_batch_2.bin"):
        read_cifar10_binary(tmp_path, "train")


# ----------------------------------------------------------------------------- CIFAR-10 JPEG


def test_read_cifar10_jpeg_decodes_layout_and_caches(tmp_path, monkeypatch):
    archive = write_tiny_cifar_jpeg(tmp_path / "test.tar.gz")

    data = read_cifar10_jpeg(archive, "test")

    expected_labels = [CIFAR10_CLASSES.index(name) for name in SOLID_COLOURS for _ in range(2)]
    np.testing.assert_array_equal(data.labels, expected_labels)
    assert data.images.shape == (6, 32, 32, 3) and data.images.dtype == np.uint8
    expected_images = np.array(
        [[[[max(0, c - 20 * i) for c in colour]] * 32] * 32 for colour in SOLID_COLOURS.values() for i in range(2)],
        dtype=np.int16,
    )
    assert np.abs(data.images.astype(np.int16) - expected_images).max() <= 4  # JPEG is lossy

    # The decoded arrays are cached: a second read decodes and extracts nothing.
    decoded = list((tmp_path / "cache" / "cifar10" / "decoded").glob("*.npz"))
    assert len(decoded) == 1
    shutil.rmtree(tmp_path / "cache" / "cifar10" / "extracted")

    def no_decoding(folder):
        raise AssertionError("the cached arrays were not used")

    monkeypatch.setattr(cifar10, "_decode_image_folder", no_decoding)
    again = read_cifar10_jpeg(tmp_path, "test")  # the folder holding test.tar.gz
    np.testing.assert_array_equal(again.images, data.images)
    np.testing.assert_array_equal(again.labels, data.labels)


def test_read_cifar10_jpeg_rejects_unknown_class_folder(tmp_path):
    archive = write_tiny_cifar_jpeg(tmp_path / "test.tar.gz", extra_folder="unicorn")
    with pytest.raises(DataIntegrityError, match="unicorn"):
        read_cifar10_jpeg(archive, "test")


def test_read_cifar10_jpeg_wrong_split_archive(tmp_path):
    archive = write_tiny_cifar_jpeg(tmp_path / "test.tar.gz", split="test")
    with pytest.raises(DataIntegrityError, match=r"no train/ folder"):
        read_cifar10_jpeg(archive, "train")


# ----------------------------------------------------------------------------- ImageSplit


def test_image_split_take_is_deterministic_and_stratified():
    labels = np.repeat(np.arange(10), 7)
    split = ImageSplit(np.zeros((70, 32, 32, 3), np.uint8), labels.astype(np.int64), CIFAR10_CLASSES, "test")

    sample = split.take(20, seed=3)

    assert len(sample) == 20
    assert np.bincount(sample.labels, minlength=10).tolist() == [2] * 10
    np.testing.assert_array_equal(sample.labels, split.take(20, seed=3).labels)
    assert split.subset([5, 0]).labels.tolist() == [0, 0]
    with pytest.raises(InvalidParameterError):
        split.take(71)


# ----------------------------------------------------------------------------- load_cifar10


def test_load_cifar10_rejects_bad_split_and_source():
    with pytest.raises(InvalidParameterError, match="valid splits: train, test"):
        load_cifar10("validation")
    with pytest.raises(InvalidParameterError, match="valid sources: auto, jpeg, binary"):
        load_cifar10("test", source="pickle")


def test_load_cifar10_without_data_or_download_explains_both_options(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar10, "_SHARED_JPEG_FOLDER", tmp_path / "absent")
    with pytest.raises(DataUnavailableError) as caught:
        load_cifar10("test", download=False)
    message = str(caught.value)
    assert "XAIKIT_CIFAR10_JPEG" in message
    assert str(tmp_path / "cache" / "cifar10" / "cifar-10-binary.tar.gz") in message


def test_load_cifar10_binary_from_cache_without_network(tmp_path, monkeypatch):
    archive = tmp_path / "cifar-10-binary.tar.gz"
    expected = write_tiny_cifar_binary(archive)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    entry = {**json.loads((Path(cifar10.__file__).resolve().parents[2] / "data_manifests/cifar10.json").read_text())}
    entry.update(size=archive.stat().st_size, sha256=sha256_of(archive))
    entry.pop("md5")
    (manifests / "cifar10.json").write_text(json.dumps(entry))
    monkeypatch.setenv("XAIKIT_MANIFEST_DIR", str(manifests))
    monkeypatch.setattr(cifar10, "_SHARED_JPEG_FOLDER", tmp_path / "absent")
    cached = tmp_path / "cache" / "cifar10" / "cifar-10-binary.tar.gz"
    cached.parent.mkdir(parents=True)
    shutil.copyfile(archive, cached)

    data = load_cifar10("test", download=False)  # "auto" falls back to the binary archive

    np.testing.assert_array_equal(data.images, expected["test"][0])
    assert "binary" in data.source


def test_load_cifar10_jpeg_from_environment_and_root(tmp_path, monkeypatch):
    folder = tmp_path / "jpeg"
    folder.mkdir()
    write_tiny_cifar_jpeg(folder / "test.tar.gz")
    monkeypatch.setenv("XAIKIT_CIFAR10_JPEG", str(folder))
    assert len(load_cifar10("test")) == 6
    monkeypatch.delenv("XAIKIT_CIFAR10_JPEG")
    assert len(load_cifar10("test", root=folder)) == 6
    monkeypatch.setenv("XAIKIT_CIFAR10_JPEG", str(tmp_path / "wrong"))
    with pytest.raises(DataUnavailableError, match="XAIKIT_CIFAR10_JPEG"):
        load_cifar10("test")


@pytest.mark.skipif(
    not (SHARED_JPEG_FOLDER / "test.tar.gz").is_file(),
    reason=f"the offline CIFAR-10 JPEG copy is not at {SHARED_JPEG_FOLDER}",
)
def test_load_real_cifar10_test_split():
    start = time.perf_counter()
    data = load_cifar10("test")
    elapsed = time.perf_counter() - start
    assert data.images.shape == (10_000, 32, 32, 3)
    assert np.bincount(data.labels).tolist() == [1000] * 10
    assert "JPEG" in data.source
    assert elapsed < 20, f"decoding the 10,000 test JPEGs took {elapsed:.1f} s"


# ----------------------------------------------------------------------------- file permissions


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def mode_of(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


def test_cache_files_get_the_umask_permissions(umask, tmp_path):
    # A cache shared by a group must stay readable by it: downloads, decoded arrays and extracted
    # folders get 0o666 / 0o777 filtered by the umask, not the 0o600 / 0o700 of tempfile.
    archive = write_tar(tmp_path / "tiny.tar.gz", [("data/a.txt", b"hello")])
    downloaded = fetch(manifest_for(archive), downloader=copying_downloader(archive, []), progress=False)
    read_cifar10_jpeg(write_tiny_cifar_jpeg(tmp_path / "test.tar.gz"), "test")

    (decoded,) = (tmp_path / "cache" / "cifar10" / "decoded").glob("*.npz")
    (extracted,) = (tmp_path / "cache" / "cifar10" / "extracted").iterdir()
    assert mode_of(downloaded) == mode_of(decoded) == oct(0o666 & ~umask)
    assert mode_of(extracted) == oct(0o777 & ~umask)
    assert [p.name for p in decoded.parent.iterdir()] == [decoded.name]  # no temporary file left


def test_atomic_write_replaces_whole_files_or_leaves_the_old_one(umask, tmp_path):
    target = tmp_path / "new" / "card.json"
    with atomic_write(target, "w") as handle:
        handle.write("old")
    assert target.read_text() == "old" and mode_of(target) == oct(0o666 & ~umask)
    assert mode_of(target.parent) == oct(0o777 & ~umask)

    with pytest.raises(RuntimeError, match="crash"):
        with atomic_write(target) as handle:
            handle.write(b"half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["card.json"]

    with atomic_write(target) as handle:
        handle.write(b"new")
    assert target.read_bytes() == b"new"
    assert current_umask() == umask and umask_mode(0o777) == 0o777 & ~umask
    assert mode_of(make_temp_dir(tmp_path, ".partial-")) == oct(0o777 & ~umask)
    with pytest.raises(InvalidParameterError, match="atomic_write opens files"):
        with atomic_write(target, "a"):
            pass
